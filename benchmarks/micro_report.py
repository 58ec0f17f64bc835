"""The micro benchmark's targets and its text report (benchmarks/micro.py)."""

from __future__ import annotations

from typing import Any

from . import machine
from .profile import format_summary

# The targets. "SYN decision" is Director.decide (which instance, which real);
# the whole SYN packet (checksum check, table insert, translation) is reported beside it.
TARGETS = {"decision": 5.0, "translate_in": 3.0, "translate_out": 3.0}
BYTES_TARGET = 400


def _verdict(value: float, target: float) -> str:
    return "met" if value <= target else "NOT met"


def format_report(result: dict[str, Any]) -> str:
    cfg = result["config"]
    lines = [f"machine: {machine.one_line(result['machine'])}",
             f"{cfg['assigns']:,} assign prefixes, {cfg['conns']:,} live connections "
             f"(populated in {result['populate']['seconds']} s); {cfg['repeat']} repeats of "
             f"{cfg['samples']:,} operations in batches of {cfg['batch']}",
             "times in us per operation: median batch (median over repeats), the repeats' "
             "range, 99th-percentile batch, slowest batch",
             "",
             f"{'operation':<44} {'median':>7} {'range':>13} {'p99':>7} {'worst':>7}  target"]

    def row(label: str, fig: dict[str, float], target: float | None = None) -> None:
        verdict = f"<= {target:g} us {_verdict(fig['median_us'], target)}" if target else ""
        spread = f"{fig['min_us']:.2f}-{fig['max_us']:.2f}"
        lines.append(f"{label:<44} {fig['median_us']:>7.2f} {spread:>13} "
                     f"{fig['p99_batch_us']:>7.2f} {fig['max_batch_us']:>7.2f}  {verdict}")

    row("SYN decision: Director.decide", result["decision"]["decide"], TARGETS["decision"])
    row("  of which Bind ID lookup (lookup_virtual)", result["decision"]["lookup_virtual"])
    if "decision_ipv6" in result:
        row("IPv6 SYN decision: Director.decide", result["decision_ipv6"]["decide"],
            TARGETS["decision"])
        row("  of which Bind ID lookup (lookup_virtual)",
            result["decision_ipv6"]["lookup_virtual"])
    row("SYN packet: Engine.handle, new connection", result["syn_packet"])
    row("established client->real: Engine.handle", result["established"]["translate_in"],
        TARGETS["translate_in"])
    row("established real->client: Engine.handle", result["established"]["translate_out"],
        TARGETS["translate_out"])
    row("short connection, 10 packets (per conn)", result["lifecycle"])
    lines.append(f"  = {result['lifecycle']['us_per_packet']:.2f} us per packet "
                 "(including building the reply packets)")
    lines.append("floor (no engine):")
    for name, fig in result["floor"].items():
        row(f"  {name}", fig)
    gc_figures = result["gc"]
    lines.append(f"garbage collector: a full collection over the live objects takes "
                 f"{gc_figures['full_collection_ms']:.0f} ms, "
                 f"{gc_figures['frozen_collection_ms']:.1f} ms once frozen as the worker "
                 f"freezes them; {gc_figures['full_collections_while_timing']} ran during "
                 "the timed phases (not frozen here)")
    mem = result["memory"]
    lines += ["", f"memory: {mem['bytes_per_connection']:.0f} bytes per connection over "
                  f"{mem['connections']:,} connections (target <= {BYTES_TARGET}: "
                  f"{_verdict(mem['bytes_per_connection'], BYTES_TARGET)})"]
    for site in mem["top_sites"]:
        lines.append(f"  {site['bytes_per_connection']:>7.1f}  {site['site']}")
    profile = result.get("profile")
    if profile:
        lines.append("")
        if "summary" in profile:
            title = f"py-spy over {profile['connections']:,} short connections"
            lines.append(format_summary(profile["summary"], title))
        else:
            lines.append(f"profile: {profile['error']}")
    return "\n".join(lines)


