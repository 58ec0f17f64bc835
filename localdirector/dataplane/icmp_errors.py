"""ICMP and ICMPv6 through the director (docs/design.rst, "Packet flow" and "IPv6
packets"): errors that quote a translated packet (TCP or UDP) are translated with it, so
path-MTU discovery and unreachables work across the translation; a real's port or host
(IPv6: address) unreachable about a UDP flow is a failure of that real (udp.py); other
ICMP passes (neighbour discovery and router advertisements among it), UDP goes to
udp.py, and other protocols toward a VIP are dropped. Mixed into Engine (engine.py),
whose tables, counters and lock it uses."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..model.connection import Connection, flow_key, key_width, udp_key
from .icmp import parse_icmp_error, quoted, rewrite_icmp
from .ipv6 import addresses, transport
from .packet import NOT_TCP, PROTO_ICMP, PROTO_ICMPV6, PROTO_UDP, Buffer
from .verdicts import ACCEPT_MODIFIED, DROP

if TYPE_CHECKING:
    from ..model.director import Director
    from .stats import Stats

# Destination unreachable type << 8 | code that say a UDP datagram reached no service:
# host (1) and port (3) unreachable; ICMPv6's address (3) and port (4) unreachable
# (docs/design.rst, "UDP flows").
_UDP_FAILURES = frozenset((3 << 8 | 1, 3 << 8 | 3, 1 << 8 | 3, 1 << 8 | 4))


class IcmpErrors:
    """What `Engine.handle` does with a packet that is not TCP."""

    director: Director
    stats: Stats
    clock: Callable[[], float]

    if TYPE_CHECKING:
        def _drop(self, reason: int) -> int: ...

        def _unchanged(self) -> int: ...

        def _vips(self) -> frozenset[int]: ...

        def _udp(self, buf: Buffer) -> int: ...

        def _udp_unreachable(self, conn: Connection, now: float) -> bool: ...

    def _not_tcp(self, buf: Buffer, reason: int) -> int:
        if reason != NOT_TCP:
            return self._drop(reason)
        if buf[0] >> 4 == 6:
            # parse_tcp6 walked the headers already: sound, to an upper layer.
            proto = transport(buf)[0]   # type: ignore[index]
            dst = addresses(buf)[1]
        else:
            proto = buf[9]
            dst = int.from_bytes(buf[16:20], "big")
        if proto == PROTO_UDP:
            return self._udp(buf)
        if proto == PROTO_ICMP or proto == PROTO_ICMPV6:
            return self._icmp(buf)
        if dst in self._vips():
            return self._drop(NOT_TCP)
        return self._unchanged()

    def _icmp(self, buf: Buffer) -> int:
        """ICMP errors quoting a translated packet are translated too, so path-MTU
        discovery and unreachables work through the director; other ICMP passes."""
        fields = parse_icmp_error(buf)
        if type(fields) is int:
            return self._unchanged()
        ihl, _osrc, _odst, inner, _inner_ihl, isrc, idst, isport, idport = fields
        # The quoted packet flowed the way the error did not: look it up as if in flight.
        key = flow_key(idst, idport, isrc, isport)
        udp = quoted(buf, inner)[0] == PROTO_UDP
        if udp:
            key |= udp_key(key_width(isrc))
        conns = self.director.conns
        conn = conns.inbound.get(key)
        if conn is not None:
            # Quotes our VIP -> client reply: the error belongs to the real.
            rewrite_icmp(buf, ihl, outer_dst=conn.real_ip,
                         inner_src=(conn.real_ip, conn.real_port),
                         inner_dst=(conn.foreign_ip, conn.remap) if conn.remap else None)
        else:
            conn = conns.reply.get(key)
            if conn is None:
                return self._unchanged()
            if udp and (buf[ihl] << 8 | buf[ihl + 1]) in _UDP_FAILURES \
                    and self._udp_unreachable(conn, self.clock()):
                return DROP   # the flow moved: the client's next datagram goes elsewhere
            # Quotes a client -> real packet: show the client an error about the VIP.
            rewrite_icmp(buf, ihl, outer_src=conn.virtual_ip,
                         inner_dst=(conn.virtual_ip, conn.virtual_port),
                         inner_src=(conn.foreign_ip, conn.foreign_port) if conn.remap else None)
        self.stats.icmp_translated += 1
        return ACCEPT_MODIFIED
