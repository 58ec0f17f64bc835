"""The appliance's log: `show syslog` reads it, and nothing that logs ever waits for it.

The data-plane worker logs (a real FAILED, back in service) while it holds the model
lock. Writing straight to a console nobody reads (a serial line, a full pipe) would then
stall every packet, so records go through a bounded queue to a listener thread that
keeps the last messages for `show syslog`, copies them to stderr and sends them to the
`logging host`s (remote.py). A full queue drops the record and counts it rather than
block."""

from __future__ import annotations

import atexit
import logging
import queue
import sys
import threading
from collections import deque
from logging.handlers import QueueHandler, QueueListener
from typing import TextIO

from . import remote

LOGGER = logging.getLogger("localdirector")
CAPACITY = 1000          # messages `show syslog` keeps
QUEUE_SIZE = 10000       # records in flight before new ones are dropped (and counted)
FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                           "%b %d %H:%M:%S")


class LogBuffer(logging.Handler):
    """The newest CAPACITY formatted messages, oldest first."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        super().__init__()
        self.setFormatter(FORMAT)
        self._lines: deque[str] = deque(maxlen=capacity)
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        self._lines.append(self.format(record))

    def lines(self) -> list[str]:
        return list(self._lines)


class _DroppingQueueHandler(QueueHandler):
    def __init__(self, records: queue.Queue, buffer: LogBuffer) -> None:
        super().__init__(records)
        self._buffer = buffer

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self._buffer.dropped += 1


class _Stderr(logging.StreamHandler):
    """Whatever sys.stderr is when a record is written, not when logging was set up
    (as logging's own last-resort handler does): stderr may be replaced meanwhile."""

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


BUFFER = LogBuffer()
_installed: QueueListener | None = None
_install_lock = threading.Lock()


def install(stream: TextIO | None = None) -> LogBuffer:
    """Route the appliance's loggers through the queue (once per process)."""
    global _installed
    with _install_lock:
        if _installed is None:
            records: queue.Queue = queue.Queue(QUEUE_SIZE)
            console = logging.StreamHandler(stream) if stream else _Stderr()
            console.setFormatter(logging.Formatter("%(message)s"))
            _installed = QueueListener(records, BUFFER, console, remote.HANDLER,
                                       respect_handler_level=True)
            _installed.start()
            atexit.register(_installed.stop)   # drains: last words before exit are kept
            LOGGER.addHandler(_DroppingQueueHandler(records, BUFFER))
            LOGGER.setLevel(logging.INFO)
    return BUFFER


def flush() -> None:
    """Wait until every record logged so far reached the buffer (tests, shutdown)."""
    with _install_lock:
        if _installed is not None:
            _installed.stop()   # drains the queue, then restart for later records
            _installed.start()
