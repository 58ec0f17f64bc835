"""Who may speak to the pair's daemons: VRRP (keepalived), the appliance's stream (TCP
7405) and conntrackd's channel (UDP 3780) are taken only from the other unit's address,
on the failover link, addressed to this box, and VRRP only with TTL 255 (RFC 5798: it
was sent from the link itself, never routed). Everything else of theirs is dropped in
raw PREROUTING, before routing, so a unit never forwards it either: an advert forged
with the peer's own address as its source but arriving on the client side is dropped,
which keepalived's `check_unicast_src` alone would let through once a unit forwarded it
onto the link (docs/design.rst, "Failover", threat model)."""

from __future__ import annotations

from .configs import CONNTRACKD_PORT
from .guard import iptables_raw
from .peer import PORT

CHAIN = "LDPEER"


class LinkFilter:
    """The chain LDPEER, first in raw PREROUTING while the service runs; `admit` names
    the peer (again after every change of `failover ip address`)."""

    def __init__(self, link: str) -> None:
        self.link = link
        self.peer: str | None = ""
        iptables_raw("-N", CHAIN, check=False)
        while iptables_raw("-D", "PREROUTING", "-j", CHAIN, check=False):
            pass
        self.admit(None)
        iptables_raw("-I", "PREROUTING", "1", "-j", CHAIN)

    def admit(self, peer: str | None) -> None:
        """Only `peer` (an address on the link), or nobody (None)."""
        if peer == self.peer:
            return
        self.peer = peer
        rules: list[tuple[str, ...]] = []
        for proto, port in (("vrrp", None), ("tcp", PORT), ("udp", CONNTRACKD_PORT)):
            what = ("-p", proto) if port is None else ("-p", proto, "--dport", str(port))
            if peer is not None:
                ttl = ("-m", "ttl", "--ttl-eq", "255") if port is None else ()
                rules.append((*what, *ttl, "-i", self.link, "-s", peer,
                              "-m", "addrtype", "--dst-type", "LOCAL", "-j", "RETURN"))
            rules.append((*what, "-j", "DROP"))
        iptables_raw("-F", CHAIN)
        for rule in rules:
            iptables_raw("-A", CHAIN, *rule)

    def remove(self) -> None:
        while iptables_raw("-D", "PREROUTING", "-j", CHAIN, check=False):
            pass
        iptables_raw("-F", CHAIN, check=False)
        iptables_raw("-X", CHAIN, check=False)
