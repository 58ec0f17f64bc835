"""`show ...`: column-aligned tables of the model, read at a glance."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import localdirector
from localdirector import syslog
from localdirector.model.addr import V6, format_ip, format_mask
from localdirector.model.director import Director
from localdirector.model.fastpath import FAST, KERNEL, USERSPACE, mode
from localdirector.model.real import PhysicalMachine
from localdirector.model.serverid import ServerPattern
from localdirector.model.virtual import VirtualMachine
from localdirector.shell import args, config_file, running_config
from localdirector.shell.grammar import Keyword, opt
from localdirector.shell.registry import EXEC, Mode, command
from localdirector.shell.render import Cell, Rows, duration
from localdirector.shell.session import CommandFailed, Session

from .exec import users

SHOW = Keyword("show", "Show running system information")


def _show(word: str, help: str, modes: tuple[Mode, ...] | Mode = EXEC,
          locked: bool = True):
    return command(modes, SHOW, Keyword(word, help), output=True, locked=locked)


def _show_one(word: str, help: str, *elements: object):
    """`show WORD [PATTERN] [detail]`: the table, or a block per server with every field."""
    return command(EXEC, SHOW, Keyword(word, help), opt(args.server_pattern()), *elements,
                   output=True)


_DETAIL = opt(Keyword("detail", "Every field and counter of each one", "detail", True))


def _selected(found: list, pattern: ServerPattern | None, what: str) -> list:
    """The servers a pattern selects; a pattern that selects nothing is an error, so a
    script learns that its id is wrong instead of reading an empty table."""
    chosen = [o for o in found if pattern is None or pattern.matches(o.sid)]
    if pattern is not None and not chosen:
        raise CommandFailed(f"no {what} matches {pattern.text}")
    return chosen


def _traffic(obj: VirtualMachine | PhysicalMachine, fastpath: bool) -> str:
    if fastpath:
        return "not counted on the fast path (the kernel forwards the data)"
    return (f"{obj.packets_in} packets in, {obj.packets_out} out; "
            f"{obj.bytes_in} bytes in, {obj.bytes_out} out")


def _print_servers(session: Session, servers: list, detail: bool, header: tuple[str, ...],
                   row: Callable[[Director, Any], tuple],
                   block: Callable[[Director, Any], list[str]],
                   fields: tuple[str, ...] | None = None) -> None:
    """A table row per server, or with `detail` a block of every field per server."""
    d = session.director
    if detail:
        session.print_lines([line for obj in servers for line in block(d, obj)])
    else:
        session.print_table(header, [row(d, obj) for obj in servers], fields=fields)


@_show_one("virtual", "Virtual server instances", _DETAIL)
def show_virtual(session: Session, pattern: ServerPattern | None = None,
                 detail: bool = False) -> None:
    _print_servers(session, _selected(list(session.director.iter_virtuals()), pattern,
                                      "virtual"), detail,
                   ("Virtual", "State", "Conns", "Half-open", "Total", "Predictor", "Reals",
                    "Backup", "Path"), _virtual_row, _virtual_detail)


# How a virtual's connections are decided and translated (docs/design.rst, "Fast
# path"): in the detail view, and as the Path column's one word (tables split on spaces).
_PATH = {USERSPACE: "userspace", FAST: "fast path", KERNEL: "fast path, decided in the kernel"}
_PATH_WORDS = {USERSPACE: "userspace", FAST: "fastpath", KERNEL: "kernel"}
_UNKNOWN = Cell("-", None)


def _virtual_row(d: Director, v: VirtualMachine) -> tuple:
    # Kernel-decided: totals are folded in from the kernel's counters, the live gauges
    # cannot be known (no connection reaches Python).
    return (d.fmt(v.sid), d.virtual_state(v), _UNKNOWN if v.kernel else v.conns_current,
            _UNKNOWN if v.kernel else v.half_open, v.conns_total, v.predictor,
            sum(1 for _ in v.iter_links()), d.fmt(v.backup) if v.backup else "-",
            _PATH_WORDS[mode(v)])


def _virtual_detail(d: Director, v: VirtualMachine) -> list[str]:
    reals = ", ".join(f"{d.fmt(link.real.sid)} ({d.real_state(link.real)})"
                      for link in v.iter_links()) or "none bound"
    return [
        f"Virtual {d.fmt(v.sid)}, state {d.virtual_state(v)}, predictor {v.predictor}, "
        f"{_PATH[mode(v)]}, "
        f"{'dispatched' if v.dispatched else 'directed'}",
        (f"  Connections: {v.conns_total} total (current and half-open are not known: "
         "the kernel decides and translates them)" if v.kernel else
         f"  Connections: {v.conns_current} current, {v.half_open} half-open, "
         f"{v.conns_total} total"),
        f"  Traffic: {_traffic(v, v.fastpath)}",
        f"  Dropped SYNs: {v.synguard_drops} synguard, {v.no_real_drops} no real",
        f"  Settings: timeout {v.timeout} s, sticky "
        f"{f'{v.sticky} min ({len(v.sticky_table)} clients)' if v.sticky else 'off'}, "
        f"synguard {v.synguard or 'off'}, backup {d.fmt(v.backup) if v.backup else '-'}, "
        f"buddy {v.buddy or '-'}",
        *([f"  Udp: {'per-datagram' if v.per_datagram else 'per-flow'} balancing, "
           f"flows {v.flows}, {v.flows_evicted} flows evicted"]
          if v.proto == "udp" else []),
        f"  Reals: {reals}",
    ]


@_show_one("real", "Real servers", _DETAIL)
def show_real(session: Session, pattern: ServerPattern | None = None,
              detail: bool = False) -> None:
    _print_servers(session, _selected(list(session.director.iter_reals()), pattern, "real"),
                   detail, ("Real", "State", "Conns", "Total", "Weight", "Maxconns",
                            "Reassigns", "Threshold", "Response", "Backup", "Out-by"),
                   _real_row, _real_detail,
                   ("real", "state", "conns", "total", "weight", "maxconns", "reassigns",
                    "threshold", "response_ms", "backup", "out_by"))


def _real_row(d: Director, r: PhysicalMachine) -> tuple:
    return (d.fmt(r.sid), d.real_state(r), r.current_conns, r.total_conns, r.weight,
            Cell("-", 0) if not r.maxconns else r.maxconns,
            r.noanswer_reassigns + r.reset_reassigns, r.threshold,
            _ms(r.response_time), d.fmt(r.backup) if r.backup else "-", d.real_cause(r))


def _ms(seconds: float) -> Cell:
    """The smoothed SYN to SYN-ACK time `fastest` decides by; '-' (null) before any
    answer. One word: tables split on spaces."""
    return Cell(f"{seconds * 1000:.1f}ms", round(seconds * 1000, 3)) if seconds else Cell("-", None)


def _real_detail(d: Director, r: PhysicalMachine) -> list[str]:
    bound = [v for v in d.iter_virtuals() if any(l.real is r for l in v.iter_links())]
    fastpath = bool(bound) and all(v.fastpath for v in bound)
    return [
        f"Real {d.fmt(r.sid)}, state {d.real_state(r)} (configured "
        f"{r.admin_state.value}), weight {r.weight}, maxconns {r.maxconns or 'unlimited'}"
        f"{f', timeout {r.timeout} s (its own)' if r.timeout else ''}",
        f"  Out by: {d.real_cause(r)}{f' (probe {r.probe_down})' if r.probe_down else ''}",
        f"  Connections: {r.current_conns} current, {r.total_conns} total",
        f"  Traffic: {_traffic(r, fastpath)}",
        f"  Response time: {_ms(r.response_time)}",
        f"  Reassigns: {r.noanswer_reassigns} unanswered, {r.reset_reassigns} reset; "
        f"{r.consecutive_fails} in a row of threshold {r.threshold}; reassign after "
        f"{r.reassign} {'datagrams' if r.sid.proto == 'udp' else 'SYNs'}, retry after "
        f"{r.retry} s, closed connections kept {r.delay} s (delay)",
        f"  Backup: {d.fmt(r.backup) if r.backup else '-'}; bound to "
        f"{', '.join(d.fmt(v.sid) for v in bound) or 'no virtual'}",
    ]


@_show_one("bind", "Which reals serve each virtual")
def show_bind(session: Session, pattern: ServerPattern | None = None) -> None:
    d = session.director
    rows = []
    for v in _selected(list(d.iter_virtuals()), pattern, "virtual"):
        links = list(v.iter_links())
        rows += [(d.fmt(v.sid), d.virtual_state(v), d.fmt(l.real.sid), d.real_state(l.real))
                 for l in links] or [(d.fmt(v.sid), d.virtual_state(v), "-", "")]
    session.print_table(("Virtual", "State", "Real", "State"), rows,
                        fields=("virtual", "virtual_state", "real", "real_state"))


@_show("assign", "Bind ID objects: clients sent to virtual instances", locked=False)
def show_assign(session: Session) -> None:
    d = session.director
    with d.lock:   # copy under the lock, format without it: 100,000 rows stall no packet
        entries = [(o.virtual.sid, o.client_ip, o.prefixlen, o.hits) for o in d.bindids]
        names = dict(d.addr_names)
    rows = ((sid.format(names), format_ip(client),
             format_mask(prefixlen) if client < V6 else f"/{prefixlen}", hits)
            for sid, client, prefixlen, hits in entries)
    session.print_table(("Virtual", "Client", "Mask", "Hits"), rows)


@_show("predictor", "How each virtual picks a real")
def show_predictor(session: Session) -> None:
    d = session.director
    rows = [(d.fmt(v.sid), v.predictor, v.conns_current) for v in d.iter_virtuals()]
    session.print_table(("Virtual", "Predictor", "Conns"), rows)


@_show("weight", "Weights of the reals")
def show_weight(session: Session) -> None:
    d = session.director
    rows = [(d.fmt(r.sid), r.weight, r.current_conns) for r in d.iter_reals()]
    session.print_table(("Real", "Weight", "Conns"), rows)


@_show("maxconns", "Connection limits of the reals")
def show_maxconns(session: Session) -> None:
    d = session.director
    rows = [(d.fmt(r.sid), r.maxconns or Cell("unlimited", 0), r.current_conns)
            for r in d.iter_reals()]
    session.print_table(("Real", "Maxconns", "Conns"), rows)


@_show("sticky", "Client affinity of the virtuals")
def show_sticky(session: Session) -> None:
    d = session.director
    rows = [(d.fmt(v.sid), Cell(f"{v.sticky} min" if v.sticky else "off", v.sticky),
             len(v.sticky_table)) for v in d.iter_virtuals()]
    session.print_table(("Virtual", "Sticky", "Clients"), rows,
                        fields=("virtual", "sticky_minutes", "clients"))


# Where the host's identity is read for `show version`'s "Processor board ID" line.
MACHINE_ID = Path("/etc/machine-id")


def ios_uptime(seconds: float) -> str:
    """IOS's `1 week, 2 days, 3 hours, 4 minutes`, which NAPALM and Ansible parse."""
    minutes = int(seconds) // 60
    parts = []
    for unit, size in (("year", 525600), ("week", 10080), ("day", 1440), ("hour", 60)):
        count, minutes = divmod(minutes, size)
        if count:
            parts.append(f"{count} {unit}{'s' if count != 1 else ''}")
    parts.append(f"{minutes} minute{'s' if minutes != 1 else ''}")
    return ", ".join(parts)


