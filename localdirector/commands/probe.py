"""Active health probes (docs/design.rst, "Probes"): `probeconfig` defines one, `probe`
attaches it to a real or to a virtual's reals, `show probe` lists each check and `show
probeconfig` each definition.

After the servers in running-config order: an attachment names a server and a probe,
so both exist when its line is replayed. The runner that sends the probes is
localdirector/probes/; these commands only edit and read the model."""

from __future__ import annotations

import re
import time
from typing import Any

from localdirector.model.director import Director
from localdirector.model.probe_kinds import QTYPES, RCODES
from localdirector.model.probes import (DEFAULT_FAILURES, DEFAULT_INTERVAL, DEFAULT_METHOD,
                                        DEFAULT_PATH, DEFAULT_QTYPE, DEFAULT_QUERY,
                                        DEFAULT_RCODE, DEFAULT_STATUS, DEFAULT_SUCCESSES,
                                        DEFAULT_TIMEOUT, KINDS, MAX_SECONDS, MIN_SECONDS,
                                        ProbeCheck, format_seconds)
from localdirector.model.serverid import ServerId, ServerPattern
from localdirector.shell import args
from localdirector.shell.grammar import Arg, ArgError, Keyword, opt
from localdirector.shell.registry import EXEC, Mode, command
from localdirector.shell.render import Cell, Rows, elapsed
from localdirector.shell.session import CommandFailed, Session

_SECONDS = re.compile(r"\d{1,4}(\.\d{1,3})?\Z")


def _seconds(text: str, _session: object) -> float:
    if not _SECONDS.match(text) or not MIN_SECONDS <= float(text) <= MAX_SECONDS:
        raise ArgError(f"expected seconds {MIN_SECONDS:g}-{MAX_SECONDS:g} (such as 2 or "
                       f"0.5), not '{text}'")
    return float(text)


def _probe_names(session: Session) -> list[str]:
    return list(session.director.probes)


def _setting(word: str, help: str, value: Arg) -> Any:
    return opt(Keyword(word, help), value)


def _word(name: str, placeholder: str, help: str) -> Arg:
    return Arg(name, placeholder, help, lambda text, _s: text)


_KIND = Arg("kind", "|".join(KINDS), "Probe type: tcp (a connect), http (a request, its "
            "status and body), udp (a datagram and its answer) or dns (a query, its rcode)",
            lambda text, _s: text.lower(), lambda _s: KINDS)


@command(Mode.CONFIG, Keyword("probeconfig", "Define an active health probe (the whole "
                                             "definition, replacing one of that name)"),
         args.name("name", "Probe name"), _KIND,
         _setting("interval", f"Seconds between probes of a real [{DEFAULT_INTERVAL:g}]",
                  Arg("interval", "SECONDS", "Seconds (0.1-3600)", _seconds)),
         _setting("timeout", f"Seconds a probe may take, less than the interval "
                             f"[{DEFAULT_TIMEOUT:g}]",
                  Arg("timeout", "SECONDS", "Seconds (0.1-3600)", _seconds)),
         _setting("failures", f"Failed probes in a row that take a real out "
                              f"[{DEFAULT_FAILURES}]",
                  args.number("failures", 1, 255, "Failed probes in a row")),
         _setting("successes", f"Good probes in a row that bring it back "
                               f"[{DEFAULT_SUCCESSES}]",
                  args.number("successes", 1, 255, "Good probes in a row")),
         _setting("port", "Port to probe [the real's, or its virtual's]",
                  args.number("port", 1, 65535, "TCP port")),
         _setting("method", f"HTTP method [{DEFAULT_METHOD}]",
                  _word("method", "WORD", "GET, HEAD, ...")),
         _setting("path", f"HTTP path [{DEFAULT_PATH}]",
                  _word("path", "/PATH", "Path and query, no spaces")),
         _setting("status", f"HTTP status codes that pass [{DEFAULT_STATUS}]",
                  _word("status", "LIST", "Codes and ranges: 200,204 or 200-299,301")),
         _setting("host", "HTTP Host header [the real's address]",
                  _word("host", "WORD", "Host name")),
         _setting("send", "UDP datagram to send (required for udp)",
                  _word("send", "PAYLOAD", "One word of printable ASCII; \\xHH, \\n, \\r, "
                        "\\t, \\0, \\\\ for other bytes (\\x20: a space)")),
         _setting("query", f"DNS name to ask for [{DEFAULT_QUERY}]",
                  _word("query", "NAME", "A name such as www.example, or . (the root)")),
         _setting("type", f"DNS query type [{DEFAULT_QTYPE}]",
                  Arg("qtype", "TYPE", ", ".join(QTYPES), lambda text, _s: text.upper(),
                      lambda _s: QTYPES)),
         _setting("rcode", f"DNS response codes that pass [{DEFAULT_RCODE.lower()}]",
                  Arg("rcode", "LIST", "Names, such as noerror or noerror,nxdomain",
                      lambda text, _s: text.upper(), lambda _s: map(str.lower, RCODES))),
         opt(Keyword("recurse", "DNS: ask for recursion (the RD flag) [not asked]",
                     "recurse", True)),
         _setting("expect", "Text the HTTP body or the UDP answer must contain [any]",
                  Arg("expect", "LINE", "Text, the rest of the line (udp: escapes as in "
                      "send)", lambda text, _s: text.strip(), rest=True)),
         no=2, saver=lambda d: [(p.name, *p.words()) for p in d.probes.values()])
