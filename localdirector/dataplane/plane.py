"""The data plane as one start/stop unit: engine, NFQUEUE worker and netfilter rules over
the live model (docs/design.rst, "Data-plane service").

Between start() and stop() the rules follow every model change by themselves, and a
`reload` hands the running data plane the new model without stopping anything (adopt).
Order matters both ways: the queue is bound before any rule sends packets to it, and the
rules are gone before the queue is unbound, so no packet is ever queued to nobody
(``--queue-bypass`` would then forward it untranslated).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ..model.connection import Connection
from ..model.director import Director
from .conntrack import Conntrack, NoKernel
from .engine import Engine
from .host import (forwarding_problems, ipv6_problems, read_ip_errors, read_queue_counters,
                   route_problems)
from .iptables import Runner, run_iptables
from .kerneltable import KernelTable, NetlinkReads
from .nftnetlink import counter_packets, ruleset_generation
from .ruleset import RulesError
from .rulesync import RuleSync
from .transactions import DualStack
from .worker import DEFAULT_MAX_LEN, QueueWorker

log = logging.getLogger("localdirector")

DEFAULT_QUEUE = 0


class DataPlane:
    """A data plane over one Director (another one after `reload`, see adopt);
    ``stop()`` undoes everything ``start()`` did. What the shell's commands use:
    statistics, clear_conns, clear_counters, clock."""

    def __init__(self, director: Director, queue_num: int = DEFAULT_QUEUE, *,
                 max_len: int = DEFAULT_MAX_LEN, clock: Callable[[], float] = time.monotonic,
                 iptables: Runner = run_iptables, bypass: bool = True) -> None:
        self.queue_num = queue_num
        self.reloads = 0
        self._director = director
        self._engine = Engine(director, clock)
        self._worker = QueueWorker(queue_num, self._engine, max_len=max_len, clock=clock,
                                   fastpath=True)
        self._rules = DualStack(queue_num, iptables, on_marks=self._set_marks,
                                bypass=bypass)
        # The kernel-decided fast path's nft table, listed only after commits.
        self._kernel = KernelTable(queue_num, netlink=NetlinkReads(ruleset_generation,
                                                                   counter_packets))
        self._sync: RuleSync | None = None
        self._started_at = 0.0
        self._lock = threading.Lock()   # start/stop/adopt one at a time

    def _set_marks(self, marks: dict[tuple[int, int], int]) -> None:
        """The fast path's mark map as the kernel now has it (one reference swap: the
        worker thread reads it without waiting for anyone)."""
        self._engine.marks = marks

    def start(self) -> DataPlane:
        """Bind the queue, then install the rules; on failure nothing is left behind."""
        with self._lock:
            self._start()
        log.info("data plane running on NFQUEUE %d", self.queue_num)
        return self

    def _start(self) -> None:
        with self._director.lock:
            vips = {v.addr for v in self._director.iter_virtuals()}
        for problem in forwarding_problems() + ipv6_problems(vips) + route_problems(vips):
            log.warning("data plane: %s", problem)
        try:
            self._engine.kernel = Conntrack()
        except OSError as exc:
            log.warning("data plane: no conntrack netlink (%s): fast-path reassigns cannot "
                        "move a connection and its idle timer cannot ask the kernel", exc)
        self._worker.start()
        sync = RuleSync(self._director, self._rules, self._kernel)
        try:
            sync.install()
        except BaseException:
            sync.stop()
            try:
                with contextlib.suppress(RulesError):  # iptables itself may be the problem
                    self._rules.remove()
                with contextlib.suppress(RulesError):
                    self._kernel.remove()
            finally:
                self._worker.stop()
                self._close_conntrack()
            raise
        sync.start()
        self._sync = sync
        self._started_at = time.monotonic()

    def stop(self) -> None:
        """Rules out first (new packets stop coming), then the worker; idempotent."""
        with self._lock:
            sync, self._sync = self._sync, None
            if sync is None:
                return
            sync.stop()
            try:
                try:
                    self._kernel.remove(self._director)
                finally:
                    self._rules.remove()
            finally:
                self._worker.stop()
                self._close_conntrack()
        log.info("data plane on NFQUEUE %d stopped", self.queue_num)

    def _close_conntrack(self) -> None:
        kernel, self._engine.kernel = self._engine.kernel, NoKernel()
        if isinstance(kernel, Conntrack):
            kernel.close()

    def adopt(self, director: Director) -> None:
        """`reload` without a gap (the appliance's reload hook): the worker and the rules
        stay, the engine carries the live connections over to the new model
        (Engine.adopt) and the rules resync to it. Stopping and starting instead would
        leave a moment with no rules, when SYNs reach a VIP nobody owns, and lose every
        established connection. A data plane that is not running ignores it.

        From here on both models share one lock, the one the worker already waits on;
        the new one is taken too, so no command still running on it overlaps."""
        with self._lock:
            if self._sync is None:
                return
            lock = self._director.lock
            with lock, director.lock:
                director.lock = lock
                self._engine.adopt(director)
                self._director = director
            self._sync.adopt(director)
            self.reloads += 1

    def clock(self) -> float:
        """Now, by the clock that dates the connections."""
        return self._engine.clock()

    # The failover pair's replication of the engine's connections (Engine.observe).
    def observe(self, observer: Callable[[str, Connection], None] | None) -> None:
        self._engine.observe(observer)

    def before_verdicts(self, hook: Callable[[], object] | None) -> None:
        """`hook` runs in the worker before each batch of verdicts leaves."""
        self._worker.before_verdicts = hook

    def import_conn(self, conn: Connection) -> None:
        self._engine.import_conn(conn)

    def forget_conn(self, in_key: int) -> bool:
        return self._engine.forget_conn(in_key)

    def clear_conns(self) -> int:
        """`clear conns`: forget every connection; how many there were."""
        return self._engine.clear_conns()

    def clear_counters(self) -> None:
        """`clear counters` for the data plane's own counters."""
        self._engine.stats.reset()
        self._worker.stats.reset()
        with contextlib.suppress(RulesError):
            self._rules.clear_counters()

    def _rule_counters(self) -> dict[str, int] | None:
        """Queued, shed and copied packets (RuleManager.counters); None when not running
        or iptables cannot tell."""
        try:
            return self._rules.counters() if self._sync is not None else None
        except RulesError:
            return None

    def statistics(self) -> dict[str, Any]:
        """Everything `show statistics` prints about the data plane, as one snapshot.

        Read in the order packets flow, netfilter's count of packets queued first, the
        queue's next, the engine's last: then every packet the first count includes is
        in one of the later ones (queued <= waiting + dropped + packets, equal when
        traffic pauses), however much arrives while they are read."""
        rule_counters = self._rule_counters()
        queue = read_queue_counters(self.queue_num)
        with self._director.lock:
            snap = self._engine.stats.snapshot()
            conns = len(self._director.conns)
            generation = self._director.generation
            virtuals = self._director.virtuals.values()
            sticky = (sum(len(v.sticky_table) for v in virtuals),
                      sum(v.sticky_full for v in virtuals))
        sync = self._sync
        worker = self._worker
        return {
            "queue": self.queue_num,
            "engine": snap,
            "connections": conns,
            "sticky": sticky,
            "worker_errors": worker.stats.errors,
            "tick_errors": worker.stats.tick_errors,
            "oversize": worker.stats.oversize,
            "verdict_errors": worker.verdict_errors,
            "gso_packets": worker.stats.gso,
            "largest_packet": worker.stats.largest,
            "socket_overruns": worker.enobufs,
            "log_overruns": worker.log_overruns,
            "kernel": queue,
            "ip_errors": read_ip_errors(),
            "rule_counters": rule_counters,
            "marks": len(self._engine.marks),
            "conntrack_errors": getattr(self._engine.kernel, "errors", 0),
            "rule_transactions": self._rules.transactions + self._kernel.transactions,
            "rule_errors": sync.errors if sync is not None else 0,
            "rule_repairs": self._rules.repairs + self._kernel.repairs,
            "rules_synced": sync is not None and sync.synced_generation >= generation,
            "uptime": time.monotonic() - self._started_at if sync is not None else 0.0,
            "reloads": self.reloads,
        }


def start(director: Director, queue_num: int = DEFAULT_QUEUE, *,
          max_len: int = DEFAULT_MAX_LEN, bypass: bool = True) -> DataPlane:
    """Entry point for the appliance (`localdirector --queue N --queue-len L`): the data
    plane runs on `director` until ``.stop()``; the caller hands it each `reload`'s new
    model (adopt) and keeps it where the commands find it. `bypass`: VIP traffic passes
    while no engine is bound (a single director), or is dropped (a failover unit)."""
    return DataPlane(director, queue_num, max_len=max_len, bypass=bypass).start()
