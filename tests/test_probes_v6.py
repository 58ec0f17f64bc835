"""Probes of IPv6 reals (issue 26 item 5): each probe type connects with the real's
family, against real listeners on 2001:db8:1::11, an address of the loopback of the
module's own namespace; and the runner, fed by the model, marks an IPv6 real up and
down (docs/design.rst, "Probes")."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from pathlib import Path

import pytest

from localdirector.appliance import Appliance
from localdirector.model.addr import parse_ip
from localdirector.model.probes import Probe
from localdirector.model.serverid import ServerId
from localdirector.probes import wire
from localdirector.probes.runner import ProbeRunner

from test_probes import shell
from test_probes_udp import WHO, answer

pytestmark = pytest.mark.usefixtures("private_loopback")

REAL = "2001:db8:1::11"
ADDR = parse_ip(REAL)


@pytest.fixture(scope="module", autouse=True)
def real_address(private_loopback: None) -> None:
    subprocess.run(["ip", "addr", "add", f"{REAL}/128", "dev", "lo", "nodad"], check=True,
                   timeout=10)


class _Udp(asyncio.DatagramProtocol):
    """Answers PING with PONG PING, anything else as a DNS query: `answer()`, its id."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        reply = (b"PONG " + data if data.startswith(b"PING")
                 else answer(int.from_bytes(data[:2], "big")))
        self.transport.sendto(reply, addr)   # type: ignore[attr-defined]


async def _probe_all() -> tuple[list[tuple[bool, str]], list[bytes]]:
    """Every type against listeners on [REAL]: HTTP on 8001 (which keeps the request
    head it got), UDP and DNS on 5353; then TCP and UDP to closed ports."""
    heads: list[bytes] = []

    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            heads.append(await reader.readuntil(b"\r\n\r\n"))
        except asyncio.IncompleteReadError:     # the tcp probe: connected, said nothing
            writer.close()
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    loop = asyncio.get_running_loop()
    server = await asyncio.start_server(http, REAL, 8001)
    udp, _ = await loop.create_datagram_endpoint(_Udp, local_addr=(REAL, 5353))
    try:
        results = [await asyncio.wait_for(wire.run(probe, ADDR, port), 3) for probe, port in (
            (Probe("t", "tcp"), 8001), (Probe("h", "http"), 8001),
            (Probe("u", "udp", send="PING", expect="PONG PING"), 5353), (WHO, 5353),
            (Probe("t", "tcp"), 8002), (Probe("u", "udp", send="PING"), 5354))]
    finally:
        server.close()
        udp.close()
    return results, heads


def test_each_probe_type_reaches_an_ipv6_real() -> None:
    results, heads = asyncio.run(_probe_all())
    assert results == [(True, "connected"), (True, "HTTP-200"), (True, "answered"),
                       (True, "NOERROR"), (False, "refused"), (False, "refused")]
    # The Host header names the real as a URL does: the IPv6 address in brackets.
    assert f"Host: [{REAL}]:8001\r\n".encode() in heads[0], heads
    assert wire.request(Probe("h", "http"), ADDR, 80).split(b"\r\n")[1] == (
        f"Host: [{REAL}]".encode())


def test_the_runner_marks_an_ipv6_real_up_then_down(tmp_path: Path) -> None:
    """The model's check carries the int address; the runner probes it as it is."""
    appliance = Appliance(tmp_path / "startup-config")
    director = appliance.director
    sid = ServerId(addr=ADDR, port=8003)
    with director.lock:
        director.add_real(sid)
        director.define_probe("web", "tcp", interval=1.0, timeout=0.5, failures=1)
        director.attach_probe(sid, "web")
    listener = socket.socket(socket.AF_INET6)
    listener.bind((REAL, 8003))
    listener.listen()
    runner = ProbeRunner(appliance).start()
    try:
        assert _state(appliance, sid, "UP") == "UP"
        listener.close()
        assert _state(appliance, sid, "DOWN") == "DOWN"
    finally:
        listener.close()
        runner.stop()


def _state(appliance: Appliance, sid: ServerId, state: str, timeout: float = 5) -> str:
    """The real's check state once it is `state`, or whatever it is at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        with appliance.director.lock:
            found = [c.state for c in appliance.director.checks.values()
                     if c.real_sid == sid]
        if found == [state] or time.monotonic() > deadline:
            return ",".join(found)
        time.sleep(0.05)


def test_a_configured_ipv6_virtual_probes_its_reals_by_http(tmp_path: Path) -> None:
    """The configuration's way: `probe` on an IPv6 virtual probes its bound real on the
    virtual's port; `show probe` lists it UP under its bracketed id."""
    appliance, out = shell(
        "virtual [2001:db8::10]:8005", "real [2001:db8:1::11]",
        "bind [2001:db8::10]:8005 [2001:db8:1::11]",
        "probeconfig web http interval 1 timeout 0.5", "probe [2001:db8::10]:8005 web")
    heads: list[bytes] = []

    async def serve() -> None:
        async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            heads.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            writer.close()
        async with await asyncio.start_server(http, REAL, 8005):
            sid = ServerId(addr=ADDR, port=0)
            while await asyncio.to_thread(_state, appliance, sid, "UP", 0.2) != "UP":
                pass

    runner = ProbeRunner(appliance).start()
    try:
        asyncio.run(asyncio.wait_for(serve(), 10))
    finally:
        runner.stop()
    session = appliance.open_session("t", "t", write=out.append, interactive=False)
    out.clear()
    session.execute("show probe")
    assert any(f"[{REAL}]" in line and "UP" in line for line in "".join(out).splitlines()), out
    assert f"Host: [{REAL}]:8005\r\n".encode() in heads[0], heads
