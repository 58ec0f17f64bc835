"""The metrics endpoint's HTTP server: two threads, however many peers connect
(docs/design.rst, "Monitoring").

prometheus_client's own server starts a thread for every connection, so 1,000 idle
connections made 1,000 threads, each taking its share of the GIL from the data plane.
Here one event-loop thread holds every connection, and one builder thread renders the
exposition, so scrapes are built one at a time whoever asks. A connection must send a
whole request head (at most MAX_HEAD bytes) within IDLE_TIMEOUT of connecting or of its
last answer; at most MAX_CONNECTIONS are open at once, and a newcomer beyond them closes
the connection that has waited longest for its next request, so idle connections
cannot lock a scraper out (it is refused only while all of them are being answered).
A peer outside the `metrics` access list is closed before a byte is read or sent.
Every such closing is counted by reason (`closed`), and refusals are logged at most
once per source and interval (listeners.py)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from localdirector.listeners import REFUSALS

MAX_CONNECTIONS = 8       # open at once, idle or being answered
IDLE_TIMEOUT = 10.0       # seconds to send a request head, after connecting or an answer
SEND_TIMEOUT = 30.0       # seconds for the peer to take an answer
MAX_HEAD = 8192           # bytes of request line and headers
STOP_TIMEOUT = 5.0
PATHS = ("/metrics", "/")
REASONS = ("access-list", "full", "evicted", "idle")

# (Accept header) -> (body, content type), run in the builder thread.
Render = Callable[[str], tuple[bytes, str]]
# Peer address -> may it connect? (the access list, which logs its refusals).
Admit = Callable[[str], bool]


class _Peer:
    """One open connection: whether it waits for a request, and since when."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.idle = True
        self.since = time.monotonic()


def _response(status: str, body: bytes, content_type: str, close: bool,
              head_only: bool) -> bytes:
    headers = [f"HTTP/1.1 {status}", f"Content-Type: {content_type}",
               f"Content-Length: {len(body)}"]
    if close:
        headers.append("Connection: close")
    return ("\r\n".join(headers) + "\r\n\r\n").encode("latin-1") + (b"" if head_only
                                                                    else body)


def _request(head: bytes) -> tuple[str, str, bool, str]:
    """(method, path, close after answering, Accept header) of a request head."""
    lines = head.decode("latin-1").split("\r\n")
    method, _, rest = lines[0].partition(" ")
    target, _, version = rest.partition(" ")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    connection = headers.get("connection", "").lower()
    close = connection == "close" or (version != "HTTP/1.1" and connection != "keep-alive")
    return method, target.partition("?")[0], close, headers.get("accept", "")


class ScrapeServer:
    """Listens on (host, port) once `start`ed; `stop()` closes every connection."""

    def __init__(self, render: Render, admit: Admit, limit: int = MAX_CONNECTIONS,
                 idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.render = render
        self.admit = admit
        self.limit = limit
        self.idle_timeout = idle_timeout
        self.closed = dict.fromkeys(REASONS, 0)   # connections closed early, by reason
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="metrics",
                                       daemon=True)
        self.builder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metrics-build")
        self.peers: dict[asyncio.StreamWriter, _Peer] = {}
        self.server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    def start(self, host: str, port: int) -> None:
        """Listen, or raise OSError (its strerror the plain reason) and leave no thread."""
        self.thread.start()
        listen = asyncio.start_server(self._serve, host, port, limit=MAX_HEAD)
        try:
            self.server = asyncio.run_coroutine_threadsafe(listen, self.loop).result()
        except OSError as err:   # asyncio's text repeats the address: keep the reason
            self._end_loop()
            reason = os.strerror(err.errno) if err.errno else str(err)
            raise OSError(err.errno, reason) from err

    def stop(self) -> None:
        if self.server is not None:
            asyncio.run_coroutine_threadsafe(self._close(), self.loop).result(STOP_TIMEOUT)
        self._end_loop()

    def _end_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(STOP_TIMEOUT)
        self.builder.shutdown(wait=True)
        self.loop.close()

    async def _close(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.peers):
            writer.transport.abort()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        if others:
            await asyncio.wait(others, timeout=STOP_TIMEOUT)
        await self.server.wait_closed()

    def _make_room(self, host: str) -> bool:
        """Below the limit, or once the longest-idle connection is closed; False (logged)
        when every open connection is being answered."""
        if len(self.peers) < self.limit:
            return True
        waiting = [peer for peer in self.peers.values() if peer.idle]
        if not waiting:
            self.closed["full"] += 1
            REFUSALS.warning("full metrics", "metrics connection from %s refused: %d "
                             "connections being answered", host, len(self.peers))
            return False
        oldest = min(waiting, key=lambda peer: peer.since)
        self.closed["evicted"] += 1
        oldest.writer.transport.abort()
        del self.peers[oldest.writer]
        return True

    async def _serve(self, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        host = (writer.get_extra_info("peername") or ("",))[0]
        if not self.admit(host):
            self.closed["access-list"] += 1
            writer.transport.abort()
            return
        if not self._make_room(host):
            writer.transport.abort()
            return
        peer = self.peers[writer] = _Peer(writer)
        try:
            await self._answer(peer, reader)
        except asyncio.TimeoutError:   # no request in time, or an answer not taken
            self.closed["idle"] += 1
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass   # the peer left, or sent no request we would read
        finally:
            self.peers.pop(writer, None)
            writer.close()

    async def _answer(self, peer: _Peer, reader: asyncio.StreamReader) -> None:
        """Requests one after another on the connection (keep-alive), until it closes."""
        close = False
        while not close:
            peer.idle, peer.since = True, time.monotonic()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.idle_timeout)
            peer.idle = False
            method, path, close, accept = _request(head)
            if method not in ("GET", "HEAD"):
                answer = _response("405 Method Not Allowed", b"", "text/plain", True, False)
                close = True
            elif path not in PATHS:
                answer = _response("404 Not Found", b"", "text/plain", close, False)
            else:
                body, content_type = await asyncio.get_running_loop().run_in_executor(
                    self.builder, self.render, accept)
                answer = _response("200 OK", body, content_type, close, method == "HEAD")
            peer.writer.write(answer)
            await asyncio.wait_for(peer.writer.drain(), SEND_TIMEOUT)
