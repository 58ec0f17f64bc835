"""Configuration-mode commands (docs/design.rst, "Command language"). Declaration order is running-config order:
a replayed line may only refer to what earlier lines created."""

from __future__ import annotations

from typing import Any

from localdirector.model.addr import IPV4, family_of, format_ip
from localdirector.model.bindid import network_mask, network_words
from localdirector.model.buddy import set_buddy
from localdirector.model.director import Director
from localdirector.model.options import REAL_OPTIONS, VIRTUAL_OPTIONS, Option
from localdirector.model.predictors import PREDICTORS
from localdirector.model.serverid import ServerId
from localdirector.model.settings import DEFAULT_HOSTNAME
from localdirector.model.state import State

from localdirector.shell import args
from localdirector.shell.grammar import Arg, Jump, Keyword, Repeat, choice, opt
from localdirector.shell.registry import Mode, command, declare
from localdirector.shell.session import CommandFailed, Session

CONFIG = Mode.CONFIG


def _state_choice() -> Any:
    return opt(choice(Keyword("is", "In service", "state", State.IN_SERVICE),
                      Keyword("os", "Out of service", "state", State.OUT_OF_SERVICE)))


def _saved_state(sid: ServerId, state: State) -> tuple[ServerId] | tuple[ServerId, str]:
    """`real ID` for in service, the default of a new server; `real ID os` otherwise."""
    return (sid,) if state is State.IN_SERVICE else (sid, "os")


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
    session.director.set_hostname(DEFAULT_HOSTNAME if no else hostname)


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

@command(CONFIG, Keyword("real", "Create or modify a real server"), args.real_id("id"),
         _state_choice(), no=2,
         saver=lambda d: [_saved_state(r.sid, r.admin_state) for r in d.iter_reals()])
def real(session: Session, id: ServerId, state: State | None = None,
         no: bool = False) -> None:
    director = session.director
    if no:
        director.remove_real(id)
        return
    director.add_real(id, state)


@command(CONFIG, Keyword("virtual", "Create or modify a virtual server instance"),
         args.virtual_id("id"), _state_choice(), no=2,
         saver=lambda d: [_saved_state(v.sid, v.state) for v in d.iter_virtuals()])
def virtual(session: Session, id: ServerId, state: State | None = None,
             no: bool = False) -> None:
    director = session.director
    if no:
        director.remove_virtual(id)
        return
    existed = id in director.virtuals
    new = director.add_virtual(id, state)
    if not existed and new.fastpath:
        how = f", decided in the kernel (predictor {new.predictor})" if new.kernel else ""
        session.print(f"{director.fmt(id)} is on the fast path{how} like "
                      f"{director.fmt(director.fastpath_peers(new)[0].sid)}")


# -- per-server settings: one field each, `no` restores the field's default ----------------

def _setting(word: str, help: str, target: Arg, value: Any, option: Option) -> None:
    def handler(session: Session, id: ServerId, value: Any = None,
                no: bool = False) -> None:
        # None: the default for the server's protocol (Option.default_of).
        session.director.set_option(id, word, None if no else value)

    declare(CONFIG, Keyword(word, help), target, value, handler=handler, no=2,
            saver=lambda director: director.changed_options(word))


def _number_setting(word: str, help: str, value_help: str,
                    target: Arg | None = None) -> None:
    """A real's id for a real's setting, a virtual's otherwise, unless `target` says."""
    if word in REAL_OPTIONS:
        option, target = REAL_OPTIONS[word], target or args.real_id("id")
    else:
        option, target = VIRTUAL_OPTIONS[word], target or args.virtual_id("id")
    _setting(word, help, target, args.number("value", option.low, option.high, value_help),
             option)


_number_setting("weight", "Weight of a real for the weighted predictor [1]",
                "Relative share of new connections")
_number_setting("maxconns", "Most connections a real, or a virtual, takes [0 = unlimited]",
                "Connection limit, 0 = unlimited")
_number_setting("threshold", "Reassigns in a row that fail a real [8]",
                "Consecutive failed connections")
_number_setting("reassign", "Unanswered SYNs before a connection moves [3]",
                "SYN retransmissions")
_number_setting("retry", "Seconds before a failed real is tested again [60]", "Seconds")
_number_setting("delay", "Seconds a closed connection is kept for its last packets [2]",
                "Seconds, 0 = removed at once")
_setting("predictor", "How a virtual picks a real [leastconns]", args.virtual_id("id"),
         choice(*(Keyword(p, f"{p} predictor", "value") for p in PREDICTORS)),
         VIRTUAL_OPTIONS["predictor"])


# LocalDirector's `timeout` is a real's command, where a virtual's id stands for its
# bound reals: a real's id sets the real's own, which overrides its virtual's; a
# virtual's (Bind ID included) sets the virtual's, which every bound real without its
# own uses (docs/design.rst, "Connection lifecycle and health").
_number_setting("timeout", "Idle seconds before a connection or udp flow is removed "
                "[900; udp 60]", "Seconds",
                args.server_id("id", "Real (its own timeout) or virtual (its reals' "
                                     "without one)"))
_number_setting("sticky", "Minutes a client stays with its real [0 = off]",
                "Minutes, 0 = off")
_number_setting("synguard", "Most half-open connections [0 = off]",
                "Half-open connections, 0 = off")
_number_setting("flows", "Most flows a udp virtual holds; beyond, the oldest "
                "unanswered go [65536]", "Flows")


