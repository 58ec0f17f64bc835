"""The kernel-decided fast path's desired state, computed from the model (pure, under
the model lock: `desired_kernel`): per kernel-decided VIP:port its client ranges and
their instances, each instance's slots over its reals' branches, and the counters whose
increments fold into the model's totals (docs/design.rst, "Decided in the kernel").
`nftables.py` renders it, for either address family; what differs between the families
is only the addresses, so nothing here asks which one it is but `KernelRules.of`."""

from __future__ import annotations

from dataclasses import dataclass

from ..model import kernelpath
from ..model.addr import FAMILIES, IPV4, IPV6, Family, family_of, format_ip
from ..model.director import Director
from ..model.serverid import ServerId

# The protocols, named here only: their words in the rules come from nftables.py.
PROTOCOLS = ("tcp", "udp")


def _word(addr: int) -> str:
    """An address as part of a name nft takes: 192.0.2.10 -> 192_0_2_10, 2001:db8::10 ->
    2001-db8--10 ('-' is no hex digit, so names stay distinct)."""
    return format_ip(addr).replace(".", "_").replace(":", "-")


def family_names(family: Family, names: frozenset[str]) -> frozenset[str]:
    """Those of our object `names` that belong to `family`'s table: each names an
    address as `_word` writes it, an IPv6 one with '-', which no IPv4 name has."""
    return frozenset(n for n in names if ("-" in n) == (family is IPV6))


def _ident(sid: ServerId) -> str:
    """A server id as a word nft takes in names: 192.0.2.10:80:0 -> 192_0_2_10_80_0
    (a udp one's with _udp after it)."""
    return f"{_word(sid.addr)}_{sid.port}_{sid.bind}{'_udp' if sid.proto == 'udp' else ''}"


class _Addressed:
    """What an object's table is: its address's family."""

    __slots__ = ()
    addr: int

    @property
    def family(self) -> Family:
        return family_of(self.addr)


@dataclass(frozen=True, slots=True)
class Branch(_Addressed):
    """One real of one serving instance: a chain that counts and DNATs, or for a
    dispatched instance counts SYNs, remembers the flow's real for `remember` seconds
    (its idle timeout) and copies every packet unchanged to the real (`forward`).
    `sticky` minutes: it notes the client in its set first."""

    chain: str
    counter: str
    addr: int
    port: int              # 0: the client's port stays
    forward: bool = False
    sticky: int = 0
    proto: str = "tcp"
    remember: int = 0

    @property
    def memory(self) -> str:
        """The sticky set: named with its timeout, which a set keeps from its creation."""
        return f"k{self.chain[1:]}_{self.sticky}"


@dataclass(frozen=True, slots=True)
class Instance:
    """An instance's chain: `slots` (first, last, branch chain) of a counter modulo
    `modulus`, or of the flow's jhash with `seed` (maglev), or, when nothing can serve
    it, a counted RST (`refused`). `remembered`: sticky branches, whose set the client
    is looked up in first."""

    chain: str
    modulus: int
    slots: tuple[tuple[int, int, str], ...]
    refused: str           # the refusal counter's name
    seed: int | None = None
    remembered: tuple[Branch, ...] = ()
    forward: bool = False
    proto: str = "tcp"
    family: Family = IPV4


@dataclass(frozen=True, slots=True)
class Destination(_Addressed):
    """One VIP:port (a service port; port 0: every other port of the VIP and
    protocol): client address ranges (first, last, instance chain). `forward`:
    dispatched, every packet is decided, a remembered flow's first, refreshed for
    `remember` seconds."""

    addr: int
    port: int
    ranges: tuple[tuple[int, int, str], ...]
    forward: bool = False
    remember: int = 0

    @property
    def proto(self) -> str:
        return PROTOCOLS[self.port >> 16]

    @property
    def chain(self) -> str:
        return f"d_{self._name}"

    @property
    def map(self) -> str:
        return f"s_{self._name}"

    @property
    def _name(self) -> str:
        return f"{_word(self.addr)}_{self.port & 0xFFFF}{'_udp' if self.port >> 16 else ''}"


