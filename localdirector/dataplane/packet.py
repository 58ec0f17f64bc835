"""IPv4/TCP/ICMP-error parsing and in-place address translation for the NFQUEUE hot path
(UDP's own parsing: datagram.py).

Plain functions over the payload ``bytearray`` (or a writable ``memoryview`` of it) on
precompiled :mod:`struct` objects, returning ints or one small tuple, never a packet
object: every queued packet passes through :func:`parse_tcp`, most through
:func:`rewrite`. Addresses are host-order ints (0xC000020A is 192.0.2.10).
"""

from __future__ import annotations

import struct

# Drop reasons: small consecutive ints so a worker can count them in a list
# indexed by reason; REASON_NAMES[reason] is the label `show statistics` prints.
OK = 0
TRUNCATED = 1        # the buffer ends before the headers the packet declares
BAD_VERSION = 2      # not IPv4
BAD_IHL = 3          # IP header length field below 5 words
BAD_LENGTH = 4       # IP total length cannot hold the headers it precedes
FRAGMENT = 5         # non-first fragment: no transport header to look up
NOT_TCP = 6          # transport protocol is not TCP
BAD_TCP_OFFSET = 7   # TCP data offset below 5 words or past the IP total length
NOT_ICMP_ERROR = 8   # not an ICMP error message that quotes a packet
REASON_NAMES = (
    "ok",
    "truncated",
    "bad-version",
    "bad-ihl",
    "bad-length",
    "fragment",
    "not-tcp",
    "bad-tcp-offset",
    "not-icmp-error",
)

# TCP flag bits as found in byte 13 of the TCP header.
FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
ECE = 0x40
CWR = 0x80

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
# ICMP messages that quote the offending packet and are worth translating:
# destination unreachable (incl. code 4, fragmentation needed, for path-MTU
# discovery), time exceeded, parameter problem.
ICMP_ERROR_TYPES = frozenset((3, 11, 12))

Buffer = bytearray | memoryview  # a writable view when rewriting
TcpFields = tuple[int, int, int, int, int, int, int, int, int]
IcmpErrorFields = tuple[int, int, int, int, int, int, int, int, int]

# Checksum arithmetic (RFC 1071 / RFC 1624). A 16-bit one's-complement sum is addition
# modulo 0xFFFF, and a checksum field holds the negated sum. So when 16-bit-aligned words
# change by a total ``d``, the field becomes ``(field - d) % 0xFFFF``; and since 0x10000
# = 1 (mod 0xFFFF), a 32-bit address contributes simply its integer value. This is RFC
# 1624 eqn. 3, HC' = ~(~HC + ~m + m'), evaluated with Python ints instead of folding
# carries. Its result lies in 0..0xFFFE, which is exactly what a full computation gives:
# the other encoding of zero, 0xFFFF, would need all-zero data, impossible for an IPv4
# header (version nibble) or a TCP pseudo-header (protocol 6). An incoming 0xFFFF (a
# sender's "-0") thus comes out as the canonical 0x0000, as recomputing would produce.
# TCP gives a checksum of 0 no special meaning, so no case is excluded. UDP does (0: "no
# checksum", RFC 768): a computed 0 is sent as 0xFFFF, so a UDP result of 0 is written
# 0xFFFF; datagrams without a checksum never get here (datagram.py drops them).
_MOD = 0xFFFF
_IP_HEAD = struct.Struct("!BxH2xH")        # version/IHL, total length, flags/fragment offset
_IP_LEN_ADDRS = struct.Struct("!2xH8xII")  # total length, source, destination
_IP_WHOLE = struct.Struct("!BxH2xHxB2xII")  # the above and the protocol, in one call
_TCP_HEAD = struct.Struct("!HHIIBB")        # ports, sequence, acknowledgment, offset, flags
_IP_TCP = struct.Struct("!BxH2xHxB2xIIHHIIBB")  # _IP_WHOLE, then _TCP_HEAD right after it
_CSUM_ADDRS = struct.Struct("!HII")         # IP header from byte 10: checksum, source, destination
_PORTS_CSUM = struct.Struct("!HH12xH")      # TCP ports and checksum
# No IP options: the IP checksum and addresses, then the TCP ports (and checksum) at 20.
_ADDRS_PORTS = struct.Struct("!HIIHH")
_ADDRS_PORTS_CSUM = struct.Struct("!HIIHH12xH")
_ADDRS_PORTS_UCSUM = struct.Struct("!HIIHH2xH")   # the same with UDP's checksum
_PORTS_UCSUM = struct.Struct("!HH2xH")            # UDP ports and checksum
_PORTS = struct.Struct("!HH")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_PSEUDO = struct.Struct("!IIxBH")           # TCP pseudo-header

