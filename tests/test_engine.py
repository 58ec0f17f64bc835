"""FIG. 5 engine: every packet built by scapy, time from a fake clock, every translated
packet's checksums recomputed by scapy and compared."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings, strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror, UDPerror
from scapy.packet import Raw

from localdirector.dataplane import expiry as expiry_module
from localdirector.dataplane import packet
from localdirector.dataplane import ports as ports_module
from localdirector.dataplane.engine import ACCEPT_MODIFIED, ACCEPT_UNCHANGED, DROP, Engine
from localdirector.dataplane.expiry import EMBRYONIC_TIMEOUT, LINGER
from localdirector.dataplane.ports import TIME_WAIT
from localdirector.dataplane.stats import REASON_NAMES
from localdirector.model.addr import format_ip, parse_ip
from localdirector.model.connection import (CLOSED, ESTABLISHED, FIN_WAIT, SYN_RCVD, SYN_SENT,
                                            Connection, flow_key)
from localdirector.model.director import Director
from localdirector.model.real import PhysicalMachine
from localdirector.model.serverid import ServerId
from localdirector.model.state import State
from localdirector.model.virtual import VirtualMachine

VIP = "192.0.2.10"
CLIENT = "198.51.100.7"
A, B, C = "203.0.113.1", "203.0.113.2", "203.0.113.3"


def sid(text: str) -> ServerId:
    return ServerId.parse(text)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def assert_checksums(buf: bytes) -> None:
    """Recompute every checksum with scapy and compare with what the engine left."""
    pkt = IP(buf)
    fresh = pkt.copy()
    del fresh.chksum
    if ICMP in pkt:
        layers = [ICMP, IPerror, TCPerror if TCPerror in pkt else UDPerror]
    else:
        layers = [TCP if TCP in pkt else UDP]
    for layer in layers:
        del fresh[layer].chksum
    fresh = IP(bytes(fresh))
    assert pkt.chksum == fresh.chksum
    for layer in layers:
        assert pkt[layer].chksum == fresh[layer].chksum, layer.__name__


class Lab:
    """One director + engine; sends scapy packets and returns what the engine made of them
    (`layer` reads them back, `checksums` checks them: test_engine6.py's IPv6 Lab)."""

    layer = IP
    checksums = staticmethod(assert_checksums)

    def __init__(self, director: Director) -> None:
        self.d = director
        self.clock = Clock()
        self.engine = Engine(director, self.clock)

    def advance(self, seconds: float) -> None:
        self.clock.t += seconds
        self.engine.tick()

    def send(self, pkt) -> tuple[int, IP | None]:
        buf = bytearray(bytes(pkt))
        original = bytes(buf)
        verdict = self.engine.handle(buf)
        if verdict == ACCEPT_UNCHANGED:
            assert bytes(buf) == original
        if verdict == ACCEPT_MODIFIED:
            self.checksums(bytes(buf))
        self.assert_accounted()
        return verdict, (self.layer(bytes(buf)) if verdict != DROP else None)

    def assert_accounted(self) -> None:
        s = self.engine.stats
        assert s.packets == (s.translated_in + s.translated_out + s.icmp_translated
                             + s.unchanged + s.dropped)

    def client(self, flags: str, cport: int = 40000, client: str = CLIENT, vip: str = VIP,
               vport: int = 80, load: bytes = b"") -> tuple[int, IP | None]:
        # Sequence numbers as a real handshake leaves them: the client's ISN 1000, the
        # real's 5000, nothing counted for data (the engine checks only RSTs and FINs).
        pkt = IP(src=client, dst=vip) / TCP(sport=cport, dport=vport, flags=flags,
                                            seq=1000 if "S" in flags else 1001,
                                            ack=5001 if "A" in flags else 0)
        return self.send(pkt / Raw(load) if load else pkt)

    def real(self, conn: Connection, flags: str, load: bytes = b"") -> tuple[int, IP | None]:
        pkt = IP(src=format_ip(conn.real_ip), dst=format_ip(conn.foreign_ip)) / TCP(
            sport=conn.real_port, dport=conn.nat_port, flags=flags,
            seq=5000 if "S" in flags else 5001, ack=1001)
        return self.send(pkt / Raw(load) if load else pkt)

    def conn(self, cport: int = 40000, client: str = CLIENT, vip: str = VIP,
             vport: int = 80) -> Connection | None:
        return self.d.conns.inbound.get(flow_key(parse_ip(client), cport, parse_ip(vip), vport))

    def syn(self, cport: int = 40000, client: str = CLIENT, vip: str = VIP,
            vport: int = 80) -> Connection:
        verdict, out = self.client("S", cport, client, vip, vport)
        assert verdict == ACCEPT_MODIFIED
        conn = self.conn(cport, client, vip, vport)
        assert conn is not None
        assert (out.dst, out[TCP].dport) == (format_ip(conn.real_ip), conn.real_port)
        assert (out.src, out[TCP].sport) == (client, conn.nat_port)
        return conn

    def open(self, cport: int = 40000, client: str = CLIENT, vip: str = VIP,
             vport: int = 80) -> Connection:
        """Full three-way handshake through the engine."""
        conn = self.syn(cport, client, vip, vport)
        verdict, out = self.real(conn, "SA")
        assert verdict == ACCEPT_MODIFIED
        assert (out.src, out[TCP].sport, out.dst, out[TCP].dport) == (vip, vport, client, cport)
        assert self.client("A", cport, client, vip, vport)[0] == ACCEPT_MODIFIED
        assert conn.tcp_state is ESTABLISHED
        return conn

    def close(self, conn: Connection) -> None:
        cport, client = conn.foreign_port, format_ip(conn.foreign_ip)
        vip, vport = format_ip(conn.virtual_ip), conn.virtual_port
        assert self.client("FA", cport, client, vip, vport)[0] == ACCEPT_MODIFIED
        assert self.real(conn, "FA")[0] == ACCEPT_MODIFIED
        assert self.client("A", cport, client, vip, vport)[0] == ACCEPT_MODIFIED
        self.advance(LINGER + 0.5)
        assert self.conn(cport, client, vip, vport) is None

    def drops(self, name: str) -> int:
        return self.engine.stats.drops[REASON_NAMES.index(name)]

    def assert_idle(self) -> None:
        """Every count back to zero once no connection is left."""
        assert len(self.d.conns) == 0 and not self.d.conns.reply
        for v in self.d.virtuals.values():
            assert (v.conns_current, v.half_open) == (0, 0)
        for r in self.d.reals.values():
            assert r.current_conns == 0


def pool(reals: tuple[str, ...] = (A, B), virtual: str = f"{VIP}:80",
         predictor: str = "leastconns") -> tuple[Director, VirtualMachine, list[PhysicalMachine]]:
    d = Director()
    v = d.add_virtual(sid(virtual))
    v.predictor = predictor
    rs = [d.add_real(sid(r)) for r in reals]
    for r in reals:
        d.bind(sid(virtual), sid(r))
    return d, v, rs


def lab(*args, **kwargs) -> tuple[Lab, VirtualMachine, list[PhysicalMachine]]:
    d, v, rs = pool(*args, **kwargs)
    return Lab(d), v, rs


def fig1() -> Director:
    """FIG. 1: one VIP; preferred clients (Bind ID 1), unwelcome ones (Bind ID 2), others."""
    d = Director()
    for bind in (0, 1, 2):
        d.add_virtual(sid(f"{VIP}:80:{bind}"))
    for bind, reals in ((0, ("203.0.113.12", "203.0.113.13")),
                        (1, ("203.0.113.14", "203.0.113.11:8001")), (2, ("203.0.113.15",))):
        for r in reals:
            d.add_real(sid(r))
            d.bind(sid(f"{VIP}:80:{bind}"), sid(r))
    d.assign(sid(f"{VIP}:80:1"), parse_ip("198.51.100.0"), 24)
    d.assign(sid(f"{VIP}:80:2"), parse_ip("198.18.0.0"), 24)
    return d


# -- selection -------------------------------------------------------------------------

def test_fig1_client_groups_land_on_their_pools() -> None:
    lab_ = Lab(fig1())
    groups = (("198.51.100", {"203.0.113.14", "203.0.113.11"}, 1),
              ("198.18.0", {"203.0.113.15"}, 2),
              ("198.19.4", {"203.0.113.12", "203.0.113.13"}, 0))
    for prefix, reals, bind in groups:
        seen = set()
        for host in range(1, 7):
            conn = lab_.open(client=f"{prefix}.{host}")
            assert conn.virtual.bind_id == bind
            seen.add(format_ip(conn.real_ip))
        assert seen == reals  # leastconns spreads over the whole pool, never beyond it
    for bind, count in ((0, 6), (1, 6), (2, 6)):
        assert lab_.d.virtual(sid(f"{VIP}:80:{bind}")).conns_current == count


def test_port_translation_and_reply_from_vip() -> None:
    lab_, v, (real,) = lab(("203.0.113.11:8001",))
    verdict, out = lab_.client("S")
    assert verdict == ACCEPT_MODIFIED
    assert (out.src, out[TCP].sport, out.dst, out[TCP].dport) == (CLIENT, 40000,
                                                                  "203.0.113.11", 8001)
    conn = lab_.conn()
    verdict, out = lab_.real(conn, "SA")
    assert (out.src, out[TCP].sport, out.dst, out[TCP].dport) == (VIP, 80, CLIENT, 40000)
    assert lab_.client("A", load=b"GET / HTTP/1.0\r\n\r\n")[1][TCP].dport == 8001
    verdict, out = lab_.real(conn, "PA", load=b"HTTP/1.0 200 OK\r\n\r\n" + b"x" * 1000)
    assert (out.src, out[TCP].sport) == (VIP, 80) and bytes(out[Raw]).endswith(b"x" * 1000)
    assert (real.packets_in, v.packets_out) == (2, 2)
    assert real.bytes_out == v.bytes_out == 40 + 40 + 19 + 1000
    assert lab_.engine.stats.translated_in == 2 and lab_.engine.stats.translated_out == 2


def test_ip_options_honoured() -> None:
    lab_, _, _ = lab((A,))
    pkt = IP(src=CLIENT, dst=VIP, options=b"\x01\x01\x01\x00") / TCP(sport=40000, dport=80,
                                                                      flags="S")
    verdict, out = lab_.send(pkt)
    assert verdict == ACCEPT_MODIFIED and out.ihl == 6 and out.dst == A


def test_virtual_port_zero_serves_every_port() -> None:
    lab_, _, _ = lab(("203.0.113.1", "203.0.113.2:8443"), virtual=f"{VIP}:0",
                     predictor="roundrobin")
    c1 = lab_.syn(vport=443)
    c2 = lab_.syn(40001, vport=443)
    assert {(format_ip(c.real_ip), c.real_port) for c in (c1, c2)} == {(A, 443), (B, 8443)}
    assert lab_.real(c2, "SA")[1][TCP].sport == 443


def test_roundrobin_exact_spread() -> None:
    lab_, _, rs = lab((A, B, C), predictor="roundrobin")
    order = [format_ip(lab_.syn(41000 + i).real_ip) for i in range(30)]
    assert order[:3] == [A, B, C] and order == order[:3] * 10
    assert [r.current_conns for r in rs] == [10, 10, 10]


def test_leastconns_takes_the_least_loaded() -> None:
    lab_, _, (ra, rb) = lab((A, B))
    conns = [lab_.open(41000 + i) for i in range(4)]
    assert (ra.current_conns, rb.current_conns) == (2, 2)
    for conn in [c for c in conns if c.real is ra]:
        lab_.close(conn)
    assert [lab_.syn(42000 + i).real for i in range(2)] == [ra, ra]


def test_weighted_three_to_one() -> None:
    lab_, _, (ra, rb) = lab((A, B), predictor="weighted")
    ra.weight = 3
    reals = [lab_.syn(41000 + i).real for i in range(40)]
    assert (reals.count(ra), reals.count(rb)) == (30, 10)
    assert reals[:4].count(rb) == 1  # smooth: b is interleaved, not last


def test_fastest_prefers_the_quicker_real() -> None:
    lab_, _, (ra, rb) = lab((A, B), predictor="fastest")
    for cport, delay in ((41000, 0.010), (41001, 0.200)):
        conn = lab_.syn(cport)  # unmeasured reals are tried first
        lab_.clock.t += delay
        lab_.real(conn, "SA")
    assert ra.response_time == pytest.approx(0.010) and rb.response_time == pytest.approx(0.2)
    assert {lab_.syn(42000 + i).real for i in range(5)} == {ra}


def test_maxconns_caps_a_real() -> None:
    lab_, _, (ra, rb) = lab((A, B), predictor="roundrobin")
    ra.maxconns = 2
    reals = [lab_.syn(41000 + i).real for i in range(8)]
    assert reals.count(ra) == 2 and reals.count(rb) == 6


def test_backup_real_takes_over() -> None:
    lab_, v, (ra,) = lab((A,))
    spare = lab_.d.add_real(sid(C))  # not bound: only reachable as A's backup
    ra.backup = spare.sid
    lab_.d.set_state(ra.sid, State.OUT_OF_SERVICE)
    conn = lab_.open()
    assert conn.real is spare and format_ip(conn.real_ip) == C


@pytest.mark.parametrize("why", ["failed", "oos", "full"])
def test_backup_virtual_overflow(why: str) -> None:
    lab_ = Lab(fig1())
    preferred = lab_.d.virtual(sid(f"{VIP}:80:1"))
    preferred.backup = sid(f"{VIP}:80:0")
    for link in preferred.iter_links():
        if why == "failed":
            link.real.state = State.FAILED
        elif why == "oos":
            lab_.d.set_state(link.real.sid, State.OUT_OF_SERVICE)
        else:
            link.real.maxconns = 1
    if why == "full":
        lab_.open(41000)
        lab_.open(41001)
    conn = lab_.open(41002)
    assert conn.virtual.bind_id == 0
    assert format_ip(conn.real_ip) in {"203.0.113.12", "203.0.113.13"}
    general = lab_.d.virtual(sid(f"{VIP}:80:0"))
    assert general.conns_current == 1
    assert preferred.conns_current == (2 if why == "full" else 0)


def test_sticky_keeps_a_client_on_its_real() -> None:
    lab_, v, _ = lab((A, B), predictor="roundrobin")
    v.sticky = 5
    first = lab_.syn(41000).real
    # Round robin alone would alternate; the client stays on its real.
    assert all(lab_.syn(41001 + i).real is first for i in range(4))
    lab_.advance(76)      # the half-open connections time out: the clock starts
    assert len(v.sticky_table) == 1
    lab_.advance(5 * 60)  # no connection for the sticky minutes: the predictor decides again
    assert not v.sticky_table
    second = lab_.syn(41100).real
    assert second is not first
    assert lab_.syn(41101).real is second
    assert lab_.syn(41000, client="198.51.100.8").real is first  # others take their turn


def test_no_virtual_and_no_real_drops() -> None:
    lab_, v, rs = lab((A,), virtual=f"{VIP}:80:1")
    lab_.d.assign(v.sid, parse_ip("198.51.100.0"), 24)
    assert lab_.client("S", client="198.18.0.1")[0] == DROP  # not assigned, no Bind ID 0
    assert lab_.client("S", vport=81)[0] == DROP              # VIP address, unknown port
    assert lab_.drops("no-virtual") == 2
    lab_.d.set_state(rs[0].sid, State.OUT_OF_SERVICE)
    verdict, refusal = lab_.client("S")  # refused: the SYN comes back as a RST
    assert verdict == ACCEPT_MODIFIED and refusal[TCP].flags == "RA"
    assert lab_.drops("no-real") == 1 and v.no_real_drops == 1
    lab_.d.set_state(v.sid, State.OUT_OF_SERVICE)
    lab_.d.set_state(rs[0].sid, State.IN_SERVICE)
    assert lab_.client("S")[0] == ACCEPT_MODIFIED and v.no_real_drops == 2
    assert lab_.engine.stats.refused == 2
    assert len(lab_.d.conns) == 0


def test_global_connection_limit() -> None:
    lab_, _, _ = lab((A,))
    lab_.d.settings.max_conns = 2
    lab_.open(41000)
    lab_.open(41001)
    assert lab_.client("S", 41002)[0] == DROP and lab_.drops("conn-limit") == 1


# -- synguard, service states, packets that are not ours -------------------------------

def test_synguard_caps_half_open_connections() -> None:
    lab_, v, _ = lab((A, B))
    v.synguard = 2
    c1 = lab_.syn(41000)
    lab_.syn(41001)
    assert v.half_open == 2
    assert lab_.client("S", 41002)[0] == DROP
    assert v.synguard_drops == 1 and lab_.drops("synguard") == 1
    lab_.real(c1, "SA")
    assert c1.tcp_state is SYN_RCVD
    assert v.half_open == 2  # answered but the client has not completed the handshake
    lab_.client("A", 41000)
    assert v.half_open == 1 and c1.tcp_state is ESTABLISHED
    lab_.syn(41003)
    assert v.half_open == 2 and v.synguard_drops == 1


def test_out_of_service_drains() -> None:
    lab_, _, (ra, rb) = lab((A, B))
    conn = lab_.open(41000)
    assert conn.real is ra
    lab_.d.set_state(ra.sid, State.OUT_OF_SERVICE)
    assert lab_.client("PA", 41000, load=b"more")[1].dst == A
    assert lab_.real(conn, "PA", load=b"reply")[1].src == VIP
    assert {lab_.syn(42000 + i).real for i in range(3)} == {rb}
    lab_.close(conn)
    assert ra.current_conns == 0


# -- what the decision keeps between SYNs: which reals are bound, nothing more ------------

def test_bind_unbind_and_removal_are_seen_by_the_next_syn() -> None:
    """The director keeps each virtual's links between SYNs (Director._links_of): a
    bind, an unbind, a real removed and added again change the very next decision."""
    lab_, v, (ra,) = lab((A,))
    assert lab_.syn(41000).real is ra             # the links are kept from here on
    rb = lab_.d.add_real(sid(B))
    lab_.d.bind(v.sid, rb.sid)
    assert lab_.syn(41001).real is rb             # least connections: the new real
    lab_.d.unbind(v.sid, rb.sid)
    assert {lab_.syn(41002 + i).real for i in range(3)} == {ra}
    lab_.d.unbind(v.sid, ra.sid)
    verdict, refusal = lab_.client("S", 41010)    # nothing bound: refused
    assert verdict == ACCEPT_MODIFIED and refusal[TCP].flags == "RA"
    lab_.d.remove_real(rb.sid)
    fresh = lab_.d.add_real(sid(B))
    lab_.d.bind(v.sid, fresh.sid)
    conn = lab_.syn(41011)
    assert conn.real is fresh and fresh is not rb
    assert lab_.d.decide(conn.foreign_ip, conn.virtual_ip, 80, lab_.clock.t,
                         commit=False).real is fresh   # `test assign` asks the same way


def test_assign_and_unassign_are_seen_by_the_next_syn() -> None:
    """The Bind ID lookup remembers each client's instance (bindid.MEMO_LIMIT)."""
    lab_ = Lab(fig1())
    client, net = "198.19.4.1", parse_ip("198.19.4.0")
    assert lab_.syn(41000, client=client).virtual.bind_id == 0
    lab_.d.assign(sid(f"{VIP}:80:2"), net, 24)
    assert lab_.syn(41001, client=client).virtual.bind_id == 2
    lab_.d.unassign(sid(f"{VIP}:80:2"), net, 24)
    assert lab_.syn(41002, client=client).virtual.bind_id == 0


def test_real_availability_is_asked_at_every_syn() -> None:
    """Health, probes and limits move no model generation, so what the director keeps
    between SYNs cannot hold them: each SYN asks every bound real anew."""
    lab_, _, (ra, rb) = lab((A, B))
    assert lab_.syn(41000).real is ra
    lab_.d.set_state(ra.sid, State.OUT_OF_SERVICE)
    assert lab_.syn(41001).real is rb
    lab_.d.set_state(ra.sid, State.IN_SERVICE)
    generation = lab_.d.generation
    ra.probe_down = "web"                          # a probe holds ra out
    assert {lab_.syn(41002 + i).real for i in range(3)} == {rb}
    ra.probe_down = ""
    ra.state = State.FAILED                        # passive health
    assert lab_.syn(41010).real is rb
    ra.state = State.IN_SERVICE
    assert (ra.current_conns, rb.current_conns) == (1, 5)
    ra.maxconns = 1                                # full
    assert lab_.syn(41011).real is rb
    ra.maxconns = 0
    assert lab_.syn(41012).real is ra
    assert lab_.d.generation == generation


def test_only_the_end_of_a_removed_servers_connection_asks_for_a_resync() -> None:
    """Netfilter keeps queueing a removed real's traffic for its last connections
    (rules.desired_rules): their end, and only theirs, moves the generation."""
    lab_, v, (ra, rb) = lab((A, B))
    ordinary, orphan = lab_.open(41000), lab_.open(41001)
    assert (ordinary.real, orphan.real) == (ra, rb)
    lab_.d.remove_real(rb.sid)
    generation = lab_.d.generation
    lab_.close(ordinary)
    assert lab_.d.generation == generation
    lab_.close(orphan)
    assert lab_.d.generation == generation + 1


def test_non_syn_toward_vip_without_connection_is_dropped_and_reset() -> None:
    """Dropped, and answered with the RST a closed port sends (at the sequence the
    segment acknowledges); a RST is never answered."""
    lab_, _, _ = lab((A,))
    for flags in ("A", "PA", "FA", "SA"):
        verdict, out = lab_.client(flags)
        assert verdict == ACCEPT_MODIFIED
        assert (out.src, out.dst, out[TCP].sport, out[TCP].dport) == (VIP, CLIENT, 80, 40000)
        assert (str(out[TCP].flags), out[TCP].seq, out[TCP].ack) == ("R", 5001, 0)
    assert lab_.client("R")[0] == DROP
    assert lab_.drops("no-connection") == 5 and len(lab_.d.conns) == 0
    assert lab_.engine.stats.unknown_resets == 4


def test_long_packets_as_views_translate_as_copies_do() -> None:
    """The queue hands a long packet over as a view of its receive buffer (nfqueue.
    LentBuffers): translated in place exactly as a copy is; a view cannot shrink, so the
    RST made of an unknown segment ends at its IP total length."""
    copies, views = lab((A,))[0], lab((A,))[0]
    conn = copies.open()
    views.open()
    load = bytes(range(256)) * 16
    for pkt in (IP(src=CLIENT, dst=VIP) / TCP(sport=40000, dport=80, flags="PA", seq=1001,
                                              ack=5001) / Raw(load),
                IP(src=A, dst=CLIENT) / TCP(sport=80, dport=conn.nat_port, flags="PA",
                                            seq=5001, ack=1001) / Raw(load),
                IP(src=CLIENT, dst=VIP) / TCP(sport=40001, dport=80, flags="PA", seq=1001,
                                              ack=5001) / Raw(load)):
        copy = bytearray(bytes(pkt))
        received = bytearray(16) + bytes(pkt)
        view = memoryview(received)[16:]
        assert copies.engine.handle(copy) == views.engine.handle(view) == ACCEPT_MODIFIED
        assert bytes(view[:view[2] << 8 | view[3]]) == bytes(copy)
    assert len(copy) == 40 and views.engine.stats.unknown_resets == 1


def test_real_talking_to_others_passes_unchanged() -> None:
    lab_, _, _ = lab((A,))
    lab_.open()
    # Its ssh server, its own connections, a host not our real: none of our business.
    # (From the port it serves the virtual on: tests/test_engine_replies.py.)
    for pkt in (IP(src=A, dst="198.51.100.99") / TCP(sport=22, dport=5555, flags="SA"),
                IP(src=A, dst="198.18.3.3") / TCP(sport=33000, dport=53, flags="S"),
                IP(src=A, dst="198.18.3.3") / TCP(sport=33000, dport=53, flags="A"),
                IP(src=C, dst="198.51.100.99") / TCP(sport=80, dport=5555, flags="SA"),
                IP(src=A, dst="198.18.3.3") / UDP(sport=33000, dport=53),
                IP(src=A, dst="198.18.3.3") / ICMP(type=8)):
        assert lab_.send(pkt)[0] == ACCEPT_UNCHANGED
    assert lab_.engine.stats.unchanged == 6


def test_other_protocols_toward_a_vip_are_dropped() -> None:
    lab_, _, _ = lab((A,))
    assert lab_.send(IP(src=CLIENT, dst=VIP, proto=47) / Raw(b"\0" * 24))[0] == DROP
    assert lab_.drops("not-tcp") == 1
    # UDP is a protocol of its own (test_udp_engine.py): to a VIP without a udp virtual
    # of that port, no instance is found.
    assert lab_.send(IP(src=CLIENT, dst=VIP) / UDP(sport=5, dport=80))[0] == DROP
    assert lab_.drops("no-virtual") == 1
    assert lab_.send(IP(src=CLIENT, dst=VIP) / ICMP(type=8))[0] == ACCEPT_UNCHANGED


# -- reassign, failure, retry, testing -------------------------------------------------

def test_unanswered_syns_reassign_fail_retry_test_recover(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="localdirector")
    lab_, v, (ra, rb) = lab((A, B))
    ra.threshold, ra.retry = 2, 5
    for n, cport in enumerate((41000, 41001), start=1):
        conn = lab_.syn(cport)
        assert conn.real is ra  # leastconns: A holds fewer
        for resend in range(1, ra.reassign + 1):
            verdict, out = lab_.client("S", cport)
            assert verdict == ACCEPT_MODIFIED
            assert out.dst == (B if resend == ra.reassign else A)
        assert conn.real is rb and ra.noanswer_reassigns == n
        assert (ra.current_conns, rb.current_conns) == (0, n)
        assert v.conns_total == n  # a reassigned connection is still one connection
    assert ra.state is State.FAILED
    assert "FAILED" in caplog.text and "203.0.113.1" in caplog.text
    assert lab_.syn(41002).real is rb  # a FAILED real takes nothing
    lab_.advance(5.5)
    assert ra.state is State.TESTING and "TESTING" in caplog.text
    probe = lab_.syn(41003)
    assert probe.real is ra and ra.testing
    assert lab_.syn(41004).real is rb  # only one probe at a time
    lab_.real(probe, "SA")
    assert ra.state is State.IN_SERVICE and not ra.testing
    assert "back in service" in caplog.text
    assert lab_.engine.stats.conns_reassigned == 2


def test_reassign_0_leaves_unanswered_syns_to_the_clients_retries() -> None:
    lab_, _, (ra, rb) = lab((A, B))
    ra.reassign = 0
    conn = lab_.syn()
    assert conn.real is ra
    for _ in range(10):
        verdict, out = lab_.client("S")
        assert verdict == ACCEPT_MODIFIED and out.dst == A
    assert (conn.real, ra.noanswer_reassigns, ra.consecutive_fails) == (ra, 0, 0)
    assert lab_.engine.stats.conns_reassigned == 0


def test_failed_probe_fails_again() -> None:
    lab_, _, (ra, rb) = lab((A, B))
    ra.state, ra.failed_at, ra.retry = State.FAILED, lab_.clock.t, 1
    lab_.advance(1.5)
    probe = lab_.syn()
    assert probe.real is ra
    for _ in range(ra.reassign):
        lab_.client("S")
    assert probe.real is rb and ra.state is State.FAILED and not ra.testing


def test_probe_that_vanishes_frees_the_testing_real() -> None:
    lab_, _, (ra,) = lab((A,))
    ra.state, ra.failed_at, ra.retry = State.FAILED, lab_.clock.t, 1
    lab_.advance(1.5)
    lab_.syn()
    assert ra.testing
    lab_.client("R")  # the client gives up before any answer
    lab_.advance(LINGER + 0.5)
    assert ra.state is State.TESTING and not ra.testing
    assert lab_.syn(41001).real is ra


def test_rst_to_syn_is_absorbed_and_the_connection_moves() -> None:
    lab_, _, (ra, rb) = lab((A, B))
    conn = lab_.syn()
    assert conn.real is ra
    assert lab_.real(conn, "RA")[0] == DROP  # never reaches the client
    assert lab_.drops("reset-absorbed") == 1
    assert conn.real is rb and ra.reset_reassigns == 1 and ra.consecutive_fails == 1
    verdict, out = lab_.client("S")  # the client's retransmission goes to the new real
    assert out.dst == B
    lab_.real(conn, "SA")
    lab_.client("A")
    assert conn.tcp_state is ESTABLISHED and rb.consecutive_fails == 0
    assert (ra.current_conns, rb.current_conns) == (0, 1)
    # A late SYN-ACK from the ditched real for the old tuple must not leak to the client.
    late = IP(src=A, dst=CLIENT) / TCP(sport=80, dport=40000, flags="SA")
    assert lab_.send(late)[0] == DROP and lab_.drops("stale-reply") == 1


def test_rst_to_syn_with_no_other_real_reaches_the_client() -> None:
    lab_, _, (ra,) = lab((A,))
    conn = lab_.syn()
    verdict, out = lab_.real(conn, "RA")
    assert verdict == ACCEPT_MODIFIED and (out.src, out[TCP].sport) == (VIP, 80)
    assert out[TCP].flags.R and conn.tcp_state is CLOSED and ra.reset_reassigns == 0
    lab_.advance(LINGER + 0.5)
    lab_.assert_idle()


# -- lifecycle -------------------------------------------------------------------------

def test_fin_both_ways_then_linger() -> None:
    lab_, v, _ = lab((A,))
    conn = lab_.open()
    lab_.client("FA")
    assert conn.tcp_state is FIN_WAIT
    lab_.real(conn, "FA")
    assert conn.tcp_state is CLOSED
    lab_.advance(LINGER / 2)
    assert lab_.client("A")[0] == ACCEPT_MODIFIED  # the last ACK still gets through
    lab_.advance(LINGER)
    assert lab_.conn() is None and lab_.engine.stats.conns_closed == 1
    lab_.assert_idle()
    assert v.conns_total == 1


@pytest.mark.parametrize("side", ["client", "real"])
def test_rst_removes_after_linger(side: str) -> None:
    lab_, _, _ = lab((A,))
    conn = lab_.open()
    verdict, _ = lab_.client("R") if side == "client" else lab_.real(conn, "R")
    assert verdict == ACCEPT_MODIFIED and conn.tcp_state is CLOSED
    lab_.advance(LINGER + 0.5)
    lab_.assert_idle()


def test_idle_timeouts() -> None:
    lab_, v, _ = lab((A,))
    v.timeout = 30
    conn = lab_.open()
    lab_.advance(29)
    lab_.real(conn, "A")
    lab_.advance(29)
    assert lab_.conn() is conn
    lab_.advance(2)
    assert lab_.conn() is None and lab_.engine.stats.conns_timed_out == 1
    v.timeout = 900
    lab_.syn(41000)  # half-open: the establishment timer, not the virtual's 15 minutes
    lab_.advance(EMBRYONIC_TIMEOUT + 1)
    assert lab_.conn(41000) is None
    lab_.assert_idle()


def test_shortened_timeout_applies_to_existing_connections() -> None:
    lab_, v, _ = lab((A,))
    lab_.open()
    lab_.advance(5)
    v.timeout = 10
    lab_.advance(6)
    assert lab_.conn() is None


def test_counts_exact_after_mixed_traffic() -> None:
    lab_, v, (ra, rb) = lab((A, B), predictor="roundrobin")
    conns = [lab_.open(41000 + i) for i in range(6)]
    half = lab_.syn(42000)
    lab_.real(conns[0], "R")
    lab_.client("R", 41001)
    for conn in conns[2:4]:
        lab_.close(conn)
    lab_.client("S", 42000)  # resend
    # The two reset ones left with the closes' linger; two open plus the half-open remain.
    assert v.conns_current == 3 and ra.current_conns + rb.current_conns == 3
    assert v.half_open == 1
    lab_.advance(EMBRYONIC_TIMEOUT + 1)
    assert half.tcp_state is SYN_SENT and lab_.conn(42000) is None
    lab_.advance(v.timeout + 1)
    lab_.assert_idle()
    assert v.conns_total == 7 and lab_.engine.stats.conns_created == 7


def test_clear_conns() -> None:
    lab_, v, _ = lab((A, B))
    for i in range(3):
        lab_.open(41000 + i)
    lab_.syn(42000)
    assert lab_.engine.clear_conns() == 4
    lab_.assert_idle()
    assert lab_.client("A", 41000)[1][TCP].flags == "R"   # the client learns at once


# -- port reuse ------------------------------------------------------------------------

def test_reused_client_port_is_remapped_while_the_real_holds_time_wait() -> None:
    lab_, _, _ = lab((A,))
    lab_.close(lab_.open())
    lab_.advance(5)
    verdict, out = lab_.client("S")
    conn = lab_.conn()
    assert conn.nat_port != 40000 and out[TCP].sport == conn.nat_port
    assert lab_.engine.stats.port_remaps == 1
    verdict, out = lab_.real(conn, "SA")  # the real answers the remapped port ...
    assert (out.src, out[TCP].sport, out.dst, out[TCP].dport) == (VIP, 80, CLIENT, 40000)
    assert lab_.client("A")[1][TCP].sport == conn.nat_port  # ... and it stays remapped
    lab_.close(conn)
    lab_.advance(TIME_WAIT + 1)  # both tuples have left TIME_WAIT
    assert lab_.open().nat_port == 40000


def test_timer_and_recently_closed_memory_stay_bounded(monkeypatch) -> None:
    monkeypatch.setattr(expiry_module, "_COMPACT_MIN", 4)
    monkeypatch.setattr(ports_module, "RECENT_MAX", 8)
    lab_, _, _ = lab((A,))
    for i in range(30):
        lab_.close(lab_.open(41000 + i))
    assert len(lab_.engine._ports) == 8
    assert len(lab_.engine._expiry) <= 2 * 4 + 1  # dead entries are swept, not hoarded
    lab_.advance(TIME_WAIT + 1)
    assert not lab_.engine._ports


def test_syn_on_a_lingering_connection_opens_a_new_one() -> None:
    lab_, v, _ = lab((A,))
    old = lab_.open()
    lab_.client("FA")
    lab_.real(old, "FA")
    new = lab_.syn()  # the client reuses its port at once
    assert new is not old and new.nat_port != 40000
    assert v.conns_current == 1 and lab_.engine.stats.conns_closed == 1


def test_same_client_port_toward_one_real_from_two_vips() -> None:
    d, _, _ = pool((A,))
    d.add_virtual(sid("192.0.2.11:80"))
    d.bind(sid("192.0.2.11:80"), sid(A))
    lab_ = Lab(d)
    first = lab_.open()
    second = lab_.open(vip="192.0.2.11")
    assert first.nat_port == 40000 and second.nat_port != 40000
    verdict, out = lab_.real(second, "PA", load=b"x")
    assert (out.src, out[TCP].dport) == ("192.0.2.11", 40000)
    assert lab_.real(first, "PA", load=b"y")[1].src == VIP


# -- ICMP ------------------------------------------------------------------------------

def _icmp(src: str, dst: str, quoted) -> IP:
    return IP(src=src, dst=dst) / ICMP(type=3, code=4, nexthopmtu=1400) / Raw(bytes(quoted))


@pytest.mark.parametrize("remapped", [False, True])
def test_icmp_frag_needed_translated_both_ways(remapped: bool) -> None:
    lab_, _, _ = lab(("203.0.113.11:8001",))
    if remapped:
        lab_.close(lab_.open())
    conn = lab_.open()
    assert (conn.nat_port != 40000) == remapped
    # A router on the real's side cannot forward the client's (translated) packet.
    quoted = IP(src=CLIENT, dst="203.0.113.11") / TCP(sport=conn.nat_port, dport=8001,
                                                     flags="PA") / Raw(b"z" * 20)
    verdict, out = lab_.send(_icmp("203.0.113.254", CLIENT, quoted))
    assert verdict == ACCEPT_MODIFIED
    assert (out.src, out.dst, out[ICMP].nexthopmtu) == (VIP, CLIENT, 1400)
    inner = out[IPerror]
    assert (inner.src, inner.dst) == (CLIENT, VIP)
    assert (inner[TCPerror].sport, inner[TCPerror].dport) == (40000, 80)
    # A router on the client's side cannot forward our reply (VIP -> client).
    quoted = IP(src=VIP, dst=CLIENT) / TCP(sport=80, dport=40000, flags="PA") / Raw(b"y" * 9)
    verdict, out = lab_.send(_icmp("198.51.100.254", VIP, quoted))
    assert verdict == ACCEPT_MODIFIED and (out.src, out.dst) == ("198.51.100.254",
                                                                  "203.0.113.11")
    inner = out[IPerror]
    assert (inner.src, inner.dst) == ("203.0.113.11", CLIENT)
    assert (inner[TCPerror].sport, inner[TCPerror].dport) == (8001, conn.nat_port)
    assert lab_.engine.stats.icmp_translated == 2


def test_unrelated_icmp_errors_pass_unchanged() -> None:
    lab_, _, _ = lab((A,))
    lab_.open()
    quoted = IP(src=CLIENT, dst=A) / TCP(sport=49999, dport=80)
    assert lab_.send(_icmp("203.0.113.254", CLIENT, quoted))[0] == ACCEPT_UNCHANGED
    truncated = IP(src="203.0.113.254", dst=CLIENT) / ICMP(type=3, code=4) / Raw(b"\x45\x00")
    assert lab_.send(truncated)[0] == ACCEPT_UNCHANGED


# -- configuration edits while traffic flows -------------------------------------------

def test_config_edits_never_break_established_connections() -> None:
    lab_ = Lab(fig1())
    d = lab_.d
    conns = [lab_.open(41000 + i, client=client) for i, client in
             enumerate(("198.51.100.1", "198.51.100.2", "198.18.0.1", "198.19.0.1"))]
    preferred = d.virtual(sid(f"{VIP}:80:1"))
    d.unbind(preferred.sid, conns[0].real.sid)
    d.remove_real(conns[2].real.sid)
    d.unassign(sid(f"{VIP}:80:2"), parse_ip("198.18.0.0"), 24)
    d.remove_virtual(sid(f"{VIP}:80:0"))
    for conn in conns:
        client, cport = format_ip(conn.foreign_ip), conn.foreign_port
        verdict, out = lab_.client("PA", cport, client=client, load=b"q")
        assert verdict == ACCEPT_MODIFIED and out.dst == format_ip(conn.real_ip)
        verdict, out = lab_.real(conn, "PA", load=b"r")
        assert verdict == ACCEPT_MODIFIED and (out.src, out[TCP].sport) == (VIP, 80)
    # New connections follow the new configuration.
    assert lab_.syn(42000, client="198.51.100.3").real is conns[1].real
    assert lab_.client("S", 42001, client="198.18.0.1")[0] == DROP  # no Bind ID 0 left
    assert lab_.drops("no-virtual") == 1
    for conn in conns:
        lab_.close(conn)
    lab_.advance(EMBRYONIC_TIMEOUT + 1)
    lab_.assert_idle()
    assert all(r.current_conns == 0 for r in (c.real for c in conns))


# -- malformed packets -----------------------------------------------------------------

def _syn_bytes(**ip_fields) -> bytearray:
    return bytearray(bytes(IP(src=CLIENT, dst=VIP, **ip_fields) / TCP(sport=1, dport=80,
                                                                    flags="S")))


def test_malformed_packets_counted_by_reason() -> None:
    lab_, _, _ = lab((A,))
    bad_version = _syn_bytes()
    bad_version[0] = 0x55  # (6 is IPv6: test_engine6.py)
    bad_ihl = _syn_bytes()
    bad_ihl[0] = 0x44
    bad_offset = bytearray(bytes(IP(src=CLIENT, dst=VIP) / TCP(dport=80, dataofs=3)))
    cases = {
        "truncated": _syn_bytes()[:30],
        "bad-version": bad_version,
        "bad-ihl": bad_ihl,
        "bad-length": bytearray(bytes(IP(src=CLIENT, dst=VIP, len=30) / TCP(dport=80))),
        "fragment": _syn_bytes(frag=10),
        "bad-tcp-offset": bad_offset,
    }
    for reason, buf in cases.items():
        assert lab_.engine.handle(buf) == DROP, reason
        assert lab_.drops(reason) == 1, reason
    assert len(lab_.d.conns) == 0
    lab_.assert_accounted()


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=80), cut=st.integers(0, 60), flip=st.integers(0, 59),
       value=st.integers(0, 255))
