"""A SYN flood from random spoofed sources against a userspace virtual, and a legitimate
client's success rate meanwhile (issue 15 item 9; docs/design.rst, "Netfilter rules").

The flooder is a raw socket in the lab's client namespace sending prebuilt SYNs as fast
as one Python process can (faster than hping3 here), each from a random address of
198.18.0.0/15 and a random port: what per-source limits cannot stop. The legitimate
client has used the service before (one request ahead of the flood, so the kernel knows
its address) and then connects again and again, one request at a time, throughout.

    python3 -m benchmarks.synflood [--seconds 10] [--json PATH]

Prints the flood's rate, what the kernel shed and the queue dropped, and the client's
success rate (the goal: at least 95 %). Needs root (network namespaces), like the lab.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from localdirector.lab import Lab

VIP = "192.0.2.10"
REAL = "203.0.113.11"
QUEUE = 7
FLOOD_NET = "198.18.0.0/15"   # spoofed sources: the lab's unwelcome range, owned by nobody
GOAL = 0.95

# argv: VIP, port, seconds[, NET]: spoofed sources of NET (default FLOOD_NET; an IPv6
# VIP takes an IPv6 NET, its SYNs built with their IPv6 header). Prints {"sent": N,
# "seconds": S}.
FLOODER = r'''
import ipaddress, json, random, socket, struct, sys, time
vip, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
net = ipaddress.ip_network(sys.argv[4] if len(sys.argv) > 4 else "198.18.0.0/15")
dst = int(ipaddress.ip_address(vip))
six = net.version == 6
def fold(data):
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s
def syn(src, sport, seq):
    tcp = struct.pack("!HHIIBBHHH", sport, port, seq, 0, 5 << 4, 0x02, 64240, 0, 0)
    if six:
        addrs = src.to_bytes(16, "big") + dst.to_bytes(16, "big")
        pseudo = addrs + struct.pack("!IxxxB", 20, 6)
    else:
        pseudo = struct.pack("!IIBBH", src, dst, 0, 6, 20)
    tcp = tcp[:16] + struct.pack("!H", fold(pseudo + tcp) ^ 0xFFFF) + tcp[18:]
    if six:
        return struct.pack("!IHBB", 6 << 28, 20, 6, 64) + addrs + tcp
    ip = struct.pack("!BBHHHBBHII", 0x45, 0, 40, 0, 0, 64, 6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", fold(ip) ^ 0xFFFF) + ip[12:]
    return ip + tcp
base, size = int(net.network_address), net.num_addresses
rng = random.Random(15)
packets = [syn(base + rng.randrange(2, size - 1), rng.randrange(1024, 65536),
               rng.getrandbits(32)) for _ in range(65536)]
sock = socket.socket(socket.AF_INET6 if six else socket.AF_INET, socket.SOCK_RAW,
                     socket.IPPROTO_RAW)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
target = (vip, 0)
send = sock.sendto
sent, start = 0, time.monotonic()
deadline = start + seconds
while time.monotonic() < deadline:
    for pkt in packets[(sent & 0xFFFF):(sent & 0xFFFF) + 1024]:
        try:
            send(pkt, target)
        except BlockingIOError:
            pass
    sent += 1024
print(json.dumps({"sent": sent, "seconds": round(time.monotonic() - start, 2)}))
'''

# argv: VIP, source, seconds, timeout. One request at a time until the time is up.
# Prints {"ok": N, "failed": M, "errors": [...], "worst_s": S}.
LEGIT = r'''
import json, socket, sys, time
vip, source, seconds, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
ok, failed, errors, worst = 0, 0, [], 0.0
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    started = time.monotonic()
    try:
        with socket.create_connection((vip, 80), timeout=timeout,
                                      source_address=(source, 0)) as s:
            s.sendall(f"GET / HTTP/1.0\r\nHost: {vip}\r\n\r\n".encode())
            reply = b""
            while chunk := s.recv(4096):
                reply += chunk
        if not reply.startswith(b"HTTP/1.0 200") and not reply.startswith(b"HTTP/1.1 200"):
            raise OSError(f"answer {reply[:20]!r}")
        ok += 1
    except OSError as exc:
        failed += 1
        errors.append(type(exc).__name__)
    worst = max(worst, time.monotonic() - started)
    time.sleep(0.02)
print(json.dumps({"ok": ok, "failed": failed, "errors": errors[:20], "worst_s": round(worst, 3)}))
'''


def _json_line(text: str) -> dict[str, Any]:
    return json.loads(text.strip().splitlines()[-1])


def flood_counts(lab: Lab, queue: int) -> dict[str, int]:
    """The kernel's figures: SYNs shed as new sources over the budget, and packets the
    queue dropped because it was full."""
    saved = lab.run_in(lab.director_ns, ["iptables-save", "-c", "-t", "raw"]).stdout
    shed = sum(int(line.split(":")[0].strip("["))
               for line in saved.splitlines()
               if line.endswith(f"-A LOCALDIRECTOR{queue}-FLOOD -j DROP"))
    proc = lab.run_in(lab.director_ns, ["cat", "/proc/net/netfilter/nfnetlink_queue"]).stdout
    dropped = sum(int(fields[5]) for fields in (line.split() for line in proc.splitlines())
                  if fields and fields[0] == str(queue))
    return {"shed_new_sources": shed, "queue_full": dropped}


def measure(lab: Lab, seconds: float, queue: int = QUEUE) -> dict[str, Any]:
    """Boot the appliance on one userspace virtual, flood it for `seconds` while the
    legitimate client connects, and return the figures."""
    source = lab.client_addresses["general"][0]
    with tempfile.TemporaryDirectory() as work:
        config = Path(work) / "startup-config"
        config.write_text(f"real {REAL}\nvirtual {VIP}:80\nbind {VIP}:80 {REAL}\n")
        director = lab.popen_in(lab.director_ns, [
            sys.executable, "-m", "localdirector", "--no-console", "--config", str(config),
            "--queue", str(queue)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True)
        try:
            return _flood(lab, source, seconds, queue)
        finally:
            director.send_signal(signal.SIGTERM)
            director.wait(timeout=30)


def _flood(lab: Lab, source: str, seconds: float, queue: int) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while lab.run_in(lab.client_ns, [sys.executable, "-c", LEGIT, VIP, source, "0.01",
                                     "2"]).stdout.find('"ok": 1') < 0:
        if time.monotonic() > deadline:
            raise RuntimeError("the appliance did not start serving")
        time.sleep(0.2)
    before = flood_counts(lab, queue)
    flood = lab.popen_in(lab.client_ns, [sys.executable, "-c", FLOODER, VIP, "80",
                                         str(seconds)], stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)   # the flood is at full rate before the client starts
    legit = lab.run_in(lab.client_ns, [sys.executable, "-c", LEGIT, VIP, source,
                                       str(seconds - 1.0), "3"], timeout=seconds + 60)
    flooded = _json_line(flood.communicate(timeout=seconds + 60)[0])
    after = flood_counts(lab, queue)
    client = _json_line(legit.stdout)
    total = client["ok"] + client["failed"]
    return {"flood_seconds": flooded["seconds"], "flood_sent": flooded["sent"],
            "flood_rate": round(flooded["sent"] / flooded["seconds"]),
            **{k: after[k] - before[k] for k in after},
            "legit_requests": total, "legit_ok": client["ok"],
            "legit_success": round(client["ok"] / total, 4) if total else 0.0,
            "legit_worst_s": client["worst_s"], "legit_errors": client["errors"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.synflood",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    with Lab(reals=(REAL,)) as lab:
        result = measure(lab, args.seconds)
    print(f"flood: {result['flood_sent']} SYNs in {result['flood_seconds']} s "
          f"({result['flood_rate']}/s) from random sources; kernel shed "
          f"{result['shed_new_sources']} as new sources, queue dropped "
          f"{result['queue_full']}")
    print(f"legitimate client: {result['legit_ok']}/{result['legit_requests']} requests "
          f"({100 * result['legit_success']:.1f} %, goal >= {100 * GOAL:.0f} %), "
          f"slowest {result['legit_worst_s']} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["legit_success"] >= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
