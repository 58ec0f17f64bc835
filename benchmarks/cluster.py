"""Scale-out figures (docs/benchmarks.rst, "Scale-out"): Maglev's build time, balance
and disruption, and on the cluster lab (router with BIRD 2, three directors announcing
the VIP by ExaBGP, dispatched forwarding), per path (decided by the engine, decided in
the kernel): withdraw-to-route-gone, kill-to-route-gone, connections broken per drain
and per kill, and bulk throughput of one dispatched connection; then wrk through 1, 2
and 3 directors against one kernel-NAT director (benchmarks/scaleout.py).

As root, from the repository root::

    python3 -m benchmarks.cluster [--json results-cluster.json] [--only throughput]

Each appliance reads its shell from a pipe (a script that has not ended), so the
benchmark types `bgp drain` into it like an operator would."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

from localdirector.lab.cluster import Cluster, director_link
from localdirector.lab.slowpost import broken_across
from localdirector.model import maglev

from .scaleout import throughput_figures

VIP = "192.0.2.10"
REALS = ("203.0.113.12", "203.0.113.13", "203.0.113.14")
ROOT = Path(__file__).resolve().parents[1]


def maglev_figures() -> dict[str, object]:
    members = [(0xCB007100 + 1 + i % 250, i // 250, 1) for i in range(1000)]
    started = time.perf_counter()
    built = maglev.MaglevTable.build(members)
    out: dict[str, object] = {"build_s_65537x1000": time.perf_counter() - started}
    shares = built.shares()
    out["balance_1000"] = max(shares) / min(shares)
    for n in (10, 100):
        before = maglev.MaglevTable.build(members[:n])
        moved = []
        for leaving in range(n):
            after = maglev.MaglevTable.build(members[:leaving] + members[leaving + 1:n])
            moved.append(sum(1 for s in range(before.size) if before.members[before.table[s]]
                             != after.members[after.table[s]]) / before.size)
        shares = before.shares()
        out[f"balance_{n}"] = max(shares) / min(shares)
        out[f"moved_{n}_median"] = median(moved)
        out[f"moved_{n}_max"] = max(moved)
    return out


class Director:
    """One appliance in a director namespace, its shell on a pipe."""

    def __init__(self, lab: Cluster, ns: str, config: Path) -> None:
        self.proc = lab.popen_in(ns, [sys.executable, "-m", "localdirector", "--config",
                                      str(config), "--queue", "0"],
                                 stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, text=True)
        self.type("enable")

    def type(self, *lines: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("".join(f"{line}\n" for line in lines))
        self.proc.stdin.flush()

    def drain(self, on: bool) -> None:
        self.type("configure terminal", f"{'' if on else 'no '}bgp drain", "end")


def wait(check, timeout: float, step: float = 0.01) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise RuntimeError("timed out")
        time.sleep(step)
    return time.monotonic() - started


def broken(lab: Cluster, event, count: int = 60) -> int:
    sources = list(lab.client_addresses["general"] + lab.client_addresses["unwelcome"])
    return broken_across(lab, VIP, count, sources, event, timeout=60)


def cluster_figures(repeat: int, path: str) -> dict[str, object]:
    lab = Cluster(3, hold=3)
    lab.build()
    out: dict[str, object] = {}
    try:
        lab.hold_vip(VIP)
        config = Path(tempfile.mkdtemp()) / "startup-config"
        config.write_text("\n".join([
            *(f"real {r}" for r in REALS), f"virtual {VIP}:80",
            f"bind {VIP}:80 {' '.join(REALS)}", f"predictor {VIP}:80 maglev",
            f"dispatched {VIP}:80", f"advertise {VIP}:80",
            *([f"fastpath {VIP}:80 kernel"] if path == "kernel" else []),
            *lab.bgp_lines()]) + "\n")
        directors = [Director(lab, ns, config) for ns in lab.director_nss]
        everyone = {director_link(i) for i in (1, 2, 3)}
        out["start_to_announced_s"] = wait(lambda: lab.kernel_next_hops(VIP) == everyone, 60)
        withdraw, announce = [], []
        for _ in range(repeat):
            directors[0].drain(True)
            withdraw.append(wait(lambda: director_link(1) not in lab.kernel_next_hops(VIP), 30))
            directors[0].drain(False)
            announce.append(wait(lambda: lab.kernel_next_hops(VIP) == everyone, 30))
        out["withdraw_to_route_gone_s"] = withdraw
        out["announce_to_route_s"] = announce
        bulk = []
        for _ in range(repeat):
            started = time.monotonic()
            lab.get_many(f"http://{VIP}/bytes/50000000", lab.client_addresses["general"][:1],
                         timeout=60, digest=True)
            bulk.append(50 / (time.monotonic() - started))
        out["bulk_MB_per_s_one_connection"] = bulk
        out["broken_per_drain"] = broken(lab, lambda: (
            directors[0].drain(True),
            wait(lambda: director_link(1) not in lab.kernel_next_hops(VIP), 30)))

        def kill() -> None:
            lab.run_in(lab.director_nss[1], ["ip", "link", "set", "eth0", "down"])
            directors[1].proc.kill()
            out["kill_to_route_gone_s"] = wait(
                lambda: director_link(2) not in lab.kernel_next_hops(VIP), 30)
        out["broken_per_kill"] = broken(lab, kill)
    finally:
        lab.destroy()
    return out


SECTIONS = ("maglev", "cluster", "throughput")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated, of {', '.join(SECTIONS)} [all]")
    args = parser.parse_args()
    wanted = args.only.split(",")
    out: dict[str, object] = {}
    if "maglev" in wanted:
        out["maglev"] = maglev_figures()
    if "cluster" in wanted:
        out["cluster"] = {path: cluster_figures(args.repeat, path)
                          for path in ("engine", "kernel")}
    if "throughput" in wanted:
        out["throughput"] = throughput_figures(args.repeat)
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
