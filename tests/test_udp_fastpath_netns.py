"""UDP virtuals on the fast paths as an operator runs them (issue 25 items 4 and 6):
``localdirector --config FILE`` in the lab's director namespace, dnsmasq and a Python
UDP server on the reals, dig and Python sockets in the client namespace. The engine
decides a flow's first datagram and conntrack translates the rest (`fastpath`), or
nft rules decide it too (`fastpath ... kernel`, roundrobin and maglev), or the kernel
forwards every datagram unchanged to a real holding the VIP (dispatched). What the
clients receive (who answered, from which address, byte-exact 4 KB and 9 KB
datagrams, fragmented on the wire) is the evidence; the UDP lab pieces are
test_udp_netns.py's."""

from __future__ import annotations

import collections
import sys
import time

import pytest
from appliance_driver import R12, R13, R15, appliance
from test_udp_netns import BIG_CLIENT, BIG_PORT, BIG_SERVER, DNS_VIP, dig, dns, udp_config

from localdirector.lab import Lab

pytestmark = pytest.mark.netns
__all__ = ["appliance", "dns"]  # the fixtures, imported so pytest finds them here

UDP_DNS = f"{DNS_VIP}:53:0:udp"
UDP_BIG = f"{DNS_VIP}:{BIG_PORT}:0:udp"
NAMED_PORT = 5400        # the maglev test's servers, on the reals' own addresses
DISPATCH_PORT = 5401     # the dispatched test's, on the VIP the reals hold

# Answers with the name of the real (the address it serves on), the SHA-256 of what
# it got and `size` bytes of a pattern (asked for in the datagram's first 8 bytes).
NAMED_SERVER = r"""
import hashlib, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
name = sys.argv[3].encode().ljust(16)
while True:
    data, peer = s.recvfrom(65535)
    s.sendto(name + hashlib.sha256(data).digest() + bytes(i % 251 for i in range(int(data[:8]))), peer)
"""
# One datagram per (source, port) pair of the list, from that fixed 5-tuple: prints
# per pair who answered, from which address and port, and whether it was byte-exact.
NAMED_CLIENT = r"""
import hashlib, os, socket, sys
vip, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for pair in sys.argv[4:]:
    source, sport = pair.split("#")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((source, int(sport)))
    s.settimeout(2)
    request = b"%08d" % size + os.urandom(4000 if size > 100 else 8)
    got = "none"
    for _ in range(3):
        s.sendto(request, (vip, port))
        try:
            data, peer = s.recvfrom(65535)
        except socket.timeout:
            continue
        exact = data[16:] == hashlib.sha256(request).digest() + bytes(i % 251 for i in range(size))
        got = f"{data[:16].decode().strip()} {peer[0]}:{peer[1]} {exact}"
        break
    s.close()
    print(pair, got)
"""


# One datagram on a connected socket: "answered", "refused" (the ICMP port unreachable
# reached the client translated: from the VIP, quoting what the client sent) or
# "silence".
REFUSED_CLIENT = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[3], 0))
s.connect((sys.argv[1], int(sys.argv[2])))
s.settimeout(3)
s.send(b"00000008query")
try:
    s.recv(100)
    print("answered")
except ConnectionRefusedError:
    print("refused")
except socket.timeout:
    print("silence")
