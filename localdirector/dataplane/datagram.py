"""UDP parsing for the NFQUEUE path (docs/design.rst, "UDP flows"): the header checks
that decide what a datagram's drop reason is, either family, and the checksum check of
the datagram that would create a flow. Translation is packet.rewrite's (its `udp`
flag)."""

from __future__ import annotations

import struct

from .ipv6 import WIDTH as _WIDTH6, addresses, upper
from .packet import (
    BAD_LENGTH,
    FRAGMENT,
    NOT_TCP,
    PROTO_UDP,
    TRUNCATED,
    Buffer,
    REASON_NAMES as _PACKET_REASONS,
    tcp_checksum_valid,
)

# Parser reasons of UDP's own, numbered after packet.py's (stats.py numbers the
# engine's after these).
BAD_UDP_LENGTH = len(_PACKET_REASONS)       # UDP length below 8 or beyond the IP payload
UDP_NO_CHECKSUM = BAD_UDP_LENGTH + 1        # checksum 0: IPv4's "none", IPv6's invalid
REASON_NAMES = _PACKET_REASONS + ("bad-udp-length", "udp-no-checksum")

UdpFields = tuple[int, int, int, int, int, int, int]
_IP_UDP = struct.Struct("!BxH2xHxB2xIIHHHH")  # the IPv4 header without options, then UDP's
_IP_WHOLE = struct.Struct("!BxH2xHxB2xII")
_UDP = struct.Struct("!HHHH")
_unpack_ip_udp = _IP_UDP.unpack_from
_unpack_ip_whole = _IP_WHOLE.unpack_from
_unpack_udp = _UDP.unpack_from


def parse_udp(buf: Buffer) -> UdpFields | int:
    """``(ihl, total, src, dst, sport, dport, 32)`` of an IPv4/UDP datagram, or a drop
    reason; an IPv6 one's are `_parse_udp6`'s (the transport offset for ``ihl``, the
    flow key's width last, as parse_tcp gives them). Only the headers need be in ``buf`` (the queue may copy less than a 64 KB
    datagram). Dropped: a UDP length below 8 or beyond the IP payload, or that falls
    short of it (another datagram's bytes would follow: no stack sends that), and a
    zero checksum (``udp-no-checksum``: the datagram that creates a flow must be
    verifiable, and a spoofed flood saves nothing by omitting it). A first fragment
    (MF set) carries the header and its length counts the whole datagram: it is
    accepted as it is, which the kernel's reassembly ahead of the queue makes rare.

    Called for what parse_tcp found not to be TCP, so the IPv4 header is known sound
    but for its options and fragment offset, which are checked again here."""
    n = len(buf)
    if n >= 28:
        vihl, total, frag, proto, src, dst, sport, dport, length, csum = _unpack_ip_udp(buf, 0)
        if vihl == 0x45 and proto == PROTO_UDP and not frag & 0x3FFF \
                and length == total - 20 and csum:
            return 20, total, src, dst, sport, dport, 32
    if n < 20:
        return TRUNCATED
    if buf[0] >> 4 == 6:
        return _parse_udp6(buf)
    vihl, total, frag, proto, src, dst = _unpack_ip_whole(buf, 0)
    ihl = (vihl & 0x0F) << 2
    if proto != PROTO_UDP:
        return NOT_TCP
    if frag & 0x1FFF:
        return FRAGMENT
    if total < ihl + 8:
        return BAD_LENGTH
    if n < ihl + 8:
        return TRUNCATED
    sport, dport, length, csum = _unpack_udp(buf, ihl)
    payload = total - ihl
    # A first fragment's length counts the whole datagram, the rest of it to follow.
    if length < 8 or (length < payload if frag & 0x2000 else length != payload):
        return BAD_UDP_LENGTH
    if not csum:
        return UDP_NO_CHECKSUM
    return ihl, total, src, dst, sport, dport, 32


def _parse_udp6(buf: Buffer) -> UdpFields | int:
    """parse_udp for IPv6: its extension headers walked (ipv6.py); a fragment never
    gets here. A checksum of 0 is invalid in IPv6 (RFC 8200 8.1), dropped under the
    same reason as IPv4's 0."""
    at = upper(buf, PROTO_UDP, 8, NOT_TCP)
    if type(at) is int:
        return at
    off, total = at
    sport, dport, length, csum = _unpack_udp(buf, off)
    if length != total - off or length < 8:
        return BAD_UDP_LENGTH
    if not csum:
        return UDP_NO_CHECKSUM
    src, dst = addresses(buf)
    return off, total, src, dst, sport, dport, _WIDTH6


def udp_checksum_valid(buf: Buffer, ihl: int) -> bool:
    """Whether the datagram's checksum is right (only the one creating a flow is
    checked, as only TCP's SYNs are); one not wholly in ``buf`` gets the benefit of the
    doubt, as packet.tcp_checksum_valid explains."""
    return tcp_checksum_valid(buf, ihl, PROTO_UDP)
