"""Tests for localdirector.dataplane.packet.

The oracle is scapy: every translated packet must be byte-identical to the
packet scapy builds with the new addresses and freshly computed checksums, and
to a from-scratch computation with the module's own checksum functions (which
are in turn checked against a plain RFC 1071 word loop). Checksum corner cases
(fields that are 0x0000 before or after, and the alternative -0 encoding
0xFFFF on input) are crafted deliberately rather than left to chance.

All addresses come from the project's documentation ranges even though these
packets never leave memory.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, IPOption, TCPerror
from scapy.packet import Raw

from localdirector.dataplane import packet as P
from localdirector.dataplane import icmp as I

# scapy builds a few packets per example; these budgets keep the file near 10 s.
SLOW_OK = [HealthCheck.too_slow]
FAST = settings(max_examples=300, deadline=None, suppress_health_check=SLOW_OK)
ICMP_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=SLOW_OK)


def _net(base: int, prefix: int) -> st.SearchStrategy[int]:
    return st.integers(0, (1 << (32 - prefix)) - 1).map(lambda host: base + host)


CLIENTS = st.one_of(_net(0xC6336400, 24), _net(0xC6120000, 15))  # 198.51.100/24, 198.18/15
VIPS = _net(0xC0000200, 24)  # 192.0.2.0/24
REALS = _net(0xCB007100, 24)  # 203.0.113.0/24
PORTS = st.integers(0, 0xFFFF)


def dotted(addr: int) -> str:
    return ".".join(str(b) for b in addr.to_bytes(4, "big"))


def reference_checksum(data: bytes) -> int:
    """RFC 1071 exactly as written: 16-bit words, end-around carry, complement."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ip_checksum_full(buf: bytes | bytearray, ihl: int) -> int:
    header = bytearray(buf[:ihl])
    header[10:12] = b"\0\0"
    return P.checksum(header)


def field16(buf: bytes | bytearray, offset: int) -> int:
    return int.from_bytes(buf[offset : offset + 2], "big")


def patch16(buf: bytes, offset: int, value: int) -> bytes:
    return buf[:offset] + value.to_bytes(2, "big") + buf[offset + 2 :]


# ---------------------------------------------------------------- packet specs

# IP options as raw TLVs: NOP, router alert, RFC 4727 experimental with data.
IP_OPTION = st.one_of(
    st.just(b"\x01"),
    st.just(b"\x94\x04\x00\x00"),
    st.binary(min_size=0, max_size=6).map(lambda d: bytes((0x9E, len(d) + 2)) + d),
)
TCP_OPTION = st.sampled_from(
    [("MSS", 1460), ("NOP", None), ("WScale", 7), ("SAckOK", b""), ("Timestamp", (12345, 678))]
)


@dataclass(frozen=True)
class Spec:
    """Everything needed to build one IPv4/TCP packet with scapy."""

    src: int
    dst: int
    sport: int
    dport: int
    ip_id: int = 1
    ttl: int = 64
    tos: int = 0
    df: bool = False
    ip_options: tuple[bytes, ...] = ()
    tcp_options: tuple = ()
    flags: int = P.ACK
    seq: int = 1
    ack: int = 0
    window: int = 8192
    urgptr: int = 0
    payload: bytes = b""

    def scapy(self) -> IP:
        ip = IP(
            src=dotted(self.src),
            dst=dotted(self.dst),
            id=self.ip_id,
            ttl=self.ttl,
            tos=self.tos,
            flags="DF" if self.df else 0,
            options=[IPOption(o) for o in self.ip_options],
        )
        tcp = TCP(
            sport=self.sport,
            dport=self.dport,
            flags=self.flags,
            seq=self.seq,
            ack=self.ack,
            window=self.window,
            urgptr=self.urgptr,
            options=list(self.tcp_options),
        )
        return ip / tcp / Raw(self.payload) if self.payload else ip / tcp

    def build(self) -> bytes:
        return bytes(self.scapy())


