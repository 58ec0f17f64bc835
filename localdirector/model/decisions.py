"""FIG. 5's decisions over the model (docs/design.rst, "Object model", "Packet flow"):
the instance a client's address selects (steps 510-516) and the real its predictor picks
(step 518), overflowing to backup virtuals (patent ¶10). Mixed into Director, whose
indexes (`bindids`, `by_dest`), backup chains and generation it reads; one decision for
both protocols and every path that decides in Python."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from . import health
from .link import Link
from .predictors import select_real
from .real import PhysicalMachine
from .serverid import UDP_SERVICE
from .state import State
from .virtual import VirtualMachine

if TYPE_CHECKING:
    from .bindid import BindIdTable

Server = TypeVar("Server", VirtualMachine, PhysicalMachine)

_IN_SERVICE = State.IN_SERVICE   # per SYN: an Enum member is a class attribute lookup


@dataclass(slots=True)
class Decision:
    """Outcome of FIG. 5 steps 510-518 for one SYN."""

    virtual: VirtualMachine | None   # instance the client's address selected
    real: PhysicalMachine | None     # None: nothing can take the connection
    served_by: VirtualMachine | None = None  # differs from `virtual` after backup overflow


class Decisions:
    """Steps 510-518, asked by the data plane per SYN or first datagram and by `test
    assign`."""

    bindids: BindIdTable
    by_dest: dict[tuple[int, int], dict[int, VirtualMachine]]
    generation: int
    _links: dict[VirtualMachine, tuple[Link, ...]]
    _links_generation: int

    if TYPE_CHECKING:
        def backup_chain(self, server: Server) -> Iterator[Server]: ...

    def lookup_virtual(self, src: int, dst: int, dport: int,
                       count: bool = False) -> VirtualMachine | None:
        """Steps 510-516: the client's Bind ID instance, else the Bind ID 0 one. `count`
        adds the SYN to the Bind ID's hits (what-if questions do not). `dport` is a
        service port (serverid.UDP_SERVICE): the port itself for tcp, so a SYN pays
        nothing for udp but the mask of the all-ports fallback."""
        obj = self.bindids.lookup(src, dst, dport)
        if obj is not None:
            if count:
                obj.hits += 1
                obj.virtual.assign_hits += 1
            return obj.virtual
        general = self.by_dest.get((dst, dport))
        if general is not None and 0 in general:
            return general[0]
        general = self.by_dest.get((dst, dport & UDP_SERVICE))
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
            if v.state is _IN_SERVICE and (not v.maxconns
                                           or v.conns_current < v.maxconns):
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
