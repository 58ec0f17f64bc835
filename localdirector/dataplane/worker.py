"""The NFQUEUE worker: one thread that feeds every queued packet to the engine
(docs/design.rst, "Data-plane service").

It polls the queue's netlink socket (nfqueue.py), the fast path's NFLOG group of the same
number (nflog.py) and a wake-up pipe, and reads at most ``BATCH`` packets at a time, then
sends their verdicts together, so the engine's periodic ``tick()`` and a stop request
never starve under load. An exception from the engine never leaves the packet without a
verdict, which would hold a queue slot forever: the packet is dropped (TCP retransmits)
and the error counted and logged once per type.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections.abc import Callable
from typing import Protocol

from .collector import FrozenCollector
from .engine import ACCEPT_MARK, ACCEPT_MODIFIED, ACCEPT_UNCHANGED
from .nflog import PacketLog
from .nfqueue import COPY_RANGE, SKB_CSUM_NOT_READY, SKB_GSO, PacketQueue
from .packet import Buffer, complete_checksum
from .ruleset import MARK_MASK

log = logging.getLogger("localdirector")

# Kernel queue length: packets beyond it are dropped (counted in
# /proc/net/netfilter/nfnetlink_queue), so it must absorb a burst while the worker is
# busy with a tick or the GIL is elsewhere (the shell rendering `show conns`).
DEFAULT_MAX_LEN = 8192
# Netlink receive buffer: every queued packet waits in it until read, GSO super-packets
# of up to 64 KB among MTU-sized ones; this much a packet of a full queue (32 MB for
# 8192, about 30 ms of 1 GB/s bulk while the worker is busy elsewhere). The kernel
# doubles the value it is given and charges only what is in use.
SOCKET_BYTES_PER_PACKET = 4096
BATCH = 256
TICK_SECONDS = 0.5
# The worker does what kernel NAT does in softirq context, ahead of every process: each
# packet it holds waits for it, and on a busy host (in the benchmark lab: two cores
# shared with 24 load generators and the web servers) a worker at the default priority
# queues behind them, which measurably lowered the new-connection rate of the fast path
# (SYNs wait). So its thread asks for a higher priority, best effort (root may; nobody
# else is refused anything: ordinary processes still get their share).
WORKER_NICE = -10


class PacketEngine(Protocol):
    """What the worker needs from the FIG. 5 engine."""

    verdict_mark: int   # the mark an ACCEPT_MARK verdict sets

    def handle(self, buf: Buffer) -> int: ...

    def tick(self) -> None: ...


class WorkerStats:
    """Failures of the engine itself (its verdicts and drop reasons are counted by the
    engine) and the GSO super-packets the queue carried (so `show statistics` shows
    that bulk moves up to 64 KB a round trip); plain ints written by the worker thread
    only, read by anyone."""

    __slots__ = ("errors", "tick_errors", "oversize", "gso", "largest")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.errors = 0
        self.tick_errors = 0
        self.oversize = 0
        self.gso = 0        # GSO super-packets queued to us
        self.largest = 0    # bytes of the longest packet queued to us


class QueueWorker:
    """Binds one NFQUEUE and runs the engine on it in a thread of its own."""

    def __init__(self, queue_num: int, engine: PacketEngine, *,
                 max_len: int = DEFAULT_MAX_LEN, tick_seconds: float = TICK_SECONDS,
                 clock: Callable[[], float] = time.monotonic, fastpath: bool = False) -> None:
        self.queue_num = queue_num
        self.fastpath = fastpath   # also read NFLOG group `queue_num` (the fast path's copies)
        self._log: PacketLog | None = None
        self.engine = engine
        self.max_len = max_len
        self.tick_seconds = tick_seconds
        self.stats = WorkerStats()
        self._clock = clock
        self._queue: PacketQueue | None = None
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = -1, -1
        self._stopping = False
        self._logged: set[type] = set()
        self._before_verdicts: Callable[[], object] | None = None
        self.collector = FrozenCollector(clock())

    @property
    def before_verdicts(self) -> Callable[[], object] | None:
        """Run in this worker before each batch of verdicts leaves (never raising): the
        failover pair's stream writes the records of the connections the batch opens."""
        return self._before_verdicts

    @before_verdicts.setter
    def before_verdicts(self, hook: Callable[[], object] | None) -> None:
        self._before_verdicts = hook
        if self._queue is not None:
            self._queue.before_send = hook

    @property
    def enobufs(self) -> int:
        """Times the kernel told us it lost packets on the way to our socket."""
        return self._queue.enobufs if self._queue is not None else 0

    @property
    def verdict_errors(self) -> int:
        """Verdicts the kernel refused (never expected: counted to be seen)."""
        return self._queue.verdict_errors if self._queue is not None else 0

    @property
    def log_overruns(self) -> int:
        """Times the kernel told us it lost NFLOG copies on the way to us."""
        return self._log.overruns if self._log is not None else 0

    def start(self) -> None:
        """Bind in the caller's thread so a bad queue number or missing privilege fails
        start-up with an exception instead of dying silently in the worker."""
        queue = PacketQueue(self.queue_num, max_len=self.max_len,
                            receive_buffer=self.max_len * SOCKET_BYTES_PER_PACKET)
        try:
            self._log = PacketLog(self.queue_num) if self.fastpath else None
        except BaseException:
            queue.close()
            raise
        queue.before_send = self._before_verdicts
        self._queue = queue
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name=f"nfqueue-{self.queue_num}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Wake the thread, wait for it, then unbind: packets still queued in the kernel
        are dropped by the unbind and retransmitted by their senders."""
        if self._thread is None:
            return
        self._stopping = True
        os.write(self._wake_w, b"x")
        self._thread.join()
        self._thread = None
        self.collector.thaw()
        assert self._queue is not None
        self._queue.close()   # the counters stay readable
        if self._log is not None:
            self._log.close()
            self._log = None
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _loop(self) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICE)
        except OSError as exc:
            log.info("data plane: NFQUEUE %d worker keeps its priority (%s)", self.queue_num,
                     exc.strerror)
        try:
            self._serve()
        except BaseException:
            # Packets now wait in the kernel queue until it overflows: say so loudly.
            log.critical("data plane: NFQUEUE %d worker stopped by an error", self.queue_num,
                         exc_info=True)
            raise

    def _serve(self) -> None:
        assert self._queue is not None
        queue = self._queue
        queue_fd = queue.fileno()
        poller = select.poll()
        poller.register(queue_fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        log_fd = -1
        if self._log is not None:
            log_fd = self._log.fileno()
            poller.register(log_fd, select.POLLIN)
        clock = self._clock
        next_tick = clock() + self.tick_seconds
        while not self._stopping:
            wait_ms = max(0, int((next_tick - clock()) * 1000) + 1)
            for fd, _ in poller.poll(wait_ms):
                if fd == queue_fd:
                    self._read(queue)
                elif fd == log_fd:
                    assert self._log is not None
                    self._log.read(self._on_copy, BATCH)
            now = clock()
            if now >= next_tick:
                next_tick = now + self.tick_seconds
                self._tick(now)

    def _tick(self, now: float) -> None:
        self.collector.tick(now)
        try:
            self.engine.tick()
        except Exception as exc:  # noqa: BLE001 - the data plane must outlive a bug
            self.stats.tick_errors += 1
            self._log_once(exc, "engine tick")

    def _read(self, queue: PacketQueue) -> None:
        """At most BATCH waiting packets, then their verdicts in one datagram."""
        receive, on_packet = queue.receive, self._on_packet
        for _ in range(BATCH):
            packet = receive()
            if packet is None:
                break
            on_packet(queue, *packet)
        queue.flush()

    def _on_packet(self, queue: PacketQueue, packet_id: int, buf: Buffer,
                   mark: int, info: int) -> None:
        """The engine rewrites `buf` (the one copy out of the receive buffer, or a view
        of that buffer for a long packet) in place; it goes back only when changed, and
        a fast-path verdict adds a mark and nothing else.

        A packet whose sender left the checksum to the hardware (NFQUEUE's "not ready",
        every packet of a local stack, and whatever GRO merged) gets it finished first:
        the engine verifies SYNs and updates checksums incrementally, and a payload
        handed back is taken as final. Not a GSO super-packet: summing 64 KB in Python
        costs about 100 us, and the kernel recomputes the TCP checksum of a changed
        super-packet anyway when it cuts it into segments (docs/design.rst, "Data-plane
        service")."""
        if info & SKB_GSO:
            self.stats.gso += 1
        if len(buf) > self.stats.largest:
            self.stats.largest = len(buf)
        try:
            if info & SKB_CSUM_NOT_READY and not info & SKB_GSO:
                complete_checksum(buf)
            verdict = self.engine.handle(buf)
        except Exception as exc:  # noqa: BLE001 - see the module docstring
            self.stats.errors += 1
            self._log_once(exc, "packet handling")
            queue.drop(packet_id)
            return
        if verdict == ACCEPT_MODIFIED:
            total = buf[2] << 8 | buf[3] if buf[0] < 0x60 else 40 + (buf[4] << 8 | buf[5])
            if total == len(buf):
                queue.accept(packet_id, payload=buf)
            elif total > len(buf):
                self._oversize(queue, packet_id, total)
            else:   # a view the engine made shorter (packet.reset_reply)
                queue.accept(packet_id, payload=buf[:total])
        elif verdict == ACCEPT_UNCHANGED:
            queue.accept(packet_id)
        elif verdict == ACCEPT_MARK:
            # Only our bits of the mark: others may use the rest (ruleset.MARK_MASK).
            queue.accept(packet_id, mark=mark & ~MARK_MASK | self.engine.verdict_mark)
        else:
            queue.drop(packet_id)

    def _on_copy(self, buf: Buffer) -> None:
        """A fast-path packet's copy: state only, no verdict to give."""
        try:
            self.engine.handle(buf)
        except Exception as exc:  # noqa: BLE001 - see the module docstring
            self.stats.errors += 1
            self._log_once(exc, "packet handling")

    def _oversize(self, queue: PacketQueue, packet_id: int, length: int) -> None:
        """A packet longer than the copy range (65531 bytes: a netlink attribute's
        length is 16 bits) cannot be translated: handing back the copy would truncate
        it. Only a 65532-65535-byte packet or GRO merge can be one."""
        self.stats.oversize += 1
        queue.drop(packet_id)
        if self.stats.oversize == 1:
            log.error("data plane: dropping packets longer than the %d bytes NFQUEUE copies "
                      "(one of %d bytes); keep the MTU and gro_max_size of the director's "
                      "interfaces below that", COPY_RANGE, length)

    def _log_once(self, exc: Exception, what: str) -> None:
        if type(exc) not in self._logged:
            self._logged.add(type(exc))
            log.error("data plane: %s failed (further %s errors only counted)",
                      what, type(exc).__name__, exc_info=exc)