@st.composite
def specs(draw, src=CLIENTS, dst=VIPS) -> Spec:
    ip_options: list[bytes] = []
    for option in draw(st.lists(IP_OPTION, max_size=6)):
        if sum(map(len, ip_options)) + len(option) <= 40:
            ip_options.append(option)
    return Spec(
        src=draw(src),
        dst=draw(dst),
        sport=draw(PORTS),
        dport=draw(PORTS),
        ip_id=draw(st.integers(0, 0xFFFF)),
        ttl=draw(st.integers(1, 255)),
        tos=draw(st.integers(0, 255)),
        df=draw(st.booleans()),
        ip_options=tuple(ip_options),
        tcp_options=tuple(draw(st.lists(TCP_OPTION, max_size=4))),
        flags=draw(st.integers(0, 255)),
        seq=draw(st.integers(0, 2**32 - 1)),
        ack=draw(st.integers(0, 2**32 - 1)),
        window=draw(st.integers(0, 0xFFFF)),
        urgptr=draw(st.integers(0, 0xFFFF)),
        payload=draw(st.one_of(st.binary(max_size=3), st.binary(max_size=64))),
    )


def scapy_translated(raw: bytes, direction: str, new_ip: int, new_port: int) -> bytes:
    """What scapy makes of ``raw`` with one endpoint replaced and checksums recomputed."""
    pkt = IP(raw)
    if direction == "dst":
        pkt.dst, pkt[TCP].dport = dotted(new_ip), new_port
    else:
        pkt.src, pkt[TCP].sport = dotted(new_ip), new_port
    del pkt.chksum
    del pkt[TCP].chksum
    return bytes(pkt)


def ihl_of(raw: bytes) -> int:
    return (raw[0] & 0x0F) * 4


# A corner case is produced by choosing one free 16-bit word (IP id or TCP
# urgent pointer) so that a checksum becomes 0x0000: with that word zero the
# checksum is c = ~sum, and putting c into the word makes the sum 0xFFFF.
CORNERS = (
    None,
    "ip-zero-before",
    "ip-zero-after",
    "ip-minus-zero-before",
    "tcp-zero-before",
    "tcp-zero-after",
    "tcp-minus-zero-before",
)


def craft(spec: Spec, corner: str | None, direction: str, new_ip: int, new_port: int) -> bytes:
    """Build the packet for ``spec``, tuned so the requested checksum corner occurs."""
    if corner is None:
        return spec.build()
    layer, kind = corner.split("-", 1)
    word = "ip_id" if layer == "ip" else "urgptr"
    csum_at = 10 if layer == "ip" else ihl_of(spec.build()) + 16
    zeroed = replace(spec, **{word: 0})
    probe = zeroed.build()
    if kind == "zero-after":
        probe = scapy_translated(probe, direction, new_ip, new_port)
    raw = replace(spec, **{word: field16(probe, csum_at)}).build()
    if kind == "zero-after":
        assert field16(scapy_translated(raw, direction, new_ip, new_port), csum_at) == 0
        return raw
    assert field16(raw, csum_at) == 0
    if kind == "minus-zero-before":
        raw = patch16(raw, csum_at, 0xFFFF)  # the other valid encoding of a zero sum
    return raw


# ------------------------------------------------------------------- checksum


@FAST
@given(st.binary(max_size=200))
def test_checksum_matches_rfc1071_word_loop(data: bytes) -> None:
    assert P.checksum(data) == reference_checksum(data)
    assert P.checksum(memoryview(bytearray(data))) == reference_checksum(data)


@pytest.mark.parametrize("data", [b"", b"\0", b"\0\0\0", b"\xff\xff", b"\xff\xff\xff\xff", b"\x01"])
def test_checksum_edge_inputs(data: bytes) -> None:
    assert P.checksum(data) == reference_checksum(data)


@FAST
@given(specs())
def test_tcp_checksum_full_agrees_with_scapy(spec: Spec) -> None:
    raw = spec.build()
    assert P.tcp_checksum_full(raw, ihl_of(raw)) == field16(raw, ihl_of(raw) + 16)
    assert ip_checksum_full(raw, ihl_of(raw)) == field16(raw, 10)


def test_tcp_checksum_full_refuses_a_cut_segment() -> None:
    raw = Spec(0xC6336407, 0xC000020A, 1, 2, payload=b"x" * 100).build()
    with pytest.raises(ValueError):
        P.tcp_checksum_full(raw[:60], 20)


# -------------------------------------------------------------------- rewrite


