"""The kernel fast path without a kernel: the engine's decisions and bookkeeping for
`fastpath` virtuals (crafted packets, fake clock, a fake conntrack), the worker's mark
verdict, the netfilter rule text and mark map, the NFLOG message parser, and the
configuration rules that keep fast-path and userspace virtuals apart."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from test_dataplane_service import FakeIptables, director, give
from test_engine import CLIENT, LINGER, VIP, A, B, C, Lab, fig1, pool, sid
from test_shell_commands import Shell

from localdirector.dataplane import netlink, nflog
from localdirector.commands.traffic import FASTPATH_NOTE
from localdirector.dataplane.engine import ACCEPT_MARK, ACCEPT_UNCHANGED, DROP, Engine
from localdirector.dataplane.expiry import EMBRYONIC_TIMEOUT
from localdirector.dataplane.floodrules import flood_rules, known_rules, note_rules
from localdirector.dataplane.iptables import (end_rules, install_tables, mangle_rules,
                                             match_chains, names, nat_rules,
                                             raw_rules)
from localdirector.dataplane.ruleset import MARK_MASK, MarkMap, desired_rules
from localdirector.dataplane.saved import existing_chains
from localdirector.dataplane.transactions import RuleManager
from localdirector.dataplane.worker import QueueWorker
from localdirector.model.addr import format_ip, parse_ip
from localdirector.model.connection import (CLOSED, FASTPATH, FIN_WAIT, SYN_SENT, Connection,
                                            flow_key)
from localdirector.model.director import Director
from localdirector.model.fastpath import fast_targets, group, mixed
from localdirector.model.state import State

# -- engine -----------------------------------------------------------------------------

Q7 = names(7)   # the chains of the appliance on queue 7, as these tests install


class FakeConntrack:
    """Records deletions; `live` holds the original tuples the 'kernel' still tracks."""

    def __init__(self) -> None:
        # Original tuples, a UDP flow's with "udp" after them.
        self.deleted: list[tuple] = []
        self.live: set[tuple] = set()

    def delete(self, src: int, sport: int, dst: int, dport: int, udp: bool = False) -> bool:
        self.deleted.append((src, sport, dst, dport, *(("udp",) if udp else ())))
        return True

    def alive(self, src: int, sport: int, dst: int, dport: int, udp: bool = False) -> bool:
        return (src, sport, dst, dport, *(("udp",) if udp else ())) in self.live


def marks_for(director: Director) -> dict[tuple[int, int], int]:
    return {target: (i + 1) << 16 for i, target in enumerate(sorted(fast_targets(director)))}


class FastLab(Lab):
    """test_engine's Lab with every virtual on the fast path and its marks installed."""

    def __init__(self, director: Director) -> None:
        for v in director.virtuals.values():
            v.fastpath = True
        super().__init__(director)
        self.kernel = FakeConntrack()
        self.engine = Engine(director, self.clock, kernel=self.kernel)
        self.engine.marks = marks_for(director)

    def send(self, pkt) -> tuple[int, IP | None]:
        buf = bytearray(bytes(pkt))
        original = bytes(buf)
        verdict = self.engine.handle(buf)
        if verdict in (ACCEPT_UNCHANGED, ACCEPT_MARK):
            assert bytes(buf) == original   # the kernel translates, the engine never does
        self.assert_accounted()
        return verdict, (IP(bytes(buf)) if verdict != DROP else None)

    def assert_accounted(self) -> None:
        s = self.engine.stats
        assert s.packets == (s.translated_in + s.translated_out + s.icmp_translated
                             + s.unchanged + s.dropped + s.fastpath_marked + s.fastpath_copies)

    def mark_of(self, conn: Connection) -> int:
        return self.engine.marks[(conn.real.addr, conn.real.port)]

    def syn(self, cport: int = 40000, client: str = CLIENT, vip: str = VIP,
            vport: int = 80) -> Connection:
        verdict, _ = self.client("S", cport, client, vip, vport)
        assert verdict == ACCEPT_MARK
        conn = self.conn(cport, client, vip, vport)
        assert conn is not None and conn.fastpath
        assert self.engine.verdict_mark == self.mark_of(conn)
        return conn

    def open(self, cport: int = 40000, client: str = CLIENT, vip: str = VIP,
             vport: int = 80) -> Connection:
        conn = self.syn(cport, client, vip, vport)
        assert self.real(conn, "SA")[0] == ACCEPT_UNCHANGED
        assert conn.tcp_state is FASTPATH
        return conn

    def close(self, conn: Connection, last: str = "client") -> None:
        """Both ends send a FIN; the kernel copies only the `last` one (iptables.end_rules),
        and that copy ends the connection."""
        cport, client = conn.foreign_port, format_ip(conn.foreign_ip)
        if last == "client":
            assert self.client("FA", cport, client)[0] == ACCEPT_UNCHANGED
        else:
            assert self.real(conn, "FA")[0] == ACCEPT_UNCHANGED
        assert conn.tcp_state is CLOSED
        self.advance(LINGER + 0.5)
        assert self.conn(cport, client) is None

    def orig(self, conn: Connection) -> tuple[int, int, int, int]:
        return (conn.foreign_ip, conn.foreign_port, conn.virtual_ip, conn.virtual_port)


