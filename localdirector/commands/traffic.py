"""Commands about traffic: `show statistics`, `show conns`, `clear conns`,
`clear counters`, and the size of the connection table, `conn-limit`.

They reach a running data plane only through `DataPlaneHandle` (handle.py), and work
without one: `--no-dataplane` still shows the model's counters and an empty table."""

from __future__ import annotations

import time
from typing import Any, NamedTuple

from localdirector.dataplane.stats import COUNTERS
from localdirector.model.addr import bracketed
from localdirector.model.connection import Connection
from localdirector.model.director import Director
from localdirector.model.serverid import ServerId
from localdirector.model.settings import DEFAULT_MAX_CONNS
from localdirector.shell import args
from localdirector.shell.grammar import Keyword, opt
from localdirector.shell.registry import EXEC, Mode, command
from localdirector.shell.render import duration, elapsed, table
from localdirector.shell.session import CommandFailed, Session

from .exec import confirm
from .handle import DataPlaneHandle
from .probe import pending_fallbacks, probe_summary

SHOW = Keyword("show", "Show running system information")
CLEAR = Keyword("clear", "Reset counters or connections")


def _dataplane(session: Session) -> DataPlaneHandle | None:
    """The running data plane, or None (`--no-dataplane`)."""
    return session.appliance.dataplane


def _label(name: str) -> str:
    return name.replace("_", " ")


@command(EXEC, SHOW, Keyword("statistics", "Data-plane packet and connection counters"),
         output=True, locked=False)
def show_statistics(session: Session) -> None:
    """Every queued packet ends in one bucket, so the lines add up to `packets`.

    Unlocked: the data plane snapshots its counters under the model lock itself, and
    reading the kernel's (iptables, /proc) must not hold up the packet path, least of
    all under a flood, when an operator types this and the CPU is scarce."""
    service = _dataplane(session)
    with session.director.lock:
        probes = probe_summary(session.director)
        counters = session.director.probe_counters
        session.record(probes={"sent": counters.sent, "ok": counters.ok,
                               "failed": counters.failed,
                               "pending_fallbacks": pending_fallbacks(session.director)})
    if service is None:
        session.record(dataplane=False, connections=len(session.director.conns))
        session.print(f"Data plane:  not running; connections {len(session.director.conns)}")
        session.print(probes)
        return
    stats = service.statistics()
    engine: dict[str, Any] = stats["engine"]
    kernel = stats["kernel"]
    lines = [
        f"Data plane:  NFQUEUE {stats['queue']}, up {duration(stats['uptime'])}, "
        f"{stats['connections']} connections (limit {session.director.settings.max_conns}), "
        f"{stats['reloads']} reloads",
        f"Rules:       {stats['rule_transactions']} transactions, "
        f"{stats['rule_errors']} errors, {stats['rule_repairs']} repairs (rules lost and "
        f"reinstalled), {'in sync' if stats['rules_synced'] else 'pending'}",
    ]
    if kernel is None:
        lines.append("Kernel:      queue not bound")
    else:
        # queued + copied (fast path) = engine packets + waiting + both kinds of dropped
        # + lost copies (overruns): nothing is lost unaccounted between the kernel and
        # the engine.
        counted = stats["rule_counters"] or dict.fromkeys(
            ("queued", "shed", "flood", "datagram_flood"), "?")
        lines.append(f"Kernel:      {counted['queued']} queued, {kernel.waiting} waiting, "
                     f"{kernel.queue_dropped} dropped (queue full), {kernel.user_dropped} "
                     f"dropped (socket full), {stats['socket_overruns']} overruns, "
                     f"{counted['shed']} SYNs shed (synguard), {counted['flood']} SYNs "
                     f"shed (new sources), {counted['datagram_flood']} datagrams shed "
                     "(new sources)")
    counted = stats["rule_counters"] or {}
    lines.append(f"Fast path:   {stats['marks']} reals in the mark map, "
                 f"{engine['fastpath_conns']} connections handed to the kernel, "
                 f"{counted.get('logged', '?')} packets copied (NFLOG), "
                 f"{stats['log_overruns']} copy overruns, "
                 f"{stats['conntrack_errors']} conntrack errors, "
                 f"{counted.get('stray', '?')} untracked replies dropped")
    lines.append(f"Queue:       {stats['gso_packets']} GSO super-packets, longest packet "
                 f"{stats['largest_packet']} bytes")
    lines.append(probes)
    lines.append(f"Errors:      {stats['worker_errors']} packet, {stats['tick_errors']} timer, "
                 f"{stats['oversize']} too long to translate, {stats['verdict_errors']} "
                 "verdicts refused")
    remembered, not_remembered = stats["sticky"]
    lines.append(f"Sticky:      {remembered} clients remembered, {not_remembered} not "
                 "remembered (table full)")
    if stats["ip_errors"]:
        lines.append("IP input:    " + ", ".join(f"{n} {what}"
                                                 for what, n in stats["ip_errors"].items())
                     + " (whole host, dropped before the data plane)")
    rows: list[tuple[str, object]] = [(_label(name), engine[name]) for name in COUNTERS]
    rows.append(("dropped", engine["dropped"]))
    rows += [(f"  {reason}", count) for reason, count in engine["drops"].items()]
    lines += ["", *table(("Counter", "Value"), rows)]
    session.print_lines(lines)
    session.record(
        dataplane=True, queue=stats["queue"], uptime=int(stats["uptime"]),
        connections=stats["connections"], conn_limit=session.director.settings.max_conns,
        reloads=stats["reloads"],
        counters={**{name: engine[name] for name in COUNTERS}, "dropped": engine["dropped"]},
        drops=dict(engine["drops"]),
        kernel=None if kernel is None else {
            "waiting": kernel.waiting, "queue_dropped": kernel.queue_dropped,
            "user_dropped": kernel.user_dropped, "overruns": stats["socket_overruns"],
            **(stats["rule_counters"] or {})},
        fastpath={"marks": stats["marks"], "conns": engine["fastpath_conns"],
                  "copy_overruns": stats["log_overruns"],
                  "conntrack_errors": stats["conntrack_errors"]},
        errors={"packet": stats["worker_errors"], "timer": stats["tick_errors"],
                "oversize": stats["oversize"], "verdicts": stats["verdict_errors"]},
        queue_packets={"gso": stats["gso_packets"], "longest": stats["largest_packet"]},
        sticky={"remembered": remembered, "not_remembered": not_remembered},
        ip_errors=dict(stats["ip_errors"] or {}))


