"""The failover pair's commands, LocalDirector's where it had them: `failover`,
`failover ip address` (IPv4: the failover link is), `failover key`, `failover poll MS
[holdtime MS]`, `failover virtual` (either family),
`replicate`,
`failover active`, `failover reset`, `write standby`, `show failover`
(docs/design.rst, "Failover").

Configuration lives in the model (model/failover.py). What only the running pair knows
(role, peer, daemons) comes through `FailoverHandle`, which the failover service
(localdirector/failover/) attaches to its appliance; without it (no `--failover-link`)
`show failover` shows the configuration alone and the actions refuse."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

from localdirector.model.addr import family_of, format_ip, is_v6, parse_ip
from localdirector.model.bindid import network_words
from localdirector.model.director import Director
from localdirector.model.failover import (DEFAULT_HOLD_MS, DEFAULT_POLL_MS, HOLD_FACTOR,
                                          HOLD_RANGE_MS, POLL_RANGE_MS, FailoverStatus)
from localdirector.shell import args
from localdirector.model import peerkey
from localdirector.shell.grammar import Arg, ArgError, Keyword, choice, opt
from localdirector.shell.registry import EXEC, Mode, command
from localdirector.shell.session import CommandFailed, Session


CONFIG = Mode.CONFIG
PRIV = Mode.PRIV
FAILOVER = Keyword("failover", "Failover pair settings and actions")


class FailoverHandle(Protocol):
    """The running pair, as the commands reach it."""

    def status(self) -> FailoverStatus: ...

    def take_over(self) -> str:
        """`failover active`: become active now; returns what happened, one line."""

    def reset(self) -> str:
        """`failover reset`: rewrite and restart the helpers, clear a fault."""

    def push_config(self) -> str:
        """`write standby`: send the whole running-config to the standby now and have
        it saved there; returns what happened, one line."""


def _handle(session: Session) -> FailoverHandle:
    handle = session.appliance.failover
    if handle is None:
        raise CommandFailed("failover is not running on this unit "
                            "(start the appliance with --failover-link IFACE)")
    return handle


# -- configuration, in running-config order ------------------------------------------------

@command(CONFIG, FAILOVER, Keyword("ip", "The other unit's address"),
         Keyword("address", "The other unit's address on the failover link"),
         args.ipv4("addr", "Its address"), no=3,
         saver=lambda d: [(format_ip(d.settings.failover.peer),)]
         if d.settings.failover.peer else [])
def failover_ip(session: Session, addr: int = 0, no: bool = False) -> None:
    session.director.set_failover_peer(0 if no else addr)


def _saved_key(director: Director) -> list[Sequence[object]]:
    key = director.settings.failover.key
    if key is None:
        return []
    return [("none",)] if key == peerkey.NONE else [("hashed", peerkey.stored(key))]


@command(CONFIG, FAILOVER, Keyword("key", "The shared key authenticating the units' stream"),
         choice(Keyword("none", "Run the stream unauthenticated: anyone reaching the "
                                "link's TCP 7405 can act as the other unit", "none", True),
                (Keyword("hashed", "The key as the running-config stores it"),
                 args.word("hashed", "43 characters of base64")),
                args.word("passphrase", f"The same passphrase on both units "
                                        f"(at least {peerkey.MIN_PASSPHRASE} characters)")),
         no=2, saver=_saved_key, locked=False)
def failover_key(session: Session, passphrase: str = "", hashed: str = "",
                 none: bool = False, no: bool = False) -> None:
    """scrypt runs before the model lock is taken (as for passwords)."""
    key = (None if no else peerkey.NONE if none else
           peerkey.parse_stored(hashed) if hashed else peerkey.derive(passphrase))
    with session.director.lock:
        session.director.set_failover_key(key)


def _saved_timing(director: Director) -> list[Sequence[object]]:
    config = director.settings.failover
    if (config.poll_ms, config.hold_ms) == (DEFAULT_POLL_MS, DEFAULT_HOLD_MS):
        return []
    return [(config.poll_ms, "holdtime", config.hold_ms)]


# PIX's `failover poll SECONDS [holdtime SECONDS]`, in milliseconds: one line sets both,
# so replaying it never meets a hold time checked against the previous poll.
@command(CONFIG, FAILOVER,
         Keyword("poll", f"Hello interval, milliseconds [{DEFAULT_POLL_MS}]"),
         args.number("ms", *POLL_RANGE_MS, "Milliseconds, a multiple of 10"),
         opt(Keyword("holdtime", f"Silence before the peer counts as gone "
                                 f"[{HOLD_FACTOR} polls]"),
             args.number("hold", *HOLD_RANGE_MS, "Milliseconds, at least 4 polls")),
         no=2, saver=_saved_timing)
def failover_poll(session: Session, ms: int = DEFAULT_POLL_MS, hold: int | None = None,
                  no: bool = False) -> None:
    if no:
        session.director.set_failover_timing(DEFAULT_POLL_MS, DEFAULT_HOLD_MS)
    else:
        session.director.set_failover_timing(ms, HOLD_FACTOR * ms if hold is None else hold)


def _interface_address(text: str, _session: object) -> tuple[int, int | None]:
    """`ADDR[/LEN]` as `ip addr add` takes it: the host's address and its network's
    length (so host bits are the point, unlike `assign`'s networks)."""
    addr_text, slash, length = text.partition("/")
    try:
        addr = parse_ip(addr_text)
    except ValueError as err:
        raise ArgError(str(err)) from None
    width = family_of(addr).width
    if slash and not (length.isdigit() and int(length) <= width):
        raise ArgError(f"invalid prefix length '{length}' (0-{width})", len(addr_text) + 1)
    return addr, int(length) if slash else None


@command(CONFIG, FAILOVER,
         Keyword("virtual", "An address that moves to the active unit"),
         Arg("addr", "ADDR[/LEN]", "The address clients or reals route through, IPv6 as "
                                   "ADDR/LEN", _interface_address), opt(args.mask()), no=3,
         saver=lambda d: [network_words(a, p) for a, p in d.settings.failover.virtuals])
def failover_virtual(session: Session, addr: tuple[int, int | None], mask: int | None = None,
                     no: bool = False) -> None:
    """`failover virtual IP MASK` as LocalDirector had it, or `ADDR/LEN` of either
    family (no length: a host, /32 or /128)."""
    vip, length = addr
    if mask is not None and (length is not None or is_v6(vip)):
        raise CommandFailed("a mask follows an IPv4 address only: write ADDR/LEN")
    if no:
        session.director.remove_failover_virtual(vip)
    else:
        session.director.add_failover_virtual(
            vip, next(n for n in (mask, length, family_of(vip).width) if n is not None))


@command(CONFIG, Keyword("replicate", "Copy connections to the standby (stateful failover)"),
         no=1, saver=lambda d: [()] if d.settings.failover.replicate else [])
def replicate(session: Session, no: bool = False) -> None:
    session.director.set_replicate(not no)


@command(CONFIG, FAILOVER, no=1,
         saver=lambda d: [()] if d.settings.failover.enabled else [])
def failover(session: Session, no: bool = False) -> None:
    session.director.set_failover(not no)


# -- actions -----------------------------------------------------------------------------

@command(PRIV, FAILOVER, Keyword("active", "Make this unit the active one now"),
         locked=False)
def failover_active(session: Session) -> None:
    session.print(_handle(session).take_over())


@command(PRIV, FAILOVER,
         Keyword("reset", "Restart keepalived and conntrackd, clear a fault"), locked=False)
def failover_reset(session: Session) -> None:
    session.print(_handle(session).reset())


@command(PRIV, Keyword("write", "Save or show the running configuration"),
         Keyword("standby", "Send the running configuration to the standby unit"),
         locked=False)
def write_standby(session: Session) -> None:
    session.print("Building configuration...")
    session.print(_handle(session).push_config())


# -- show failover -------------------------------------------------------------------------

def _seconds(value: float) -> str:
    return f"{int(value)} (sec)"


def key_state(key: bytes | None) -> str:
    """The key as `show failover` names it: never the key itself."""
    return "unset" if key is None else "none" if key == peerkey.NONE else "set"


_KEY_LINES = {"set": "Failover key ******** (shared key set)",
              "none": "Failover key none: the stream to the other unit is unauthenticated",
              "unset": "Failover key not set: no stream to the other unit "
                       "(no configuration copy, replication or step-down)"}


def render(config_enabled: bool, poll_ms: int, hold_ms: int, replicate_on: bool,
           key: str, status: FailoverStatus | None) -> list[str]:
    """LocalDirector's `show failover` layout: the pair, then this host and the other.
    `key`: `key_state`'s word."""
    lines = [f"Failover {'On' if config_enabled else 'Off'}",
             f"Poll frequency {poll_ms} milliseconds, holdtime {hold_ms} milliseconds",
             f"Replication {'On' if replicate_on else 'Off'}", _KEY_LINES[key]]
    if status is None:
        lines.append("Failover service not running on this unit (no --failover-link)")
        return lines
    lines[2] += f": {status.replication}"
    lines += [
        f"Failover link {status.link}: {status.link_state}",
        f"        This host: {status.unit} - {status.role}",
        f"                Active time: {_seconds(status.active_seconds)}",
        f"                Failover link {status.link} ({status.own_address}): "
        f"{status.link_state}",
    ]
    for daemon in status.daemons:
        state = (f"running (pid {daemon.pid})" if daemon.pid is not None
                 else "DOWN, being restarted")
        restarts = f", restarted {daemon.restarts} times" if daemon.restarts else ""
        lines.append(f"                {daemon.name}: {state}{restarts}")
    other = "Secondary" if status.unit == "Primary" else "Primary"
    lines += [
        f"        Other host: {other} - {status.peer_role}",
        f"                Active time: {_seconds(status.peer_active_seconds)}",
    ]
    return lines


@command(EXEC, Keyword("show", "Show running system information"),
         Keyword("failover", "The failover pair: this unit, the other, link, replication"),
         output=True)
def show_failover(session: Session) -> None:
    config = session.director.settings.failover
    handle = session.appliance.failover
    status = handle.status() if handle is not None else None
    key = key_state(config.key)
    session.print_lines(render(config.enabled, config.poll_ms, config.hold_ms,
                               config.replicate, key, status))
    session.record(enabled=config.enabled, poll_ms=config.poll_ms, hold_ms=config.hold_ms,
                   replicate=config.replicate, key=key,
                   status=None if status is None else dataclasses.asdict(status))
