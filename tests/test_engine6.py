"""IPv6 through the FIG. 5 engine (docs/design.rst, "IPv6 packets"): every packet built by
scapy, every translated packet's checksums recomputed by scapy and compared; extension
headers skipped or refused under their reasons; ICMPv6 errors (Packet Too Big above
all) translated both ways; neighbour discovery left alone; IPv4 keys as they were."""

from __future__ import annotations

import pytest
from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoRequest,
    ICMPv6ND_NS,
    ICMPv6PacketTooBig,
    IPerror6,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    TCPerror,
    UDPerror,
)
from scapy.layers.ipsec import AH, ESP
from scapy.packet import Raw

import test_engine
from localdirector.dataplane import icmp, ipv6, packet
from localdirector.dataplane.engine import ACCEPT_MODIFIED, ACCEPT_UNCHANGED, DROP
from localdirector.dataplane.stats import REASON_NAMES
from localdirector.model.addr import format_ip, parse_ip
from localdirector.model.connection import (ESTABLISHED, UDP_KEY, Connection, flow_key,
                                            udp_key)
from localdirector.model.director import Director
from localdirector.model.serverid import ServerId

VIP = "2001:db8::10"
CLIENT = "2001:db8:c::5"
A, B = "2001:db8:1::11", "2001:db8:1::12"
ROUTER = "2001:db8:ff::1"


def sid(addr: str, port: int = 0, bind: int = 0, proto: str = "tcp") -> ServerId:
    return ServerId(parse_ip(addr), port, bind, proto)


def assert_checksums(buf: bytes) -> None:
    """scapy recomputing the outer transport (or ICMPv6) checksum changes nothing."""
    pkt = IPv6(buf)
    for layer, field in ((ICMPv6PacketTooBig, "cksum"), (ICMPv6DestUnreach, "cksum"),
                         (TCP, "chksum"), (UDP, "chksum")):
        if layer in pkt:
            fresh = pkt.copy()
            delattr(fresh[layer], field)
            fresh = IPv6(bytes(fresh))
            assert getattr(pkt[layer], field) == getattr(fresh[layer], field), layer.__name__
            return
    raise AssertionError("no transport layer")


def checked(buf: bytes) -> None:
    assert len(buf) == packet.ip_total(buf)
    assert_checksums(buf)


class Lab(test_engine.Lab):
    """test_engine's Lab over one IPv6 virtual (tcp :80, or udp :53) and its reals."""

    layer = IPv6
    checksums = staticmethod(checked)

    def __init__(self, reals: tuple[str, ...] = (A, B), proto: str = "tcp",
                 port: int = 80) -> None:
        d = Director()
        vsid = sid(VIP, port, 0, proto)
        d.add_virtual(vsid)
        for real in reals:
            d.add_real(sid(real, 0, 0, proto))
            d.bind(vsid, sid(real, 0, 0, proto))
        super().__init__(d)

    def client(self, flags: str, load: bytes = b"", cport: int = 40000, **ip) -> tuple:
        pkt = IPv6(src=CLIENT, dst=VIP, **ip) / TCP(
            sport=cport, dport=80, flags=flags, seq=1000 if "S" in flags else 1001,
            ack=5001 if "A" in flags else 0)
        return self.send(pkt / Raw(load) if load else pkt)

    def real(self, conn: Connection, flags: str, load: bytes = b"") -> tuple:
        pkt = IPv6(src=format_ip(conn.real_ip), dst=CLIENT) / TCP(
            sport=conn.real_port, dport=conn.nat_port, flags=flags,
            seq=5000 if "S" in flags else 5001, ack=1001)
        return self.send(pkt / Raw(load) if load else pkt)

    def conn(self, cport: int = 40000) -> Connection | None:
        return self.d.conns.inbound.get(flow_key(parse_ip(CLIENT), cport, parse_ip(VIP), 80))

    def open(self) -> Connection:
        verdict, out = self.client("S")
        assert verdict == ACCEPT_MODIFIED
        conn = self.conn()
        assert conn is not None
        assert (out.src, out.dst, out[TCP].dport) == (CLIENT, format_ip(conn.real_ip), 80)
        verdict, out = self.real(conn, "SA")
        assert verdict == ACCEPT_MODIFIED
        assert (out.src, out[TCP].sport, out.dst, out[TCP].dport) == (VIP, 80, CLIENT, 40000)
        assert self.client("A")[0] == ACCEPT_MODIFIED
        assert conn.tcp_state is ESTABLISHED
        return conn

    def drops(self, name: str) -> int:
        return self.engine.stats.drops[REASON_NAMES.index(name)]


# -- flow keys ---------------------------------------------------------------------------

