"""Remote syslog: the log's records as RFC 5424 messages to each `logging host`
(docs/design.rst, "Monitoring").

The handler runs in the log's listener thread (syslog/__init__.py), never in a thread
that logs, and nothing here waits on the network: UDP leaves through a non-blocking
socket per host, and each TCP host has a thread of its own behind a bounded backlog, so
a collector that is slow, refuses or is gone stalls neither packets nor the shell. A
host that stops taking messages is logged once (then at most every REPORT_INTERVAL
seconds) and `show logging` tells why."""

from __future__ import annotations

import logging
import math
import os
import queue
import select
import socket
import threading
import time
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import NamedTuple

FACILITY = 23             # local7, IOS's default facility
APP_NAME = "localdirector"
UDP_MAX = 2048            # bytes of a datagram: the size RFC 5424 says receivers SHOULD take
TCP_BACKLOG = 1000        # messages waiting for a TCP host; beyond it they are failed
CONNECT_TIMEOUT = 3.0     # seconds for a TCP connect or a stuck send
RETRY_FIRST, RETRY_MOST = 1.0, 30.0   # seconds between TCP reconnects, doubling
REPORT_INTERVAL = 60.0    # seconds between two "unreachable" messages about one host

log = logging.getLogger("localdirector")


class Target(NamedTuple):
    """Where messages go, as the model's `logging host` line says."""

    host: str
    transport: str   # "udp" or "tcp"
    port: int

    def __str__(self) -> str:
        return f"{self.host} {self.transport}/{self.port}"


class Report(NamedTuple):
    """One host's figures for `show logging`."""

    target: Target
    sent: int
    failed: int
    waiting: int      # TCP: messages in the backlog
    error: str        # why messages do not go out now; "" when they do


def severity(levelno: int) -> int:
    """A Python log level as a syslog severity (0 emergencies ... 7 debugging)."""
    for floor, value in ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
                         (logging.INFO + 5, 5), (logging.INFO, 6)):
        if levelno >= floor:
            return value
    return 7


def rfc5424(record: logging.LogRecord, hostname: str, facility: int = FACILITY) -> bytes:
    """`<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG`, no MSGID, no data."""
    stamp = datetime.fromtimestamp(record.created, timezone.utc).isoformat(
        timespec="microseconds")
    pri = facility * 8 + severity(record.levelno)
    text = f"<{pri}>1 {stamp} {hostname} {APP_NAME} {os.getpid()} - - {record.getMessage()}"
    return text.encode("utf-8", "replace")


def octet_counted(message: bytes) -> bytes:
    """RFC 6587 framing for TCP: the length, a space, the message."""
    return b"%d %s" % (len(message), message)


class Destination:
    """One host's counters and health, kept by its sender, read by `show logging`."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.sent = 0
        self.failed = 0
        self.error = ""
        self._reported_at = -math.inf
        self._announced = False   # its failure was logged: log its recovery too

    def delivered(self) -> None:
        self.sent += 1
        if self.error:
            self.error = ""
            if self._announced:
                self._announced = False
                log.warning("logging host %s: messages go out again", self.target)

    def failing(self, why: str, lost: int = 1) -> None:
        """`lost` messages did not go out (0: they wait to be sent again)."""
        self.failed += lost
        if self.error:
            return
        self.error = why
        now = time.monotonic()
        if now - self._reported_at >= REPORT_INTERVAL:
            self._reported_at = now
            self._announced = True
            log.warning("logging host %s unreachable: %s", self.target, why)


class _Udp:
    """A connected non-blocking socket: sending never waits, and the kernel reports a
    host's ICMP port-unreachable on the next send."""

    def __init__(self, destination: Destination) -> None:
        self.destination = destination
        target = destination.target
        # The host is the model's numeric text of either family: AI_NUMERICHOST says
        # which family and socket address it is, without asking a resolver.
        family, _, _, _, self.sockaddr = socket.getaddrinfo(
            target.host, target.port, type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICHOST)[0]
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.connected = False

    def send(self, message: bytes) -> None:
        try:
            if not self.connected:
                self.sock.connect(self.sockaddr)
                self.connected = True
            self.sock.send(message[:UDP_MAX])
        except OSError as err:
            self.destination.failing(err.strerror or str(err))
        else:
            self.destination.delivered()

    def waiting(self) -> int:
        return 0

    def close(self) -> None:
        self.sock.close()


