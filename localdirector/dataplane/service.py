"""The data plane as one start/stop unit: engine, NFQUEUE worker and netfilter rules.

The appliance calls :func:`start` once the startup-config is loaded and ``stop()`` on
exit; in between the rules follow every model change by themselves, and a `reload`
hands the running data plane the new model without stopping anything (see
:meth:`DataPlane.adopt`). Order matters both ways: the queue is bound before any rule
sends packets to it, and the rules are gone before the queue is unbound, so no packet
is ever queued to nobody (``--queue-bypass`` would then forward it untranslated).

When the kernel queue is full (the worker is slower than the traffic, e.g. under a SYN
flood from many addresses), the kernel drops every further packet for this queue until
there is room again, and counts them (``/proc/net/netfilter/nfnetlink_queue``, shown by
`show statistics` as "dropped (queue full)"). Dropping is the right failure: TCP
retransmits what was lost. The alternative the kernel offers, "fail-open"
(NFQA_CFG_F_FAIL_OPEN, which NetfilterQueue 1.1 does not expose), would accept those
packets *untranslated*: SYNs would be routed toward a VIP nobody owns and replies would
reach clients from the reals' own addresses, breaking connections instead of delaying
them. ``--queue-bypass`` is a different thing: it applies only while no worker is
bound (start-up, a crash), when nothing could translate anyway.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..model.addr import format_ip
from ..model.director import Director
from .conntrack import Conntrack, NoKernel
from .engine import Engine
from .iptables import run_iptables
from .ruleset import RulesError
from .rulesync import RuleSync
from .transactions import RuleManager
from .worker import DEFAULT_MAX_LEN, QueueWorker

log = logging.getLogger("localdirector")

DEFAULT_QUEUE = 0
PROC_QUEUES = Path("/proc/net/netfilter/nfnetlink_queue")
PROC_IPV4 = Path("/proc/sys/net/ipv4")
PROC_ROUTES = Path("/proc/net/route")
PROC_SNMP = Path("/proc/net/snmp")


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


def route_problems(vips: set[int], path: Path = PROC_ROUTES) -> list[str]:
    """VIPs this host has no route toward, as operator warnings.

    Nothing needs one to translate; but when a reply (source: the VIP) is too big for
    the clients' side, the kernel must send "fragmentation needed" *to the VIP* for the
    engine to pass it on to the real, and without a route it sends nothing at all:
    path-MTU discovery black-holes downloads. Any route does (a default route)."""
    try:
        rows = [line.split() for line in path.read_text().splitlines()[1:]]
    except OSError:
        return []
    # Destination and mask are the network-order words printed as native integers.
    routes = [(socket.ntohl(int(r[1], 16)), socket.ntohl(int(r[7], 16)))
              for r in rows if len(r) > 7]
    return [f"no route toward VIP {format_ip(vip)}: path-MTU errors about replies cannot "
            "reach the reals (add one; a default route will do)"
            for vip in sorted(vips) if not any(vip & mask == dest for dest, mask in routes)]


def read_ip_errors(path: Path = PROC_SNMP) -> dict[str, int]:
    """The kernel's own drops of malformed IPv4 before any hook (bad header or header
    checksum, failed reassembly), for `show statistics`: whole namespace, not just ours."""
    try:
        names, values = (line.split()[1:] for line in path.read_text().splitlines()
                         if line.startswith("Ip:"))
    except (OSError, ValueError):
        return {}
    counters = dict(zip(names, map(int, values)))
    return {"header errors": counters.get("InHdrErrors", 0),
            "reassembly failures": counters.get("ReasmFails", 0)}


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


class DataPlane:
    """A running data plane over one Director (another one after `reload`, see
    :meth:`adopt`); ``stop()`` undoes everything ``start()`` did."""

    def __init__(self, director: Director, queue_num: int = DEFAULT_QUEUE,
                 clock: Callable[[], float] = time.monotonic,
                 iptables: Callable[[list[str], str], str] = run_iptables,
                 max_len: int = DEFAULT_MAX_LEN) -> None:
        self.director = director
        self.queue_num = queue_num
        self.engine = Engine(director, clock)
        self.worker = QueueWorker(queue_num, self.engine, max_len=max_len, clock=clock,
                                  fastpath=True)
        self.rules = RuleManager(queue_num, iptables, on_marks=self._set_marks)
        self._sync: RuleSync | None = None
        self.started_at = 0.0

    @property
    def running(self) -> bool:
        return self._sync is not None

    def _set_marks(self, marks: dict[tuple[int, int], int]) -> None:
        """The fast path's mark map as the kernel now has it (one reference swap: the
        worker thread reads it without waiting for anyone)."""
        self.engine.marks = marks

    def start(self) -> "DataPlane":
        with self.director.lock:
            vips = {v.addr for v in self.director.iter_virtuals()}
        for problem in forwarding_problems() + route_problems(vips):
            log.warning("data plane: %s", problem)
        try:
            self.engine.kernel = Conntrack()
        except OSError as exc:
            log.warning("data plane: no conntrack netlink (%s): fast-path reassigns cannot "
                        "move a connection and its idle timer cannot ask the kernel", exc)
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
                self._close_kernel()
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
            self._close_kernel()
        log.info("data plane on NFQUEUE %d stopped", self.queue_num)

    def _close_kernel(self) -> None:
        kernel, self.engine.kernel = self.engine.kernel, NoKernel()
        if isinstance(kernel, Conntrack):
            kernel.close()

    def adopt(self, director: Director) -> None:
        """`reload` without a gap: the worker and the rules stay, the engine carries the
        live connections over to the new model (Engine.adopt) and the rules resync to
        it. Stopping and starting instead would leave a moment with no rules, when SYNs
        reach a VIP nobody owns, and lose every established connection.

        From here on both models share one lock, the one the worker already waits on;
        the new one is taken too, so no command still running on it overlaps."""
        lock = self.director.lock
        with lock, director.lock:
            director.lock = lock
            self.engine.adopt(director)
            self.director = director
        if self._sync is not None:
            self._sync.adopt(director)

    def queue_counters(self) -> QueueCounters | None:
        return read_queue_counters(self.queue_num)

    def clear_counters(self) -> None:
        """`clear counters` for the data plane's own counters."""
        self.engine.stats.reset()
        self.worker.stats.reset()
        with contextlib.suppress(RulesError):
            self.rules.clear_counters()

    def _rule_counters(self) -> dict[str, int] | None:
        """Queued and shed packets (RuleManager.counters); None when iptables cannot tell."""
        try:
            return self.rules.counters() if self.running else None
        except RulesError:
            return None

    def statistics(self) -> dict[str, Any]:
        """Everything `show statistics` prints about the data plane, as one snapshot.

        Read in the order packets flow, netfilter's count of packets queued first, the
        queue's next, the engine's last: then every packet the first count includes is
        in one of the later ones (queued <= waiting + dropped + packets, equal when
        traffic pauses), however much arrives while they are read."""
        rule_counters = self._rule_counters()
        kernel = self.queue_counters()
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
            "log_overruns": self.worker.log_overruns,
            "kernel": kernel,
            "ip_errors": read_ip_errors(),
            "rule_counters": rule_counters,
            "marks": len(self.engine.marks),
            "conntrack_errors": getattr(self.engine.kernel, "errors", 0),
            "rule_transactions": self.rules.transactions,
            "rule_errors": sync.errors if sync is not None else 0,
            "rules_synced": sync is not None and sync.synced_generation >= generation,
            "uptime": time.monotonic() - self.started_at if self.running else 0.0,
        }


