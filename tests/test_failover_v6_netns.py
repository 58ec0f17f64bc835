"""An IPv6 failover virtual moves with the active unit (docs/design.rst, "Failover"):
the pair of tests/failover_site.py with its client segment dual-stack, each unit started
the documented way (`localdirector --config FILE --failover-link fo0`, no data plane),
real keepalived over the IPv4 failover link. The active dies as a box does; the standby
takes the IPv6 virtual beside the IPv4 one (and the reals' segment's, which has IPv6
virtuals only) and tells the segment by an unsolicited neighbour advertisement, so a
client's neighbour entry follows before it sends anything.
The control plane: the IPv6 data plane's own tests carry traffic through a VIP."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.appliance_driver import QUEUE
from tests.failover_site import (CLIENT6, GATEWAY, GATEWAY6, REAL6, REAL_GATEWAY6, Site,
                                 built, until)

pytestmark = pytest.mark.netns


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    yield from built(tmp_path, "cable", ipv6=True)


def mac(site: Site, unit: str) -> str:
    out = subprocess.run(["ip", "-n", site.ns[unit], "-o", "link", "show", "dev", "cli0"],
                         capture_output=True, text=True, check=True).stdout
    return out.split("link/ether ")[1].split()[0]


def client_neighbor(site: Site) -> str:
    """The client's link-layer address for the IPv6 gateway ("" while it has none)."""
    out = subprocess.run(["ip", "-n", site.client, "-6", "neigh", "show", GATEWAY6],
                         capture_output=True, text=True, check=True).stdout.split()
    return out[out.index("lladdr") + 1] if "lladdr" in out else ""


# From the client: a datagram to a closed port of the IPv6 virtual; its holder answers
# with an ICMPv6 port unreachable, which the connected socket reports as refused.
PROBE = f"""
import socket
sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
sock.bind(("{CLIENT6}", 0))
sock.settimeout(1)
sock.connect(("{GATEWAY6}", 9))
sock.send(b"x")
try:
    sock.recv(1)
except ConnectionRefusedError:
    raise SystemExit(0)
raise SystemExit(1)
"""


def answers6(site: Site) -> bool:
    """The IPv6 virtual's holder answers the client (and the client has resolved it)."""
    return subprocess.run(["ip", "netns", "exec", site.client, sys.executable, "-c", PROBE],
                          capture_output=True, check=False).returncode == 0


def test_an_ipv6_virtual_moves_to_the_standby_when_the_active_dies(site: Site) -> None:
    active, standby = site.up()
    until(lambda: site.holders(f"{GATEWAY6}/64") == [active], "the IPv6 virtual on the active")
    until(lambda: answers6(site), "the IPv6 virtual to answer the client")
    # Deprecated, so the unit's own traffic leaves from its own address, not the virtual.
    held = subprocess.run(["ip", "-n", site.ns[active], "-6", "-o", "addr", "show", "dev",
                           "cli0", "to", f"{GATEWAY6}/128"], capture_output=True, text=True,
                          check=True).stdout
    assert "deprecated" in held and "preferred_lft 0sec" in held, held
    assert client_neighbor(site) == mac(site, active)
    # The standby forwards no IPv6 either until it is active: the drop guard's IPv6 chain.
    until(lambda: guarded6(site, standby) and not guarded6(site, active),
          "the IPv6 drop guard up on the standby alone")
    site.crash(active)
    until(lambda: site.roles().get(standby) == "Active", "the standby to take over")
    until(lambda: site.holders(f"{GATEWAY6}/64") == [standby], "the IPv6 virtual to move")
    # The reals' segment has IPv6 virtuals only: they ride in the client side's instance.
    assert f" {REAL_GATEWAY6}/64 " in subprocess.run(
        ["ip", "-n", site.ns[standby], "-o", "addr", "show", "dev", "real0"],
        capture_output=True, text=True, check=True).stdout
    assert site.holders() == [standby] and f"{GATEWAY}/24" in subprocess.run(
        ["ip", "-n", site.ns[standby], "-o", "addr", "show", "dev", "cli0"],
        capture_output=True, text=True, check=True).stdout
    # keepalived's unsolicited neighbour advertisement: no packet from the client needed.
    until(lambda: client_neighbor(site) == mac(site, standby),
          "the client's neighbour entry to follow the virtual")
    assert answers6(site)
    until(lambda: not guarded6(site, standby), "the new active's IPv6 guard down")


def guarded6(site: Site, unit: str) -> bool:
    """The unit's ip6tables raw PREROUTING jumps to the drop guard."""
    return "-j LDFAILOVER" in subprocess.run(
        ["ip", "netns", "exec", site.ns[unit], "ip6tables", "-w", "-t", "raw", "-S",
         "PREROUTING"], capture_output=True, text=True, check=False).stdout


ASK = """
import sys
from localdirector.failover.presence import who_answers
print(repr(who_answers([("eth0", "2001:db8:c::fc", sys.argv[1])])))
"""


