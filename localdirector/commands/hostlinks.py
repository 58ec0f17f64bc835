"""The appliance's own namespace through netlink (pyroute2): what `--host-network IFACE`
lets LocalDirector's `ip address`, `alias ip address`, `route` and `arp` lines do, and
the read side, `show route` and `show arp`; and `ping ADDR` (docs/design.rst,
"LocalDirector's language").

pyroute2 is imported when first needed: a director that never applies a host line,
and `--check`, do not need it (it is the `hostnet` extra of setup.cfg)."""

from __future__ import annotations

import os
import select
import socket
import struct
import subprocess
import time
from typing import Any

from localdirector.model.addr import format_ip
from localdirector.shell import args
from localdirector.shell.grammar import Keyword
from localdirector.shell.registry import EXEC, command
from localdirector.shell.session import CommandFailed, Session

SHOW = Keyword("show", "Show running system information")
# What `ip address` put on each interface, so a new `ip address` line replaces it. Kept
# here, not in the model: a `reload` replays into a fresh model, and the old address is
# still on the interface.
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


def route(net: str, gateway: str | None, metric: int, remove: bool) -> str:
    """`replace` the route, or delete it (`no route DEST MASK` names no gateway)."""
    via = {} if gateway is None else {"gateway": gateway}
    with _netlink() as ipr:
        try:
            if remove:
                ipr.route("del", dst=net, **via)
            else:
                ipr.route("replace", dst=net, priority=metric, **via)
        except Exception as err:
            raise _netlink_error(err) from None
    return f"route {net}{f' via {gateway}' if gateway else ''} " \
           f"{'removed' if remove else 'applied'}"


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


_DEFAULT = {"default": "0.0.0.0/0"}   # as LocalDirector wrote it: an address and a mask


@command(EXEC, SHOW, Keyword("route", "The appliance's routes (its namespace's table)"),
         output=True, locked=False)
def show_route(session: Session) -> None:
    """LocalDirector's columns: destination, mask (as a prefix), gateway, metric, how."""
    rows = [(_DEFAULT.get(r.get("dst", ""), r.get("dst", "")), r.get("gateway", "-"), r.get("dev", "-"),
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


PING_COUNT = 5
PING_TIMEOUT = 2.0
PING_SIZE = 100           # bytes of each datagram, as IOS's default
_ECHO = struct.Struct("!BBHHH")


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _icmp_socket() -> tuple[socket.socket, bool]:
    """An unprivileged ICMP datagram socket where the host allows it, else a raw one
    (root); True when replies come with their IP header (raw)."""
    try:
        return socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP), False
    except OSError:
        return socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP), True


def echo_times(target: str, count: int = PING_COUNT) -> list[float | None]:
    """Round-trip milliseconds of each echo, None for one unanswered in PING_TIMEOUT."""
    sock, raw = _icmp_socket()
    ident = os.getpid() & 0xFFFF
    payload = bytes(PING_SIZE - 28)
    times: list[float | None] = []
    with sock:
        for seq in range(1, count + 1):
            header = _ECHO.pack(8, 0, 0, ident, seq)
            packet = _ECHO.pack(8, 0, _checksum(header + payload), ident, seq) + payload
            sent = time.monotonic()
            sock.sendto(packet, (target, 0))
            times.append(_answer(sock, raw, ident, seq, sent))
    return times


def _answer(sock: socket.socket, raw: bool, ident: int, seq: int,
            sent: float) -> float | None:
    deadline = sent + PING_TIMEOUT
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([sock], [], [], left)[0]:
            break
        data = sock.recv(2048)
        if raw:
            data = data[(data[0] & 0x0F) * 4:]
        if len(data) < _ECHO.size:
            continue
        kind, _code, _sum, got_ident, got_seq = _ECHO.unpack_from(data)
        # A datagram socket's id is the kernel's: its replies are ours alone.
        if kind == 0 and got_seq == seq and (not raw or got_ident == ident):
            return (time.monotonic() - sent) * 1000
    return None


@command(EXEC, Keyword("ping", "Send ICMP echoes from the appliance"),
         args.ipv4("addr", "Address to ping"), output=True, locked=False)
def ping(session: Session, addr: int) -> None:
    """IOS's (and LocalDirector's) shape: one `!` per answer, `.` per timeout, then the
    success rate and round-trip times; from the director's own namespace."""
    target = format_ip(addr)
    try:
        times = echo_times(target)
    except OSError as err:
        raise CommandFailed(f"cannot ping {target}: {err.strerror or err}") from None
    answered = [t for t in times if t is not None]
    rate = (f"Success rate is {100 * len(answered) // PING_COUNT} percent "
            f"({len(answered)}/{PING_COUNT})")
    if answered:
        rate += (f", round-trip min/avg/max = {round(min(answered))}/"
                 f"{round(sum(answered) / len(answered))}/{round(max(answered))} ms")
    session.print_lines([
        "Type escape sequence to abort.",
        f"Sending {PING_COUNT}, {PING_SIZE}-byte ICMP Echos to {target}, timeout is "
        f"{PING_TIMEOUT:g} seconds:",
        "".join("." if t is None else "!" for t in times), rate])
    session.record(target=target, sent=PING_COUNT, received=len(answered),
                   rtt_ms=[None if t is None else round(t, 3) for t in times])
