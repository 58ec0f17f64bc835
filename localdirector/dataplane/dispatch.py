"""The engine's side of dispatched forwarding: a connection's packets leave unchanged,
marked for its real, and a netfilter rule per real clones them to that real's MAC
(iptables.dispatch_rules); a flow this director does not know (ECMP moved it here from
another director) goes where the virtual's Maglev table sends it, as it went there
(docs/design.rst, "Scale-out")."""

from __future__ import annotations

from ..model import maglev
from ..model.connection import Connection
from ..model.real import PhysicalMachine
from ..model.virtual import VirtualMachine
from .fastpath import FastPath
from .ruleset import DISPATCH_PORT
from .stats import MARK_PENDING, Stats
from .verdicts import ACCEPT_MARK, DROP


class Dispatch:
    """Reads the mark map the fast path holds (one map for both: marks come from one
    MarkMap) and sets its `verdict_mark`."""

    __slots__ = ("_marks", "_stats")

    def __init__(self, marks: FastPath, stats: Stats) -> None:
        self._marks = marks
        self._stats = stats

    def ready(self, real: PhysicalMachine) -> bool:
        """Whether the real's forwarding rule is installed: without it nothing reaches it."""
        return (real.addr, DISPATCH_PORT) in self._marks.marks

    def forward(self, conn: Connection) -> int:
        """A client's packet of a known connection, to its real unchanged."""
        return self._to(conn.real.addr)

    def stranger(self, virtual: VirtualMachine, flow: int) -> int | None:
        """A client's packet (not a SYN) of a flow no connection holds, to a dispatched
        `virtual` (the instance its Bind ID selects): to the real the virtual's Maglev
        table names; None when the table is empty."""
        table = maglev.table_for(virtual)
        if table is None:
            return None
        self._stats.maglev_forwarded += 1
        return self._to(table.members[table.lookup(flow)][0])

    def _to(self, addr: int) -> int:
        mark = self._marks.marks.get((addr, DISPATCH_PORT))
        if mark is None:
            self._stats.drops[MARK_PENDING] += 1
            return DROP
        self._marks.verdict_mark = mark
        self._stats.translated_in += 1   # the client -> real bucket
        return ACCEPT_MARK