def test_ipv4_keys_are_laid_out_as_before() -> None:
    src, dst = parse_ip("198.51.100.7"), parse_ip("192.0.2.10")
    assert flow_key(src, 40000, dst, 80) == (src << 64) | (40000 << 48) | (dst << 16) | 80
    assert udp_key(32) == UDP_KEY == 1 << 96


def test_ipv6_keys_never_meet_ipv4_ones_and_read_back() -> None:
    lab = Lab()
    conn = lab.open()
    assert conn.in_key >= 1 << 289 and conn.reply_key() >= 1 << 289
    assert (conn.foreign_ip, conn.foreign_port) == (parse_ip(CLIENT), 40000)
    assert lab.d.conns.reply[conn.reply_key()] is conn
    # ::c000:20a, IPv4's 192.0.2.10 as an IPv6 int without its tag, is another key.
    v4 = flow_key(parse_ip("198.51.100.7"), 40000, parse_ip("192.0.2.10"), 80)
    assert v4 < 1 << 145 and v4 != conn.in_key


# -- TCP ---------------------------------------------------------------------------------

def test_connection_translated_both_ways_with_checksums() -> None:
    lab = Lab()
    conn = lab.open()
    verdict, out = lab.client("PA", b"GET / HTTP/1.0\r\n\r\n" * 40)
    assert verdict == ACCEPT_MODIFIED and out.dst == format_ip(conn.real_ip)
    verdict, out = lab.real(conn, "PA", b"x" * 1001)   # odd length
    assert verdict == ACCEPT_MODIFIED and (out.src, out[TCP].sport) == (VIP, 80)
    assert lab.engine.stats.translated_in == 3 and lab.engine.stats.translated_out == 2


def test_skipped_extension_headers_are_kept_and_translated_past() -> None:
    lab = Lab()
    chain = (IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / IPv6ExtHdrRouting(segleft=0)
             / IPv6ExtHdrFragment(offset=0, m=0))   # an atomic fragment: whole
    pkt = IPv6(src=CLIENT, dst=VIP) / chain / TCP(sport=40000, dport=80, flags="S", seq=1)
    raw = bytearray(bytes(pkt))
    fields = ipv6.parse_tcp6(raw)
    assert isinstance(fields, tuple) and fields[0] == 40 + 8 + 8 + 8 + 8
    verdict, out = lab.send(pkt)
    assert verdict == ACCEPT_MODIFIED and IPv6ExtHdrRouting in out
    assert out.dst in (A, B) and out[TCP].dport == 80


@pytest.mark.parametrize(("reason", "chain"), [
    ("fragment", IPv6ExtHdrFragment(offset=0, m=1)),          # a first fragment
    ("fragment", IPv6ExtHdrFragment(offset=10, m=0)),         # a later one
    ("routing-header", IPv6ExtHdrRouting(segleft=1, addresses=[ROUTER])),
    ("ext-header", IPv6ExtHdrDestOpt() / IPv6ExtHdrHopByHop()),  # hop-by-hop not first
    ("ext-chain", IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt()
     / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt()
     / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt()),
])
def test_refused_extension_headers_are_dropped_under_their_reason(reason, chain) -> None:
    lab = Lab()
    pkt = IPv6(src=CLIENT, dst=VIP) / chain / TCP(sport=40000, dport=80, flags="S")
    assert lab.send(pkt)[0] == DROP
    assert lab.drops(reason) == 1 and not lab.d.conns.inbound


@pytest.mark.parametrize("upper", [ESP(spi=1), AH() / TCP(dport=80), IPv6ExtHdrDestOpt(nh=59)])
def test_esp_ah_and_no_next_header_are_refused(upper) -> None:
    lab = Lab()
    assert lab.send(IPv6(src=CLIENT, dst=VIP) / upper)[0] == DROP
    assert lab.drops("ext-header") == 1


def test_malformed_headers_are_counted_never_raised() -> None:
    lab = Lab()
    good = bytes(IPv6(src=CLIENT, dst=VIP) / TCP(sport=40000, dport=80, flags="S"))
    long_claim = bytearray(good)
    long_claim[4:6] = (8).to_bytes(2, "big")                 # payload shorter than TCP's
    cases = {
        "truncated": bytearray(good[:50]),
        "bad-length": long_claim,
        "hop-limit": bytearray(bytes(IPv6(src=CLIENT, dst=VIP, hlim=1)
                                     / TCP(sport=1, dport=80, flags="S"))),
        "bad-tcp-offset": bytearray(bytes(IPv6(src=CLIENT, dst=VIP)
                                          / TCP(sport=1, dport=80, dataofs=3))),
    }
    for reason, buf in cases.items():
        assert lab.engine.handle(buf) == DROP, reason
        assert lab.drops(reason) == 1, reason
    zero = bytearray(bytes(IPv6(src=CLIENT, dst=VIP, hlim=0) / TCP(dport=80, flags="S")))
    assert lab.engine.handle(zero) == DROP and lab.drops("hop-limit") == 2
    assert not lab.d.conns.inbound