def fast(*args, **kwargs) -> FastLab:
    d, _, _ = pool(*args, **kwargs)
    return FastLab(d)


def test_syn_is_decided_and_the_kernel_translates_the_rest() -> None:
    lab_ = fast((A, "203.0.113.2:8001"), predictor="roundrobin")
    first, second = lab_.syn(40000), lab_.syn(40001)
    assert [(format_ip(c.real_ip), c.real_port) for c in (first, second)] == [
        (A, 80), ("203.0.113.2", 8001)]
    assert lab_.mark_of(first) != lab_.mark_of(second)
    v = lab_.d.virtual(sid(f"{VIP}:80"))
    assert (v.conns_current, v.half_open, first.tcp_state) == (2, 2, SYN_SENT)
    assert first.nat_port == first.foreign_port   # the kernel's NAT remaps, not the engine
    lab_.clock.t += 0.004
    assert lab_.real(first, "SA")[0] == ACCEPT_UNCHANGED
    assert first.answered and first.tcp_state is FASTPATH and v.half_open == 1
    assert first.real.response_time == pytest.approx(0.004)
    for pkt_flags in ("A", "PA"):   # conntrack lost it: marked again, toward the same real
        assert lab_.client(pkt_flags, 40000)[0] == ACCEPT_MARK
        assert lab_.engine.verdict_mark == lab_.mark_of(first)
    s = lab_.engine.stats
    assert (s.fastpath_conns, s.fastpath_marked, s.fastpath_copies, s.translated_in) == (2, 4, 1, 0)
    assert (v.packets_in, v.bytes_out) == (0, 0)   # never seen


def test_fin_both_ways_closes_and_counts_return_to_zero() -> None:
    lab_ = fast((A, B, C), predictor="roundrobin")
    conns = [lab_.open(41000 + i) for i in range(9)]
    assert [r.current_conns for r in lab_.d.reals.values()] == [3, 3, 3]
    for i, conn in enumerate(conns):
        lab_.close(conn, "client" if i % 2 else "real")
    lab_.assert_idle()
    assert not lab_.engine._ports   # no userspace TIME_WAIT memory for fast-path tuples
    s = lab_.engine.stats
    assert (s.conns_created, s.conns_closed, s.fastpath_conns) == (9, 9, 9)
    # A SYN-ACK and one FIN copied each.
    assert s.fastpath_copies == 9 * 2 and s.fastpath_marked == 9


def test_fins_crossing_are_both_copied_and_end_the_connection_once() -> None:
    """Two FINs crossing on two CPUs each find the other's bit set and are both copied:
    the first copy ends the connection, the second is only noted."""
    lab_ = fast((A,))
    conn = lab_.open()
    assert lab_.client("FA", 40000)[0] == ACCEPT_UNCHANGED
    assert conn.tcp_state is CLOSED
    assert lab_.real(conn, "FA")[0] == ACCEPT_UNCHANGED
    assert conn.tcp_state is CLOSED
    lab_.advance(LINGER + 0.5)
    lab_.assert_idle()
    s = lab_.engine.stats
    assert (s.conns_created, s.conns_closed, s.fastpath_copies) == (1, 1, 3)


@pytest.mark.parametrize("side", ["client", "real"])
def test_rst_either_way_ends_an_answered_connection(side: str) -> None:
    lab_ = fast((A,))
    conn = lab_.open()
    send = lab_.client if side == "client" else lambda flags: lab_.real(conn, flags)
    assert send("R")[0] == ACCEPT_UNCHANGED
    assert conn.tcp_state is CLOSED and lab_.kernel.deleted == []
    lab_.advance(LINGER + 0.5)
    lab_.assert_idle()


