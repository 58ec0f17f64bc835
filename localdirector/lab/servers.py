"""HTTP test server that runs inside a lab real-server namespace.

Started by the lab builder as ``ip netns exec NS python -m localdirector.lab.servers
--bind ADDR [--bind ADDR6] --port PORT``; one process per real and port, listening on
each address given (the real's IPv4 address and its IPv6 twin: one socket per family,
so each answers with its own name and ``/peer`` shows the client's address as its
family writes it), so a test can kill exactly one real's listener (the kernel then
answers SYNs with RST) and restart it.

Endpoints (HTTP/1.1 parsing so ``Expect: 100-continue`` uploads do not stall, but every
response closes the connection, so each request is one TCP connection through the
director):

- ``GET /``               -> ``NAME\\n``; the default name ``real-ADDR:PORT`` (IPv6:
                             ``real-[ADDR]:PORT``) tells a test which real *and* which
                             port answered (port translation), over which family.
- ``GET /peer``           -> ``ADDR\\n``, the client address this server saw; proves
                             the director kept the client's source address.
- ``GET /bytes/N``        -> N bytes of :func:`pattern_chunks`, for end-to-end hashes.
- ``POST /sha256``        -> sha256 hex of the request body, for upload integrity.
- ``GET /hold/SECONDS``   -> headers at once, body ``held\\n`` after SECONDS; keeps a
                             connection open on purpose (leastconns tests).
- ``GET /health``         -> ``health CODE\\n`` with status CODE, 200 until set: what a
                             health probe reads (probe tests).
- ``GET /health/set/CODE`` -> sets that status (100-599) for later ``/health`` requests
                             of this listener; answers 200.

``--mute`` starts a listener that accepts connections and never reads or answers: a
real whose TCP stack is up while its service hangs.
"""

from __future__ import annotations

import argparse
import hashlib
import queue
import random
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from localdirector.lab.client import family, netloc

PATTERN_SEED = 0x1D6324177
CHUNK = 64 * 1024
MAX_BYTES = 1 << 30
MAX_HOLD_SECONDS = 3600.0


def pattern_chunks(n: int) -> Iterator[bytes]:
    """Yield the deterministic pseudo-random stream served by ``/bytes/N``.

    Pseudo-random rather than a repeating pattern so that a misplaced or duplicated
    segment changes the hash; chunked so 10 MB never sits in memory twice. Tests call
    :func:`pattern_digest` to know the expected hash without a server.
    """
    rng = random.Random(PATTERN_SEED)
    remaining = n
    while remaining > 0:
        size = min(CHUNK, remaining)
        yield rng.randbytes(size)
        remaining -= size


def pattern_digest(n: int) -> str:
    """sha256 hex of the first ``n`` bytes of the ``/bytes`` stream."""
    digest = hashlib.sha256()
    for chunk in pattern_chunks(n):
        digest.update(chunk)
    return digest.hexdigest()


