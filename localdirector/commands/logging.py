"""Remote syslog as IOS configures it: `logging host ADDR [transport udp|tcp [port N]]`,
`logging trap LEVEL`, and `show logging` (docs/design.rst, "Monitoring").

The commands change the model only; monitor/logging_hosts.py keeps the senders
(syslog/remote.py) in step with it, so a replayed or reloaded configuration is sent to
exactly as a typed one."""

from __future__ import annotations

from collections.abc import Sequence

from localdirector.model.addr import format_ip
from localdirector.model.director import Director
from localdirector.model.settings import (DEFAULT_LOG_FACILITY, DEFAULT_LOG_TRAP,
                                         FIRST_LOCAL_FACILITY, LOG_FACILITIES, LOG_LEVELS,
                                         LOG_TRANSPORTS)
from localdirector.shell import args
from localdirector.shell.grammar import Arg, ArgError, Keyword, choice, opt
from localdirector.shell.registry import EXEC, Mode, command
from localdirector.shell.session import Session
from localdirector.syslog import remote

LOGGING = Keyword("logging", "Send the log to syslog collectors")
SHOW = Keyword("show", "Show running system information")

_TRANSPORT = opt(
    Keyword("transport", "How messages travel [udp]"),
    choice(*(Keyword(name, f"{name.upper()} [port {port}]", "transport", name)
             for name, port in LOG_TRANSPORTS.items())),
    opt(Keyword("port", "The collector's port"), args.number("port", 1, 65535, "Port")))


def _host_lines(director: Director) -> list[Sequence[object]]:
    lines: list[Sequence[object]] = []
    for entry in director.settings.log_hosts:
        words: list[object] = [format_ip(entry.addr)]
        if (entry.transport, entry.port) != ("udp", LOG_TRANSPORTS["udp"]):
            words += ["transport", entry.transport]
            if entry.port != LOG_TRANSPORTS[entry.transport]:
                words += ["port", entry.port]
        lines.append(words)
    return lines


@command(Mode.CONFIG, LOGGING, Keyword("host", "A syslog collector to send the log to"),
         args.ip("addr", "The collector's address"), _TRANSPORT, no=3, saver=_host_lines)
def logging_host(session: Session, addr: int, transport: str | None = None,
                 port: int | None = None, no: bool = False) -> None:
    if no:
        session.director.remove_log_host(addr, transport, port)
    else:
        session.director.add_log_host(addr, transport or "udp", port)


def _level(text: str, _session: object) -> int:
    """A severity number, or an IOS level name (abbreviated as any keyword may be)."""
    if text.isdigit() and int(text) < len(LOG_LEVELS):
        return int(text)
    named = [n for n, name in enumerate(LOG_LEVELS) if name.startswith(text.lower())]
    if len(named) > 1:
        raise ArgError(f"ambiguous logging level '{text}': "
                       f"{', '.join(LOG_LEVELS[n] for n in named)}")
    if not named:
        raise ArgError(f"unknown logging level '{text}' ({', '.join(LOG_LEVELS)} or "
                       f"0-{len(LOG_LEVELS) - 1})")
    return named[0]


_LEVEL = Arg("level", "LEVEL", f"A level name or its number, {LOG_LEVELS[0]} (0) ... "
             f"{LOG_LEVELS[-1]} ({len(LOG_LEVELS) - 1}) [{LOG_LEVELS[DEFAULT_LOG_TRAP]}]",
             _level, lambda _session: LOG_LEVELS)


@command(Mode.CONFIG, LOGGING, Keyword("trap", "Least severe messages sent to the hosts"),
         _LEVEL, no=2,
         saver=lambda d: ([(LOG_LEVELS[d.settings.log_trap],)]
                          if d.settings.log_trap != DEFAULT_LOG_TRAP else []))
def logging_trap(session: Session, level: int = DEFAULT_LOG_TRAP,
                 no: bool = False) -> None:
    session.director.set_log_trap(DEFAULT_LOG_TRAP if no else level)


@command(Mode.CONFIG, LOGGING, Keyword("facility", "Facility of the messages sent [local7]"),
         choice(*(Keyword(name, f"Facility {name} (code {FIRST_LOCAL_FACILITY + n})",
                          "code", FIRST_LOCAL_FACILITY + n)
                  for n, name in enumerate(LOG_FACILITIES))), no=2,
         saver=lambda d: ([(facility_name(d.settings.log_facility),)]
                          if d.settings.log_facility != DEFAULT_LOG_FACILITY else []))
def logging_facility(session: Session, code: int = DEFAULT_LOG_FACILITY,
                     no: bool = False) -> None:
    session.director.set_log_facility(DEFAULT_LOG_FACILITY if no else code)


def facility_name(code: int) -> str:
    return LOG_FACILITIES[code - FIRST_LOCAL_FACILITY]


@command(EXEC, SHOW, Keyword("logging", "Remote syslog hosts and what was sent to each"),
         output=True)
def show_logging(session: Session) -> None:
    """The model's hosts with the senders' counts: `Waiting` are TCP messages held while
    the host is unreachable, `Failed` those given up (see syslog/remote.py)."""
    settings = session.director.settings
    level = settings.log_trap
    facility = facility_name(settings.log_facility)
    lines = [f"Trap logging: level {LOG_LEVELS[level]} ({level}), facility {facility} "
             f"({settings.log_facility}), RFC 5424, hostname {settings.hostname}"]
    reports = remote.HANDLER.reports()
    rows, errors = [], []
    for entry in settings.log_hosts:
        target = remote.Target(format_ip(entry.addr), entry.transport, entry.port)
        report = reports.get(target)
        if report is None:   # the appliance runs no sender (`--check`, tests)
            rows.append((target.host, target.transport, target.port, "-", "-", "-", "-"))
            continue
        rows.append((target.host, target.transport, target.port, report.sent,
                     report.failed, report.waiting, "failing" if report.error else "ok"))
        if report.error:
            errors.append(f"{target}: {report.error}")
    session.print_lines(lines)
    session.record(trap_level=LOG_LEVELS[level], trap=level, facility=facility)
    session.print_table(("Host", "Transport", "Port", "Sent", "Failed", "Waiting", "Status"),
                        rows, key="hosts", empty="No logging hosts")
    session.print_lines(errors)
