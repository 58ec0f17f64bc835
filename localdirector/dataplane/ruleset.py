"""What the model asks netfilter for: which traffic goes through the engine, which
VIP:ports are on the fast path, which SYNs the kernel sheds, and the marks standing for
fast-path reals. Pure values, no iptables (iptables.py renders them; docs/design.rst,
"Netfilter rules")."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ..model.addr import Family, family_of
from ..model.director import Director
from ..model.fastpath import fast_targets, reachable_reals
from ..model.serverid import ALL_PORTS, UDP_SERVICE
from ..model.statics import conflict

MARK_SHIFT = 16
MARK_MASK = 0xFFFF0000        # the bits of the packet mark that are ours
MAX_MARKS = MARK_MASK >> MARK_SHIFT
# A dispatched real's key in the mark map, beside the fast path's (address, port): its
# mark sends the packet to the real unchanged (docs/design.rst, "Scale-out").
DISPATCH_PORT = -1


class RulesError(RuntimeError):
    """The rules could not be put in place (iptables refused a transaction, or the marks
    ran out); the text is what the operator needs to see."""


@dataclass(frozen=True, slots=True)
class RuleSet:
    """What must be queued: ``vips`` and ``reals`` map an address to the service ports
    (the TCP port, or the UDP port | UDP_SERVICE; ALL_PORTS, or UDP_SERVICE alone =
    every port of that protocol) of traffic to / from it through the engine, ``fastpath``
    the VIP:ports on the fast path (service ports too) and ``targets`` the (address,
    service port) of every real a fast-path connection may be given (port 0: the
    client's), and (address, DISPATCH_PORT) of every real a dispatched connection may
    be given. Comparable, so an unchanged set costs no iptables call."""

    vips: tuple[tuple[int, tuple[int, ...]], ...]
    reals: tuple[tuple[int, tuple[int, ...]], ...]
    # (VIP, port, SYNs a second per client address) for VIP:ports under `synguard`.
    guards: tuple[tuple[int, int, int], ...] = ()
    fastpath: tuple[tuple[int, tuple[int, ...]], ...] = ()
    targets: tuple[tuple[int, int], ...] = ()
    # VIP addresses whose connections the kernel decides (nftables.py has their rules):
    # only the SYN guards in raw concern them here.
    kernel: tuple[int, ...] = ()
    # (address, service port it answers on; ALL_PORTS: any) of every real conntrack
    # translates (fast path and kernel-decided): its packets conntrack does not know are
    # dropped rather than forwarded with its own address (tracked_reals).
    stray: tuple[tuple[int, int], ...] = ()
    # VIP addresses of dispatched virtuals the kernel forwards (nftables.py): never
    # tracked (decided and dropped ahead of conntrack), so their SYN guards note known
    # clients in raw, as userspace VIPs do.
    forwarded: tuple[int, ...] = ()
    # (real, VIP) of every `static REAL VIP` that can take effect (model/statics.py): the
    # connections the real opens leave with the VIP as their source (SNAT in nat
    # POSTROUTING, markrules.static_rules).
    statics: tuple[tuple[int, int], ...] = ()
    # (VIP, udp service port) whose datagrams from clients no real answered share the
    # kernel's budget of new sources (floodrules.flood_rules): the engine's udp
    # virtuals, but those whose every real has `reassign 0` (a service that never
    # answers, such as syslog: its clients would never become known).
    budgeted: tuple[tuple[int, int], ...] = ()


def desired_rules(director: Director) -> RuleSet:
    """Snapshot of what the model needs queued; call with ``director.lock`` held.

    Live connections count too: a virtual removed or a real unbound keeps its existing
    connections flowing (docs/design.rst, "Connection lifecycle and health"), so their
    traffic must stay queued until they end."""
    vips: dict[int, set[int]] = {}
    reals: dict[int, set[int]] = {}
    fastpath: dict[int, set[int]] = {}
    guards: dict[tuple[int, int], int] = {}
    kernel: set[int] = set()
    forwarded: set[int] = set()
    budgeted: set[tuple[int, int]] = set()
    targets = fast_targets(director)
    stray = tracked_reals(director)
    for v in director.iter_virtuals():
        if v.kernel:
            (forwarded if v.dispatched else kernel).add(v.addr)
        else:
            (fastpath if v.fastpath else vips).setdefault(v.addr, set()).add(v.service)
            if v.proto == "udp" and not all(link.real.reassign == 0
                                            for link in v.iter_links()):
                budgeted.add((v.addr, v.service))
        if v.synguard and v.proto == "tcp":   # SYNs: TCP's
            dest = (v.addr, v.port)
            guards[dest] = max(guards.get(dest, 0), v.synguard)
        if v.dispatched and not v.kernel:
            targets.update((r.addr, DISPATCH_PORT) for r in reachable_reals(director, v))
    for addr, port in translated_reals(director):
        reals.setdefault(addr, set()).add(port)
    for conn in director.conns:
        udp = conn.virtual.service & UDP_SERVICE
        if conn.fastpath:
            fastpath.setdefault(conn.virtual_ip, set()).add(conn.virtual_port | udp)
            targets.add((conn.real.addr, conn.real.port | udp))
            stray.add((conn.real_ip, conn.real_port | udp))
            continue
        vips.setdefault(conn.virtual_ip, set()).add(conn.virtual_port | udp)
        if conn.virtual.dispatched:
            targets.add((conn.real.addr, DISPATCH_PORT))
            continue
        reals.setdefault(conn.real_ip, set()).add(conn.real_port | udp)
    return RuleSet(_freeze(vips), _freeze(reals),
                   tuple((addr, port, rate) for (addr, port), rate in sorted(guards.items())),
                   _freeze(fastpath), tuple(sorted(targets)), tuple(sorted(kernel)),
                   tuple(sorted(stray)), tuple(sorted(forwarded)),
                   tuple((real, vip) for real, vip in sorted(director.settings.statics.items())
                         if conflict(director, real, vip) is None), tuple(sorted(budgeted)))


def for_family(rules: RuleSet, family: Family) -> RuleSet:
    """The part of `rules` of one address family: iptables renders IPv4's, ip6tables
    IPv6's (transactions.py)."""
    def ours(entries: tuple) -> tuple:   # each entry an address, or a tuple led by one
        return tuple(e for e in entries if family_of(e if type(e) is int else e[0]) is family)
    return RuleSet(ours(rules.vips), ours(rules.reals), ours(rules.guards),
                   ours(rules.fastpath), ours(rules.targets), ours(rules.kernel),
                   ours(rules.stray), ours(rules.forwarded), ours(rules.statics),
                   ours(rules.budgeted))


def tracked_reals(director: Director) -> set[tuple[int, int]]:
    """(address, service port it answers on) of every real of a fast-path or
    kernel-decided virtual, whose replies conntrack translates. A packet from one that conntrack does
    not know (NEW or INVALID) is a reply to a connection this unit never saw: opened by
    the other unit of a failover pair before it died, or from before a restart. Its NAT
    entry is elsewhere, so forwarded it would show the client the real's own address;
    the kernel-path analogue of the engine's `unknown-reply` (replies.py), dropped in
    mangle (iptables.stray_rules). Not dispatched reals: they answer clients directly."""
    found: set[tuple[int, int]] = set()
    for v in director.iter_virtuals():
        if v.fastpath and not v.dispatched:
            found.update(((r.addr, (r.port or v.port) | v.service & UDP_SERVICE)
                          for r in reachable_reals(director, v)))
    return found


def translated_reals(director: Director) -> Iterator[tuple[int, int]]:
    """(address, service port) of every real whose replies the engine translates: the
    bound reals of userspace virtuals and their backup reals, on the port they answer
    from (port 0: the one the client asked for, the virtual's; ALL_PORTS when that is 0
    too), with the virtual's protocol (UDP_SERVICE). Not the
    fast path's (conntrack translates its replies, they must stay tracked) nor the
    dispatched ones' (their replies go from the real to the client, not through us).
    Their replies are queued (`desired_rules`), and one that finds no connection is
    dropped, not leaked (replies.py); call with ``director.lock`` held."""
    for v in director.iter_virtuals():
        if v.fastpath or v.dispatched:
            continue
        udp = v.service & UDP_SERVICE
        for link in v.iter_links():
            for real in director.backup_chain(link.real):
                yield real.addr, (real.port or v.port) | udp


def _freeze(table: dict[int, set[int]]) -> tuple[tuple[int, tuple[int, ...]], ...]:
    """Sorted and minimal: a wildcard port makes that address's specific ports of its
    protocol redundant."""
    return tuple((addr, tuple(sorted(p for p in ports
                                     if p & 0xFFFF == ALL_PORTS
                                     or p & UDP_SERVICE | ALL_PORTS not in ports)))
                 for addr, ports in sorted(table.items()))


class MarkMap:
    """Marks of fast-path DNAT targets: a target keeps its mark while it stays
    configured, and a mark let go is not handed out again in the same transaction, so a
    packet marked just before a change still means the real it was marked for."""

    def __init__(self) -> None:
        self.marks: dict[tuple[int, int], int] = {}

    def assign(self, targets: Iterable[tuple[int, int]]) -> dict[tuple[int, int], int]:
        """The marks for exactly `targets` (a new dict; the old one stays valid)."""
        wanted = list(targets)
        still = set(wanted)
        keep = {t: m for t, m in self.marks.items() if t in still}
        taken = set(self.marks.values())
        free = (i << MARK_SHIFT for i in range(1, MAX_MARKS + 1)
                if i << MARK_SHIFT not in taken)
        for target in wanted:
            if target not in keep:
                mark = next(free, None)
                if mark is None:
                    raise RulesError(f"more than {MAX_MARKS} fast-path real servers")
                keep[target] = mark
        self.marks = keep
        return dict(keep)
