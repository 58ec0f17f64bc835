"""Microbenchmarks of the Python packet path, no kernel: ``python3 -m benchmarks.micro``.

What the data plane pays per packet once NFQUEUE has handed it over, at the scale the
design names: 100,000 assign prefixes (Bind ID objects) and 1,000,000 live connections.

* SYN decision: ``Director.decide`` (Bind ID longest prefix, then the predictor), and a
  whole ``Engine.handle`` of a SYN that opens a new connection (decision, connection
  object, both hash entries, idle timer, translation).
* Established packet: ``Engine.handle`` of a client->VIP data packet and of a
  real->client reply on established connections picked at random among the live ones.
* A whole short connection (SYN ... FIN, 10 packets), the close workload's unit.
* Bytes per connection: tracemalloc over connections opened through the engine.

Packets are built once with scapy; the timed loops hand ``handle`` fresh copies made
beforehand (a rewritten buffer cannot be reused), so copying is not in the figures; a
``floor`` section shows what the bare steps (parse, rewrite, a copy) cost on their own.
Each figure is a per-operation time from batches of ``--batch`` operations: the median
batch, the 99th percentile batch and the slowest (garbage collection of a million
objects shows there). The garbage collector runs with its default settings, as in the
appliance. ``--profile SECONDS`` then lets py-spy sample this process while it runs
short connections through the engine, for a per-function table of a packet's time.

Figures, not assertions: the targets are printed next to them as met / not met.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


from localdirector.dataplane.engine import ACCEPT_MODIFIED, Engine
from localdirector.dataplane.packet import parse_tcp, rewrite
from localdirector.model.connection import Connection
from localdirector.model.director import Director

from . import machine
from .crafted import (IPV6_SITE, POOL, VIP, VPORT, Packets, Tuples, build_director,
                      client_pool, lifecycle)
from .figures import emit
from .micro_report import BYTES_TARGET, TARGETS, format_report
from .profile import record, summarize




def per_op(run: Callable[[Sequence[Any]], None], items: Sequence[Any],
           batch: int, prepare: Callable[[Sequence[Any]], Sequence[Any]] | None = None
           ) -> dict[str, float]:
    """µs per item over batches: ``run(chunk)`` handles one chunk in a plain loop;
    ``prepare(chunk)``, untimed, turns a chunk of items into what ``run`` takes."""
    times = []
    for start in range(0, len(items), batch):
        chunk = items[start:start + batch]
        if prepare is not None:
            chunk = prepare(chunk)
        began = time.perf_counter_ns()
        run(chunk)
        times.append((time.perf_counter_ns() - began) / 1000 / len(chunk))
    times.sort()
    return {"median_us": round(statistics.median(times), 3),
            "p99_batch_us": round(times[min(len(times) - 1, int(len(times) * 0.99))], 3),
            "max_batch_us": round(times[-1], 3),
            "operations": len(items)}


def combine(repeats: list[Any]) -> Any:
    """Merge the same figures from several repeats: the median of their medians, with
    the spread of those medians (a noisy neighbour on a shared machine shows up as a
    wide spread, not as a wrong median)."""
    first = repeats[0]
    if isinstance(first, dict) and "median_us" in first:
        medians = [r["median_us"] for r in repeats]
        return {"median_us": round(statistics.median(medians), 3),
                "min_us": min(medians), "max_us": max(medians),
                "p99_batch_us": round(statistics.median(r["p99_batch_us"] for r in repeats), 3),
                "max_batch_us": max(r["max_batch_us"] for r in repeats),
                "operations": sum(r["operations"] for r in repeats), "repeats": len(repeats)}
    if isinstance(first, dict):
        return {key: combine([r[key] for r in repeats]) for key in first}
    return first


def _handle_all(engine: Engine) -> Callable[[Sequence[bytearray]], None]:
    handle = engine.handle

    def run(bufs: Sequence[bytearray]) -> None:
        for buf in bufs:
            handle(buf)
    return run


# ---------------------------------------------------------------- the phases
def populate(engine: Engine, packets: Packets, tuples: Tuples, count: int,
             batch: int) -> dict[str, float]:
    """Open ``count`` connections with SYNs through the engine."""
    handle, inbound, syn = engine.handle, packets.inbound, packets.syn
    before = len(engine.director.conns)
    began = time.perf_counter()
    pairs = tuples.take(count)
    for first in range(0, count, batch):
        for buf in [inbound(syn, src, sport) for src, sport in pairs[first:first + batch]]:
            handle(buf)
    seconds = time.perf_counter() - began
    opened = len(engine.director.conns) - before
    if opened != count:
        raise RuntimeError(f"expected {count} new connections, the table grew by {opened}")
    return {"connections": count, "seconds": round(seconds, 2),
            "us_per_syn_incl_copy": round(seconds * 1e6 / max(1, count), 3)}


def bench_decisions(director: Director, pool: Sequence[int], samples: int, batch: int,
                    rng: random.Random, vip: int = VIP) -> dict[str, Any]:
    sources = [rng.choice(pool) for _ in range(samples)]
    now = time.monotonic()
    decide, lookup = director.decide, director.lookup_virtual

    def run_decide(chunk: Sequence[int]) -> None:
        for src in chunk:
            decide(src, vip, VPORT, now)

    def run_lookup(chunk: Sequence[int]) -> None:
        for src in chunk:
            lookup(src, vip, VPORT)

    return {"decide": per_op(run_decide, sources, batch),
            "lookup_virtual": per_op(run_lookup, sources, batch)}


def bench_syn(engine: Engine, packets: Packets, tuples: Tuples, samples: int,
              batch: int) -> dict[str, float]:
    """SYNs that open new connections (built batch by batch, as in bench_established)."""
    def syns(chunk: Sequence[tuple[int, int]]) -> list[bytearray]:
        return [packets.inbound(packets.syn, src, sport) for src, sport in chunk]

    before = len(engine.director.conns)
    result = per_op(_handle_all(engine), tuples.take(samples), batch, syns)
    opened = len(engine.director.conns) - before
    if opened != samples:
        raise RuntimeError(f"{samples} SYNs opened {opened} connections")
    return result


def establish(engine: Engine, packets: Packets, count: int,
              rng: random.Random) -> list[Connection]:
    """Complete the handshake of ``count`` connections picked at random among the live
    ones (a sorted walk, so no million-entry list is built)."""
    table = engine.director.conns.inbound
    wanted = iter(sorted(rng.sample(range(len(table)), min(count, len(table)))))
    chosen: list[Connection] = []
    target = next(wanted, None)
    for index, conn in enumerate(table.values()):
        if index == target:
            chosen.append(conn)
            target = next(wanted, None)
            if target is None:
                break
    for conn in chosen:
        engine.handle(packets.outbound(packets.synack, conn))
        engine.handle(packets.inbound(packets.ack, conn.foreign_ip, conn.foreign_port))
    return chosen


def bench_established(engine: Engine, packets: Packets, chosen: Sequence[Connection],
                      samples: int, batch: int, rng: random.Random) -> dict[str, Any]:
    """Data packets both ways on random established connections: a request each way in,
    a full-size (1448-byte) segment each way out. The packets of a batch are built just
    before it is timed, so their headers are in the CPU cache as those of a packet the
    worker has just received are; the connections and the table are not (random picks
    among a million), as they would not be."""
    picks = [rng.choice(chosen) for _ in range(samples)]

    def inbound(conns: Sequence[Connection]) -> list[bytearray]:
        return [packets.inbound(packets.request, c.foreign_ip, c.foreign_port) for c in conns]

    def outbound(conns: Sequence[Connection]) -> list[bytearray]:
        return [packets.outbound(packets.response, c) for c in conns]

    if engine.handle(inbound(picks[-1:])[0]) != ACCEPT_MODIFIED:
        raise RuntimeError("an established client packet was not translated")
    return {"translate_in": per_op(_handle_all(engine), picks, batch, inbound),
            "translate_out": per_op(_handle_all(engine), picks, batch, outbound)}


def bench_lifecycle(engine: Engine, packets: Packets, tuples: Tuples, count: int,
                    batch: int) -> dict[str, float]:
    """Whole short connections: µs per connection (10 packets, reply packets built in
    the loop because they must carry the port the engine chose toward the real)."""
    handle = engine.handle

    def run(chunk: Sequence[tuple[int, int]]) -> None:
        for src, sport in chunk:
            for buf in lifecycle(packets, engine, src, sport):
                handle(buf)

    return per_op(run, tuples.take(count), batch)


def bench_floor(packets: Packets, samples: int, batch: int) -> dict[str, Any]:
    """The bare steps: what any Python packet path pays before doing its own work."""
    bufs = [bytearray(packets.request) for _ in range(samples)]
    template = packets.request

    def run_parse(chunk: Sequence[bytearray]) -> None:
        for buf in chunk:
            parse_tcp(buf)

    def run_rewrite(chunk: Sequence[bytearray]) -> None:
        for buf in chunk:
            rewrite(buf, 20, 0xCB00710B, 80, True)

    def run_copy(chunk: Sequence[bytearray]) -> None:
        for _ in chunk:
            bytearray(template)

    def run_noop(chunk: Sequence[bytearray]) -> None:
        for buf in chunk:
            len(buf)

    return {"parse_tcp": per_op(run_parse, bufs, batch),
            "rewrite": per_op(run_rewrite, bufs, batch),
            "bytearray_copy": per_op(run_copy, bufs, batch),
            "builtin_call": per_op(run_noop, bufs, batch)}


def bench_memory(count: int, rng: random.Random, packets: Packets) -> dict[str, Any]:
    """tracemalloc growth while ``count`` connections are opened through an engine: the
    connection object, its keys, both hash-table entries and its idle timer."""
    director, prefixes = build_director(100, rng)
    engine = Engine(director)
    tuples = Tuples(client_pool(prefixes, POOL, rng))
    bufs = [packets.inbound(packets.syn, src, sport) for src, sport in tuples.take(count)]
    gc.collect()
    tracemalloc.start(1)
    before = tracemalloc.take_snapshot()
    for buf in bufs:
        engine.handle(buf)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = [d for d in after.compare_to(before, "lineno") if d.size_diff > 0]
    total = sum(d.size_diff for d in grown)
    sites = [{"site": f"{Path(d.traceback[0].filename).name}:{d.traceback[0].lineno}",
              "bytes_per_connection": round(d.size_diff / count, 1)}
             for d in sorted(grown, key=lambda d: -d.size_diff)[:8]]
    return {"connections": count, "bytes_per_connection": round(total / count, 1),
            "top_sites": sites,
            "note": "amortised: the two dicts grow by doubling, so the figure depends "
                    "on where the count falls between two resizes"}


def profile_lifecycles(engine: Engine, packets: Packets, tuples: Tuples, seconds: float,
                       stacks: Path) -> dict[str, Any]:
    """py-spy samples this very process while short connections run through the engine."""
    outcome: list[str | None] = []
    done = threading.Event()

    def sample() -> None:
        outcome.append(record(os.getpid(), seconds, stacks, rate=500))
        done.set()

    sampler = threading.Thread(target=sample)
    handle = engine.handle
    sampler.start()
    count = 0
    while not done.is_set():
        for src, sport in tuples.take(1000):
            for buf in lifecycle(packets, engine, src, sport):
                handle(buf)
        count += 1000
    sampler.join()
    if outcome and outcome[0] is not None:
        return {"error": outcome[0]}
    return {"connections": count,
            "summary": summarize(stacks.read_text(), top=20, within="Engine.handle")}


def measure(engine: Engine, packets: Packets, tuples: Tuples, samples: int, batch: int,
            rng: random.Random, ipv6: tuple[Director, list[int]]) -> dict[str, Any]:
    """One repeat of every timed figure; `ipv6`: the IPv6 site's director and clients,
    whose decisions are timed beside IPv4's in the same process and state."""
    chosen = establish(engine, packets, min(10_000, len(engine.director.conns)), rng)
    lifecycles = max(1, samples // 10)
    return {
        "decision": bench_decisions(engine.director, tuples.pool, samples, batch, rng),
        "decision_ipv6": bench_decisions(*ipv6, samples, batch, rng, IPV6_SITE.vip),
        "syn_packet": bench_syn(engine, packets, tuples, samples, batch),
        "established": bench_established(engine, packets, chosen, samples, batch, rng),
        "lifecycle": bench_lifecycle(engine, packets, tuples, lifecycles, max(1, batch // 10)),
        "floor": bench_floor(packets, samples, batch),
    }


def _full_collection_ms() -> float:
    """One full cyclic-GC pass over everything alive now (a million connections):
    the interpreter does one by itself whenever the long-lived objects grew by a
    quarter, and the data plane stands still meanwhile."""
    began = time.perf_counter()
    gc.collect()
    return round((time.perf_counter() - began) * 1000, 1)


def _frozen_collection_ms() -> float:
    """The same pass once everything alive is frozen, as the worker does at every tick
    (dataplane/collector.py): what an automatic collection then costs."""
    gc.freeze()
    try:
        return _full_collection_ms()
    finally:
        gc.unfreeze()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.micro",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--assigns", type=int, default=100_000, help="assign prefixes [100000]")
    parser.add_argument("--conns", type=int, default=1_000_000,
                        help="live connections before timing [1000000]")
    parser.add_argument("--samples", type=int, default=100_000,
                        help="operations timed per figure [100000]")
    parser.add_argument("--batch", type=int, default=1000, help="operations per batch [1000]")
    parser.add_argument("--mem-conns", type=int, default=200_000,
                        help="connections for the tracemalloc figure [200000]")
    parser.add_argument("--profile", type=float, default=0.0, metavar="SECONDS",
                        help="py-spy this process for SECONDS of short connections [0 = off]")
    parser.add_argument("--repeat", type=int, default=3,
                        help="repeats of every timed figure; medians of their medians [3]")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON ('-': "
                                                       "JSON only, to stdout)")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    batch = max(1, min(args.batch, args.samples))
    packets = Packets()

    result: dict[str, Any] = {"machine": machine.describe(),
                              "config": {k: v for k, v in vars(args).items() if k != "json"}}
    result["config"]["gc_enabled"] = gc.isenabled()
    result["memory"] = bench_memory(args.mem_conns, rng, packets)
    began = time.perf_counter()
    director, prefixes = build_director(args.assigns, rng)
    result["build_seconds"] = round(time.perf_counter() - began, 2)
    director6, prefixes6 = build_director(args.assigns, rng, IPV6_SITE)
    ipv6 = (director6, client_pool(prefixes6, POOL, rng, IPV6_SITE))
    engine = Engine(director)
    tuples = Tuples(client_pool(prefixes, POOL, rng))
    result["populate"] = populate(engine, packets, tuples, args.conns, batch)
    result["gc"] = {"full_collection_ms": _full_collection_ms(),
                    "frozen_collection_ms": _frozen_collection_ms()}
    full_before = gc.get_stats()[2]["collections"]
    result.update(combine([measure(engine, packets, tuples, args.samples, batch, rng, ipv6)
                           for _ in range(max(1, args.repeat))]))
    result["gc"]["full_collections_while_timing"] = gc.get_stats()[2]["collections"] - full_before
    result["lifecycle"]["us_per_packet"] = round(result["lifecycle"]["median_us"] / 10, 3)
    result["live_connections_at_end"] = len(director.conns)
    if args.profile:
        stacks = Path(tempfile.mkdtemp(prefix="ldmicro-")) / "py-spy-micro.txt"
        result["profile"] = profile_lifecycles(engine, packets, tuples, args.profile, stacks)
        result["profile"]["stacks_file"] = str(stacks)
    result["targets"] = {
        "syn_decision_us": {"target": TARGETS["decision"],
                            "measured": result["decision"]["decide"]["median_us"]},
        "syn_decision_ipv6_us": {"target": TARGETS["decision"],
                                 "measured": result["decision_ipv6"]["decide"]["median_us"]},
        "translate_us": {"target": TARGETS["translate_in"],
                         "measured": max(result["established"]["translate_in"]["median_us"],
                                         result["established"]["translate_out"]["median_us"])},
        "bytes_per_connection": {"target": BYTES_TARGET,
                                 "measured": result["memory"]["bytes_per_connection"]},
    }
    for entry in result["targets"].values():
        entry["met"] = entry["measured"] <= entry["target"]
    emit(result, format_report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