def probeconfig(session: Session, name: str, kind: str = "", no: bool = False,
                **settings: Any) -> None:
    director = session.director
    if no:
        detached = director.remove_probe(name)
        if detached:
            session.print(f"probe {name} detached from "
                          f"{', '.join(director.fmt(sid) for sid in detached)}")
        return
    director.define_probe(name, kind, **settings)


def _saved_attachments(director: Director) -> list[tuple[ServerId, str]]:
    return list(director.probe_attach.items())


@command(Mode.CONFIG, Keyword("probe", "Probe a real, or every real of a virtual"),
         args.server_id("id", "Real, or virtual whose bound reals are probed"),
         Arg("probe", "WORD", "Probe name (probeconfig)", lambda text, _s: text,
             _probe_names),
         no=2, saver=_saved_attachments)
def probe(session: Session, id: ServerId, probe: str | None = None,
          no: bool = False) -> None:
    if no:
        session.director.detach_probe(id, probe)
    else:
        session.director.attach_probe(id, probe or "")


def _latency(seconds: float) -> Cell:
    return Cell(f"{seconds * 1000:.1f}ms", round(seconds * 1000, 3)) if seconds else Cell("-", None)


PROBE_FIELDS = ("real", "probe", "type", "port", "state", "result", "changed", "ok",
                "failed", "latency_ms")


def _row(director: Director, check: ProbeCheck, now: float) -> tuple:
    changed = elapsed(now - check.last_change) if check.last_change else Cell("never", None)
    return (director.fmt(check.real_sid), check.probe.name, check.probe.kind, check.port,
            check.state, check.last_result, changed, check.ok, check.failed,
            _latency(check.latency))


@command(EXEC, Keyword("show", "Show running system information"),
         Keyword("probe", "Active health probes: every real's checks"),
         opt(args.server_pattern("pattern", "Only these reals: an id, `*` fields, "
                                            "`203.0.113.*`, `:80`")),
         output=True)
def show_probe(session: Session, pattern: ServerPattern | None = None) -> None:
    """A row per (real, probe, port), reals in configuration order. `Changed` is how
    long ago the state last changed."""
    director = session.director
    if not director.probes:
        session.print(f"No probes configured (probeconfig NAME {'|'.join(KINDS)} defines "
                      "one)")
        session.data = Rows(PROBE_FIELDS, [])
        return
    by_real: dict[ServerId, list[ProbeCheck]] = {}
    for check in director.checks.values():
        by_real.setdefault(check.real_sid, []).append(check)
    now = time.time()
    reals = [r for r in director.iter_reals() if pattern is None or pattern.matches(r.sid)]
    if pattern is not None and not reals:
        raise CommandFailed(f"no real matches {pattern.text}")
    rows = [_row(director, check, now) for r in reals for check in by_real.get(r.sid, ())]
    session.print_table(("Real", "Probe", "Type", "Port", "State", "Result",
                         "Changed", "OK", "Failed", "Latency"), rows, fields=PROBE_FIELDS)


PROBECONFIG_FIELDS = ("probe", "type", "interval", "timeout", "failures", "successes",
                      "port", "options")


def _options(options: dict[str, str | bool]) -> Cell:
    """The type's own settings: `send PING expect PONG` on screen, an object as data."""
    words = [word if value is True else f"{word} {value}"
             for word, value in options.items() if value is not False]
    return Cell(" ".join(words) or "-", options)


@command(EXEC, Keyword("show", "Show running system information"),
         Keyword("probeconfig", "Active health probes: each definition, its type and "
                                "settings"),
         opt(Arg("name", "WORD", "Only this probe", lambda text, _s: text, _probe_names)),
         output=True)
def show_probeconfig(session: Session, name: str | None = None) -> None:
    """A row per definition, defaults included (the running config leaves them out)."""
    probes = session.director.probes
    if name is not None and name not in probes:
        raise CommandFailed(f"no probe named '{name}'")
    rows = [(p.name, p.kind, Cell(format_seconds(p.interval), p.interval),
             Cell(format_seconds(p.timeout), p.timeout), p.failures, p.successes,
             Cell(str(p.port) if p.port else "real's", p.port), _options(p.options()))
            for p in probes.values() if name in (None, p.name)]
    session.print_table(("Probe", "Type", "Interval", "Timeout", "Failures", "Successes",
                         "Port", "Options"), rows, fields=PROBECONFIG_FIELDS,
                        empty="No probes configured (probeconfig NAME "
                              f"{'|'.join(KINDS)} defines one)")


def probe_summary(director: Director) -> str:
    """`show statistics`' probe line."""
    counters = director.probe_counters
    out = sum(1 for r in director.iter_reals() if r.probe_down)
    return (f"Probes:      {counters.sent} sent, {counters.ok} ok, {counters.failed} failed; "
            f"{len(director.checks)} checks, {out} reals out by probe, "
            f"{pending_fallbacks(director)} connections before a first result (no real "
            "known good)")


def pending_fallbacks(director: Director) -> int:
    """Connections given to a real whose first probe result was awaited, because no
    real was known good (model/predictors.py), over every virtual."""
    return sum(v.pending_fallbacks for v in director.iter_virtuals())
