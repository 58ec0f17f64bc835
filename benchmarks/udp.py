"""UDP in the lab benchmark (``python3 -m benchmarks.run``, workload ``dns``): DNS
queries a second from Debian's ``dnsperf`` in the client namespace to the ``dnsmasq``
the lab runs on each real (localdirector/lab/udpservers.py), through kernel NAT (nft
DNAT of udp 53, conntrack un-NATs the answers), the userspace path (a udp virtual,
round robin by flow) and direct routing, in the same interleaved runs as the TCP
workloads; the figures, their ratios to kernel NAT and the userspace path's CPU per
queued packet against its TCP keep-alive one go to the same table and JSON.

What each dnsperf process does: `CLIENTS` sockets (UDP flows, each its own source port)
with at most `OUTSTANDING` queries in flight, a query unanswered after `TIMEOUT` s
counted lost. A path that cannot keep up loses queries (the NFQUEUE overflows) rather
than slowing the clients down, so the lost count says what the path could not carry.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from localdirector.lab.udpservers import DNS_PORT, WHO_NAME

from localdirector.model.addr import IPV6

from .lab import Plan, netloc

QUERY_FILE = "dnsperf-queries.txt"
CLIENTS = 8          # sockets per dnsperf process: flows, as resolvers' ports are
OUTSTANDING = 200    # queries in flight per process
TIMEOUT = 1          # seconds before an unanswered query counts lost
# Goals of issue 25 item 9 (benchmark targets, not tests).
KERNEL_GOAL = 0.9    # the kernel-decided path's queries/s over kernel NAT's
PACKET_GOAL = 0.9    # TCP keep-alive CPU per packet over UDP's, on the userspace path
# The contenders of benchmarks/contenders.py with no UDP figure, and why.
NOT_YET = "not measured: no localdirector-kernel figure in this run"
NO_UDP = {
    "haproxy": "HAProxy's mode tcp balances TCP only",
    "nfqueue-null": "a TCP diagnostic: its worker is queued TCP only",
    "nfqueue-null-own": "a TCP diagnostic: its worker is queued TCP only",
    "nfqueue-null-own-2": "a TCP diagnostic: its worker is queued TCP only",
}


# Over IPv6 no contender has a DNS figure: the lab's dnsmasq listens on each real's
# IPv4 address only (localdirector/lab/udpservers.py).
NO_UDP6 = "the lab's dnsmasq answers on IPv4 only"


def no_udp(name: str, plan: Plan) -> str | None:
    """Why contender `name` serving `plan` has no DNS figure, or None if it has one."""
    return NO_UDP.get(name) or (NO_UDP6 if plan.family is IPV6 else None)


def query_file(work: Path) -> Path:
    """dnsperf's input, one query a line (read over and over): who.lab TXT, which every
    lab real answers with its name, 69 bytes."""
    path = work / QUERY_FILE
    path.write_text(f"{WHO_NAME} TXT\n")
    path.chmod(0o644)
    return path


def dnsperf_argv(target: str, seconds: float, queries: Path) -> list[str]:
    return ["dnsperf", "-s", target, "-p", str(DNS_PORT), "-d", str(queries),
            "-l", f"{seconds:g}", "-c", str(CLIENTS), "-q", str(OUTSTANDING),
            "-t", str(TIMEOUT)]


def _field(output: str, label: str) -> float | None:
    match = re.search(rf"^\s*{label}:\s+([\d.]+)", output, re.M)
    return float(match[1]) if match else None


def parse_dnsperf(output: str) -> dict[str, Any] | None:
    """dnsperf's statistics in the shape of a wrk report (benchmarks/wrk_report.lua):
    completed queries as `requests`, lost ones as an error kind, the run time; None
    when the run printed no statistics."""
    completed = _field(output, "Queries completed")
    lost = _field(output, "Queries lost")
    run_time = _field(output, r"Run time \(s\)")
    latency = _field(output, r"Average Latency \(s\)")
    if completed is None or lost is None or not run_time:
        return None
    return {"requests": int(completed), "errors": {"lost": int(lost)},
            "duration_us": round(run_time * 1e6),
            "latency_us": {"average": round((latency or 0.0) * 1e6, 1)}}


def nat_rule(plan: Plan, reals: str) -> str:
    """Kernel NAT's line for udp 53, as its TCP line: numgen round robin per new
    conntrack flow (a dnsperf socket's)."""
    return (f"    {plan.nft} daddr {plan.vip} udp dport {DNS_PORT} "
            f"dnat to numgen inc mod {len(plan.reals)} map {{ {reals} }}\n")


def udp_virtual(vip: str) -> str:
    """The appliance's udp virtual for DNS, which the fast-path contenders put on their
    paths beside the TCP one."""
    return f"{netloc(vip, DNS_PORT)}:0:udp"


def appliance_lines(vip: str, reals: tuple[str, ...], predictor: str = "roundrobin"
                    ) -> list[str]:
    """The appliance's udp virtual: the same reals, the TCP virtual's predictor (round
    robin by flow)."""
    virtual = udp_virtual(vip)
    ids = [f"{netloc(real, 0)}:0:udp" for real in reals]
    return [*(f"real {i} is" for i in ids), f"virtual {virtual} is",
            f"predictor {virtual} {predictor}", f"bind {virtual} {' '.join(ids)}"]


def _median(summary: dict[str, Any], key: str, name: str) -> float | None:
    stats = summary.get(key, {}).get("contenders", {}).get(name)
    return stats["median"] if stats else None


def format_targets(summary: dict[str, Any], baseline: str) -> str:
    """Issue 25 item 9's goals against this run's medians."""
    lines = ["UDP against its goals (medians of this run):"]
    nat = _median(summary, "dns.queries_per_s", baseline)
    kernel = _median(summary, "dns.queries_per_s", "localdirector-kernel")
    if nat and kernel:
        verdict = "met" if kernel / nat >= KERNEL_GOAL else "NOT met"
        lines.append(f"  kernel-decided queries/s  >= {KERNEL_GOAL} x {baseline}  "
                     f"measured {kernel / nat:.3f}  {verdict}")
    else:
        lines.append(f"  kernel-decided queries/s  >= {KERNEL_GOAL} x {baseline}  {NOT_YET}")
    udp = _median(summary, "dns.cpu_us_per_packet", "localdirector")
    tcp = _median(summary, "keepalive.cpu_us_per_packet", "localdirector")
    if udp and tcp:
        verdict = "met" if tcp / udp >= PACKET_GOAL else "NOT met"
        lines.append(f"  userspace CPU per packet  within {PACKET_GOAL} x its TCP keep-alive's "
                     f"({tcp:.1f} us): {udp:.1f} us, ratio {tcp / udp:.3f}  {verdict}")
    return "\n".join(lines)
