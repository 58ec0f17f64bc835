"""`exec-timeout MINUTES [SECONDS]`: how long an idle SSH, telnet or serial session lives.

An operator who walks away from a logged-in terminal leaves the appliance open to whoever
sits down next; the session is closed after this much silence. IOS spells the setting
this way (`exec-timeout 0 0` = never); the seconds let a lab or a test use short values.
The value is kept in `settings.session_timeout` in minutes (fractional when seconds are
given), the unit the model declares for it."""

from __future__ import annotations

from collections.abc import Sequence

from localdirector.model.director import Director
from localdirector.model.settings import Settings
from localdirector.shell import args
from localdirector.shell.grammar import Keyword, opt
from localdirector.shell.registry import Mode, command
from localdirector.shell.session import Session

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