def test_rst_to_syn_moves_the_connection_and_drops_the_kernel_entry() -> None:
    lab_ = fast((A, B), predictor="roundrobin")
    conn = lab_.syn()
    assert format_ip(conn.real_ip) == A
    verdict, _ = lab_.real(conn, "RA")
    assert verdict == DROP and lab_.drops("reset-absorbed") == 1
    assert lab_.kernel.deleted == [lab_.orig(conn)]
    assert format_ip(conn.real_ip) == B and conn.moved
    assert lab_.d.reals[sid(A)].reset_reassigns == 1
    # The client's retransmission opens a fresh conntrack entry: it takes B's mark and
    # is the first SYN B sees, not a retransmission toward it.
    lab_.clock.t += 1.0
    assert lab_.client("S")[0] == ACCEPT_MARK
    assert lab_.engine.verdict_mark == lab_.mark_of(conn)
    assert (conn.syn_resends, conn.moved, conn.syn_sent_at) == (0, False, lab_.clock.t)
    assert lab_.engine.stats.syn_resends == 0


def test_unanswered_syns_reassign_then_fail_retry_and_recover() -> None:
    lab_ = fast((A, B), predictor="roundrobin")
    bad = lab_.d.reals[sid(A)]
    bad.reassign, bad.threshold, bad.retry = 2, 2, 5
    for cport in (40000, 40001, 40002, 40003):
        conn = lab_.syn(cport)
        if conn.real is not bad:
            continue
        assert lab_.client("S", cport)[0] == ACCEPT_MARK   # resend 1: still A's entry
        assert lab_.engine.verdict_mark == lab_.engine.marks[(bad.addr, 0)]
        verdict, _ = lab_.client("S", cport)                # resend 2: reassign
        assert verdict == DROP and lab_.drops("reassigned") >= 1
        assert lab_.kernel.deleted[-1] == lab_.orig(conn)
        assert conn.real is not bad
    assert bad.noanswer_reassigns == 2 and bad.state is State.FAILED
    assert lab_.engine.stats.syn_resends == 4
    lab_.advance(5)
    assert bad.state is State.TESTING
    probe = lab_.syn(41000)                                 # TESTING takes the next one
    assert probe.real is bad
    assert lab_.real(probe, "SA")[0] == ACCEPT_UNCHANGED
    assert bad.state is State.IN_SERVICE and bad.consecutive_fails == 0


def test_nothing_to_take_the_syn_drops_it_without_a_reset() -> None:
    lab_ = fast((A,))
    lab_.d.set_state(sid(A), State.OUT_OF_SERVICE)
    verdict, _ = lab_.client("S")
    assert verdict == DROP and lab_.drops("no-real") == 1
    assert lab_.engine.stats.refused == 0 and len(lab_.d.conns) == 0


def test_a_real_without_an_installed_mark_gets_no_connection_yet() -> None:
    lab_ = fast((A,))
    lab_.engine.marks = {}
    assert lab_.client("S")[0] == DROP and lab_.drops("mark-pending") == 1
    assert len(lab_.d.conns) == 0


def test_ends_of_unknown_fastpath_connections_pass_other_strays_do_not() -> None:
    lab_ = fast((A,))
    assert lab_.client("FA")[0] == ACCEPT_UNCHANGED   # e.g. after clear conns or a restart
    assert lab_.client("R")[0] == ACCEPT_UNCHANGED
    assert lab_.client("A")[0] == DROP and lab_.drops("no-connection") == 1
    reply = IP(src=A, dst=CLIENT) / TCP(sport=80, dport=40000, flags="FA")
    assert lab_.send(reply)[0] == ACCEPT_UNCHANGED


def test_idle_timer_keeps_what_conntrack_still_holds() -> None:
    lab_ = fast((A,))
    v = lab_.d.virtual(sid(f"{VIP}:80"))
    v.timeout = 60
    kept = lab_.open(40000)
    lab_.open(40001)
    lab_.kernel.live.add(lab_.orig(kept))
    lab_.advance(61)
    assert lab_.conn(40000) is kept and lab_.conn(40001) is None
    assert lab_.engine.stats.conns_timed_out == 1
    lab_.kernel.live.clear()
    lab_.advance(61)
    lab_.assert_idle()
    half_open = lab_.syn(40002)                 # unanswered: the embryonic limit applies
    lab_.advance(EMBRYONIC_TIMEOUT + 1)
    assert lab_.conn(40002) is None and half_open.tcp_state is SYN_SENT


def test_clear_conns_makes_the_kernel_forget_them_too() -> None:
    lab_ = fast((A, B))
    conns = [lab_.open(40000 + i) for i in range(3)]
    assert lab_.engine.clear_conns() == 3
    assert sorted(lab_.kernel.deleted) == sorted(lab_.orig(c) for c in conns)
    lab_.assert_idle()


