"""Who may reach the shell and for how long: the privileged and remote-login passwords,
the telnet/ssh access lists and `exec-timeout` (docs/design.rst, "Operator access").

Passwords are hashed before the model lock is taken (scrypt is slow), so these handlers
lock the model themselves around the model work only."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from localdirector.model.addr import format_ip, format_mask, prefix_mask
from localdirector.model.director import Director
from localdirector.model.passwords import hash_password, is_hash
from localdirector.model.settings import AccessEntry, Settings
from localdirector.shell import args
from localdirector.shell.grammar import Keyword, opt
from localdirector.shell.registry import Mode, command, declare
from localdirector.shell.session import CommandFailed, Session

CONFIG = Mode.CONFIG


# -- passwords ---------------------------------------------------------------------------

def _secret(text: str, encrypted: bool) -> str:
    if not encrypted:
        return hash_password(text)
    if not is_hash(text):
        raise CommandFailed("not a password hash written by this appliance")
    return text


_ENCRYPTED = opt(Keyword("encrypted", "The password given is already hashed",
                         "encrypted", True))


def _saved_secret(field: str) -> Callable[[Director], list[tuple[str, str]]]:
    def saver(director: Director) -> list[tuple[str, str]]:
        stored = getattr(director.settings, field)
        return [(stored, "encrypted")] if stored else []
    return saver


def _set_secret(session: Session, field: str, password: str, encrypted: bool,
                no: bool) -> None:
    stored = "" if no else _secret(password, encrypted)   # scrypt runs unlocked
    with session.director.lock:
        setattr(session.director.settings, field, stored)
        session.director.changed()


@command(CONFIG, Keyword("enable", "Privileged mode settings"),
         Keyword("password", "Password for the enable command"),
         args.word("password", "The password"), _ENCRYPTED, no=2,
         saver=_saved_secret("enable_secret"), locked=False)
def enable_password(session: Session, password: str = "", encrypted: bool = False,
                    no: bool = False) -> None:
    _set_secret(session, "enable_secret", password, encrypted, no)


@command(CONFIG, Keyword("password", "Password for remote (SSH/telnet) logins"),
         args.word("password", "The password"), _ENCRYPTED, no=1,
         saver=_saved_secret("login_secret"), locked=False)
def login_password(session: Session, password: str = "", encrypted: bool = False,
                   no: bool = False) -> None:
    _set_secret(session, "login_secret", password, encrypted, no)




# -- remote access lists ------------------------------------------------------------------

def _access(word: str, help: str, field: str) -> None:
    def entries(director: Director) -> list[AccessEntry]:
        return getattr(director.settings, field)

    def handler(session: Session, addr: int, mask: int, no: bool = False) -> None:
        listed = entries(session.director)
        network = addr & prefix_mask(mask)
        match = [e for e in listed if e.addr == network and e.prefixlen == mask]
        if no:
            if not match:
                raise CommandFailed(f"no {word} entry {format_ip(network)} "
                                    f"{format_mask(mask)}")
            listed.remove(match[0])
        elif not match:
            listed.append(AccessEntry(network, mask))
        session.director.changed()

    def saver(director: Director) -> list[Sequence[str]]:
        return [(format_ip(e.addr), format_mask(e.prefixlen)) for e in entries(director)]

    declare(CONFIG, Keyword(word, help), args.ip("addr", "Network allowed to log in"),
            args.mask(), handler=handler, no=3, saver=saver)


_access("telnet", "Who may log in by telnet", "telnet_access")
_access("ssh", "Who may log in by SSH", "ssh_access")


# -- idle sessions: IOS's `exec-timeout MINUTES [SECONDS]` (`exec-timeout 0 0` = never) ---
# An operator who walks away from a logged-in terminal leaves the appliance open to
# whoever sits down next. The value is kept in `settings.session_timeout` in minutes
# (fractional when seconds are given); the seconds let a lab or a test use short values.

DEFAULT_MINUTES = Settings.session_timeout


def idle_limit(director: Director) -> float:
    """Seconds of silence after which a session is closed; 0 = never."""
    return float(director.settings.session_timeout) * 60.0


def _saved(director: Director) -> list[Sequence[object]]:
    total = round(idle_limit(director))
    if total == DEFAULT_MINUTES * 60:
        return []
    minutes, seconds = divmod(total, 60)
    return [(minutes, seconds) if seconds else (minutes,)]


@command(Mode.CONFIG,
         Keyword("exec-timeout", f"Idle time before a remote or serial session is "
                                 f"closed [{DEFAULT_MINUTES} minutes; 0 0 = never]"),
         args.number("minutes", 0, 35791, "Minutes"),
         opt(args.number("seconds", 0, 2147483, "Seconds")),
         no=1, saver=_saved)
def exec_timeout(session: Session, minutes: int = DEFAULT_MINUTES, seconds: int = 0,
                 no: bool = False) -> None:
    if no:
        minutes, seconds = DEFAULT_MINUTES, 0
    total = minutes * 60 + seconds
    session.director.settings.session_timeout = minutes if not seconds else total / 60
