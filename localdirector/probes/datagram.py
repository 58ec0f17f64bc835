"""One UDP exchange for the udp and dns probes: a connected socket sends one datagram
and waits for the first one back (docs/design.rst, "Probes").

Connected, so the kernel hands an ICMP port unreachable to this socket as
ECONNREFUSED (`error_received`): a real with nothing on the port fails at once, as a
refused TCP connect does, instead of after the timeout. The caller bounds the wait
(the runner's `asyncio.wait_for`); the socket is closed on every way out."""

from __future__ import annotations

import asyncio

from localdirector.model.addr import family_of, format_ip


class _Exchange(asyncio.DatagramProtocol):
    def __init__(self, answer: asyncio.Future[bytes]) -> None:
        self.answer = answer

    def datagram_received(self, data: bytes, addr: object) -> None:
        if not self.answer.done():
            self.answer.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc or ConnectionAbortedError())


async def exchange(addr: int, port: int, payload: bytes) -> bytes:
    """The first datagram the real sends back; OSError (ECONNREFUSED, ...) when the
    kernel reports an error for the socket first. `addr` is the model's int: the
    socket is of its family."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[bytes] = loop.create_future()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _Exchange(answer), remote_addr=(format_ip(addr), port),
        family=family_of(addr).af)
    try:
        transport.sendto(payload)
        return await answer
    finally:
        transport.close()
