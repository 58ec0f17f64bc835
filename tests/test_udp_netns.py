"""UDP virtuals as an operator runs them (issue 25): ``localdirector --config FILE`` in
the lab's director namespace, dnsmasq on the reals, and real UDP clients (dig, Python
sockets) in the client namespace. What the clients receive is the evidence: which real
answered, byte-exact 4 KB datagrams both ways (fragmented on the wire), answers going
on while a DNS server is stopped and while a spoofed flood runs."""

from __future__ import annotations

import collections
import json
import shutil
import sys
import time

import pytest
from appliance_driver import R12, R13, R14, appliance

from localdirector.lab import Lab

pytestmark = pytest.mark.netns
__all__ = ["appliance"]  # the fixture, imported so pytest finds it here

DNS_VIP = "192.0.2.53"
BIG_PORT = 5300
DNSMASQ = "/usr/sbin/dnsmasq"
SPOOFED = "198.18.7.7"      # an address of none of the lab's subnets

# A DNS client in a few lines: each query from a fresh socket (a new flow), retried on
# the same socket (the same flow) as resolvers do, `pause` seconds apart per thread;
# prints, at the end (a full pipe would stall it), one JSON line per query.
QUERY = r"""
import json, random, socket, struct, sys, threading, time
vip, seconds, timeout, tries, threads = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
sources, pause = sys.argv[6].split(","), float(sys.argv[7])
done = []
name = b"".join(bytes([len(p)]) + p for p in b"who.example".split(b".")) + b"\0"
end = time.monotonic() + seconds
lock = threading.Lock()
def worker(n):
    while time.monotonic() < end:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((sources[n % len(sources)], 0))
        s.settimeout(timeout)
        qid = random.randrange(65536)
        query = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + name + struct.pack("!HH", 16, 1)
        sent, got = time.monotonic(), None
        for _ in range(tries):
            s.sendto(query, (vip, 53))
            try:
                data, peer = s.recvfrom(4096)
            except socket.timeout:
                continue
            if data[:2] == query[:2] and peer == (vip, 53):
                got = data[data.index(b"real-"):].split(b"\0")[0][:20].decode(errors="replace")
                break
        s.close()
        with lock:
            done.append({"t": sent, "by": got})
        time.sleep(pause)
ts = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
[t.start() for t in ts]
[t.join() for t in ts]
print("\n".join(json.dumps(d) for d in done))
"""

# Answers a datagram of any size with the SHA-256 of what it got, then `size` bytes of
# a pattern (the size asked for in its first 8 bytes).
BIG_SERVER = r"""
import hashlib, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
while True:
    data, peer = s.recvfrom(65535)
    size = int(data[:8])
    s.sendto(hashlib.sha256(data).digest() + bytes(i % 251 for i in range(size)), peer)
"""
BIG_CLIENT = r"""
import hashlib, os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[3], 0))
s.settimeout(3)
request = b"%08d" % int(sys.argv[4]) + os.urandom(4000)
s.sendto(request, (sys.argv[1], int(sys.argv[2])))
data, peer = s.recvfrom(65535)
expected = hashlib.sha256(request).digest() + bytes(i % 251 for i in range(int(sys.argv[4])))
print(peer[0], peer[1], len(data), data == expected)
"""

# Spoofed queries from random 198.18.0.0/15 sources (none of the lab's own subnets), at
# about `rate` a second for `seconds`, through a raw socket: what a reflection flood
# looks like to the director.
FLOOD = r"""
import random, socket, struct, sys, time
vip, rate, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
def csum(data):
    if len(data) & 1: data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16: total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
payload = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\3who\7example\0" + struct.pack("!HH", 16, 1)
dst = socket.inet_aton(vip)
packets = []
while len(packets) < 20000:
    a = random.randrange(1 << 17)
    second, third = 18 + (a >> 16), (a >> 8) & 0xFF
    if (second, third) in ((18, 0), (19, 0), (19, 255)):   # the lab's own subnets
        continue
    src = bytes((198, second, third, a & 0xFF))
    sport = random.randrange(1024, 65536)
    udp = struct.pack("!HHHH", sport, 53, 8 + len(payload), 0) + payload
    udp = udp[:6] + struct.pack("!H", csum(src + dst + struct.pack("!BBH", 0, 17, len(udp)) + udp) or 0xFFFF) + udp[8:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, src, dst)
    packets.append(ip + udp)
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
sent, start = 0, time.monotonic()
while time.monotonic() - start < seconds:
    for p in packets[sent % len(packets):sent % len(packets) + 100]:
        s.sendto(p, (vip, 0))
    sent += 100
    ahead = sent / rate - (time.monotonic() - start)
    if ahead > 0:
        time.sleep(ahead)
print(sent)
"""