def _board_id() -> str:
    """The host's machine id: a stable identity for inventory, as a router's serial."""
    try:
        return MACHINE_ID.read_text().strip() or "unknown"
    except OSError:
        return "unknown"


def _memory_kib() -> int:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 1024


@_show("version", "Version, uptime, configuration")
def show_version(session: Session) -> None:
    """Our own first line, then the lines automation reads from IOS's `show version`
    (`... Software ..., Version X`, `HOST uptime is`, `System image file is`, `Processor
    board ID`, memory), in their shape but about this program: it never says Cisco."""
    appliance, d = session.appliance, session.director
    path = appliance.config_path
    dataplane = (f"running (NFQUEUE {appliance.queue_num})" if appliance.dataplane
                 else "not running")
    links = sum(1 for v in d.iter_virtuals() for _ in v.iter_links())
    uptime = time.time() - appliance.started
    session.record(version=localdirector.__version__, hostname=d.settings.hostname,
                   uptime=int(uptime), startup_config=str(path),
                   startup_config_present=path.exists(),
                   dataplane=appliance.queue_num if appliance.dataplane else None,
                   virtuals=len(d.virtuals), reals=len(d.reals), links=links,
                   assign_entries=len(d.bindids), connections=len(d.conns),
                   sessions=sum(1 for _ in appliance.sessions))
    machine = platform.uname()
    session.print_lines([
        f"localdirector {localdirector.__version__}: software LocalDirector (US 6,324,177)",
        f"LocalDirector Software (localdirector), Version {localdirector.__version__}, "
        "not Cisco software",
        f"{d.settings.hostname} uptime is {ios_uptime(uptime)}",
        f'System image file is "{Path(localdirector.__file__).parent}"',
        f"{machine.system} {machine.machine} host with {_memory_kib()}K bytes of memory.",
        f"Processor board ID {_board_id()}",
        f"Hostname:        {d.settings.hostname}",
        f"Uptime:          {duration(uptime)}",
        f"Startup config:  {path}{'' if path.exists() else ' (not present)'}",
        f"Data plane:      {dataplane}",
        f"Virtuals {len(d.virtuals)}, reals {len(d.reals)}, links {links}, "
        f"assign entries {len(d.bindids)}, connections {len(d.conns)}, "
        f"sessions {sum(1 for _ in appliance.sessions)}",
    ])


