"""The kernel-decided fast path as nftables rules: the desired state computed from the
model (pure, `desired_kernel`), its text (`definition`, and the transactions that
install, update and remove it), the parsing of `nft -j` listings, and the one function
that runs nft (docs/design.rst, "Decided in the kernel").

Everything lives in one table of our own per queue (``ip localdirector<N>``), so it is
replaced or removed without touching anybody else's rules. Per kernel-decided VIP:port
(port 0: the VIP's all-ports instances) a chain maps the client's address, as disjoint
ranges, to the chain of the instance its Bind ID selects; that one counts (`numgen`)
over its reals' branches, each a named counter and a DNAT. The counters outlive
updates: an update flushes the table's rules and redefines its chains and maps around
them, so the connection counts folded into the model stay exact."""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..model import kernelpath
from ..model.addr import format_ip
from ..model.director import Director
from ..model.serverid import ALL_PORTS, ServerId
from .iptables import run_tool

BASE = "prerouting"        # the table's one base chain: nat PREROUTING, at dstnat
SYN_ONLY = "tcp flags & (fin | syn | rst | ack) == syn"


def table_name(queue_num: int) -> str:
    return f"localdirector{queue_num}"


def _ident(sid: ServerId) -> str:
    """A server id as a word nft takes in names: 192.0.2.10:80:0 -> 192_0_2_10_80_0."""
    return f"{format_ip(sid.addr).replace('.', '_')}_{sid.port}_{sid.bind}"


@dataclass(frozen=True, slots=True)
class Branch:
    """One real of one serving instance: a chain that counts and DNATs."""

    chain: str
    counter: str
    addr: int
    port: int              # 0: the client's port stays


@dataclass(frozen=True, slots=True)
class Instance:
    """An instance's chain: `slots` (first, last, branch chain) of a counter modulo
    `modulus`, or, when nothing can serve it, a counted RST (`refused`)."""

    chain: str
    modulus: int
    slots: tuple[tuple[int, int, str], ...]
    refused: str           # the refusal counter's name


@dataclass(frozen=True, slots=True)
class Destination:
    """One VIP:port (port 0: every other port of the VIP): client address ranges
    (first, last, instance chain)."""

    addr: int
    port: int
    ranges: tuple[tuple[int, int, str], ...]

    @property
    def chain(self) -> str:
        return f"d_{format_ip(self.addr).replace('.', '_')}_{self.port}"

    @property
    def map(self) -> str:
        return f"s_{format_ip(self.addr).replace('.', '_')}_{self.port}"


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
        for first, last, virtual in kernelpath.partition(director, addr, port):
            chain = f"i_{_ident(virtual.sid)}"
            if chain not in instances:
                instances[chain] = _instance(director, virtual, chain, branches, owners)
            ranges.append((first, last, chain))
        destinations.append(Destination(addr, port, tuple(ranges)))
    return KernelRules(tuple(destinations), tuple(instances.values()),
                       tuple(branches.values()),
                       tuple((name, v, r) for name, (v, r) in owners.items()))


def _instance(director: Director, virtual, chain: str, branches: dict[str, Branch],
              owners: dict[str, tuple[ServerId, ServerId | None]]) -> Instance:
    refused = f"x_{_ident(virtual.sid)}"
    owners[refused] = (virtual.sid, None)
    pool = kernelpath.pool(director, virtual)
    if pool is None:
        return Instance(chain, 0, (), refused)
    slots = []
    at = 0
    for real, share in pool.reals:
        name = f"{_ident(pool.served.sid)}__{_ident(real.sid)}"
        branch = branches.setdefault(f"r_{name}",
                                     Branch(f"r_{name}", f"c_{name}", real.addr, real.port))
        owners[branch.counter] = (pool.served.sid, real.sid)
        slots.append((at, at + share - 1, branch.chain))
        at += share
    return Instance(chain, at, tuple(slots), refused)


# -- text ----------------------------------------------------------------------------

def _span(first: int, last: int, fmt=format_ip) -> str:
    return fmt(first) if first == last else f"{fmt(first)}-{fmt(last)}"


def _instance_rule(instance: Instance) -> str:
    if not instance.slots:
        # Nothing can take it: the RST a closed port sends, as the engine refuses.
        return f'counter name "{instance.refused}" reject with tcp reset'
    if len(instance.slots) == 1:
        return f"goto {instance.slots[0][2]}"
    slots = ", ".join(f"{_span(a, b, str)} : goto {chain}" for a, b, chain in instance.slots)
    return f"numgen inc mod {instance.modulus} vmap {{ {slots} }}"