def udp_config(*extra: str) -> list[str]:
    """A udp DNS virtual over two dnsmasq reals, a tcp virtual on the same VIP:port (a
    service of its own, over a third), and a udp virtual answering 4 KB datagrams."""
    return [f"real {R12}:0:0:udp", f"real {R13}:0:0:udp", f"real {R14}:53",
            f"real {R12}:{BIG_PORT}:0:udp",
            f"virtual {DNS_VIP}:53:0:udp", f"predictor {DNS_VIP}:53:0:udp roundrobin",
            f"bind {DNS_VIP}:53:0:udp {R12}:0:0:udp {R13}:0:0:udp",
            f"virtual {DNS_VIP}:53", f"bind {DNS_VIP}:53 {R14}:53",
            f"virtual {DNS_VIP}:{BIG_PORT}:0:udp",
            f"bind {DNS_VIP}:{BIG_PORT}:0:udp {R12}:{BIG_PORT}:0:udp", *extra]


@pytest.fixture
def dns(lab: Lab):
    """dnsmasq on R12, R13 and R14 (udp and tcp 53), each answering who.example TXT
    with its own name. Yields {real: process}; a test may stop one."""
    assert shutil.which(DNSMASQ), "dnsmasq missing"
    servers = {}
    for real in (R12, R13, R14):
        servers[real] = lab.popen_in(lab.real_ns[real], [
            DNSMASQ, "--no-daemon", "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
            "--pid-file", "--user=root", "--port=53", f"--listen-address={real}",
            "--bind-interfaces", f"--txt-record=who.example,real-{real}"])
    yield servers
    for proc in servers.values():
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def dig(lab: Lab, source: str, *options: str) -> str:
    done = lab.run_in(lab.client_ns, ["dig", f"@{DNS_VIP}", "-b", source, "who.example",
                                      "TXT", "+short", "+time=2", "+tries=2", *options])
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip().strip('"')


def queries(lab: Lab, seconds: float, sources: list[str], threads: int = 4,
            timeout: float = 1.0, tries: int = 3, pause: float = 0.02):
    """The DNS client script running in the client namespace (a Popen; its output is
    one JSON line per query: when it was sent, who answered or null)."""
    return lab.popen_in(lab.client_ns, [sys.executable, "-c", QUERY, DNS_VIP, str(seconds),
                                        str(timeout), str(tries), str(threads),
                                        ",".join(sources), str(pause)], stdout=-1, text=True)


def results(proc) -> list[dict]:
    out, _ = proc.communicate(timeout=60)
    return [json.loads(line) for line in out.splitlines()]


def test_dig_through_a_udp_virtual_beside_a_tcp_one_on_the_same_port(
        lab: Lab, appliance, dns) -> None:
    console = appliance(udp_config())
    sources = list(lab.client_addresses["preferred"])
    answers = collections.Counter(dig(lab, source) for source in sources)
    assert answers == {f"real-{R12}": 4, f"real-{R13}": 4}, answers     # roundrobin
    assert dig(lab, sources[0], "+tcp") == f"real-{R14}"                 # the tcp service
    conns = console.run("show conns")
    assert sum(line.split()[-1:] == ["udp"] for line in conns.splitlines()) == 8, conns
    rows = console.rows("real")
    assert int(rows[f"{R12}:0:0:udp"][3]) == 4 and int(rows[f"{R13}:0:0:udp"][3]) == 4
    assert int(rows[f"{R14}:53:0:tcp"][3]) == 1
    stats = console.statistics()
    assert stats["dropped"] == 0, stats


def test_4k_datagrams_cross_fragmented_both_ways_byte_exact(lab: Lab, appliance, dns) -> None:
    appliance(udp_config())
    lab.popen_in(lab.real_ns[R12], [sys.executable, "-c", BIG_SERVER, R12, str(BIG_PORT)])
    time.sleep(0.5)
    source = lab.client_addresses["preferred"][0]
    for size in (4000, 9000):
        done = lab.run_in(lab.client_ns, [sys.executable, "-c", BIG_CLIENT, DNS_VIP,
                                          str(BIG_PORT), source, str(size)])
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == [DNS_VIP, str(BIG_PORT), str(size + 32), "True"]


