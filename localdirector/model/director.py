"""The whole model: lists chained as in FIG. 2, indexes for the packet path, one lock
(docs/design.rst, "Object model").

Every mutation goes through a method here, which checks it and raises ModelError when
it is refused, so the indexes cannot drift from the lists and the fast-path rule
(model/fastpath.py) always holds; callers hold `lock` for the span of one command so no
reader sees half of it."""

from __future__ import annotations

import _thread
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from . import bgp, health, kernelpath, maglev, probes
from .addr import format_ip, format_mask, prefix_mask
from .bindid import BindIdObject, BindIdTable
from .connection import ConnectionTable
from .failover import HOLD_POLLS, HOLD_RANGE_MS, POLL_RANGE_MS, POLL_STEP_MS
from .fastpath import group, mixed
from .link import Link
from .options import REAL_OPTIONS, VIRTUAL_OPTIONS
from .passwords import is_hash
from .predictors import select_real
from .probes import NO_PORT, UNKNOWN, Probe, ProbeCheck, ProbeCounters, ProbeError
from .real import PhysicalMachine
from .serverid import ServerId
from .settings import (ACCESS_KINDS, DEFAULT_HOSTNAME, DEFAULT_LOG_TRAP, DEFAULT_MAX_CONNS,
                       DEFAULT_SESSION_TIMEOUT, LOG_LEVELS, LOG_TRANSPORTS, AccessEntry,
                       LogHost, Settings)
from .state import State
from .virtual import VirtualMachine

Server = TypeVar("Server", VirtualMachine, PhysicalMachine)
CheckKey = tuple[ServerId, str, int]   # (real, probe name, port)

log = logging.getLogger("localdirector")
_IN_SERVICE = State.IN_SERVICE   # per SYN: an Enum member is a class attribute lookup


class ModelError(ValueError):
    """A refused change; its text is the one-line error the operator sees."""


@dataclass(slots=True)
class Decision:
    """Outcome of FIG. 5 steps 510-518 for one SYN."""

    virtual: VirtualMachine | None   # instance the client's address selected
    real: PhysicalMachine | None     # None: nothing can take the connection
    served_by: VirtualMachine | None = None  # differs from `virtual` after backup overflow