# Bound methods looked up once: the hot path then pays no attribute lookups.
_unpack_ip_head = _IP_HEAD.unpack_from
_unpack_len_addrs = _IP_LEN_ADDRS.unpack_from
_unpack_ip_whole = _IP_WHOLE.unpack_from
_unpack_tcp_head = _TCP_HEAD.unpack_from
_unpack_ip_tcp = _IP_TCP.unpack_from
_unpack_csum_addrs = _CSUM_ADDRS.unpack_from
_pack_csum_addrs = _CSUM_ADDRS.pack_into
_unpack_ports_csum = _PORTS_CSUM.unpack_from
_pack_ports = _PORTS.pack_into
_unpack_addrs_ports_csum = _ADDRS_PORTS_CSUM.unpack_from
_unpack_addrs_ports_ucsum = _ADDRS_PORTS_UCSUM.unpack_from
_unpack_ports_ucsum = _PORTS_UCSUM.unpack_from
_pack_addrs_ports = _ADDRS_PORTS.pack_into
_unpack_u16 = _U16.unpack_from
_pack_u16 = _U16.pack_into
_unpack_u32 = _U32.unpack_from
_pack_u32 = _U32.pack_into


def _ipv4_header(buf: Buffer, off: int, n: int) -> int:
    """Validate the IPv4 header at ``off``; return its length in bytes, or a reason.

    Shared by the TCP path and both headers of an ICMP error so the rules are
    stated once. A header is at least 20 bytes, so every value below 20 is a
    drop reason, never a length; callers test ``< 20``.
    """
    if n < off + 20:
        return TRUNCATED
    vihl, total, frag = _unpack_ip_head(buf, off)
    return _ipv4_check(vihl, total, frag, off, n)


def _ipv4_check(vihl: int, total: int, frag: int, off: int, n: int) -> int:
    """The rules of `_ipv4_header` over fields already unpacked (parse_tcp unpacks the
    whole header at once: one struct call fewer per packet)."""
    if vihl >> 4 != 4:
        return BAD_VERSION
    ihl = (vihl & 0x0F) << 2
    if ihl < 20:
        return BAD_IHL
    if total < ihl:
        return BAD_LENGTH
    if frag & 0x1FFF:
        return FRAGMENT
    if n < off + ihl:
        return TRUNCATED
    return ihl


def parse_tcp(buf: Buffer) -> TcpFields | int:
    """Parse an IPv4/TCP packet: ``(ihl, total, src, dst, sport, dport, flags, seq,
    ack)`` or a drop reason.

    ``ihl`` is the IP header length in bytes (where TCP starts), to hand to
    :func:`rewrite`; ``total`` the IP total length (what byte counters count); ``seq``
    and ``ack`` the sequence and acknowledgment numbers, read in the same struct call
    (the engine checks a RST's or FIN's sequence against them). Only
    headers must be inside ``buf``: the queue copies at most 65531 bytes, so the IP
    total length may exceed ``len(buf)``.
    A first fragment (MF set, offset 0) carries the TCP header and is accepted.

    Nearly every packet has no IP options: such a packet whose fields all pass is read
    with one struct call for both headers and no call to the checks; any other goes
    the general way, which finds what is wrong with it.
    """
    n = len(buf)
    if n >= 40:
        (vihl, total, frag, proto, src, dst, sport, dport, seq, ack, offset,
         flags) = _unpack_ip_tcp(buf, 0)
        end = 20 + ((offset >> 4) << 2)
        if vihl == 0x45 and proto == PROTO_TCP and not frag & 0x1FFF \
                and 40 <= end <= total and end <= n:
            return 20, total, src, dst, sport, dport, flags, seq, ack
    elif n < 20:
        return TRUNCATED
    vihl, total, frag, proto, src, dst = _unpack_ip_whole(buf, 0)
    ihl = _ipv4_check(vihl, total, frag, 0, n)
    if ihl < 20:
        return ihl
    if proto != PROTO_TCP:
        return NOT_TCP
    if total < ihl + 20:
        return BAD_LENGTH
    if n < ihl + 20:
        return TRUNCATED
    sport, dport, seq, ack, offset, flags = _unpack_tcp_head(buf, ihl)
    end = ihl + ((offset >> 4) << 2)
    if end < ihl + 20 or end > total:
        return BAD_TCP_OFFSET
    if end > n:
        return TRUNCATED
    return ihl, total, src, dst, sport, dport, flags, seq, ack


