"""What every network listener of the appliance shares: where it listens (`[ADDR:]PORT`)
and who it lets in (the model's access lists), with refusals logged at most once per
LOG_INTERVAL and source (docs/design.rst, "Operator access" and "Monitoring").

Floor 3, below access/ (the shell's doors) and monitor/ (the metrics endpoint): siblings
on floor 4 may not import each other, and both must apply the same parsing and the same
check, so that no door is weaker than another."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import time

from .model.director import Director

# One logger for every refusal: `show syslog` shows who was kept out, whatever the door.
log = logging.getLogger("localdirector.access")

LOG_INTERVAL = 10.0       # seconds between two logged refusals of one kind and source


def listen_address(text: str) -> tuple[str, int]:
    """`[ADDR:]PORT` (ADDR may be `[v6]`); no ADDR gives "" (the caller's default)."""
    host, sep, port = text.rpartition(":")
    if sep and host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"'{text}': expected [ADDR:]PORT, PORT 1-65535")
    return host, int(port)


class QuietLog:
    """Warnings that repeat (one per refused connection) logged once per LOG_INTERVAL and
    key; the next one says how many were left out. Keys are bounded by the sources that
    can connect at all, and forgotten once quiet."""

    def __init__(self, interval: float = LOG_INTERVAL) -> None:
        self.interval = interval
        self._last: dict[str, tuple[float, int]] = {}

    def warning(self, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if len(self._last) > 1024:
            self._last = {k: v for k, v in self._last.items() if now - v[0] < self.interval}
        last, left_out = self._last.get(key, (-self.interval, 0))
        if now - last < self.interval:
            self._last[key] = (last, left_out + 1)
            return
        self._last[key] = (now, 0)
        if left_out:
            message += f" ({left_out} more not logged)"
        log.warning(message, *args)


REFUSALS = QuietLog()


def peer_ipv4(peer: str) -> int | None:
    """The peer as an int for the access lists; IPv4-mapped IPv6 counts as IPv4."""
    try:
        addr = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is None:
            return None
        addr = addr.ipv4_mapped
    return int(addr)


def peer_allowed(director: Director, kind: str, peer: str) -> bool:
    """Apply the access list of `kind` (`ssh`, `telnet`, `metrics`) to a connecting peer
    address; a refusal is logged (rate-limited).

    An IPv6 peer cannot match an IPv4 list, so it is allowed only while the list is
    empty, exactly like any IPv4 peer."""
    with director.lock:
        entries = list(director.settings.access(kind))
    if not entries:
        return True
    addr = peer_ipv4(peer)
    allowed = addr is not None and director.client_matches(entries, addr)
    if not allowed:
        REFUSALS.warning(f"acl {kind} {peer}",
                         "%s connection from %s refused by the access list", kind, peer)
    return allowed
