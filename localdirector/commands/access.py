"""Who may reach the shell and for how long: the privileged and remote-login passwords,
the telnet/ssh access lists and `exec-timeout` (docs/design.rst, "Operator access"); and
who may scrape the metrics endpoint, an access list of the same kind ("Monitoring").

Passwords are hashed before the model lock is taken (scrypt is slow), so these handlers
lock the model themselves around the model work only."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from localdirector.model.addr import IPV4, family_of, format_ip
from localdirector.model.director import Director
from localdirector.model.passwords import hash_password
from localdirector.model.settings import DEFAULT_SESSION_TIMEOUT
from localdirector.shell import args
from localdirector.shell.grammar import Keyword, opt
from localdirector.shell.registry import Mode, command, declare
from localdirector.shell.session import CommandFailed, Session

CONFIG = Mode.CONFIG


# -- passwords ---------------------------------------------------------------------------

_ENCRYPTED = opt(Keyword("encrypted", "The password given is already hashed",
                         "encrypted", True))


def _saved_secret(stored: str) -> list[tuple[str, str]]:
    return [(stored, "encrypted")] if stored else []


def _set_secret(session: Session, store: Callable[[Director, str], None], password: str,
                encrypted: bool, no: bool) -> None:
    """scrypt runs before the lock is taken; the model checks an `encrypted` hash."""
    stored = "" if no else password if encrypted else hash_password(password)
    with session.director.lock:
        store(session.director, stored)


@command(CONFIG, Keyword("enable", "Privileged mode settings"),
         Keyword("password", "Password for the enable command"),
         args.word("password", "The password"), _ENCRYPTED, no=2,
         saver=lambda d: _saved_secret(d.settings.enable_secret), locked=False)
def enable_password(session: Session, password: str = "", encrypted: bool = False,
                    no: bool = False) -> None:
    _set_secret(session, Director.set_enable_secret, password, encrypted, no)


@command(CONFIG, Keyword("password", "Password for remote (SSH/telnet) logins"),
         args.word("password", "The password"), _ENCRYPTED, no=1,
         saver=lambda d: _saved_secret(d.settings.login_secret), locked=False)
def login_password(session: Session, password: str = "", encrypted: bool = False,
                   no: bool = False) -> None:
    _set_secret(session, Director.set_login_secret, password, encrypted, no)


def _saved_users(director: Director) -> list[Sequence[object]]:
    return [(name, "privilege", user.level, "password", user.secret, "encrypted")
            for name, user in director.settings.users.items()]


@command(CONFIG, Keyword("username", "An SSH login with its own password and privilege"),
         args.name("name", "User name (the SSH login name)"),
         Keyword("privilege", "Where its sessions start"),
         args.number("level", 1, 15, "1 user mode, 15 privileged mode"),
         Keyword("password", "Its own password (not the enable password)"),
         args.word("password", "The password"), _ENCRYPTED, no=2, saver=_saved_users,
         locked=False)
def username(session: Session, name: str, level: int = 1, password: str = "",
             encrypted: bool = False, no: bool = False) -> None:
    """IOS's `username NAME privilege 15`: a script may run privileged commands over
    SSH exec (`ssh NAME@box "show running-config"`) with this user's own password;
    logins under any other name are unchanged, and a key login is never privileged."""
    if no:
        with session.director.lock:
            session.director.remove_user(name)
        return
    stored = password if encrypted else hash_password(password)
    with session.director.lock:
        session.director.set_user(name, level, stored)


# -- remote access lists ------------------------------------------------------------------

def _access(kind: str, help: str) -> None:
    def handler(session: Session, network: tuple[int, int | None], mask: int | None = None,
                no: bool = False) -> None:
        addr, prefixlen = network
        if prefixlen is not None and mask is not None:
            raise CommandFailed("ADDR/LEN takes no MASK")
        if prefixlen is None and family_of(addr) is not IPV4:
            # A bare IPv6 address is not read as one host: an access list that grew
            # by a typo would let a whole network in or keep it out.
            raise CommandFailed(f"an IPv6 network is written ADDR/LEN "
                                f"({format_ip(addr)}/128 for one host)")
        if prefixlen is None and mask is None:
            raise CommandFailed("A.B.C.D needs its MASK (or write ADDR/LEN)")
        (session.director.remove_access if no else session.director.add_access)(
            kind, addr, mask if prefixlen is None else prefixlen)

    def saver(director: Director) -> list[Sequence[str]]:
        return [str(e).split() for e in director.settings.access(kind)]

    declare(CONFIG, Keyword(kind, help),
            args.network("network", "Network allowed to connect: A.B.C.D MASK or ADDR/LEN"),
            opt(args.mask()), handler=handler, no=2, saver=saver)


_access("telnet", "Who may log in by telnet")
_access("ssh", "Who may log in by SSH")
_access("metrics", "Who may scrape the metrics endpoint (--metrics)")


# -- idle sessions: IOS's `exec-timeout MINUTES [SECONDS]` (`exec-timeout 0 0` = never) ---
# An operator who walks away from a logged-in terminal leaves the appliance open to
# whoever sits down next (settings.session_timeout, Settings.idle_seconds).

def _saved(director: Director) -> list[Sequence[object]]:
    total = round(director.settings.idle_seconds)
    if total == DEFAULT_SESSION_TIMEOUT * 60:
        return []
    minutes, seconds = divmod(total, 60)
    return [(minutes, seconds) if seconds else (minutes,)]


@command(Mode.CONFIG,
         Keyword("exec-timeout", f"Idle time before a remote or serial session is closed "
                                 f"[{DEFAULT_SESSION_TIMEOUT} minutes; 0 0 = never]"),
         args.number("minutes", 0, 35791, "Minutes"),
         opt(args.number("seconds", 0, 2147483, "Seconds")),
         no=1, saver=_saved)
def exec_timeout(session: Session, minutes: int = DEFAULT_SESSION_TIMEOUT, seconds: int = 0,
                 no: bool = False) -> None:
    if no:
        session.director.set_session_timeout()
    else:
        session.director.set_session_timeout(minutes, seconds)
