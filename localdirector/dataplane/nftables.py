"""The kernel-decided fast path as nftables rules: the desired state computed from the
model (pure, `desired_kernel`), its text (`definition`, and the transactions that
install, update and remove it), the parsing of `nft -j` listings, and the one function
that runs nft (docs/design.rst, "Decided in the kernel").

Everything lives in one table of our own per queue (``ip localdirector<N>``), so it is
replaced or removed without touching anybody else's rules. Per kernel-decided VIP:port
(port 0: the VIP's all-ports instances) a chain maps the client's address, as disjoint
ranges, to the chain of the instance its Bind ID selects; that one counts (`numgen`) or
hashes the flow into its Maglev table (`jhash`) over its reals' branches, each a named
counter and a DNAT, or for a dispatched virtual a copy of the unchanged packet to the
real (`dup`). Sticky instances look the client up in a set per real first. The
counters and the sticky sets outlive updates: an update flushes the table's rules and
redefines its chains and maps around them, so the connection counts folded into the
model stay exact and clients keep their reals."""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..model import kernelpath
from ..model.addr import format_ip
from ..model.director import Director
from ..model.serverid import ALL_PORTS, ServerId
from .iptables import run_tool

BASE = "prerouting"        # translated connections: nat PREROUTING, at dstnat
FORWARD = "dispatch"       # dispatched packets: filter PREROUTING, after iptables' raw
# The protocols, named here only: their words in the rules come from the helpers below.
PROTOCOLS = ("tcp", "udp")
STICKY_CLIENTS = 65536     # per sticky set, as the engine's STICKY_LIMIT


def syn_only(proto: str) -> str:
    """What opens a connection: a TCP SYN; for UDP any datagram (conntrack's NEW)."""
    return f"{proto} flags & (fin | syn | rst | ack) == syn" if proto == "tcp" else ""


def five_tuple(proto: str) -> str:
    """What jhash hashes: the flow, as the engine's flow key holds it."""
    return f"ip saddr . {proto} sport . ip daddr . {proto} dport"


def refuse(proto: str) -> str:
    """Nothing can take it: the RST a closed port sends, as the engine refuses a SYN; a
    datagram is only dropped, as the engine drops it (no ICMP error a spoofed flood
    could reflect)."""
    return "reject with tcp reset" if proto == "tcp" else "drop"


def table_name(queue_num: int) -> str:
    return f"localdirector{queue_num}"


def _ident(sid: ServerId) -> str:
    """A server id as a word nft takes in names: 192.0.2.10:80:0 -> 192_0_2_10_80_0
    (a udp one's with _udp after it)."""
    return (f"{format_ip(sid.addr).replace('.', '_')}_{sid.port}_{sid.bind}"
            f"{'_udp' if sid.proto == 'udp' else ''}")


@dataclass(frozen=True, slots=True)
class Branch:
    """One real of one serving instance: a chain that counts and DNATs, or for a
    dispatched instance counts SYNs and copies every packet unchanged to the real
    (`forward`). `sticky` minutes: it notes the client in its set first."""

    chain: str
    counter: str
    addr: int
    port: int              # 0: the client's port stays
    forward: bool = False
    sticky: int = 0
    proto: str = "tcp"

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


@dataclass(frozen=True, slots=True)
class Destination:
    """One VIP:port (a service port; port 0: every other port of the VIP and
    protocol): client address ranges (first, last, instance chain). `forward`:
    dispatched, every packet is decided."""

    addr: int
    port: int
    ranges: tuple[tuple[int, int, str], ...]
    forward: bool = False

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
        return (f"{format_ip(self.addr).replace('.', '_')}_{self.port & 0xFFFF}"
                f"{'_udp' if self.port >> 16 else ''}")


