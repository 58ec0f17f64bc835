"""The engine-decided fast path for IPv6 without a kernel (docs/design.rst, "Fast path"):
SYNs and a flow's first datagrams decided and marked with their real's mark of the
right protocol, the real's SYN-ACK, FINs, RSTs and datagrams taken note of from NFLOG
copies cut to the copy range (crafted by scapy, wrapped in NFLOG messages), conntrack
asked about IPv6 tuples of the right protocol, and the ip6tables rules: the mark map's
DNATs, the mangle chains and the untracked-reply drop, beside IPv4's unchanged."""

from __future__ import annotations

import struct

from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw
from test_engine import Clock
from test_fastpath import FakeConntrack, marks_for
from test_rules6 import Tools, dual_stack

import test_engine
from localdirector.dataplane import netlink, nflog
from localdirector.dataplane.engine import ACCEPT_MARK, ACCEPT_UNCHANGED, DROP, Engine
from localdirector.dataplane.ruleset import DISPATCH_PORT, desired_rules
from localdirector.dataplane.stats import REASON_NAMES
from localdirector.dataplane.transactions import DualStack
from localdirector.model.addr import format_ip, parse_ip
from localdirector.model.connection import (CLOSED, FASTPATH, REPLIED, SYN_SENT, Connection,
                                            flow_key, udp_key)
from localdirector.model.director import Director
from localdirector.model.serverid import UDP_SERVICE, ServerId

VIP, CLIENT = "2001:db8::10", "2001:db8:c::5"
A, B = "2001:db8:1::11", "2001:db8:1::12"
LINGER = test_engine.LINGER


def sid(addr: str, port: int = 0, proto: str = "tcp") -> ServerId:
    return ServerId(parse_ip(addr), port, 0, proto)


def copies(*packets) -> list[bytearray]:
    """The packets as the engine gets them from the kernel: NFLOG messages of one
    datagram, each packet cut to the copy range, cut out again by nflog.payloads."""
    def message(packet: bytes) -> bytes:
        attrs = netlink.attr(1, b"\x86\xdd\x03\x00") + netlink.attr(
            nflog._PAYLOAD, packet[:nflog.COPY_RANGE])
        body = struct.pack("!BBH", 10, 0, 7) + attrs    # AF_INET6, group 7
        return struct.pack("=IHHII", 16 + len(body), 4 << 8, 0, 0, 0) + body
    return nflog.payloads(b"".join(message(bytes(p)) for p in packets))


class FastLab6:
    """One IPv6 VIP on the fast path, tcp :80 and udp :53, over the same two reals
    (tcp and udp ids of one address and port: a mark each), with a fake conntrack."""

    def __init__(self) -> None:
        self.d = d = Director()
        for proto, port in (("tcp", 80), ("udp", 53)):
            d.add_virtual(sid(VIP, port, proto)).fastpath = True
            for real in (A, B):
                d.add_real(sid(real, 0, proto))
            d.bind(sid(VIP, port, proto), sid(A, 0, proto), sid(B, 0, proto))
            d.virtuals[sid(VIP, port, proto)].predictor = "roundrobin"
        self.clock = Clock()
        self.kernel = FakeConntrack()
        self.engine = Engine(d, self.clock, kernel=self.kernel)
        self.engine.marks = marks_for(d)

    def send(self, pkt) -> int:
        buf = bytearray(bytes(pkt))
        verdict = self.engine.handle(buf)
        assert bytes(buf) == bytes(pkt)   # the kernel translates, the engine never does
        return verdict

    def copied(self, *packets) -> list[int]:
        return [self.engine.handle(buf) for buf in copies(*packets)]

    def client(self, flags: str, cport: int = 40000) -> int:
        return self.send(IPv6(src=CLIENT, dst=VIP) / TCP(
            sport=cport, dport=80, flags=flags, seq=1000 if "S" in flags else 1001,
            ack=5001 if "A" in flags else 0))

    def real(self, conn: Connection, flags: str, load: bytes = b"") -> IPv6:
        pkt = IPv6(src=format_ip(conn.real_ip), dst=CLIENT) / TCP(
            sport=conn.real_port, dport=conn.foreign_port, flags=flags,
            seq=5000 if "S" in flags else 5001, ack=1001)
        return pkt / Raw(load) if load else pkt

    def conn(self, cport: int = 40000, port: int = 80, udp: bool = False) -> Connection:
        key = flow_key(parse_ip(CLIENT), cport, parse_ip(VIP), port)
        found = self.d.conns.inbound.get(key | udp_key(129) if udp else key)
        assert found is not None and found.fastpath
        return found

    def mark(self, conn: Connection, udp: bool = False) -> int:
        return self.engine.marks[(conn.real.addr, conn.real.port | (UDP_SERVICE if udp else 0))]

    def orig(self, conn: Connection, *udp: str) -> tuple:
        return (conn.foreign_ip, conn.foreign_port, conn.virtual_ip, conn.virtual_port, *udp)

    def drops(self, name: str) -> int:
        return self.engine.stats.drops[REASON_NAMES.index(name)]


