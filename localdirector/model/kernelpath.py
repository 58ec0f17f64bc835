"""The fast path decided in the kernel (`fastpath VIRTUAL kernel`): which virtuals the
kernel can decide by itself, and the model's own decisions in the form the kernel's
rules take them (docs/design.rst, "Decided in the kernel").

The kernel keeps no state of ours per translated connection: it picks the instance by
the client's address (a map of address ranges) and the real by a counter (`numgen`), by
a hash of the flow into the virtual's Maglev table (`jhash`), or by the client's
address in a set of its own with a timeout (sticky). So it can decide a virtual only
when the engine's choice depends on nothing else: roundrobin, weighted or maglev, no
per-real connection limit, no passive health (which needs each connection's answer). A
dispatched virtual is forwarded packet by packet; the kernel remembers each flow's real
for the idle timeout (`memory`), but a flow it never saw open (ECMP moved it here from
another director) must find the same real by its hash: maglev only, and no sticky
(each director would remember its own clients). Everything else, health and backups
included, is decided here, in the model, and the rules are rewritten whenever it
changes."""

from __future__ import annotations

from collections.abc import Iterable
import hashlib
from dataclasses import dataclass
from math import gcd
from typing import TYPE_CHECKING

from .addr import family_of
from .fastpath import reachable_reals
from .health import candidates
from .maglev import DEFAULT_SIZE, MaglevTable
from .predictors import backup_for
from .real import DEFAULT_DELAY, DEFAULT_REASSIGN, DEFAULT_THRESHOLD
from .serverid import ALL_PORTS, UDP_SERVICE
from .state import State

if TYPE_CHECKING:
    from .director import Director
    from .real import PhysicalMachine
    from .virtual import VirtualMachine

# The predictors the kernel can play: a counter (every real in turn, or in proportion to
# weights) or a hash of the flow into the Maglev table.
KERNEL_PREDICTORS = ("roundrobin", "weighted", "maglev")
# The Maglev slots loaded into the kernel unless `table-size` says otherwise. nft loads
# 65,537 in about 0.3 s, but nft 1.0.6 reads every element back to list anything of the
# table, which the rule sync does every 2 s (verification, counters): 0.3-0.5 s of CPU
# each time at 65,537, 10-45 ms at 4,099. Maglev gives every real M/N slots +-1 at any
# size; a smaller table moves more than 1/N of the flows when a real leaves once the
# reals are many (one of 100: 4.6 % at 4,099, 1.6 % at 65,537), so a configured size
# is loaded as it is (docs/design.rst, "Decided in the kernel").
KERNEL_MAGLEV_SIZE = 4099
# What a new instance joining a kernel-decided group predicts with.
KERNEL_DEFAULT_PREDICTOR = "roundrobin"


def refusal(director: Director, virtuals: Iterable[VirtualMachine]) -> str | None:
    """Why the kernel cannot decide these virtuals' connections, as the operator's
    one-line error; None when it can."""
    for v in virtuals:
        name = director.fmt(v.sid)
        if v.predictor not in KERNEL_PREDICTORS:
            return (f"{name} uses predictor {v.predictor}: the kernel decides only "
                    f"{', '.join(KERNEL_PREDICTORS[:-1])} and {KERNEL_PREDICTORS[-1]}")
        if v.maxconns:
            return f"{name} has maxconns: the kernel does not count open connections"
        if v.dispatched and v.predictor != "maglev":
            return (f"{name} is dispatched: the kernel forwards each packet by itself, "
                    "so only predictor maglev finds the same real for all of them")
        if v.dispatched and v.sticky:
            return (f"{name} is dispatched and sticky: each director would remember its "
                    "own clients, and the kernel remembers flows, not clients")
        if v.buddy:
            return (f"{name} is in buddy group {v.buddy}: following its buddies' sticky "
                    "clients needs the engine to decide")
        other = next((o for o in _decided_with(director, v) if o.dispatched != v.dispatched),
                     None)
        if other is not None:
            forwarded, translated = (v, other) if v.dispatched else (other, v)
            return (f"{director.fmt(forwarded.sid)} is dispatched and "
                    f"{director.fmt(translated.sid)} is not, but the kernel decides their "
                    "connections in one chain (a VIP's instances and their backups)")
        for r in reachable_reals(director, v):
            if r.maxconns:
                return (f"real {director.fmt(r.sid)} has maxconns: the kernel does not "
                        "count open connections")
            if r.delay != DEFAULT_DELAY:
                return (f"real {director.fmt(r.sid)} sets delay: the kernel's conntrack "
                        "times its closed connections")
            if (r.threshold, r.reassign) != (DEFAULT_THRESHOLD, DEFAULT_REASSIGN):
                return (f"real {director.fmt(r.sid)} sets threshold or reassign: passive "
                        "health needs the engine to see each connection")
    return None