def test_a_standby_over_a_dark_cable_asks_an_ipv6_segment_by_solicitation(
        tmp_path: Path) -> None:
    """The question of a segment with IPv6 virtuals only: the unit holding the virtual
    answers the neighbour solicitation; nobody answers for an address nobody holds."""
    from tests.conftest import require_netns
    require_netns()
    name = f"fv{secrets.token_hex(2)}"
    asker, holder = f"{name}-a", f"{name}-h"
    try:
        for ns in (asker, holder):
            subprocess.run(["ip", "netns", "add", ns], check=True)
        for args in (["-n", asker, "link", "add", "eth0", "type", "veth", "peer", "name",
                      "eth0", "netns", holder],
                     ["-n", asker, "addr", "add", "2001:db8:c::fc/64", "dev", "eth0", "nodad"],
                     ["-n", holder, "addr", "add", "2001:db8:c::1/64", "dev", "eth0", "nodad"],
                     ["-n", asker, "link", "set", "eth0", "up"],
                     ["-n", holder, "link", "set", "eth0", "up"]):
            subprocess.run(["ip", *args], check=True)

        def ask(target: str) -> str:
            return subprocess.run(
                ["ip", "netns", "exec", asker, sys.executable, "-c", ASK, target],
                capture_output=True, text=True, check=True,
                env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
            ).stdout.strip()

        # Asked again until the fresh veth pair carries frames (a real link has long).
        until(lambda: ask("2001:db8:c::1") == repr("2001:db8:c::1 on eth0"),
              "the holder's neighbour advertisement")
        assert ask("2001:db8:c::2") == repr("")
    finally:
        subprocess.run(["ip", "netns", "del", asker], check=False)
        subprocess.run(["ip", "netns", "del", holder], check=False)


# On the real: GET /N answers N bytes of a pattern, /slow/N as well, a tenth of a second
# per kilobyte, so the download is under way when the active dies.
SERVER = r"""
import socket, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class V6(ThreadingHTTPServer):
    address_family = socket.AF_INET6
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    def log_message(self, *a): pass
    def do_GET(self):
        slow = self.path.startswith("/slow/")
        size = int(self.path.rsplit("/", 1)[1] or 0)
        body = bytes(i % 251 for i in range(size))
        self.send_response(200); self.send_header("Content-Length", str(size)); self.end_headers()
        for at in range(0, size, 1000):
            self.wfile.write(body[at:at + 1000]); self.wfile.flush()
            if slow: time.sleep(0.1)
V6((sys.argv[1], 80), H).serve_forever()
"""
VIP6 = "2001:db8::10"


def body(size: int) -> bytes:
    return bytes(i % 251 for i in range(size))


def curl6(site: Site, path: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["ip", "netns", "exec", site.client, "curl", "-6", "-sS",
                             "--max-time", "30", "--interface", CLIENT6,
                             f"http://[{VIP6}]{path}"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def received(site: Site, unit: str) -> int:
    """Connection records the unit installed from the other (`show failover`)."""
    found = re.search(r"(\d+) received", site.consoles[unit].run("show failover"))
    return int(found[1]) if found else 0


def fetched(site: Site, path: str) -> bytes:
    out, err = curl6(site, path).communicate(timeout=40)
    assert not err, err
    return out


def test_curl6_downloads_survive_a_crash_of_the_active(site: Site) -> None:
    """The data plane: an IPv6 virtual over an IPv6 real through the pair, `replicate`
    on; a paced download across the active's death completes byte for byte on the new
    active (its connection came by the stream), and new connections go there too."""
    subprocess.run(["ip", "-n", site.client, "-6", "route", "add", "2001:db8::/64", "via",
                    GATEWAY6], check=True)
    server = subprocess.Popen(["ip", "netns", "exec", site.real, sys.executable, "-c", SERVER,
                               REAL6])
    try:
        lines = [f"real [{REAL6}]:80", f"virtual [{VIP6}]:80",
                 f"bind [{VIP6}]:80 [{REAL6}]:80"]
        active, standby = site.up(lines, ["--queue", str(QUEUE)])
        until(lambda: site.holders(f"{GATEWAY6}/64") == [active], "the IPv6 virtual")
        until(lambda: subprocess.run(
            ["ip", "netns", "exec", site.real, "curl", "-6", "-s", f"http://[{REAL6}]/0"],
            capture_output=True, check=False).returncode == 0, "the real's server")
        assert fetched(site, "/5000") == body(5000)
        until(lambda: received(site, standby) >= 1, "the standby to hear of it")
        before = received(site, standby)
        download = curl6(site, "/slow/40000")          # four seconds
        until(lambda: received(site, standby) > before,
              "the standby to hold the download's connection")
        site.crash(active)
        out, err = download.communicate(timeout=40)
        assert download.returncode == 0 and out == body(40000), (download.returncode, err)
        assert site.roles() == {standby: "Active"}
        for size in (1, 3000, 70000):
            assert fetched(site, f"/{size}") == body(size)
    finally:
        server.kill()
        server.wait()
