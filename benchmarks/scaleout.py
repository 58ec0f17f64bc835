"""Scale-out throughput (docs/benchmarks.rst, "Scale-out"): what the directors forward,
measured with wrk from the benchmark fleet (24 source addresses, one uid each) against
nginx on the reals, through 1, 2 and 3 directors announcing the VIP to the router by
BGP (dispatched, predictor maglev), decided by the engine and decided in the kernel,
and one kernel-NAT director (nftables DNAT, replies routed back through it) in the same
run. The number of directors is set the operator's way: `bgp drain` on the others.

Every director, the router, the reals and the clients share this machine's CPUs, so the
scaling shown is the machine's as much as the directors': a director that needs no CPU
per connection (the kernel's own forwarding) cannot be made faster by a second one when
the clients and nginx already take every core; the per-director figure says what one
director carried. Run by ``python3 -m benchmarks.cluster`` (``--only throughput``)."""

from __future__ import annotations

import shutil
import statistics
import time
from typing import Any

from localdirector.lab.cluster import director_link, director_real_side
from localdirector.lab.topology import CLIENT_SUBNETS

from .contenders import Contender, KernelNat
from .lab import VIP, BenchLab
from .run import WORKLOADS, WRK_SCRIPT, run_workload

PATHS = ("kernel", "engine")


class Dispatched(Contender):
    """Whatever the running appliances do: the report's name for a path and a count."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name


class NatDirector(KernelNat):
    """Kernel NAT on director 1 alone: the router sends the VIP to it, and the reals
    send their replies to the clients back through it (conntrack must see them)."""

    name = "kernel-nat"

    def _routes(self, bench: BenchLab, verb: str) -> None:
        lab = bench.lab
        bench.ip_batch(lab.router_ns, [f"route {verb} {VIP}/32 via {director_link(1)}"])
        for ns in lab.real_ns.values():
            bench.ip_batch(ns, [f"route {verb} {net} via {director_real_side(1)}"
                                for net in CLIENT_SUBNETS.values()])

    def start(self, bench: BenchLab) -> None:
        self._routes(bench, "replace")
        super().start(bench)

    def stop(self, bench: BenchLab) -> list[str]:
        notes = super().stop(bench)
        self._routes(bench, "del")
        return notes


def config_lines(lab: Any, path: str) -> list[str]:
    from .cluster import REALS   # one configuration for every cluster figure
    return [*(f"real {r}" for r in REALS), f"virtual {VIP}:80",
            f"bind {VIP}:80 {' '.join(REALS)}", f"predictor {VIP}:80 maglev",
            f"dispatched {VIP}:80", f"advertise {VIP}:80",
            *([f"fastpath {VIP}:80 kernel"] if path == "kernel" else []), *lab.bgp_lines()]


def measure(bench: BenchLab, contender: Contender, duration: float,
            connections: int, out: dict[str, list[dict[str, Any]]]) -> None:
    for workload in ("keepalive", "close"):
        sample = run_workload(bench, contender, WORKLOADS[workload], duration, connections)
        out.setdefault(f"{contender.name} {workload}", []).append(sample)
        time.sleep(1)


def throughput_figures(repeat: int, duration: float = 5.0,
                       connections: int = 48) -> dict[str, Any]:
    from .cluster import Director, wait   # the appliance on a pipe, polling
    samples: dict[str, list[dict[str, Any]]] = {}
    with BenchLab(sources=24, directors=3) as bench:
        assert bench.work is not None
        shutil.copy(WRK_SCRIPT, bench.work / WRK_SCRIPT.name)
        lab = bench.lab
        for _ in range(repeat):
            nat = NatDirector()
            nat.start(bench)
            measure(bench, nat, duration, connections, samples)
            nat.stop(bench)
            for path in PATHS:
                config = bench.work / f"startup-config-{path}"
                config.write_text("\n".join(config_lines(lab, path)) + "\n")
                directors = [Director(lab, ns, config) for ns in lab.director_nss]
                try:
                    for active in (3, 2, 1):
                        for i, d in enumerate(directors):
                            d.drain(i >= active)
                        wait(lambda: len(lab.kernel_next_hops(VIP)) == active, 60)
                        bench.wait_http(f"http://{VIP}/small", what=f"{active} directors")
                        measure(bench, Dispatched(f"{path}-{active}"), duration,
                                connections, samples)
                finally:
                    for d in directors:
                        d.proc.terminate()
                        d.proc.wait(15)
                wait(lambda: not lab.kernel_next_hops(VIP), 30)
    return {"summary": summarize(samples), "samples": samples}


def summarize(samples: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Median and spread per figure; ratios to kernel NAT and to one director."""
    out: dict[str, Any] = {}
    for key, runs in samples.items():
        name, workload = key.split()
        rate = WORKLOADS[workload].rate
        values = [s[rate] for s in runs if rate in s]
        if not values:
            out[key] = {"failures": [s.get("failures") for s in runs]}
            continue
        out[key] = {rate: statistics.median(values), "min": min(values), "max": max(values),
                    "runs": len(values),
                    "errors": [s.get("errors") for s in runs if s.get("errors")]}
    for key, entry in out.items():
        name, workload = key.split()
        rate = WORKLOADS[workload].rate
        nat = out.get(f"kernel-nat {workload}", {}).get(rate)
        if rate in entry and nat:
            entry["x_kernel_nat"] = round(entry[rate] / nat, 3)
        if name.rsplit("-", 1)[-1].isdigit() and rate in entry:
            path, active = name.rsplit("-", 1)
            one = out.get(f"{path}-1 {workload}", {}).get(rate)
            entry["per_director"] = round(entry[rate] / int(active), 1)
            if one:
                entry["x_one_director"] = round(entry[rate] / one, 3)
    return out
