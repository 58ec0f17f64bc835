"""Connections this engine did not open (docs/design.rst, "Failover" and "Data-plane
service"): the stream of opens and closes the failover pair replicates, the
connections the active unit replicated here, and `reload`'s hand-over of every live
connection to the rebuilt model. Mixed into Engine (engine.py), whose tables, timers
and lock it uses."""

from __future__ import annotations

import _thread
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..model.connection import Connection
from ..model.predictors import remember_sticky

if TYPE_CHECKING:
    from ..model.director import Director
    from ..model.real import PhysicalMachine
    from ..model.virtual import VirtualMachine
    from .expiry import Expiry

# What the observer is told (see CarriedConnections.observe).
OPENED = "open"
ANSWERED = "answered"
MOVED = "move"
CLOSED_EVENT = "close"


class CarriedConnections:
    """Replication hooks and `reload`'s adoption."""

    director: Director
    clock: Callable[[], float]
    _lock: _thread.RLock
    _expiry: Expiry
    _probes: dict[PhysicalMachine, Connection]
    _vip_generation: int
    _observer: Callable[[str, Connection], None] | None

    if TYPE_CHECKING:
        def _close(self, conn: Connection, now: float) -> None: ...

        def _refile_flow(self, conn: Connection, previous: VirtualMachine) -> None: ...

        def _refile_flows(self) -> None: ...

    def observe(self, observer: Callable[[str, Connection], None] | None) -> None:
        """Have `observer(event, conn)` called, under the lock, when a connection opens,
        is answered, moves to another real or is removed (OPENED, ANSWERED, MOVED,
        CLOSED_EVENT): the failover pair's stream. Never per established packet."""
        self._observer = observer

    def _notify(self, event: str, conn: Connection) -> None:
        observer = self._observer
        if observer is not None:
            observer(event, conn)

    def import_conn(self, conn: Connection) -> None:
        """Install a connection the active unit replicated (replacing this unit's copy of
        the same client tuple): both keys, its idle timer and its client's sticky entry,
        so that this engine carries it on when this unit takes over. Like `adopt`, it
        is carried over, not opened: totals stay."""
        with self._lock:
            table = self.director.conns
            old = table.inbound.get(conn.in_key)
            if old is not None:
                table.remove(old)
                self._expiry.closed()
            table.add(conn)
            conn.virtual.conns_total -= 1
            conn.real.total_conns -= 1
            now = self.clock()
            self._expiry.start(conn, now)
            self._refile_flow(conn, conn.virtual)   # a UDP flow: within `flows` here too
            if conn.virtual.sticky:
                remember_sticky(conn.virtual, conn.foreign_ip, conn.real, now)

    def forget_conn(self, in_key: int) -> bool:
        """The active unit closed this connection: remove this unit's copy as a close
        would. False when there is none."""
        with self._lock:
            conn = self.director.conns.inbound.get(in_key)
            if conn is None:
                return False
            self._close(conn, self.clock())
            return True

    def adopt(self, director: Director) -> None:
        """`reload`: go on with the model rebuilt from the startup-config, keeping every
        live connection and the counters. A connection whose virtual and real exist in
        the new model (same ids) moves onto them, so their gauges include it; any other
        keeps flowing on its old objects until it ends, as after `no virtual`. Health
        (FAILED, TESTING) starts afresh with the new objects, so no probe survives.
        The caller holds the lock, which both models share."""
        old = self.director
        table = director.conns
        for conn in old.conns:
            virtual = director.virtuals.get(conn.virtual.sid)
            real = director.reals.get(conn.real.sid)
            old.conns.remove(conn)
            if virtual is not None and real is not None:
                conn.virtual, conn.real = virtual, real
            table.add(conn)
            conn.virtual.conns_total -= 1  # carried over, not opened: totals stay
            conn.real.total_conns -= 1
        self.director = director
        self._lock = director.lock
        self._refile_flows()    # under the new instances
        self._probes.clear()
        self._expiry.forget_timeouts()
        self._vip_generation = -1