def rewrite(buf: Buffer, ihl: int, new_ip: int, new_port: int, destination: bool,
            udp: bool = False) -> None:
    """Translate one side in place: the destination (client -> VIP becomes client ->
    real) or the source (real -> client becomes VIP -> client), address and port,
    adjusting the IP and TCP (`udp`: UDP) checksums. A UDP checksum that comes out 0
    is written 0xFFFF, as 0 would say "no checksum" (RFC 768).

    One body for both directions so the checksum arithmetic exists once; the flag
    costs a branch, cheaper than extra struct calls per field, and callers pass it
    as a literal rather than through a wrapper per direction (a Python call per
    packet is a tenth of a microsecond). Without IP options (nearly every packet) the
    addresses and ports are adjacent: one struct call reads them, one writes them.
    """
    if udp:
        if ihl == 20:
            ip_csum, src, dst, sport, dport, tcp_csum = _unpack_addrs_ports_ucsum(buf, 10)
        else:
            ip_csum, src, dst = _unpack_csum_addrs(buf, 10)
            sport, dport, tcp_csum = _unpack_ports_ucsum(buf, ihl)
    elif ihl == 20:
        ip_csum, src, dst, sport, dport, tcp_csum = _unpack_addrs_ports_csum(buf, 10)
    else:
        ip_csum, src, dst = _unpack_csum_addrs(buf, 10)
        sport, dport, tcp_csum = _unpack_ports_csum(buf, ihl)
    if destination:
        delta = new_ip - dst
        port_delta = new_port - dport
        dst, dport = new_ip, new_port
    else:
        delta = new_ip - src
        port_delta = new_port - sport
        src, sport = new_ip, new_port
    ip_csum = (ip_csum - delta) % _MOD
    if ihl == 20:
        _pack_addrs_ports(buf, 10, ip_csum, src, dst, sport, dport)
    else:
        _pack_csum_addrs(buf, 10, ip_csum, src, dst)
        _pack_ports(buf, ihl, sport, dport)
    # The TCP (UDP) checksum covers the addresses through the pseudo-header.
    if udp:
        _pack_u16(buf, ihl + 6, (tcp_csum - delta - port_delta) % _MOD or 0xFFFF)
    else:
        _pack_u16(buf, ihl + 16, (tcp_csum - delta - port_delta) % _MOD)


def parse_icmp_error(buf: Buffer) -> IcmpErrorFields | int:
    """Parse an ICMP error quoting a TCP or UDP packet, or return a drop reason.

    Returns ``(ihl, outer_src, outer_dst, inner_offset, inner_ihl, inner_src,
    inner_dst, inner_sport, inner_dport)``; the quoted protocol is at
    ``buf[inner_offset + 9]``. The quoted packet is the one that
    provoked the error, so its addresses run opposite to the error's own: to
    find the connection, look the inner packet up as if it were in flight.
    RFC 792 guarantees only the inner IP header and 8 bytes of TCP; those are
    required, anything more is optional.
    """
    n = len(buf)
    ihl = _ipv4_header(buf, 0, n)
    if ihl < 20:
        return ihl
    if buf[9] != PROTO_ICMP:
        return NOT_ICMP_ERROR
    if n <= ihl:
        return TRUNCATED
    if buf[ihl] not in ICMP_ERROR_TYPES:
        return NOT_ICMP_ERROR
    total, src, dst = _unpack_len_addrs(buf, 0)
    inner = ihl + 8
    # A message too short to quote an IP header and 8 bytes of TCP is malformed;
    # one that says it is long enough but is not all in buf was cut short.
    if total < inner + 20 + 8:
        return BAD_LENGTH
    inner_ihl = _ipv4_header(buf, inner, n)
    if inner_ihl < 20:
        return inner_ihl
    if buf[inner + 9] != PROTO_TCP and buf[inner + 9] != PROTO_UDP:
        return NOT_TCP
    if total < inner + inner_ihl + 8:
        return BAD_LENGTH
    if n < inner + inner_ihl + 8:
        return TRUNCATED
    _, inner_src, inner_dst = _unpack_len_addrs(buf, inner)
    inner_sport, inner_dport = _PORTS.unpack_from(buf, inner + inner_ihl)
    return (ihl, src, dst, inner, inner_ihl, inner_src, inner_dst, inner_sport, inner_dport)