def test_syn_nothing_can_take_is_refused_with_an_ipv6_rst() -> None:
    lab = Lab(reals=())
    verdict, out = lab.client("S")
    assert verdict == ACCEPT_MODIFIED and len(out) == 60
    assert (out.src, out.dst, out[TCP].sport, out[TCP].dport) == (VIP, CLIENT, 80, 40000)
    assert out[TCP].flags == "RA" and out[TCP].ack == 1001
    assert lab.engine.stats.refused == 1


def test_bad_syn_checksum_is_dropped() -> None:
    lab = Lab()
    pkt = IPv6(src=CLIENT, dst=VIP) / TCP(sport=40000, dport=80, flags="S", chksum=0x1234)
    assert lab.send(pkt)[0] == DROP and lab.drops("bad-checksum") == 1


def test_completing_a_local_stack_checksum() -> None:
    pkt = IPv6(src=CLIENT, dst=VIP) / TCP(sport=40000, dport=80, flags="PA") / Raw(b"abc")
    whole = bytes(pkt)
    partial = bytearray(whole)
    # What a local stack leaves for the hardware: the pseudo-header's sum alone.
    pseudo = (int.from_bytes(whole[8:40], "big") + 6 + len(whole) - 40) % 0xFFFF
    partial[40 + 16:40 + 18] = pseudo.to_bytes(2, "big")
    packet.complete_checksum(partial)
    assert bytes(partial) == whole


# -- UDP ---------------------------------------------------------------------------------

def test_udp_flow_both_ways_and_zero_checksum_dropped() -> None:
    lab = Lab(proto="udp", port=53)
    query = IPv6(src=CLIENT, dst=VIP) / UDP(sport=5353, dport=53) / Raw(b"q" * 33)
    verdict, out = lab.send(query)
    assert verdict == ACCEPT_MODIFIED and out.dst in (A, B) and out[UDP].dport == 53
    answer = IPv6(src=out.dst, dst=CLIENT) / UDP(sport=53, dport=5353) / Raw(b"a" * 70)
    verdict, back = lab.send(answer)
    assert verdict == ACCEPT_MODIFIED and (back.src, back[UDP].sport) == (VIP, 53)
    raw = bytearray(bytes(query))
    raw[46:48] = b"\0\0"
    assert lab.engine.handle(raw) == DROP and lab.drops("udp-no-checksum") == 1


# -- ICMPv6 ------------------------------------------------------------------------------

def test_packet_too_big_from_the_real_side_reaches_the_client_about_the_vip() -> None:
    """Path-MTU discovery toward the real: a router on the real's side (or the director
    itself) answers a client's large segment, as translated, with Packet Too Big."""
    lab = Lab()
    conn = lab.open()
    real = format_ip(conn.real_ip)
    segment = IPv6(src=CLIENT, dst=real) / TCP(sport=40000, dport=80, flags="PA",
                                                seq=1001, ack=5001) / Raw(b"z" * 1300)
    quote = bytes(segment)[:1232]                 # as much as fits in 1280 bytes
    error = IPv6(src=ROUTER, dst=CLIENT) / ICMPv6PacketTooBig(mtu=1280) / Raw(quote)
    verdict, out = lab.send(error)
    assert verdict == ACCEPT_MODIFIED and lab.engine.stats.icmp_translated == 1
    assert (out.src, out.dst, out[ICMPv6PacketTooBig].mtu) == (VIP, CLIENT, 1280)
    inner = IPerror6(bytes(out[ICMPv6PacketTooBig].payload))
    assert (inner.src, inner.dst, inner[TCPerror].sport, inner[TCPerror].dport) == \
        (CLIENT, VIP, 40000, 80)