@dataclass(frozen=True, slots=True)
class KernelRules:
    """Everything the table holds; comparable, so an unchanged model costs no nft run.
    `owners`: counter name -> (virtual, real) whose totals it adds to (real None: the
    virtual's refused SYNs). `bound`: (protocol, real) whose remembered flows go on,
    every real bound behind a dispatched VIP whatever its health."""

    destinations: tuple[Destination, ...] = ()
    instances: tuple[Instance, ...] = ()
    branches: tuple[Branch, ...] = ()
    owners: tuple[tuple[str, ServerId, ServerId | None], ...] = ()
    bound: frozenset[tuple[str, int]] = frozenset()

    @property
    def counters(self) -> frozenset[str]:
        return frozenset(name for name, _v, _r in self.owners)

    @property
    def sets(self) -> frozenset[str]:
        return frozenset(b.memory for b in self.branches if b.sticky)

    @property
    def memories(self) -> frozenset[str]:
        """The flow memories (one per protocol with a dispatched VIP)."""
        return frozenset(memory_name(d.proto) for d in self.destinations if d.forward)

    @property
    def families(self) -> tuple[Family, ...]:
        """The families whose table must exist: those of a kernel-decided VIP."""
        return tuple(f for f in FAMILIES if any(d.family is f for d in self.destinations))

    def of(self, family: Family) -> KernelRules:
        """What the table of `family` holds (a virtual and its reals and backups are of
        one family: model.addr, binding across families is refused)."""
        return KernelRules(tuple(d for d in self.destinations if d.family is family),
                           tuple(i for i in self.instances if i.family is family),
                           tuple(b for b in self.branches if b.family is family),
                           tuple(o for o in self.owners if family_of(o[1].addr) is family),
                           frozenset(b for b in self.bound if family_of(b[1]) is family))


def memory_name(proto: str) -> str:
    """A table's flow memory of `proto`: its dispatched flows' reals."""
    return f"flows_{proto}"


def desired_kernel(director: Director) -> KernelRules:
    """Snapshot of the kernel-decided virtuals as rules; call with ``director.lock``
    held. Only reals the engine would pick now are in (model/kernelpath.py's pool), so
    this is recomputed on every model change, health included."""
    destinations = []
    instances: dict[str, Instance] = {}
    branches: dict[str, Branch] = {}
    owners: dict[str, tuple[ServerId, ServerId | None]] = {}
    bound: set[tuple[str, int]] = set()
    for addr, port in kernelpath.destinations(director):
        ranges = []
        forward = False
        remember = 0
        for first, last, virtual in kernelpath.partition(director, addr, port):
            chain = f"i_{_ident(virtual.sid)}"
            if chain not in instances:
                instances[chain] = _instance(director, virtual, chain, branches, owners)
            forward = virtual.dispatched   # all or none of a VIP (kernelpath.refusal)
            ranges.append((first, last, chain))
            if forward:
                seconds, reals = kernelpath.memory(director, virtual)
                remember = max(remember, seconds)
                bound.update((virtual.proto, real) for real in reals)
        destinations.append(Destination(addr, port, tuple(ranges), forward, remember))
    return KernelRules(tuple(destinations), tuple(instances.values()),
                       tuple(branches.values()),
                       tuple((name, v, r) for name, (v, r) in owners.items()),
                       frozenset(bound))


def _instance(director: Director, virtual, chain: str, branches: dict[str, Branch],
              owners: dict[str, tuple[ServerId, ServerId | None]]) -> Instance:
    refused = f"x_{_ident(virtual.sid)}"
    owners[refused] = (virtual.sid, None)
    pool = kernelpath.pool(director, virtual)
    proto, family = virtual.proto, family_of(virtual.addr)
    if pool is None:
        return Instance(chain, 0, (), refused, forward=virtual.dispatched, proto=proto,
                        family=family)
    served = pool.served
    mine = []
    for real, _share in pool.reals:
        name = f"{_ident(served.sid)}__{_ident(real.sid)}"
        branch = branches.setdefault(f"r_{name}", Branch(
            f"r_{name}", f"c_{name}", real.addr, real.port, served.dispatched, served.sticky,
            proto, real.idle_timeout(served) if served.dispatched else 0))
        owners[branch.counter] = (served.sid, real.sid)
        mine.append(branch.chain)
    remembered = tuple(branches[c] for c in mine if branches[c].sticky)
    hashed = pool.maglev()
    if hashed is not None:
        seed, table = hashed
        # The table's members are sorted; map each back to its branch chain.
        chains = {(r.addr, r.port): c for (r, _s), c in zip(pool.reals, mine)}
        return Instance(chain, table.size, _runs([chains[m[:2]] for m in table.members],
                                                 table.table), refused, seed, remembered,
                        virtual.dispatched, proto, family)
    slots = []
    at = 0
    for (_real, share), branch_chain in zip(pool.reals, mine):
        slots.append((at, at + share - 1, branch_chain))
        at += share
    return Instance(chain, at, tuple(slots), refused, None, remembered, virtual.dispatched,
                    proto, family)


def _runs(chains: list[str], table) -> tuple[tuple[int, int, str], ...]:
    """A Maglev table as (first slot, last slot, branch chain), neighbours merged."""
    runs: list[tuple[int, int, str]] = []
    for slot, index in enumerate(table):
        chain = chains[index]
        if runs and runs[-1][2] == chain:
            runs[-1] = (runs[-1][0], slot, chain)
        else:
            runs.append((slot, slot, chain))
    return tuple(runs)