@dataclass(frozen=True, slots=True)
class KernelRules:
    """Everything the table holds; comparable, so an unchanged model costs no nft run.
    `owners`: counter name -> (virtual, real) whose totals it adds to (real None: the
    virtual's refused SYNs)."""

    destinations: tuple[Destination, ...] = ()
    instances: tuple[Instance, ...] = ()
    branches: tuple[Branch, ...] = ()
    owners: tuple[tuple[str, ServerId, ServerId | None], ...] = ()

    @property
    def counters(self) -> frozenset[str]:
        return frozenset(name for name, _v, _r in self.owners)

    @property
    def sets(self) -> frozenset[str]:
        return frozenset(b.memory for b in self.branches if b.sticky)


def desired_kernel(director: Director) -> KernelRules:
    """Snapshot of the kernel-decided virtuals as rules; call with ``director.lock``
    held. Only reals the engine would pick now are in (model/kernelpath.py's pool), so
    this is recomputed on every model change, health included."""
    destinations = []
    instances: dict[str, Instance] = {}
    branches: dict[str, Branch] = {}
    owners: dict[str, tuple[ServerId, ServerId | None]] = {}
    for addr, port in kernelpath.destinations(director):
        ranges = []
        forward = False
        for first, last, virtual in kernelpath.partition(director, addr, port):
            chain = f"i_{_ident(virtual.sid)}"
            if chain not in instances:
                instances[chain] = _instance(director, virtual, chain, branches, owners)
            forward = virtual.dispatched   # all or none of a VIP (kernelpath.refusal)
            ranges.append((first, last, chain))
        destinations.append(Destination(addr, port, tuple(ranges), forward))
    return KernelRules(tuple(destinations), tuple(instances.values()),
                       tuple(branches.values()),
                       tuple((name, v, r) for name, (v, r) in owners.items()))


def _instance(director: Director, virtual, chain: str, branches: dict[str, Branch],
              owners: dict[str, tuple[ServerId, ServerId | None]]) -> Instance:
    refused = f"x_{_ident(virtual.sid)}"
    owners[refused] = (virtual.sid, None)
    pool = kernelpath.pool(director, virtual)
    proto = virtual.proto
    if pool is None:
        return Instance(chain, 0, (), refused, forward=virtual.dispatched, proto=proto)
    served = pool.served
    mine = []
    for real, _share in pool.reals:
        name = f"{_ident(served.sid)}__{_ident(real.sid)}"
        branch = branches.setdefault(f"r_{name}", Branch(
            f"r_{name}", f"c_{name}", real.addr, real.port, served.dispatched, served.sticky,
            proto))
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
                        virtual.dispatched, proto)
    slots = []
    at = 0
    for (_real, share), branch_chain in zip(pool.reals, mine):
        slots.append((at, at + share - 1, branch_chain))
        at += share
    return Instance(chain, at, tuple(slots), refused, None, remembered, virtual.dispatched,
                    proto)


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


# -- text ----------------------------------------------------------------------------

def _span(first: int, last: int, fmt=format_ip) -> str:
    return fmt(first) if first == last else f"{fmt(first)}-{fmt(last)}"


def _instance_rules(instance: Instance) -> list[str]:
    """A sticky client's remembered real first, then the counter or the hash. A
    dispatched instance sees every packet: only a SYN counts as a refused connection
    (a forwarded datagram is never tracked, so none is told first: not counted)."""
    proto = instance.proto
    if not instance.slots:
        if instance.forward:
            return [*_opening(proto, f'counter name "{instance.refused}"'), refuse(proto)]
        return [f'counter name "{instance.refused}" {refuse(proto)}']
    rules = [f"ip saddr @{b.memory} goto {b.chain}" for b in instance.remembered]
    if len(instance.slots) == 1:
        return [*rules, f"goto {instance.slots[0][2]}"]
    slots = ", ".join(f"{_span(a, b, str)} : goto {chain}" for a, b, chain in instance.slots)
    pick = (f"numgen inc mod {instance.modulus}" if instance.seed is None else
            f"jhash {five_tuple(proto)} mod {instance.modulus} seed 0x{instance.seed:08x}")
    return [*rules, f"{pick} vmap {{ {slots} }}"]


