"""BGP announcement of the VIPs (docs/design.rst, "Scale-out"): the local AS, the
neighbours, whether the operator drains this director, and which VIPs must be announced
now. ExaBGP speaks BGP (localdirector/bgp/); this is only what the model says."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .fastpath import reachable_reals
from .health import available
from .state import State

if TYPE_CHECKING:
    from .director import Director

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


def wanted(director: Director) -> frozenset[int]:
    """The VIPs (/32) to announce now: those of an `advertise`d virtual that can serve,
    none while draining or without BGP configured."""
    config = director.settings.bgp
    if not config.asn or config.drain:
        return frozenset()
    return frozenset(v.addr for v in director.iter_virtuals()
                     if v.advertise and can_serve(director, v))
