"""IPv6 through the userspace NFQUEUE path as an operator runs it (issue 26, item 3):
``localdirector --config FILE`` in a director namespace this test builds, an IPv6
virtual over IPv6 reals beside an IPv4 virtual over IPv4 reals, and real clients in a
client namespace: ``curl -6`` and ``curl -4`` downloads and uploads checked byte for
byte, an IPv6 UDP flow, and path-MTU discovery through the director both ways (a link
of 1280 bytes on the reals' side for uploads, on the clients' side for downloads, with
the far end advertising a larger MSS so a segment too big is really sent).

Lab (addresses of the documentation prefixes only)::

    client ns  c0 --- d0  director ns  d1 --- r0  real ns
    2001:db8:c::5      2001:db8:c::1   2001:db8:1::1   2001:db8:1::11, ::12
    198.51.100.7       198.51.100.1    203.0.113.1     203.0.113.11, .12
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from appliance_driver import Console, appliance_argv

pytestmark = pytest.mark.netns

VIP6, VIP4 = "2001:db8::10", "192.0.2.10"
CLIENT6, CLIENT4 = "2001:db8:c::5", "198.51.100.7"
REALS6 = ("2001:db8:1::11", "2001:db8:1::12")
REALS4 = ("203.0.113.11", "203.0.113.12")
QUEUE = 200 + os.getpid() % 30000
SIZE = 2 * 1024 * 1024 + 333        # odd, so no segment boundary hides a lost byte

# GET /N answers N bytes of a pattern; POST answers the SHA-256 of the body, then the
# address it was served from: what the client checks, byte for byte.
SERVER = r"""
import hashlib, socket, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class V6(ThreadingHTTPServer):
    address_family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    def log_message(self, *a): pass
    def do_GET(self):
        size = int(self.path[1:] or 0)
        body = bytes(i % 251 for i in range(size))
        self.send_response(200); self.send_header("Content-Length", str(size)); self.end_headers()
        self.wfile.write(body)
    def do_POST(self):
        data = self.rfile.read(int(self.headers["Content-Length"]))
        body = (hashlib.sha256(data).hexdigest() + " " + sys.argv[1]).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
V6((sys.argv[1], 80), H).serve_forever()
"""
UDP_ECHO = r"""
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 53))
while True:
    data, peer = s.recvfrom(65535)
    s.sendto(data + sys.argv[1].encode(), peer)
"""
UDP_CLIENT = r"""
import os, socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind((sys.argv[2], 0))
s.settimeout(2)
ok = 0
for _ in range(20):
    data = os.urandom(600)
    s.sendto(data, (sys.argv[1], 53))
    back, peer = s.recvfrom(65535)
    ok += back[:600] == data and peer[:2] == (sys.argv[1], 53)
