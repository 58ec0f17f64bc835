"""LocalDirector's own words for what the appliance has (issue 27; docs/design.rst,
"Command language", "LocalDirector's language").

Each LocalDirector form is a declaration of its own that calls the handler of the IOS
form, or the same model method when its arguments differ (`syslog output 16.7` is a
facility and a level), so a LocalDirector administrator's configuration loads with its
meaning kept: units stay LocalDirector's (`failover hellotime` seconds, `sticky`
minutes). The running config keeps one form of each setting, the IOS one; where a line
is kept in another shape, or part of it has no meaning here, the line says so in a
one-line note (shown by `--check` and at boot beside its line number).

Exec commands typed at the configuration prompt, as LocalDirector allowed (`show`,
`write`, `clear`, `failover active|reset`), are declared here too: the same commands in
configuration mode (`exec_at_config`, called once every module has registered)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from localdirector.model.failover import DEFAULT_HOLD_MS, DEFAULT_POLL_MS, HOLD_FACTOR
from localdirector.model.serverid import ServerId, ServerPattern
from localdirector.model.state import State
from localdirector.model.settings import FIRST_LOCAL_FACILITY, LOG_FACILITIES, LOG_LEVELS
from localdirector.shell import args
from localdirector.shell.grammar import Arg, ArgError, Keyword, choice
from localdirector.shell.registry import EXEC, Command, Mode, Registry, command, declare
from localdirector.shell.session import CommandFailed, Session

from . import exec as exec_commands
from . import logging as logging_commands
from . import scaleout

CONFIG = Mode.CONFIG


def note(session: Session, text: str) -> None:
    """A line accepted in another shape says so: `% Note: ...` under the line."""
    session.print(f"% Note: {text}")


# -- syslog: LocalDirector's `syslog host|output|console` onto `logging` -----------------

_SYSLOG = Keyword("syslog", "LocalDirector's name for logging (see logging)")

declare(CONFIG, _SYSLOG, Keyword("host", "A syslog collector (logging host ADDR)"),
        args.ip("addr", "The collector's address (UDP 514)"),
        handler=logging_commands.logging_host, no=3)


def _output(text: str, _session: object) -> tuple[int, int]:
    """LocalDirector's `FACILITY.LEVEL`: a local facility code 16-23 and a level 0-7."""
    facility, dot, level = text.partition(".")
    last = FIRST_LOCAL_FACILITY + len(LOG_FACILITIES) - 1
    if not (dot and facility.isdigit() and FIRST_LOCAL_FACILITY <= int(facility) <= last):
        raise ArgError(f"expected FACILITY.LEVEL, facility {FIRST_LOCAL_FACILITY}-{last} "
                       f"(local0-local7), such as 20.7, not '{text}'")
    if not (level.isdigit() and int(level) < len(LOG_LEVELS)):
        raise ArgError(f"level 0-{len(LOG_LEVELS) - 1} after the dot, not '{level}'",
                       len(facility) + 1)
    return int(facility), int(level)


@command(CONFIG, _SYSLOG, Keyword("output", "Facility and least severe level sent "
                                            "(logging facility, logging trap)"),
         Arg("output", "FACILITY.LEVEL", "Facility code 16-23 (local0-7), a dot, level 0-7",
             _output), no=2)
def syslog_output(session: Session, output: tuple[int, int] = (0, 0),
                  no: bool = False) -> None:
    director = session.director
    if no:
        director.set_log_facility()
        director.set_log_trap()
        return
    facility, level = output
    director.set_log_facility(facility)
    director.set_log_trap(level)
    note(session, f"kept as logging facility {logging_commands.facility_name(facility)} "
                  f"and logging trap {LOG_LEVELS[level]}")


@command(CONFIG, _SYSLOG, Keyword("console", "Log to the console"), no=2)
def syslog_console(session: Session, no: bool = False) -> None:
    """The appliance's log always goes to its standard error (the journal under
    systemd) and to `show syslog`'s buffer: there is nothing to switch."""
    note(session, "not kept: the log always goes to standard error (the journal) and to "
                  "show syslog; remote hosts are logging host")


# -- the terminal, names ---------------------------------------------------------------

@command((*EXEC, CONFIG), Keyword("pager", "LocalDirector's name for terminal length"),
         Keyword("lines", "Lines per page (terminal length)"),
         args.number("length", 0, 512, "Lines per page, 0 = no paging"))