def test_bind_ids_predictors_and_backups_decide_as_in_userspace() -> None:
    """Same SYNs, same model, one engine per path: the same virtual and real each time."""
    userspace, fast = Lab(fig1()), FastLab(fig1())
    for lab_ in (userspace, fast):
        for v in lab_.d.virtuals.values():
            v.predictor = "roundrobin"
        lab_.d.virtuals[sid(f"{VIP}:80:1")].backup = sid(f"{VIP}:80:0")
        lab_.d.set_state(sid("203.0.113.14"), State.OUT_OF_SERVICE)  # half of pool 1 gone
    clients = [f"198.51.100.{h}" for h in range(2, 8)] + [f"198.18.0.{h}" for h in (2, 3)] \
        + [f"198.19.0.{h}" for h in range(2, 7)]
    chosen = {}
    for name, lab_ in (("userspace", userspace), ("fastpath", fast)):
        chosen[name] = [(c.virtual.bind_id, format_ip(c.real_ip), c.real_port)
                        for c in (lab_.syn(41000 + i, client=client)
                                  for i, client in enumerate(clients))]
    assert chosen["fastpath"] == chosen["userspace"]
    assert {real for bind, real, _ in chosen["fastpath"] if bind == 1} == {"203.0.113.11"}
    hits = [o.hits for o in fast.d.bindids]
    assert hits == [o.hits for o in userspace.d.bindids] == [6, 2]


def test_synguard_counts_fastpath_connections_until_the_real_answers() -> None:
    lab_ = fast((A,))
    lab_.d.virtual(sid(f"{VIP}:80")).synguard = 2
    first = lab_.syn(40000)
    lab_.syn(40001)
    assert lab_.client("S", 40002)[0] == DROP and lab_.drops("synguard") == 1
    lab_.real(first, "SA")
    assert lab_.client("S", 40002)[0] == ACCEPT_MARK


# -- worker ------------------------------------------------------------------------------


class MarkingEngine:
    verdict_mark = 0x00050000

    def handle(self, buf: bytearray) -> int:
        return ACCEPT_MARK

    def tick(self) -> None:
        pass


def test_worker_sets_only_our_bits_of_the_mark() -> None:
    syn = bytes(IP(src=CLIENT, dst=VIP) / TCP(sport=40000, dport=80, flags="S"))
    # Someone else's bits inside and outside our mask: ours replaced, theirs kept.
    assert give(QueueWorker(5, MarkingEngine()), syn, mark=0x0003_00FF) == (
        "accept", None, 0x0005_00FF)
    assert MARK_MASK == 0xFFFF_0000


# -- NFLOG messages ----------------------------------------------------------------------


def test_nflog_payloads_are_cut_out_of_a_datagram_of_messages() -> None:
    packets = [bytes(IP(src=A, dst=CLIENT) / TCP(sport=80, dport=40000 + i, flags="FA"))
               for i in range(2)]

    def message(packet: bytes) -> bytes:
        attrs = netlink.attr(1, b"\x08\x00\x03\x00") + netlink.attr(nflog._PAYLOAD, packet)
        body = struct.pack("!BBH", 2, 0, 7) + attrs
        return struct.pack("=IHHII", 16 + len(body), 4 << 8, 0, 0, 0) + body

    other = struct.pack("=IHHII", 20, 2, 0, 0, 0) + b"\0" * 4   # an ack between them
    got = nflog.payloads(message(packets[0]) + other + message(packets[1]))
    assert [bytes(p) for p in got] == packets


# -- rules --------------------------------------------------------------------------------


def fast_director() -> Director:
    """A fast-path VIP (port-translating and port-0 reals, a backup real) next to a
    userspace one with its own real."""
    d = Director()
    for v in ("192.0.2.10:80", "192.0.2.20:443"):
        d.add_virtual(sid(v))
    for r in ("203.0.113.11:8001", "203.0.113.12", "203.0.113.13", "203.0.113.14"):
        d.add_real(sid(r))
    d.bind(sid("192.0.2.10:80"), sid("203.0.113.11:8001"))
    d.bind(sid("192.0.2.10:80"), sid("203.0.113.12"))
    d.reals[sid("203.0.113.12")].backup = sid("203.0.113.13")
    d.bind(sid("192.0.2.20:443"), sid("203.0.113.14"))
    d.virtuals[sid("192.0.2.10:80")].fastpath = True
    d.virtuals[sid("192.0.2.10:80")].synguard = 50
    return d