def _set_address(buf: Buffer, header: int, field: int, new_ip: int) -> int:
    """Set the address at ``header + field`` and fix that header's checksum; return the change."""
    (old,) = _unpack_u32(buf, header + field)
    delta = new_ip - old
    _pack_u32(buf, header + field, new_ip)
    (csum,) = _unpack_u16(buf, header + 10)
    _pack_u16(buf, header + 10, (csum - delta) % _MOD)
    return delta


def _set_port(buf: Buffer, tcp: int, field: int, new_port: int) -> int:
    """Set the port at ``tcp + field``; return the change."""
    (old,) = _unpack_u16(buf, tcp + field)
    _pack_u16(buf, tcp + field, new_port)
    return new_port - old


def rewrite_icmp(
    buf: Buffer,
    ihl: int,
    *,
    outer_src: int | None = None,
    outer_dst: int | None = None,
    inner_src: tuple[int, int] | None = None,
    inner_dst: tuple[int, int] | None = None,
) -> None:
    """Translate an ICMP error parsed by :func:`parse_icmp_error`, in place.

    Each given endpoint replaces the current one; ``None`` leaves it alone.
    Typical uses: an error from a real about a packet it received is shown to
    the client with ``outer_src=vip, inner_dst=(vip, vport)``; an error from
    the client side about a reply the director sent is passed to the real with
    ``outer_dst=real, inner_src=(real, rport)``.

    Updated: the outer IP checksum, the quoted IP header's checksum, the
    quoted TCP checksum when wholly quoted (incrementally, like Linux NAT: the
    quoted segment is usually cut short and cannot be summed) or the quoted UDP
    checksum (always within the 8 bytes quoted; a 0, "none", stays 0), and the ICMP
    checksum, which covers the quoted bytes. ``buf`` must not extend past the
    IP total length, which queued payloads never do.
    """
    if outer_src is not None:
        _set_address(buf, 0, 12, outer_src)
    if outer_dst is not None:
        _set_address(buf, 0, 16, outer_dst)
    inner = ihl + 8
    tcp = inner + ((buf[inner] & 0x0F) << 2)
    udp = buf[inner + 9] == PROTO_UDP
    csum_at = tcp + (6 if udp else 16)
    quotes_tcp_csum = len(buf) >= csum_at + 2
    # Every byte this function may change in the ICMP message lies in
    # [inner, end), which starts on an even offset of the message; the
    # difference of its sums before and after is what the ICMP checksum owes.
    end = csum_at + 2 if quotes_tcp_csum else tcp + 4
    before = int.from_bytes(buf[inner:end], "big")
    delta = 0
    if inner_src is not None:
        delta += _set_address(buf, inner, 12, inner_src[0]) + _set_port(buf, tcp, 0, inner_src[1])
    if inner_dst is not None:
        delta += _set_address(buf, inner, 16, inner_dst[0]) + _set_port(buf, tcp, 2, inner_dst[1])
    if quotes_tcp_csum:
        (tcp_csum,) = _unpack_u16(buf, csum_at)
        if tcp_csum or not udp:   # a UDP 0 says "no checksum": it stays 0
            new = (tcp_csum - delta) % _MOD
            _pack_u16(buf, csum_at, 0xFFFF if udp and not new else new)
    changed = int.from_bytes(buf[inner:end], "big") - before
    (icmp_csum,) = _unpack_u16(buf, ihl + 2)
    _pack_u16(buf, ihl + 2, (icmp_csum - changed) % _MOD)


def tcp_checksum_valid(buf: Buffer, ihl: int, proto: int = PROTO_TCP) -> bool:
    """Whether the TCP (or, with ``proto``, UDP) checksum of the packet in ``buf`` is
    right (RFC 1071 check); the UDP length equals the IP payload's (datagram.py checks).

    For the rare packets that would create state (a client's SYN): translation itself
    never verifies, because RFC 1624 updates carry a sender's error through to the
    receiver, which discards the segment as it would have without us. A segment not
    wholly in ``buf`` (cut by the queue's copy range, or a first fragment) cannot be
    summed and is given the benefit of the doubt.
    The one's-complement sum of a correct segment, checksum field included, is
    0xFFFF, i.e. 0 modulo 0xFFFF; the pseudo-header makes an all-zero sum impossible.
    """
    total, src, dst = _unpack_len_addrs(buf, 0)
    if total > len(buf) or buf[6] & 0x20:  # more fragments follow
        return True
    length = total - ihl
    value = int.from_bytes(buf[ihl:total], "big")
    if length & 1:
        value <<= 8
    return (value + src + dst + proto + length) % _MOD == 0


