"""The whole model: lists chained as in FIG. 2, indexes for the packet path, one lock.

Every mutation goes through a method here so the indexes cannot drift from the lists;
callers hold `lock` for the span of one command so no reader sees half of it."""

from __future__ import annotations

import _thread
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .addr import prefix_mask
from .bindid import BindIdObject, BindIdTable
from .connection import ConnectionTable
from .link import Link
from .predictors import select_real
from .real import PhysicalMachine
from .serverid import ServerId
from .settings import Settings
from .state import State
from .virtual import VirtualMachine

log = logging.getLogger("localdirector")


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
        self._listeners: list[Callable[[], None]] = []

    # -- change notification -------------------------------------------------------
    def subscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def changed(self) -> None:
        self.generation += 1
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

    def add_virtual(self, sid: ServerId, state: State = State.IN_SERVICE) -> VirtualMachine:
        """`virtual ID [is|os]`: create, or change the state of an existing instance."""
        existing = self.virtuals.get(sid)
        if existing is not None:
            existing.state = state
            self.changed()
            return existing
        v = VirtualMachine(sid, state)
        self.virtuals[sid] = v
        self._virtual_head = _append(self._virtual_head, v)
        self.by_dest.setdefault((sid.addr, sid.port), {})[sid.bind] = v
        self.changed()
        return v

    def remove_virtual(self, sid: ServerId) -> None:
        v = self.virtual(sid)
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
        self.changed()

    # -- real machines -------------------------------------------------------------
    def add_real(self, sid: ServerId, state: State = State.IN_SERVICE) -> PhysicalMachine:
        if sid.bind:
            raise ModelError("a real server id takes no bind id")
        existing = self.reals.get(sid)
        if existing is not None:
            self.set_real_state(existing, state)
            return existing
        r = PhysicalMachine(sid, state)
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
        r.admin_state = state
        r.state = state
        r.testing = False
        r.consecutive_fails = 0
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

    # -- links ---------------------------------------------------------------------
    def bind(self, vsid: ServerId, rsid: ServerId) -> None:
        v, r = self.virtual(vsid), self.real(rsid)
        if any(link.real is r for link in v.iter_links()):
            return
        v.links = _append(v.links, Link(v, r))
        self.changed()

    def unbind(self, vsid: ServerId, rsid: ServerId) -> None:
        v, r = self.virtual(vsid), self.real(rsid)
        if not self._unlink_real(v, r):
            raise ModelError(f"{self.fmt(rsid)} is not bound to {self.fmt(vsid)}")
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
    def assign(self, vsid: ServerId, client_ip: int, prefixlen: int) -> BindIdObject:
        v = self.virtuals.get(vsid)
        if v is None:
            raise ModelError(f"virtual {self.fmt(vsid)} does not exist")
        if v.bind_id == 0:
            raise ModelError(f"virtual {self.fmt(vsid)} has Bind ID 0; assign needs a "
                             "non-zero Bind ID instance")
        existing = self.bindids.find(v, client_ip, prefixlen)
        if existing is not None:
            return existing
        obj = BindIdObject(client_ip, prefixlen, v)
        self.bindids.add(obj)
        self.changed()
        return obj

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
               commit: bool = True, exclude: PhysicalMachine | None = None) -> Decision:
        """Steps 510-518: instance by client address, then a real (`decide_for`).
        `exclude`: a real the connection is being reassigned away from."""
        virtual = self.lookup_virtual(src, dst, dport, count=commit)
        if virtual is None:
            return Decision(None, None)
        return self.decide_for(virtual, src, now, commit, exclude)

    def decide_for(self, virtual: VirtualMachine, src: int, now: float,
                   commit: bool = True, exclude: PhysicalMachine | None = None) -> Decision:
        """Step 518 for the instance the client's address selected: a real, overflowing
        to the backup virtual chain (patent ¶10) when the instance cannot take the
        connection. Apart from `decide` so the data plane looks the instance up once."""
        seen: set[int] = set()
        v: VirtualMachine | None = virtual
        while v is not None and id(v) not in seen:
            seen.add(id(v))
            if v.state is State.IN_SERVICE:
                real = select_real(v, src, now, self.available_backup, commit, exclude)
                if real is not None:
                    return Decision(virtual, real, v)
            v = self.virtuals.get(v.backup) if v.backup is not None else None
        return Decision(virtual, None)

    def available_backup(self, r: PhysicalMachine) -> PhysicalMachine | None:
        seen: set[int] = set()
        while r.backup is not None and id(r) not in seen:
            seen.add(id(r))
            backup = self.reals.get(r.backup)
            if backup is None:
                return None
            if backup.available():
                return backup
            r = backup
        return None

    # -- health (DESIGN §3 lifecycle) ----------------------------------------------
    def note_failure(self, r: PhysicalMachine, now: float) -> None:
        """A ditched connection; `threshold` in a row fail the real."""
        r.consecutive_fails += 1
        if r.state is State.TESTING:
            r.testing = False
            self._fail(r, now)
        elif r.state is State.IN_SERVICE and r.consecutive_fails >= r.threshold:
            self._fail(r, now)

    def note_answer(self, r: PhysicalMachine) -> None:
        r.consecutive_fails = 0
        if r.state is State.TESTING:
            r.testing = False
            r.state = State.IN_SERVICE
            log.warning("real %s answered its test connection: back in service",
                        self.fmt(r.sid))

    def _fail(self, r: PhysicalMachine, now: float) -> None:
        r.state = State.FAILED
        r.failed_at = now
        log.warning("real %s FAILED after %d unanswered connections",
                    self.fmt(r.sid), r.consecutive_fails)

    def tick(self, now: float) -> None:
        """FAILED reals whose retry time has passed go TESTING: the next connection tests them."""
        for r in self.reals.values():
            if r.state is State.FAILED and now - r.failed_at >= r.retry:
                r.state = State.TESTING
                r.testing = False
                log.warning("real %s retry: TESTING", self.fmt(r.sid))

    def virtual_state(self, v: VirtualMachine) -> str:
        """FIG. 3A 310: FAILED when every real that could serve it is failed."""
        if v.state is not State.IN_SERVICE:
            return v.state.value
        reals = [link.real for link in v.iter_links()]
        if reals and all(r.state is State.FAILED for r in reals):
            return State.FAILED.value
        return v.state.value

    def client_matches(self, entries: list, addr: int) -> bool:
        return any((addr & prefix_mask(e.prefixlen)) == e.addr for e in entries)


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