class Director:
    def __init__(self, lock: _thread.RLock | None = None) -> None:
        # `reload` builds the new model on the running one's lock, so no command or
        # packet ever runs under a lock the other side does not hold.
        self.lock = lock if lock is not None else threading.RLock()
        self.settings = Settings()
        self.virtuals: dict[ServerId, VirtualMachine] = {}
        self.reals: dict[ServerId, PhysicalMachine] = {}
        self.bindids = BindIdTable()
        self.conns = ConnectionTable()
        self.names: dict[str, int] = {}
        self.addr_names: dict[int, str] = {}
        self._virtual_head: VirtualMachine | None = None
        self._real_head: PhysicalMachine | None = None
        # (address, port) -> {bind id: virtual}: FIG. 5 steps 512/516 without a scan.
        self.by_dest: dict[tuple[int, int], dict[int, VirtualMachine]] = {}
        # Bumped on every change so the netfilter rule manager knows to resync.
        self.generation = 0
        # Each virtual's links as a tuple, for `decide_for`; valid for one generation
        # (bind, unbind and the removal of either side all bump it).
        self._links: dict[VirtualMachine, tuple[Link, ...]] = {}
        self._links_generation = -1
        self._listeners: list[Callable[[], None]] = []
        # Active probes (model/probes.py): definitions by name, which server each is
        # attached to, and one check per (real, probe, port) they add up to.
        self.probes: dict[str, Probe] = {}
        self.probe_attach: dict[ServerId, str] = {}
        self.checks: dict[CheckKey, ProbeCheck] = {}
        self.probe_counters = ProbeCounters()

    # -- change notification -------------------------------------------------------
    def subscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def changed(self) -> None:
        self.generation += 1
        if self.probes or self.checks:
            self._sync_checks()
        for listener in self._listeners:
            listener()

    # -- virtual machines ----------------------------------------------------------
    def iter_virtuals(self) -> Iterator[VirtualMachine]:
        v = self._virtual_head
        while v is not None:
            yield v
            v = v.next

    def iter_reals(self) -> Iterator[PhysicalMachine]:
        r = self._real_head
        while r is not None:
            yield r
            r = r.next

    def virtual(self, sid: ServerId) -> VirtualMachine:
        try:
            return self.virtuals[sid]
        except KeyError:
            raise ModelError(f"virtual {self.fmt(sid)} does not exist") from None

    def real(self, sid: ServerId) -> PhysicalMachine:
        try:
            return self.reals[sid]
        except KeyError:
            raise ModelError(f"real {self.fmt(sid)} does not exist") from None

    def _refuse_same_id(self, sid: ServerId, other: dict, what: str) -> None:
        """A virtual and a real may not share an id: `in-service ID` and `backup ID ID`
        name either, and must know which one is meant."""
        if sid in other:
            raise ModelError(f"{self.fmt(sid)} is already a {what}")

    def add_virtual(self, sid: ServerId, state: State | None = None) -> VirtualMachine:
        """`virtual ID [is|os]`: create (in service unless told), or change the state of
        an existing instance; re-typed without a state, an instance is left as it is.

        A new instance shares traffic with others (model/fastpath.py): it goes on the
        fast path when all of them are on it (decided in the kernel, with the kernel's
        predictor, when they are), and is refused when they disagree."""
        existing = self.virtuals.get(sid)
        if existing is not None:
            if state is not None and state is not existing.state:
                existing.state = state
                self.changed()
            return existing
        self._refuse_same_id(sid, self.reals, "real")
        v = VirtualMachine(sid, state or State.IN_SERVICE)
        self.virtuals[sid] = v
        self._virtual_head = _append(self._virtual_head, v)
        self.by_dest.setdefault((sid.addr, sid.port), {})[sid.bind] = v
        if self._any_fastpath():
            others = self.fastpath_peers(v)
            v.fastpath = bool(others) and all(o.fastpath for o in others)
            v.kernel = v.fastpath and all(o.kernel for o in others)
            if v.kernel:
                v.predictor = kernelpath.KERNEL_DEFAULT_PREDICTOR
            self._refuse_mixed(lambda: self._drop_virtual(v))
        self.changed()
        return v

    def remove_virtual(self, sid: ServerId) -> None:
        self._drop_virtual(self.virtual(sid))
        self.changed()

    def _drop_virtual(self, v: VirtualMachine) -> None:
        sid = v.sid
        for other in self.virtuals.values():
            if other.backup == sid:
                other.backup = None
        self.bindids.remove_virtual(v)
        v.links = None
        del self.virtuals[sid]
        self._virtual_head = _unlink(self._virtual_head, v)
        dest = self.by_dest[(sid.addr, sid.port)]
        del dest[sid.bind]
        if not dest:
            del self.by_dest[(sid.addr, sid.port)]

    # -- real machines -------------------------------------------------------------
    def add_real(self, sid: ServerId, state: State | None = None) -> PhysicalMachine:
        """`real ID [is|os]`: create (in service unless told), or set the operator's
        state of an existing real; re-typed without a state, a real keeps its state,
        FAILED or TESTING included."""
        if sid.bind:
            raise ModelError("a real server id takes no bind id")
        existing = self.reals.get(sid)
        if existing is not None:
            if state is not None:
                self.set_real_state(existing, state)
            return existing
        self._refuse_same_id(sid, self.virtuals, "virtual")
        r = PhysicalMachine(sid, state or State.IN_SERVICE)
        self.reals[sid] = r
        self._real_head = _append(self._real_head, r)
        self.changed()
        return r

    def remove_real(self, sid: ServerId) -> None:
        """Existing connections to it keep flowing; only new ones stop."""
        r = self.real(sid)
        for v in self.virtuals.values():
            self._unlink_real(v, r)
        for other in self.reals.values():
            if other.backup == sid:
                other.backup = None
        del self.reals[sid]
        self._real_head = _unlink(self._real_head, r)
        self.changed()

    def set_real_state(self, r: PhysicalMachine, state: State) -> None:
        health.set_admin_state(r, state)
        self.changed()

    def set_state(self, sid: ServerId, state: State) -> None:
        """`in-service ID` / `out-of-service ID`: a virtual if one has that id, else a real."""
        if sid in self.virtuals:
            self.virtuals[sid].state = state
            self.changed()
        elif sid in self.reals:
            self.set_real_state(self.reals[sid], state)
        else:
            raise ModelError(f"no virtual or real {self.fmt(sid)}")

    # -- per-server settings (model/options.py) ------------------------------------
    def set_option(self, sid: ServerId, name: str, value: int | str) -> None:
        """`weight ID N`, `predictor ID NAME`, ...: one of REAL_OPTIONS on a real or
        VIRTUAL_OPTIONS on a virtual, checked against its declared values."""
        server: VirtualMachine | PhysicalMachine
        if name in REAL_OPTIONS:
            server, option = self.real(sid), REAL_OPTIONS[name]
        elif name in VIRTUAL_OPTIONS:
            server, option = self.virtual(sid), VIRTUAL_OPTIONS[name]
        else:
            raise ModelError(f"no server setting '{name}'")
        refusal = option.refusal(name, value)
        if refusal is not None:
            raise ModelError(refusal)
        previous = getattr(server, name)
        setattr(server, name, value)
        self._refuse_mixed(lambda: setattr(server, name, previous))
        self.changed()

    def changed_options(self, name: str) -> list[tuple[ServerId, int | str]]:
        """(id, value) of every server whose option `name` is not its default, in
        configuration order: the running config's lines for it."""
        servers: Iterable[VirtualMachine | PhysicalMachine]
        if name in REAL_OPTIONS:
            servers, default = self.iter_reals(), REAL_OPTIONS[name].default
        else:
            servers, default = self.iter_virtuals(), VIRTUAL_OPTIONS[name].default
        values = ((s.sid, getattr(s, name)) for s in servers)
        return [(sid, value) for sid, value in values if value != default]

    # -- backups (FIG. 3B 328, patent ¶10) -----------------------------------------
    def set_backup(self, sid: ServerId, backup: ServerId | None) -> None:
        """`backup ID BACKUP` (None: `no backup ID`): a virtual's backup is a virtual,
        a real's a real. Refused when it would mix fast path and userspace."""
        primary: VirtualMachine | PhysicalMachine
        if sid in self.virtuals:
            primary, find = self.virtuals[sid], self.virtual
        elif sid in self.reals:
            primary, find = self.reals[sid], self.real
        else:
            raise ModelError(f"no virtual or real {self.fmt(sid)}")
        if backup is not None:
            find(backup)
            if backup == sid:
                raise ModelError("a server cannot be its own backup")
        previous, primary.backup = primary.backup, backup
        if backup is not None:
            self._refuse_mixed(lambda: setattr(primary, "backup", previous))
        self.changed()

    def backup_chain(self, server: Server) -> Iterator[Server]:
        """`server`, its backup, that one's backup...: each once (a loop ends the walk,
        so does an id naming nothing); the backup of a virtual is a virtual, of a real
        a real."""
        servers: dict[ServerId, Any] = (
            self.virtuals if isinstance(server, VirtualMachine) else self.reals)
        seen: set[int] = set()
        current: Server | None = server
        while current is not None and id(current) not in seen:
            seen.add(id(current))
            yield current
            current = servers.get(current.backup) if current.backup is not None else None

    def virtual_state(self, virtual: VirtualMachine) -> str:
        """What `show virtual` calls its state: see health.virtual_state."""
        return health.virtual_state(virtual, self._serving_reals(virtual))

    def _serving_reals(self, virtual: VirtualMachine) -> Iterator[PhysicalMachine]:
        """The reals `decide_for` may pick for `virtual`: its own and their backup reals,
        then those of each backup virtual in service (patent ¶10)."""
        for v in self.backup_chain(virtual):
            if v is virtual or v.state is State.IN_SERVICE:
                for link in v.iter_links():
                    yield from self.backup_chain(link.real)

    # -- translation path (model/fastpath.py) --------------------------------------
    def set_fastpath(self, sid: ServerId, on: bool, kernel: bool = False
                     ) -> list[VirtualMachine]:
        """`[no] fastpath ID [kernel]`: switch the virtual and every virtual it shares
        traffic with; returns those switched. `kernel`: the kernel decides their
        connections too, refused when it cannot (model/kernelpath.py). Refused while any
        of them has an open connection, whose traffic the other path could not translate."""
        virtual = self.virtual(sid)
        kernel = on and kernel
        everyone = group(self, virtual)
        members = [v for v in everyone if (v.fastpath, v.kernel) != (on, kernel)]
        if not members:
            return []
        dispatched = next((v for v in members if v.dispatched), None)
        if on and dispatched is not None:
            raise ModelError(f"{self.fmt(dispatched.sid)} is dispatched: the fast path "
                             "translates, dispatched forwarding does not")
        problem = kernelpath.refusal(self, everyone) if kernel else None
        if problem is not None:
            raise ModelError(problem)
        switching = set(members)   # hashed by identity
        open_conns = sum(1 for c in self.conns if c.virtual in switching)
        if open_conns:
            raise ModelError(
                f"{open_conns} open connection{'s' if open_conns != 1 else ''} on "
                f"{self.fmt(virtual.sid)}"
                f"{' and the virtuals that switch with it' if len(members) > 1 else ''} "
                "would break; take them out of service until show conns lists none, or "
                "clear conns")
        for v in members:
            v.fastpath = on
            v.kernel = kernel
        self.changed()
        return members

    def fastpath_peers(self, virtual: VirtualMachine) -> list[VirtualMachine]:
        """The other virtuals that must share `virtual`'s path, in configuration order."""
        return [v for v in group(self, virtual) if v is not virtual]

    def _any_fastpath(self) -> bool:
        return any(v.fastpath for v in self.virtuals.values())

    def _refuse_mixed(self, undo: Callable[[], None]) -> None:
        """After a change that may join virtuals or change a setting: when that mixed
        translation modes, or asked the kernel to decide what it cannot, `undo` it and
        refuse it with the reason."""
        problem = None
        if self._any_fastpath():
            problem = mixed(self) or kernelpath.refusal(
                self, [v for v in self.iter_virtuals() if v.kernel])
        if problem is not None:
            undo()
            raise ModelError(problem)

    # -- scale-out (docs/design.rst, "Scale-out") -----------------------------------
    def set_maglev_size(self, sid: ServerId, size: int = maglev.DEFAULT_SIZE) -> None:
        """`table-size VIRTUAL PRIME`: the lookup table's size (prime, so every real's
        skip walks the whole table; a hundred times the reals or more keeps shares even)."""
        virtual = self.virtual(sid)
        if not maglev.MIN_SIZE <= size <= maglev.MAX_SIZE or not maglev.is_prime(size):
            raise ModelError(f"table-size must be a prime {maglev.MIN_SIZE}-"
                             f"{maglev.MAX_SIZE}; {size} is not")
        virtual.maglev_size = size
        self.changed()

    def set_dispatched(self, sid: ServerId, on: bool) -> None:
        """`[no] dispatched VIRTUAL`: forward without rewriting (the real holds the VIP
        and answers the client itself) or translate (directed). Refused when a bound real
        has a port (no translation in this mode), on the fast path, or while the virtual
        has open connections, whose packets the other mode could not carry on."""
        virtual = self.virtual(sid)
        if virtual.dispatched == on:
            return
        if on:
            self._refuse_dispatched(virtual, [link.real for link in virtual.iter_links()])
        open_conns = sum(1 for c in self.conns if c.virtual is virtual)
        if open_conns:
            raise ModelError(f"{open_conns} open connection{'s' if open_conns != 1 else ''}"
                             f" on {self.fmt(sid)} would break; take it out of service "
                             "until show conns lists none, or clear conns")
        virtual.dispatched = on
        self.changed()

    def _refuse_dispatched(self, virtual: VirtualMachine, reals: list[PhysicalMachine]
                           ) -> None:
        """A dispatched virtual takes only port-0 reals, and is never on the fast path."""
        if virtual.fastpath:
            raise ModelError(f"{self.fmt(virtual.sid)} is on the fast path; dispatched "
                             "needs no fastpath")
        ported = next((r for r in reals if r.port), None)
        if ported is not None:
            raise ModelError(f"real {self.fmt(ported.sid)} has a port: a dispatched virtual "
                             "forwards without translation, so its reals take port 0")

    def set_bgp_as(self, asn: int = 0) -> None:
        """`router bgp ASN` (0: `no router bgp`, which also forgets the neighbours)."""
        if not 0 <= asn <= bgp.MAX_ASN:
            raise ModelError(f"AS number out of range 1-{bgp.MAX_ASN}")
        config = self.settings.bgp
        config.asn = asn
        if not asn:
            config.neighbors.clear()
            config.router_id = 0
        self.changed()

    def set_bgp_router_id(self, addr: int = 0) -> None:
        self._need_bgp()
        self.settings.bgp.router_id = addr
        self.changed()

    def add_bgp_neighbor(self, addr: int, remote_as: int, hold: int = bgp.DEFAULT_HOLD
                         ) -> None:
        """`bgp neighbor ADDR remote-as ASN [hold-time S]`: re-typing replaces it."""
        self._need_bgp()
        if not 1 <= remote_as <= bgp.MAX_ASN:
            raise ModelError(f"AS number out of range 1-{bgp.MAX_ASN}")
        low, high = bgp.HOLD_RANGE
        if not low <= hold <= high:
            raise ModelError(f"hold-time must be {low}-{high} seconds")
        if addr >> 24 in (0, 127) or addr >> 28 >= 14:
            raise ModelError(f"{format_ip(addr)} cannot be a BGP neighbor")
        listed = self.settings.bgp.neighbors
        listed[:] = [n for n in listed if n.addr != addr] + [bgp.Neighbor(addr, remote_as,
                                                                           hold)]
        self.changed()

    def remove_bgp_neighbor(self, addr: int) -> None:
        listed = self.settings.bgp.neighbors
        if not any(n.addr == addr for n in listed):
            raise ModelError(f"{format_ip(addr)} is not a BGP neighbor")
        listed[:] = [n for n in listed if n.addr != addr]
        self.changed()

    def set_bgp_drain(self, on: bool) -> None:
        """`bgp drain`: withdraw every VIP so the router sends this director no new flow."""
        self.settings.bgp.drain = on
        self.changed()

    def set_advertise(self, sid: ServerId, on: bool) -> None:
        """`advertise VIRTUAL`: announce its VIP while it can serve."""
        self.virtual(sid).advertise = on
        self.changed()

    def _need_bgp(self) -> None:
        if not self.settings.bgp.asn:
            raise ModelError("no BGP: configure router bgp ASN first")

    # -- links ---------------------------------------------------------------------
    def bind(self, vsid: ServerId, *rsids: ServerId) -> None:
        """`bind VIRTUAL REAL...`: every id checked before any change; already bound
        reals are left as they are. Refused when it would mix fast path and userspace."""
        v = self.virtual(vsid)
        reals = [self.real(sid) for sid in dict.fromkeys(rsids)]
        bound = {id(link.real) for link in v.iter_links()}
        added = [r for r in reals if id(r) not in bound]
        if not added:
            return
        if v.dispatched:
            self._refuse_dispatched(v, added)
        for r in added:
            v.links = _append(v.links, Link(v, r))

        def undo() -> None:
            for r in added:
                self._unlink_real(v, r)

        self._refuse_mixed(undo)
        self.changed()

    def unbind(self, vsid: ServerId, *rsids: ServerId) -> None:
        """`no bind VIRTUAL REAL...`: all or nothing."""
        v = self.virtual(vsid)
        ids = list(dict.fromkeys(rsids))
        reals = [self.real(sid) for sid in ids]
        bound = {id(link.real) for link in v.iter_links()}
        for sid, r in zip(ids, reals):
            if id(r) not in bound:
                raise ModelError(f"{self.fmt(sid)} is not bound to {self.fmt(vsid)}")
        for r in reals:
            self._unlink_real(v, r)
        self.changed()

    def _unlink_real(self, v: VirtualMachine, r: PhysicalMachine) -> bool:
        for link in v.iter_links():
            if link.real is r:
                v.links = _unlink(v.links, link)
                v.sticky_table = {c: e for c, e in v.sticky_table.items() if e[0] is not r}
                return True
        return False

    def bound_virtuals(self, r: PhysicalMachine) -> list[VirtualMachine]:
        return [v for v in self.iter_virtuals() if any(l.real is r for l in v.iter_links())]

    # -- Bind ID objects (FIG. 4) --------------------------------------------------
    def assign(self, vsid: ServerId, client_ip: int, prefixlen: int) -> VirtualMachine | None:
        """`assign`: send a client network to an instance; returns the instance of the
        same VIP:port the network moved from, if it was assigned to one."""
        v = self.virtuals.get(vsid)
        if v is None:
            raise ModelError(f"virtual {self.fmt(vsid)} does not exist")
        if v.bind_id == 0:
            raise ModelError(f"virtual {self.fmt(vsid)} has Bind ID 0; assign needs a "
                             "non-zero Bind ID instance")
        if self.bindids.find(v, client_ip, prefixlen) is not None:
            return None
        # Patent ¶8: a client's status changes by assigning it to another instance, so
        # the network leaves the instance of this VIP:port it was assigned to.
        rival = self.bindids.rival(v, client_ip, prefixlen)
        if rival is not None:
            self.bindids.remove(rival)
        self.bindids.add(BindIdObject(client_ip, prefixlen, v))
        self.changed()
        return rival.virtual if rival is not None else None

    def unassign(self, vsid: ServerId, client_ip: int, prefixlen: int) -> None:
        v = self.virtual(vsid)
        obj = self.bindids.find(v, client_ip, prefixlen)
        if obj is None:
            raise ModelError("no such assign entry")
        self.bindids.remove(obj)
        self.changed()

    # -- names ---------------------------------------------------------------------
    def set_name(self, addr: int, name: str) -> None:
        if self.names.get(name, addr) != addr:
            raise ModelError(f"name '{name}' already names another address")
        old = self.addr_names.pop(addr, None)
        if old is not None:
            del self.names[old]
        self.names[name] = addr
        self.addr_names[addr] = name
        self.changed()

    def remove_name(self, addr: int) -> None:
        name = self.addr_names.pop(addr, None)
        if name is None:
            raise ModelError("no name for that address")
        del self.names[name]
        self.changed()

    def fmt(self, sid: ServerId) -> str:
        return sid.format(self.addr_names)

    # -- FIG. 5 decisions ----------------------------------------------------------
    def lookup_virtual(self, src: int, dst: int, dport: int,
                       count: bool = False) -> VirtualMachine | None:
        """Steps 510-516: the client's Bind ID instance, else the Bind ID 0 one. `count`
        adds the SYN to the Bind ID's hits (what-if questions do not)."""
        obj = self.bindids.lookup(src, dst, dport)
        if obj is not None:
            if count:
                obj.hits += 1
            return obj.virtual
        general = self.by_dest.get((dst, dport))
        if general is not None and 0 in general:
            return general[0]
        general = self.by_dest.get((dst, 0))
        if general is not None:
            return general.get(0)
        return None

    def decide(self, src: int, dst: int, dport: int, now: float,
               commit: bool = True, exclude: PhysicalMachine | None = None,
               flow: int | None = None) -> Decision:
        """Steps 510-518: instance by client address, then a real (`decide_for`).
        `exclude`: a real the connection is being reassigned away from."""
        virtual = self.lookup_virtual(src, dst, dport, count=commit)
        if virtual is None:
            return Decision(None, None)
        return self.decide_for(virtual, src, now, commit, exclude, flow)

    def decide_for(self, virtual: VirtualMachine, src: int, now: float,
                   commit: bool = True, exclude: PhysicalMachine | None = None,
                   flow: int | None = None) -> Decision:
        """Step 518 for the instance the client's address selected: a real, overflowing
        to the backup virtual chain (patent ¶10) when the instance cannot take the
        connection. Apart from `decide` so the data plane looks the instance up once.
        `flow`: the connection's flow key, for `maglev` (None: the client address)."""
        # Without a backup (most virtuals) the chain is the virtual: no walk per SYN.
        chain = (virtual,) if virtual.backup is None else self.backup_chain(virtual)
        for v in chain:
            if v.state is _IN_SERVICE:
                real = select_real(v, self._links_of(v), src, now, self.available_backup,
                                   commit, exclude, flow)
                if real is not None:
                    return Decision(virtual, real, v)
        return Decision(virtual, None)

    def _links_of(self, virtual: VirtualMachine) -> tuple[Link, ...]:
        """`virtual`'s links in order, walked once per generation rather than per SYN.
        Only which reals are bound is kept: whether each may take a connection now
        (health, probes, limits, none of which moves the generation) is asked anew."""
        if self._links_generation != self.generation:
            self._links.clear()
            self._links_generation = self.generation
        links = self._links.get(virtual)
        if links is None:
            links = self._links[virtual] = tuple(virtual.iter_links())
        return links

    def available_backup(self, r: PhysicalMachine) -> PhysicalMachine | None:
        """The first of `r`'s backups (and theirs) that may take a connection now."""
        chain = self.backup_chain(r)
        next(chain)
        return next((backup for backup in chain if health.available(backup)), None)

    # -- health (model/health.py): the data plane reports, these change states ------
    def note_failure(self, r: PhysicalMachine, now: float) -> None:
        health.note_failure(r, now, self.fmt)

    def note_answer(self, r: PhysicalMachine) -> None:
        health.note_answer(r, self.fmt)

    def tick(self, now: float) -> None:
        health.retry_due(self.reals.values(), now, self.fmt)

    # -- active probes (model/probes.py, docs/design.rst "Probes") --------------------
    def define_probe(self, name: str, kind: str, **settings: Any) -> Probe:
        """`probeconfig NAME TYPE ...`: the whole definition, replacing one of that name
        (its checks keep what they learnt; the new settings apply from the next probe)."""
        try:
            probe = Probe(name, kind, **settings)
        except ProbeError as err:
            raise ModelError(str(err)) from None
        self.probes[name] = probe
        self.changed()
        return probe

    def remove_probe(self, name: str) -> list[ServerId]:
        """`no probeconfig NAME`: the definition and its attachments; returns the ids it
        was attached to."""
        self._probe(name)
        detached = [sid for sid, attached in self.probe_attach.items() if attached == name]
        for sid in detached:
            del self.probe_attach[sid]
        del self.probes[name]
        self.changed()
        return detached

    def attach_probe(self, sid: ServerId, name: str) -> None:
        """`probe ID NAME`: one probe per server, re-typing replaces it. On a virtual it
        probes every bound real (a port-0 real on the virtual's port)."""
        probe = self._probe(name)
        if sid in self.reals:
            if not probe.port and not sid.port:
                raise ModelError(f"real {self.fmt(sid)} has port 0: probe {name} must name "
                                 "a port (probeconfig ... port N)")
        elif sid not in self.virtuals:
            raise ModelError(f"no virtual or real {self.fmt(sid)}")
        self.probe_attach[sid] = name
        self.changed()

    def detach_probe(self, sid: ServerId, name: str | None = None) -> None:
        attached = self.probe_attach.get(sid)
        if attached is None or name not in (None, attached):
            raise ModelError(f"no probe {name + ' ' if name else ''}attached to "
                             f"{self.fmt(sid)}")
        del self.probe_attach[sid]
        self.changed()

    def _probe(self, name: str) -> Probe:
        try:
            return self.probes[name]
        except KeyError:
            raise ModelError(f"no probe named '{name}' (probeconfig {name} tcp|http "
                             "defines one)") from None

    def _sync_checks(self) -> None:
        """After any change: the checks the attachments add up to now. A check that
        still exists keeps its results; attachments to removed servers go with them."""
        for sid in [s for s in self.probe_attach
                    if s not in self.reals and s not in self.virtuals]:
            del self.probe_attach[sid]
        checks: dict[CheckKey, ProbeCheck] = {}
        for sid, name in self.probe_attach.items():
            probe = self.probes[name]
            if sid in self.reals:
                targets = [(self.reals[sid], sid.port)]
            else:
                virtual = self.virtuals[sid]
                targets = [(link.real, link.real.port or virtual.port)
                           for link in virtual.iter_links()]
            for real, port in targets:
                port = probe.port or port
                key = (real.sid, name, port)
                check = self.checks.get(key) or ProbeCheck(
                    real.sid, probe, real.addr, port, UNKNOWN if port else NO_PORT)
                check.probe = probe
                checks[key] = check
        self.checks = checks
        for real in self.reals.values():
            real.probe_down = self._down_probe(real.sid)

    def _down_probe(self, sid: ServerId) -> str:
        """The name of a probe whose check holds the real out, "" when none does."""
        return next((c.probe.name for c in self.checks.values()
                     if c.real_sid == sid and c.state == probes.DOWN), "")

    def probe_result(self, check: ProbeCheck, good: bool, result: str, latency: float,
                     now: float) -> None:
        """The runner's report of one probe: counted, and the check's and its real's
        state follow (logged whenever they change). A report for a check removed while
        the probe ran (or of a model `reload` replaced) only counts."""
        counters = self.probe_counters
        counters.sent += 1
        if good:
            counters.ok += 1
        else:
            counters.failed += 1
        key = (check.real_sid, check.probe.name, check.port)
        if self.checks.get(key) is not check:
            return
        was = check.state
        new = probes.record(check, good, result, latency, now)
        if new is None:
            return
        real = self.reals[check.real_sid]
        out_before = real.probe_down
        real.probe_down = self._down_probe(real.sid)
        what = f"real {self.fmt(real.sid)} probe {check.probe.name} (port {check.port})"
        if new == probes.DOWN:
            log.warning("%s DOWN: %s%s", what, result,
                        "" if out_before else "; no new connections")
        elif was != UNKNOWN:
            log.warning("%s UP%s", what,
                        "; back in service" if out_before and not real.probe_down else "")

    def real_state(self, r: PhysicalMachine) -> str:
        """What `show real` calls its state: FAILED while a probe holds it out."""
        return health.state(r).value

    def real_cause(self, r: PhysicalMachine) -> str:
        return health.cause(r)

    # -- appliance settings (model/settings.py) --------------------------------------
    def set_hostname(self, name: str = DEFAULT_HOSTNAME) -> None:
        self.settings.hostname = name
        self.changed()

    def set_enable_secret(self, stored: str) -> None:
        """`enable password`: a hash from passwords.hash_password; "" = none."""
        self.settings.enable_secret = _checked_secret(stored)
        self.changed()

    def set_login_secret(self, stored: str) -> None:
        """`password` (remote logins): a hash from passwords.hash_password; "" = none."""
        self.settings.login_secret = _checked_secret(stored)
        self.changed()

    def add_access(self, kind: str, addr: int, prefixlen: int) -> None:
        """`telnet|ssh ADDR MASK`: let that network log in; listed once."""
        listed, network = self._access(kind, addr, prefixlen)
        if not any(e.addr == network and e.prefixlen == prefixlen for e in listed):
            listed.append(AccessEntry(network, prefixlen))
        self.changed()

    def remove_access(self, kind: str, addr: int, prefixlen: int) -> None:
        listed, network = self._access(kind, addr, prefixlen)
        match = [e for e in listed if e.addr == network and e.prefixlen == prefixlen]
        if not match:
            raise ModelError(f"no {kind} entry {format_ip(network)} "
                             f"{format_mask(prefixlen)}")
        listed.remove(match[0])
        self.changed()

    def _access(self, kind: str, addr: int, prefixlen: int) -> tuple[list[AccessEntry], int]:
        if kind not in ACCESS_KINDS:
            raise ModelError(f"no access list '{kind}'")
        return self.settings.access(kind), addr & prefix_mask(prefixlen)

    def client_matches(self, entries: list[AccessEntry], addr: int) -> bool:
        return any(e.admits(addr) for e in entries)

    def set_session_timeout(self, minutes: int = DEFAULT_SESSION_TIMEOUT,
                            seconds: int = 0) -> None:
        """`exec-timeout MINUTES [SECONDS]`; 0 0 = never."""
        if minutes < 0 or seconds < 0:
            raise ModelError("exec-timeout cannot be negative")
        self.settings.session_timeout = (minutes * 60 + seconds) / 60 if seconds else minutes
        self.changed()

    def set_conn_limit(self, limit: int = DEFAULT_MAX_CONNS) -> None:
        """`conn-limit N`: the connection table's size; SYNs beyond it are dropped."""
        if limit < 1:
            raise ModelError("conn-limit must be at least 1")
        self.settings.max_conns = limit
        self.changed()

    # -- remote syslog (docs/design.rst, "Monitoring") --------------------------------
    def add_log_host(self, addr: int, transport: str = "udp", port: int | None = None) -> None:
        """`logging host ADDR [transport udp|tcp [port N]]`: send the log there too; the
        port defaults to the transport's (514/udp, 601/tcp). Listed once."""
        if transport not in LOG_TRANSPORTS:
            raise ModelError(f"unknown logging transport '{transport}' (udp or tcp)")
        port = LOG_TRANSPORTS[transport] if port is None else port
        if not 1 <= port <= 65535:
            raise ModelError(f"logging port {port} out of range (1-65535)")
        first = addr >> 24
        if addr in (0, 0xFFFFFFFF) or first >= 224 or first == 0:
            raise ModelError(f"{format_ip(addr)} is not a host address a log can go to")
        entry = LogHost(addr, transport, port)
        if entry not in self.settings.log_hosts:
            self.settings.log_hosts.append(entry)
            self.changed()

    def remove_log_host(self, addr: int, transport: str | None = None,
                        port: int | None = None) -> None:
        """`no logging host ADDR [transport T [port N]]`: every entry for the address,
        or only the one of that transport (and port)."""
        if transport is not None and port is None:
            port = LOG_TRANSPORTS.get(transport)
        match = [h for h in self.settings.log_hosts if h.addr == addr
                 and transport in (None, h.transport) and port in (None, h.port)]
        if not match:
            raise ModelError(f"{format_ip(addr)}"
                             + (f" {transport} port {port}" if transport else "")
                             + " is not a logging host")
        self.settings.log_hosts = [h for h in self.settings.log_hosts if h not in match]
        self.changed()

    def set_log_trap(self, level: int | str = DEFAULT_LOG_TRAP) -> None:
        """`logging trap LEVEL`: an IOS severity name or its number 0-7; records of
        that severity and more severe go to the logging hosts."""
        if isinstance(level, str):
            if level not in LOG_LEVELS:
                raise ModelError(f"unknown logging level '{level}' "
                                 f"({', '.join(LOG_LEVELS)} or 0-7)")
            level = LOG_LEVELS.index(level)
        if not 0 <= level < len(LOG_LEVELS):
            raise ModelError(f"logging level {level} out of range (0-7)")
        self.settings.log_trap = level
        self.changed()


    # -- failover pair (model/failover.py; docs/design.rst, "Failover") ---------------
    def set_failover(self, on: bool) -> None:
        """`failover` / `no failover`: run as one unit of a pair."""
        self.settings.failover.enabled = on
        self.changed()

    def set_failover_peer(self, addr: int = 0) -> None:
        """`failover ip address IP`: the other unit's address on the failover link."""
        if addr and (addr >> 24 in (0, 127) or addr >> 28 >= 14):
            raise ModelError(f"{format_ip(addr)} cannot be a failover peer")
        self.settings.failover.peer = addr
        self.changed()

    def set_failover_timing(self, poll: int, hold: int) -> None:
        """`failover poll MS holdtime MS`. The hold time must cover keepalived's own
        verdict on a silent peer: 3 missed hellos plus its skew."""
        config = self.settings.failover
        low, high = POLL_RANGE_MS
        if not low <= poll <= high or poll % POLL_STEP_MS:
            raise ModelError(f"failover poll must be {low}-{high} ms in steps of "
                             f"{POLL_STEP_MS}")
        low, high = HOLD_RANGE_MS
        if not low <= hold <= high:
            raise ModelError(f"failover hold must be {low}-{high} ms")
        if hold < HOLD_POLLS * poll:
            raise ModelError(f"failover hold ({hold} ms) must be at least {HOLD_POLLS} "
                             f"polls ({HOLD_POLLS * poll} ms)")
        config.poll_ms, config.hold_ms = poll, hold
        self.changed()

    def set_replicate(self, on: bool) -> None:
        """`replicate`: send connection state to the standby (stateful failover)."""
        self.settings.failover.replicate = on
        self.changed()

    def add_failover_virtual(self, addr: int, prefixlen: int) -> None:
        """`failover virtual IP MASK`: an address that moves with the active unit."""
        host = addr & ~prefix_mask(prefixlen) & 0xFFFFFFFF
        if prefixlen < 31 and host in (0, ~prefix_mask(prefixlen) & 0xFFFFFFFF):
            raise ModelError(f"{format_ip(addr)} is not a host address of its network")
        listed = self.settings.failover.virtuals
        listed[:] = [(a, p) for a, p in listed if a != addr] + [(addr, prefixlen)]
        self.changed()

    def remove_failover_virtual(self, addr: int) -> None:
        listed = self.settings.failover.virtuals
        if not any(a == addr for a, _ in listed):
            raise ModelError(f"{format_ip(addr)} is not a failover virtual address")
        listed[:] = [(a, p) for a, p in listed if a != addr]
        self.changed()


def _checked_secret(stored: str) -> str:
    if stored and not is_hash(stored):
        raise ModelError("not a password hash written by this appliance")
    return stored


def _append(head, obj):
    """Append to a `next`-chained list (the patent's FIG. 2 chains); returns the head."""
    obj.next = None
    if head is None:
        return obj
    cur = head
    while cur.next is not None:
        cur = cur.next
    cur.next = obj
    return head


def _unlink(head, obj):
    prev, cur = None, head
    while cur is not None and cur is not obj:
        prev, cur = cur, cur.next
    if cur is None:
        return head
    nxt = cur.next
    cur.next = None
    if prev is None:
        return nxt
    prev.next = nxt
    return head