@_show("running-config", "The configuration in effect", Mode.PRIV)
def show_running_config(session: Session) -> None:
    session.print_lines(running_config.render(session.director, session.registry))


@_show("config", "The startup-config file", Mode.PRIV)
def show_config(session: Session) -> None:
    lines = config_file.read(session.appliance.config_path)
    if lines is None:
        session.print(f"% no startup-config at {session.appliance.config_path}")
    else:
        session.print_lines(lines)


_show("startup-config", "The startup-config file (IOS's name for show config)",
      Mode.PRIV)(show_config)


@_show("privilege", "This session's privilege level (IOS: 15 privileged, 1 not)")
def show_privilege(session: Session) -> None:
    """What Ansible's `become: enable` asks before and after `enable`."""
    level = 1 if session.mode is Mode.USER else 15
    session.record(privilege=level)
    session.print(f"Current privilege level is {level}")


@_show("history", "Commands typed in this session")
def show_history(session: Session) -> None:
    session.print_lines(list(session.history))
    session.data = Rows(("command",), [(line,) for line in session.history])


@_show("syslog", "Recent log messages (real failures and recoveries, logins)", Mode.PRIV)
def show_syslog(session: Session) -> None:
    lines = syslog.BUFFER.lines()
    session.print_lines(lines or ["No log messages"])
    if syslog.BUFFER.dropped:
        session.print(f"{syslog.BUFFER.dropped} messages dropped while the log was busy")
    session.data = Rows(("time", "level", "logger", "message"), list(map(_log_fields, lines)))


def _log_fields(line: str) -> tuple[str, ...]:
    """A buffered line (`Jan 02 03:04:05 WARNING localdirector: text`) as its fields."""
    stamp, level, logger, message = line[:15], *line[16:].split(" ", 2)
    return stamp, level, logger.rstrip(":"), message


_show("users", "Who is logged in")(users)
