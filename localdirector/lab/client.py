"""Bulk HTTP client and readiness probe that run *inside* a lab namespace.

One curl process per request costs milliseconds of fork/exec each; tests that open
hundreds of connections through the director instead start this module once with
``ip netns exec NS python -m localdirector.lab.client get ...`` and read one JSON
document back. Every request is its own TCP connection (HTTP/1.0 style, the server
closes), bound to the requested source address, because the source address is what
selects the Bind ID on the director.

``probe`` polls TCP targets until they answer: the lab builder uses it from the director
namespace to know the reals' servers are up, and from the client namespace to check
that every client subnet reaches the director and gets its answers back.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

READ_SIZE = 64 * 1024


def family(addr: str) -> socket.AddressFamily:
    """The socket family of an address's text (the lab's programs run on the stdlib
    alone, so they do not ask localdirector.model.addr)."""
    return socket.AF_INET6 if ipaddress.ip_address(addr).version == 6 else socket.AF_INET


def netloc(addr: str, port: int) -> str:
    """``203.0.113.1:9``, ``[2001:db8:1::1]:9``: an address before a port, as URLs and
    ``--target`` write it."""
    return f"[{addr}]:{port}" if family(addr) == socket.AF_INET6 else f"{addr}:{port}"


@dataclass
class Fetch:
    """Outcome of one GET; exactly the JSON record ``get`` prints per request."""

    index: int
    source: str | None
    status: int | None
    length: int
    body: str | None
    sha256: str | None
    error: str | None
    elapsed: float

    @property
    def ok(self) -> bool:
        """True when the request completed with HTTP 200 and a complete body."""
        return self.error is None and self.status == 200


def fetch(index: int, url: str, source: str | None, timeout: float, digest: bool,
          rate: float = 0.0) -> Fetch:
    """Perform one GET; failures become an ``error`` string, never an exception, so a
    batch reports every connection rather than stopping at the first reset. ``rate``:
    read the body at most this many bytes a second (0: as fast as it comes), so that a
    transfer is still running when a test breaks something under it."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 80
    request = (
        f"GET {parts.path or '/'} HTTP/1.0\r\nHost: {parts.netloc}\r\n"
        "User-Agent: localdirector-lab\r\n\r\n"
    ).encode()
    started = time.monotonic()
    result = Fetch(index, source, None, 0, None, None, None, 0.0)
    try:
        bind = (source, 0) if source else None
        with socket.create_connection((host, port), timeout, source_address=bind) as sock:
            sock.sendall(request)
            _read_response(sock, result, digest, rate)
    except OSError as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    result.elapsed = time.monotonic() - started
    return result