def test_an_ipv6_syn_takes_its_reals_tcp_mark_and_copies_carry_the_connection() -> None:
    lab = FastLab6()
    assert lab.client("S") == ACCEPT_MARK
    conn = lab.conn()
    assert format_ip(conn.real_ip) == A and conn.tcp_state is SYN_SENT
    # The TCP DNAT's mark, not the UDP one of the same address and port (a key-size
    # test took every IPv6 key for a UDP flow's).
    assert lab.engine.verdict_mark == lab.mark(conn) != lab.mark(conn, udp=True)
    assert lab.copied(lab.real(conn, "SA")) == [ACCEPT_UNCHANGED]
    assert conn.answered and conn.tcp_state is FASTPATH
    # The client's FIN, then the real's FIN with 1000 bytes of data: its copy is cut at
    # 128 bytes, the headers whole.
    assert lab.copied(IPv6(src=CLIENT, dst=VIP) / TCP(sport=40000, dport=80, flags="FA",
                                                       seq=1001, ack=5001),
                      lab.real(conn, "FPA", b"x" * 1000)) == [ACCEPT_UNCHANGED] * 2
    assert conn.tcp_state is CLOSED
    lab.clock.t += LINGER + 0.5
    lab.engine.tick()
    v, real = lab.d.virtual(sid(VIP, 80)), lab.d.reals[sid(A)]
    assert (v.conns_current, v.conns_total, real.current_conns, real.total_conns) == (0, 1, 0, 1)
    s = lab.engine.stats
    assert (s.fastpath_conns, s.fastpath_marked, s.fastpath_copies, s.translated_in,
            s.dropped) == (1, 1, 3, 0, 0)
    assert lab.kernel.deleted == []


def test_a_reals_rst_to_the_syn_moves_it_and_deletes_the_ipv6_tcp_entry() -> None:
    lab = FastLab6()
    assert lab.client("S") == ACCEPT_MARK
    conn = lab.conn()
    assert lab.send(lab.real(conn, "RA")) == DROP and lab.drops("reset-absorbed") == 1
    assert lab.kernel.deleted == [lab.orig(conn)]          # a TCP tuple, of IPv6 ints
    assert format_ip(conn.real_ip) == B and conn.moved
    lab.clock.t += 1.0
    assert lab.client("S") == ACCEPT_MARK and lab.engine.verdict_mark == lab.mark(conn)


def test_the_idle_timer_asks_conntrack_about_the_ipv6_tcp_tuple() -> None:
    lab = FastLab6()
    lab.d.virtual(sid(VIP, 80)).timeout = 60
    assert lab.client("S", 40000) == lab.client("S", 40001) == ACCEPT_MARK
    kept, gone = lab.conn(40000), lab.conn(40001)
    assert lab.copied(lab.real(kept, "SA"), lab.real(gone, "SA")) == [ACCEPT_UNCHANGED] * 2
    lab.kernel.live.add(lab.orig(kept))
    lab.clock.t += 61
    lab.engine.tick()
    assert lab.d.conns.inbound.get(kept.in_key) is kept
    assert lab.d.conns.inbound.get(gone.in_key) is None


def test_an_ipv6_udp_flow_is_marked_answered_by_a_copy_and_moved_with_its_entry() -> None:
    lab = FastLab6()
    lab.d.reals[sid(A, 0, "udp")].reassign = 2

    def datagram() -> int:
        return lab.send(IPv6(src=CLIENT, dst=VIP) / UDP(sport=30000, dport=53) / Raw(b"q"))

    assert datagram() == ACCEPT_MARK
    flow = lab.conn(30000, 53, udp=True)
    assert lab.engine.verdict_mark == lab.mark(flow, udp=True) != lab.mark(flow)
    answer = IPv6(src=A, dst=CLIENT) / UDP(sport=53, dport=30000) / Raw(b"a" * 300)
    assert lab.copied(answer) == [ACCEPT_UNCHANGED]
    assert flow.answered and flow.tcp_state is REPLIED
    assert datagram() == datagram() == ACCEPT_MARK       # unanswered: counted
    assert datagram() == DROP and lab.drops("reassigned") == 1
    assert lab.kernel.deleted == [lab.orig(flow, "udp")] and format_ip(flow.real_ip) == B
    assert datagram() == ACCEPT_MARK and lab.engine.verdict_mark == lab.mark(flow, udp=True)


# -- rules --------------------------------------------------------------------------------

