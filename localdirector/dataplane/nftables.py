"""The kernel-decided fast path as nftables rules: the text of the desired state
(kernelrules.py computes it from the model: `definition`, and the transactions that
install, update and remove it), the parsing of `nft -j` listings, and the one function
that runs nft (docs/design.rst, "Decided in the kernel").

Everything lives in a table of our own per queue and address family (``ip
localdirector<N>``, ``ip6 localdirector<N>``, each only while a virtual of its family is
decided in the kernel), so it is replaced or removed without touching anybody else's
rules; both are rendered by the same code, with the words of `WORD` and model.addr's
Family (one ``inet`` table cannot be used: nft has no ``dup`` there). Per VIP:port
(port 0: the VIP's all-ports instances) a chain maps the client's address, as disjoint
ranges, to the chain of the instance its Bind ID selects; that one counts (`numgen`) or
hashes the flow into its Maglev table (`jhash`) over its reals' branches, each a named
counter and a DNAT, or for a dispatched virtual a copy of the unchanged packet to the
real (`dup`), remembered in the table's flow memory (a dynamic map from hashes of the
5-tuple to the real) that the destination chain looks a dispatched flow up in first.
Sticky instances look the client up in a set per real first. The counters, the sticky sets and
the flow memories outlive updates: an update flushes the table's rules and redefines
its chains and maps around them, so the connection counts folded into the model stay
exact, clients keep their reals and open dispatched flows theirs."""

from __future__ import annotations

import json

from ..model.addr import FAMILIES, IPV4, IPV6, Family, bracketed, format_ip, parse_ip
from ..model.serverid import ALL_PORTS
from .iptables import run_tool
from .kernelrules import (PROTOCOLS, Branch, Destination, Instance, KernelRules,
                          family_names, memory_name)

BASE = "prerouting"        # translated connections: nat PREROUTING, at dstnat
FORWARD = "dispatch"       # dispatched packets: filter PREROUTING, after iptables' raw
STICKY_CLIENTS = 65536     # per sticky set, as the engine's STICKY_LIMIT
# Dispatched flows remembered per table and protocol; beyond, a new flow is hashed
# only, as before memory existed. nft 1.0.6 reads every element back whenever the rule
# sync lists the table (after each commit in the namespace; every 2 s before its checks
# read the generation): about 0.2 s of CPU at this size, 1.1 s at 65,536
# (docs/design.rst, "Decided in the kernel").
REMEMBERED_FLOWS = 16384
# Seconds a dispatched TCP flow stays remembered after the client's FIN or RST.
CLOSING = 10
# A remembered flow's key: two 32-bit jhashes of its 5-tuple under these seeds (nft
# 1.0.6 cannot write a dynamic map's element from a key over 16 bytes, which an IPv6
# 5-tuple is; two independent hashes collide for one flow in 2**64).
FLOW_SEEDS = (0x6c646d31, 0x6c646d32)
# nft's word for each family: its table's family and the header its matches name
# (``ip6 saddr``); the address type is the Family's name (``ipv6_addr``).
WORD = {IPV4: "ip", IPV6: "ip6"}


def syn_only(proto: str) -> str:
    """What opens a connection: a TCP SYN; for UDP any datagram (conntrack's NEW)."""
    return f"{proto} flags & (fin | syn | rst | ack) == syn" if proto == "tcp" else ""


def five_tuple(proto: str, family: Family = IPV4) -> str:
    """What jhash hashes: the flow, as the engine's flow key holds it."""
    ip = WORD[family]
    return f"{ip} saddr . {proto} sport . {ip} daddr . {proto} dport"


def flow_key(proto: str, family: Family) -> str:
    """A remembered flow's key in the flow memory (FLOW_SEEDS)."""
    return " . ".join(f"jhash {five_tuple(proto, family)} mod 4294967295 seed 0x{s:08x}"
                      for s in FLOW_SEEDS)


def refuse(proto: str) -> str:
    """Nothing can take it: the RST a closed port sends, as the engine refuses a SYN; a
    datagram is only dropped, as the engine drops it (no ICMP error a spoofed flood
    could reflect)."""
    return "reject with tcp reset" if proto == "tcp" else "drop"


def table_name(queue_num: int) -> str:
    return f"localdirector{queue_num}"


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
    ip = WORD[instance.family]
    rules = [f"{ip} saddr @{b.memory} goto {b.chain}" for b in instance.remembered]
    if len(instance.slots) == 1:
        return [*rules, f"goto {instance.slots[0][2]}"]
    slots = ", ".join(f"{_span(a, b, str)} : goto {chain}" for a, b, chain in instance.slots)
    pick = (f"numgen inc mod {instance.modulus}" if instance.seed is None else
            f"jhash {five_tuple(proto, instance.family)} mod {instance.modulus} "
            f"seed 0x{instance.seed:08x}")
    return [*rules, f"{pick} vmap {{ {slots} }}"]


