"""What every network listener of the appliance shares: where it listens (`[ADDR:]PORT`)
and who it lets in (the model's access lists), with refusals logged at most once per
LOG_INTERVAL and source (docs/design.rst, "Operator access" and "Monitoring").

Floor 3, below access/ (the shell's doors) and monitor/ (the metrics endpoint): siblings
on floor 4 may not import each other, and both must apply the same parsing and the same
check, so that no door is weaker than another."""

from __future__ import annotations

import argparse
import logging
import time

from .model.addr import IPV6, family_of, format_ip, parse_ip
from .model.director import Director

# One logger for every refusal: `show syslog` shows who was kept out, whatever the door.
log = logging.getLogger("localdirector.access")

LOG_INTERVAL = 10.0       # seconds between two logged refusals of one kind and source


def listen_address(text: str) -> tuple[str, int]:
    """`[ADDR:]PORT`, ADDR an IPv4 address or an IPv6 one in brackets (`[2001:db8::1]:22`,
    RFC 3986: unbracketed, `2001:db8::1:22` could be either); no ADDR gives "" (the
    caller's default). The host comes back canonical, so logs and `ss` agree."""
    host, sep, port = text.rpartition(":")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"'{text}': expected [ADDR:]PORT, PORT 1-65535")
    if not sep:
        return "", int(port)
    inner = host[1:-1] if host[:1] == "[" and host[-1:] == "]" else None
    try:
        addr = parse_ip(host if inner is None else inner)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}': ADDR must be an IPv4 address or [IPv6]") from None
    if (family_of(addr) is IPV6) != (inner is not None):
        raise argparse.ArgumentTypeError(
            f"'{text}': an IPv6 ADDR goes in brackets ([2001:db8::1]:22), IPv4 without")
    return format_ip(addr), int(port)


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


def peer_address(peer: str) -> int | None:
    """The peer (a socket's text, maybe with a `%zone`) as the model's address int, for
    the access lists; IPv4-mapped IPv6 (`::ffff:198.51.100.9`, a dual-stack socket's
    view of an IPv4 peer) counts as IPv4, so one list entry covers both views."""
    try:
        addr = parse_ip(peer.split("%", 1)[0])
    except ValueError:
        return None
    if family_of(addr) is IPV6 and (addr & IPV6.all_ones) >> 32 == 0xFFFF:
        return addr & 0xFFFFFFFF
    return addr


def peer_allowed(director: Director, kind: str, peer: str) -> bool:
    """Apply the access list of `kind` (`ssh`, `telnet`, `metrics`) to a connecting peer
    address; a refusal is logged (rate-limited).

    Entries match by family (AccessEntry.admits): an IPv6 peer passes an IPv6 prefix
    and never an IPv4 entry, and the reverse; an empty list allows either."""
    with director.lock:
        entries = list(director.settings.access(kind))
    if not entries:
        return True
    addr = peer_address(peer)
    allowed = addr is not None and director.client_matches(entries, addr)
    if not allowed:
        REFUSALS.warning(f"acl {kind} {peer}",
                         "%s connection from %s refused by the access list", kind, peer)
    return allowed