def pager_lines(session: Session, length: int) -> None:
    exec_commands.terminal_length(session, length)
    if session.kind == "startup":
        note(session, "not kept: the page length is each terminal's (terminal length)")


@command(CONFIG, Keyword("names", "Use the names given with name (always on here)"), no=1)
def names(session: Session, no: bool = False) -> None:
    """LocalDirector shows names only after `names`; here `name` alone is enough."""
    note(session, "names are always used here: name ADDR NAME is enough"
         + ("; remove one with no name ADDR NAME" if no else ""))


# -- server settings in LocalDirector's shape ---------------------------------------------

_STICKY = Keyword("sticky", "Minutes a client stays with its real [0 = off]")
_PAYLOAD = ("needs the {what} before the real is chosen, which the engine does not "
            "read yet; sticky VIRTUAL MINUTES (client address) is built")


@command(CONFIG, _STICKY, args.virtual_id("id"),
         args.number("minutes", 0, 10080, "Minutes, 0 = off"),
         choice(Keyword("generic", "By client address (the only kind here)", "kind",
                        "generic"),
                (Keyword("ssl", "By SSL session id", "kind", "ssl"),),
                (Keyword("cookie-insert", "By a cookie the director inserts", "kind",
                         "cookie"), args.word("cookie", "Cookie name")),
                (Keyword("cookie-passive", "By a cookie the server sets", "kind",
                         "cookie"), args.word("cookie", "Cookie name"),
                 Arg("rest", "LINE", "Offset and length", lambda t, _s: t, rest=True)),
                (Keyword("cookie-passive", "By a cookie the server sets", "kind",
                         "cookie"), args.word("cookie", "Cookie name"))), no=2)
def sticky_kind(session: Session, id: ServerId, minutes: int = 0, kind: str = "generic",
                no: bool = False, **_cookie: str) -> None:
    """`generic` is LocalDirector's name for what `sticky ID MINUTES` is; SSL and cookie
    stickiness are refused by name (issue 27 item 6: a later step)."""
    if no:
        session.director.set_option(id, "sticky", 0)
        return
    if kind == "ssl":
        raise CommandFailed("sticky ssl " + _PAYLOAD.format(what="TLS session id"))
    if kind == "cookie":
        raise CommandFailed("sticky cookie " + _PAYLOAD.format(what="HTTP request's cookie"))
    session.director.set_option(id, "sticky", minutes)


declare(CONFIG, Keyword("redirection", "How a virtual forwards (dispatched or directed)"),
        args.virtual_id("id"),
        choice(Keyword("dispatched", "The real holds the VIP and answers the client"),
               Keyword("directed", "Translate to the real's address [default]", "no", True)),
        handler=scaleout.dispatched, no=2)


def _bound_virtual(text: str, session: Session) -> ServerId:
    """A virtual's id with a Bind ID, which a real's id argument refuses; any other
    id is the real's argument's, refused in its words when bad."""
    sid = args.parse_server_id(text, session, True)
    if not sid.bind:
        raise ArgError("a real server id takes no bind id")
    return sid


@command(CONFIG, Keyword("maxconns", "Most connections a virtual instance takes"),
         Arg("id", "ADDR:PORT:BIND", "Virtual instance with a Bind ID", _bound_virtual),
         args.number("value", 0, 4294967295, "Connection limit, 0 = unlimited"), no=2)
def maxconns_instance(session: Session, id: ServerId, value: int = 0,
                      no: bool = False) -> None:
    """`maxconns` of an instance with a Bind ID (the plain form takes real ids, which
    have none); the same setting, saved by the plain form's saver."""
    session.director.set_option(id, "maxconns", 0 if no else value)


# -- failover in LocalDirector's words ----------------------------------------------------

@command(CONFIG, Keyword("replicate", "Copy connections to the standby"),
         Keyword("interface", "LocalDirector's replication interface"),
         args.number("interface", 0, 15, "Interface number"), no=2)
def replicate_interface(session: Session, interface: int = 0, no: bool = False) -> None:
    session.director.set_replicate(not no)
    if no:
        return
    note(session, f"kept as replicate: connections go to the standby over the failover "
                  f"link (--failover-link), not interface {interface}")


@command(CONFIG, Keyword("failover", "Failover pair settings and actions"),
         Keyword("hellotime", "Seconds between hellos (failover poll)"),
         args.number("seconds", 1, 40, "Seconds"), no=2)
