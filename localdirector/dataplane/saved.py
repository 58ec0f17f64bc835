"""Reading iptables-save (ip6tables-save) listings: which of our chains and jumps exist,
what of ours the raw table holds (what RuleManager.intact compares), and the packet
counters of the rules `show statistics` adds up. Split from iptables.py, which writes
the rules these read back (docs/design.rst, "Netfilter rules")."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .iptables import Names

# Per table: (how often each of our jumps is there, which of our chains exist).
Existing = dict[str, tuple[dict[str, int], set[str]]]


def existing_chains(saved: str, n: Names) -> Existing:
    """Our jumps and chains in an iptables-save listing, as left by us or by an earlier
    run that was killed before it could clean up."""
    sections = _sections(saved)
    found = {}
    for table, (chains, jumps) in n.tables.items():
        lines = sections.get(table, [])
        declared = {line[1:].split()[0] for line in lines if line.startswith(":")}
        found[table] = ({jump: lines.count(jump) for jump in jumps}, declared & set(chains))
    return found


def raw_shape(lines: list[str], n: Names) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """What of ours a raw table holds, in few numbers: how often each jump is there and
    how many rules each of our chains has (-1: the chain is missing). `lines`: the raw
    table as iptables-save prints it, or the body of our transactions, whose inserts
    (``-I X 1``) iptables-save prints as appends."""
    chains, jumps = n.tables["raw"]
    body = [line.replace(" 1 ", " ", 1).replace("-I ", "-A ", 1) if line.startswith("-I ")
            else line for line in lines]
    declared = {line[1:].split()[0] for line in body if line.startswith(":")}
    counts = {chain: 0 if chain in declared else -1 for chain in chains}
    for line in body:
        if line.startswith("-A "):
            chain = line.split(maxsplit=2)[1]
            if chain in counts:
                counts[chain] += 1
    return (tuple(body.count(jump) for jump in jumps), tuple(counts[c] for c in chains))


def _sections(saved: str) -> dict[str, list[str]]:
    """iptables-save output by table."""
    tables: dict[str, list[str]] = {}
    current: list[str] = []
    for line in saved.splitlines():
        line = line.strip()
        if line.startswith("*"):
            current = tables.setdefault(line[1:], [])
        else:
            current.append(line)
    return tables


def raw_lines(saved: str) -> list[str]:
    """The raw table's lines of an iptables-save listing."""
    return _sections(saved).get("raw", [])


def packet_counts(saved: str, n: Names) -> dict[str, int]:
    """The counter rules' packet counts (Names.counters) in an ``iptables-save -c``
    listing."""
    return {name: sum(int(count) for count in pattern.findall(saved))
            for name, pattern in n.counters.items()}