def test_without_a_tracked_vip_nothing_in_mangle_turns_conntrack_on() -> None:
    """Userspace VIPs only: no conntrack match or target, so the kernel attaches no
    connection entry to the director's ICMP errors, and queues them (a shared
    unconfirmed one makes it drop them instead)."""
    mangle = match_chains(desired_rules(director()), {}, Q7)["mangle"]
    assert mangle == [":LOCALDIRECTOR7 - [0:0]", ":LOCALDIRECTOR7-REPLY - [0:0]",
                      ":LOCALDIRECTOR7-ACK - [0:0]", ":LOCALDIRECTOR7-STRAY - [0:0]",
                      ":LOCALDIRECTOR7-KNOWN - [0:0]", ":LOCALDIRECTOR7-CEND - [0:0]",
                      ":LOCALDIRECTOR7-REND - [0:0]"]
    # Nor the first transaction: the FIN chains' CONNMARK rules come with a tracked VIP.
    installed = install_tables(match_chains(desired_rules(director()), {}, Q7), Q7,
                               existing_chains("", Q7))["mangle"]
    assert not any("connmark" in line.lower() for line in installed), installed


def test_fast_vips_are_left_to_conntrack_and_queued_from_mangle() -> None:
    rules = desired_rules(fast_director())
    raw = raw_rules(rules, Q7)
    assert not any("192.0.2.10/32 -p tcp -m tcp --dport 80 -j" in line for line in raw)
    assert not any("203.0.113.1" + n in line for line in raw for n in "123")
    assert "-A LOCALDIRECTOR7 -s 203.0.113.14/32 -p tcp -m tcp --sport 443 " \
           "-j LOCALDIRECTOR7-REALQ" in raw
    guard = [line for line in raw if "ldsg" in line]   # shed before conntrack sees it
    assert len(guard) == 1 and "-d 192.0.2.10/32" in guard[0]
    # The budget of new sources checks SYNs in raw, in the chain only SYNs enter (one
    # rule for the other packets, whatever the number of tracked VIPs); their ACKs are
    # noted in mangle.
    assert guard[0].startswith("-A LOCALDIRECTOR7-SYN -d 192.0.2.10/32 ")
    fast_vip = [line for line in raw if "ldknown7" in line and "192.0.2.10/32" in line]
    assert fast_vip == [flood_rules(0xC000020A, Q7, chain=Q7.syn)[-1]]
    assert fast_vip[0].startswith("-A LOCALDIRECTOR7-SYN ")
    gate = "-A LOCALDIRECTOR7 -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -j LOCALDIRECTOR7-SYN"
    assert raw.count(gate) == 1 and raw.index(gate) < raw.index(guard[0])
    assert mangle_rules(rules, Q7) == [
        *known_rules([0xC000020A], Q7),
        "-A LOCALDIRECTOR7 -d 192.0.2.10/32 -p tcp -m tcp --dport 80 -m conntrack --ctstate NEW "
        "-j LOCALDIRECTOR7-QUEUE",
        "-A LOCALDIRECTOR7 -d 192.0.2.10/32 -p tcp -m tcp --dport 80 ! --tcp-flags FIN,RST NONE "
        "-m conntrack --ctstate ESTABLISHED -j LOCALDIRECTOR7-CEND",
        # Packets of the fast path's reals that conntrack does not know: dropped, never
        # forwarded with the real's address (a failover peer's connection, a restart);
        # one state test first, so a known connection's packet meets one rule.
        "-A LOCALDIRECTOR7-REPLY -m conntrack --ctstate INVALID,NEW -j LOCALDIRECTOR7-STRAY",
        *(f"-A LOCALDIRECTOR7-STRAY -s 203.0.113.{real}/32 -p tcp -m tcp --sport {port} "
          "-j DROP" for real, port in ((11, 8001), (12, 80), (13, 80))),
        "-A LOCALDIRECTOR7-REPLY -p tcp -m tcp --tcp-flags RST RST -m conntrack --ctdir REPLY "
        "! --ctstatus ASSURED --ctorigdst 192.0.2.10 --ctorigdstport 80 -j LOCALDIRECTOR7-QUEUE",
        "-A LOCALDIRECTOR7-REPLY -p tcp -m tcp --tcp-flags SYN SYN -m conntrack "
        "--ctdir REPLY --ctorigdst 192.0.2.10 --ctorigdstport 80 -j LOCALDIRECTOR7-LOG",
        "-A LOCALDIRECTOR7-REPLY -p tcp -m tcp ! --tcp-flags FIN,RST NONE -m conntrack "
        "--ctdir REPLY --ctorigdst 192.0.2.10 --ctorigdstport 80 -j LOCALDIRECTOR7-REND",
        *note_rules(Q7),
        *end_rules(Q7),
    ]
    marks = {t: m for t, m in zip(rules.targets, (0x10000, 0x20000, 0x30000))}
    assert nat_rules(rules, marks, Q7) == [
        "-A LOCALDIRECTOR7 -p tcp -m mark --mark 0x10000/0xffff0000 "
        "-j DNAT --to-destination 203.0.113.11:8001",
        "-A LOCALDIRECTOR7 -p tcp -m mark --mark 0x20000/0xffff0000 "
        "-j DNAT --to-destination 203.0.113.12",          # port 0: the client's port stays
        "-A LOCALDIRECTOR7 -p tcp -m mark --mark 0x30000/0xffff0000 "
        "-j DNAT --to-destination 203.0.113.13",          # the backup real may get one too
    ]


