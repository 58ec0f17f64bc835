"""The lab benchmark: ``python3 -m benchmarks.run`` (as root, from the repository root).

Builds one namespace lab (benchmarks/lab.py: a client fleet over many source addresses,
the director, three nginx reals) and measures the contenders of benchmarks/roster.py
(direct routing, kernel NAT, HAProxy, localdirector in userspace and with `fastpath`,
and the nfqueue-null diagnostic) on
four workloads with wrk, and DNS over UDP with dnsperf (benchmarks/udp.py), over IPv4 and
IPv6 (``--family``; benchmarks/families.py compares them). Contenders are interleaved:
every run measures each of them in turn, each contender's two families back to back,
and the order rotates from run to run, so drift of the shared machine (other
load, thermal state, the reals' TIME_WAIT tables filling up) spreads over all of them
instead of favouring whoever went first. Each figure is the median over the runs, shown
with its min-max and its ratio to kernel NAT; the same goes to a JSON file, which
``python3 -m benchmarks.plot`` turns into the PNG of docs/benchmarks.rst.

The figures are what this machine did, not pass/fail: nothing here asserts a timing.
Everything runs inside the lab's namespaces with documentation addresses only.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localdirector.lab import LabError, clean_stale, unavailable_reason

from . import cpu, families, machine, udp
from .appliance import LocalDirector
from .contenders import Contender, ContenderUnavailable, queue_counters, reset_director
from .roster import contenders_of, with_baseline
from .lab import LARGE_PATH, PLAN4, SMALL_PATH, BenchLab, url
from .profile import format_summary, record, summarize
from .report import BASELINE, METRICS, TARGETS, format_table, format_targets, summarize_samples

HERE = Path(__file__).resolve().parent
WRK_SCRIPT = HERE / "wrk_report.lua"
DEFAULT_JSON = HERE / "results.json"
REQUIRED_TOOLS = {"wrk": "wrk", "nginx": "nginx-light", "haproxy": "haproxy", "nft": "nftables",
                  "conntrack": "conntrack", "setpriv": "util-linux", "curl": "curl",
                  "ip": "iproute2", "iptables": "iptables"}
DNS_TOOLS = {"dnsperf": "dnsperf", "dnsmasq": "dnsmasq-base"}


@dataclass(frozen=True)
class Workload:
    """One wrk load shape. ``processes`` 0 means one process per client source address;
    ``rate`` names the throughput figure it yields (requests or, with ``per_byte``,
    megabytes per second), if any; ``tool`` is the load generator (wrk, or dnsperf
    for DNS over UDP)."""

    name: str
    path: str
    processes: int
    close: bool = False
    timeout: str = "5s"
    rate: str | None = None
    per_byte: bool = False
    tool: str = "wrk"


WORKLOADS = {
    "keepalive": Workload("keepalive", SMALL_PATH, processes=0, rate="requests_per_s"),
    "close": Workload("close", SMALL_PATH, processes=0, close=True, rate="connections_per_s"),
    "bulk": Workload("bulk", LARGE_PATH, processes=1, timeout="60s", rate="megabytes_per_s",
                     per_byte=True),
    "latency": Workload("latency", SMALL_PATH, processes=1),
    # One dnsperf process per real (direct routing's targets), udp.CLIENTS flows each.
    "dns": Workload("dns", "", processes=3, rate="queries_per_s", tool="dnsperf"),
}


# ------------------------------------------------------------------- measuring
def _parse_wrk(output: str) -> dict[str, Any] | None:
    for line in output.splitlines():
        if line.startswith("WRK-JSON "):
            return json.loads(line[len("WRK-JSON "):])
    return None


def _load_argv(bench: BenchLab, contender: Contender, workload: Workload, index: int,
               duration: float, per_process: int) -> list[str]:
    """The load generator of client process `index`: wrk, or dnsperf for DNS."""
    assert bench.work is not None
    if workload.tool == "dnsperf":
        return udp.dnsperf_argv(contender.target(index), duration, bench.work / udp.QUERY_FILE)
    argv = ["wrk", "-t1", f"-c{per_process}", f"-d{duration:g}s", "--timeout",
            workload.timeout, "-s", str(bench.work / WRK_SCRIPT.name)]
    if workload.close:
        argv += ["-H", "Connection: close"]
    return [*argv, url(contender.target(index), workload.path)]


def run_workload(bench: BenchLab, contender: Contender, workload: Workload, duration: float,
                 connections: int, processes: int = 0) -> dict[str, Any]:
    """Run one workload against one contender; the sample's figures, with what went wrong.
    `processes`: wrk processes of the many-connection workloads (0: one per source)."""
    assert bench.work is not None
    processes = workload.processes or processes or len(bench.sources)
    per_process = max(1, connections // processes) if workload.processes == 0 else 1
    procs = []
    parse = udp.parse_dnsperf if workload.tool == "dnsperf" else _parse_wrk
    for index in range(processes):
        argv = _load_argv(bench, contender, workload, index, duration, per_process)
        procs.append(bench.popen(bench.client_ns, bench.client_argv(index, argv),
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE))
    busy0, total0 = cpu.machine_times()
    ours = cpu.lab_inodes(bench)
    foreign0 = cpu.foreign_cpu(ours)
    pid = contender.pid
    proc_cpu0 = cpu.process_cpu(pid, contender.workers > 1)
    queue0 = queue_counters(bench) if contender.nfqueue else None
    started = time.monotonic()
    reports, failures = [], []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=duration + 90)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        report = parse(out.decode(errors="replace"))
        if report is None:
            detail = (err or out).decode(errors="replace").strip()[-200:]
            failures.append(f"{workload.tool} rc={proc.returncode}: {detail}")
        else:
            reports.append(report)
    wall = time.monotonic() - started
    busy1, total1 = cpu.machine_times()
    foreign = sum(cpu - foreign0.get(p, 0.0) for p, cpu in cpu.foreign_cpu(ours).items())
    sample: dict[str, Any] = {
        "processes": processes,
        "connections": processes * per_process,
        "failures": failures,
        "cpu_busy": round((busy1 - busy0) / max(1, total1 - total0), 3),
        "foreign_cpu": round(foreign / wall, 3),
    }
    if pid is not None:
        user1, system1 = cpu.process_cpu(pid, contender.workers > 1)
        sample["process_cpu_user"] = round((user1 - proc_cpu0[0]) / wall, 3)
        sample["process_cpu_system"] = round((system1 - proc_cpu0[1]) / wall, 3)
        sample["process_cpu"] = round(sample["process_cpu_user"] + sample["process_cpu_system"],
                                      3)
    if not reports:
        return sample
    requests = sum(r["requests"] for r in reports)
    errors = {kind: sum(r["errors"][kind] for r in reports) for kind in reports[0]["errors"]}
    sample.update(requests=requests, errors=errors)
    if queue0 is not None:
        queue1 = queue_counters(bench)
        if queue1 is not None:
            delta = {k: queue1[k] - queue0[k] for k in queue1}
            sample["nfqueue"] = delta
            if delta["queued"] and "process_cpu" in sample:
                sample["cpu_us_per_packet"] = round(
                    sample["process_cpu"] * wall * 1e6 / delta["queued"], 2)
    if workload.rate is not None:
        # Each process over its own measured duration: they start a few ms apart.
        unit, scale = ("bytes", 1e-6) if workload.per_byte else ("requests", 1.0)
        rate = sum(r[unit] / (r["duration_us"] / 1e6) for r in reports) * scale
        sample[workload.rate] = round(rate, 1)
    if workload.tool == "dnsperf":
        sample["latency_us_average"] = round(statistics.mean(
            r["latency_us"]["average"] for r in reports), 1)
    elif workload.processes == 1:
        latency = reports[0]["latency_us"]
        sample["p50_us"], sample["p99_us"] = latency["p50"], latency["p99"]
    else:
        sample["p99_us_worst_client"] = max(r["latency_us"]["p99"] for r in reports)
    return sample


# ------------------------------------------------------------------------ main
def _missing_tools(dns: bool) -> list[str]:
    tools = {**REQUIRED_TOOLS, **(DNS_TOOLS if dns else {})}
    return [f"{tool} (apt: {package})" for tool, package in tools.items()
            if shutil.which(tool) is None]


def _profile_pass(bench: BenchLab, contender: Contender, seconds: float, connections: int,
                  workload: Workload, native: bool) -> dict[str, Any]:
    """An extra, unscored run of ``workload`` with py-spy sampling the appliance.

    The Python view never stops the process; the native view (C frames too: which
    system call, which library) pauses it for every sample, which appears to catch
    threads inside system calls more often than their share, so its percentages
    overstate the kernel side: the user/system CPU split of the figures is the
    unbiased measure of that."""
    assert bench.work is not None
    view = "native" if native else "python"
    stacks = bench.work / f"py-spy-{workload.name}-{view}.txt"
    result: dict[str, Any] = {"workload": workload.name, "view": view, "seconds": seconds}
    outcome: list[str | None] = []
    contender.start(bench)
    try:
        pid = contender.pid
        assert pid is not None
        sampler = threading.Thread(
            target=lambda: outcome.append(record(pid, seconds, stacks, native=native)))
        sampler.start()
        result["figures"] = run_workload(bench, contender, workload, seconds + 2, connections)
        sampler.join()
    finally:
        result["notes"] = contender.stop(bench) + reset_director(bench)
    if outcome and outcome[0] is not None:
        result["error"] = outcome[0]
        return result
    text = stacks.read_text()
    result["summary"] = summarize(text, top=20)
    keep = HERE / "profiles"
    keep.mkdir(exist_ok=True)
    (keep / stacks.name).write_text(text)
    result["stacks_file"] = str((keep / stacks.name).relative_to(HERE.parent))
    return result


def _described(contenders: list[Contender]) -> dict[str, Any]:
    """Each contender's description and, per family, why it could not run (or None)."""
    described: dict[str, Any] = {}
    for c in contenders:
        entry = described.setdefault(c.name, {"description": c.description, "unavailable": {}})
        entry["unavailable"][c.plan.name] = c.unavailable
    return described


