"""Load-balancing predictors: pick one real among those bound to a virtual.

Shared by the data plane and by `test assign`, which calls them with commit=False so a
what-if question never moves a round-robin cursor or a weighted credit."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from . import maglev
from .health import available, candidates
from .real import PhysicalMachine

if TYPE_CHECKING:
    from .link import Link
    from .virtual import VirtualMachine

# (virtual, eligible links, commit, flow) -> link. `flow`: the connection's flow key
# (client address and port, VIP and port; the client address alone for a what-if),
# which only `maglev` reads.
Predictor = Callable[["VirtualMachine", list["Link"], bool, int], "Link"]

# Client addresses one virtual's sticky table holds (about 170 bytes each): beyond it,
# new clients are balanced without being remembered (`sticky_full` counts them), so a
# flood of spoofed sources cannot grow it without bound (docs/design.rst, "Sticky").
STICKY_LIMIT = 65536

# Name -> predictor, in the order `predictor ID ?` lists them; names are what the
# running config holds (`VirtualMachine.predictor`).
PREDICTORS: dict[str, Predictor] = {}


def _predictor(name: str) -> Callable[[Predictor], Predictor]:
    def register(function: Predictor) -> Predictor:
        PREDICTORS[name] = function
        return function
    return register


@_predictor("leastconns")
def _leastconns(virtual: VirtualMachine, links: list[Link], commit: bool,
                flow: int) -> Link:
    # The first of the least loaded, as min() would pick, without a key call per link
    # (a third of the time, for every SYN).
    best = links[0]
    least = best.real.current_conns
    for link in links:
        conns = link.real.current_conns
        if conns < least:
            best, least = link, conns
    return best


@_predictor("roundrobin")
def _roundrobin(virtual: VirtualMachine, links: list[Link], commit: bool,
                flow: int) -> Link:
    # The cursor counts positions in the full link list so that a real leaving and
    # coming back does not reshuffle everyone else's turn.
    order = list(virtual.iter_links())
    start = virtual.rr_cursor % len(order)
    eligible = {id(link) for link in links}
    for step in range(len(order)):
        link = order[(start + step) % len(order)]
        if id(link) in eligible:
            if commit:
                virtual.rr_cursor = (start + step + 1) % len(order)
            return link
    return links[0]


@_predictor("weighted")
def _weighted(virtual: VirtualMachine, links: list[Link], commit: bool,
              flow: int) -> Link:
    """Smooth weighted round robin (as nginx): weight 3:1 gives a,a,b,a not a,a,a,b."""
    total = sum(link.real.weight for link in links)
    best = max(links, key=lambda link: link.credit + link.real.weight)
    if commit:
        for link in links:
            link.credit += link.real.weight
        best.credit -= total
    return best


@_predictor("fastest")
def _fastest(virtual: VirtualMachine, links: list[Link], commit: bool,
             flow: int) -> Link:
    # Unmeasured reals (0.0) go first so every real gets measured.
    return min(links, key=lambda link: (link.real.response_time, link.real.current_conns))


@_predictor("maglev")
def _maglev(virtual: VirtualMachine, links: list[Link], commit: bool, flow: int) -> Link:
    """Consistent hashing of the connection (model/maglev.py): every director picks the
    same real for a flow. A real that is full or being left passes the flow on along
    the table, the same way on every director."""
    table = maglev.table_for(virtual)
    if table is None:   # no real in service: only TESTING ones are eligible
        return links[0]
    eligible = {(link.real.addr, link.real.port): link for link in links}
    members = table.members
    index = table.choose(flow, lambda i: members[i][:2] in eligible)
    return links[0] if index is None else eligible[members[index][:2]]


def select_real(virtual: VirtualMachine, links: Sequence[Link], client_ip: int, now: float,
                backups: Callable[[PhysicalMachine], PhysicalMachine | None],
                commit: bool = True, exclude: PhysicalMachine | None = None,
                flow: int | None = None) -> PhysicalMachine | None:
    """FIG. 5 step 518 for one virtual: sticky affinity, a TESTING real's probe, the
    predictor, then the backups of unavailable reals, then reals whose first probe
    result is awaited; None when nothing can take it.
    `links`: all of the virtual's links, in order (the director keeps them as a tuple,
    so a SYN walks no chain).

    `exclude` is the real a connection is being taken away from (reassign): it must not
    get the connection back, not even through stickiness or as someone's backup."""
    sticky = virtual.sticky   # a property: asked once
    if sticky:
        kept = _sticky_real(virtual, links, client_ip, now, exclude)
        if kept is not None:
            if commit:
                remember_sticky(virtual, client_ip, kept, now)
            return kept
    eligible, testing, pending = candidates(links, exclude)
    chosen: PhysicalMachine | None = None
    if not eligible:
        chosen = backup_for(links, backups, exclude)
        if chosen is None and pending:
            # No real is known good: one whose first probe result is awaited rather
            # than a refusal (counted: `show statistics`, Probes).
            eligible = pending
            if commit:
                virtual.pending_fallbacks += 1
    if eligible:
        link = testing or PREDICTORS[virtual.predictor](
            virtual, eligible, commit, client_ip if flow is None else flow)
        chosen = link.real
    if sticky and chosen is not None and commit:
        remember_sticky(virtual, client_ip, chosen, now)
    return chosen


