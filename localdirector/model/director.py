"""The whole model: lists chained as in FIG. 2, indexes for the packet path, one lock
(docs/design.rst, "Object model").

Every mutation goes through a method here, which checks it and raises ModelError when
it is refused, so the indexes cannot drift from the lists and the fast-path rule
(model/fastpath.py) always holds; callers hold `lock` for the span of one command so no
reader sees half of it."""

from __future__ import annotations

import _thread
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from . import buddy, health, kernelpath, maglev
from .bgp import BgpSettings
from .bindid import BindIdObject, BindIdTable
from .chain import append as _append, unlink as _unlink
from .connection import ConnectionTable
from .decisions import Decisions
from .errors import ModelError
from .failover import FailoverSettings
from .family import refuse_client_network, refuse_other_family
from .link import Link
from .options import REAL_OPTIONS, VIRTUAL_OPTIONS
from .probe_config import CheckKey, ProbeConfig
from .probes import Probe, ProbeCheck, ProbeCounters
from .real import PhysicalMachine
from .serverid import ServerId
from .settings import ApplianceSettings, Settings
from .snmp import SnmpSettings
from .state import State
from .translation import TranslationModes
from .udp import UdpSettings, refuse_other_protocol
from .virtual import VirtualMachine

Server = TypeVar("Server", VirtualMachine, PhysicalMachine)


class Director(Decisions, TranslationModes, UdpSettings, ProbeConfig, ApplianceSettings,
               FailoverSettings, BgpSettings, SnmpSettings, health.HealthWatch):
    """The model; how virtuals are translated and the configuration beyond the
    patent's objects (probes, appliance settings, the failover pair, BGP) are changed
    by the methods of its mixins, each beside the data it changes."""

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
        # (address, service port) -> {bind id: virtual}: FIG. 5 steps 512/516 without a
        # scan; the service port tells tcp from udp (serverid.UDP_SERVICE).
        self.by_dest: dict[tuple[int, int], dict[int, VirtualMachine]] = {}
        # Bumped on every change so the netfilter rule manager knows to resync.
        self.generation = 0
        # Each virtual's links as a tuple, for `decide_for`; valid for one generation
        # (bind, unbind and the removal of either side all bump it).
        self._links: dict[VirtualMachine, tuple[Link, ...]] = {}
        self._links_generation = -1
        self._listeners: list[Callable[[], None]] = []
        self.health_watchers: list[health.Watcher] = []
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
        self.by_dest.setdefault((sid.addr, v.service), {})[sid.bind] = v
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
        dest = self.by_dest[(sid.addr, v.service)]
        del dest[sid.bind]
        if not dest:
            del self.by_dest[(sid.addr, v.service)]
        if v.buddy:
            buddy.regroup(self.virtuals.values())

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
    def set_option(self, sid: ServerId, name: str, value: int | str | None) -> None:
        """`weight ID N`, `predictor ID NAME`, ...: one of REAL_OPTIONS on a real or
        VIRTUAL_OPTIONS on a virtual, checked against its declared values. None: the
        option's default for the server's protocol (`no timeout ID`)."""
        server: VirtualMachine | PhysicalMachine
        if (name in REAL_OPTIONS and name not in VIRTUAL_OPTIONS
                and sid not in self.reals and sid in self.virtuals):
            # LocalDirector's rule: a virtual id in a real's command stands for every
            # real bound to it (`retry 192.0.2.10:80 30`); the running config keeps
            # the reals' own lines, which say the same.
            for link in list(self.virtuals[sid].iter_links()):
                self.set_option(link.real.sid, name, value)
            return
        # A setting of both (maxconns, timeout): the real's with a real's id, else the
        # virtual's; no id names both (_refuse_same_id).
        if name in REAL_OPTIONS and (sid in self.reals or name not in VIRTUAL_OPTIONS):
            server, option = self.real(sid), REAL_OPTIONS[name]
        elif name in VIRTUAL_OPTIONS:
            if name in REAL_OPTIONS and not sid.bind and sid not in self.virtuals:
                raise ModelError(f"no virtual or real {self.fmt(sid)}")
            server, option = self.virtual(sid), VIRTUAL_OPTIONS[name]
        else:
            raise ModelError(f"no server setting '{name}'")
        # The default is never refused: a real's `timeout` has none in its range.
        refusal = None if value is None else option.refusal(name, value)
        if value is None:
            value = option.default_of(server.sid.proto)
        if refusal is None and option.udp_only and server.sid.proto != "udp":
            refusal = f"{name} applies to udp virtuals only"
        if refusal is not None:
            raise ModelError(refusal)
        previous = getattr(server, name)
        setattr(server, name, value)
        self._refuse_mixed(lambda: setattr(server, name, previous))
        self.changed()

    def changed_options(self, name: str) -> list[tuple[ServerId, int | str]]:
        """(id, value) of every server whose option `name` is not its default, in
        configuration order: the running config's lines for it."""
        found: list[tuple[ServerId, int | str]] = []
        for options, servers in ((REAL_OPTIONS, self.iter_reals()),
                                 (VIRTUAL_OPTIONS, self.iter_virtuals())):
            if name in options:
                option = options[name]
                found += [(s.sid, getattr(s, name)) for s in servers
                          if getattr(s, name) != option.default_of(s.sid.proto)]
        return found

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
            refuse_other_protocol(self.fmt, sid, backup, "backup")
            refuse_other_family(self.fmt, sid, backup, "backup")
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

    # -- links ---------------------------------------------------------------------
    def bind(self, vsid: ServerId, *rsids: ServerId) -> None:
        """`bind VIRTUAL REAL...`: every id checked before any change; already bound
        reals are left as they are. Refused when it would mix fast path and userspace."""
        v = self.virtual(vsid)
        reals = [self.real(sid) for sid in dict.fromkeys(rsids)]
        for r in reals:
            refuse_other_protocol(self.fmt, vsid, r.sid, "bind")
            refuse_other_family(self.fmt, vsid, r.sid, "bind")
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
        refuse_client_network(self.fmt, vsid, client_ip, prefixlen)
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

    # -- health (model/health.py): the data plane reports, these change states ------
    def note_failure(self, r: PhysicalMachine, now: float) -> None:
        before = health.state(r)
        health.note_failure(r, now, self.fmt)
        self.health_moved(r, before)

    def note_answer(self, r: PhysicalMachine) -> None:
        before = health.state(r)
        health.note_answer(r, self.fmt)
        self.health_moved(r, before)

    def tick(self, now: float) -> None:
        health.retry_due(self.reals.values(), now, self.fmt)
        self.end_overdue_pending(time.monotonic())   # probe_config.py's clock, not `now`

    def real_state(self, r: PhysicalMachine) -> str:
        """What `show real` calls its state: FAILED while a probe holds it out."""
        return health.state(r).value

    def real_cause(self, r: PhysicalMachine) -> str:
        return health.cause(r)