def test_tracked_vips_note_a_known_client_once_per_connection() -> None:
    """After conntrack, the first ACK of a connection goes to the chain that notes the
    address in the set and sets our connection-mark bit; later packets fail the
    connmark match of one gate rule, before the set (and before the flags), however
    many VIP addresses are tracked; the gate's chain picks their ACKs."""
    assert known_rules([0xC000020A, 0xC000020B], Q7) == [
        "-A LOCALDIRECTOR7 -p tcp -m connmark --mark 0x0/0x80000000 "
        "-m tcp --tcp-flags SYN,RST,ACK ACK -j LOCALDIRECTOR7-ACK",
        "-A LOCALDIRECTOR7-ACK -d 192.0.2.10/32 -j LOCALDIRECTOR7-KNOWN",
        "-A LOCALDIRECTOR7-ACK -d 192.0.2.11/32 -j LOCALDIRECTOR7-KNOWN"]
    assert known_rules([], Q7) == []
    assert note_rules(Q7) == [
        "-A LOCALDIRECTOR7-KNOWN -j SET --add-set ldknown7 src --exist",
        "-A LOCALDIRECTOR7-KNOWN -j CONNMARK --set-xmark 0x80000000/0x80000000"]
    assert not any("--add-set" in line for line in flood_rules(0xC000020A, Q7, tracked=True))


def test_port_zero_fast_virtual_matches_every_port() -> None:
    d = Director()
    d.add_virtual(sid("192.0.2.30:0")).fastpath = True
    lines = mangle_rules(desired_rules(d), Q7)
    assert lines[:2] == known_rules([0xC000021E], Q7)
    assert lines[2] == ("-A LOCALDIRECTOR7 -d 192.0.2.30/32 -p tcp -m conntrack --ctstate NEW "
                        "-j LOCALDIRECTOR7-QUEUE")
    assert all("--dport" not in line and "--ctorigdstport" not in line for line in lines)


def test_marks_stay_with_their_real_and_are_not_reused_at_once() -> None:
    marks = MarkMap()
    first = marks.assign([(1, 0), (2, 0)])
    second = marks.assign([(2, 0), (3, 0)])
    assert second[(2, 0)] == first[(2, 0)]
    assert second[(3, 0)] not in first.values()   # (1, 0)'s mark is not handed on yet
    assert all(m & ~MARK_MASK == 0 and m for m in second.values())


