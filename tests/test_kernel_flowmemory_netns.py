"""A dispatched virtual decided in the kernel remembers each flow's real (docs/design.rst,
"Decided in the kernel", *Flow memory*): a real taken out of service keeps its open
connections to their end, as on every other path, while new ones avoid it.

The appliance runs as an operator starts it, forwarding TCP and UDP flows of one VIP by
nft ``dup`` to three reals that hold the VIP; the clients' downloads are paced so that
their ACKs still flow, through the director, long after the real was taken out."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import time

import pytest
from appliance_driver import (GENERAL, R11, R12, R13, VIP, appliance, bodies, name,
                              simple_config)

from localdirector.lab import Lab, pattern_digest

pytestmark = pytest.mark.netns
__all__ = ["appliance"]

REALS = (R11, R12, R13)
SIZE, RATE = 4_000_000, 800_000          # five seconds per download
DOWNLOADS = 18                           # six per real on average
UDP_PORT = 5300
# Each real answers a datagram on VIP:UDP_PORT with its own name, from the VIP.
RESPONDER = ("import socket, sys\n"
             "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
             "s.bind((sys.argv[1], int(sys.argv[2])))\n"
             "while True:\n"
             "    data, peer = s.recvfrom(2048)\n"
             "    s.sendto(sys.argv[3].encode(), peer)\n")
# From fixed client ports, one datagram each; prints who answered, per port.
ASKER = ("import json, socket, sys\n"
         "vip, port, sources, first = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(','), "
         "int(sys.argv[4])\n"
         "got = {}\n"
         "for i, source in enumerate(sources):\n"
         "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
         "    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
         "    s.bind((source, first + i)); s.settimeout(2)\n"
         "    s.sendto(b'who', (vip, port))\n"
         "    try: got[f'{source}:{first + i}'] = s.recv(100).decode()\n"
         "    except OSError as exc: got[f'{source}:{first + i}'] = repr(exc)\n"
         "    s.close()\n"
         "print(json.dumps(got))\n")


@pytest.fixture(scope="module")
def lab(lab: Lab) -> Lab:
    lab.hold_vip(VIP)
    for real, ns in lab.real_ns.items():
        lab.popen_in(ns, [sys.executable, "-c", RESPONDER, VIP, str(UDP_PORT), name(real)])
    return lab


def _config() -> list[str]:
    udp = f"{VIP}:{UDP_PORT}:0:udp"
    return [*simple_config(VIP, "maglev", list(REALS), f"dispatched {VIP}:80"),
            *(f"real {r}:0:0:udp" for r in REALS), f"virtual {udp}",
            f"predictor {udp} maglev", f"bind {udp} {' '.join(f'{r}:0:0:udp' for r in REALS)}",
            f"dispatched {udp}", f"fastpath {VIP}:80 kernel", f"fastpath {udp} kernel"]


def _established(lab: Lab, real: str) -> int:
    out = lab.run_in(lab.real_ns[real], ["ss", "-Htn", "state", "established",
                                         "( sport = :80 )"]).stdout
    return len(out.splitlines())


def _ask(lab: Lab, sources: list[str], first_port: int) -> dict[str, str]:
    proc = lab.run_in(lab.client_ns, [sys.executable, "-c", ASKER, VIP, str(UDP_PORT),
                                      ",".join(sources), str(first_port)])
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _table(lab: Lab) -> str:
    tables = lab.run_in(lab.director_ns, ["nft", "list", "tables"]).stdout
    table = next(line.split()[-1] for line in tables.splitlines() if "localdirector" in line)
    return lab.run_in(lab.director_ns, ["nft", "list", "table", "ip", table]).stdout


def test_a_real_taken_out_keeps_its_open_flows_and_gets_no_new_ones(lab: Lab,
                                                                   appliance) -> None:
    console = appliance(_config())
    sources = list(lab.client_addresses[GENERAL])
    udp_before = _ask(lab, sources * 2, 41000)
    downloads = lab.popen_in(lab.client_ns, [
        sys.executable, "-m", "localdirector.lab.client", "get",
        "--url", f"http://{VIP}/bytes/{SIZE}", *(f"--source={s}" for s in sources),
        "--count", str(DOWNLOADS), "--concurrency", str(DOWNLOADS), "--rate", str(RATE),
        "--digest", "--timeout", "30"], stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 5
    while sum(_established(lab, r) for r in REALS) < DOWNLOADS and time.monotonic() < deadline:
        time.sleep(0.1)
    spread = {r: _established(lab, r) for r in REALS}
    assert sum(spread.values()) == DOWNLOADS, spread
    out = max(REALS, key=lambda r: spread[r])
    console.configure(f"out-of-service {out}", f"out-of-service {out}:0:0:udp")
    console.wait_for(lambda: f"dup to {out} drop" not in _table(lab), timeout=5,
                     what=f"{out} gone from the hash")
    # New connections and flows avoid it...
    fresh = collections.Counter(bodies(lab.get_many(f"http://{VIP}/", sources, count=24,
                                                    concurrency=4)))
    assert name(out) not in fresh and sum(fresh.values()) == 24, fresh
    udp_fresh = _ask(lab, sources * 2, 42000)
    assert name(out) not in udp_fresh.values() and len(set(udp_fresh.values())) == 2, udp_fresh
    # ...while its open ones go on: every download, its own included, ends byte-exact
    # (without the memory, the clients' ACKs reached the other reals, which reset them).
    stdout, _ = downloads.communicate(timeout=40)
    results = json.loads(stdout)["results"]
    assert [(r["error"], r["length"], r["sha256"]) for r in results] == [
        (None, SIZE, pattern_digest(SIZE))] * DOWNLOADS
    # A UDP flow is remembered as well (an idle timeout of 60 s).
    assert name(out) in udp_before.values() and _ask(lab, sources * 2, 41000) == udp_before
    print(f"\nflow memory: {spread[out]} of {DOWNLOADS} downloads on {out} finished after "
          f"it was taken out; {dict(fresh)} new")
