"""Exec-mode commands: privilege, modes, the terminal, saving, reloading, sessions and the
`test assign` what-if."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from localdirector.model.addr import bracketed, family_of, format_ip
from localdirector.model.bindid import network_words
from localdirector.model.family import NAT64
from localdirector.model.director import Director
from localdirector.model.passwords import FAILED_PASSWORDS, verify_password
from localdirector.model.serverid import ALL_PORTS, UDP_SERVICE
from localdirector.shell import args, config_file, running_config
from localdirector.shell.grammar import Keyword, choice, opt
from localdirector.shell.registry import EXEC, Mode, command
from localdirector.shell.render import Cell, elapsed
from localdirector.shell.session import CommandFailed, Session

PRIV = Mode.PRIV
log = logging.getLogger("localdirector.access")

# Lines reached over the network (IOS vty lines): no privileged mode without a password.
VTY_KINDS = frozenset(("ssh", "telnet"))
ENABLE_TRIES = 3          # wrong enable passwords per session ...
ENABLE_LOCKOUT = 60.0     # ... then `enable` is refused in that session for this long
ENABLE_DELAY = 1.0        # seconds after a wrong one before the next is even checked


@command(EXEC, Keyword("enable", "Enter privileged mode"))
def enable(session: Session) -> None:
    """Guessing is slow and seen: each wrong password is logged and counted for the
    session's source across every door (FAILED_PASSWORDS); the next is not checked
    before ENABLE_DELAY, and after ENABLE_TRIES the session may not try for a minute."""
    secret = session.director.settings.enable_secret
    if session.mode is not Mode.USER:
        return
    if not secret:
        if session.kind in VTY_KINDS:
            raise CommandFailed("No password set")
        session.mode = Mode.PRIV
        return
    source = session.source
    now = time.monotonic()
    reason = FAILED_PASSWORDS.blocked(source)
    if session.retry_at > now or reason is not None:
        log.warning("enable from %s (session %d) refused: %s", session.peer or session.kind,
                    session.id, reason or "too soon after wrong passwords")
        raise CommandFailed("Bad secrets; try again later")

    def check(password: str) -> bool:
        if verify_password(password, session.director.settings.enable_secret):
            session.enable_failures = 0
            session.mode = Mode.PRIV
            return True
        session.enable_failures += 1
        FAILED_PASSWORDS.failed(source)
        log.warning("enable from %s (session %d) failed: wrong password (%d of %d)",
                    session.peer or session.kind, session.id, session.enable_failures,
                    ENABLE_TRIES)
        if session.enable_failures >= ENABLE_TRIES:
            session.enable_failures = 0
            session.retry_at = time.monotonic() + ENABLE_LOCKOUT
            session.print("% Bad secrets")
        else:
            session.retry_at = time.monotonic() + ENABLE_DELAY
            session.print("% Access denied")
        return False

    session.ask("Password: ", check, secret=True)


@command(PRIV, Keyword("disable", "Leave privileged mode"))
def disable(session: Session) -> None:
    session.mode = Mode.USER


@command(EXEC, choice(Keyword("exit", "End this session"),
                      Keyword("logout", "End this session")))
def logout(session: Session) -> None:
    session.close()


@command(PRIV, Keyword("configure", "Enter configuration mode"),
         opt(Keyword("terminal", "Configure from this terminal")))
def configure(session: Session) -> None:
    session.mode = Mode.CONFIG
    if session.interactive:
        session.print("Enter configuration commands, one per line.  End with CNTL/Z.")


_TERMINAL = Keyword("terminal", "Settings of this terminal")


@command(EXEC, _TERMINAL, Keyword("length", "Lines per page [24; 0 = no paging]"),
         args.number("length", 0, 512, "Lines per page, 0 = no paging"))
def terminal_length(session: Session, length: int) -> None:
    session.terminal_length = length


@command(EXEC, _TERMINAL, Keyword("width", "Characters per line (output is never wrapped)"),
         args.number("width", 0, 512, "Characters per line"))
def terminal_width(_session: Session, width: int) -> None:
    """Accepted because automation sets it first (Ansible `terminal width 512`, Netmiko
    511) and stops at an error; the appliance's lines are never wrapped, so any width
    leaves the output as it is."""


_WRITE = Keyword("write", "Save or show the running configuration")
_STARTUP = "Save the running configuration as the startup-config"


@command(PRIV, _WRITE, Keyword("memory", _STARTUP), locked=False)
def write_memory(session: Session) -> None:
    session.print("Building configuration...")
    error = session.appliance.write_memory()
    if error is not None:
        raise CommandFailed(error)
    session.print("[OK]")


command(PRIV, _WRITE, locked=False)(write_memory)    # `write` alone, as on IOS


@command(PRIV, Keyword("copy", "Copy a configuration"),
         Keyword("running-config", "From the configuration in effect"),
         Keyword("startup-config", _STARTUP), locked=False)
def copy_running_startup(session: Session) -> None:
    """IOS's form of `write memory`, with its `Destination filename` question on a
    terminal (Ansible's `save_when` answers it with Enter); the startup-config is the
    only destination, so any other name is refused and nothing is written."""
    if not session.interactive:
        write_memory(session)
        return

    def destination(text: str) -> bool:
        if text.strip() not in ("", "startup-config"):
            raise CommandFailed(f"cannot copy to '{text.strip()}': the only destination "
                                "is startup-config")
        write_memory(session)
        return True

    session.ask("Destination filename [startup-config]? ", destination)


@command(PRIV, _WRITE, Keyword("terminal", "Show it on this terminal"), output=True)
def write_terminal(session: Session) -> None:
    session.print_lines(running_config.render(session.director, session.registry))


@command(PRIV, _WRITE, Keyword("erase", "Erase the startup-config"), locked=False)
def write_erase(session: Session) -> None:
    def erase() -> None:
        try:
            config_file.erase(session.appliance.config_path)
        except OSError as err:
            raise CommandFailed(f"cannot erase {session.appliance.config_path}: "
                                f"{err.strerror or err}; the startup-config is unchanged"
                                ) from None
        session.appliance.saved(running_config.render(Director(), session.registry))
        session.print("[OK]")

    confirm(session, "Erasing the startup-config removes the saved configuration! "
                     "Continue?", erase, "Erase aborted")


@command(PRIV, Keyword("reload", "Rebuild the running config from the startup-config"),
         locked=False)
def reload(session: Session) -> None:
    """IOS's dialogue on a terminal: save unsaved changes first?, then [confirm]. A
    script has no one to answer: it is told, in one line, what was thrown away."""
    if not session.interactive:
        if session.appliance.unsaved():
            session.print("% Unsaved changes to the running configuration were discarded")
        _reload(session)
        return
    if not session.appliance.unsaved():
        confirm(session, "Proceed with reload?", lambda: _reload(session), "Reload aborted")
        return

    def save_first(text: str) -> bool:
        word = text.strip().lower()
        if word not in ("y", "ye", "yes", "n", "no"):
            raise CommandFailed("Please answer 'yes' or 'no'. Reload aborted")
        if word.startswith("y"):
            write_memory(session)
        confirm(session, "Proceed with reload?", lambda: _reload(session), "Reload aborted")
        return True

    session.ask("System configuration has been modified. Save? [yes/no]: ", save_first)


def confirm(session: Session, prompt: str, action: Callable[[], None], aborted: str) -> None:
    """IOS's `[confirm]` before what cannot be undone, on a terminal: Return or y runs
    `action`, anything else prints `aborted`. A script runs it at once: nobody is there
    to answer, and running the command is the request. The answer comes after the
    handler returned, so `action` takes the model lock itself where it needs it."""
    if not session.interactive:
        action()
        return

    def answer(text: str) -> bool:
        if text.strip().lower() not in ("", "y", "ye", "yes"):
            session.print(aborted)
            return False
        action()
        return True

    session.ask(f"{prompt} [confirm]", answer)


def _reload(session: Session) -> None:
    session.print(f"Reloading from {session.appliance.config_path}")
    session.appliance.reload(session.print)
    session.print("[OK]")


def users(session: Session) -> None:
    """`who` and `show users`: every live session, this one starred."""
    now = time.time()
    rows = [(Cell("*", True) if s is session else Cell("", False), s.id, s.kind,
             s.peer or "-", s.mode.value, elapsed(now - s.started),
             elapsed(now - s.last_activity))
            for s in session.appliance.sessions]
    session.print_table(("", "ID", "Kind", "Peer", "Mode", "Connected", "Idle"), rows,
                        fields=("current", "id", "kind", "peer", "mode", "connected",
                                "idle"))


command(EXEC, Keyword("who", "Who is logged in"), output=True)(users)


@command(PRIV, Keyword("kill", "End another session"),
         args.number("target", 1, 2 ** 31, "Session id (see who)", "ID"))
def kill(session: Session, target: int) -> None:
    victim = session.appliance.sessions.get(target)
    if victim is None:
        raise CommandFailed(f"no session {target}")
    if victim is session:
        raise CommandFailed("this is your own session: use exit")
    victim.killed_by = session.id
    victim.close()
    session.print(f"Session {target} closed")


def _destination(addr: int, service: int) -> str:
    """VIP:port of a service port, with `udp` after a udp one (as a server id has it)."""
    port = f"{bracketed(addr)}:{service & 0xFFFF}"
    return f"{port}:udp" if service & UDP_SERVICE else port


@command(PRIV, Keyword("test", "What-if checks that send no traffic"),
         Keyword("assign", "Which virtual and real a client's SYN would get"),
         args.host("client", "Client address or name"),
         args.vip_port("destination", "Virtual address or name, and port (default: each "
                                      "configured; 0: the all-ports instances)"),
         output=True)
def test_assign(session: Session, client: int, destination: tuple[int, int | None]) -> None:
    """Runs the data plane's own decision (FIG. 5 steps 510-518) with commit=False, so
    no counter, round-robin cursor or sticky entry moves."""
    director = session.director
    addr, port = destination
    if family_of(client) is not family_of(addr):
        raise CommandFailed(f"{NAT64}: {format_ip(client)} and {format_ip(addr)} are of "
                            "different families")
    # Service ports (serverid.UDP_SERVICE): a named port asks each protocol served there.
    services = {p for a, p in director.by_dest if a == addr}
    if port is not None:
        services = {port | (p & UDP_SERVICE) for p in services
                    if p & 0xFFFF in (port, ALL_PORTS)} or {port}
    ports = sorted(services)
    if not ports:
        raise CommandFailed(f"no virtual at {format_ip(addr)}")
    now = time.monotonic()
    rows = []
    for dport in ports:
        obj = director.bindids.lookup(client, addr, dport)
        decision = director.decide(client, addr, dport, now, commit=False)
        if decision.virtual is None:
            rows.append((format_ip(client), _destination(addr, dport), "-", "-", "-",
                         "no virtual: dropped"))
            continue
        why = (f"assign {' '.join(network_words(obj.client_ip, obj.prefixlen))}"
               if obj is not None else "no assign matches: Bind ID 0")
        served = decision.served_by
        if served is not None and served is not decision.virtual:
            why += f"; overflow to backup {director.fmt(served.sid)}"
        if decision.real is None:
            # What the data plane does with it (docs/design.rst, "Packet flow").
            engine_fast = decision.virtual.fastpath and not decision.virtual.kernel
            why += ("; no real available: datagram dropped" if dport & UDP_SERVICE
                    else "; no real available: SYN dropped (fast path)" if engine_fast
                    else "; no real available: SYN refused with a RST")
        rows.append((format_ip(client), _destination(addr, dport),
                     director.fmt(decision.virtual.sid),
                     director.fmt(decision.real.sid) if decision.real else "-",
                     (served or decision.virtual).predictor, why))
    session.print_table(("Client", "Destination", "Virtual", "Real", "Predictor", "Why"),
                        rows)
