"""Load-balancing predictors: pick one real among those bound to a virtual.

Shared by the data plane and by `test assign`, which calls them with commit=False so a
what-if question never moves a round-robin cursor or a weighted credit."""

from __future__ import annotations

from collections.abc import Callable

from .link import Link
from .real import PhysicalMachine
from .state import State
from .virtual import VirtualMachine


def _candidates(virtual: VirtualMachine, exclude: PhysicalMachine | None
                ) -> tuple[list[Link], Link | None]:
    """The links whose real may take the connection, and the first TESTING one among
    them (it takes the connection as its probe): one walk, as it runs for every SYN."""
    links: list[Link] = []
    testing: Link | None = None
    for link in virtual.iter_links():
        real = link.real
        if real is not exclude and real.available():
            links.append(link)
            if testing is None and real.state is State.TESTING:
                testing = link
    return links, testing


def _leastconns(virtual: VirtualMachine, links: list[Link], commit: bool) -> Link:
    return min(links, key=lambda link: link.real.current_conns)


def _roundrobin(virtual: VirtualMachine, links: list[Link], commit: bool) -> Link:
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


def _weighted(virtual: VirtualMachine, links: list[Link], commit: bool) -> Link:
    """Smooth weighted round robin (as nginx): weight 3:1 gives a,a,b,a not a,a,a,b."""
    total = sum(link.real.weight for link in links)
    best = max(links, key=lambda link: link.credit + link.real.weight)
    if commit:
        for link in links:
            link.credit += link.real.weight
        best.credit -= total
    return best


def _fastest(virtual: VirtualMachine, links: list[Link], commit: bool) -> Link:
    # Unmeasured reals (0.0) go first so every real gets measured.
    return min(links, key=lambda link: (link.real.response_time, link.real.current_conns))


PREDICTOR_FUNCTIONS: dict[str, Callable[[VirtualMachine, list[Link], bool], Link]] = {
    "leastconns": _leastconns,
    "roundrobin": _roundrobin,
    "weighted": _weighted,
    "fastest": _fastest,
}


def select_real(virtual: VirtualMachine, client_ip: int, now: float,
                backups: Callable[[PhysicalMachine], PhysicalMachine | None],
                commit: bool = True, exclude: PhysicalMachine | None = None
                ) -> PhysicalMachine | None:
    """FIG. 5 step 518 for one virtual: sticky affinity, a TESTING real's probe, the
    predictor, then the backups of unavailable reals; None when nothing can take it.

    `exclude` is the real a connection is being taken away from (reassign): it must not
    get the connection back, not even through stickiness or as someone's backup."""
    if virtual.sticky:
        entry = virtual.sticky_table.get(client_ip)
        if entry is not None:
            real, last = entry
            if now - last < virtual.sticky * 60 and isinstance(real, PhysicalMachine) \
                    and real is not exclude and real.available() \
                    and _still_bound(virtual, real):
                if commit:
                    virtual.sticky_table[client_ip] = (real, now)
                return real
    links, testing = _candidates(virtual, exclude)
    if links:
        link = testing or PREDICTOR_FUNCTIONS[virtual.predictor](virtual, links, commit)
        chosen: PhysicalMachine | None = link.real
    else:
        chosen = _backup_for(virtual, backups, exclude)
    if chosen is not None and commit and virtual.sticky:
        virtual.sticky_table[client_ip] = (chosen, now)
    return chosen


def _still_bound(virtual: VirtualMachine, real: PhysicalMachine) -> bool:
    return any(link.real is real for link in virtual.iter_links())


def _backup_for(virtual: VirtualMachine,
                backups: Callable[[PhysicalMachine], PhysicalMachine | None],
                exclude: PhysicalMachine | None = None) -> PhysicalMachine | None:
    """A real that cannot take connections hands them to its backup real (FIG. 3B 328)."""
    for link in virtual.iter_links():
        backup = backups(link.real)
        if backup is not None and backup is not exclude:
            return backup
    return None
