"""One probe on the wire: a TCP connect, a minimal HTTP/1.1 request with
`Connection: close`, a UDP datagram and its answer, or a DNS query, to a real's own
address (never a VIP, so it never passes the translation). Returns (good, result):
`result` is one word for `show probe`'s table."""

from __future__ import annotations

import asyncio
import errno
import random

from localdirector.model.addr import bracketed, family_of, format_ip
from localdirector.model.probes import Probe

from . import datagram, dns

MAX_HEADER = 16 * 1024    # status line and headers; more is a bad response
MAX_BODY = 64 * 1024      # how far `expect` text is looked for
USER_AGENT = "localdirector-probe"

_ERRORS = {errno.ECONNREFUSED: "refused", errno.ECONNRESET: "reset",
           errno.EHOSTUNREACH: "unreachable", errno.ENETUNREACH: "unreachable",
           errno.ETIMEDOUT: "timeout"}


def request(probe: Probe, addr: int, port: int) -> bytes:
    """The Host header names the real as a URL would: an IPv6 address in brackets."""
    host = probe.host or (bracketed(addr) if port == 80 else f"{bracketed(addr)}:{port}")
    return (f"{probe.method} {probe.path} HTTP/1.1\r\nHost: {host}\r\n"
            f"User-Agent: {USER_AGENT}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
            ).encode("ascii")


async def run(probe: Probe, addr: int, port: int) -> tuple[bool, str]:
    """The caller bounds it with the probe's timeout (asyncio.wait_for). `addr` is the
    model's int of either family: the socket is of the real's family."""
    try:
        if probe.kind == "udp":
            answer = await datagram.exchange(addr, port, probe.payload)
            return (True, "answered") if probe.expected in answer else (False, "no-text")
        if probe.kind == "dns":
            ident, asked = random.getrandbits(16), dns.question(probe)
            answer = await datagram.exchange(addr, port, dns.query(probe, ident, asked))
            return dns.verdict(probe, ident, asked, answer)
        return await _stream(probe, addr, port)
    except OSError as err:
        return False, _ERRORS.get(err.errno or 0, "error")


async def _stream(probe: Probe, addr: int, port: int) -> tuple[bool, str]:
    """TCP and HTTP; `run` turns an OSError into its result."""
    reader, writer = await asyncio.open_connection(format_ip(addr), port, limit=MAX_HEADER,
                                                   family=family_of(addr).af)
    try:
        if probe.kind == "tcp":
            return True, "connected"
        writer.write(request(probe, addr, port))
        return await _response(probe, reader)
    finally:
        writer.close()


async def _response(probe: Probe, reader: asyncio.StreamReader) -> tuple[bool, str]:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return False, "closed"          # the connection ended before a whole header
    except asyncio.LimitOverrunError:
        return False, "bad-response"
    fields = head.split(b"\r\n", 1)[0].split(b" ", 2)
    if len(fields) < 2 or not fields[0].startswith(b"HTTP/") or not fields[1].isdigit():
        return False, "bad-response"
    code = int(fields[1])
    if not probe.status_ok(code):
        return False, f"HTTP-{code}"
    if probe.expect and not await _body_has(reader, probe.expect.encode()):
        return False, "no-text"
    return True, f"HTTP-{code}"


async def _body_has(reader: asyncio.StreamReader, text: bytes) -> bool:
    """Read the body (the server closes it: `Connection: close`) until `text` shows."""
    body = b""
    while len(body) < MAX_BODY:
        chunk = await reader.read(MAX_BODY - len(body))
        if not chunk:
            break
        body += chunk
        if text in body:
            return True
    return text in body