def check_rewrite(raw: bytes, direction: str, new_ip: int, new_port: int) -> bytearray:
    assert bytes(IP(raw)) == raw, "scapy must reproduce the original for it to be an oracle"
    buf = bytearray(raw)
    parsed = P.parse_tcp(buf)
    assert isinstance(parsed, tuple)
    ihl, total, src, dst, sport, dport, flags, seq, ack, width = parsed
    assert ihl == ihl_of(raw) and total == len(raw) and width == 32
    if direction == "dst":
        P.rewrite(buf, ihl, new_ip, new_port, True)
        assert P.parse_tcp(buf) == (ihl, total, src, new_ip, sport, new_port, flags,
                                     seq, ack, 32)
    else:
        P.rewrite(buf, ihl, new_ip, new_port, False)
        assert P.parse_tcp(buf) == (ihl, total, new_ip, dst, new_port, dport, flags,
                                     seq, ack, 32)
    assert field16(buf, 10) == ip_checksum_full(buf, ihl)
    assert field16(buf, ihl + 16) == P.tcp_checksum_full(buf, ihl)
    assert bytes(buf) == scapy_translated(raw, direction, new_ip, new_port)
    return buf


@FAST
@given(
    spec=specs(src=CLIENTS, dst=VIPS),
    real=REALS,
    port=PORTS,
    corner=st.sampled_from(CORNERS),
)
def test_rewrite_dst_is_byte_identical_to_full_recompute(spec, real, port, corner) -> None:
    check_rewrite(craft(spec, corner, "dst", real, port), "dst", real, port)


@FAST
@given(
    spec=specs(src=REALS, dst=CLIENTS),
    vip=VIPS,
    port=PORTS,
    corner=st.sampled_from(CORNERS),
)
def test_rewrite_src_is_byte_identical_to_full_recompute(spec, vip, port, corner) -> None:
    check_rewrite(craft(spec, corner, "src", vip, port), "src", vip, port)


@pytest.mark.parametrize("direction", ["dst", "src"])
@pytest.mark.parametrize("corner", [c for c in CORNERS if c])
def test_every_checksum_corner_is_reached_and_handled(direction: str, corner: str) -> None:
    """Deterministic twin of the property tests, so each corner runs on every run."""
    spec = Spec(
        0xC6120A0B, 0xC000020A, 40000, 80, ip_options=(b"\x94\x04\x00\x00",), payload=b"odd"
    )
    new_ip, new_port = (0xCB00710A, 8080) if direction == "dst" else (0xC0000214, 443)
    raw = craft(spec, corner, direction, new_ip, new_port)
    ihl = ihl_of(raw)
    at = 10 if corner.startswith("ip") else ihl + 16
    buf = check_rewrite(raw, direction, new_ip, new_port)
    if corner.endswith("zero-after"):
        assert field16(buf, at) == 0
    else:
        assert field16(raw, at) in (0, 0xFFFF)


def test_identity_rewrite_turns_minus_zero_into_canonical_zero() -> None:
    """RFC 1624's point: rewriting to the same value must still yield 0x0000, not 0xFFFF."""
    spec = Spec(0xC6336407, 0xC000020A, 40000, 80, payload=b"abc")
    raw = craft(spec, "tcp-minus-zero-before", "dst", spec.dst, spec.dport)
    buf = bytearray(raw)
    P.rewrite(buf, 20, spec.dst, spec.dport, True)
    assert field16(buf, 36) == 0
    assert bytes(buf) == patch16(raw, 36, 0)


def test_rewrite_works_on_a_memoryview() -> None:
    raw = Spec(0xC6336407, 0xC000020A, 40000, 80, payload=b"hello").build()
    buf = bytearray(raw)
    view = memoryview(buf)
    parsed = P.parse_tcp(view)
    assert parsed == P.parse_tcp(raw)
    P.rewrite(view, 20, 0xCB00710A, 8080, True)
    assert bytes(buf) == scapy_translated(raw, "dst", 0xCB00710A, 8080)


def test_rewrite_of_a_cut_buffer_matches_the_whole_packet() -> None:
    """The queue hands over at most 65531 bytes of a packet; headers are all a rewrite
    needs."""
    raw = Spec(0xC6336407, 0xC000020A, 40000, 80, payload=bytes(range(256)) * 20).build()
    whole, cut = bytearray(raw), bytearray(raw[:4016])
    assert P.parse_tcp(cut) == P.parse_tcp(whole)
    P.rewrite(whole, 20, 0xCB00710A, 8080, True)
    P.rewrite(cut, 20, 0xCB00710A, 8080, True)
    assert cut == whole[:4016]
    assert field16(whole, 36) == P.tcp_checksum_full(whole, 20)


