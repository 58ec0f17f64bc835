"""Fuzzing the engine with IPv6 (issue 26 item 7; test_robust_fuzz.py does IPv4): packets
of live connections and flows, mutated where IPv6 differs from IPv4 (payload length,
extension-header chains, truncation, hop limit 0/1), and arbitrary bytes with version 6.

After every packet: a verdict and no exception; ACCEPT_UNCHANGED left the bytes alone;
every packet in exactly one bucket; a packet handed back parses and its transport
checksum is right whenever the one that came in had it right; the connection table is
consistent both ways and its gauges equal a recount.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6PacketTooBig,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.packet import Raw

from localdirector.dataplane import datagram, icmp, ipv6, packet
from localdirector.dataplane.engine import ACCEPT_MODIFIED, ACCEPT_UNCHANGED, DROP, Engine
from localdirector.model.addr import format_ip, parse_ip
from localdirector.model.connection import HALF_OPEN_STATES, flow_key
from localdirector.model.director import Director
from localdirector.model.serverid import ServerId

VIP = "2001:db8::10"
CLIENTS = ("2001:db8:c::5", "2001:db8:c::6", "2001:db8:d::7")
REALS = ("2001:db8:1::11", "2001:db8:1::12")
ROUTER = "2001:db8:ff::1"


def sid(addr: str, port: int = 0, proto: str = "tcp") -> ServerId:
    return ServerId(parse_ip(addr), port, 0, proto)


def build() -> tuple[Director, list[float], Engine]:
    d = Director()
    for proto, port in (("tcp", 80), ("udp", 53)):
        d.add_virtual(sid(VIP, port, proto))
        for real in REALS:
            d.add_real(sid(real, 0, proto))
            d.bind(sid(VIP, port, proto), sid(real, 0, proto))
    d.settings.max_conns = 16
    clock = [1000.0]
    return d, clock, Engine(d, lambda: clock[0])


def transport_ok(buf: bytes | bytearray) -> bool:
    """Whether a whole IPv6 TCP or UDP packet's checksum is right (False otherwise)."""
    buf = bytearray(buf)
    for parse, proto in ((ipv6.parse_tcp6, packet.PROTO_TCP),
                         (datagram.parse_udp, packet.PROTO_UDP)):
        fields = parse(buf) if len(buf) >= 40 and buf[0] >> 4 == 6 else None
        if isinstance(fields, tuple):
            return len(buf) == fields[1] and packet.tcp_checksum_valid(buf, fields[0], proto)
    return False


def check(d: Director, engine: Engine) -> None:
    stats = engine.stats
    assert stats.packets == (stats.translated_in + stats.translated_out
                             + stats.icmp_translated + stats.unchanged + stats.dropped)
    table = d.conns
    assert len(table.reply) == len(table.inbound) <= d.settings.max_conns
    virtuals: Counter[int] = Counter()
    half: Counter[int] = Counter()
    for key, conn in table.inbound.items():
        base = flow_key(conn.foreign_ip, conn.foreign_port, conn.virtual_ip, conn.virtual_port)
        assert key == conn.in_key and key & base == base
        assert table.reply[conn.reply_key()] is conn
        virtuals[id(conn.virtual)] += 1
        half[id(conn.virtual)] += conn.tcp_state in HALF_OPEN_STATES
    for v in d.virtuals.values():
        assert (v.conns_current, v.half_open) == (virtuals[id(v)], half[id(v)])
    assert stats.conns_created - stats.conns_closed == len(table.inbound)


def send(d: Director, engine: Engine, buf: bytearray) -> int:
    before = bytes(buf)
    verdict = engine.handle(buf)
    assert verdict in (DROP, ACCEPT_UNCHANGED, ACCEPT_MODIFIED)
    if verdict == ACCEPT_UNCHANGED:
        assert bytes(buf) == before
    elif verdict == ACCEPT_MODIFIED:
        assert isinstance(ipv6.parse_tcp6(buf), tuple) or isinstance(
            datagram.parse_udp(buf), tuple) or isinstance(icmp.parse_icmp_error(buf),
                                                          tuple), before.hex()
        if transport_ok(before):
            assert transport_ok(buf), before.hex()
    check(d, engine)
    return verdict


_EXT = {
    "hbh": IPv6ExtHdrHopByHop, "dst": IPv6ExtHdrDestOpt,
    "rt0": lambda: IPv6ExtHdrRouting(segleft=0), "rt1": lambda: IPv6ExtHdrRouting(
        segleft=1, addresses=[ROUTER]),
    "atomic": lambda: IPv6ExtHdrFragment(offset=0, m=0),
    "first": lambda: IPv6ExtHdrFragment(offset=0, m=1),
    "later": lambda: IPv6ExtHdrFragment(offset=5, m=0),
}