def test_a_stopped_dns_server_stops_getting_new_flows_within_10_seconds(
        lab: Lab, appliance, dns) -> None:
    """Default thresholds. dnsmasq on R13 is stopped while four resolvers query without
    pause: R13's kernel answers each datagram with a port unreachable, which fails R13
    (threshold 8 in a row) and moves the flow, so the resolver's retry is answered by
    R12; R13 takes no new flow once FAILED."""
    console = appliance(udp_config())
    sources = list(lab.client_addresses["preferred"])
    proc = queries(lab, 14.0, sources)
    time.sleep(3.0)
    dns[R13].kill()
    dns[R13].wait()
    stopped = time.monotonic()
    console.wait_for(lambda: console.rows("real")[f"{R13}:0:0:udp"][1] == "FAILED",
                     timeout=10, what="R13 FAILED")
    failed_after = time.monotonic() - stopped
    total_then = int(console.rows("real")[f"{R13}:0:0:udp"][3])
    time.sleep(max(0.0, 10.0 - failed_after))
    assert int(console.rows("real")[f"{R13}:0:0:udp"][3]) == total_then   # nothing new
    got = results(proc)
    after = [r for r in got if r["t"] > stopped]
    assert len(after) > 50
    answered = sum(1 for r in after if r["by"] == f"real-{R12}")
    assert answered == len(after), collections.Counter(r["by"] for r in after)
    assert console.statistics()["unreachable-absorbed"] >= 8


def test_a_spoofed_flood_stays_within_the_flow_bound_and_known_clients_are_answered(
        lab: Lab, appliance, dns) -> None:
    """Some 3,000 spoofed queries a second from random sources for 6 s against a
    virtual holding at most 1,000 flows: the table stays at the bound, the oldest
    flows are evicted and counted (of the 1,000 a second the kernel lets through from
    sources it does not know), and a known client's queries (retried on their own
    flow, as a resolver does) are answered."""
    console = appliance(udp_config(f"flows {DNS_VIP}:53:0:udp 1000"))
    sources = list(lab.client_addresses["general"])
    flood = lab.popen_in(lab.client_ns, [sys.executable, "-c", FLOOD, DNS_VIP, "3000", "6"],
                         stdout=-1, text=True)
    time.sleep(1.0)
    proc = queries(lab, 4.0, sources, threads=4, timeout=1.0, tries=3, pause=0.05)
    got = results(proc)
    sent = int(flood.communicate(timeout=30)[0])
    assert sent > 8000     # as many flows as the bound, eight times over
    assert len(got) >= 40
    answered = sum(1 for r in got if r["by"] is not None)
    assert answered >= 0.95 * len(got), (answered, len(got))
    detail = console.run(f"show virtual {DNS_VIP}:53:0:udp detail")
    evicted = int(detail.split("flows evicted")[0].split(",")[-1].split()[0])
    shed = console.statistics_and_kernel()[1]["datagrams shed (new sources)"]
    # What the kernel's budget of new sources let through filled the bound five times
    # over (the rest: shed, or lost when the queue was full).
    assert evicted > 5000 and evicted + shed > sent * 0.9, (detail, shed)
    current = int(console.rows("virtual")[f"{DNS_VIP}:53:0:udp"][2])
    assert current <= 1000


def test_a_flood_beyond_the_workers_rate_is_shed_in_the_kernel_and_known_clients_answered(
        lab: Lab, appliance, dns) -> None:
    """A spoofed flood at several times what the worker drains (it kept up with 30,000
    datagrams a second) would fill the queue that known clients' queries share. The kernel sheds
    datagrams of sources no real has answered over their budget (docs/design.rst, "UDP
    flows"): clients that got one answer before the flood keep being answered during it,
    and `show statistics` counts the shed datagrams."""
    console = appliance(udp_config())
    sources = list(lab.client_addresses["general"])
    # One try a query: a datagram the queue dropped is a query unanswered.
    proc = queries(lab, 7.0, sources, threads=4, timeout=1.0, tries=1, pause=0.05)
    time.sleep(1.5)                                        # every source answered once
    # hping3 (C, as fast as it can) from one address none of the lab's: the budget is
    # one bucket for every unknown source, so one address floods it as many would.
    flood = lab.popen_in(lab.client_ns, ["timeout", "-s", "INT", "5", "hping3", "-2",
                                         "--flood", "-a", SPOOFED, "-p", "53", "-d", "30",
                                         DNS_VIP], stdout=-1, stderr=-1, text=True)
    started = time.monotonic()
    report = "".join(flood.communicate(timeout=60))
    ended = time.monotonic()
    sent = int(report.split(" packets transmitted")[0].split()[-1])
    got = results(proc)
    _, kernel = console.statistics_and_kernel()
    during = [r for r in got if started <= r["t"] <= ended - 1.0]
    answered = sum(1 for r in during if r["by"] is not None)
    print(f"flood: {sent} datagrams in {ended - started:.1f} s; known clients: "
          f"{answered} of {len(during)} answered; kernel: {kernel}")
    assert sent > 100_000, sent        # far beyond what the worker drains
    # (Without the budget: 4 of 20 answered, the queue full, 263,000 datagrams dropped.)
    assert len(during) >= 30 and answered >= 0.95 * len(during), (answered, len(during))
    assert kernel["datagrams shed (new sources)"] > sent // 2, (sent, kernel)