"""
CLOSED_PORT = 5402       # nothing listens there on the reals


def big(lab: Lab, source: str, size: int) -> list[str]:
    done = lab.run_in(lab.client_ns, [sys.executable, "-c", BIG_CLIENT, DNS_VIP,
                                      str(BIG_PORT), source, str(size)])
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def named(lab: Lab, port: int, size: int, pairs: list[str]) -> dict[str, str]:
    """{source#port: "real vip:port exact"} for one datagram of each fixed 5-tuple."""
    done = lab.run_in(lab.client_ns, [sys.executable, "-c", NAMED_CLIENT, DNS_VIP, str(port),
                                      str(size), *pairs])
    assert done.returncode == 0, done.stderr
    return dict(line.split(" ", 1) for line in done.stdout.splitlines())


def conntrack_udp(lab: Lab) -> str:
    done = lab.run_in(lab.director_ns, ["conntrack", "-L", "-p", "udp"])
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def big_server(lab: Lab) -> None:
    """test_udp_netns's 4 KB server on R12, once for the module's lab (its processes go
    with the lab)."""
    lab.popen_in(lab.real_ns[R12], [sys.executable, "-c", BIG_SERVER, R12, str(BIG_PORT)])
    time.sleep(0.5)


def test_engine_decided_fast_path_carries_dns_and_4k_datagrams(lab: Lab, appliance, dns,
                                                                big_server) -> None:
    """The engine decides each flow's first datagram (roundrobin: 4 and 4), conntrack's
    UDP NAT carries the rest; the tcp service on the same VIP:port stays in userspace.
    4 KB and 9 KB datagrams, fragmented both ways, arrive byte-exact."""
    console = appliance(udp_config(f"fastpath {UDP_DNS}", f"fastpath {UDP_BIG}"))
    sources = list(lab.client_addresses["preferred"])
    answers = collections.Counter(dig(lab, source) for source in sources)
    assert answers == {f"real-{R12}": 4, f"real-{R13}": 4}, answers
    assert dig(lab, sources[0], "+tcp") == "real-203.0.113.14"     # userspace tcp
    for size in (4000, 9000):
        assert big(lab, sources[0], size) == [DNS_VIP, str(BIG_PORT), str(size + 32), "True"]
    # Each flow's first replies are copied to the engine (NFLOG, delivered in batches):
    # every flow is then known answered, though the engine never translated a datagram.
    console.wait_for(lambda: "UNREPLIED" not in console.run("show conns"), timeout=5,
                     what="every flow answered")
    conns = console.run("show conns")
    fast = [line.split() for line in conns.splitlines()
            if line.split()[-2:] == ["fastpath", "udp"]]
    assert len(fast) == 10 and all(row[3] == "REPLIED" for row in fast), conns
    # (8 dig flows, and one per big datagram: the client's socket is new each time)
    table = conntrack_udp(lab)
    assert sum(f"dst={DNS_VIP} " in line and "dport=53 " in line
               and (f"src={R12} " in line or f"src={R13} " in line)
               for line in table.splitlines()) == 8, table
    stats, lines = console.statistics_and_lines()
    assert lines["Fast path"]["connections handed to the kernel"] == 10, lines
    assert stats["fastpath marked"] == 10 and stats["fastpath copies"] >= 10, stats
    assert stats["dropped"] == 0, stats
    rows = console.rows("real")
    assert int(rows[f"{R12}:0:0:udp"][3]) == 4 and int(rows[f"{R13}:0:0:udp"][3]) == 4


def test_kernel_decided_roundrobin_spreads_and_carries_4k_datagrams(lab: Lab, appliance, dns,
                                                                    big_server) -> None:
    console = appliance(udp_config(f"fastpath {UDP_DNS} kernel",
                                   f"predictor {UDP_BIG} roundrobin",
                                   f"fastpath {UDP_BIG} kernel"))
    sources = list(lab.client_addresses["preferred"])
    answers = collections.Counter(dig(lab, source) for source in sources)
    assert answers == {f"real-{R12}": 4, f"real-{R13}": 4}, answers
    for size in (4000, 9000):
        assert big(lab, sources[0], size) == [DNS_VIP, str(BIG_PORT), str(size + 32), "True"]
    # Decided by nft: the engine saw none of it; the kernel's counters reach the model.
    console.wait_for(lambda: int(console.rows("real")[f"{R12}:0:0:udp"][3]) == 4
                     and int(console.rows("real")[f"{R13}:0:0:udp"][3]) == 4,
                     timeout=6, what="kernel counters folded")
    stats = console.statistics()
    assert stats["conns created"] == 0 and stats["dropped"] == 0, stats
    table = lab.run_in(lab.director_ns, ["nft", "list", "ruleset"]).stdout
    assert "udp dport vmap" in table and "meta l4proto udp dnat to" in table


def test_kernel_decided_maglev_sends_each_flow_to_the_same_real_after_a_restart(
        lab: Lab, appliance) -> None:
    """Maglev in the kernel: jhash of the UDP 5-tuple into the model's table. The same
    40 fixed 5-tuples reach the same reals from a restarted appliance whose conntrack
    table was emptied (nothing remembered), and both reals get some."""
    for real in (R12, R13):
        lab.popen_in(lab.real_ns[real], [sys.executable, "-c", NAMED_SERVER, real,
                                         str(NAMED_PORT), real])
    time.sleep(0.5)
    vip = f"{DNS_VIP}:{NAMED_PORT}:0:udp"
    config = [f"real {R12}:0:0:udp", f"real {R13}:0:0:udp", f"virtual {vip}",
              f"predictor {vip} maglev", f"bind {vip} {R12}:0:0:udp {R13}:0:0:udp",
              f"fastpath {vip} kernel"]
    sources = list(lab.client_addresses["general"])
    pairs = [f"{sources[i % len(sources)]}#{41000 + i}" for i in range(40)]
    first = appliance(config)
    before = named(lab, NAMED_PORT, 8, pairs)
    first.exit()
    assert lab.run_in(lab.director_ns, ["conntrack", "-F"]).returncode == 0
    appliance(config)
    after = named(lab, NAMED_PORT, 8, pairs)
    assert before == after
    reals = collections.Counter(got.split()[0] for got in before.values())
    assert set(reals) == {R12, R13}, reals
    assert all(got.endswith(f"{DNS_VIP}:{NAMED_PORT} True") for got in before.values()), before


@pytest.mark.parametrize("kernel", [False, True], ids=["engine", "kernel"])
def test_dispatched_udp_reaches_a_real_holding_the_vip_unchanged(lab: Lab, appliance,
                                                                 kernel: bool) -> None:
    """Dispatched (maglev): each datagram keeps its destination, the VIP, and goes to
    the chosen real's MAC; the real answers the client itself, from the VIP. 4 KB
    datagrams fragmented both ways arrive byte-exact; a flow keeps its real."""
    held = lab.run_in(lab.real_ns[R12], ["ip", "-o", "addr", "show", "dev", "lo"]).stdout
    if f"{DNS_VIP}/32" not in held:      # the module's lab: held once for both cases
        lab.hold_vip(DNS_VIP)
    for real in (R12, R15):
        lab.popen_in(lab.real_ns[real], [sys.executable, "-c", NAMED_SERVER, DNS_VIP,
                                         str(DISPATCH_PORT), real])
    time.sleep(0.5)
    vip = f"{DNS_VIP}:0:0:udp"
    appliance([f"real {R12}:0:0:udp", f"real {R15}:0:0:udp", f"virtual {vip}",
               f"predictor {vip} maglev", f"dispatched {vip}",
               f"bind {vip} {R12}:0:0:udp {R15}:0:0:udp",
               *([f"fastpath {vip} kernel"] if kernel else [])])
    sources = list(lab.client_addresses["general"])
    pairs = [f"{sources[i % len(sources)]}#{42000 + i}" for i in range(16)]
    got = named(lab, DISPATCH_PORT, 4000, pairs)
    assert all(line.endswith(f"{DNS_VIP}:{DISPATCH_PORT} True") for line in got.values()), got
    assert {line.split()[0] for line in got.values()} == {R12, R15}, got
    again = named(lab, DISPATCH_PORT, 8, pairs[:4])
    assert {p: line.split()[0] for p, line in again.items()} == {
        p: got[p].split()[0] for p in pairs[:4]}


@pytest.mark.parametrize("kernel", [False, True], ids=["engine", "kernel"])
def test_a_reals_port_unreachable_reaches_the_client_translated(lab: Lab, appliance,
                                                                kernel: bool) -> None:
    """ICMP errors about a fast-path flow are conntrack's to translate (RELATED to the
    flow's entry): the client's connected socket is refused, as by the VIP itself."""
    vip = f"{DNS_VIP}:{CLOSED_PORT}:0:udp"
    appliance([f"real {R13}:0:0:udp", f"virtual {vip}", f"predictor {vip} roundrobin",
               f"bind {vip} {R13}:0:0:udp", f"fastpath {vip}{' kernel' if kernel else ''}"])
    source = lab.client_addresses["preferred"][0]
    done = lab.run_in(lab.client_ns, [sys.executable, "-c", REFUSED_CLIENT, DNS_VIP,
                                      str(CLOSED_PORT), source])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "refused"