def _read_response(sock: socket.socket, result: Fetch, digest: bool, rate: float) -> None:
    """Read status, headers and the body up to EOF into ``result``, paced at ``rate``."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        data = sock.recv(READ_SIZE)
        if not data:
            result.error = "EOF before end of headers"
            return
        buffer += data
    head, rest = buffer.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    fields = lines[0].split(" ", 2)
    if len(fields) < 2 or not fields[1].isdigit():
        result.error = f"bad status line {lines[0]!r}"
        return
    result.status = int(fields[1])
    expected = None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length" and value.strip().isdigit():
            expected = int(value.strip())
    hasher = hashlib.sha256() if digest else None
    chunks: list[bytes] = []
    data = rest  # body bytes that arrived with the headers
    body_started = time.monotonic()
    size = min(READ_SIZE, max(1024, int(rate / 20))) if rate else READ_SIZE
    while True:
        result.length += len(data)
        if hasher is not None:
            hasher.update(data)
        else:
            chunks.append(data)
        if rate:
            ahead = body_started + result.length / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        data = sock.recv(size)
        if not data:
            break
    if hasher is not None:
        result.sha256 = hasher.hexdigest()
    else:
        result.body = b"".join(chunks).decode("utf-8", "replace")
    if expected is not None and expected != result.length:
        result.error = f"body length {result.length} != Content-Length {expected}"


def run_batch(
    url: str, sources: list[str], count: int, concurrency: int, timeout: float, digest: bool,
    rate: float = 0.0,
) -> list[Fetch]:
    """Request ``url`` ``count`` times; request i uses ``sources[i % len(sources)]``."""
    picks: list[str | None] = list(sources) if sources else [None]
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        futures = [
            pool.submit(fetch, i, url, picks[i % len(picks)], timeout, digest, rate)
            for i in range(count)
        ]
        return [future.result() for future in futures]


def probe_tcp(
    targets: list[tuple[str, int]], sources: list[str], deadline: float, refused_ok: bool
) -> list[str]:
    """Return the (source, target) pairs that did not succeed by the deadline.

    Success is an accepted connection, or with ``refused_ok`` also a RST: a refusal
    proves the SYN reached the target *and* the answer found its way back to the source,
    which is all a routing check needs (no server required). Failures are retried every
    10 ms because a server that is starting refuses for only a few milliseconds. Each
    source tries the targets of its own family.
    """
    pending = [(src, target) for src in (sources or [None]) for target in targets
               if src is None or family(src) == family(target[0])]
    stop = time.monotonic() + deadline
    last_error: dict[tuple[str | None, tuple[str, int]], str] = {}
    while pending and time.monotonic() < stop:
        still = []
        for src, target in pending:
            attempt_timeout = max(0.05, min(0.5, stop - time.monotonic()))
            bind = (src, 0) if src else None
            try:
                with socket.create_connection(target, attempt_timeout, source_address=bind):
                    pass
            except ConnectionRefusedError as exc:
                if not refused_ok:
                    last_error[(src, target)] = f"{type(exc).__name__}: {exc}"
                    still.append((src, target))
            except OSError as exc:
                last_error[(src, target)] = f"{type(exc).__name__}: {exc}"
                still.append((src, target))
        pending = still
        if pending:
            time.sleep(0.01)
    return [
        f"{src or 'any'} -> {addr}:{port}: {last_error.get((src, (addr, port)), 'not tried')}"
        for src, (addr, port) in pending
    ]


def _target(text: str) -> tuple[str, int]:
    """``ADDR:PORT`` or ``[ADDR6]:PORT``."""
    addr, _, port = text.rpartition(":")
    return addr.removeprefix("[").removesuffix("]"), int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    get = sub.add_parser("get", help="run GET requests and print JSON results")
    get.add_argument("--url", required=True)
    get.add_argument("--source", action="append", default=[], help="source address (repeat)")
    get.add_argument("--count", type=int, default=1)
    get.add_argument("--concurrency", type=int, default=1)
    get.add_argument("--timeout", type=float, default=5.0)
    get.add_argument("--digest", action="store_true", help="report sha256+length, not body")
    get.add_argument("--rate", type=float, default=0.0, metavar="BYTES_PER_S",
                     help="read each body at most this fast (default: unpaced)")
    probe = sub.add_parser("probe", help="wait until ADDR:PORT targets answer TCP")
    probe.add_argument("--target", action="append", type=_target, required=True)
    probe.add_argument("--source", action="append", default=[], help="source address (repeat)")
    probe.add_argument("--deadline", type=float, default=5.0)
    probe.add_argument("--refused-ok", action="store_true", help="a RST counts as reachable")
    args = parser.parse_args(argv)
    if args.command == "get":
        started = time.monotonic()
        results = run_batch(
            args.url, args.source, args.count, args.concurrency, args.timeout, args.digest,
            args.rate,
        )
        json.dump(
            {"elapsed": time.monotonic() - started, "results": [asdict(r) for r in results]},
            sys.stdout,
        )
        return 0
    missing = probe_tcp(args.target, args.source, args.deadline, args.refused_ok)
    for line in missing:
        print(line)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
