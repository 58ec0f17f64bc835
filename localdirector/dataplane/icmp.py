"""ICMP and ICMPv6 errors that quote a translated packet (docs/design.rst, "Packet flow"
and "IPv6 packets"): parsed to find the connection the quote belongs to, and translated
in place, so path-MTU discovery and unreachables work through the director both ways.

One rewrite serves both families; what differs is where the addresses are (IPv4: 4
bytes at 12 and 16 with a header checksum; IPv6: 16 bytes at 8 and 24, none) and what
the ICMP checksum covers (ICMPv6's also covers the IPv6 pseudo-header, so a changed
outer address is owed to it too). The engine's use of them is icmp_errors.py's.
"""

from __future__ import annotations

import struct

from ..model.addr import V6
from .ipv6 import addresses, upper, walk
from .packet import (
    BAD_LENGTH,
    BAD_VERSION,
    ICMP_ERROR_TYPES,
    ICMPV6_ERROR_TYPES,
    NOT_ICMP_ERROR,
    NOT_TCP,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    TRUNCATED,
    Buffer,
    ipv4_check,
)

IcmpErrorFields = tuple[int, int, int, int, int, int, int, int, int]

_MOD = 0xFFFF
_ALL = V6 - 1
_IP_HEAD = struct.Struct("!BxH2xH")        # version/IHL, total length, flags/fragment offset
_IP_LEN_ADDRS = struct.Struct("!2xH8xII")  # total length, source, destination
_PORTS = struct.Struct("!HH")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_unpack_ip_head = _IP_HEAD.unpack_from
_unpack_len_addrs = _IP_LEN_ADDRS.unpack_from
_unpack_ports = _PORTS.unpack_from
_unpack_u16 = _U16.unpack_from
_pack_u16 = _U16.pack_into
_unpack_u32 = _U32.unpack_from
_pack_u32 = _U32.pack_into


def _ipv4_header(buf: Buffer, off: int, n: int) -> int:
    """packet.ipv4_check of the IPv4 header at ``off``: its length, or a reason."""
    if n < off + 20:
        return TRUNCATED
    vihl, total, frag = _unpack_ip_head(buf, off)
    return ipv4_check(vihl, total, frag, off, n)


def parse_icmp_error(buf: Buffer) -> IcmpErrorFields | int:
    """Parse an ICMP (ICMPv6) error quoting a TCP or UDP packet, or return a reason.

    Returns ``(ihl, outer_src, outer_dst, inner_offset, inner_ihl, inner_src,
    inner_dst, inner_sport, inner_dport)``; ``ihl`` is where the ICMP header starts,
    ``inner_ihl`` the quoted packet's headers' length (IPv6: with its extension
    headers), its protocol `quoted`'s. The quoted packet is the one that
    provoked the error, so its addresses run opposite to the error's own: to
    find the connection, look the inner packet up as if it were in flight.
    RFC 792 guarantees only the inner IP header and 8 bytes of TCP; those are
    required, anything more is optional.
    """
    n = len(buf)
    if n and buf[0] >> 4 == 6:
        return _parse_icmp6(buf, n)
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
    inner_sport, inner_dport = _unpack_ports(buf, inner + inner_ihl)
    return (ihl, src, dst, inner, inner_ihl, inner_src, inner_dst, inner_sport, inner_dport)


def _parse_icmp6(buf: Buffer, n: int) -> IcmpErrorFields | int:
    """parse_icmp_error for IPv6 (RFC 4443: errors quote as much of the packet as fits
    in 1280 bytes, at least its fixed header and 8 bytes of TCP or UDP here)."""
    at = upper(buf, PROTO_ICMPV6, 8, NOT_ICMP_ERROR)
    if type(at) is int:
        return at
    off, total = at
    if buf[off] not in ICMPV6_ERROR_TYPES:
        return NOT_ICMP_ERROR
    inner = off + 8
    if total < inner + 40 + 8:
        return BAD_LENGTH
    if n < inner + 40:
        return TRUNCATED
    if buf[inner] >> 4 != 6:
        return BAD_VERSION
    quoted_at = walk(buf, inner, total)
    if type(quoted_at) is int:
        return quoted_at
    inner_proto, tcp = quoted_at
    if inner_proto != PROTO_TCP and inner_proto != PROTO_UDP:
        return NOT_TCP
    if total < tcp + 8:
        return BAD_LENGTH
    if n < tcp + 8:
        return TRUNCATED
    src, dst = addresses(buf)
    inner_src, inner_dst = addresses(buf, inner + 8)
    inner_sport, inner_dport = _unpack_ports(buf, tcp)
    return (off, src, dst, inner, tcp - inner, inner_src, inner_dst, inner_sport, inner_dport)