def memory(director: Director, virtual: VirtualMachine) -> tuple[int, tuple[int, ...]]:
    """(seconds, real addresses) of a dispatched instance's flow memory: the longest
    idle timeout of it, its backup virtuals and their reals' own (a remembered flow is
    refreshed by each packet for that long), and the reals its flows may be remembered
    on, which are every real bound behind it, whatever its health: a real taken out
    keeps its open flows, one no longer bound forgets them."""
    reals = reachable_reals(director, virtual)
    seconds = max([v.timeout for v in director.backup_chain(virtual)]
                  + [r.timeout for r in reals])
    return seconds, tuple(r.addr for r in reals)


def _decided_with(director: Director, virtual: VirtualMachine) -> Iterable[VirtualMachine]:
    """Virtuals whose connections the kernel decides in the chains of `virtual`'s: every
    instance of its VIP (one VIP:port's source map reaches the VIP's port-0 instances)
    and its backup virtuals, which serve from its instance chain."""
    yield from (o for o in director.iter_virtuals() if o.addr == virtual.addr)
    yield from director.backup_chain(virtual)


@dataclass(frozen=True, slots=True)
class Pool:
    """What a new connection to an instance may get now: the instance that serves it
    (itself, or a backup virtual) and its reals with their shares of connections."""

    served: VirtualMachine
    reals: tuple[tuple[PhysicalMachine, int], ...]

    def maglev(self) -> tuple[int, MaglevTable] | None:
        """(jhash seed, table of the reals) when the serving virtual predicts with
        maglev: the model's own table (model/maglev.py, identical in every process) at
        its configured `table-size`, or KERNEL_MAGLEV_SIZE when none is configured. None
        for the counters."""
        if self.served.predictor != "maglev":
            return None
        size = self.served.maglev_size
        if size == DEFAULT_SIZE:   # not configured: the kernel's own default
            size = KERNEL_MAGLEV_SIZE
        table = MaglevTable.build([(r.addr, r.port, r.weight) for r, _ in self.reals], size)
        return seed(self.served), table


def seed(virtual: VirtualMachine) -> int:
    """The jhash seed of a virtual's flows: from its identity (VIP, port, Bind ID) only,
    so every director with the same configuration hashes a flow alike, and not from its
    reals, whose change would rehash every flow instead of the 1/N Maglev moves."""
    data = f"{virtual.addr}:{virtual.port}:{virtual.bind_id}".encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=4,
                                          person=b"ld-kernel-seed").digest(), "big")


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
    """The (VIP, service port) the kernel decides, port 0 (with its protocol) for the
    VIP's all-ports instances, in the order of `by_dest` (every instance of a VIP and
    protocol shares one mode)."""
    return [dest for dest, instances in director.by_dest.items()
            if any(v.kernel for v in instances.values())]


def other_port(director: Director, addr: int, proto: int = 0) -> int | None:
    """A service port of protocol `proto` (UDP_SERVICE or 0) no instance at `addr`
    names: what a SYN or first datagram to the all-ports instances looks like to
    Director.lookup_virtual. None when every port is named."""
    return next((p | proto for p in range(1, 65536)
                 if (addr, p | proto) not in director.by_dest), None)


def partition(director: Director, addr: int, port: int
              ) -> list[tuple[int, int, VirtualMachine]]:
    """(first, last, instance): client address ranges, ascending and disjoint, each
    with the instance Director.lookup_virtual selects for a SYN from it to addr:port
    (a service port; port 0: to a port no instance names). Ranges selecting none are
    left out.

    nft interval maps refuse overlapping prefixes, so longest-prefix match is resolved
    here: the assigned networks cut the address space into segments inside which no
    network starts or ends, so one lookup per segment (the model's own) decides it.
    The address space is the VIP's family's (model/addr.py: an IPv6 client's address
    int carries the family's tag); networks of the other family never match."""
    dport = port if port & 0xFFFF != ALL_PORTS else other_port(director, addr,
                                                               port & UDP_SERVICE)
    if dport is None:
        return []
    family = family_of(addr)
    cuts = {family.tag, family.tag + (1 << family.width)}
    for obj in director.bindids:
        if obj.virtual.addr == addr and family_of(obj.client_ip) is family:
            cuts.add(obj.client_ip)
            cuts.add(obj.client_ip + (1 << (family.width - obj.prefixlen)))
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