def _branch_rules(branch: Branch) -> list[str]:
    """Note a sticky client (its own rule: a full set must not stop the connection),
    count, and DNAT, or for a dispatched real count SYNs and send the packet on
    unchanged to the real's address (`dup`, the original dropped: docs/design.rst,
    "Decided in the kernel")."""
    rules = [f"update @{branch.memory} {{ ip saddr }}"] if branch.sticky else []
    if branch.forward:
        return [*rules, *_opening(branch.proto, f'counter name "{branch.counter}"'),
                f"dup to {format_ip(branch.addr)} drop"]
    to = format_ip(branch.addr)
    if branch.port != ALL_PORTS:
        to += f":{branch.port}"
    return [*rules, f'counter name "{branch.counter}" meta l4proto {branch.proto} '
            f"dnat to {to}"]


def _opening(proto: str, action: str) -> list[str]:
    """A forwarded packet's rule that counts connections: on its SYNs; none for UDP,
    whose forwarded datagrams conntrack never sees, so no first one is known."""
    return [f"{syn_only(proto)} {action}"] if proto == "tcp" else []


def _dest_rules(dest: Destination) -> list[str]:
    """Only a SYN may open a connection here: a packet conntrack picked up mid-stream
    (it lost the entry) could be sent to any real. (A dispatched flow's every packet
    is hashed, so any packet finds its real; any datagram may open a UDP flow.) A
    source no instance takes is dropped, as the engine drops it (no-virtual)."""
    first = [] if dest.forward else _opening(dest.proto, "drop")
    return [rule.replace("==", "!=") for rule in first] + (
        [f"ip saddr vmap @{dest.map}"] if dest.ranges else []) + ["drop"]


def definition(rules: KernelRules, table: str) -> list[str]:
    """The table's body as `nft -f` lines, referred-to objects before their referrers.
    Counters are added, never redefined: an existing one keeps its count."""
    out = [f"table ip {table} {{"]

    def chain(name: str, *rules_: str) -> None:
        out.extend([f"  chain {name} {{", *(f"    {r}" for r in rules_), "  }"])

    for name in sorted(rules.counters):
        out += [f"  counter {name} {{", "  }"]
    for branch in rules.branches:
        if branch.sticky:
            out += [f"  set {branch.memory} {{", "    type ipv4_addr",
                    "    flags dynamic,timeout", f"    timeout {branch.sticky}m",
                    f"    size {STICKY_CLIENTS}", "  }"]
    for branch in rules.branches:
        chain(branch.chain, *_branch_rules(branch))
    for instance in rules.instances:
        chain(instance.chain, *_instance_rules(instance))
    for dest in rules.destinations:
        if not dest.ranges:
            continue
        elements = ", ".join(f"{_span(a, b)} : goto {c}" for a, b, c in dest.ranges)
        out += [f"  map {dest.map} {{", "    type ipv4_addr : verdict", "    flags interval",
                f"    elements = {{ {elements} }}", "  }"]
    for dest in rules.destinations:
        chain(dest.chain, *_dest_rules(dest))
    # `ct state new` (always true in a nat chain) is what makes the namespace track
    # connections: without a ct match or a DNAT rule anywhere (every instance refusing)
    # the kernel would track nothing and never run a nat chain. Dispatched packets are
    # decided ahead of conntrack (priority raw + 1, after iptables' raw table and its
    # SYN guards) and dropped there once copied, so conntrack never sees them.
    chain(BASE, f"type nat hook {BASE} priority dstnat; policy accept;",
          *_base_rules([d for d in rules.destinations if not d.forward], "ct state new "))
    chain(FORWARD, "type filter hook prerouting priority raw + 1; policy accept;",
          *_base_rules([d for d in rules.destinations if d.forward], ""))
    out.append("}")
    return out