def test_arbitrary_bytes_never_raise(data: bytes, cut: int, flip: int, value: int) -> None:
    d, _, _ = pool((A,))
    engine = Engine(d, Clock())
    mutated = bytearray(bytes(IP(src=CLIENT, dst=VIP) / TCP(sport=2, dport=80, flags="S")))
    mutated[flip % len(mutated)] = value
    for buf in (bytearray(data), mutated[:cut], mutated):
        assert engine.handle(buf) in (DROP, ACCEPT_UNCHANGED, ACCEPT_MODIFIED)
    s = engine.stats
    assert s.packets == s.translated_in + s.unchanged + s.dropped + s.icmp_translated


# -- statistics ------------------------------------------------------------------------

def test_stats_snapshot_and_reset() -> None:
    lab_, _, _ = lab((A,))
    conn = lab_.open()
    lab_.real(conn, "PA", load=b"r")
    lab_.client("A", 50000)
    snap = lab_.engine.stats.snapshot()
    assert snap["packets"] == 5 and snap["translated_in"] == 2 and snap["translated_out"] == 2
    assert snap["dropped"] == 1 and snap["drops"]["no-connection"] == 1
    assert "ok" not in snap["drops"] and set(snap["drops"]) == set(REASON_NAMES[1:])
    assert snap["conns_created"] == 1
    drops = lab_.engine.stats.drops
    lab_.engine.stats.reset()
    assert lab_.engine.stats.drops is drops and lab_.engine.stats.dropped == 0
    assert lab_.engine.stats.snapshot()["packets"] == 0
    assert lab_.client("A")[0] == ACCEPT_MODIFIED  # connections survive `clear counters`
    assert packet.REASON_NAMES == REASON_NAMES[:len(packet.REASON_NAMES)]