class LabServer(ThreadingHTTPServer):
    """Threaded server sized for hundreds of concurrent lab connections.

    Requests go to a pool of daemon threads that grows to the peak concurrency and is
    reused, not to a new thread each: starting a thread per request held the server to
    about 200 short requests a second, so 200 reals probed every second kept its backlog
    full, and after any stall it answered only connections their clients had already
    given up on."""

    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], name: str) -> None:
        # An instance attribute, read by TCPServer as it makes the socket.
        self.address_family = family(address[0])
        super().__init__(address, LabHandler)
        self.name = name
        self.health = 200
        self._requests: queue.SimpleQueue[tuple[socket.socket, object]] = queue.SimpleQueue()
        self._idle = 0
        self._idle_lock = threading.Lock()

    def process_request(self, request: socket.socket, client_address: object) -> None:
        """An idle worker takes the request, or a new one when none is idle; either way
        exactly one worker is promised to each request put in the queue."""
        with self._idle_lock:
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1
        self._requests.put((request, client_address))
        if spawn:
            threading.Thread(target=self._work, daemon=True).start()

    def _work(self) -> None:
        while True:
            request, client_address = self._requests.get()
            self.process_request_thread(request, client_address)
            with self._idle_lock:
                self._idle += 1

    def server_bind(self) -> None:
        """Bind without HTTPServer's ``getfqdn`` reverse lookup: inside a lab namespace
        that DNS query would leave toward a non-lab address and stall for seconds."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request: object, client_address: object) -> None:
        """Stay silent: tests reset and drop connections on purpose, and a traceback per
        reset would only fill the log."""
        exc = sys.exc_info()[1]
        if not isinstance(exc, (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class LabHandler(BaseHTTPRequestHandler):
    """Routes the lab endpoints; see the module docstring."""

    protocol_version = "HTTP/1.1"
    server: LabServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """No access log: it would cost time per request and nobody reads it."""

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/":
            self._reply(f"{self.server.name}\n".encode())
        elif path == "/peer":
            self._reply(f"{self.client_address[0]}\n".encode())
        elif path.startswith("/bytes/"):
            self._send_bytes(path.removeprefix("/bytes/"))
        elif path.startswith("/hold/"):
            self._hold(path.removeprefix("/hold/"))
        elif path == "/health":
            self._reply(f"health {self.server.health}\n".encode(), status=self.server.health)
        elif path.startswith("/health/set/"):
            self._set_health(path.removeprefix("/health/set/"))
        else:
            self._reply(b"not found\n", status=404)

    def do_POST(self) -> None:
        if self.path != "/sha256":
            self._reply(b"not found\n", status=404)
            return
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self._reply(b"Content-Length required\n", status=411)
            return
        digest = hashlib.sha256()
        remaining = int(length)
        while remaining > 0:
            data = self.rfile.read(min(CHUNK, remaining))
            if not data:
                return  # client went away mid-upload; nothing useful to answer
            digest.update(data)
            remaining -= len(data)
        self._reply(f"{digest.hexdigest()}\n".encode())

    def _send_bytes(self, arg: str) -> None:
        if not arg.isdigit() or int(arg) > MAX_BYTES:
            self._reply(b"bad length\n", status=400)
            return
        n = int(arg)
        self._headers(200, n, "application/octet-stream")
        for chunk in pattern_chunks(n):
            self.wfile.write(chunk)

    def _hold(self, arg: str) -> None:
        try:
            seconds = float(arg)
        except ValueError:
            seconds = -1.0
        if not 0.0 <= seconds <= MAX_HOLD_SECONDS:
            self._reply(b"bad duration\n", status=400)
            return
        body = b"held\n"
        self._headers(200, len(body), "text/plain")
        self.wfile.flush()
        time.sleep(seconds)
        self.wfile.write(body)

    def _set_health(self, arg: str) -> None:
        if not arg.isdigit() or not 100 <= int(arg) <= 599:
            self._reply(b"bad status\n", status=400)
            return
        self.server.health = int(arg)
        self._reply(f"health {arg}\n".encode())

    def _reply(self, body: bytes, status: int = 200) -> None:
        self._headers(status, len(body), "text/plain")
        self.wfile.write(body)

    def _headers(self, status: int, length: int, ctype: str) -> None:
        self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(length))
        self.send_header("Connection", "close")
        self.end_headers()


def default_name(addr: str, port: int) -> str:
    """``real-203.0.113.14:80``, ``real-[2001:db8:1::14]:80``."""
    return f"real-{netloc(addr, port)}"


def mute(addr: str, port: int) -> None:
    """Accept and keep every connection, reading nothing, until killed."""
    held = []
    with socket.create_server((addr, port), family=family(addr), backlog=1024) as listener:
        try:
            while True:
                held.append(listener.accept()[0])
        except KeyboardInterrupt:
            pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", required=True, action="append",
                        help="address to listen on, IPv4 or IPv6 (repeat: one each)")
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--name", help="body of GET / (default real-ADDR:PORT)")
    parser.add_argument("--mute", action="store_true",
                        help="accept connections, never read or answer them")
    args = parser.parse_args(argv)
    if args.mute:
        for addr in args.bind[1:]:
            threading.Thread(target=mute, args=(addr, args.port), daemon=True).start()
        mute(args.bind[0], args.port)
        return
    servers = [LabServer((addr, args.port), args.name or default_name(addr, args.port))
               for addr in args.bind]
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, args=(0.5,), daemon=True).start()
    try:
        servers[0].serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