def test_ipv6_fast_path_rules_go_to_ip6tables_with_bracketed_dnats() -> None:
    d = dual_stack()     # test_rules6's: 192.0.2.10 and 2001:db8::10, tcp :80 and udp :53
    with d.lock:
        for vip in ("192.0.2.10", "2001:db8::10"):
            d.virtuals[ServerId(parse_ip(vip), 80, 0, "tcp")].fastpath = True
            d.virtuals[ServerId(parse_ip(vip), 53, 0, "udp")].fastpath = True
    tools, seen = Tools(), []
    DualStack(7, tools, on_marks=seen.append).install(desired_rules(d))
    v4, v6 = ("".join(tools.restored[tool]) for tool in ("iptables", "ip6tables"))
    assert "2001:db8" not in v4 and "-j DNAT --to-destination 203.0.113.11:8001" in v4
    lines = v6.splitlines()
    q, log, end = "LOCALDIRECTOR7-QUEUE", "LOCALDIRECTOR7-LOG", "LOCALDIRECTOR7-"
    for line in (
        f"-A LOCALDIRECTOR7 -d 2001:db8::10/128 -p tcp -m tcp --dport 80 "
        f"-m conntrack --ctstate NEW -j {q}",
        f"-A LOCALDIRECTOR7 -d 2001:db8::10/128 -p tcp -m tcp --dport 80 "
        f"! --tcp-flags FIN,RST NONE -m conntrack --ctstate ESTABLISHED -j {end}CEND",
        f"-A LOCALDIRECTOR7 -d 2001:db8::10/128 -p udp -m udp --dport 53 "
        f"-m conntrack --ctstate NEW -j {q}",
        "-A LOCALDIRECTOR7-REPLY -p tcp -m tcp --tcp-flags RST RST -m conntrack --ctdir "
        f"REPLY ! --ctstatus ASSURED --ctorigdst 2001:db8::10 --ctorigdstport 80 -j {q}",
        "-A LOCALDIRECTOR7-REPLY -p tcp -m tcp --tcp-flags SYN SYN -m conntrack "
        f"--ctdir REPLY --ctorigdst 2001:db8::10 --ctorigdstport 80 -j {log}",
        "-A LOCALDIRECTOR7-REPLY -p tcp -m tcp ! --tcp-flags FIN,RST NONE -m conntrack "
        f"--ctdir REPLY --ctorigdst 2001:db8::10 --ctorigdstport 80 -j {end}REND",
        # The FINs' connection-mark bits, as in IPv4 (iptables.end_rules).
        f"-A {end}CEND -j CONNMARK --set-xmark 0x40000000/0x40000000",
        f"-A {end}REND -m connmark --mark 0x40000000/0x40000000 -j {log}",
        "-A LOCALDIRECTOR7-REPLY -p udp -m conntrack --ctdir REPLY ! --ctstatus ASSURED "
        f"--ctorigdst 2001:db8::10 --ctorigdstport 53 -j {log}",
        # The untracked-reply drop: an IPv6 real's packets conntrack does not know.
        "-A LOCALDIRECTOR7-REPLY -m conntrack --ctstate INVALID,NEW -j LOCALDIRECTOR7-STRAY",
        "-A LOCALDIRECTOR7-STRAY -s 2001:db8:1::11/128 -p tcp -m tcp --sport 8001 -j DROP",
        "-A LOCALDIRECTOR7-STRAY -s 2001:db8:1::11/128 -p udp -m udp --sport 53 -j DROP",
        "-A LOCALDIRECTOR7-LOG -j NFLOG --nflog-group 7 --nflog-size 128",
        "-I PREROUTING 1 -m mark ! --mark 0x0/0xffff0000 -j LOCALDIRECTOR7",
    ):
        assert line in lines, line
    # The mark map: each IPv6 real and protocol its DNAT, the address bracketed before
    # a port; a udp real of port 0 keeps the client's destination port.
    dnat = sorted(line for line in lines if "DNAT" in line)
    marks = seen[-1]
    a = parse_ip("2001:db8:1::11")
    assert dnat == sorted([
        f"-A LOCALDIRECTOR7 -p tcp -m mark --mark 0x{marks[(a, 8001)]:x}/0xffff0000 "
        "-j DNAT --to-destination [2001:db8:1::11]:8001",
        f"-A LOCALDIRECTOR7 -p udp -m mark --mark 0x{marks[(a, UDP_SERVICE)]:x}/0xffff0000 "
        "-j DNAT --to-destination 2001:db8:1::11"])
    # The engine hears of both families' marks at once, keyed by tagged addresses.
    assert {(format_ip(addr), port) for addr, port in marks} == {
        ("203.0.113.11", 8001), ("203.0.113.11", UDP_SERVICE),
        ("2001:db8:1::11", 8001), ("2001:db8:1::11", UDP_SERVICE)}


def test_an_engine_decided_dispatched_ipv6_virtual_tees_to_its_reals_in_ip6tables() -> None:
    """The other user of the mark map, no longer refused with it: a dispatched IPv6
    virtual the engine decides clones each marked packet to the real's address."""
    d = Director()
    with d.lock:
        d.add_virtual(sid(VIP, 80))
        d.add_real(sid(A))
        d.bind(sid(VIP, 80), sid(A))
        d.set_dispatched(sid(VIP, 80), True)
    tools, seen = Tools(), []
    DualStack(7, tools, on_marks=seen.append).install(desired_rules(d))
    mark = seen[-1][(parse_ip(A), DISPATCH_PORT)]
    match = f"-A LOCALDIRECTOR7 -m mark --mark 0x{mark:x}/0xffff0000"
    v6 = "".join(tools.restored["ip6tables"]).splitlines()
    assert f"{match} -j TEE --gateway {A}" in v6 and f"{match} -j DROP" in v6