@st.composite
def mutated(draw) -> tuple[str, bytearray]:
    """A packet of the live traffic, with a chain, a hop limit, a length and a cut."""
    kind = draw(st.sampled_from(["syn", "data", "reply", "udp", "ptb"]))
    client = draw(st.sampled_from(CLIENTS))
    chain = draw(st.lists(st.sampled_from(sorted(_EXT)), max_size=10))
    hlim = draw(st.sampled_from([0, 1, 2, 64, 255]))
    ip = IPv6(src=client, dst=VIP, hlim=hlim)
    for name in chain:
        ip = ip / _EXT[name]()
    load = Raw(draw(st.binary(max_size=64)))
    if kind == "syn":
        pkt = ip / TCP(sport=40000, dport=80, flags="S") / load
    elif kind == "data":
        pkt = ip / TCP(sport=40000, dport=80, flags="PA", seq=1001, ack=5001) / load
    elif kind == "udp":
        pkt = ip / UDP(sport=5353, dport=53) / load
    elif kind == "reply":
        ip.src, ip.dst = REALS[0], client
        pkt = ip / TCP(sport=80, dport=40000, flags="PA", seq=5001, ack=1001) / load
    else:
        inner = IPv6(src=client, dst=REALS[0]) / TCP(sport=40000, dport=80, flags="PA")
        ip.src, ip.dst = ROUTER, client
        pkt = ip / ICMPv6PacketTooBig(mtu=1280) / Raw(bytes(inner / load)[
            :draw(st.integers(0, 120))])
    buf = bytearray(bytes(pkt))
    if draw(st.booleans()):
        buf[4:6] = draw(st.integers(0, 0xFFFF)).to_bytes(2, "big")   # payload length
    if draw(st.booleans()):
        buf = buf[:draw(st.integers(0, len(buf)))]
    for _ in range(draw(st.integers(0, 3))):
        if buf:
            buf[draw(st.integers(0, len(buf) - 1))] = draw(st.integers(0, 255))
    return kind, buf


def open_traffic(d: Director, engine: Engine) -> None:
    """Live connections and flows for the mutations to hit."""
    for client in CLIENTS:
        send(d, engine, bytearray(bytes(IPv6(src=client, dst=VIP) / TCP(
            sport=40000, dport=80, flags="S", seq=1000))))
        conn = d.conns.inbound[flow_key(parse_ip(client), 40000, parse_ip(VIP), 80)]
        send(d, engine, bytearray(bytes(IPv6(src=format_ip(conn.real_ip), dst=client)
                                        / TCP(sport=80, dport=40000, flags="SA", seq=5000,
                                              ack=1001))))
        send(d, engine, bytearray(bytes(IPv6(src=client, dst=VIP) / UDP(sport=5353,
                                                                          dport=53))))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutated(), min_size=1, max_size=6))
def test_mutated_ipv6_traffic_never_escapes(packets) -> None:
    d, clock, engine = build()
    open_traffic(d, engine)
    for _kind, buf in packets:
        send(d, engine, buf)
        clock[0] += 1
        engine.tick()
        check(d, engine)


@settings(max_examples=400, deadline=None)
@given(st.binary(min_size=1, max_size=120))
def test_arbitrary_bytes_with_version_6(data: bytes) -> None:
    d, _clock, engine = build()
    open_traffic(d, engine)
    buf = bytearray(data)
    buf[0] = 0x60 | (buf[0] & 0x0F)
    send(d, engine, buf)


def test_the_reasons_ipv6_adds_are_reached() -> None:
    """The fuzz's mutations reach every IPv6 reason (so they are not dead code)."""
    d, _clock, engine = build()
    open_traffic(d, engine)
    for chain in (["first"], ["later"], ["rt1"], ["dst", "hbh"], ["dst"] * 9):
        ip = IPv6(src=CLIENTS[0], dst=VIP)
        for name in chain:
            ip = ip / _EXT[name]()
        send(d, engine, bytearray(bytes(ip / TCP(dport=80, flags="S"))))
    send(d, engine, bytearray(bytes(IPv6(src=CLIENTS[0], dst=VIP, hlim=1) / TCP(dport=80))))
    snap = engine.stats.snapshot()["drops"]
    assert {reason: snap[reason] for reason in
            ("fragment", "routing-header", "ext-header", "ext-chain", "hop-limit")} == \
        {"fragment": 2, "routing-header": 1, "ext-header": 1, "ext-chain": 1, "hop-limit": 1}
