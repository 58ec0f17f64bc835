"""BGP announcement of the VIPs (docs/design.rst, "Scale-out"): the local AS, the
neighbours, whether the operator drains this director, and which VIPs must be announced
now. ExaBGP speaks BGP (localdirector/bgp/); this is only what the model says.

Both families: a neighbour's address says its session's family, and a VIP is announced
(IPv4 unicast /32, IPv6 unicast /128) to the neighbours of its own family, next hop this
director's address on that session (docs/design.rst, "Scale-out")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .addr import IPV4, IPV6, family_of, format_ip
from .errors import ModelError
from .fastpath import reachable_reals
from .health import available
from .state import State

if TYPE_CHECKING:
    from .director import Director
    from .serverid import ServerId
    from .settings import Settings
    from .virtual import VirtualMachine

MAX_ASN = 4294967295
DEFAULT_HOLD = 90          # seconds, BGP's usual hold time
HOLD_RANGE = (3, 65535)    # RFC 4271: 0 (no keepalives) or at least 3


@dataclass(frozen=True)
class Neighbor:
    """One `bgp neighbor ADDR remote-as ASN [hold-time S]` line."""

    addr: int
    remote_as: int
    hold: int = DEFAULT_HOLD


@dataclass
class BgpConfig:
    asn: int = 0                  # `router bgp ASN`; 0 = BGP off
    router_id: int = 0            # `bgp router-id ADDR`; 0 = the local address
    neighbors: list[Neighbor] = field(default_factory=list)
    drain: bool = False           # `bgp drain`: withdraw everything, announce nothing


def can_serve(director: Director, virtual) -> bool:
    """In service, and some real it could send a connection to may take one now."""
    return virtual.state is State.IN_SERVICE and any(
        available(r) for r in reachable_reals(director, virtual))


def has_session(config: BgpConfig, vip: int) -> bool:
    """Some neighbour of the VIP's family could carry its route."""
    family = family_of(vip)
    return any(family_of(n.addr) is family for n in config.neighbors)


def wanted(director: Director) -> frozenset[int]:
    """The VIPs (/32, /128) to announce now: those of an `advertise`d virtual that can
    serve and have a neighbour of their family, none while draining or without BGP
    configured."""
    config = director.settings.bgp
    if not config.asn or config.drain:
        return frozenset()
    return frozenset(v.addr for v in director.iter_virtuals()
                     if v.advertise and has_session(config, v.addr)
                     and can_serve(director, v))


def _unusable(addr: int) -> bool:
    """An address no BGP session goes to: IPv4's 0/8, loopback, multicast and above;
    IPv6's unspecified, loopback, link-local (a session would need its interface) and
    multicast."""
    if family_of(addr) is IPV4:
        return addr >> 24 in (0, 127) or addr >> 28 >= 14
    bits = addr & IPV6.all_ones
    return bits in (0, 1) or bits >> 118 == 0x3FA or bits >> 120 == 0xFF


class BgpSettings:
    """The changes of `router bgp` and `advertise`, mixed into Director."""

    settings: Settings

    if TYPE_CHECKING:
        def changed(self) -> None: ...

        def virtual(self, sid: ServerId) -> VirtualMachine: ...

    def set_bgp_as(self, asn: int = 0) -> None:
        """`router bgp ASN` (0: `no router bgp`, which also forgets the neighbours)."""
        if not 0 <= asn <= MAX_ASN:
            raise ModelError(f"AS number out of range 1-{MAX_ASN}")
        config = self.settings.bgp
        config.asn = asn
        if not asn:
            config.neighbors.clear()
            config.router_id = 0
        self.changed()

    def set_bgp_router_id(self, addr: int = 0) -> None:
        self._need_bgp()
        self.settings.bgp.router_id = addr
        self.changed()

    def add_bgp_neighbor(self, addr: int, remote_as: int, hold: int = DEFAULT_HOLD
                         ) -> None:
        """`bgp neighbor ADDR remote-as ASN [hold-time S]`: re-typing replaces it."""
        self._need_bgp()
        if not 1 <= remote_as <= MAX_ASN:
            raise ModelError(f"AS number out of range 1-{MAX_ASN}")
        low, high = HOLD_RANGE
        if not low <= hold <= high:
            raise ModelError(f"hold-time must be {low}-{high} seconds")
        if _unusable(addr):
            raise ModelError(f"{format_ip(addr)} cannot be a BGP neighbor")
        listed = self.settings.bgp.neighbors
        listed[:] = [n for n in listed if n.addr != addr] + [Neighbor(addr, remote_as, hold)]
        self.changed()

    def remove_bgp_neighbor(self, addr: int) -> None:
        listed = self.settings.bgp.neighbors
        if not any(n.addr == addr for n in listed):
            raise ModelError(f"{format_ip(addr)} is not a BGP neighbor")
        listed[:] = [n for n in listed if n.addr != addr]
        self.changed()

    def set_bgp_drain(self, on: bool) -> None:
        """`bgp drain`: withdraw every VIP so the router sends this director no new flow."""
        self.settings.bgp.drain = on
        self.changed()

    def set_advertise(self, sid: ServerId, on: bool) -> None:
        """`advertise VIRTUAL`: announce its VIP while it can serve, to the neighbours
        of its family."""
        self.virtual(sid).advertise = on
        self.changed()

    def _need_bgp(self) -> None:
        if not self.settings.bgp.asn:
            raise ModelError("no BGP: configure router bgp ASN first")
