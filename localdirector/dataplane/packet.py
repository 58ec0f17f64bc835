"""IPv4/TCP parsing and in-place address translation of either family for the NFQUEUE
hot path (UDP's own parsing: datagram.py; IPv6's headers: ipv6.py; ICMP errors: icmp.py).

Plain functions over the payload ``bytearray`` (or a writable ``memoryview`` of it) on
precompiled :mod:`struct` objects, returning ints or one small tuple, never a packet
object: every queued packet passes through :func:`parse_tcp`, most through
:func:`rewrite`. Addresses are host-order ints (0xC000020A is 192.0.2.10; an IPv6 one
carries model.addr.V6 above its 128 bits). The functions that serve both families
(rewrite, the checksums, reset_reply) tell them apart by the version nibble where IPv4
without options cannot be, so that case computes nothing new.
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
# IPv6's (ipv6.py; docs/design.rst, "IPv6"): counted with the rest.
EXT_HEADER = 9       # ESP, AH, no next header, a hop-by-hop header not first, ...
ROUTING_HEADER = 10  # a routing header with segments left: not for us to follow
EXT_CHAIN = 11       # more extension headers than EXT_MAX
HOP_LIMIT = 12       # hop limit 0 or 1: it would expire here, quoting a translated packet
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
    "ext-header",
    "routing-header",
    "ext-chain",
    "hop-limit",
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
PROTO_ICMPV6 = 58
# ICMP messages that quote the offending packet and are worth translating:
# destination unreachable (incl. code 4, fragmentation needed, for path-MTU
# discovery), time exceeded, parameter problem.
ICMP_ERROR_TYPES = frozenset((3, 11, 12))
# ICMPv6's (RFC 4443): destination unreachable, packet too big (path-MTU discovery,
# IPv6 routers never fragment), time exceeded, parameter problem. Neighbour discovery
# and router advertisements (133-137) are informational: never queued, never touched.
ICMPV6_ERROR_TYPES = frozenset((1, 2, 3, 4))

Buffer = bytearray | memoryview  # a writable view when rewriting
# (transport offset, total, src, dst, sport, dport, flags, seq, ack, key width)
TcpFields = tuple[int, int, int, int, int, int, int, int, int, int]

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
_PSEUDO = struct.Struct("!IIxBH")           # TCP pseudo-header
_QQ = struct.Struct("!QQ")                  # an IPv6 address, in two halves
_M64 = (1 << 64) - 1

# Bound methods looked up once: the hot path then pays no attribute lookups.
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
_unpack_qq = _QQ.unpack_from
_pack_qq = _QQ.pack_into


def ipv4_check(vihl: int, total: int, frag: int, off: int, n: int) -> int:
    """Validate the IPv4 header at ``off`` from its fields; return its length in bytes,
    or a reason. Shared by the TCP path and both headers of an ICMP error (icmp.py) so
    the rules are stated once; parse_tcp unpacks the whole header at once, one struct
    call fewer per packet. A header is at least 20 bytes, so every value below 20 is a
    drop reason, never a length; callers test ``< 20``."""
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
    ack, 32)`` or a drop reason (``bad-version`` for IPv6: ipv6.parse_tcp6 reads it,
    with the same fields; 32 is the flow key's width for IPv4, model/connection.py).

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
            return 20, total, src, dst, sport, dport, flags, seq, ack, 32
    elif n < 20:
        return TRUNCATED
    vihl, total, frag, proto, src, dst = _unpack_ip_whole(buf, 0)
    ihl = ipv4_check(vihl, total, frag, 0, n)
    if ihl < 20:
        return ihl
    if proto != PROTO_TCP:
        return NOT_TCP
    found = tcp_fields(buf, ihl, total)
    if type(found) is int:
        return found
    return (ihl, total, src, dst, *found, 32)


def tcp_fields(buf: Buffer, off: int, total: int) -> tuple[int, int, int, int, int] | int:
    """``(sport, dport, flags, seq, ack)`` of the TCP header at ``off``, checked against
    the packet's ``total`` length and the buffer, or a reason: the general way of both
    families' parsers (ipv6.py)."""
    if total < off + 20:
        return BAD_LENGTH
    if len(buf) < off + 20:
        return TRUNCATED
    sport, dport, seq, ack, offset, flags = _unpack_tcp_head(buf, off)
    end = off + ((offset >> 4) << 2)
    if end < off + 20 or end > total:
        return BAD_TCP_OFFSET
    if end > len(buf):
        return TRUNCATED
    return sport, dport, flags, seq, ack


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
    IPv6 (``ihl``: where its transport header starts, never 20) goes to `_rewrite6`.
    """
    if udp:
        if ihl == 20:
            ip_csum, src, dst, sport, dport, tcp_csum = _unpack_addrs_ports_ucsum(buf, 10)
        elif buf[0] >> 4 == 6:
            _rewrite6(buf, ihl, new_ip, new_port, destination, ihl + 6)
            return
        else:
            ip_csum, src, dst = _unpack_csum_addrs(buf, 10)
            sport, dport, tcp_csum = _unpack_ports_ucsum(buf, ihl)
    elif ihl == 20:
        ip_csum, src, dst, sport, dport, tcp_csum = _unpack_addrs_ports_csum(buf, 10)
    elif buf[0] >> 4 == 6:
        _rewrite6(buf, ihl, new_ip, new_port, destination, 0)
        return
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


def _rewrite6(buf: Buffer, off: int, new_ip: int, new_port: int, destination: bool,
              udp_csum: int) -> None:
    """`rewrite` for IPv6: no header checksum; the transport checksum covers the
    addresses through the IPv6 pseudo-header. A 128-bit address is two 64-bit halves,
    and 2**64 = 1 (mod 0xFFFF), so its words sum to the halves' sum; the tag of
    `new_ip` (bit 128) is masked off with the upper half's bit 64. `udp_csum`: where a
    UDP checksum is (its 0 written 0xFFFF, as for IPv4; ipv6.py drops a 0), or 0 for
    TCP's."""
    at = 24 if destination else 8
    old_hi, old_lo = _unpack_qq(buf, at)
    new_hi = (new_ip >> 64) & _M64
    new_lo = new_ip & _M64
    _pack_qq(buf, at, new_hi, new_lo)
    port_at = off + 2 if destination else off
    (old_port,) = _unpack_u16(buf, port_at)
    _pack_u16(buf, port_at, new_port)
    delta = new_hi + new_lo - old_hi - old_lo + new_port - old_port
    csum_at = udp_csum or off + 16
    (csum,) = _unpack_u16(buf, csum_at)
    csum = (csum - delta) % _MOD
    _pack_u16(buf, csum_at, csum or 0xFFFF if udp_csum else csum)


