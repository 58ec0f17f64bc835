"""The data plane as one start/stop unit: engine, NFQUEUE worker and netfilter rules.

The appliance calls :func:`start` once the startup-config is loaded and ``stop()`` on
exit or before a `reload`; in between the rules follow every model change by
themselves. Order matters both ways: the queue is bound before any rule sends packets
to it, and the rules are gone before the queue is unbound, so no packet is ever queued
to nobody (``--queue-bypass`` would then forward it untranslated).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..model.director import Director
from .engine import Engine
from .rules import RuleManager, RulesError, RuleSync, run_iptables
from .worker import QueueWorker

log = logging.getLogger("localdirector")

DEFAULT_QUEUE = 0
PROC_QUEUES = Path("/proc/net/netfilter/nfnetlink_queue")
PROC_IPV4 = Path("/proc/sys/net/ipv4")


@dataclass(frozen=True, slots=True)
class QueueCounters:
    """One line of /proc/net/netfilter/nfnetlink_queue: the kernel's view of our queue."""

    waiting: int        # packets queued to us, not yet given a verdict
    queue_dropped: int  # dropped because the queue was full (max_len)
    user_dropped: int   # dropped because our netlink socket buffer was full


def read_queue_counters(queue_num: int, path: Path = PROC_QUEUES) -> QueueCounters | None:
    """None when the queue is not bound in this network namespace."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) >= 7 and fields[0] == str(queue_num):
            return QueueCounters(int(fields[2]), int(fields[5]), int(fields[6]))
    return None


def forwarding_problems(root: Path = PROC_IPV4) -> list[str]:
    """Kernel settings that would silently break translation, as operator warnings.

    Replies leave the director with the VIP as source address although they arrive from
    the reals' side; strict reverse-path filtering (rp_filter=1) on that interface drops
    them as martians, because the route back to the VIP does not point there."""
    problems = []
    if _read_int(root / "ip_forward") == 0:
        problems.append("net.ipv4.ip_forward is 0: the director will not forward to the "
                        "reals (sysctl -w net.ipv4.ip_forward=1)")
    conf = root / "conf"
    default = _read_int(conf / "all" / "rp_filter") or 0
    strict = sorted(iface.name for iface in conf.iterdir() if iface.name not in ("all", "default")
                    and max(default, _read_int(iface / "rp_filter") or 0) == 1) \
        if conf.is_dir() else []
    if strict:
        problems.append(f"strict rp_filter on {', '.join(strict)}: translated replies may be "
                        "dropped as martians (set net.ipv4.conf.*.rp_filter to 0 or 2)")
    return problems


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


class DataPlane:
    """A running data plane over one Director; ``stop()`` undoes everything ``start()``
    did, and a DataPlane can be started again after it (the `reload` path)."""

    def __init__(self, director: Director, queue_num: int = DEFAULT_QUEUE,
                 clock: Callable[[], float] = time.monotonic,
                 iptables: Callable[[list[str], str], str] = run_iptables) -> None:
        self.director = director
        self.queue_num = queue_num
        self.engine = Engine(director, clock)
        self.worker = QueueWorker(queue_num, self.engine, clock=clock)
        self.rules = RuleManager(queue_num, iptables)
        self._sync: RuleSync | None = None
        self.started_at = 0.0

    @property
    def running(self) -> bool:
        return self._sync is not None

    def start(self) -> "DataPlane":
        for problem in forwarding_problems():
            log.warning("data plane: %s", problem)
        self.worker.start()
        sync = RuleSync(self.director, self.rules)
        try:
            sync.install()
        except BaseException:
            sync.stop()
            try:
                with contextlib.suppress(RulesError):  # iptables itself may be the problem
                    self.rules.remove()
            finally:
                self.worker.stop()
            raise
        sync.start()
        self._sync = sync
        self.started_at = time.monotonic()
        log.info("data plane running on NFQUEUE %d", self.queue_num)
        return self

    def stop(self) -> None:
        """Rules out first (new packets stop coming), then the worker; idempotent."""
        sync, self._sync = self._sync, None
        if sync is None:
            return
        sync.stop()
        try:
            self.rules.remove()
        finally:
            self.worker.stop()
        log.info("data plane on NFQUEUE %d stopped", self.queue_num)

    def queue_counters(self) -> QueueCounters | None:
        return read_queue_counters(self.queue_num)

    def clear_counters(self) -> None:
        """`clear counters` for the data plane's own counters."""
        self.engine.stats.reset()
        self.worker.stats.reset()

    def statistics(self) -> dict[str, Any]:
        """Everything `show statistics` prints about the data plane, as one snapshot."""
        with self.director.lock:
            snap = self.engine.stats.snapshot()
            conns = len(self.director.conns)
            generation = self.director.generation
        sync = self._sync
        return {
            "queue": self.queue_num,
            "engine": snap,
            "connections": conns,
            "worker_errors": self.worker.stats.errors,
            "tick_errors": self.worker.stats.tick_errors,
            "oversize": self.worker.stats.oversize,
            "socket_overruns": self.worker.enobufs,
            "kernel": self.queue_counters(),
            "rule_transactions": self.rules.transactions,
            "rule_errors": sync.errors if sync is not None else 0,
            "rules_synced": sync is not None and sync.synced_generation >= generation,
            "uptime": time.monotonic() - self.started_at if self.running else 0.0,
        }


class DataPlaneService:
    """What the appliance holds as ``appliance.dataplane``: the data plane of whatever
    model is live. `reload` swaps in a new Director (through the appliance's reload
    hook); the running DataPlane is then stopped and a new one started on the new model.

    The hook runs inside a shell command, under the *old* model's lock, which the worker
    and rule threads may be waiting for: stopping them right there would deadlock. So
    the restart runs in a thread of its own and completes once that command returns."""

    def __init__(self, appliance: Any, queue_num: int = DEFAULT_QUEUE) -> None:
        self.appliance = appliance
        self.queue_num = queue_num
        self.plane = DataPlane(appliance.director, queue_num)
        self.restarts = 0
        self._lock = threading.Lock()
        self._stopped = False

    def start(self) -> "DataPlaneService":
        self.plane.start()
        self.appliance.reload_hooks.append(self._on_reload)
        self.appliance.dataplane = self
        return self

    def _on_reload(self, director: Director) -> None:
        threading.Thread(target=self._restart, args=(director,), name="dataplane-reload",
                         daemon=True).start()

    def _restart(self, director: Director) -> None:
        with self._lock:
            if self._stopped or director is not self.appliance.director:
                return  # exiting, or a later reload already replaced this model
            self.plane.stop()
            self.plane = DataPlane(director, self.queue_num)
            try:
                self.plane.start()
            except Exception:  # noqa: BLE001 - reported; the shell stays usable
                log.exception("data plane did not restart after reload")
                return
            self.restarts += 1

    def statistics(self) -> dict[str, Any]:
        return {**self.plane.statistics(), "restarts": self.restarts}

    def stop(self) -> None:
        """Remove every rule and stop the worker; idempotent."""
        with self._lock:
            self._stopped = True
            if self._on_reload in self.appliance.reload_hooks:
                self.appliance.reload_hooks.remove(self._on_reload)
            self.plane.stop()
            if self.appliance.dataplane is self:
                self.appliance.dataplane = None


def start(appliance: Any, queue_num: int = DEFAULT_QUEUE) -> DataPlaneService:
    """Entry point for the appliance (`localdirector --queue N`): the data plane runs
    on `appliance.director` until ``.stop()``, following `reload` by itself."""
    return DataPlaneService(appliance, queue_num).start()
