"""Per-packet cost of the kernel-decided dispatched rules (docs/design.rst, "Decided in
the kernel", *Flow memory*): a remembered flow's packet, a datagram, a new connection's
SYN, through the rules each source tree renders, interleaved.

In a namespace of its own, each tree's table of one dispatched tcp and udp VIP over
three reals is loaded with its dispatch chain hooked at ``output``, so a local sender's
packets run the rules in the sender's own context; the sender's CPU time per packet
(raw socket, prebuilt packets) is the figure, the same Python loop for every tree. As
root, from the repository root::

    python3 -m benchmarks.flowmemory --tree . --tree /path/to/main [--rounds 5]"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import uuid
from pathlib import Path

VIP, CLIENT = "192.0.2.30", "198.51.100.1"
REALS = ("203.0.113.15", "203.0.113.16", "203.0.113.17")

RENDER = """
import pathlib, sys, tempfile
sys.path.insert(0, "tests")
from test_shell_commands import Shell
from localdirector.dataplane.kernelrules import desired_kernel
from localdirector.dataplane.nftables import install_text
R, tcp, udp = {reals!r}, "{vip}:0", "{vip}:53:0:udp"
shell = Shell(pathlib.Path(tempfile.mkdtemp()))
assert shell(*(f"real {{r}}" for r in R), f"virtual {{tcp}}", f"predictor {{tcp}} maglev",
             f"bind {{tcp}} {{' '.join(R)}}", f"dispatched {{tcp}}",
             *(f"real {{r}}:0:0:udp" for r in R), f"virtual {{udp}}",
             f"predictor {{udp}} maglev", f"bind {{udp}} {{' '.join(r + ':0:0:udp' for r in R)}}",
             f"dispatched {{udp}}", f"fastpath {{tcp}} kernel", f"fastpath {{udp}} kernel")
print(install_text(desired_kernel(shell.director), "ldbench").replace(
    "hook prerouting priority raw + 1", "hook output priority raw + 1"))
"""

SEND = """
import resource, socket, struct, sys
kind, n = sys.argv[1], int(sys.argv[2])
src, dst = socket.inet_aton("{client}"), socket.inet_aton("{vip}")
def packet(flags, sport=40000):
    if kind == "udp":
        l4, proto = struct.pack("!HHHH", sport, 53, 40, 0) + b"x" * 32, 17
    else:
        l4, proto = struct.pack("!HHIIBBHHH", sport, 80, 1, 1, 80, flags, 65535, 0, 0) + b"x" * 32, 6
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0, 64, proto, 0, src, dst) + l4
s, addr = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW), ("{vip}", 0)
if kind == "syn":   # new connections: distinct 5-tuples, within the memory's bound
    packets = [packet(0x02, 1024 + i) for i in range(n)]
else:               # one flow: its opening packet, then the rest (ACKs, datagrams)
    packets = [packet(0x02)] + [packet(0x10)] * n
    try:
        s.sendto(packets.pop(0), addr)   # dropped once copied: EPERM
    except OSError:
        pass
before = resource.getrusage(resource.RUSAGE_SELF)
for p in packets:
    try:
        s.sendto(p, addr)
    except OSError:
        pass
after = resource.getrusage(resource.RUSAGE_SELF)
print(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
"""

KINDS = {"remembered tcp": ("tcp", 200_000), "udp": ("udp", 200_000), "new syn": ("syn", 10_000)}


def _ip(ns: str, *argv: str) -> None:
    subprocess.run(["ip", "-n", ns, *argv], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    tables = {}
    for tree in args.tree:
        env = dict(os.environ, PYTHONPATH=str(tree.resolve()))
        tables[tree] = subprocess.run(
            [sys.executable, "-c", RENDER.format(reals=REALS, vip=VIP)], cwd=tree, env=env,
            check=True, capture_output=True, text=True).stdout
    ns = f"ldbench-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        _ip(ns, "link", "set", "lo", "up")
        _ip(ns, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1")
        for addr in (f"{CLIENT}/24", "203.0.113.1/24"):
            _ip(ns, "addr", "add", addr, "dev", "veth0")
        _ip(ns, "link", "set", "veth0", "up")
        _ip(ns, "link", "set", "veth1", "up")
        _ip(ns, "route", "add", "192.0.2.0/24", "dev", "veth0")
        for addr in (*REALS, VIP):   # copies leave without waiting on ARP
            _ip(ns, "neigh", "add", addr, "lladdr", "02:00:00:00:00:01", "dev", "veth0",
                "nud", "permanent")
        ns_run = ["ip", "netns", "exec", ns]
        send = SEND.format(client=CLIENT, vip=VIP)
        samples: dict[tuple[str, Path], list[float]] = {}
        for _ in range(args.rounds):
            for tree, table in tables.items():
                for name, (kind, n) in KINDS.items():
                    subprocess.run([*ns_run, "nft", "-f", "-"], input=table, text=True,
                                   check=True)   # each measurement from an empty memory
                    out = subprocess.run([*ns_run, sys.executable, "-c", send, kind, str(n)],
                                         check=True, capture_output=True, text=True).stdout
                    samples.setdefault((name, tree), []).append(float(out) / n * 1e6)
        for (name, tree), values in sorted(samples.items(), key=lambda kv: kv[0][0]):
            print(f"{name:15s} {str(tree):30s} median {statistics.median(values):.3f} us/packet "
                  f"({', '.join(f'{v:.3f}' for v in values)})")
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


if __name__ == "__main__":
    main()
