"""IPv6 headers for the NFQUEUE path (docs/design.rst, "IPv6 packets"): the fixed header,
the extension headers it skips or refuses, and the TCP fields parse_tcp gives for IPv4.

What differs from IPv4 is only where things are: the addresses are 16 bytes (ints with
model.addr.V6 above them), there is no header checksum, and the transport header follows
a chain of extension headers instead of an IHL. `walk` finds it: hop-by-hop options
(first only), destination options, a routing header whose segments left is 0 and an
atomic fragment header (offset 0, no more fragments: a whole packet) are skipped; any
other fragment, a routing header still to be followed, ESP, AH, "no next header" and
the other RFC 8200 extension headers are refused, each under its reason, as is a chain
longer than EXT_MAX. Translation is packet.rewrite's, checksums packet.py's, ICMPv6
errors icmp.py's. Everything here returns ints or one small tuple, never raises on
packet contents.
"""

from __future__ import annotations

import struct

from ..model.addr import V6
from .packet import (
    BAD_LENGTH,
    BAD_VERSION,
    EXT_CHAIN,
    EXT_HEADER,
    FRAGMENT,
    HOP_LIMIT,
    NOT_TCP,
    PROTO_TCP,
    ROUTING_HEADER,
    TRUNCATED,
    Buffer,
    TcpFields,
    tcp_fields,
)

EXT_MAX = 8             # extension headers skipped before the chain is refused
WIDTH = 129             # the flow key's width of an IPv6 address (model/connection.py)
HOP_BY_HOP = 0
ROUTING = 43
FRAGMENT_HEADER = 44
DEST_OPTIONS = 60
_SKIPPED = frozenset((HOP_BY_HOP, ROUTING, FRAGMENT_HEADER, DEST_OPTIONS))
# ESP, AH, no next header, mobility, HIP, shim6, the experimental two: no transport
# header to be found behind them.
_REFUSED = frozenset((50, 51, 59, 135, 139, 140, 253, 254))

_HEAD = struct.Struct("!4xHBB")                  # payload length, next header, hop limit
_ADDRS = struct.Struct("!QQQQ")                  # source and destination, in halves
_WHOLE = struct.Struct("!IHBBQQQQHHIIBB")        # no extension header, then TCP's
_unpack_head = _HEAD.unpack_from
_unpack_addrs = _ADDRS.unpack_from
_unpack_whole = _WHOLE.unpack_from


def walk(buf: Buffer, at: int, end: int) -> tuple[int, int] | int:
    """(upper-layer protocol, its offset) of the IPv6 packet whose header starts at
    ``at``, or a reason; every header must lie before ``end`` (the payload length's
    end, or what an ICMPv6 error quotes) and in ``buf``. The version and the payload
    length are the caller's to check (a quoted packet's may exceed its quote)."""
    n = len(buf)
    nxt = buf[at + 6]
    off = at + 40
    count = 0
    while nxt in _SKIPPED:
        if count == EXT_MAX:
            return EXT_CHAIN
        if nxt == HOP_BY_HOP and count:
            return EXT_HEADER        # RFC 8200 4.1: only right after the fixed header
        if off + 8 > end:
            return BAD_LENGTH
        if off + 8 > n:
            return TRUNCATED
        if nxt == FRAGMENT_HEADER:
            if buf[off + 2] or buf[off + 3]:   # an offset, or more fragments to come
                return FRAGMENT
            size = 8
        else:
            if nxt == ROUTING and buf[off + 3]:
                return ROUTING_HEADER
            size = (buf[off + 1] + 1) << 3
        nxt = buf[off]
        off += size
        count += 1
    if nxt in _REFUSED:
        return EXT_HEADER
    if off > end:
        return BAD_LENGTH
    if off > n:
        return TRUNCATED
    return nxt, off


def transport(buf: Buffer) -> tuple[int, int, int] | int:
    """(upper-layer protocol, its offset, total length) of a queued IPv6 packet, or a
    reason: the fixed header whole, a payload length that holds the headers, a hop
    limit above 1 (0 or 1 would expire here, and the kernel's ICMPv6 time exceeded would
    quote the translated packet to its sender: dropped, `hop-limit`)."""
    if len(buf) < 40:
        return TRUNCATED
    if buf[0] >> 4 != 6:
        return BAD_VERSION
    length, _nxt, hops = _unpack_head(buf, 0)
    if hops <= 1:
        return HOP_LIMIT
    total = 40 + length
    found = walk(buf, 0, total)
    if type(found) is int:
        return found
    return found[0], found[1], total


def upper(buf: Buffer, proto: int, need: int, other: int) -> tuple[int, int] | int:
    """(offset, total length) of a queued IPv6 packet's upper-layer header of protocol
    `proto`, its first `need` bytes in the packet and in ``buf``; else a reason (`other`
    for another protocol)."""
    found = transport(buf)
    if type(found) is int:
        return found
    nxt, off, total = found
    if nxt != proto:
        return other
    if total < off + need:
        return BAD_LENGTH
    if len(buf) < off + need:
        return TRUNCATED
    return off, total


def addresses(buf: Buffer, at: int = 8) -> tuple[int, int]:
    """The source and destination address ints of the IPv6 header whose addresses
    start at ``at`` (8 bytes into it)."""
    src_hi, src_lo, dst_hi, dst_lo = _unpack_addrs(buf, at)
    return (src_hi << 64) | src_lo | V6, (dst_hi << 64) | dst_lo | V6


def parse_tcp6(buf: Buffer) -> TcpFields | int:
    """packet.parse_tcp for IPv6: the same fields, the transport offset where IPv4 has
    its IHL and WIDTH last, or a reason (`not-tcp` for another upper layer). A packet
    with no extension header and sound fields is read with one struct call."""
    n = len(buf)
    if n >= 60:
        (vtc, length, nxt, hops, src_hi, src_lo, dst_hi, dst_lo, sport, dport, seq, ack,
         offset, flags) = _unpack_whole(buf, 0)
        end = 40 + ((offset >> 4) << 2)
        if vtc >> 28 == 6 and nxt == PROTO_TCP and hops > 1 and 60 <= end \
                <= 40 + length and end <= n:
            return (40, 40 + length, (src_hi << 64) | src_lo | V6,
                    (dst_hi << 64) | dst_lo | V6, sport, dport, flags, seq, ack, WIDTH)
    at = upper(buf, PROTO_TCP, 0, NOT_TCP)
    if type(at) is int:
        return at
    off, total = at
    found = tcp_fields(buf, off, total)
    if type(found) is int:
        return found
    src, dst = addresses(buf)
    return (off, total, src, dst, *found, WIDTH)