# ---------------------------------------------------------------------- parse


def sample(**changes) -> bytes:
    return Spec(
        0xC6336407,
        0xC000020A,
        40000,
        80,
        ip_options=(b"\x01", b"\x94\x04\x00\x00", b"\x9e\x03\x07"),
        tcp_options=(("MSS", 1460), ("NOP", None), ("WScale", 7)),
        flags=P.SYN,
        payload=b"payload",
        **changes,
    ).build()


def set_byte(raw: bytes, offset: int, value: int) -> bytes:
    return raw[:offset] + bytes((value,)) + raw[offset + 1 :]


def set_fragment(raw: bytes, flags, frag: int) -> bytes:
    return raw[:6] + bytes(IP(flags=flags, frag=frag))[6:8] + raw[8:]


def test_reason_codes_are_small_consecutive_ints_with_names() -> None:
    codes = [
        P.OK, P.TRUNCATED, P.BAD_VERSION, P.BAD_IHL, P.BAD_LENGTH,
        P.FRAGMENT, P.NOT_TCP, P.BAD_TCP_OFFSET, P.NOT_ICMP_ERROR, P.EXT_HEADER,
        P.ROUTING_HEADER, P.EXT_CHAIN, P.HOP_LIMIT,
    ]  # fmt: skip
    assert codes == list(range(len(P.REASON_NAMES)))
    assert len(set(P.REASON_NAMES)) == len(P.REASON_NAMES)
    assert P.REASON_NAMES[P.FRAGMENT] == "fragment"


def test_flag_constants_match_scapy() -> None:
    for letter, value in zip("FSRPAUEC", (P.FIN, P.SYN, P.RST, P.PSH, P.ACK, P.URG, P.ECE, P.CWR)):
        assert int(TCP(flags=letter).flags) == value


def test_parse_valid_packet_with_options() -> None:
    raw = sample()
    assert ihl_of(raw) == 28
    assert P.parse_tcp(bytearray(raw)) == (28, len(raw), 0xC6336407, 0xC000020A, 40000, 80,
                                           P.SYN, 1, 0, 32)


def test_every_cut_inside_the_headers_is_truncated() -> None:
    raw = sample()
    header_end = 28 + 28  # IP with 8 bytes of options, TCP with 8
    assert raw[28 + 12] >> 4 == 7
    for length in range(header_end):
        assert P.parse_tcp(bytearray(raw[:length])) == P.TRUNCATED, length
    for length in range(header_end, len(raw) + 1):  # payload may be cut, headers may not
        assert isinstance(P.parse_tcp(bytearray(raw[:length])), tuple), length


def test_version_6_is_rejected() -> None:
    raw = sample()
    assert P.parse_tcp(set_byte(raw, 0, 0x60 | (raw[0] & 0x0F))) == P.BAD_VERSION


@pytest.mark.parametrize("ihl_words", [0, 1, 4])
def test_ihl_below_five_is_rejected(ihl_words: int) -> None:
    assert P.parse_tcp(set_byte(sample(), 0, 0x40 | ihl_words)) == P.BAD_IHL


def test_ihl_beyond_the_buffer() -> None:
    raw = bytes(IP(src="198.51.100.7", dst="192.0.2.10") / TCP())  # 40 bytes
    claims_60 = set_byte(raw, 0, 0x4F)
    # The packet's own total length (40) cannot hold a 60-byte header ...
    assert P.parse_tcp(claims_60) == P.BAD_LENGTH
    # ... but with a total length that can, the buffer was merely cut short.
    assert P.parse_tcp(claims_60[:2] + (100).to_bytes(2, "big") + claims_60[4:]) == P.TRUNCATED


@pytest.mark.parametrize("total", [0, 20, 27, 28 + 19])
def test_total_length_below_the_headers_is_rejected(total: int) -> None:
    raw = sample()
    assert P.parse_tcp(raw[:2] + total.to_bytes(2, "big") + raw[4:]) == P.BAD_LENGTH