def _matches(conn: Connection, sid: ServerId) -> bool:
    """`show conns ID`: a virtual id matches by VIP (port, Bind ID when given), a real
    id by its address (port when given); a udp id only udp flows (an id typed without
    a protocol is tcp's, yet lists both, as the address is what the operator asks)."""
    if sid.proto != "tcp" and conn.virtual.proto != sid.proto:
        return False
    if conn.virtual_ip == sid.addr:
        return ((not sid.port or sid.port == conn.virtual_port)
                and (not sid.bind or sid.bind == conn.virtual.bind_id))
    if conn.real_ip == sid.addr and not sid.bind:
        return not sid.port or sid.port == conn.real_port
    return False


def _ends(ip: int, port: int) -> str:
    return f"{bracketed(ip)}:{port}"


# Connections copied per hold of the model lock by `show conns`: about a millisecond.
COPY_SLICE = 1000


class _Row(NamedTuple):
    """What `show conns` shows of one connection, copied while the lock was held."""
    proto: str
    foreign: tuple[int, int]
    virtual: tuple[int, int]
    real: tuple[int, int]
    state: str
    created: float
    last_seen: float
    fastpath: bool
    remap: int
    answered: bool
    syn_resends: int
    virtual_name: str      # detail only ("" otherwise)
    real_name: str


def _copy_rows(director: Director, sid: ServerId | None, detail: bool) -> list[_Row]:
    """The connections (of `sid`) as rows; the table itself is listed under one hold,
    their fields are read a slice at a time so the data plane runs in between. A
    connection closed meanwhile still shows, as it would have a moment earlier."""
    with director.lock:
        conns = list(director.conns)
    rows: list[_Row] = []
    for start in range(0, len(conns), COPY_SLICE):
        with director.lock:
            rows.extend(
                _Row(c.virtual.proto, (c.foreign_ip, c.foreign_port),
                     (c.virtual_ip, c.virtual_port),
                     (c.real_ip, c.real_port), c.tcp_state, c.created, c.last_seen,
                     c.fastpath, c.remap, c.answered, c.syn_resends,
                     director.fmt(c.virtual.sid) if detail else "",
                     director.fmt(c.real.sid) if detail else "")
                for c in conns[start:start + COPY_SLICE] if sid is None or _matches(c, sid))
    return rows


FASTPATH_NOTE = ("Path fastpath: translated by conntrack NAT in the kernel; the director "
                 "sees only its SYN, SYN-ACK, FIN and RST (a udp flow: its unanswered "
                 "datagrams and first replies; listed until both its timeout and "
                 "conntrack's have passed), so its idle time is not known (-)")


KERNEL_NOTE = ("Not listed: connections of virtuals decided in the kernel (fastpath ... "
               "kernel), which the director never sees; conntrack -L lists them")


