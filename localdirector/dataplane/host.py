"""What the data plane reads of the host it runs on: the kernel's counters of our queue
and of malformed IPv4, and the settings and routes that would silently break translation
(warned about at start). Each reader takes its /proc path, so tests hand it a file."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from ..model.addr import V6, format_ip

PROC_QUEUES = Path("/proc/net/netfilter/nfnetlink_queue")
PROC_IPV4 = Path("/proc/sys/net/ipv4")
PROC_IPV6_FORWARDING = Path("/proc/sys/net/ipv6/conf/all/forwarding")
PROC_ROUTES = Path("/proc/net/route")
PROC_SNMP = Path("/proc/net/snmp")


@dataclass(frozen=True, slots=True)
class QueueCounters:
    """One line of /proc/net/netfilter/nfnetlink_queue: the kernel's view of our queue."""

    waiting: int        # packets queued to us, not yet given a verdict
    queue_dropped: int  # dropped because the queue was full (max_len)
    user_dropped: int   # dropped because our netlink socket buffer was full


def read_queue_counters(queue_num: int, path: Path = PROC_QUEUES) -> QueueCounters | None:
    """None when the queue is not bound in this network namespace."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) >= 7 and fields[0] == str(queue_num):
            return QueueCounters(int(fields[2]), int(fields[5]), int(fields[6]))
    return None


def forwarding_problems(root: Path = PROC_IPV4) -> list[str]:
    """Kernel settings that would silently break translation, as operator warnings.

    Replies leave the director with the VIP as source address although they arrive from
    the reals' side; strict reverse-path filtering (rp_filter=1) on that interface drops
    them as martians, because the route back to the VIP does not point there."""
    problems = []
    if _read_int(root / "ip_forward") == 0:
        problems.append("net.ipv4.ip_forward is 0: the director will not forward to the "
                        "reals (sysctl -w net.ipv4.ip_forward=1)")
    conf = root / "conf"
    default = _read_int(conf / "all" / "rp_filter") or 0
    strict = sorted(iface.name for iface in conf.iterdir() if iface.name not in ("all", "default")
                    and max(default, _read_int(iface / "rp_filter") or 0) == 1) \
        if conf.is_dir() else []
    if strict:
        problems.append(f"strict rp_filter on {', '.join(strict)}: translated replies may be "
                        "dropped as martians (set net.ipv4.conf.*.rp_filter to 0 or 2)")
    return problems


def ipv6_problems(vips: set[int], path: Path = PROC_IPV6_FORWARDING) -> list[str]:
    """IPv6 forwarding off while an IPv6 VIP is configured, as an operator warning."""
    if any(vip >= V6 for vip in vips) and _read_int(path) == 0:
        return ["net.ipv6.conf.all.forwarding is 0: the director will not forward IPv6 "
                "to the reals (sysctl -w net.ipv6.conf.all.forwarding=1)"]
    return []


def route_problems(vips: set[int], path: Path = PROC_ROUTES) -> list[str]:
    """VIPs this host has no route toward, as operator warnings.

    Nothing needs one to translate; but when a reply (source: the VIP) is too big for
    the clients' side, the kernel must send "fragmentation needed" *to the VIP* for the
    engine to pass it on to the real, and without a route it sends nothing at all:
    path-MTU discovery black-holes downloads. Any route does (a default route). IPv4
    VIPs only (this reads /proc/net/route): an IPv6 VIP needs a route as much, for
    Packet Too Big, and is not checked here."""
    try:
        rows = [line.split() for line in path.read_text().splitlines()[1:]]
    except OSError:
        return []
    # Destination and mask are the network-order words printed as native integers.
    routes = [(socket.ntohl(int(r[1], 16)), socket.ntohl(int(r[7], 16)))
              for r in rows if len(r) > 7]
    return [f"no route toward VIP {format_ip(vip)}: path-MTU errors about replies cannot "
            "reach the reals (add one; a default route will do)"
            for vip in sorted(vips)
            if vip < V6 and not any(vip & mask == dest for dest, mask in routes)]


def read_ip_errors(path: Path = PROC_SNMP) -> dict[str, int]:
    """The kernel's own drops of malformed IPv4 before any hook (bad header or header
    checksum, failed reassembly), for `show statistics`: whole namespace, not just ours."""
    try:
        names, values = (line.split()[1:] for line in path.read_text().splitlines()
                         if line.startswith("Ip:"))
    except (OSError, ValueError):
        return {}
    counters = dict(zip(names, map(int, values)))
    return {"header errors": counters.get("InHdrErrors", 0),
            "reassembly failures": counters.get("ReasmFails", 0)}


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None