print(ok, back[600:].decode())
"""


class Net:
    """The three namespaces, named uniquely for this run, removed at the end."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}"
        self.client, self.director, self.real = (f"ld6{role}{tag}" for role in "cdr")
        self.procs: list[subprocess.Popen[bytes]] = []

    def sh(self, ns: str, *argv: str, check: bool = True) -> str:
        done = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True,
                              text=True, timeout=120)
        if check:
            assert done.returncode == 0, (argv, done.stdout, done.stderr)
        return done.stdout

    def build(self) -> None:
        for ns in (self.client, self.director, self.real):
            subprocess.run(["ip", "netns", "add", ns], check=True)
            self.sh(ns, "ip", "link", "set", "lo", "up")
            for key in ("all", "default"):
                self.sh(ns, "sysctl", "-qw", f"net.ipv6.conf.{key}.accept_dad=0")
        self.sh(self.director, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        self.sh(self.director, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for near, far, ns in (("d0", "c0", self.client), ("d1", "r0", self.real)):
            self.sh(self.director, "ip", "link", "add", near, "type", "veth", "peer", "name",
                    far, "netns", ns)
            self.sh(self.director, "ip", "link", "set", near, "up")
            self.sh(ns, "ip", "link", "set", far, "up")
        addresses = ((self.director, "d0", ("2001:db8:c::1/64", "198.51.100.1/24")),
                     (self.director, "d1", ("2001:db8:1::1/64", "203.0.113.1/24")),
                     (self.client, "c0", (f"{CLIENT6}/64", f"{CLIENT4}/24")),
                     (self.real, "r0", (*(f"{r}/64" for r in REALS6),
                                        *(f"{r}/24" for r in REALS4))))
        for ns, dev, addrs in addresses:
            for addr in addrs:
                self.sh(ns, "ip", "addr", "add", addr, "dev", dev, *(
                    ("nodad",) if ":" in addr else ()))
        self.sh(self.client, "ip", "-4", "route", "add", "192.0.2.0/24", "via", "198.51.100.1")
        self.sh(self.real, "ip", "-4", "route", "add", "default", "via", "203.0.113.1")
        self.client_route()
        self.real_route()
        # The director's own errors about replies (source: the VIP) need a route to it.
        self.sh(self.director, "ip", "-6", "route", "add", "2001:db8::/64", "via",
                REALS6[0])
        for real in (*REALS6, *REALS4):
            self.spawn(self.real, sys.executable, "-c", SERVER, real)
        for real in REALS6:
            self.spawn(self.real, sys.executable, "-c", UDP_ECHO, real)

    def client_route(self, advmss: int = 0) -> None:
        self.sh(self.client, "ip", "-6", "route", "replace", "2001:db8::/64", "via",
                "2001:db8:c::1", *(("advmss", str(advmss)) if advmss else ()))

    def real_route(self, advmss: int = 0) -> None:
        self.sh(self.real, "ip", "-6", "route", "replace", "default", "via", "2001:db8:1::1",
                *(("advmss", str(advmss)) if advmss else ()))

    def mtu(self, ns: str, dev: str, peer_ns: str, peer: str, mtu: int) -> None:
        self.sh(ns, "ip", "link", "set", dev, "mtu", str(mtu))
        self.sh(peer_ns, "ip", "link", "set", peer, "mtu", str(mtu))

    def spawn(self, ns: str, *argv: str) -> None:
        self.procs.append(subprocess.Popen(["ip", "netns", "exec", ns, *argv],
                                           stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL))

    def remove(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
        for ns in (self.client, self.director, self.real):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


CONFIG = [
    *(f"real [{r}]:80" for r in REALS6),
    f"virtual [{VIP6}]:80",
    f"bind [{VIP6}]:80 " + " ".join(f"[{r}]:80" for r in REALS6),
    *(f"real [{r}]:53:0:udp" for r in REALS6),
    f"virtual [{VIP6}]:53:0:udp",
    f"bind [{VIP6}]:53:0:udp " + " ".join(f"[{r}]:53:0:udp" for r in REALS6),
    *(f"real {r}:80" for r in REALS4),
    f"virtual {VIP4}:80",
    f"bind {VIP4}:80 " + " ".join(f"{r}:80" for r in REALS4),
]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Net, Console]]:
    from conftest import require_netns
    require_netns()
    net = Net()
    try:
        net.build()
        config = tmp_path_factory.mktemp("ipv6") / "dual-stack.cfg"
        config.write_text("\n".join(CONFIG) + "\n")
        console = Console(["ip", "netns", "exec", net.director,
                           *appliance_argv(config, "--queue", str(QUEUE))])
        try:
            for real in (*REALS6, *REALS4):   # the servers are up
                net.sh(net.real, "sh", "-c", f"for i in $(seq 300); do "
                       f"curl -s -o /dev/null http://{'[' + real + ']' if ':' in real else real}"
                       f"/0 && exit 0; sleep 0.1; done; exit 1")
            yield net, console
        finally:
            assert console.exit() == 0
            saved = net.sh(net.director, "ip6tables-save", "-t", "raw")
            assert "LOCALDIRECTOR" not in saved, saved
    finally:
        net.remove()


def curl(net: Net, *args: str) -> bytes:
    done = subprocess.run(["ip", "netns", "exec", net.client, "curl", "-sS", "--max-time",
                           "30", *args], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def expected(size: int) -> bytes:
    return bytes(i % 251 for i in range(size))


def upload(net: Net, url: str, tmp: Path, family: str) -> tuple[str, str]:
    body = os.urandom(SIZE)
    path = tmp / "upload.bin"
    path.write_bytes(body)
    digest, served = curl(net, family, "--data-binary", f"@{path}", url).decode().split()
    assert digest == hashlib.sha256(body).hexdigest()
    return digest, served


def test_curl6_bulk_both_ways_byte_exact_and_ipv4_unchanged(lab, tmp_path: Path) -> None:
    net, console = lab
    before = console.statistics()
    got = curl(net, "-6", f"http://[{VIP6}]/{SIZE}")
    assert got == expected(SIZE)
    _digest, served = upload(net, f"http://[{VIP6}]/", tmp_path, "-6")
    assert served in REALS6
    seen = {upload(net, f"http://[{VIP6}]/", tmp_path, "-6")[1] for _ in range(3)}
    assert seen == set(REALS6)     # both reals take connections (leastconns)
    # IPv4 in the same lab, through the same appliance, as before.
    assert curl(net, "-4", f"http://{VIP4}/{SIZE}") == expected(SIZE)
    assert upload(net, f"http://{VIP4}/", tmp_path, "-4")[1] in REALS4
    after = console.statistics()
    # Through the engine, not around it: every connection's packets were translated
    # (GSO hands over up to 64 KB at once, so fewer packets than segments).
    for direction in ("in", "out"):
        assert after[f"translated {direction}"] > before[f"translated {direction}"] + 7 * 3
    conns = console.run("show conns")
    assert "[2001:db8::10]" in conns or "2001:db8::10" in conns
    # The ip6tables chains verify as installed (every 2 s): never "lost and reinstalled".
    rules = console.statistics_and_lines()[1]["Rules"]
    assert rules["errors"] == 0 and rules["repairs (rules lost and reinstalled)"] == 0, rules
    assert "LOCALDIRECTOR" in net.sh(net.director, "ip6tables-save", "-t", "raw")


def test_udp6_flow(lab) -> None:
    net, _console = lab
    out = net.sh(net.client, sys.executable, "-c", UDP_CLIENT, VIP6, CLIENT6)
    ok, real = out.split()
    assert int(ok) == 20 and real in REALS6


def test_path_mtu_discovery_through_the_director_both_ways(lab, tmp_path: Path) -> None:
    """Uploads over a 1280-byte link on the reals' side: the director's own Packet Too
    Big about a translated segment reaches the client about the VIP. Downloads over a
    1280-byte link on the clients' side: its Packet Too Big about a reply (source: the
    VIP) reaches the real about the real's own segment. Each end advertises an MSS
    for 1500 bytes, so only PMTUD can make the transfer work."""
    net, console = lab
    try:
        net.mtu(net.director, "d1", net.real, "r0", 1280)
        net.real_route(advmss=1440)
        before = console.statistics()["icmp translated"]
        upload(net, f"http://[{VIP6}]/", tmp_path, "-6")
        route = net.sh(net.client, "ip", "-6", "route", "get", VIP6)
        assert "mtu 1280" in route, route
        middle = console.statistics()["icmp translated"]
        assert middle > before
    finally:
        net.mtu(net.director, "d1", net.real, "r0", 1500)
        net.real_route()
    try:
        net.mtu(net.director, "d0", net.client, "c0", 1280)
        net.client_route(advmss=1440)
        assert curl(net, "-6", f"http://[{VIP6}]/{SIZE}") == expected(SIZE)
        routes = [net.sh(net.real, "ip", "-6", "route", "get", CLIENT6, "from", real)
                  for real in REALS6]
        assert any("mtu 1280" in route for route in routes), routes
        assert console.statistics()["icmp translated"] > middle
    finally:
        net.mtu(net.director, "d0", net.client, "c0", 1500)
        net.client_route()