def _dnat(branch: Branch) -> str:
    to = format_ip(branch.addr)
    if branch.port != ALL_PORTS:
        to += f":{branch.port}"
    return f'counter name "{branch.counter}" meta l4proto tcp dnat to {to}'


def definition(rules: KernelRules, table: str) -> list[str]:
    """The table's body as `nft -f` lines, referred-to objects before their referrers.
    Counters are added, never redefined: an existing one keeps its count."""
    out = [f"table ip {table} {{"]

    def chain(name: str, *rules_: str) -> None:
        out.extend([f"  chain {name} {{", *(f"    {r}" for r in rules_), "  }"])

    for name in sorted(rules.counters):
        out += [f"  counter {name} {{", "  }"]
    for branch in rules.branches:
        chain(branch.chain, _dnat(branch))
    for instance in rules.instances:
        chain(instance.chain, _instance_rule(instance))
    for dest in rules.destinations:
        if not dest.ranges:
            continue
        elements = ", ".join(f"{_span(a, b)} : goto {c}" for a, b, c in dest.ranges)
        out += [f"  map {dest.map} {{", "    type ipv4_addr : verdict", "    flags interval",
                f"    elements = {{ {elements} }}", "  }"]
    for dest in rules.destinations:
        # Only a SYN may open a connection here: a packet conntrack picked up mid-stream
        # (it lost the entry) could be sent to any real. A source no instance takes is
        # dropped, as the engine drops it (no-virtual).
        chain(dest.chain, f"{SYN_ONLY.replace('==', '!=')} drop",
              *([f"ip saddr vmap @{dest.map}"] if dest.ranges else []), "drop")
    ported = [d for d in rules.destinations if d.port != ALL_PORTS]
    wild = [d for d in rules.destinations if d.port == ALL_PORTS]
    base = [f"type nat hook {BASE} priority dstnat; policy accept;"]
    # `ct state new` (always true in a nat chain) is what makes the namespace track
    # connections: without a ct match or a DNAT rule anywhere (every instance refusing)
    # the kernel would track nothing and never run a nat chain.
    if ported:
        base.append("ct state new ip daddr . tcp dport vmap { " + ", ".join(
            f"{format_ip(d.addr)} . {d.port} : goto {d.chain}" for d in ported) + " }")
    if wild:
        base.append("ct state new meta l4proto tcp ip daddr vmap { " + ", ".join(
            f"{format_ip(d.addr)} : goto {d.chain}" for d in wild) + " }")
    chain(BASE, *base)
    out.append("}")
    return out


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
    regular chains deleted (nothing refers to them then), the `retired` counters
    deleted, and the new definition added. The base chain and the counters that stay
    are kept, so no connection goes uncounted."""
    lines = [f"flush table ip {table}"]
    lines += [f"delete map ip {table} {d.map}" for d in old.destinations if d.ranges]
    lines += [f"delete chain ip {table} {name}" for name in _chains(old)]
    lines += [f"delete counter ip {table} {name}" for name in sorted(retired)]
    return "\n".join([*lines, *definition(rules, table), ""])


def removal_text(table: str) -> str:
    """Take the table out, whether or not it exists."""
    return f"table ip {table}\ndelete table ip {table}\n"


# -- what the kernel holds --------------------------------------------------------------

Shape = tuple[frozenset[str], frozenset[str], tuple[tuple[str, int], ...]]


def expected_shape(rules: KernelRules) -> Shape:
    """(counters, maps, rules per chain) the table must hold after installing `rules`:
    what `intact` compares, in few numbers rather than texts nft prints its own way."""
    counts = {name: 1 for name in _chains(rules)}
    for dest in rules.destinations:
        counts[dest.chain] = 3 if dest.ranges else 2
    counts[BASE] = (any(d.port != ALL_PORTS for d in rules.destinations)
                    + any(d.port == ALL_PORTS for d in rules.destinations))
    return (rules.counters, frozenset(d.map for d in rules.destinations if d.ranges),
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
        elif "map" in item:
            maps.add(item["map"]["name"])
        elif "chain" in item:
            counts.setdefault(item["chain"]["name"], 0)
        elif "rule" in item:
            name = item["rule"]["chain"]
            counts[name] = counts.get(name, 0) + 1
    return (frozenset(counters), frozenset(maps), tuple(sorted(counts.items()))), counters


def run_nft(argv: list[str], stdin: str = "") -> str:
    """Run nft; a failure raises RulesError with nft's own message."""
    return run_tool(["nft", *argv], stdin, line=0)