def complete_checksum(buf: Buffer) -> None:
    """Finish the TCP or UDP checksum its sender left to the hardware (the kernel's
    CHECKSUM_PARTIAL, NFQUEUE's "checksum not ready"), in place.

    Such a packet's checksum field holds only the pseudo-header sum, and the hardware
    would add the segment and negate; a queued packet handed back with a payload is
    taken as is (CHECKSUM_NONE), so whoever changes it must finish the sum first, and
    the RFC 1624 updates of :func:`rewrite` then keep it right. Whole packets only (one
    cut short by the copy range is left alone); a UDP sum of 0 is written 0xFFFF; other
    protocols: nothing to do.
    """
    ihl = (buf[0] & 0x0F) << 2
    total = buf[2] << 8 | buf[3]
    proto = buf[9]
    at = ihl + 16 if proto == PROTO_TCP else ihl + 6 if proto == PROTO_UDP else 0
    if not at or total > len(buf) or total < at + 2:
        return
    value = int.from_bytes(buf[ihl:total], "big")
    if (total - ihl) & 1:
        value <<= 8
    csum = -value % _MOD
    _pack_u16(buf, at, csum if csum or proto == PROTO_TCP else 0xFFFF)


_RESET = struct.Struct("!BBHHHBBHIIHHIIBBHHH")  # IPv4 header without options, TCP header
RESET_LENGTH = _RESET.size


def reset_reply(buf: Buffer, ihl: int) -> None:
    """Turn the client's segment in ``buf`` (a SYN, or one of a connection nobody knows)
    into the RST that refuses it, in place.

    The result is what the real's kernel would have sent from a closed port (RFC 793
    "Reset Generation": a segment acknowledging something gets a RST at that sequence;
    one that does not, such as a SYN, a RST|ACK at sequence 0 acknowledging it and any
    data it carried), with the addresses and ports swapped, so it goes back to the
    client from the address the client asked for. IP options and TCP options are
    dropped and both checksums computed in full: this path is for refusals, not for
    throughput. A ``bytearray`` shrinks to 40 bytes (a TCP segment is never shorter);
    a view cannot, so its packet ends where its IP total length says (the worker hands
    back only that much).
    """
    total, src, dst = _unpack_len_addrs(buf, 0)
    sport, dport, seq, ack, offset, flags = _unpack_tcp_head(buf, ihl)
    if flags & ACK:
        seq, ack, reply = ack, 0, RST
    else:
        # Its data, plus one each for a SYN and a FIN.
        segment = total - ihl - ((offset >> 4) << 2) + (flags & SYN) // SYN + (flags & FIN)
        seq, ack, reply = 0, (seq + segment) & 0xFFFFFFFF, RST | ACK
    _RESET.pack_into(buf, 0, 0x45, 0, RESET_LENGTH, 0, 0x4000, 64, PROTO_TCP, 0, dst, src,
                     dport, sport, seq, ack, 5 << 4, reply, 0, 0, 0)
    if type(buf) is bytearray:
        del buf[RESET_LENGTH:]
    _pack_u16(buf, 10, checksum(buf[:20]))
    _pack_u16(buf, 36, checksum(_PSEUDO.pack(dst, src, PROTO_TCP, 20) + buf[20:RESET_LENGTH]))


def checksum(data: bytes | Buffer) -> int:
    """Internet checksum (RFC 1071) of ``data``, computed from scratch.

    The big-endian integer of an even-length byte string is congruent modulo
    0xFFFF to the sum of its 16-bit words, so one C-level conversion replaces
    the word loop; an odd tail byte is padded with zero as the RFC says.
    All-zero data keeps the RFC 1071 result 0xFFFF.
    """
    value = int.from_bytes(data, "big")
    if len(data) & 1:
        value <<= 8
    return 0xFFFF if value == 0 else -value % _MOD


def tcp_checksum_full(buf: Buffer, ihl: int) -> int:
    """The correct TCP checksum of the packet in ``buf``, over pseudo-header and segment.

    For verification and tests, not the packet path; the whole segment (up to
    the IP total length) must be in ``buf``. The stored checksum field is
    ignored, as if it were zero.
    """
    total, src, dst = _unpack_len_addrs(buf, 0)
    if total > len(buf):
        raise ValueError(f"segment cut short: total length {total}, buffer {len(buf)} bytes")
    segment = bytearray(buf[ihl:total])
    segment[16:18] = b"\0\0"
    return checksum(_PSEUDO.pack(src, dst, PROTO_TCP, total - ihl) + segment)