def test_packet_too_big_from_the_client_side_reaches_the_real() -> None:
    lab = Lab()
    conn = lab.open()
    reply = IPv6(src=VIP, dst=CLIENT) / TCP(sport=80, dport=40000, flags="PA", seq=5001,
                                            ack=1001) / Raw(b"r" * 100)
    whole = bytes(reply)
    error = IPv6(src=ROUTER, dst=VIP) / ICMPv6PacketTooBig(mtu=1280) / Raw(whole)
    verdict, out = lab.send(error)
    assert verdict == ACCEPT_MODIFIED
    assert out.dst == format_ip(conn.real_ip)
    inner = IPerror6(bytes(out[ICMPv6PacketTooBig].payload))
    assert (inner.src, inner[TCPerror].sport) == (format_ip(conn.real_ip), 80)
    # The whole segment is quoted: its checksum is the true one of the real's packet.
    truth = IPv6(bytes(IPv6(src=format_ip(conn.real_ip), dst=CLIENT) / TCP(
        sport=80, dport=40000, flags="PA", seq=5001, ack=1001) / Raw(b"r" * 100)))
    assert inner[TCPerror].chksum == truth[TCP].chksum


def test_icmpv6_parse_and_rewrite_round_trip() -> None:
    inner = IPv6(src=CLIENT, dst=A) / UDP(sport=5353, dport=53) / Raw(b"q" * 20)
    error = bytearray(bytes(IPv6(src=A, dst=CLIENT) / ICMPv6DestUnreach(code=4) / inner))
    fields = icmp.parse_icmp_error(error)
    assert isinstance(fields, tuple)
    off, osrc, odst, at, length, isrc, idst, isport, idport = fields
    assert (off, at, length) == (40, 48, 40)
    assert (osrc, odst, isrc, idst, isport, idport) == (
        parse_ip(A), parse_ip(CLIENT), parse_ip(CLIENT), parse_ip(A), 5353, 53)
    icmp.rewrite_icmp(error, off, outer_src=parse_ip(VIP), inner_dst=(parse_ip(VIP), 5300))
    out = IPv6(bytes(error))
    assert_checksums(bytes(error))
    assert (out.src, out[IPerror6].dst, out[UDPerror].dport) == (VIP, VIP, 5300)
    fresh = IPv6(bytes(IPv6(src=CLIENT, dst=VIP) / UDP(sport=5353, dport=5300)
                       / Raw(b"q" * 20)))
    assert out[UDPerror].chksum == fresh[UDP].chksum


def test_port_unreachable_moves_a_udp_flow() -> None:
    lab = Lab(proto="udp", port=53)
    verdict, out = lab.send(IPv6(src=CLIENT, dst=VIP) / UDP(sport=5353, dport=53) / b"q")
    first = out.dst
    error = IPv6(src=first, dst=CLIENT) / ICMPv6DestUnreach(code=4) / Raw(bytes(out))
    assert lab.send(error)[0] == DROP and lab.drops("unreachable-absorbed") == 1
    verdict, again = lab.send(IPv6(src=CLIENT, dst=VIP) / UDP(sport=5353, dport=53) / b"q")
    assert verdict == ACCEPT_MODIFIED and again.dst != first


@pytest.mark.parametrize("message", [
    ICMPv6ND_NS(tgt=VIP), ICMPv6EchoRequest(),
])
def test_neighbour_discovery_and_echo_pass_untouched(message) -> None:
    lab = Lab()
    lab.open()
    verdict, _ = lab.send(IPv6(src=CLIENT, dst=VIP, hlim=255) / message)
    assert verdict == ACCEPT_UNCHANGED


def test_other_protocols_toward_a_vip_are_dropped_others_pass() -> None:
    lab = Lab()
    sctp = IPv6(src=CLIENT, dst=VIP, nh=132) / Raw(b"\0" * 12)
    assert lab.send(sctp)[0] == DROP and lab.drops("not-tcp") == 1
    assert lab.send(IPv6(src=A, dst=CLIENT, nh=132) / Raw(b"\0" * 12))[0] == ACCEPT_UNCHANGED


def test_a_real_reply_of_no_connection_is_dropped_and_the_real_reset() -> None:
    """From a translated real's serving port (replies.py's `_bound`, IPv6 key layout):
    dropped, never leaked with the real's address; the real told with an IPv6 RST."""
    lab = Lab()
    stray = IPv6(src=A, dst=CLIENT) / TCP(sport=80, dport=41000, flags="SA", seq=7, ack=99)
    verdict, out = lab.send(stray)
    assert verdict == ACCEPT_MODIFIED and lab.drops("unknown-reply") == 1
    assert (out.src, out.dst, out[TCP].flags, out[TCP].seq) == (CLIENT, A, "R", 99)
    other = IPv6(src=A, dst=CLIENT) / TCP(sport=22, dport=41000, flags="SA")
    assert lab.send(other)[0] == ACCEPT_UNCHANGED   # not a port it serves us on
    flow = Lab(proto="udp", port=53)
    answer = IPv6(src=A, dst=CLIENT) / UDP(sport=53, dport=5353) / b"a"
    assert flow.send(answer)[0] == DROP and flow.drops("unknown-reply") == 1