def test_install_update_remove_cover_mangle_and_nat() -> None:
    seen: list[dict] = []
    fake = FakeIptables()
    manager = RuleManager(7, fake, on_marks=seen.append)
    d = fast_director()
    manager.install(desired_rules(d))
    text = fake.restored[0]
    assert text.startswith("*raw\n")
    mangle = text.split("*mangle\n")[1].split("COMMIT")[0].splitlines()
    assert {"-I PREROUTING 1 -j LOCALDIRECTOR7", "-I FORWARD 1 -j LOCALDIRECTOR7-REPLY",
            "-A LOCALDIRECTOR7-QUEUE -j NFQUEUE --queue-num 7 --queue-bypass",
            "-A LOCALDIRECTOR7-LOG -j NFLOG --nflog-group 7 --nflog-size 128",
            # A FIN is copied once the other side's bit is set, a RST always.
            "-A LOCALDIRECTOR7-CEND -j CONNMARK --set-xmark 0x40000000/0x40000000",
            "-A LOCALDIRECTOR7-CEND -m connmark --mark 0x20000000/0x20000000 "
            "-j LOCALDIRECTOR7-LOG",
            "-A LOCALDIRECTOR7-REND -p tcp -m tcp --tcp-flags RST RST "
            "-j CONNMARK --set-xmark 0x60000000/0x60000000",
            "-A LOCALDIRECTOR7-REND -j CONNMARK --set-xmark 0x20000000/0x20000000",
            "-A LOCALDIRECTOR7-REND -m connmark --mark 0x40000000/0x40000000 "
            "-j LOCALDIRECTOR7-LOG"} <= set(mangle)
    nat = text.split("*nat\n")[1].split("COMMIT")[0].splitlines()
    assert "-I PREROUTING 1 -m mark ! --mark 0x0/0xffff0000 -j LOCALDIRECTOR7" in nat
    assert seen[-1] == {t: m for t, m in seen[-1].items()} and len(seen[-1]) == 3
    # A change on the userspace side rewrites raw only; the mark map stays.
    with d.lock:
        d.remove_virtual(sid("192.0.2.20:443"))
    assert manager.update(desired_rules(d))
    assert fake.restored[-1].startswith("*raw\n") and "*mangle" not in fake.restored[-1]
    assert seen[-1] == seen[0]
    leftovers = FakeIptables(
        "*raw\n:LOCALDIRECTOR7 - [0:0]\n-A PREROUTING -j LOCALDIRECTOR7\nCOMMIT\n"
        "*mangle\n:LOCALDIRECTOR7 - [0:0]\n:LOCALDIRECTOR7-REPLY - [0:0]\n"
        ":LOCALDIRECTOR7-QUEUE - [0:0]\n:LOCALDIRECTOR7-LOG - [0:0]\n"
        "-A PREROUTING -j LOCALDIRECTOR7\n-A FORWARD -j LOCALDIRECTOR7-REPLY\nCOMMIT\n"
        "*nat\n:LOCALDIRECTOR7 - [0:0]\n"
        "-A PREROUTING -m mark ! --mark 0x0/0xffff0000 -j LOCALDIRECTOR7\nCOMMIT\n")
    RuleManager(7, leftovers).remove()
    removal = leftovers.restored[0]
    for table in ("raw", "mangle", "nat"):
        body = removal.split(f"*{table}\n")[1].split("COMMIT")[0]
        assert "-D PREROUTING" in body and "-X LOCALDIRECTOR7\n" in body
    assert "-X LOCALDIRECTOR7-LOG" in removal and "-D FORWARD -j LOCALDIRECTOR7-REPLY" in removal


def test_counters_add_both_queues_and_count_copies() -> None:
    fake = FakeIptables()
    manager = RuleManager(7, fake)
    manager.install(desired_rules(fast_director()))
    fake.saved = ("*raw\n[10:1] -A LOCALDIRECTOR7-QUEUE -j NFQUEUE --queue-num 7 "
                  "--queue-bypass\nCOMMIT\n*mangle\n[5:1] -A LOCALDIRECTOR7-QUEUE -j NFQUEUE "
                  "--queue-num 7 --queue-bypass\n[15:1] -A LOCALDIRECTOR7-LOG -j NFLOG "
                  "--nflog-group 7 --nflog-size 128\n[9:1] -A LOCALDIRECTOR7-REPLY -m "
                  "conntrack --ctstate INVALID,NEW -j LOCALDIRECTOR7-STRAY\n[3:1] -A "
                  "LOCALDIRECTOR7-STRAY -s 203.0.113.11/32 -p tcp -m tcp --sport 8001 -j DROP\n"
                  "[2:1] -A LOCALDIRECTOR7-STRAY -s 203.0.113.12/32 -p tcp -m tcp --sport 80 "
                  "-j DROP\nCOMMIT\n")
    assert manager.counters() == {"queued": 15, "shed": 0, "flood": 0, "datagram_flood": 0,
                                  "logged": 15, "stray": 5}


# -- which virtuals share a mode ---------------------------------------------------------


def test_groups_follow_vip_ports_backups_and_shared_reals() -> None:
    d = fig1()
    d.virtuals[sid(f"{VIP}:80:1")].backup = sid(f"{VIP}:80:0")
    other = d.add_virtual(sid("192.0.2.20:80"))
    lonely = d.add_virtual(sid("192.0.2.30:80"))
    assert len(group(d, d.virtuals[sid(f"{VIP}:80:2")])) == 3
    assert group(d, lonely) == [lonely]
    d.bind(other.sid, sid("203.0.113.12"))   # shares a real (port 80) with instance 0
    assert other in group(d, lonely := d.virtuals[sid(f"{VIP}:80:0")])
    assert mixed(d) is None
    for v in group(d, lonely):
        v.fastpath = v is not other
    assert mixed(d) == ("192.0.2.10:80:0:tcp is on the fast path and 192.0.2.20:80:0:tcp is "
                        "not, but both send connections to 203.0.113.12 port 80")


