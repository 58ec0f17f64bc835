"""Which virtuals must be translated the same way: all in userspace or all on the fast path.

The two paths part in netfilter, before the engine has seen a packet and by addresses
only (dataplane/rules.py): userspace traffic is taken from conntrack (raw-table NOTRACK)
so the engine can rewrite every packet; fast-path traffic must stay tracked so conntrack
NAT can translate it. So everything netfilter cannot tell apart must be in one mode:

* instances of one VIP:port (Bind ID instances are told apart by the engine, later), and
  a VIP's port-0 instance with every other instance of that VIP (port 0 takes any port);
* a virtual and its backup virtual (its connections land on the backup's reals);
* virtuals whose connections can reach the same real on the same port (bound reals and
  their backup reals): that real's replies are either NOTRACKed for the engine or left
  to conntrack, for every connection alike.

Each such relation is a *bucket* of virtuals that must agree; a *group* is everything
linked through buckets. `fastpath VIRTUAL` switches a whole group, and configuration
changes that would put a fast-path and a userspace virtual in one bucket are refused
(`mixed`), so the netfilter rules are always consistent with the engine's decisions.
"""

from __future__ import annotations

from collections.abc import Iterator

from .addr import format_ip
from .director import Director
from .real import PhysicalMachine
from .virtual import VirtualMachine

ALL_PORTS = 0


def backup_chain(director: Director, virtual: VirtualMachine) -> list[VirtualMachine]:
    """The virtual and the backup virtuals its connections may overflow to (patent ¶10)."""
    chain = [virtual]
    seen = {id(virtual)}
    v = virtual
    while v.backup is not None:
        nxt = director.virtuals.get(v.backup)
        if nxt is None or id(nxt) in seen:
            break
        chain.append(nxt)
        seen.add(id(nxt))
        v = nxt
    return chain


def reachable_reals(director: Director, virtual: VirtualMachine) -> list[PhysicalMachine]:
    """Every real a connection to `virtual` can be given: bound reals of it and of its
    backup virtuals, and each one's chain of backup reals (FIG. 3B 328)."""
    found: dict[int, PhysicalMachine] = {}
    for v in backup_chain(director, virtual):
        for link in v.iter_links():
            r: PhysicalMachine | None = link.real
            while r is not None and id(r) not in found:
                found[id(r)] = r
                r = director.reals.get(r.backup) if r.backup is not None else None
    return list(found.values())


def _port_buckets(entries: dict[int, list[tuple[int, VirtualMachine]]], what: str
                  ) -> Iterator[tuple[str, list[VirtualMachine]]]:
    """Per address: one bucket per port, or one for the whole address when any entry
    has port 0 (it overlaps every port)."""
    for addr, ports in entries.items():
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
    vips: dict[int, list[tuple[int, VirtualMachine]]] = {}
    reals: dict[int, list[tuple[int, VirtualMachine]]] = {}
    for v in director.iter_virtuals():
        vips.setdefault(v.addr, []).append((v.port, v))
        if v.backup is not None and v.backup in director.virtuals:
            yield "one is the backup of the other", [v, director.virtuals[v.backup]]
        for r in reachable_reals(director, v):
            # The port the real answers on: its own, else the one the client asked for.
            reals.setdefault(r.addr, []).append((r.port or v.port, v))
    yield from _port_buckets(vips, "both are reached at")
    yield from _port_buckets(reals, "both send connections to")


def mixed(director: Director) -> str | None:
    """None when every bucket agrees; else why not, as the operator's one-line error."""
    for why, members in buckets(director):
        fast = next((v for v in members if v.fastpath), None)
        slow = next((v for v in members if not v.fastpath), None)
        if fast is not None and slow is not None:
            return (f"{director.fmt(fast.sid)} is on the fast path and "
                    f"{director.fmt(slow.sid)} is not, but {why}")
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
    """(address, port) of every real a fast-path connection can be given: the targets of
    the kernel's DNAT, port 0 = the port the client asked for."""
    return {(r.addr, r.port) for v in director.iter_virtuals() if v.fastpath
            for r in reachable_reals(director, v)}