def ip_total(buf: Buffer) -> int:
    """The packet's length as its IP header says (IPv6: 40 + payload length)."""
    if buf[0] >> 4 == 6:
        return 40 + ((buf[4] << 8) | buf[5])
    return (buf[2] << 8) | buf[3]


def _pseudo_sum(buf: Buffer) -> tuple[int, int]:
    """(total length, sum of the pseudo-header's addresses) of either family: an
    address's words sum, modulo 0xFFFF, to its value, and both IPv6 ones, side by side
    at 8, to the value of those 32 bytes."""
    if buf[0] >> 4 == 6:
        return 40 + ((buf[4] << 8) | buf[5]), int.from_bytes(buf[8:40], "big")
    total, src, dst = _unpack_len_addrs(buf, 0)
    return total, src + dst


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
    Either family (``ihl``: where the transport header starts; an IPv6 packet that
    reaches here is never a fragment, ipv6.py).
    """
    if buf[0] >> 4 == 6:
        total, addresses = _pseudo_sum(buf)
    else:   # written out: IPv4's SYNs pay no call
        total, src, dst = _unpack_len_addrs(buf, 0)
        if buf[6] & 0x20:   # more fragments follow
            return True
        addresses = src + dst
    if total > len(buf):
        return True
    length = total - ihl
    value = int.from_bytes(buf[ihl:total], "big")
    if length & 1:
        value <<= 8
    return (value + addresses + proto + length) % _MOD == 0


def complete_checksum(buf: Buffer) -> None:
    """Finish the TCP or UDP checksum its sender left to the hardware (the kernel's
    CHECKSUM_PARTIAL, NFQUEUE's "checksum not ready"), in place.

    Such a packet's checksum field holds only the pseudo-header sum, and the hardware
    would add the segment and negate; a queued packet handed back with a payload is
    taken as is (CHECKSUM_NONE), so whoever changes it must finish the sum first, and
    the RFC 1624 updates of :func:`rewrite` then keep it right. Whole packets only (one
    cut short by the copy range is left alone); a UDP sum of 0 is written 0xFFFF; other
    protocols: nothing to do. IPv6: the transport header right after the fixed one (a
    local stack puts no extension header before TCP or UDP), which the pseudo-header's
    sum is already in, as for IPv4.
    """
    if buf[0] >> 4 == 6:
        ihl, total, proto = 40, 40 + ((buf[4] << 8) | buf[5]), buf[6]
    else:
        ihl, total, proto = (buf[0] & 0x0F) << 2, buf[2] << 8 | buf[3], buf[9]
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
_RESET6 = struct.Struct("!IHBB16s16sHHIIBBHHH")     # IPv6 header, TCP header
RESET6_LENGTH = _RESET6.size


def reset_reply(buf: Buffer, ihl: int) -> None:
    """Turn the client's segment in ``buf`` (a SYN, or one of a connection nobody knows)
    into the RST that refuses it, in place.

    The result is what the real's kernel would have sent from a closed port (RFC 793
    "Reset Generation": a segment acknowledging something gets a RST at that sequence;
    one that does not, such as a SYN, a RST|ACK at sequence 0 acknowledging it and any
    data it carried), with the addresses and ports swapped, so it goes back to the
    client from the address the client asked for. IP options and TCP options are
    dropped and both checksums computed in full: this path is for refusals, not for
    throughput. A ``bytearray`` shrinks to 40 bytes (IPv6: 60, extension headers
    dropped too; a TCP segment is never shorter); a view cannot, so its packet ends
    where its IP total (payload) length says (the worker hands back only that much).
    """
    total, addresses = _pseudo_sum(buf)
    sport, dport, seq, ack, offset, flags = _unpack_tcp_head(buf, ihl)
    if flags & ACK:
        seq, ack, reply = ack, 0, RST
    else:
        # Its data, plus one each for a SYN and a FIN.
        segment = total - ihl - ((offset >> 4) << 2) + (flags & SYN) // SYN + (flags & FIN)
        seq, ack, reply = 0, (seq + segment) & 0xFFFFFFFF, RST | ACK
    if buf[0] >> 4 == 6:
        # No header checksum; the pseudo-header's addresses sum alike either way round.
        src, dst = bytes(buf[8:24]), bytes(buf[24:40])
        _RESET6.pack_into(buf, 0, 0x60000000, 20, PROTO_TCP, 64, dst, src,
                          dport, sport, seq, ack, 5 << 4, reply, 0, 0, 0)
        length = RESET6_LENGTH
    else:
        _, src, dst = _unpack_len_addrs(buf, 0)
        _RESET.pack_into(buf, 0, 0x45, 0, RESET_LENGTH, 0, 0x4000, 64, PROTO_TCP, 0, dst,
                         src, dport, sport, seq, ack, 5 << 4, reply, 0, 0, 0)
        _pack_u16(buf, 10, checksum(buf[:20]))
        length = RESET_LENGTH
    if type(buf) is bytearray:
        del buf[length:]
    tcp = length - 20
    value = int.from_bytes(buf[tcp:length], "big") + addresses + PROTO_TCP + 20
    _pack_u16(buf, tcp + 16, -value % _MOD)


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
