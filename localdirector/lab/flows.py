"""Which real answers each of a fixed set of flows (``python -m localdirector.lab.flows``,
inside the client namespace): flow i comes from source ``i % len(sources)`` and client
port ``first + i``, so a test can send the very same 5-tuples again through another
director, another process or another table, and compare flow by flow. Each connection
asks for ``/``, reads the real's name from the answer and closes with a RST, leaving no
TIME_WAIT on either side to stall the same tuple the next round. Prints one JSON object,
``"SOURCE:PORT" -> real name`` (or the error's name)."""

from __future__ import annotations

import argparse
import json
import socket
import struct
from collections.abc import Sequence
from typing import Any

from localdirector.lab.client import family


def answered_by(lab: Any, vip: str, sources: Sequence[str], count: int,
                first: int = 20000) -> dict[str, str]:
    """Run the flows from `lab`'s client namespace: flow -> the real that answered."""
    from . import python_module   # the lab package: only the driving side needs it
    proc = lab.run_in(lab.client_ns, [
        *python_module("flows"), "--vip", vip, "--count", str(count), "--first", str(first),
        *(a for s in sources for a in ("--source", s))])
    if proc.returncode != 0:
        raise RuntimeError(f"flows failed: {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def one(vip: str, source: str, port: int, timeout: float) -> str:
    with socket.socket(family(source)) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.settimeout(timeout)
        s.bind((source, port))
        try:
            s.connect((vip, 80))
            s.sendall(b"GET / HTTP/1.0\r\nHost: flows\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data or not data.split(b"\r\n\r\n", 1)[1].strip():
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except OSError as exc:
            return f"{type(exc).__name__} {exc.strerror or exc}"
        return data.partition(b"\r\n\r\n")[2].decode(errors="replace").strip()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vip", required=True)
    parser.add_argument("--source", action="append", required=True)
    parser.add_argument("--count", type=int, default=60)
    parser.add_argument("--first", type=int, default=20000)
    parser.add_argument("--timeout", type=float, default=5)
    args = parser.parse_args(argv)
    out = {}
    for i in range(args.count):
        source, port = args.source[i % len(args.source)], args.first + i
        out[f"{source}:{port}"] = one(args.vip, source, port, args.timeout)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