def failover_hellotime(session: Session, seconds: int = 0, no: bool = False) -> None:
    """LocalDirector's hello interval in seconds; the peer counts as gone after
    HOLD_FACTOR silent hellos, as `failover poll MS` without holdtime."""
    if no:
        session.director.set_failover_timing(DEFAULT_POLL_MS, DEFAULT_HOLD_MS)
        return
    poll = seconds * 1000
    session.director.set_failover_timing(poll, HOLD_FACTOR * poll)
    note(session, f"kept as failover poll {poll} holdtime {HOLD_FACTOR * poll} "
                  "(milliseconds)")


# -- exec commands at the configuration prompt ---------------------------------------------

# What LocalDirector ran from its configuration prompt as well: the leading words.
EXEC_AT_CONFIG = ("show", "write", "clear", "failover active", "failover reset", "ping")


def _at_config(handler: Callable[..., Any], words: str) -> Callable[..., Any]:
    def run(session: Session, **captures: Any) -> Any:
        if session.kind == "startup":
            raise CommandFailed(f"'{words}' is an exec command: not run from a "
                                "configuration file (type it at the prompt)")
        return handler(session, **captures)
    return run


def exec_at_config(registry: Registry) -> None:
    """The privileged commands LocalDirector also took at its configuration prompt,
    declared again in configuration mode with the same syntax and handler. A
    configuration file replayed at boot or by `--check` does not run them: `write
    erase` or `clear conns` in a pasted printout must not act."""
    for found in list(registry.commands):
        words = found.keywords
        if (Mode.PRIV in found.modes and not found.negated and found.handler is not None
                and any(words == w or words.startswith(w + " ") for w in EXEC_AT_CONFIG)):
            registry.add(Command((CONFIG,), found.syntax, _at_config(found.handler, words),
                                 found.output, locked=found.locked))


# -- wildcards in action commands (`in-service 203.0.113.*`, `retry all:80 30`) -------------

def _wildcard(allow_bind: bool) -> Arg:
    """A pattern with `*` or `all` in it; a plain id is left to the command's own id
    argument, and a bad one refused with the same words it would use, so the caret's
    reason is not lost between the two."""
    def parse(text: str, session: Session) -> ServerPattern:
        if text.split(":")[0].lower() != "all" and not (
                "*" in text or ":all" in text.lower() or text.startswith(":")):
            args.parse_server_id(text, session, allow_bind)
            raise ArgError("not a wildcard")
        return args.pattern(text, session)
    return Arg("pattern", "PATTERN", "Every server it matches: `*` or `all` in a field",
               parse)


def _matching(found: list[Any], pattern: ServerPattern) -> list[Any]:
    chosen = [s for s in found if pattern.matches(s.sid)]
    if not chosen:
        raise CommandFailed(f"nothing matches {pattern.text}")
    return chosen


def _real_setting(word: str, help: str, high: int) -> None:
    def handler(session: Session, pattern: ServerPattern, value: int) -> None:
        director = session.director
        for real in _matching(list(director.iter_reals()), pattern):
            director.set_option(real.sid, word, value)
    declare(CONFIG, Keyword(word, help), _wildcard(False),
            args.number("value", 0, high, "Value for each real matched"), handler=handler)


for _word, _high in (("weight", 1000), ("maxconns", 4294967295), ("threshold", 1000),
                     ("reassign", 100), ("retry", 86400), ("delay", 3600),
                     ("timeout", 86400)):
    _real_setting(_word, f"{_word} of every real a pattern matches", _high)


@command(CONFIG, choice(
    Keyword("in-service", "Put servers in service", "state", State.IN_SERVICE),
    Keyword("is", "Put servers in service", "state", State.IN_SERVICE),
    Keyword("out-of-service", "Take servers out of service", "state",
            State.OUT_OF_SERVICE),
    Keyword("os", "Take servers out of service", "state", State.OUT_OF_SERVICE)),
    _wildcard(True))
def service_state_matching(session: Session, state: State,
                           pattern: ServerPattern) -> None:
    """Every virtual and real the pattern matches, as LocalDirector's `is all:80`."""
    director = session.director
    servers = [*director.iter_virtuals(), *director.iter_reals()]
    for server in _matching(servers, pattern):
        director.set_state(server.sid, state)
