"""`show ...`: column-aligned tables of the model, read at a glance."""

from __future__ import annotations

import time

import localdirector
from localdirector.model.addr import format_ip, format_mask
from localdirector.model.health import virtual_state

from localdirector import syslog
from localdirector.shell import config_file, running_config
from localdirector.shell.grammar import Keyword
from localdirector.shell.registry import EXEC, Mode, command
from localdirector.shell.render import duration, table
from localdirector.shell.session import Session
from .exec import users

SHOW = Keyword("show", "Show running system information")


def _show(word: str, help: str, modes: tuple[Mode, ...] | Mode = EXEC,
          locked: bool = True):
    return command(modes, SHOW, Keyword(word, help), output=True, locked=locked)


@_show("virtual", "Virtual server instances")
def show_virtual(session: Session) -> None:
    d = session.director
    rows = [(d.fmt(v.sid), virtual_state(v), v.conns_current, v.conns_total, v.predictor,
             sum(1 for _ in v.iter_links()), d.fmt(v.backup) if v.backup else "-")
            for v in d.iter_virtuals()]
    session.print_lines(table(("Virtual", "State", "Conns", "Total", "Predictor", "Reals",
                               "Backup"), rows))


@_show("real", "Real servers")
def show_real(session: Session) -> None:
    d = session.director
    rows = [(d.fmt(r.sid), r.state.value, r.current_conns, r.total_conns, r.weight,
             r.maxconns or "-", r.noanswer_reassigns + r.reset_reassigns, r.threshold,
             d.fmt(r.backup) if r.backup else "-")
            for r in d.iter_reals()]
    session.print_lines(table(("Real", "State", "Conns", "Total", "Weight", "Maxconns",
                               "Reassigns", "Threshold", "Backup"), rows))


@_show("bind", "Which reals serve each virtual")
def show_bind(session: Session) -> None:
    d = session.director
    rows = []
    for v in d.iter_virtuals():
        links = list(v.iter_links())
        rows += [(d.fmt(v.sid), virtual_state(v), d.fmt(l.real.sid), l.real.state.value)
                 for l in links] or [(d.fmt(v.sid), virtual_state(v), "-", "")]
    session.print_lines(table(("Virtual", "State", "Real", "State"), rows))


@_show("assign", "Bind ID objects: clients sent to virtual instances", locked=False)
def show_assign(session: Session) -> None:
    d = session.director
    with d.lock:   # copy under the lock, format without it: 100,000 rows stall no packet
        entries = [(o.virtual.sid, o.client_ip, o.prefixlen, o.hits) for o in d.bindids]
        names = dict(d.addr_names)
    rows = ((sid.format(names), format_ip(client), format_mask(prefixlen), hits)
            for sid, client, prefixlen, hits in entries)
    session.print_lines(table(("Virtual", "Client", "Mask", "Hits"), rows))


@_show("predictor", "How each virtual picks a real")
def show_predictor(session: Session) -> None:
    d = session.director
    rows = [(d.fmt(v.sid), v.predictor, v.conns_current) for v in d.iter_virtuals()]
    session.print_lines(table(("Virtual", "Predictor", "Conns"), rows))


@_show("weight", "Weights of the reals")
def show_weight(session: Session) -> None:
    d = session.director
    rows = [(d.fmt(r.sid), r.weight, r.current_conns) for r in d.iter_reals()]
    session.print_lines(table(("Real", "Weight", "Conns"), rows))


@_show("maxconns", "Connection limits of the reals")
def show_maxconns(session: Session) -> None:
    d = session.director
    rows = [(d.fmt(r.sid), r.maxconns or "unlimited", r.current_conns)
            for r in d.iter_reals()]
    session.print_lines(table(("Real", "Maxconns", "Conns"), rows))


@_show("sticky", "Client affinity of the virtuals")
def show_sticky(session: Session) -> None:
    d = session.director
    rows = [(d.fmt(v.sid), f"{v.sticky} min" if v.sticky else "off", len(v.sticky_table))
            for v in d.iter_virtuals()]
    session.print_lines(table(("Virtual", "Sticky", "Clients"), rows))


@_show("version", "Version, uptime, configuration")
def show_version(session: Session) -> None:
    appliance, d = session.appliance, session.director
    path = appliance.config_path
    dataplane = (f"running (NFQUEUE {appliance.queue_num})" if appliance.dataplane
                 else "not running")
    links = sum(1 for v in d.iter_virtuals() for _ in v.iter_links())
    session.print_lines([
        f"localdirector {localdirector.__version__}: software LocalDirector (US 6,324,177)",
        f"Hostname:        {d.settings.hostname}",
        f"Uptime:          {duration(time.time() - appliance.started)}",
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


@_show("history", "Commands typed in this session")
def show_history(session: Session) -> None:
    session.print_lines(list(session.history))


@_show("syslog", "Recent log messages (real failures and recoveries, logins)", Mode.PRIV)
def show_syslog(session: Session) -> None:
    lines = syslog.BUFFER.lines()
    session.print_lines(lines or ["No log messages"])
    if syslog.BUFFER.dropped:
        session.print(f"{syslog.BUFFER.dropped} messages dropped while the log was busy")


_show("users", "Who is logged in")(users)