class DataPlaneService:
    """What the appliance holds as ``appliance.dataplane``: the data plane of whatever
    model is live. `reload` swaps in a new Director (through the appliance's reload
    hook), which the running DataPlane adopts."""

    def __init__(self, appliance: Any, queue_num: int = DEFAULT_QUEUE,
                 max_len: int = DEFAULT_MAX_LEN) -> None:
        self.appliance = appliance
        self.queue_num = queue_num
        self.plane = DataPlane(appliance.director, queue_num, max_len=max_len)
        self.reloads = 0
        self._lock = threading.Lock()
        self._stopped = False

    def start(self) -> "DataPlaneService":
        self.plane.start()
        self.appliance.reload_hooks.append(self._on_reload)
        self.appliance.dataplane = self
        return self

    def _on_reload(self, director: Director) -> None:
        with self._lock:
            if self._stopped:
                return
            self.plane.adopt(director)
            self.reloads += 1

    def statistics(self) -> dict[str, Any]:
        return {**self.plane.statistics(), "reloads": self.reloads}

    def stop(self) -> None:
        """Remove every rule and stop the worker; idempotent."""
        with self._lock:
            self._stopped = True
            if self._on_reload in self.appliance.reload_hooks:
                self.appliance.reload_hooks.remove(self._on_reload)
            self.plane.stop()
            if self.appliance.dataplane is self:
                self.appliance.dataplane = None


def start(appliance: Any, queue_num: int = DEFAULT_QUEUE,
          max_len: int = DEFAULT_MAX_LEN) -> DataPlaneService:
    """Entry point for the appliance (`localdirector --queue N --queue-len L`): the data
    plane runs on `appliance.director` until ``.stop()``, following `reload` by itself."""
    return DataPlaneService(appliance, queue_num, max_len).start()