def quoted(buf: Buffer, inner: int) -> tuple[int, int]:
    """(protocol, transport offset) of the packet a parsed error quotes at ``inner``."""
    if buf[inner] >> 4 == 6:
        found = walk(buf, inner, len(buf))
        assert type(found) is tuple   # parse_icmp_error walked it already
        return found
    return buf[inner + 9], inner + ((buf[inner] & 0x0F) << 2)


def _set_address(buf: Buffer, header: int, field: int, new_ip: int) -> int:
    """Set the address at ``header + field`` (IPv4's, fixing its header's checksum, or
    IPv6's, 16 bytes, none); return the change, modulo 0xFFFF as a checksum sees it."""
    at = header + field
    if new_ip >> 128:
        old = int.from_bytes(buf[at:at + 16], "big")
        buf[at:at + 16] = (new_ip & _ALL).to_bytes(16, "big")
        return (new_ip & _ALL) - old
    (old,) = _unpack_u32(buf, at)
    delta = new_ip - old
    _pack_u32(buf, at, new_ip)
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

    Updated: the outer IP checksum, the quoted IP header's checksum (IPv4: IPv6 has
    none), the quoted TCP checksum when wholly quoted (incrementally, like Linux NAT:
    the quoted segment is usually cut short and cannot be summed) or the quoted UDP
    checksum (always within the 8 bytes quoted; a 0, "none", stays 0), and the ICMP
    checksum, which covers the quoted bytes (ICMPv6's: and the outer addresses). ``buf``
    must not extend past the IP total length, which queued payloads never do.
    """
    src_at, dst_at = (8, 24) if buf[0] >> 4 == 6 else (12, 16)
    outer = 0
    if outer_src is not None:
        outer += _set_address(buf, 0, src_at, outer_src)
    if outer_dst is not None:
        outer += _set_address(buf, 0, dst_at, outer_dst)
    if src_at == 12:
        outer = 0    # ICMP (IPv4) has no pseudo-header
    inner = ihl + 8
    proto, tcp = quoted(buf, inner)
    udp = proto == PROTO_UDP
    csum_at = tcp + (6 if udp else 16)
    quotes_tcp_csum = len(buf) >= csum_at + 2
    # Every byte this function may change in the ICMP message lies in
    # [inner, end), which starts on an even offset of the message; the
    # difference of its sums before and after is what the ICMP checksum owes.
    end = csum_at + 2 if quotes_tcp_csum else tcp + 4
    before = int.from_bytes(buf[inner:end], "big")
    delta = 0
    if inner_src is not None:
        delta += _set_address(buf, inner, src_at, inner_src[0]) \
            + _set_port(buf, tcp, 0, inner_src[1])
    if inner_dst is not None:
        delta += _set_address(buf, inner, dst_at, inner_dst[0]) \
            + _set_port(buf, tcp, 2, inner_dst[1])
    if quotes_tcp_csum:
        (tcp_csum,) = _unpack_u16(buf, csum_at)
        if tcp_csum or not udp:   # a UDP 0 says "no checksum": it stays 0
            new = (tcp_csum - delta) % _MOD
            _pack_u16(buf, csum_at, 0xFFFF if udp and not new else new)
    changed = int.from_bytes(buf[inner:end], "big") - before + outer
    (icmp_csum,) = _unpack_u16(buf, ihl + 2)
    _pack_u16(buf, ihl + 2, (icmp_csum - changed) % _MOD)
