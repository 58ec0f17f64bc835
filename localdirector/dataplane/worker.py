"""The NFQUEUE worker: one thread that feeds every queued packet to the engine
(docs/design.rst, "Data-plane service").

It polls the queue's netlink socket, the fast path's NFLOG group of the same number
(nflog.py) and a wake-up pipe, and reads at most ``BATCH`` packets at a time, so the
engine's periodic ``tick()`` and a stop request never starve under load (a blocking
``NetfilterQueue.run()`` cannot be woken, and ``run(block=False)`` reads on while packets
keep arriving). An exception from the engine never leaves the callback, where the
library would leave the packet without a verdict, holding a queue slot forever: the
packet is dropped (TCP retransmits) and the error counted and logged once per type.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Protocol

from netfilterqueue import COPY_PACKET, NetfilterQueue, Packet

from .collector import FrozenCollector
from .engine import ACCEPT_MARK, ACCEPT_MODIFIED, ACCEPT_UNCHANGED
from .nflog import PacketLog
from .ruleset import MARK_MASK

log = logging.getLogger("localdirector")

# Kernel queue length: packets beyond it are dropped (counted in
# /proc/net/netfilter/nfnetlink_queue), so it must absorb a burst while the worker is
# busy with a tick or the GIL is elsewhere (the shell rendering `show conns`).
DEFAULT_MAX_LEN = 8192
# The library copies at most 4016 bytes of a packet: above the 1500-byte MTU of the lab
# and of Ethernet, and GSO super-packets are segmented by the kernel before queueing.
# A longer packet (jumbo MTU) cannot be translated: handing back the short copy would
# truncate it, so it is dropped and counted instead.
COPY_RANGE = 4016
# Netlink receive buffer for a full queue of MTU-sized packets plus per-message
# overhead; the kernel doubles the value it is given.
SOCKET_BYTES_PER_PACKET = 1200
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

    def handle(self, buf: bytearray) -> int: ...

    def tick(self) -> None: ...


class _BatchReader:
    """Stands in for the netlink socket in ``NetfilterQueue.run_socket``: a non-blocking
    recv that pretends the socket is empty once ``left`` messages were read."""

    __slots__ = ("_sock", "left", "enobufs")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.left = 0
        self.enobufs = 0

    def recv(self, size: int) -> bytes:
        if self.left <= 0:
            raise BlockingIOError(errno.EAGAIN, "batch done")
        self.left -= 1
        try:
            return self._sock.recv(size, socket.MSG_DONTWAIT)
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                # The kernel could not deliver some queued packets to us (receive
                # buffer full); they are lost, and the library just reads on.
                self.enobufs += 1
            raise

    def close(self) -> None:
        self._sock.close()


class WorkerStats:
    """Failures of the engine itself (its verdicts and drop reasons are counted by the
    engine); plain ints written by the worker thread only, read by anyone."""

    __slots__ = ("errors", "tick_errors", "oversize")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.errors = 0
        self.tick_errors = 0
        self.oversize = 0


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
        self._nfq: NetfilterQueue | None = None
        self._reader: _BatchReader | None = None
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = -1, -1
        self._stopping = False
        self._logged: set[type] = set()
        self.collector = FrozenCollector(clock())

    @property
    def enobufs(self) -> int:
        """Times the kernel told us it lost packets on the way to our socket."""
        return self._reader.enobufs if self._reader is not None else 0

    @property
    def log_overruns(self) -> int:
        """Times the kernel told us it lost NFLOG copies on the way to us."""
        return self._log.overruns if self._log is not None else 0

    def start(self) -> None:
        """Bind in the caller's thread so a bad queue number or missing privilege fails
        start-up with an exception instead of dying silently in the worker."""
        nfq = NetfilterQueue()
        try:
            nfq.bind(self.queue_num, self._on_packet, max_len=self.max_len,
                     mode=COPY_PACKET, range=COPY_RANGE,
                     sock_len=self.max_len * SOCKET_BYTES_PER_PACKET)
        except BaseException:
            nfq.unbind()
            raise
        try:
            self._log = PacketLog(self.queue_num) if self.fastpath else None
        except BaseException:
            nfq.unbind()
            raise
        self._nfq = nfq
        # A second handle on the same netlink socket; closing it leaves the library's fd.
        self._reader = _BatchReader(socket.fromfd(nfq.get_fd(), socket.AF_NETLINK,
                                                  socket.SOCK_RAW))
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
        assert self._nfq is not None and self._reader is not None
        self._nfq.unbind()
        self._reader.close()
        if self._log is not None:
            self._log.close()
            self._log = None
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._nfq = None

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
        assert self._nfq is not None and self._reader is not None
        nfq, reader = self._nfq, self._reader
        nfq_fd = nfq.get_fd()
        poller = select.poll()
        poller.register(nfq_fd, select.POLLIN)
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
                if fd == nfq_fd:
                    reader.left = BATCH
                    nfq.run_socket(reader)
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

    def _on_packet(self, pkt: Packet) -> None:
        """One copy into a bytearray the engine rewrites in place, one copy back out only
        when the engine changed it; a fast-path verdict adds a mark and nothing else."""
        try:
            buf = bytearray(pkt.get_payload())
            verdict = self.engine.handle(buf)
            if verdict == ACCEPT_MODIFIED:
                if (buf[2] << 8 | buf[3]) > len(buf):
                    self._oversize(pkt, len(buf))
                    return
                pkt.set_payload(bytes(buf))
                pkt.accept()
            elif verdict == ACCEPT_UNCHANGED:
                pkt.accept()
            elif verdict == ACCEPT_MARK:
                # Only our bits of the mark: others may use the rest (ruleset.MARK_MASK).
                pkt.set_mark(pkt.get_mark() & ~MARK_MASK | self.engine.verdict_mark)
                pkt.accept()
            else:
                pkt.drop()
        except Exception as exc:  # noqa: BLE001 - see the module docstring
            self.stats.errors += 1
            self._log_once(exc, "packet handling")
            try:
                pkt.drop()
            except RuntimeError:
                pass  # the verdict was already given before the failure

    def _on_copy(self, buf: bytearray) -> None:
        """A fast-path packet's copy: state only, no verdict to give."""
        try:
            self.engine.handle(buf)
        except Exception as exc:  # noqa: BLE001 - see the module docstring
            self.stats.errors += 1
            self._log_once(exc, "packet handling")

    def _oversize(self, pkt: Packet, copied: int) -> None:
        self.stats.oversize += 1
        pkt.drop()
        if self.stats.oversize == 1:
            log.error("data plane: dropping packets longer than the %d bytes NFQUEUE copies; "
                      "use an MTU of at most %d on the director's interfaces", copied, copied)

    def _log_once(self, exc: Exception, what: str) -> None:
        if type(exc) not in self._logged:
            self._logged.add(type(exc))
            log.error("data plane: %s failed (further %s errors only counted)",
                      what, type(exc).__name__, exc_info=exc)