def _base_rules(dests: list[Destination], match: str) -> list[str]:
    """A base chain's jumps, per protocol: one vmap by VIP and port, one by VIP for
    port 0."""
    rules = []
    for proto in PROTOCOLS:
        mine = [d for d in dests if d.proto == proto]
        ported = [d for d in mine if d.port & 0xFFFF != ALL_PORTS]
        wild = [d for d in mine if d.port & 0xFFFF == ALL_PORTS]
        if ported:
            rules.append(f"{match}ip daddr . {proto} dport vmap {{ " + ", ".join(
                f"{format_ip(d.addr)} . {d.port & 0xFFFF} : goto {d.chain}"
                for d in ported) + " }")
        if wild:
            rules.append(f"{match}meta l4proto {proto} ip daddr vmap {{ " + ", ".join(
                f"{format_ip(d.addr)} : goto {d.chain}" for d in wild) + " }")
    return rules


def _chains(rules: KernelRules) -> list[str]:
    """Our regular chains, referrers first (the order they can be deleted in)."""
    return ([d.chain for d in rules.destinations] + [i.chain for i in rules.instances]
            + [b.chain for b in rules.branches])


def install_text(rules: KernelRules, table: str) -> str:
    """Replace whatever is there (a killed run's table included) in one transaction."""
    return "\n".join([f"table ip {table}", f"delete table ip {table}",
                      *definition(rules, table), ""])


def update_text(rules: KernelRules, old: KernelRules, table: str,
                retired: frozenset[str] = frozenset()) -> str:
    """One transaction from `old` to `rules`: every rule flushed, the old maps and
    regular chains deleted (nothing refers to them then), the `retired` counters and
    the sticky sets no longer wanted deleted, and the new definition added. The base
    chains, the counters and the sticky sets that stay are kept, so no connection goes
    uncounted and no client forgets its real."""
    lines = [f"flush table ip {table}"]
    lines += [f"delete map ip {table} {d.map}" for d in old.destinations if d.ranges]
    lines += [f"delete chain ip {table} {name}" for name in _chains(old)]
    lines += [f"delete counter ip {table} {name}" for name in sorted(retired)]
    lines += [f"delete set ip {table} {name}" for name in sorted(old.sets - rules.sets)]
    return "\n".join([*lines, *definition(rules, table), ""])


def removal_text(table: str) -> str:
    """Take the table out, whether or not it exists."""
    return f"table ip {table}\ndelete table ip {table}\n"


# -- what the kernel holds --------------------------------------------------------------

Shape = tuple[frozenset[str], frozenset[str], tuple[tuple[str, int], ...]]


def expected_shape(rules: KernelRules) -> Shape:
    """(counters, maps and sets, rules per chain) the table must hold after installing
    `rules`:
    what `intact` compares, in few numbers rather than texts nft prints its own way."""
    counts = {b.chain: len(_branch_rules(b)) for b in rules.branches}
    counts.update((i.chain, len(_instance_rules(i))) for i in rules.instances)
    for dest in rules.destinations:
        counts[dest.chain] = len(_dest_rules(dest))
    for name, forward in ((BASE, False), (FORWARD, True)):
        counts[name] = len(_base_rules([d for d in rules.destinations
                                        if d.forward == forward], ""))
    return (rules.counters,
            frozenset(d.map for d in rules.destinations if d.ranges) | rules.sets,
            tuple(sorted(counts.items())))


def found_shape(listing: str) -> tuple[Shape, dict[str, int]]:
    """The shape of an ``nft -j list table`` listing, and its counters' packet counts."""
    items = json.loads(listing).get("nftables", [])
    counters: dict[str, int] = {}
    maps: set[str] = set()
    counts: dict[str, int] = {}
    for item in items:
        if "counter" in item:
            counters[item["counter"]["name"]] = item["counter"]["packets"]
        elif "map" in item or "set" in item:
            maps.add((item.get("map") or item["set"])["name"])
        elif "chain" in item:
            counts.setdefault(item["chain"]["name"], 0)
        elif "rule" in item:
            name = item["rule"]["chain"]
            counts[name] = counts.get(name, 0) + 1
    return (frozenset(counters), frozenset(maps), tuple(sorted(counts.items()))), counters


def run_nft(argv: list[str], stdin: str = "") -> str:
    """Run nft; a failure raises RulesError with nft's own message."""
    return run_tool(["nft", *argv], stdin, line=0)
