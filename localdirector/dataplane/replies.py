"""What the engine knows of the model's addresses, and what it does with a packet not
toward a VIP that belongs to no connection (docs/design.rst, "Packet flow", step 3).

Netfilter queues a real's traffic from the ports it serves a userspace virtual on
(ruleset.translated_reals) unless it is for the director itself. Such a packet that
finds no connection is a reply the engine cannot translate: the connection was opened
by the other unit of a failover pair and not replicated before it crashed or yielded,
or was cleared, or is from before a restart. Forwarded unchanged it would show the
client the real's address (and the client's stack would answer it with a RST), so it
is dropped (`unknown-reply`), and the real is told with a RST, as the client's closed
port would, so it forgets the connection now rather than retransmitting its SYN-ACK
for a minute; the client's own retransmitted SYN then opens the connection afresh. The
rest of a real's traffic (other ports, other hosts' connections it opened) is none of
our business and passes. Mixed into Engine (engine.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..model.connection import WIDTHS, key_width
from ..model.serverid import ALL_PORTS
from .packet import ACK, RST, SYN, Buffer, reset_reply
from .ruleset import translated_reals
from .stats import UNKNOWN_REPLY
from .verdicts import ACCEPT_MODIFIED

if TYPE_CHECKING:
    from ..model.director import Director
    from ..model.real import PhysicalMachine
    from ..model.virtual import VirtualMachine
    from .stats import Stats

_SYN_ACK = SYN | ACK


class RealReplies:
    """The model's addresses as the packet path asks for them, recomputed only when the
    model's generation moves, and the verdict on a real's packet of no connection."""

    director: Director
    stats: Stats
    _resets_left: int
    _vip_generation: int
    # Recomputed by _refresh_model before any packet or close reads them.
    _vip_addrs: frozenset[int] = frozenset()
    _servers: frozenset[VirtualMachine | PhysicalMachine] = frozenset()
    # The part of a reply's flow key above the client (key >> (W + 16), W the family's
    # key width) that a translated real's serving port has: address << 16 | port, with
    # the UDP bit (connection.udp_key) shifted alike for udp.
    _bound: frozenset[int] = frozenset()
    _bound_any: frozenset[int] = frozenset()   # addresses translated on every TCP port

    if TYPE_CHECKING:
        def _drop(self, reason: int) -> int: ...

        def _unchanged(self) -> int: ...

    def _vips(self) -> frozenset[int]:
        """VIP addresses, recomputed only when the model changed."""
        if self.director.generation != self._vip_generation:
            self._refresh_model()
        return self._vip_addrs

    def _refresh_model(self) -> None:
        director = self.director
        self._vip_addrs = frozenset(addr for addr, _port in director.by_dest)
        self._servers = frozenset((*director.virtuals.values(), *director.reals.values()))
        bound: set[int] = set()
        bound_any: set[int] = set()
        for addr, port in translated_reals(director):
            if port == ALL_PORTS:
                bound_any.add(addr)
            elif port & 0xFFFF:   # a UDP real on every port: its own queries pass (udp.py)
                bound.add((port >> 16) << (key_width(addr) + 16) | addr << 16 | port & 0xFFFF)
        self._bound, self._bound_any = frozenset(bound), frozenset(bound_any)
        self._vip_generation = director.generation

    def _real_reply(self, buf: Buffer, ihl: int, flags: int, key: int) -> int:
        """A packet not toward a VIP, of no connection and no tuple closed moments ago.
        From a translated real's serving (address, port) it is dropped and the real
        answered with a RST (at most the tick's budget of them, and never a RST for a
        RST). A real bound on every port (port-0 virtual and real) also opens
        connections of its own from any port, which cannot be told from replies after
        their SYN, so only its SYN-ACKs are dropped there."""
        width = WIDTHS[buf[0] >> 4 == 6]
        if (key >> (width + 16)) not in self._bound and \
                (flags & _SYN_ACK != _SYN_ACK or (key >> (width + 32)) not in self._bound_any):
            return self._unchanged()
        if flags & RST or not flags & ACK or self._resets_left <= 0:
            return self._drop(UNKNOWN_REPLY)
        self.stats.reply_resets += 1
        return self._reset(buf, ihl, UNKNOWN_REPLY)

    def _reset(self, buf: Buffer, ihl: int, reason: int) -> int:
        """Drop a segment of a connection nobody knows under `reason` and send its sender
        the RST a closed port would (`buf` becomes it), from the tick's budget."""
        self._resets_left -= 1
        self.stats.drops[reason] += 1
        reset_reply(buf, ihl)
        return ACCEPT_MODIFIED