def _branch_rules(branch: Branch) -> list[str]:
    """Note a sticky client (its own rule: a full set must not stop the connection),
    count, and DNAT, or for a dispatched real count SYNs and send the packet on
    unchanged to the real's address (`dup`, the original dropped: docs/design.rst,
    "Decided in the kernel")."""
    rules = ([f"update @{branch.memory} {{ {WORD[branch.family]} saddr }}"] if branch.sticky
             else [])
    if branch.forward:
        return [*rules, *_remembering(branch), f"dup to {format_ip(branch.addr)} drop"]
    to = (format_ip(branch.addr) if branch.port == ALL_PORTS else
          f"{bracketed(branch.addr)}:{branch.port}")
    return [*rules, f'counter name "{branch.counter}" meta l4proto {branch.proto} '
            f"dnat to {to}"]


def _remembering(branch: Branch) -> list[str]:
    """A dispatched flow's opening packet (a SYN; any datagram: what reaches a branch
    was not remembered) notes its real in the flow memory, last in its rule (after a
    SYN's count), so a full memory, which ends the rule, stops only the remembering."""
    proto = branch.proto
    note = (f"update @{memory_name(proto)} {{ {flow_key(proto, branch.family)} timeout "
            f"{branch.remember}s : {format_ip(branch.addr)} }}")
    return _opening(proto, f'counter name "{branch.counter}" {note}') if proto == "tcp" \
        else [note]


def _recall(dest: Destination) -> list[str]:
    """A dispatched VIP's remembered flow goes to its real, whatever the rules say now,
    and its memory is refreshed; a client's FIN or RST leaves it CLOSING seconds, for
    the close's retransmissions, so closed connections do not fill the memory (a
    half-closed client's next packet refreshes it again). `dup to KEY map @flows`
    misses when the flow is not remembered, which ends the rule there. nft refuses a
    map lookup as an element's data, so the refresh writes a placeholder, which
    `update` never stores over an existing element's real. A SYN is looked up too: a
    SYN's `delete` of what an earlier connection of its 5-tuple left made the kernel
    walk a chain of dead elements per lookup until its garbage collection (0.06-0.17 ms
    a SYN after 10,000 of one 5-tuple; docs/design.rst, "Decided in the kernel")."""
    if not dest.forward:
        return []
    proto, key = dest.proto, flow_key(dest.proto, dest.family)
    flows = memory_name(proto)

    def hit(match: str, seconds: int) -> str:
        return (f"{match}dup to {key} map @{flows} update @{flows} "
                f"{{ {key} timeout {seconds}s : {format_ip(dest.family.tag)} }} drop")

    if proto != "tcp":
        return [hit("", dest.remember)]
    return [hit(f"{proto} flags & (fin | rst) != 0 ", CLOSING), hit("", dest.remember)]


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
    return _recall(dest) + [rule.replace("==", "!=") for rule in first] + (
        [f"{WORD[dest.family]} saddr vmap @{dest.map}"] if dest.ranges else []) + ["drop"]