@pytest.mark.parametrize("flags, frag", [(0, 1), ("MF", 1), ("MF", 185), (0, 0x1FFF)])
def test_non_first_fragment_is_rejected(flags, frag: int) -> None:
    assert P.parse_tcp(set_fragment(sample(), flags, frag)) == P.FRAGMENT


@pytest.mark.parametrize("flags", ["MF", "DF", 0])
def test_first_fragment_is_accepted(flags) -> None:
    assert isinstance(P.parse_tcp(set_fragment(sample(), flags, 0)), tuple)


@pytest.mark.parametrize(
    "pkt",
    [
        IP(src="198.51.100.7", dst="192.0.2.10") / UDP(sport=5353, dport=53),
        IP(src="198.51.100.7", dst="192.0.2.10") / ICMP(),
        IP(src="198.51.100.7", dst="192.0.2.10", proto=47) / Raw(b"\0" * 24),
    ],
)
def test_other_protocols_are_not_tcp(pkt) -> None:
    assert P.parse_tcp(bytes(pkt)) == P.NOT_TCP


@pytest.mark.parametrize("offset_words", [0, 1, 4])
def test_tcp_data_offset_below_five_is_rejected(offset_words: int) -> None:
    raw = sample()
    assert P.parse_tcp(set_byte(raw, 28 + 12, offset_words << 4)) == P.BAD_TCP_OFFSET


def test_tcp_data_offset_beyond_the_packet() -> None:
    raw = bytes(IP(src="198.51.100.7", dst="192.0.2.10") / TCP())  # 40 bytes, offset 5
    claims_60 = set_byte(raw, 32, 0xF0)
    assert P.parse_tcp(claims_60) == P.BAD_TCP_OFFSET  # total length 40 < 20 + 60
    longer = claims_60[:2] + (200).to_bytes(2, "big") + claims_60[4:]
    assert P.parse_tcp(longer) == P.TRUNCATED  # the packet is long enough; the buffer is not
    assert isinstance(P.parse_tcp(longer + bytes(40)), tuple)


# ------------------------------------------------------------------------ ICMP

ICMP_KINDS = st.sampled_from([(3, 4), (3, 1), (3, 3), (11, 0), (12, 0)])


def icmp_error(src: int, dst: int, kind: tuple[int, int], quote: bytes, options=()) -> bytes:
    icmp_type, code = kind
    icmp = ICMP(type=icmp_type, code=code, nexthopmtu=1400 if kind == (3, 4) else 0)
    ip = IP(src=dotted(src), dst=dotted(dst), options=[IPOption(o) for o in options])
    return bytes(ip / icmp / Raw(quote))


def quoted(inner: bytes, length: int, stale_from: bytes) -> bytes:
    """The first ``length`` bytes of ``inner`` as an ICMP error quotes them.

    A quote ending in the middle of the TCP checksum keeps that byte as it was:
    a checksum that is not all there is not updated (as in Linux).
    """
    quote = bytearray(inner[:length])
    csum_at = ihl_of(inner) + 16
    if length == csum_at + 1:
        quote[csum_at] = stale_from[csum_at]
    return bytes(quote)


@st.composite
def icmp_cases(draw):
    """An ICMP error from either side, with what the translated one must look like."""
    client, vip, real = draw(CLIENTS), draw(VIPS), draw(REALS)
    cport, vport, rport = draw(PORTS), draw(PORTS), draw(PORTS)
    kind = draw(ICMP_KINDS)
    outer_options = draw(st.sampled_from([(), (b"\x94\x04\x00\x00",)]))
    inner_spec = draw(specs())
    if draw(st.booleans()):
        # From a real, about a translated client packet it received.
        before = replace(inner_spec, src=client, dst=real, sport=cport, dport=rport)
        after = replace(before, dst=vip, dport=vport)
        outer_before, outer_after = (real, client), (vip, client)
        change = {"outer_src": vip, "inner_dst": (vip, vport)}
    else:
        # From a router on the client side, about a reply the director sent.
        router = draw(CLIENTS)
        before = replace(inner_spec, src=vip, dst=client, sport=vport, dport=cport)
        after = replace(before, src=real, sport=rport)
        outer_before, outer_after = (router, vip), (router, real)
        change = {"outer_dst": real, "inner_src": (real, rport)}
    inner_before, inner_after = before.build(), after.build()
    length = draw(st.integers(ihl_of(inner_before) + 8, len(inner_before)))
    raw = icmp_error(*outer_before, kind, inner_before[:length], outer_options)
    expected = icmp_error(
        *outer_after, kind, quoted(inner_after, length, inner_before), outer_options
    )
    return raw, change, expected, (before, after)


