"""`static REAL VIP` through the real data path (issue 27 item 4): the appliance boots
with `localdirector --config`, a server runs on a client-side address, and a real opens
a TCP connection and sends a UDP datagram to it. The server answers each with the source
address it saw: the VIP for a real with a `static` line, the real's own address for one
without (and after `no static`), on the userspace path, the fast path and the kernel-decided path, while the
virtual's own clients are served as before."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from appliance_driver import PREFERRED, R12, R13, VIP, appliance, bodies, name

from localdirector.lab import Lab

pytestmark = pytest.mark.netns
__all__ = ["appliance"]

PORT = 9000
# On a client-side address: answers a TCP connection, then a datagram, with its peer's
# address, forever (the lab kills it).
SERVER = """
import selectors, socket, sys
addr, port = sys.argv[1], int(sys.argv[2])
tcp = socket.create_server((addr, port))
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind((addr, port))
sel = selectors.DefaultSelector()
sel.register(tcp, selectors.EVENT_READ)
sel.register(udp, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        if key.fileobj is tcp:
            conn, peer = tcp.accept()
            conn.sendall(peer[0].encode())
            conn.close()
        else:
            _, peer = udp.recvfrom(2048)
            udp.sendto(peer[0].encode(), peer)
"""
# From a real: what the server saw, over TCP and over UDP.
ASK = """
import socket, sys
addr, port = sys.argv[1], int(sys.argv[2])
with socket.create_connection((addr, port), timeout=3) as conn:
    tcp = conn.recv(64).decode()
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.settimeout(3)
udp.sendto(b"who", (addr, port))
print(tcp, udp.recvfrom(64)[0].decode())
"""


@pytest.fixture
def server(lab: Lab) -> Iterator[str]:
    """The server's address, on the client side; the client side routes the reals'
    network back through the director, so a real without `static` gets its answer."""
    addr = lab.client_addresses[PREFERRED][0]
    gateway = lab.director_client_side[PREFERRED]
    lab.run_in(lab.client_ns, ["ip", "route", "replace", "203.0.113.0/24", "via", gateway])
    proc = lab.popen_in(lab.client_ns, [sys.executable, "-c", SERVER, addr, str(PORT)],
                        stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    yield addr
    proc.kill()
    proc.wait()


def seen_from(lab: Lab, real: str, server: str) -> list[str]:
    """[TCP, UDP]: the source addresses the server saw from `real`."""
    proc = lab.run_in(lab.real_ns[real], [sys.executable, "-c", ASK, server, str(PORT)], timeout=10)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


PATHS = {"userspace": [], "fastpath": [f"fastpath {VIP}:80"],
         "kernel": [f"predictor {VIP}:80 roundrobin", f"fastpath {VIP}:80 kernel"]}


@pytest.mark.parametrize("path", sorted(PATHS))
def test_a_real_with_static_opens_connections_as_the_vip(lab: Lab, appliance, server: str,
                                                         path: str) -> None:
    console = appliance([f"real {R12}:80", f"real {R13}:80", f"virtual {VIP}:80",
                         f"bind {VIP}:80 {R12}:80 {R13}:80", *PATHS[path], f"static {VIP} {R12}"])
    assert f"static {R12} {VIP}" in console.run("show running-config").splitlines()
    assert console.rows("static")[R12] == [R12, VIP, "active"]
    assert seen_from(lab, R12, server) == [VIP, VIP]
    assert seen_from(lab, R13, server) == [R13, R13]           # no static: its own
    # The virtual's clients are served as before (the reals' replies are not touched).
    got = bodies(lab.get_many(f"http://{VIP}/", lab.all_client_addresses[:4]))
    assert set(got) == {name(R12), name(R13)}
    console.configure(f"no static {R12} {VIP}")
    deadline = time.monotonic() + 5
    while (seen := seen_from(lab, R12, server)) != [R12, R12] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert seen == [R12, R12]
    assert "No static entries." in console.run("show static")