@pytest.fixture
def shell(tmp_path: Path) -> Shell:
    sh = Shell(tmp_path)
    assert sh(*(Path(__file__).parents[1] / "examples" / "fig1.cfg").read_text().splitlines(),
              "virtual 192.0.2.20:80", "real 203.0.113.16"), sh.take()
    sh.take()
    return sh


def test_fastpath_switches_every_instance_of_the_vip_and_round_trips(shell: Shell,
                                                                      tmp_path: Path) -> None:
    assert shell("fastpath 192.0.2.10:80:2")
    assert shell.take() == ("fastpath on also for 192.0.2.10:80:0:tcp, 192.0.2.10:80:1:tcp "
                            "(same VIP:port, backup or real)\n")
    saved = shell.config()
    assert [line for line in saved if line.startswith("fastpath")] == [
        "fastpath 192.0.2.10:80", "fastpath 192.0.2.10:80:1", "fastpath 192.0.2.10:80:2"]
    replayed = Shell(tmp_path / "again")
    assert replayed(*saved), replayed.take()
    assert replayed.config() == saved
    assert shell("virtual 192.0.2.10:80:3")   # a new instance follows its siblings
    assert "is on the fast path like" in shell.take()
    assert shell.director.virtuals[sid("192.0.2.10:80:3")].fastpath
    assert shell("no fastpath 192.0.2.10:80:0")
    assert not any(v.fastpath for v in shell.director.virtuals.values())
    assert not any(line.startswith("fastpath") for line in shell.config())


@pytest.mark.parametrize("line, message", [
    ("bind 192.0.2.20:80 203.0.113.16 203.0.113.12",
     "% 192.0.2.10:80:0:tcp is on the fast path and 192.0.2.20:80:0:tcp is not, but both "
     "send connections to 203.0.113.12 port 80"),
    ("backup 192.0.2.10:80:0 192.0.2.20:80",
     "% 192.0.2.10:80:0:tcp is on the fast path and 192.0.2.20:80:0:tcp is not, but one is "
     "the backup of the other"),
    ("virtual 192.0.2.10:0",
     "% 192.0.2.10:80:0:tcp is on the fast path and 192.0.2.10:8080:0:tcp is not, but both "
     "are reached at 192.0.2.10 (port 0 covers every port)"),
])
def test_mixing_a_fast_and_a_userspace_virtual_is_refused(shell: Shell, line: str,
                                                          message: str) -> None:
    assert shell("fastpath 192.0.2.10:80:0", "virtual 192.0.2.10:8080")
    shell.take()
    before = shell.config()
    assert not shell(line)
    assert shell.take().splitlines()[-1] == message
    assert shell.config() == before   # nothing of the refused line stays, not even the
    #                                   real that could be bound before the bad one


def test_switching_with_open_connections_is_refused(shell: Shell) -> None:
    d = shell.director
    v = d.virtuals[sid("192.0.2.10:80:0")]
    d.conns.add(Connection(parse_ip(CLIENT), 40000, v.addr, 80, v,
                           d.reals[sid("203.0.113.12")], 0.0))
    assert not shell("fastpath 192.0.2.10:80:1")
    assert shell.take().splitlines()[-1] == (
        "% 1 open connection on 192.0.2.10:80:1:tcp and the virtuals that switch with it "
        "would break; take them out of service until show conns lists none, or clear conns")
    assert not any(v.fastpath for v in d.virtuals.values())


def test_show_conns_marks_fastpath_connections_and_hides_their_idle_time(shell: Shell) -> None:
    d = shell.director
    v = d.virtuals[sid("192.0.2.10:80:0")]
    conn = Connection(parse_ip(CLIENT), 40000, v.addr, 80, v, d.reals[sid("203.0.113.12")],
                      time.monotonic())
    conn.fastpath = True
    conn.tcp_state = FASTPATH
    d.conns.add(conn)
    assert shell("do show conns")
    rows = shell.take().splitlines()
    assert rows[2].split() == [f"{CLIENT}:40000", f"{VIP}:80", "203.0.113.12:80", "FASTPATH",
                               "00:00:00", "-", "fastpath", "tcp"]
    assert rows[-1] == FASTPATH_NOTE
    assert shell("do show conns detail")
    assert "translated by the kernel (fastpath)\n" in shell.take()
    assert flow_key(conn.foreign_ip, 40000, v.addr, 80) in d.conns.inbound
