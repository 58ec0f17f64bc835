"""The appliance's own namespace through netlink (pyroute2): what `--host-network IFACE`
lets LocalDirector's `ip address`, `alias ip address`, `route` and `arp` lines do, and
the read side, `show route` and `show arp`; and `ping ADDR` (docs/design.rst,
"LocalDirector's language").

pyroute2 is imported when first needed: a director that never applies a host line,
and `--check`, do not need it (it is the `hostnet` extra of setup.cfg)."""

from __future__ import annotations

import re
import subprocess
from typing import Any

from localdirector.model.addr import format_ip
from localdirector.shell import args
from localdirector.shell.grammar import Keyword
from localdirector.shell.registry import EXEC, command
from localdirector.shell.session import CommandFailed, Session

SHOW = Keyword("show", "Show running system information")
# What `ip address` put on the interface, so a new `ip address` line replaces it.
_PRIMARY: dict[str, tuple[str, int]] = {}


def _netlink() -> Any:
    try:
        from pyroute2 import IPRoute
    except ImportError:
        raise CommandFailed("applying host network lines needs pyroute2 "
                            "(pip install 'localdirector[hostnet]')") from None
    return IPRoute()


def _index(ipr: Any, iface: str) -> int:
    found = ipr.link_lookup(ifname=iface)
    if not found:
        raise CommandFailed(f"no interface {iface} in the director's namespace")
    return found[0]


def _netlink_error(err: Exception) -> CommandFailed:
    code = getattr(err, "code", None)
    return CommandFailed(f"the kernel refused it: {err.args[-1] if err.args else err}"
                         + (f" (errno {code})" if code else ""))


def address(iface: str, addr: int, plen: int, kind: str, remove: bool) -> str:
    """Add (or remove) `addr/plen` on `iface`; `ip address` replaces the one it set."""
    text = format_ip(addr)
    with _netlink() as ipr:
        index = _index(ipr, iface)
        try:
            if kind == "ip address" and iface in _PRIMARY and not remove:
                old, old_plen = _PRIMARY.pop(iface)
                if (old, old_plen) != (text, plen):
                    ipr.addr("del", index=index, address=old, prefixlen=old_plen)
            if remove:
                ipr.addr("del", index=index, address=text, prefixlen=plen)
            else:
                ipr.addr("replace", index=index, address=text, prefixlen=plen)
        except Exception as err:  # pyroute2's NetlinkError, and any other refusal
            if getattr(err, "code", None) != 99:   # EADDRNOTAVAIL on del: already gone
                raise _netlink_error(err) from None
    if kind == "ip address" and not remove:
        _PRIMARY[iface] = (text, plen)
    return f"{'removed from' if remove else 'applied to'} {iface}: {text}/{plen}"


def route(net: str, gateway: str, metric: int, remove: bool) -> str:
    with _netlink() as ipr:
        try:
            if remove:
                ipr.route("del", dst=net, gateway=gateway, priority=metric)
            else:
                ipr.route("replace", dst=net, gateway=gateway, priority=metric)
        except Exception as err:
            raise _netlink_error(err) from None
    return f"route {net} via {gateway} {'removed' if remove else 'applied'}"


def neighbour(iface: str, addr: str, mac: str, remove: bool) -> str:
    with _netlink() as ipr:
        index = _index(ipr, iface)
        try:
            if remove:
                ipr.neigh("del", dst=addr, ifindex=index)
            else:
                ipr.neigh("replace", dst=addr, lladdr=mac, ifindex=index, state=0x80)
        except Exception as err:
            raise _netlink_error(err) from None
    return f"arp {addr} {mac} on {iface} {'removed' if remove else 'applied (permanent)'}"


def _ip_json(*argv: str) -> list[dict[str, Any]]:
    """The kernel's table through `ip -j` (as show interfaces reads the links)."""
    import json
    try:
        out = subprocess.run(["ip", "-j", *argv], capture_output=True, text=True,
                             check=True, timeout=10).stdout
        return json.loads(out or "[]")
    except (OSError, subprocess.SubprocessError, ValueError) as err:
        raise CommandFailed(f"cannot read the kernel's table: {err}") from None


@command(EXEC, SHOW, Keyword("route", "The appliance's routes (its namespace's table)"),
         output=True, locked=False)
def show_route(session: Session) -> None:
    """LocalDirector's columns: destination, mask (as a prefix), gateway, metric, how."""
    rows = [(r.get("dst", ""), r.get("gateway", "-"), r.get("dev", "-"),
             r.get("metric", 0), r.get("protocol", "-"))
            for r in _ip_json("-4", "route", "show")]
    session.print_table(("Destination", "Gateway", "Interface", "Metric", "Protocol"),
                        rows, empty="No routes")


@command(EXEC, SHOW, Keyword("arp", "The appliance's ARP table"), output=True,
         locked=False)
def show_arp(session: Session) -> None:
    rows = [(n.get("dst", ""), n.get("lladdr", "-"), n.get("dev", "-"),
             " ".join(n.get("state", ())) or "-")
            for n in _ip_json("-4", "neigh", "show")]
    session.print_table(("Address", "Hardware", "Interface", "State"), rows,
                        empty="No ARP entries")


_REPLY = re.compile(r"icmp_seq=(\d+).*time=([\d.]+) ms")
PING_COUNT = 5


@command(EXEC, Keyword("ping", "Send ICMP echoes from the appliance"),
         args.ip("addr", "Address to ping"), output=True, locked=False)
def ping(session: Session, addr: int) -> None:
    """IOS's (and LocalDirector's) shape: one `!` per answer, `.` per timeout, then the
    success rate and round-trip times; from the director's own namespace."""
    target = format_ip(addr)
    try:
        out = subprocess.run(["ping", "-n", "-c", str(PING_COUNT), "-i", "0.2", "-W", "2",
                              target], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as err:
        raise CommandFailed(f"cannot run ping: {err}") from None
    times = {int(seq): float(ms) for seq, ms in _REPLY.findall(out)}
    marks = "".join("!" if seq in times else "." for seq in range(1, PING_COUNT + 1))
    lines = ["Type escape sequence to abort.",
             f"Sending {PING_COUNT}, 100-byte ICMP Echos to {target}, timeout is 2 seconds:",
             marks]
    rate = f"Success rate is {100 * len(times) // PING_COUNT} percent " \
           f"({len(times)}/{PING_COUNT})"
    if times:
        values = list(times.values())
        rate += (f", round-trip min/avg/max = {round(min(values))}/"
                 f"{round(sum(values) / len(values))}/{round(max(values))} ms")
    session.print_lines([*lines, rate])
    session.record(target=target, sent=PING_COUNT, received=len(times),
                   rtt_ms=[times[s] for s in sorted(times)])
