"""IPv6 beside IPv4 in one run of ``benchmarks.run`` (issue 26, item 8): each path's
ratio to its own family's kernel NAT, IPv6's next to IPv4's, and the difference.

Why ratios and not the figures themselves: IPv6 costs every path a little more (40-byte
headers, a bigger conntrack key), kernel NAT included, so the question is whether a
path loses *more* over IPv6 than the kernel does. The goal is each of localdirector's
paths' IPv6 ratio within `GOAL` of its IPv4 ratio (the other contenders are shown as
yardsticks, with no goal). Besides the ratio of medians, each run's own pair of
ratios (both families measured back to back in that run) gives a difference per run:
their min-max is how far a single run's answer moves on this machine. Pure functions
of the samples; nothing here asserts a timing.
"""

from __future__ import annotations

from typing import Any

from .report import BASELINE, METRICS

GOAL = 0.1
FAMILIES = ("ipv4", "ipv6")
# The throughput figures (the ratios the goal speaks of), not latency or CPU.
COMPARED = [m for m in METRICS if m.higher_is_better]
OURS = "localdirector"   # the contenders the goal is about: every path of the appliance


def _by_run(samples: list[dict[str, Any]], workload: str, key: str, name: str,
            family: str) -> dict[int, float]:
    return {s["run"]: s[key] for s in samples
            if s["contender"] == name and s["workload"] == workload
            and s.get("family", "ipv4") == family and key in s}


def run_differences(samples: list[dict[str, Any]], workload: str, key: str,
                    name: str) -> list[float]:
    """Per run: (IPv6 / IPv6 kernel NAT) - (IPv4 / IPv4 kernel NAT), for the runs in
    which all four were measured."""
    ratios = []
    for family in FAMILIES:
        mine = _by_run(samples, workload, key, name, family)
        base = _by_run(samples, workload, key, BASELINE, family)
        ratios.append({run: value / base[run] for run, value in mine.items()
                       if base.get(run)})
    return [ratios[1][run] - ratios[0][run] for run in sorted(ratios[0].keys() & ratios[1])]


def compare(summaries: dict[str, dict[str, Any]],
            samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Per throughput figure: kernel NAT's IPv6 median over its IPv4 one, and per path
    both ratios, their difference, the per-run differences' range and the goal."""
    if not all(family in summaries for family in FAMILIES):
        return {}
    comparison: dict[str, Any] = {}
    for metric in COMPARED:
        key = f"{metric.workload}.{metric.key}"
        per = [summaries[family].get(key, {}).get("contenders", {}) for family in FAMILIES]
        if not per[0] or not per[1]:
            continue
        entry: dict[str, Any] = {"label": metric.label, "contenders": {}}
        if BASELINE in per[0] and BASELINE in per[1] and per[0][BASELINE]["median"]:
            entry["kernel_nat_ipv6_over_ipv4"] = round(
                per[1][BASELINE]["median"] / per[0][BASELINE]["median"], 3)
        for name in per[0].keys() & per[1].keys():
            ratios = [p[name]["ratio_to_kernel_nat"] for p in per]
            if name == BASELINE or None in ratios:
                continue
            runs = run_differences(samples, metric.workload, metric.key, name)
            difference = round(ratios[1] - ratios[0], 3)
            entry["contenders"][name] = {
                "ipv4": ratios[0], "ipv6": ratios[1], "difference": difference,
                "run_differences": [round(d, 3) for d in runs],
                "goal_met": abs(difference) <= GOAL if name.startswith(OURS) else None}
        comparison[key] = entry
    return comparison


_VERDICT = {True: "met", False: "NOT met", None: "-"}


def format_comparison(comparison: dict[str, Any], names: list[str]) -> str:
    """The table docs/benchmarks.rst shows: x NAT per family, the difference, each run's
    difference (min-max) and the goal, in the order of `names`."""
    header = (f"{'workload':<24} {'contender':<22} {'IPv4 x NAT':>10} {'IPv6 x NAT':>10} "
              f"{'IPv6-IPv4':>9} {'per run':>15}  goal |diff| <= {GOAL}")
    lines = [header, "-" * len(header)]
    for entry in comparison.values():
        if "kernel_nat_ipv6_over_ipv4" in entry:
            lines.append(f"{entry['label']:<24} {BASELINE:<22} IPv6 median "
                         f"{entry['kernel_nat_ipv6_over_ipv4']:.3f} x IPv4's")
        for name in names:
            row = entry["contenders"].get(name)
            if row is None:
                continue
            runs = row["run_differences"]
            spread = f"{min(runs):+.3f}..{max(runs):+.3f}" if runs else "-"
            lines.append(f"{entry['label']:<24} {name:<22} {row['ipv4']:>10.3f} "
                         f"{row['ipv6']:>10.3f} {row['difference']:>+9.3f} {spread:>15}  "
                         f"{_VERDICT[row['goal_met']]}")
        lines.append("")
    return "\n".join(lines)