def _order(contenders: list[Contender], run: int, per: int) -> list[Contender]:
    """Run `run`'s order: rotated by one contender (its `per` families together) per
    run, and the families of each taken in turn in the other order every other run."""
    groups = [contenders[i:i + per] for i in range(0, len(contenders), per)]
    shift = run % len(groups)
    return [c for group in groups[shift:] + groups[:shift]
            for c in (group[::-1] if run % 2 else group)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m benchmarks.run",
        description="Direct routing, kernel NAT, HAProxy and localdirector in one "
                    "namespace lab (root required; installs nothing).")
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs [3]")
    parser.add_argument("--duration", type=float, default=5.0,
                        help="seconds per workload per contender per run [5]")
    parser.add_argument("--sources", type=int, default=24,
                        help="client source addresses [24]; fewer than 16 make short "
                             "connections cycle through each address's ports, and reuse "
                             "4-tuples the reals still hold in TIME_WAIT")
    parser.add_argument("--processes", type=int, default=0,
                        help="wrk processes of the keep-alive and close workloads, spread "
                             "round the sources [0 = one per source]")
    parser.add_argument("--connections", type=int, default=48,
                        help="concurrent connections of the keep-alive and close workloads [48]")
    parser.add_argument("--large-mib", type=int, default=32, help="size of /large [32 MiB]")
    parser.add_argument("--contenders",
                        default="direct,kernel-nat,haproxy,localdirector,"
                                "localdirector-fastpath,localdirector-kernel,nfqueue-null",
                        help="which to measure, comma-separated [all but the nfqueue-null-own "
                             "and nfqueue-null-own-2 diagnostics]")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--family", choices=("both", *families.FAMILIES), default="both",
                        help="measure every contender over IPv4, IPv6 or both in the same "
                             "runs [both]")
    parser.add_argument("--settle", type=float, default=1.0,
                        help="pause between measurements, seconds [1]")
    parser.add_argument("--profile", type=float, default=0.0, metavar="SECONDS",
                        help="afterwards, py-spy the appliance for SECONDS under each of the "
                             "--profile-workloads, and once more under the first with C "
                             "frames (unscored) [0 = off]")
    parser.add_argument("--profile-workloads", default="keepalive,close",
                        help="the workloads --profile samples [keepalive,close]")
    parser.add_argument("--baseline-tree", metavar="PATH",
                        help="also measure each localdirector contender with the appliance "
                             "of the checkout PATH, as NAME@base, in the same runs")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON,
                        help="where to write the results [benchmarks/results.json]")
    args = parser.parse_args(argv)

    problem = unavailable_reason("ldb")
    measured = args.workloads.split(",")
    missing = _missing_tools("dns" in measured)
    if problem or missing:
        print(f"cannot run: {problem or 'missing ' + ', '.join(missing)} "
              "(see docs/benchmarks.rst for what to install)", file=sys.stderr)
        return 2
    if args.sources < 1 or args.processes < 0:
        parser.error("--sources must be at least 1 and --processes not negative")
    wanted = args.contenders.split(",")
    measured_families = list(families.FAMILIES) if args.family == "both" else [args.family]
    contenders = with_baseline(contenders_of(wanted, measured_families), args.baseline_tree,
                               len(measured_families))
    profiled = args.profile_workloads.split(",")
    unknown = sorted({*measured, *profiled} - WORKLOADS.keys())
    if unknown:
        parser.error(f"no workload {', '.join(unknown)} (there are {', '.join(WORKLOADS)})")
    workloads = [WORKLOADS[name] for name in measured]
    passes = [(name, False) for name in profiled] + [(profiled[0], True)]
    clean_stale("ldb")

    info = machine.describe(tools=True)
    print(f"machine: {machine.one_line(info)}", flush=True)
    if info["loadavg_at_start"][0] > 0.5:  # type: ignore[index]
        print(f"warning: load average {info['loadavg_at_start']} before the lab exists: "
              "something else is running and will skew the figures", flush=True)
    samples: list[dict[str, Any]] = []
    notes: list[str] = []
    profiles: list[dict[str, Any]] = []
    with BenchLab(sources=args.sources, large_bytes=args.large_mib << 20,
                  dns="dns" in measured) as bench:
        assert bench.work is not None
        shutil.copy(WRK_SCRIPT, bench.work / WRK_SCRIPT.name)
        (bench.work / WRK_SCRIPT.name).chmod(0o644)
        udp.query_file(bench.work)
        if any(c.plan not in bench.plans for c in contenders):
            raise LabError("this lab has no IPv6 (the scale-out lab's kind): --family ipv4")
        print(f"lab {bench.lab.name}: {len(bench.sources)} client addresses, reals "
              f"{', '.join(bench.reals)}", flush=True)
        for run in range(args.runs):
            for contender in _order(contenders, run, len(measured_families)):
                if contender.unavailable:
                    continue
                try:
                    contender.start(bench)
                except ContenderUnavailable as exc:
                    contender.unavailable = str(exc)
                    print(f"run {run + 1}: {contender.label} unavailable: {exc}", flush=True)
                    contender.stop(bench)
                    notes += reset_director(bench)
                    continue
                for workload in workloads:
                    if workload.tool == "dnsperf" and udp.no_udp(contender.name, contender.plan):
                        continue    # said in the table
                    time.sleep(args.settle)
                    sample = run_workload(bench, contender, workload, args.duration,
                                          args.connections, args.processes)
                    sample.update(run=run + 1, contender=contender.name, workload=workload.name,
                                  family=contender.plan.name)
                    samples.append(sample)
                    figures = {m.key: sample[m.key] for m in METRICS
                               if m.workload == workload.name and m.key in sample}
                    errors = {k: n for k, n in sample.get("errors", {}).items() if n}
                    print(f"run {run + 1} {contender.label:<29} {workload.name:<10} {figures} "
                          f"cpu {sample['cpu_busy']:.0%}"
                          + (f" other work {sample['foreign_cpu']:.2f} cores"
                             if sample["foreign_cpu"] >= 0.05 else "")
                          + (f" errors {errors}" if errors else "")
                          + (f" failures {sample['failures']}" if sample["failures"] else ""),
                          flush=True)
                notes += [f"run {run + 1} {contender.label}: {n}"
                          for n in contender.stop(bench) + reset_director(bench)]
        appliance = next((c for c in contenders if isinstance(c, LocalDirector)
                          and c.plan is PLAN4), None)
        if args.profile and appliance is not None and not appliance.unavailable:
            for name, native in passes:
                time.sleep(args.settle)
                profiles.append(_profile_pass(bench, appliance, args.profile,
                                              args.connections, WORKLOADS[name], native))

    names = list(dict.fromkeys(c.name for c in contenders))
    summaries, tables = {}, []
    for family in measured_families:
        ours = [c for c in contenders if c.plan.name == family]
        summaries[family] = summarize_samples(
            [s for s in samples if s["family"] == family], names)
        tables.append(f"{family}: medians over {args.runs} runs x {args.duration:g} s; "
                      f"x NAT = ratio of medians to {family} kernel NAT\n"
                      + format_table(summaries[family], ours))
    comparison = families.compare(summaries, samples)
    if comparison:
        tables.append("each path's ratio to kernel NAT, IPv6 beside IPv4 (per run: that "
                      "run's difference, min-max)\n"
                      + families.format_comparison(comparison, names))
    table = "\n\n".join(tables)
    summary = summaries[measured_families[0]]
    print()
    print(table)
    print(f"goals over {measured_families[0]}:")
    for name in TARGETS:
        if name in names:
            print(format_targets(summary, name))
    if "dns" in measured:
        print(udp.format_targets(summary, BASELINE))
    foreign = sorted(s["foreign_cpu"] for s in samples)
    if foreign:
        print(f"other work on the machine while measuring: median "
              f"{statistics.median(foreign):.2f} cores, worst sample {foreign[-1]:.2f} cores")
    for profile in profiles:
        title = f"py-spy ({profile['view']} view), localdirector under {profile['workload']}"
        if "summary" in profile:
            figures = profile["figures"]
            print()
            print(format_summary(profile["summary"], title))
            print(f"  process CPU: {figures.get('process_cpu_user', 0):.2f} cores user + "
                  f"{figures.get('process_cpu_system', 0):.2f} system, "
                  f"{figures.get('cpu_us_per_packet', 0):.1f} us per queued packet")
        else:
            print(f"{title}: {profile.get('error')}")
    for note in notes:
        print(f"note: {note}")
    result = {
        "machine": info,
        "config": {k: v for k, v in vars(args).items() if k != "json"},
        "contenders": _described(contenders),
        "summary": summary,
        "summaries": summaries,
        "family_comparison": comparison,
        "samples": samples,
        "profiles": profiles,
        "notes": notes,
        "table": table,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"\nresults written to {args.json}")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except LabError as exc:
        print(f"lab error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
