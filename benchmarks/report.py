"""What benchmarks.run reports: each metric's median, spread and ratio to kernel NAT over
the interleaved runs, the table docs/benchmarks.rst shows, and every contender's goals
against this run's medians. Pure functions of the samples, apart from the measuring."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from . import udp
from .contenders import Contender

BASELINE = "kernel-nat"
REFERENCE_LATENCY = "direct"


@dataclass(frozen=True)
class Metric:
    workload: str
    key: str
    label: str
    unit: str
    higher_is_better: bool


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
                       else key.startswith("dns.") and udp.no_udp(contender.name, contender.plan)
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