def _remembered(virtual: VirtualMachine, client_ip: int, now: float) -> object | None:
    """The real `virtual`'s sticky table holds for `client_ip`, if still fresh."""
    entry = virtual.sticky_table.get(client_ip)
    if entry is None or now - entry[1] >= virtual.sticky * 60:
        return None
    return entry[0]


def _sticky_real(virtual: VirtualMachine, links: Sequence[Link], client_ip: int,
                 now: float, exclude: PhysicalMachine | None) -> PhysicalMachine | None:
    """The real sticky keeps `client_ip` on: the one this virtual remembers, else, in a
    buddy group (model/buddy.py), this virtual's real with the address of the one a
    buddy remembers. Only a bound, available real that is not `exclude` qualifies;
    None sends the client to the predictor."""
    real = _remembered(virtual, client_ip, now)
    if isinstance(real, PhysicalMachine) and real is not exclude and available(real) \
            and any(link.real is real for link in links):
        return real
    for buddy in virtual.buddies:
        other = _remembered(buddy, client_ip, now) if buddy.sticky else None
        if not isinstance(other, PhysicalMachine):
            continue
        for link in links:
            real = link.real
            if real.addr == other.addr and real is not exclude and available(real):
                return real
    return None


def remember_sticky(virtual: VirtualMachine, client_ip: int, real: PhysicalMachine,
                    now: float) -> None:
    """Note that `client_ip` used `real` at `now` (a connection opened or closed).
    The entry moves to the end, so the table stays ordered by last use and expiry
    looks only at its oldest entries. A new client finds no room in a full table."""
    table = virtual.sticky_table
    if table.pop(client_ip, None) is None and len(table) >= STICKY_LIMIT:
        virtual.sticky_full += 1
        return
    table[client_ip] = (real, now)


def sticky_closed(virtual: VirtualMachine, client_ip: int, real: PhysicalMachine,
                  now: float) -> None:
    """A client's connection to `real` closed: its affinity lasts `sticky` minutes from
    now, unless it has moved to another real since."""
    if virtual.sticky:
        entry = virtual.sticky_table.get(client_ip)
        if entry is None or entry[0] is real:
            remember_sticky(virtual, client_ip, real, now)


def expire_sticky(virtual: VirtualMachine, now: float) -> int:
    """Forget the clients whose last use is `sticky` minutes old; how many went. Walks
    only the expired entries (the table is ordered by last use). A client with a
    connection open longer than that is remembered again when it closes."""
    table = virtual.sticky_table
    horizon = now - virtual.sticky * 60
    stale = []
    for client_ip, (_real, last) in table.items():
        if last > horizon:
            break
        stale.append(client_ip)
    for client_ip in stale:
        del table[client_ip]
    return len(stale)


def backup_for(links: Sequence[Link],
                backups: Callable[[PhysicalMachine], PhysicalMachine | None],
                exclude: PhysicalMachine | None = None) -> PhysicalMachine | None:
    """A real that cannot take connections hands them to its backup real (FIG. 3B 328)."""
    for link in links:
        backup = backups(link.real)
        if backup is not None and backup is not exclude:
            return backup
    return None