def definition(rules: KernelRules, table: str, family: Family = IPV4) -> list[str]:
    """The body of `family`'s table (`rules` holds only its objects: KernelRules.of) as
    `nft -f` lines, referred-to objects before their referrers. Counters are added,
    never redefined: an existing one keeps its count."""
    ip = WORD[family]
    out = [f"table {ip} {table} {{"]

    def chain(name: str, *rules_: str) -> None:
        out.extend([f"  chain {name} {{", *(f"    {r}" for r in rules_), "  }"])

    for name in sorted(rules.counters):
        out += [f"  counter {name} {{", "  }"]
    for name in sorted(rules.memories):
        # Two 32-bit integers (flow_key); `typeof jhash ...` would say so too, but nft
        # 1.0.6 crashes listing such a map.
        word = "numgen inc mod 4294967295"
        out += [f"  map {name} {{", f"    typeof {word} . {word} : {ip} daddr",
                "    flags dynamic,timeout", f"    size {REMEMBERED_FLOWS}", "  }"]
    for branch in rules.branches:
        if branch.sticky:
            out += [f"  set {branch.memory} {{", f"    type {family.name}_addr",
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
        out += [f"  map {dest.map} {{", f"    type {family.name}_addr : verdict",
                "    flags interval", f"    elements = {{ {elements} }}", "  }"]
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
    port 0 (the VIPs of one table, one family)."""
    rules = []
    for proto in PROTOCOLS:
        mine = [d for d in dests if d.proto == proto]
        ported = [d for d in mine if d.port & 0xFFFF != ALL_PORTS]
        wild = [d for d in mine if d.port & 0xFFFF == ALL_PORTS]
        ip = WORD[mine[0].family] if mine else ""
        if ported:
            rules.append(f"{match}{ip} daddr . {proto} dport vmap {{ " + ", ".join(
                f"{format_ip(d.addr)} . {d.port & 0xFFFF} : goto {d.chain}"
                for d in ported) + " }")
        if wild:
            rules.append(f"{match}meta l4proto {proto} {ip} daddr vmap {{ " + ", ".join(
                f"{format_ip(d.addr)} : goto {d.chain}" for d in wild) + " }")
    return rules


def _chains(rules: KernelRules) -> list[str]:
    """Our regular chains, referrers first (the order they can be deleted in)."""
    return ([d.chain for d in rules.destinations] + [i.chain for i in rules.instances]
            + [b.chain for b in rules.branches])


def _replace(rules: KernelRules, table: str, family: Family) -> list[str]:
    """Lines that make `family`'s table exactly `rules` (KernelRules.of), whatever was
    there; or take it out when `rules` decides nothing of that family."""
    ip = WORD[family]
    lines = [f"table {ip} {table}", f"delete table {ip} {table}"]
    return [*lines, *definition(rules, table, family)] if rules.destinations else lines


def install_text(rules: KernelRules, table: str) -> str:
    """Replace whatever is there (a killed run's tables included) in one transaction:
    each family's table defined anew, or removed when none of its VIPs is decided in
    the kernel."""
    return "\n".join([line for f in FAMILIES for line in _replace(rules.of(f), table, f)]
                     + [""])


def update_text(rules: KernelRules, old: KernelRules, table: str,
                retired: frozenset[str] = frozenset()) -> str:
    """One transaction from `old` to `rules`, for both families: a table that stays has
    every rule flushed, the old maps and regular chains deleted (nothing refers to
    them then), the `retired` counters and the sticky sets no longer wanted deleted,
    and the new definition added; a family's table appears or goes whole. The base
    chains, the counters, the sticky sets and the flow memories that stay are kept, so
    no connection goes uncounted, and no sticky client or dispatched flow forgets its
    real. `retired`: counters of tables that stay (KernelTable keeps them per family)."""
    lines = []
    for family in FAMILIES:
        new, prev = rules.of(family), old.of(family)
        if not (new.destinations and prev.destinations):
            if new.destinations or prev.destinations:
                lines += _replace(new, table, family)
            continue
        ip = WORD[family]
        lines += [f"flush table {ip} {table}"]
        lines += [f"delete map {ip} {table} {d.map}" for d in prev.destinations if d.ranges]
        lines += [f"delete chain {ip} {table} {name}" for name in _chains(prev)]
        lines += [f"delete counter {ip} {table} {name}"
                  for name in sorted(family_names(family, retired))]
        lines += [f"delete set {ip} {table} {name}" for name in sorted(prev.sets - new.sets)]
        lines += [f"delete map {ip} {table} {name}"
                  for name in sorted(prev.memories - new.memories)]
        lines += definition(new, table, family)
    return "\n".join([*lines, ""])


def removal_text(table: str, families: tuple[Family, ...] = FAMILIES) -> str:
    """Take the tables out, whether or not they exist."""
    return "".join(f"table {WORD[f]} {table}\ndelete table {WORD[f]} {table}\n"
                   for f in families)


# -- what the kernel holds --------------------------------------------------------------

Shape = tuple[frozenset[str], frozenset[str], tuple[tuple[str, int], ...]]


def expected_shape(rules: KernelRules) -> Shape:
    """(counters, maps and sets, rules per chain) a family's table must hold after
    installing `rules` (KernelRules.of that family): what `intact` compares, in few
    numbers rather than texts nft prints its own way."""
    counts = {b.chain: len(_branch_rules(b)) for b in rules.branches}
    counts.update((i.chain, len(_instance_rules(i))) for i in rules.instances)
    for dest in rules.destinations:
        counts[dest.chain] = len(_dest_rules(dest))
    for name, forward in ((BASE, False), (FORWARD, True)):
        counts[name] = len(_base_rules([d for d in rules.destinations
                                        if d.forward == forward], ""))
    return (rules.counters,
            frozenset(d.map for d in rules.destinations if d.ranges) | rules.sets
            | rules.memories,
            tuple(sorted(counts.items())))


def found_shape(listing: str) -> tuple[Shape, dict[str, int]]:
    """The shape of an ``nft -j list table`` listing (either family's), and its
    counters' packet counts."""
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


def forget_text(listing: str, table: str, family: Family, proto: str,
                gone: frozenset[int]) -> str:
    """The transaction that forgets the remembered flows of an ``nft -j list map`` of
    `proto`'s memory whose real is `gone` (no longer bound); "" when none is. Each
    element is added (with the real it has, which `add` accepts for an existing
    element) and then deleted, so one that expired since the listing fails nothing."""
    elements = []
    for item in json.loads(listing).get("nftables", []):
        for key, real in (item.get("map") or {}).get("elem", []):
            if parse_ip(real) in gone:
                # {"elem": {"val": KEY, "expires": ...}}, or KEY bare without a timeout
                first, second = (key["elem"]["val"] if "elem" in key else key)["concat"]
                elements.append((f"{first} . {second}", real))
    if not elements:
        return ""
    head = f"element {WORD[family]} {table} {memory_name(proto)}"
    return (f"add {head} {{ {', '.join(f'{k} : {r}' for k, r in elements)} }}\n"
            f"delete {head} {{ {', '.join(k for k, _r in elements)} }}\n")


def run_nft(argv: list[str], stdin: str = "") -> str:
    """Run nft; a failure raises RulesError with nft's own message."""
    return run_tool(["nft", *argv], stdin, line=0)
