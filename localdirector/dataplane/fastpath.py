"""The engine's side of the fast path: it decides a `fastpath` virtual's connections as
usual, then marks their packets for conntrack NAT to translate, takes note of the copies
it is sent, and asks conntrack where the kernel's entry matters (docs/design.rst,
"Fast path")."""

from __future__ import annotations

from ..model.connection import CLOSED, Connection, UdpFlow
from ..model.real import PhysicalMachine
from ..model.serverid import UDP_SERVICE
from .conntrack import KernelTable
from .stats import MARK_PENDING, REASSIGNED, Stats
from .verdicts import ACCEPT_MARK, ACCEPT_UNCHANGED, DROP


class FastPath:
    """The mark map, conntrack's table, and the mark of the last ACCEPT_MARK verdict."""

    __slots__ = ("marks", "conntrack", "verdict_mark", "_stats")

    def __init__(self, stats: Stats, conntrack: KernelTable) -> None:
        # (real address, real port) -> the mark of its DNAT rule, as installed (the rule
        # manager replaces the dict after each transaction).
        self.marks: dict[tuple[int, int], int] = {}
        self.conntrack = conntrack
        self.verdict_mark = 0  # for the worker, after an ACCEPT_MARK verdict
        self._stats = stats

    def ready(self, real: PhysicalMachine, udp: bool = False) -> bool:
        """Whether the real's DNAT rule (of that protocol) is installed: without it a
        SYN or a flow's first datagram reaches nobody."""
        return (real.addr, real.port | (UDP_SERVICE if udp else 0)) in self.marks

    def opened(self, conn: Connection) -> int:
        """The verdict for the SYN that opened a fast-path connection."""
        self._stats.fastpath_conns += 1
        return self.mark(conn)

    def mark(self, conn: Connection) -> int:
        """Let the kernel translate this packet's conntrack entry toward the connection's
        real (a no-op for an entry whose NAT is already bound)."""
        real = conn.real
        # The flow's type, not its key's size: an IPv6 TCP key is above IPv4's UDP bit.
        udp = UDP_SERVICE if type(conn) is UdpFlow else 0
        mark = self.marks.get((real.addr, real.port | udp))
        if mark is None:
            # Its DNAT rule is not installed yet (a real bound a moment ago): without it
            # the SYN would reach nobody. The client retransmits (a resolver resends).
            self._stats.drops[MARK_PENDING] += 1
            return DROP
        self.verdict_mark = mark
        self._stats.fastpath_marked += 1
        return ACCEPT_MARK

    def noted(self) -> int:
        """A fast-path packet the engine took note of; the kernel translates it."""
        self._stats.fastpath_copies += 1
        return ACCEPT_UNCHANGED

    def reassigned(self) -> int:
        """The SYN that moved its connection is dropped: the entry it would open is the
        old one's. The client's next SYN opens a fresh entry toward the new real."""
        self._stats.drops[REASSIGNED] += 1
        return DROP

    def unbind(self, conn: Connection) -> int:
        """Before a reassign: the conntrack entry stays bound to the old real for every
        later packet, so it goes, and the next SYN is the new real's first (`moved`).
        Returns the client port toward the new real: the client's own (the kernel's NAT
        remaps it if it must)."""
        self.forget(conn)
        conn.moved = True
        return conn.foreign_port

    def forget(self, conn: Connection) -> None:
        """Make the kernel stop translating this connection."""
        self.conntrack.delete(conn.foreign_ip, conn.foreign_port, conn.virtual_ip,
                              conn.virtual_port, type(conn) is UdpFlow)

    def held(self, conn: Connection, now: float) -> bool:
        """Its idle timer fired, but its data never reaches the engine: it stays (seen
        now) while the kernel still translates it. A UDP flow's entry lasts until
        conntrack's own UDP timeout, so the flow ends at whichever comes later: its
        timeout (its real's own, else the virtual's) or conntrack's (docs/design.rst,
        "Fast path")."""
        if conn.tcp_state is CLOSED or not self.conntrack.alive(
                conn.foreign_ip, conn.foreign_port, conn.virtual_ip, conn.virtual_port,
                type(conn) is UdpFlow):
            return False
        conn.last_seen = now
        return True
