"""How each virtual's packets are translated, and the changes that choose it: in
userspace, on the fast path (decided by the engine or by the kernel), or forwarded
without translation (`dispatched`). Every change keeps the rule of model/fastpath.py:
virtuals netfilter cannot tell apart are translated the same way (docs/design.rst,
"Fast path" and "Scale-out"). Mixed into Director (model/director.py), whose lock,
`changed()` and indexes it uses."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from . import kernelpath
from .errors import ModelError
from .fastpath import group, mixed
from .udp import per_datagram_refusal

if TYPE_CHECKING:
    from .connection import ConnectionTable
    from .real import PhysicalMachine
    from .serverid import ServerId
    from .virtual import VirtualMachine


class TranslationModes:
    """`fastpath`, `dispatched` and the refusals that keep them consistent."""

    conns: ConnectionTable
    virtuals: dict[ServerId, VirtualMachine]

    if TYPE_CHECKING:
        def changed(self) -> None: ...

        def fmt(self, sid: ServerId) -> str: ...

        def virtual(self, sid: ServerId) -> VirtualMachine: ...

        def iter_virtuals(self) -> Iterator[VirtualMachine]: ...

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
        single = next((v for v in members if v.per_datagram), None)
        if on and single is not None:
            raise ModelError(per_datagram_refusal(self.fmt, single))
        dispatched = next((v for v in members if v.dispatched), None)
        if on and not kernel and dispatched is not None:
            raise ModelError(f"{self.fmt(dispatched.sid)} is dispatched: the fast path "
                             "translates, dispatched forwarding does not (fastpath "
                             f"{self.fmt(dispatched.sid)} kernel forwards it in the kernel)")
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
        if virtual.kernel:
            problem = kernelpath.refusal(self, [virtual])
            if problem is not None:
                virtual.dispatched = not on
                raise ModelError(problem)
        self.changed()

    def _refuse_dispatched(self, virtual: VirtualMachine, reals: list[PhysicalMachine]
                           ) -> None:
        """A dispatched virtual takes only port-0 reals, and is never on the fast path the
        engine decides (the kernel can forward it: model/kernelpath.py)."""
        if virtual.fastpath and not virtual.kernel:
            raise ModelError(f"{self.fmt(virtual.sid)} is on the fast path; dispatched "
                             "needs no fastpath")
        ported = next((r for r in reals if r.port), None)
        if ported is not None:
            raise ModelError(f"real {self.fmt(ported.sid)} has a port: a dispatched virtual "
                             "forwards without translation, so its reals take port 0")
