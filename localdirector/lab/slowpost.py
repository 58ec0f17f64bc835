"""Long-lived client connections driven from a test or a benchmark (``python -m
localdirector.lab.slowpost``, inside the client namespace): `count` POSTs to /sha256, each
sending its body in `parts` pieces, one piece per line the test writes to stdin, so the
client's data crosses the directors after every event the test makes between the lines
(drain, kill). Prints a JSON line per step, the last one how many answered with the
right digest, and the errors."""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any


def broken_across(lab: Any, vip: str, count: int, sources: Sequence[str],
                  event: Callable[[], None], timeout: float = 120) -> int:
    """Open `count` two-part uploads from `lab`'s client namespace, send their first
    parts, run `event` (a drain, a crash), send the rest: how many did not complete
    with the right digest."""
    from . import python_module   # the lab package: only the driving side needs it
    proc = lab.popen_in(lab.client_ns, [
        *python_module("slowpost"), "--vip", vip, "--count", str(count), "--parts", "2",
        *(a for s in sources for a in ("--source", s))],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdout.readline()                      # connected
    for step in (event, lambda: None):
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.stdout.readline()                  # a part sent on every connection
        step()
    result = json.loads(proc.stdout.readline())
    proc.wait(timeout)
    return count - result["good"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vip", required=True)
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--source", action="append", required=True)
    parser.add_argument("--count", type=int, default=60)
    parser.add_argument("--parts", type=int, default=3)
    parser.add_argument("--size", type=int, default=3000)
    args = parser.parse_args()
    conns = []
    for i in range(args.count):
        s = socket.socket()
        s.settimeout(30)
        s.bind((args.source[i % len(args.source)], 0))
        s.connect((args.vip, args.port))
        body = bytes((i + j) % 251 for j in range(args.size))
        s.sendall(f"POST /sha256 HTTP/1.1\r\nHost: {args.vip}\r\nContent-Length: "
                  f"{len(body)}\r\nContent-Type: application/octet-stream\r\n\r\n".encode())
        conns.append((s, body))
    print(json.dumps({"open": len(conns)}), flush=True)
    piece = args.size // args.parts
    errors: list[str] = []
    for part in range(args.parts):
        sys.stdin.readline()
        end = args.size if part == args.parts - 1 else (part + 1) * piece
        for s, body in conns:
            try:
                s.sendall(body[part * piece:end])
            except OSError as exc:
                errors.append(f"send: {exc}")
        print(json.dumps({"sent": part + 1}), flush=True)
    good = 0
    for s, body in conns:
        try:
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            if hashlib.sha256(body).hexdigest().encode() in data:
                good += 1
            else:
                errors.append(f"answer: {data[-80:]!r}")
        except OSError as exc:
            errors.append(f"recv: {exc}")
    print(json.dumps({"good": good, "errors": errors[:10]}), flush=True)


if __name__ == "__main__":
    main()