class _Tcp:
    """A thread per host, so connecting and sending may take their time: messages wait
    in a bounded backlog, and one that could not be sent is sent again once the host
    is back (RETRY_FIRST, doubling to RETRY_MOST seconds between attempts)."""

    def __init__(self, destination: Destination) -> None:
        self.destination = destination
        self.backlog: queue.Queue[bytes | None] = queue.Queue(TCP_BACKLOG)
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"syslog-{destination.target}",
                                       daemon=True)
        self.thread.start()

    def send(self, message: bytes) -> None:
        try:
            self.backlog.put_nowait(octet_counted(message))
        except queue.Full:
            self.destination.failing(f"{TCP_BACKLOG} messages waiting")

    def waiting(self) -> int:
        return self.backlog.qsize()

    def close(self) -> None:
        self.closed.set()
        try:
            self.backlog.put_nowait(None)   # wakes the thread; a full backlog is not waited on
        except queue.Full:
            pass

    def _run(self) -> None:
        sock: socket.socket | None = None
        delay = RETRY_FIRST
        while (frame := self.backlog.get()) is not None and not self.closed.is_set():
            while not self.closed.is_set():
                try:
                    if sock is not None and not _open(sock):
                        sock.close()
                        sock = None
                    if sock is None:
                        target = self.destination.target
                        sock = socket.create_connection((target.host, target.port),
                                                        timeout=CONNECT_TIMEOUT)
                    sock.sendall(frame)
                except OSError as err:
                    if sock is not None:
                        sock.close()
                        sock = None
                    self.destination.failing(err.strerror or str(err) or type(err).__name__,
                                             lost=0)
                    self.closed.wait(delay)
                    delay = min(delay * 2, RETRY_MOST)
                else:
                    self.destination.delivered()
                    delay = RETRY_FIRST
                    break
        if sock is not None:
            sock.close()


def _open(sock: socket.socket) -> bool:
    """False once the collector closed the connection (readable, and at its end): the
    next message then goes over a new connection instead of into a dead one."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return True
    try:
        return sock.recv(4096, socket.MSG_DONTWAIT) != b""
    except OSError:
        return False


class RemoteHandler(logging.Handler):
    """The log's handler that sends to every configured host, above the trap level."""

    def __init__(self) -> None:
        super().__init__()
        self._config_lock = threading.Lock()
        self._senders: dict[Target, _Udp | _Tcp] = {}
        self._hostname = APP_NAME
        self._trap = 6
        self._facility = FACILITY

    def configure(self, hostname: str, trap: int, targets: Iterable[Target],
                  facility: int = FACILITY) -> None:
        """Send to `targets` from now on, as `hostname`, severities 0..`trap`, with
        `facility`; a host that stays keeps its counters and its connection."""
        wanted = list(dict.fromkeys(targets))
        with self._config_lock:
            self._hostname, self._trap, self._facility = hostname, trap, facility
            for target in [t for t in self._senders if t not in wanted]:
                self._senders.pop(target).close()
            self._senders = {t: self._senders.get(t) or _sender(t) for t in wanted}

    def emit(self, record: logging.LogRecord) -> None:
        with self._config_lock:
            senders = list(self._senders.values())
            hostname, trap, facility = self._hostname, self._trap, self._facility
        if not senders or severity(record.levelno) > trap:
            return
        message = rfc5424(record, hostname, facility)
        for sender in senders:
            sender.send(message)

    def reports(self) -> dict[Target, Report]:
        with self._config_lock:
            senders = dict(self._senders)
        return {t: Report(t, s.destination.sent, s.destination.failed, s.waiting(),
                          s.destination.error) for t, s in senders.items()}


def _sender(target: Target) -> _Udp | _Tcp:
    return (_Tcp if target.transport == "tcp" else _Udp)(Destination(target))


HANDLER = RemoteHandler()
