"""The lab benchmark: ``python3 -m benchmarks.run`` (as root, from the repository root).

Builds one namespace lab (benchmarks/lab.py: a client fleet over many source addresses,
the director, three nginx reals) and measures the contenders of benchmarks/contenders.py
(direct routing, kernel NAT, HAProxy, localdirector in userspace and with `fastpath`,
and the nfqueue-null diagnostic) on
four workloads with wrk, and DNS over UDP with dnsperf (benchmarks/udp.py). Contenders are interleaved: every run measures each of them
in turn, and the order rotates from run to run, so drift of the shared machine (other
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
import os
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

from . import machine, udp
from .contenders import Contender, ContenderUnavailable, LocalDirector, all_contenders, \
    queue_counters, reset_director
from .lab import LARGE_PATH, SMALL_PATH, VIP_PORT, BenchLab
from .profile import format_summary, record, summarize

HERE = Path(__file__).resolve().parent
WRK_SCRIPT = HERE / "wrk_report.lua"
DEFAULT_JSON = HERE / "results.json"
REQUIRED_TOOLS = {"wrk": "wrk", "nginx": "nginx-light", "haproxy": "haproxy", "nft": "nftables",
                  "conntrack": "conntrack", "setpriv": "util-linux", "curl": "curl",
                  "ip": "iproute2", "iptables": "iptables"}
DNS_TOOLS = {"dnsperf": "dnsperf", "dnsmasq": "dnsmasq-base"}
BASELINE = "kernel-nat"
REFERENCE_LATENCY = "direct"


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


@dataclass(frozen=True)
class Metric:
    workload: str
    key: str
    label: str
    unit: str
    higher_is_better: bool


WORKLOADS = {
    "keepalive": Workload("keepalive", SMALL_PATH, processes=0, rate="requests_per_s"),
    "close": Workload("close", SMALL_PATH, processes=0, close=True, rate="connections_per_s"),
    "bulk": Workload("bulk", LARGE_PATH, processes=1, timeout="60s", rate="megabytes_per_s",
                     per_byte=True),
    "latency": Workload("latency", SMALL_PATH, processes=1),
    # One dnsperf process per real (direct routing's targets), udp.CLIENTS flows each.
    "dns": Workload("dns", "", processes=3, rate="queries_per_s", tool="dnsperf"),
}
METRICS = [
    Metric("keepalive", "requests_per_s", "keep-alive requests/s", "req/s", True),
    Metric("close", "connections_per_s", "new connections/s", "conn/s", True),
    Metric("bulk", "megabytes_per_s", "bulk transfer MB/s", "MB/s", True),
    Metric("latency", "p50_us", "latency p50 (1 conn)", "us", False),
    Metric("latency", "p99_us", "latency p99 (1 conn)", "us", False),
    Metric("dns", "queries_per_s", "DNS queries/s (udp)", "q/s", True),
    Metric("keepalive", "cpu_us_per_packet", "keep-alive CPU/packet", "us", False),
    Metric("dns", "cpu_us_per_packet", "DNS CPU/packet (udp)", "us", False),
]


# ------------------------------------------------------------------- measuring
def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine: every namespace shares these CPUs."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def _stat(pid: int | str) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (which may hold spaces
    and parentheses), numbered from the state at 0; None once the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _proc_cpu(pid: int | None, children: bool = False) -> tuple[float, float]:
    """(user, system) CPU seconds, all threads, of ``pid`` so far (and of its live
    child processes with ``children``); zeros without one.

    The split matters for the appliance: system time is the kernel work its NFQUEUE
    system calls carry (receiving, and the verdict that sends the packet on its way),
    user time is everything Python does, the engine included."""
    own = _stat(pid) if pid is not None else None
    if own is None:
        return 0.0, 0.0
    stats = [own]
    for entry in os.scandir("/proc") if children else ():
        if entry.name.isdigit() and entry.name != str(pid):
            stat = _stat(entry.name)
            if stat is not None and int(stat[1]) == pid:
                stats.append(stat)
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(int(stat[11]) for stat in stats) / tick,
            sum(int(stat[12]) for stat in stats) / tick)


def _lab_inodes(bench: BenchLab) -> set[int]:
    """Network-namespace inodes of the lab: a process in one of them is ours."""
    inodes = set()
    for ns in bench.lab.namespaces:
        try:
            inodes.add(os.stat(f"/run/netns/{ns}").st_ino)
        except OSError:
            pass
    return inodes


_PF_KTHREAD = 0x00200000


def _foreign_cpu(ours: set[int]) -> dict[int, float]:
    """CPU seconds so far of every user process outside the lab's namespaces: other
    work on the machine, which skews the figures (our own harness idles while wrk runs).
    Kernel threads are left out: ksoftirqd and kworkers do the lab's own packet work
    when softirqs overflow, and they live in the host namespace."""
    tick = os.sysconf("SC_CLK_TCK")
    result = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry.name}/ns/net").st_ino in ours:
                continue
        except OSError:
            continue
        stat = _stat(entry.name)
        if stat is None or int(stat[6]) & _PF_KTHREAD:
            continue
        result[int(entry.name)] = (int(stat[11]) + int(stat[12])) / tick
    return result


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
    url = f"http://{contender.target(index)}:{VIP_PORT}{workload.path}"
    argv = ["wrk", "-t1", f"-c{per_process}", f"-d{duration:g}s", "--timeout",
            workload.timeout, "-s", str(bench.work / WRK_SCRIPT.name)]
    if workload.close:
        argv += ["-H", "Connection: close"]
    return [*argv, url]


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
    busy0, total0 = _cpu_times()
    ours = _lab_inodes(bench)
    foreign0 = _foreign_cpu(ours)
    pid = contender.pid
    proc_cpu0 = _proc_cpu(pid, contender.workers > 1)
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
    busy1, total1 = _cpu_times()
    foreign = sum(cpu - foreign0.get(p, 0.0) for p, cpu in _foreign_cpu(ours).items())
    sample: dict[str, Any] = {
        "processes": processes,
        "connections": processes * per_process,
        "failures": failures,
        "cpu_busy": round((busy1 - busy0) / max(1, total1 - total0), 3),
        "foreign_cpu": round(foreign / wall, 3),
    }
    if pid is not None:
        user1, system1 = _proc_cpu(pid, contender.workers > 1)
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


# ------------------------------------------------------------------ summarising
def summarize_samples(samples: list[dict[str, Any]], contenders: list[str]) -> dict[str, Any]:
    """Median, min, max per metric and contender; ratio of medians to kernel NAT; for
    latency also the microseconds added over direct routing."""
    summary: dict[str, Any] = {}
    for metric in METRICS:
        per: dict[str, Any] = {}
        for name in contenders:
            values = [s[metric.key] for s in samples
                      if s["contender"] == name and s["workload"] == metric.workload
                      and metric.key in s]
            if values:
                per[name] = {"median": statistics.median(values), "min": min(values),
                             "max": max(values), "runs": len(values)}
        if not per:
            continue  # a workload not run (--workloads) or run by nobody
        base = per.get(BASELINE, {}).get("median")
        reference = per.get(REFERENCE_LATENCY, {}).get("median")
        for entry in per.values():
            entry["ratio_to_kernel_nat"] = round(entry["median"] / base, 3) if base else None
            if metric.workload == "latency" and reference is not None:
                entry["added_us"] = entry["median"] - reference
        summary[f"{metric.workload}.{metric.key}"] = {
            "label": metric.label, "unit": metric.unit,
            "higher_is_better": metric.higher_is_better, "contenders": per}
    return summary


def _num(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.1f}"


def format_table(summary: dict[str, Any], contenders: list[Contender]) -> str:
    header = f"{'workload':<24} {'contender':<22} {'median':>10} {'min-max':>21} {'x NAT':>6}"
    lines = [header, "-" * len(header)]
    for key, entry in summary.items():
        for contender in contenders:
            stats = entry["contenders"].get(contender.name)
            if key.endswith(".cpu_us_per_packet") and not contender.every_packet:
                continue        # a per-packet cost only where every packet is queued
            if stats is None:
                why = ("unavailable (below)" if contender.unavailable
                       else key.startswith("dns.") and udp.NO_UDP.get(contender.name)
                       or "no result")
                lines.append(f"{entry['label']:<24} {contender.name:<22} {why}")
                continue
            span = f"{_num(stats['min'])}-{_num(stats['max'])}"
            ratio = stats["ratio_to_kernel_nat"]
            extra = ""
            if "added_us" in stats and contender.name != REFERENCE_LATENCY:
                extra = f"  ({stats['added_us']:+,.0f} us vs direct)"
            lines.append(f"{entry['label']:<24} {contender.name:<22} {_num(stats['median']):>10}"
                         f" {span:>21} {ratio if ratio is not None else '-':>6}{extra}")
        lines.append("")
    lines += [f"{c.name} unavailable: {c.unavailable}" for c in contenders if c.unavailable]
    return "\n".join(lines)


# Issue 16's goals, per contender: (figure, what it is compared with, at least this ratio).
# The reference is another contender of the same run, or None for an absolute figure.
_FAST = [("keepalive.requests_per_s", BASELINE, 0.97), ("close.connections_per_s", BASELINE, 0.9),
         *((key, "haproxy", 1.0) for key in ("keepalive.requests_per_s",
                                              "close.connections_per_s",
                                              "bulk.megabytes_per_s"))]
TARGETS: dict[str, list[tuple[str, str | None, float]]] = {
    "localdirector": [("keepalive.requests_per_s", "nfqueue-null", 0.95),
                      ("close.connections_per_s", "nfqueue-null", 0.95),
                      ("keepalive.requests_per_s", "haproxy", 1.0),
                      ("bulk.megabytes_per_s", None, 1000.0)],
    "localdirector-fastpath": _FAST,
    "localdirector-kernel": _FAST,
    # Issue 28: Maglev decided in the kernel, within 5 % of kernel NAT.
    "localdirector-kernel-maglev": [("keepalive.requests_per_s", BASELINE, 0.95),
                                    ("close.connections_per_s", BASELINE, 0.95)],
}


def format_targets(summary: dict[str, Any], name: str) -> str:
    """`name`'s goals against the medians of this run: met or not, and by how much."""
    lines = [f"{name} against its goals (medians of this run):"]
    for key, reference, goal in TARGETS.get(name, []):
        if key not in summary or name not in summary[key]["contenders"]:
            continue
        median = summary[key]["contenders"][name]["median"]
        if reference is None:
            got, want, shown = median, f">= {_num(goal)}", _num(median)
        else:
            other = summary[key]["contenders"].get(reference)
            if other is None or not other["median"]:
                continue
            got = median / other["median"]
            want, shown = f">= {goal:.2f} x {reference}", f"{got:.3f}"
        verdict = "met" if got >= goal else "NOT met"
        lines.append(f"  {summary[key]['label']:<24} {want:<26} measured {shown}  {verdict}")
    return "\n".join(lines)


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
    parser.add_argument("--settle", type=float, default=1.0,
                        help="pause between measurements, seconds [1]")
    parser.add_argument("--profile", type=float, default=0.0, metavar="SECONDS",
                        help="afterwards, py-spy the appliance for SECONDS under each of the "
                             "--profile-workloads, and once more under the first with C "
                             "frames (unscored) [0 = off]")
    parser.add_argument("--profile-workloads", default="keepalive,close",
                        help="the workloads --profile samples [keepalive,close]")
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
    contenders = [c for c in all_contenders() if c.name in wanted]
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
        print(f"lab {bench.lab.name}: {len(bench.sources)} client addresses, reals "
              f"{', '.join(bench.reals)}", flush=True)
        for run in range(args.runs):
            shift = run % len(contenders)
            for contender in contenders[shift:] + contenders[:shift]:
                if contender.unavailable:
                    continue
                try:
                    contender.start(bench)
                except ContenderUnavailable as exc:
                    contender.unavailable = str(exc)
                    print(f"run {run + 1}: {contender.name} unavailable: {exc}", flush=True)
                    contender.stop(bench)
                    notes += reset_director(bench)
                    continue
                for workload in workloads:
                    if workload.tool == "dnsperf" and contender.name in udp.NO_UDP:
                        continue    # said in the table (udp.NO_UDP)
                    time.sleep(args.settle)
                    sample = run_workload(bench, contender, workload, args.duration,
                                          args.connections, args.processes)
                    sample.update(run=run + 1, contender=contender.name, workload=workload.name)
                    samples.append(sample)
                    figures = {m.key: sample[m.key] for m in METRICS
                               if m.workload == workload.name and m.key in sample}
                    errors = {k: n for k, n in sample.get("errors", {}).items() if n}
                    print(f"run {run + 1} {contender.name:<22} {workload.name:<10} {figures} "
                          f"cpu {sample['cpu_busy']:.0%}"
                          + (f" other work {sample['foreign_cpu']:.2f} cores"
                             if sample["foreign_cpu"] >= 0.05 else "")
                          + (f" errors {errors}" if errors else "")
                          + (f" failures {sample['failures']}" if sample["failures"] else ""),
                          flush=True)
                notes += [f"run {run + 1} {contender.name}: {n}"
                          for n in contender.stop(bench) + reset_director(bench)]
        appliance = next((c for c in contenders if isinstance(c, LocalDirector)), None)
        if args.profile and appliance is not None and not appliance.unavailable:
            for name, native in passes:
                time.sleep(args.settle)
                profiles.append(_profile_pass(bench, appliance, args.profile,
                                              args.connections, WORKLOADS[name], native))

    names = [c.name for c in contenders]
    summary = summarize_samples(samples, names)
    table = format_table(summary, contenders)
    print()
    print(f"medians over {args.runs} runs x {args.duration:g} s; x NAT = ratio of medians to "
          "kernel NAT")
    print(table)
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
        "contenders": {c.name: {"description": c.description, "unavailable": c.unavailable}
                       for c in contenders},
        "summary": summary,
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