@command(CONFIG, Keyword("per-datagram", "Balance every datagram of a udp virtual anew "
                                         "(one-packet scheduling)"),
         args.virtual_id("id", "Udp virtual instance"), no=2,
         saver=lambda d: [(v.sid,) for v in d.iter_virtuals() if v.per_datagram])
def per_datagram(session: Session, id: ServerId, no: bool = False) -> None:
    """Each client datagram is decided as a new flow's first would be; the real's
    answers are still translated back (docs/design.rst, "UDP flows")."""
    session.director.set_per_datagram(id, not no)


@command(CONFIG, Keyword("buddy", "Group virtuals so a sticky client keeps one real "
                                  "address on each"),
         args.virtual_id("id"), args.word("name", "Buddy group name"), no=2,
         saver=lambda d: [(v.sid, v.buddy) for v in d.iter_virtuals() if v.buddy])
def buddy(session: Session, id: ServerId, name: str = "", no: bool = False) -> None:
    """LocalDirector's buddy groups (model/buddy.py): `no buddy VIRTUAL [NAME]` takes
    the virtual out of its group."""
    director = session.director
    virtual = director.virtual(id)
    if no and name and name != virtual.buddy:
        raise CommandFailed(f"{director.fmt(id)} is not in buddy group {name}")
    set_buddy(virtual, "" if no else name, director.iter_virtuals())
    director.changed()


# -- links and Bind ID objects -----------------------------------------------------------

@command(CONFIG, Keyword("bind", "Link reals to a virtual"), args.virtual_id("virtual"),
         Repeat(args.real_id("reals")), no=3,
         saver=lambda d: [(v.sid, *(link.real.sid for link in v.iter_links()))
                          for v in d.iter_virtuals() if v.links is not None])
def bind(session: Session, virtual: ServerId, reals: list[ServerId],
         no: bool = False) -> None:
    (session.director.unbind if no else session.director.bind)(virtual, *reals)


@command(CONFIG, Keyword("assign", "Send clients to a Bind ID instance of a virtual"),
         args.virtual_id("virtual", "Virtual instance with a non-zero Bind ID"),
         args.network("client", "Client address or network (ADDR/LEN)"),
         opt(args.mask()), no=3,
         saver=lambda d: [(o.virtual.sid, *network_words(o.client_ip, o.prefixlen))
                          for o in d.bindids])
def assign(session: Session, virtual: ServerId, client: tuple[int, int | None],
           mask: int | None = None, no: bool = False) -> None:
    """`assign VIRTUAL CLIENT [MASK]` as LocalDirector had it, or `CLIENT/LEN` in
    either family (IPv6 has no mask form)."""
    director = session.director
    addr, prefixlen = client
    if mask is not None:
        if prefixlen is not None or family_of(addr) is not IPV4:
            raise CommandFailed("a mask follows an IPv4 address only: write ADDR/LEN")
        prefixlen = mask
    elif prefixlen is None:
        prefixlen = family_of(addr).width
    if no:
        director.unassign(virtual, addr, prefixlen)
        return
    moved = director.assign(virtual, addr, prefixlen)
    if moved is not None:
        network = addr & network_mask(addr, prefixlen)
        session.print(f"{' '.join(network_words(network, prefixlen))} moved "
                      f"from {director.fmt(moved.sid)} to {director.fmt(virtual)}")


def _saved_backups(director: Director) -> list[tuple[ServerId, ServerId]]:
    servers: list[Any] = [*director.iter_reals(), *director.iter_virtuals()]
    return [(s.sid, s.backup) for s in servers if s.backup is not None]


@command(CONFIG, Keyword("backup", "Where connections go when a server cannot take them"),
         args.server_id("id", "Primary real or virtual"),
         args.server_id("backup", "Backup of the same kind"), no=2, saver=_saved_backups)
def backup(session: Session, id: ServerId, backup: ServerId | None = None,
           no: bool = False) -> None:
    session.director.set_backup(id, None if no else backup)


# -- translation path (after binds and backups: it switches whole groups of them) -------

def _saved_fastpath(director: Director) -> list[tuple[ServerId] | tuple[ServerId, str]]:
    return [(v.sid, "kernel") if v.kernel else (v.sid,)
            for v in director.iter_virtuals() if v.fastpath]


@command(CONFIG, Keyword("fastpath", "Let the kernel translate a virtual's connections "
                                          "once the director has decided them"),
         args.virtual_id("id", "Virtual instance (every instance it shares traffic with "
                               "follows)"),
         opt(Keyword("kernel", "Let the kernel decide them too (roundrobin, weighted or "
                               "maglev; no maxconns or passive health)", "kernel", True)),
         no=2, saver=_saved_fastpath)
def fastpath(session: Session, id: ServerId, kernel: bool = False,
             no: bool = False) -> None:
    """The engine still decides every new connection; conntrack NAT translates the rest
    of it (docs/design.rst, "Fast path"). With `kernel`, nft rules compiled from the
    model decide them as well and Python sees none of it ("Decided in the kernel").
    Director.set_fastpath switches everything that shares traffic with the virtual, and
    refuses while any of it has open connections or what the kernel cannot decide."""
    director = session.director
    want = not no
    others = [director.fmt(v.sid) for v in director.set_fastpath(id, want, kernel)
              if v.sid != id]
    if others:
        mode = "off" if no else "decided in the kernel" if kernel else "on"
        session.print(f"fastpath {mode} also for {', '.join(others)} "
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
