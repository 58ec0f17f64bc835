"""Configuration-mode commands (docs/design.rst, "Command language"). Declaration order is running-config order:
a replayed line may only refer to what earlier lines created."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from localdirector.model.addr import format_ip, format_mask
from localdirector.model.director import Director
from localdirector.model.fastpath import group, mixed
from localdirector.model.real import PhysicalMachine
from localdirector.model.serverid import ServerId
from localdirector.model.settings import DEFAULT_HOSTNAME
from localdirector.model.state import State
from localdirector.model.virtual import PREDICTORS, VirtualMachine

from localdirector.shell import args
from localdirector.shell.grammar import Arg, Jump, Keyword, Repeat, choice, opt
from localdirector.shell.registry import Mode, command, declare
from localdirector.shell.session import CommandFailed, Session

CONFIG = Mode.CONFIG


def _state_choice() -> Any:
    return opt(choice(Keyword("is", "In service", "state", State.IN_SERVICE),
                      Keyword("os", "Out of service", "state", State.OUT_OF_SERVICE)))


def _state_word(state: State) -> str:
    return "is" if state is State.IN_SERVICE else "os"


# -- leaving configuration mode ---------------------------------------------------------

@command(CONFIG, choice(Keyword("end", "Exit configuration mode"),
                        Keyword("exit", "Exit configuration mode")))
def end(session: Session) -> None:
    session.mode = Mode.PRIV


declare(CONFIG, Keyword("do", "Run an exec command"), Jump(Mode.PRIV, "do"))


# -- appliance identity ------------------------------------------------------------------

@command(CONFIG, Keyword("hostname", "Set the appliance name (the prompt)"),
         args.name("hostname", "This appliance's name"), no=1,
         saver=lambda d: [(d.settings.hostname,)])
def hostname(session: Session, hostname: str = DEFAULT_HOSTNAME, no: bool = False) -> None:
    session.director.settings.hostname = DEFAULT_HOSTNAME if no else hostname
    session.director.changed()


# -- names -------------------------------------------------------------------------------

@command(CONFIG, Keyword("name", "Name an address for use in server ids"),
         args.ip("addr", "Address to name"), args.name("name", "The name"), no=2,
         saver=lambda d: [(format_ip(a), n) for a, n in d.addr_names.items()])
def name(session: Session, addr: int, name: str = "", no: bool = False) -> None:
    director = session.director
    if no:
        director.remove_name(addr)
    else:
        director.set_name(addr, name)


# -- servers -----------------------------------------------------------------------------

def _refuse_same_id(director: Director, sid: ServerId, other: dict, what: str) -> None:
    """A virtual and a real may not share an id: `in-service ID` and `backup ID ID` name
    either, and must know which one is meant."""
    if sid in other:
        raise CommandFailed(f"{director.fmt(sid)} is already a {what}")


@command(CONFIG, Keyword("real", "Create or modify a real server"), args.real_id("id"),
         _state_choice(), no=2,
         saver=lambda d: [(r.sid, _state_word(r.admin_state)) for r in d.iter_reals()])
def real(session: Session, id: ServerId, state: State = State.IN_SERVICE,
         no: bool = False) -> None:
    director = session.director
    if no:
        director.remove_real(id)
        return
    _refuse_same_id(director, id, director.virtuals, "virtual")
    director.add_real(id, state)


@command(CONFIG, Keyword("virtual", "Create or modify a virtual server instance"),
         args.virtual_id("id"), _state_choice(), no=2,
         saver=lambda d: [(v.sid, _state_word(v.state)) for v in d.iter_virtuals()])
def virtual(session: Session, id: ServerId, state: State = State.IN_SERVICE,
            no: bool = False) -> None:
    director = session.director
    if no:
        director.remove_virtual(id)
        return
    _refuse_same_id(director, id, director.reals, "real")
    existed = id in director.virtuals
    director.add_virtual(id, state)
    if not existed:
        _follow_fastpath(session, director.virtuals[id])


def _refuse_mixed(director: Director, undo: Callable[[], None]) -> None:
    """Fast-path and userspace virtuals must not share what netfilter cannot tell apart
    (model/fastpath.py): undo the change and say why."""
    problem = mixed(director)
    if problem is not None:
        undo()
        raise CommandFailed(problem)


def _follow_fastpath(session: Session, new: VirtualMachine) -> None:
    """A new instance of a VIP:port on the fast path goes on the fast path too."""
    director = session.director
    others = [v for v in group(director, new) if v is not new]
    if others and all(v.fastpath for v in others):
        new.fastpath = True
        director.changed()
        session.print(f"{director.fmt(new.sid)} is on the fast path like "
                      f"{director.fmt(others[0].sid)}")
    _refuse_mixed(director, lambda: director.remove_virtual(new.sid))


# -- per-server settings: one field each, `no` restores the field's default ----------------

_FRESH_REAL = PhysicalMachine(ServerId(0))
_FRESH_VIRTUAL = VirtualMachine(ServerId(0))


def _setting(word: str, help: str, field: str, target: Arg, value: Any, fresh: Any,
             find: Callable[[Director], Callable[[ServerId], Any]],
             objects: Callable[[Director], Iterable[Any]]) -> None:
    default = getattr(fresh, field)

    def handler(session: Session, id: ServerId, value: Any = default,
                no: bool = False) -> None:
        obj = find(session.director)(id)
        setattr(obj, field, default if no else value)
        session.director.changed()

    def saver(director: Director) -> list[tuple[object, object]]:
        return [(obj.sid, getattr(obj, field)) for obj in objects(director)
                if getattr(obj, field) != default]

    declare(CONFIG, Keyword(word, help), target, value, handler=handler, no=2, saver=saver)


def _real_setting(word: str, help: str, value: Arg, field: str | None = None) -> None:
    _setting(word, help, field or word, args.real_id("id"), value, _FRESH_REAL,
             lambda d: d.real, Director.iter_reals)


def _virtual_setting(word: str, help: str, value: Any, field: str | None = None) -> None:
    _setting(word, help, field or word, args.virtual_id("id"), value, _FRESH_VIRTUAL,
             lambda d: d.virtual, Director.iter_virtuals)


_real_setting("weight", "Weight of a real for the weighted predictor [1]",
              args.number("value", 1, 1000, "Relative share of new connections"))
_real_setting("maxconns", "Most connections a real takes [0 = unlimited]",
              args.number("value", 0, 4294967295, "Connection limit, 0 = unlimited"))
_real_setting("threshold", "Reassigns in a row that fail a real [8]",
              args.number("value", 1, 1000, "Consecutive failed connections"))
_real_setting("reassign", "Unanswered SYNs before a connection moves [3]",
              args.number("value", 1, 100, "SYN retransmissions"))
_real_setting("retry", "Seconds before a failed real is tested again [60]",
              args.number("value", 1, 86400, "Seconds"))
_virtual_setting("predictor", "How a virtual picks a real [leastconns]",
                 choice(*(Keyword(p, f"{p} predictor", "value") for p in PREDICTORS)))
_virtual_setting("timeout", "Idle seconds before a connection is removed [900]",
                 args.number("value", 1, 86400, "Seconds"))
_virtual_setting("sticky", "Minutes a client stays with its real [0 = off]",
                 args.number("value", 0, 10080, "Minutes, 0 = off"))
_virtual_setting("synguard", "Most half-open connections [0 = off]",
                 args.number("value", 0, 65535, "Half-open connections, 0 = off"))


# -- links and Bind ID objects -----------------------------------------------------------

@command(CONFIG, Keyword("bind", "Link reals to a virtual"), args.virtual_id("virtual"),
         Repeat(args.real_id("reals")), no=3,
         saver=lambda d: [(v.sid, *(link.real.sid for link in v.iter_links()))
                          for v in d.iter_virtuals() if v.links is not None])
def bind(session: Session, virtual: ServerId, reals: list[ServerId],
         no: bool = False) -> None:
    director = session.director
    v = director.virtual(virtual)
    reals = list(dict.fromkeys(reals))
    found = [director.real(sid) for sid in reals]   # every id checked before any change
    bound = {id(link.real) for link in v.iter_links()}
    if no:
        for sid, r in zip(reals, found):
            if id(r) not in bound:
                raise CommandFailed(f"{director.fmt(sid)} is not bound to "
                                    f"{director.fmt(virtual)}")
    for sid in reals:
        (director.unbind if no else director.bind)(virtual, sid)
    if not no:
        added = [sid for sid, r in zip(reals, found) if id(r) not in bound]

        def undo() -> None:
            for sid in added:
                director.unbind(virtual, sid)

        _refuse_mixed(director, undo)


@command(CONFIG, Keyword("assign", "Send clients to a Bind ID instance of a virtual"),
         args.virtual_id("virtual", "Virtual instance with a non-zero Bind ID"),
         args.ip("client", "Client address"), opt(args.mask()), no=3,
         saver=lambda d: [(o.virtual.sid, format_ip(o.client_ip), format_mask(o.prefixlen))
                          for o in d.bindids])
def assign(session: Session, virtual: ServerId, client: int, mask: int = 32,
           no: bool = False) -> None:
    if no:
        session.director.unassign(virtual, client, mask)
    else:
        session.director.assign(virtual, client, mask)


def _saved_backups(director: Director) -> list[tuple[ServerId, ServerId]]:
    servers: list[Any] = [*director.iter_reals(), *director.iter_virtuals()]
    return [(s.sid, s.backup) for s in servers if s.backup is not None]


@command(CONFIG, Keyword("backup", "Where connections go when a server cannot take them"),
         args.server_id("id", "Primary real or virtual"),
         args.server_id("backup", "Backup of the same kind"), no=2, saver=_saved_backups)
def backup(session: Session, id: ServerId, backup: ServerId | None = None,
           no: bool = False) -> None:
    director = session.director
    if id in director.virtuals:
        primary: Any = director.virtuals[id]
        find = director.virtual
    elif id in director.reals:
        primary = director.reals[id]
        find = director.real
    else:
        raise CommandFailed(f"no virtual or real {director.fmt(id)}")
    if not no:
        assert backup is not None
        find(backup)
        if backup == id:
            raise CommandFailed("a server cannot be its own backup")
    previous, primary.backup = primary.backup, None if no else backup
    if not no:
        _refuse_mixed(director, lambda: setattr(primary, "backup", previous))
    director.changed()


# -- translation path (after binds and backups: it switches whole groups of them) -------

def _saved_fastpath(director: Director) -> list[tuple[ServerId]]:
    return [(v.sid,) for v in director.iter_virtuals() if v.fastpath]


@command(CONFIG, Keyword("fastpath", "Let the kernel translate a virtual's connections "
                                          "once the director has decided them"),
         args.virtual_id("id", "Virtual instance (every instance it shares traffic with "
                               "follows)"),
         no=2, saver=_saved_fastpath)
def fastpath(session: Session, id: ServerId, no: bool = False) -> None:
    """The engine still decides every new connection (Bind ID, predictor, backups,
    health); conntrack NAT translates the rest of it, so established traffic never
    reaches Python (rules.py, engine.py). Netfilter must tell the two paths apart by
    address before any decision, so the virtuals that share a VIP:port, a backup or a
    real with this one switch with it (model/fastpath.py); and a switch needs them to
    have no open connection, whose traffic the other path could not translate."""
    director = session.director
    virtual = director.virtual(id)
    want = not no
    members = [v for v in group(director, virtual) if v.fastpath != want]
    if not members:
        return
    switching = set(members)   # hashed by identity
    open_conns = sum(1 for c in director.conns if c.virtual in switching)
    if open_conns:
        raise CommandFailed(
            f"{open_conns} open connection{'s' if open_conns != 1 else ''} on "
            f"{director.fmt(virtual.sid)}"
            f"{' and the virtuals that switch with it' if len(members) > 1 else ''} would "
            "break; take them out of service until show conns lists none, or clear conns")
    for v in members:
        v.fastpath = want
    director.changed()
    others = [director.fmt(v.sid) for v in members if v is not virtual]
    if others:
        session.print(f"fastpath {'on' if want else 'off'} also for {', '.join(others)} "
                      "(same VIP:port, backup or real)")


# -- service state -----------------------------------------------------------------------

@command(CONFIG, choice(
    Keyword("in-service", "Put a virtual or real in service", "state", State.IN_SERVICE),
    Keyword("is", "Put a virtual or real in service", "state", State.IN_SERVICE),
    Keyword("out-of-service", "Take a virtual or real out of service (existing "
            "connections drain)", "state", State.OUT_OF_SERVICE),
    Keyword("os", "Take a virtual or real out of service", "state", State.OUT_OF_SERVICE)),
    args.server_id("id"), no=2)
def service_state(session: Session, state: State, id: ServerId, no: bool = False) -> None:
    if no:
        state = State.OUT_OF_SERVICE if state is State.IN_SERVICE else State.IN_SERVICE
    session.director.set_state(id, state)
