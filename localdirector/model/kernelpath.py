"""The fast path decided in the kernel (`fastpath VIRTUAL kernel`): which virtuals the
kernel can decide by itself, and the model's own decisions in the form the kernel's
rules take them (docs/design.rst, "Decided in the kernel").

The kernel keeps no state of ours per connection: it picks the instance by the client's
address (a map of address ranges) and the real by a counter (`numgen`). So it can
decide a virtual only when the engine's choice depends on nothing else: roundrobin or
weighted, no sticky memory, no per-real connection limit, no passive health (which
needs each connection's answer). Everything else, health and backups included, is
decided here, in the model, and the rules are rewritten whenever it changes."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from math import gcd
from typing import TYPE_CHECKING

from .fastpath import reachable_reals
from .health import candidates
from .predictors import backup_for
from .real import DEFAULT_REASSIGN, DEFAULT_THRESHOLD
from .serverid import ALL_PORTS
from .state import State

if TYPE_CHECKING:
    from .director import Director
    from .real import PhysicalMachine
    from .virtual import VirtualMachine

# The predictors a counter can play: every real in turn, or in proportion to weights.
KERNEL_PREDICTORS = ("roundrobin", "weighted")
# What a new instance joining a kernel-decided group predicts with.
KERNEL_DEFAULT_PREDICTOR = "roundrobin"
ADDRESSES = 1 << 32


def refusal(director: Director, virtuals: Iterable[VirtualMachine]) -> str | None:
    """Why the kernel cannot decide these virtuals' connections, as the operator's
    one-line error; None when it can."""
    for v in virtuals:
        name = director.fmt(v.sid)
        if v.predictor not in KERNEL_PREDICTORS:
            return (f"{name} uses predictor {v.predictor}: the kernel decides only "
                    f"{' and '.join(KERNEL_PREDICTORS)}")
        if v.sticky:
            return f"{name} is sticky: the kernel keeps no memory of clients"
        if v.maxconns:
            return f"{name} has maxconns: the kernel does not count open connections"
        if v.dispatched:
            return f"{name} is dispatched: the fast path translates, dispatched does not"
        for r in reachable_reals(director, v):
            if r.maxconns:
                return (f"real {director.fmt(r.sid)} has maxconns: the kernel does not "
                        "count open connections")
            if (r.threshold, r.reassign) != (DEFAULT_THRESHOLD, DEFAULT_REASSIGN):
                return (f"real {director.fmt(r.sid)} sets threshold or reassign: passive "
                        "health needs the engine to see each connection")
    return None


@dataclass(frozen=True, slots=True)
class Pool:
    """What a new connection to an instance may get now: the instance that serves it
    (itself, or a backup virtual) and its reals with their shares of connections."""

    served: VirtualMachine
    reals: tuple[tuple[PhysicalMachine, int], ...]


def pool(director: Director, virtual: VirtualMachine) -> Pool | None:
    """Director.decide_for without per-connection memory: the reals its predictor would
    choose among (available ones, else the backup real of one that is not, else those
    whose first probe result is awaited), overflowing
    to the backup virtuals in service; None when nothing can take a connection (the
    engine refuses the SYN). The kernel cannot hand a TESTING real exactly one probe
    connection, so a TESTING real is simply available."""
    if virtual.state is not State.IN_SERVICE:
        return None
    for v in director.backup_chain(virtual):
        if v.state is not State.IN_SERVICE:
            continue
        bound = tuple(v.iter_links())
        links, _testing, pending = candidates(bound, None)
        backup = None if links else backup_for(bound, director.available_backup)
        if backup is not None:
            return Pool(v, ((backup, 1),))
        links = links or pending     # no real known good: those whose result is awaited
        if links:
            weights = [link.real.weight if v.predictor == "weighted" else 1
                       for link in links]
            common = gcd(*weights)
            return Pool(v, tuple((link.real, w // common) for link, w in zip(links, weights)))
    return None


def destinations(director: Director) -> list[tuple[int, int]]:
    """The (VIP, port) the kernel decides, port 0 for the VIP's all-ports instances, in
    the order of `by_dest` (every instance of a VIP shares the VIP's mode)."""
    return [dest for dest, instances in director.by_dest.items()
            if any(v.kernel for v in instances.values())]


def other_port(director: Director, addr: int) -> int | None:
    """A port no instance at `addr` names: what a SYN to the all-ports instances looks
    like to Director.lookup_virtual. None when every port is named."""
    return next((p for p in range(1, 65536) if (addr, p) not in director.by_dest), None)


def partition(director: Director, addr: int, port: int
              ) -> list[tuple[int, int, VirtualMachine]]:
    """(first, last, instance): client address ranges, ascending and disjoint, each
    with the instance Director.lookup_virtual selects for a SYN from it to addr:port
    (port 0: to a port no instance names). Ranges selecting none are left out.

    nft interval maps refuse overlapping prefixes, so longest-prefix match is resolved
    here: the assigned networks cut the address space into segments inside which no
    network starts or ends, so one lookup per segment (the model's own) decides it."""
    dport = port if port != ALL_PORTS else other_port(director, addr)
    if dport is None:
        return []
    cuts = {0, ADDRESSES}
    for obj in director.bindids:
        if obj.virtual.addr == addr:
            cuts.add(obj.client_ip)
            cuts.add(obj.client_ip + (1 << (32 - obj.prefixlen)))
    bounds = sorted(cuts)
    ranges: list[tuple[int, int, VirtualMachine]] = []
    for start, end in zip(bounds, bounds[1:]):
        chosen = director.lookup_virtual(start, addr, dport)
        if chosen is None:
            continue
        if ranges and ranges[-1][2] is chosen and ranges[-1][1] == start - 1:
            ranges[-1] = (ranges[-1][0], end - 1, chosen)
        else:
            ranges.append((start, end - 1, chosen))
    return ranges
