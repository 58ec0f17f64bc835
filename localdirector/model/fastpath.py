"""Which virtuals must be translated the same way: all in userspace or all on the fast
path, because netfilter parts the two paths by address before the engine sees a packet
(docs/design.rst, "Fast path").

Virtuals that netfilter cannot tell apart form a *bucket*: the instances of one VIP:port
(a VIP's port-0 instance with every instance of that VIP), a virtual and its backup
virtual, and virtuals whose connections can reach one real on one port. A *group* is
everything linked through buckets: `fastpath VIRTUAL [kernel]` switches a whole group,
and Director refuses changes that would leave a bucket `mixed`. The kernel-decided fast
path is a mode of its own here: a bucket is all userspace, all engine-decided or all
kernel-decided."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from .addr import format_ip
from .serverid import ALL_PORTS, UDP_SERVICE

if TYPE_CHECKING:
    from .director import Director
    from .real import PhysicalMachine
    from .virtual import VirtualMachine


def reachable_reals(director: Director, virtual: VirtualMachine) -> list[PhysicalMachine]:
    """Every real a connection to `virtual` can be given: bound reals of it and of its
    backup virtuals, and each one's chain of backup reals (FIG. 3B 328)."""
    found: dict[int, PhysicalMachine] = {}
    for v in director.backup_chain(virtual):
        for link in v.iter_links():
            for r in director.backup_chain(link.real):
                if id(r) in found:
                    break  # and so is the rest of its chain
                found[id(r)] = r
    return list(found.values())


def _port_buckets(entries: dict[tuple[int, str], list[tuple[int, VirtualMachine]]],
                  what: str) -> Iterator[tuple[str, list[VirtualMachine]]]:
    """Per address and protocol: one bucket per port, or one for the whole address when
    any entry has port 0 (it overlaps every port of its protocol)."""
    for (addr, _proto), ports in entries.items():
        if any(port == ALL_PORTS for port, _ in ports):
            yield f"{what} {format_ip(addr)} (port 0 covers every port)", [v for _, v in ports]
            continue
        by_port: dict[int, list[VirtualMachine]] = {}
        for port, v in ports:
            by_port.setdefault(port, []).append(v)
        for port, members in by_port.items():
            yield f"{what} {format_ip(addr)} port {port}", members


def buckets(director: Director) -> Iterator[tuple[str, list[VirtualMachine]]]:
    """(why, virtuals) for every set of virtuals that must share one mode."""
    vips: dict[tuple[int, str], list[tuple[int, VirtualMachine]]] = {}
    reals: dict[tuple[int, str], list[tuple[int, VirtualMachine]]] = {}
    for v in director.iter_virtuals():
        vips.setdefault((v.addr, v.proto), []).append((v.port, v))
        if v.backup is not None and v.backup in director.virtuals:
            yield "one is the backup of the other", [v, director.virtuals[v.backup]]
        for r in reachable_reals(director, v):
            # The port the real answers on: its own, else the one the client asked for.
            reals.setdefault((r.addr, v.proto), []).append((r.port or v.port, v))
    yield from _port_buckets(vips, "both are reached at")
    yield from _port_buckets(reals, "both send connections to")


# How a virtual's connections are translated, in the words of the refusals: userspace,
# the fast path (the engine decides), the fast path decided in the kernel.
USERSPACE, FAST, KERNEL = 0, 1, 2
_MODE_WORDS = {FAST: "on the fast path", KERNEL: "on the fast path decided in the kernel"}


def mode(virtual: VirtualMachine) -> int:
    """USERSPACE, FAST or KERNEL."""
    return KERNEL if virtual.kernel else FAST if virtual.fastpath else USERSPACE


def mixed(director: Director) -> str | None:
    """None when every bucket agrees; else why not, as the operator's one-line error."""
    for why, members in buckets(director):
        first = max(members, key=mode)
        other = next((v for v in members if mode(v) != mode(first)), None)
        if other is not None:
            return (f"{director.fmt(first.sid)} is {_MODE_WORDS[mode(first)]} and "
                    f"{director.fmt(other.sid)} is not, but {why}")
    return None


def group(director: Director, virtual: VirtualMachine) -> list[VirtualMachine]:
    """`virtual` and every virtual linked to it through buckets, in configuration order."""
    parent: dict[int, int] = {}

    def find(key: int) -> int:
        root = key
        while parent.get(root, root) != root:
            root = parent[root]
        parent[key] = root
        return root

    for _why, members in buckets(director):
        first = find(id(members[0]))
        for v in members[1:]:
            parent[find(id(v))] = first
    mine = find(id(virtual))
    return [v for v in director.iter_virtuals() if find(id(v)) == mine]


def fast_targets(director: Director) -> set[tuple[int, int]]:
    """(address, service port) of every real a fast-path connection decided by the
    engine can be given: the targets of the mark map's DNAT, port 0 = the port the
    client asked for, with the virtual's protocol above it (UDP_SERVICE: a real's DNAT
    names its protocol). (Kernel-decided virtuals DNAT in rules of their own,
    model/kernelpath.py.)"""
    return {(r.addr, r.port | v.service & UDP_SERVICE) for v in director.iter_virtuals()
            if v.fastpath and not v.kernel for r in reachable_reals(director, v)}
