"""One address family per service (docs/design.rst, "Addresses"): the refusals that keep
an IPv6 virtual's reals, backups, buddies and assigned clients IPv6, and an IPv4 one's
IPv4. Translating between the families is NAT64, which the appliance does not do: a
connection of one family sent to a real of the other would reach nobody."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .addr import family_of
from .errors import ModelError

if TYPE_CHECKING:
    from .serverid import ServerId

NAT64 = "NAT64 is not supported"


def refuse_other_family(fmt: Callable[[ServerId], str], sid: ServerId,
                        other: ServerId, what: str) -> None:
    """`bind` and `backup` across families."""
    mine, theirs = family_of(sid.addr), family_of(other.addr)
    if mine is not theirs:
        raise ModelError(f"{NAT64}: cannot {what} {mine.name} {fmt(sid)} to "
                         f"{theirs.name} {fmt(other)}")


def refuse_client_network(fmt: Callable[[ServerId], str], sid: ServerId,
                          client: int, prefixlen: int) -> None:
    """`assign`: a client network of the virtual's family, of a length that family has."""
    mine, theirs = family_of(sid.addr), family_of(client)
    if mine is not theirs:
        raise ModelError(f"{NAT64}: an {theirs.name} client network cannot be assigned "
                         f"to {mine.name} virtual {fmt(sid)}")
    if not 0 <= prefixlen <= mine.width:
        raise ModelError(f"invalid prefix length {prefixlen} (0-{mine.width})")


def refuse_mixed_group(name: str, sid: ServerId, members: list[ServerId]) -> None:
    """`buddy`: a group shares clients by address, and a client has one family."""
    mine = family_of(sid.addr)
    other = next((m for m in members if family_of(m.addr) is not mine), None)
    if other is not None:
        raise ModelError(f"{NAT64}: buddy group {name} holds {family_of(other.addr).name} "
                         f"virtuals; a client shares its real only within its own family")