def assert_scapy_accepts_checksums(buf: bytes) -> None:
    """scapy rebuilding outer IP, ICMP and quoted IP checksums changes nothing."""
    copy = IP(buf)
    del copy.chksum
    del copy[ICMP].chksum
    del copy[IPerror].chksum
    assert bytes(copy) == buf


@ICMP_SETTINGS
@given(icmp_cases())
def test_icmp_error_translation(case) -> None:
    raw, change, expected, (before, after) = case
    buf = bytearray(raw)
    parsed = I.parse_icmp_error(buf)
    assert isinstance(parsed, tuple)
    ihl, outer_src, outer_dst, inner, inner_ihl, isrc, idst, isport, idport = parsed
    assert (ihl, outer_src, outer_dst) == (ihl_of(raw), *struct.unpack_from("!II", raw, 12))
    assert (inner, inner_ihl) == (ihl + 8, ihl_of(before.build()))
    assert (isrc, idst, isport, idport) == (before.src, before.dst, before.sport, before.dport)

    I.rewrite_icmp(buf, ihl, **change)

    assert bytes(buf) == expected
    assert_scapy_accepts_checksums(bytes(buf))
    after_parse = I.parse_icmp_error(buf)
    assert after_parse[5:] == (after.src, after.dst, after.sport, after.dport)


def test_frag_needed_from_real_reaches_client_as_from_vip() -> None:
    """The path-MTU case spelled out, with every checksum checked by hand too."""
    client, vip, real = 0xC6336407, 0xC000020A, 0xCB00710A
    inner = Spec(client, real, 40000, 8001, payload=b"x" * 1400).build()
    raw = icmp_error(real, client, (3, 4), inner[:548])
    buf = bytearray(raw)
    ihl, *_ = I.parse_icmp_error(buf)
    I.rewrite_icmp(buf, ihl, outer_src=vip, inner_dst=(vip, 80))

    pkt = IP(bytes(buf))
    assert (pkt.src, pkt.dst) == ("192.0.2.10", "198.51.100.7")
    assert (pkt[ICMP].type, pkt[ICMP].code, pkt[ICMP].nexthopmtu) == (3, 4, 1400)
    assert (pkt[IPerror].src, pkt[IPerror].dst) == ("198.51.100.7", "192.0.2.10")
    assert (pkt[TCPerror].sport, pkt[TCPerror].dport) == (40000, 80)
    assert P.checksum(buf[:20]) == 0  # a valid header sums to -0
    assert P.checksum(buf[20:]) == 0
    assert P.checksum(buf[28:48]) == 0
    full = Spec(client, vip, 40000, 80, payload=b"x" * 1400).build()
    assert field16(buf, 48 + 16) == field16(full, 36)  # the quoted TCP checksum is the true one
    assert_scapy_accepts_checksums(bytes(buf))


def test_icmp_quote_of_only_eight_tcp_bytes() -> None:
    client, vip, real = 0xC6120001, 0xC000020A, 0xCB00710A
    inner = Spec(vip, client, 80, 5555).build()
    raw = icmp_error(0xC6120101, vip, (11, 0), inner[:28])
    buf = bytearray(raw)
    ihl, *_ = I.parse_icmp_error(buf)
    I.rewrite_icmp(buf, ihl, outer_dst=real, inner_src=(real, 8001))
    quote = Spec(real, client, 8001, 5555).build()[:28]
    assert bytes(buf) == icmp_error(0xC6120101, real, (11, 0), quote)


def icmp_reason(outer=None, inner: bytes | None = None, quote_len: int | None = None) -> int:
    inner = inner if inner is not None else Spec(0xC6336407, 0xCB00710A, 1, 2).build()
    outer = outer if outer is not None else ICMP(type=3, code=1)
    ip = IP(src="203.0.113.10", dst="198.51.100.7")
    return I.parse_icmp_error(bytes(ip / outer / Raw(inner[:quote_len])))