def _summary(session: Session, conns: list[_Row], now: float) -> None:
    # The protocol last: scripts that read the columns before it by position go on
    # reading what they read before UDP.
    rows = ((_ends(*c.foreign), _ends(*c.virtual), _ends(*c.real), c.state,
             elapsed(now - c.created), "-" if c.fastpath else elapsed(now - c.last_seen),
             "fastpath" if c.fastpath else "engine", c.proto)
            for c in conns)
    session.print_table(("Foreign", "Virtual", "Real", "State", "Age", "Idle", "Path",
                         "Proto"), rows,
                        empty="No connections")
    if any(c.fastpath for c in conns):
        session.print(FASTPATH_NOTE)


def _detail(conns: list[_Row], now: float) -> list[str]:
    """FIG. 3C field by field, one block per connection."""
    lines: list[str] = []
    for c in conns:
        nat = f" (as port {c.remap} toward the real)" if c.remap else ""
        lines += [
            f"Connection {_ends(*c.foreign)} -> {_ends(*c.virtual)} {c.proto}",
            f"  Virtual {c.virtual_name}, real {c.real_name} at {_ends(*c.real)}{nat}",
            f"  State {c.state}, answered {'yes' if c.answered else 'no'}, "
            f"SYN resends {c.syn_resends}",
        ]
        if c.fastpath:
            lines += [
                f"  Age {duration(now - c.created)}, translated by the kernel (fastpath)",
                f"  Kept while conntrack holds it; last checked or seen "
                f"{duration(now - c.last_seen)} ago",
            ]
        else:
            lines.append(f"  Age {duration(now - c.created)}, idle {duration(now - c.last_seen)}")
    return lines


@command(EXEC, SHOW, Keyword("conns", "Connections through the director"),
         opt(args.server_id("id", "Only connections of this virtual or real")),
         opt(Keyword("detail", "Every field of each connection", "detail", True)),
         output=True, locked=False)
def show_conns(session: Session, id: ServerId | None = None, detail: bool = False) -> None:
    """Unlocked: the table may hold half a million connections, and formatting them under
    the model lock would stop the data plane for seconds. The rows are copied in slices,
    each under a brief hold of the lock, and formatted with no lock held."""
    director = session.director
    service = _dataplane(session)
    # The engine's clock dates the connections; without a data plane there are none.
    now = service.clock() if service is not None else time.monotonic()
    rows = _copy_rows(director, id, detail)
    if detail:
        session.print_lines(_detail(rows, now) or ["No connections"])
    else:
        _summary(session, rows, now)
    with director.lock:
        kernel = any(v.kernel for v in director.virtuals.values())
    if kernel:
        session.print(KERNEL_NOTE)


@command(Mode.PRIV, CLEAR, Keyword("conns", "Forget every connection (clients must reconnect)"),
         locked=False)
def clear_conns(session: Session) -> None:
    service = _dataplane(session)
    if service is None:
        raise CommandFailed("data plane not running")

    def clear() -> None:
        with session.director.lock:
            session.print(f"{service.clear_conns()} connections cleared")

    confirm(session, "Clear every connection (their clients must reconnect)?", clear,
            "Clear aborted")


@command(Mode.PRIV, CLEAR, Keyword("counters", "Reset packet, byte and connection totals"),
         locked=False)
def clear_counters(session: Session) -> None:
    """Totals restart; live gauges (current connections) and health state stay."""
    def clear() -> None:
        director = session.director
        with director.lock:
            for v in director.iter_virtuals():
                v.reset_counters()
            for r in director.iter_reals():
                r.reset_counters()
            for obj in director.bindids:
                obj.hits = 0
            service = _dataplane(session)
            if service is not None:
                service.clear_counters()
        session.print("Counters cleared")

    confirm(session, "Clear the counters of every virtual and real?", clear,
            "Clear aborted")


def _saved_conn_limit(director: Director) -> list[tuple[int]]:
    limit = director.settings.max_conns
    return [] if limit == DEFAULT_MAX_CONNS else [(limit,)]


@command(Mode.CONFIG, Keyword("conn-limit", f"Connection-table size [{DEFAULT_MAX_CONNS}]"),
         args.number("limit", 1, 100_000_000, "Connections; further SYNs are dropped, counted"),
         no=1, saver=_saved_conn_limit)
def conn_limit(session: Session, limit: int = DEFAULT_MAX_CONNS, no: bool = False) -> None:
    """The global bound on connections, hence on the table's memory (roughly 1 kB per
    connection with its indexes and timer): a SYN finding the table full is dropped
    and counted as `conn-limit`, whatever virtual it is for."""
    session.director.set_conn_limit(DEFAULT_MAX_CONNS if no else limit)