def test_icmp_parse_rejections() -> None:
    assert isinstance(icmp_reason(), tuple)
    assert icmp_reason(outer=ICMP(type=8)) == P.NOT_ICMP_ERROR  # echo request
    assert icmp_reason(outer=ICMP(type=0)) == P.NOT_ICMP_ERROR
    assert I.parse_icmp_error(sample()) == P.NOT_ICMP_ERROR  # TCP
    udp = bytes(IP(src="198.51.100.7", dst="203.0.113.10") / UDP(sport=1, dport=2))
    assert icmp_reason(inner=udp)[5:] == (0xC6336407, 0xCB00710A, 1, 2)   # UDP quoted too
    gre = bytes(IP(src="198.51.100.7", dst="203.0.113.10", proto=47) / Raw(b"\0" * 8))
    assert icmp_reason(inner=gre) == P.NOT_TCP
    assert icmp_reason(quote_len=27) == P.BAD_LENGTH  # whole packet, but quotes too little
    assert icmp_reason(quote_len=10) == P.BAD_LENGTH
    options = Spec(0xC6336407, 0xCB00710A, 1, 2, ip_options=(b"\x94\x04\x00\x00",)).build()
    assert icmp_reason(inner=options, quote_len=24 + 7) == P.BAD_LENGTH
    inner = Spec(0xC6336407, 0xCB00710A, 1, 2).build()
    assert icmp_reason(inner=set_byte(inner, 0, 0x65)) == P.BAD_VERSION
    assert icmp_reason(inner=set_byte(inner, 0, 0x44)) == P.BAD_IHL
    assert icmp_reason(inner=set_fragment(inner, 0, 7)) == P.FRAGMENT
    whole = bytes(IP(src="203.0.113.10", dst="198.51.100.7") / ICMP(type=3) / Raw(inner))
    for length in range(20 + 8 + 28):
        assert I.parse_icmp_error(whole[:length]) == P.TRUNCATED, length
    short_total = whole[:2] + (40).to_bytes(2, "big") + whole[4:]
    assert I.parse_icmp_error(short_total) == P.BAD_LENGTH


# ------------------------------------------------------------------------ fuzz

VALID_SAMPLES = [
    sample(),
    bytes(IP(src="198.51.100.7", dst="192.0.2.10") / TCP()),
    icmp_error(0xCB00710A, 0xC6336407, (3, 4), Spec(0xC6336407, 0xCB00710A, 1, 2).build()),
]


@st.composite
def mutated_packets(draw) -> bytes:
    """Valid packets with a few bytes overwritten and a random cut: reaches deep branches."""
    buf = bytearray(draw(st.sampled_from(VALID_SAMPLES)))
    for _ in range(draw(st.integers(0, 4))):
        buf[draw(st.integers(0, len(buf) - 1))] = draw(st.integers(0, 255))
    return bytes(buf[: draw(st.integers(0, len(buf)))])


@FAST
@given(st.one_of(st.binary(max_size=120), mutated_packets()))
def test_parsers_never_raise_and_rewrites_stay_in_bounds(data: bytes) -> None:
    reasons = range(1, len(P.REASON_NAMES))
    parsed = P.parse_tcp(bytearray(data))
    if isinstance(parsed, tuple):
        ihl, total, src, dst, sport, dport, flags, seq, ack, _width = parsed
        assert total == int.from_bytes(data[2:4], "big")
        assert ihl == ihl_of(data) and ihl + (data[ihl + 12] >> 4) * 4 <= len(data)
        assert (src, dst, sport, dport, flags) == (
            *struct.unpack_from("!II", data, 12),
            *struct.unpack_from("!HH", data, ihl),
            data[ihl + 13],
        )
        buf = bytearray(data)
        P.rewrite(buf, ihl, 0xCB00710A, 8080, True)
        P.rewrite(buf, ihl, 0xC000020A, 80, False)
        assert len(buf) == len(data)
    else:
        assert parsed in reasons
    parsed = I.parse_icmp_error(bytearray(data))
    if isinstance(parsed, tuple):
        assert len(parsed) == 9
        buf = bytearray(data)
        I.rewrite_icmp(
            buf,
            parsed[0],
            outer_src=0xC000020A,
            outer_dst=0xC6336407,
            inner_src=(0xC6336407, 1),
            inner_dst=(0xC000020A, 80),
        )
        assert len(buf) == len(data)
    else:
        assert parsed in reasons
