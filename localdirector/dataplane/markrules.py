"""The rules of traffic conntrack tracks for us, as iptables-save lines: the mark map
(a DNAT per fast-path real and protocol, a TEE per dispatched real), the drop of a
tracked real's packets conntrack does not know and the source NAT of the reals' own
connections (docs/design.rst, "Fast path", "Scale-out" and "Static"). Split from iptables.py, which puts them in its transactions."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..model.addr import format_ip
from ..model.serverid import UDP_SERVICE
from .ruleset import ALL_PORTS, DISPATCH_PORT, MARK_MASK, RuleSet

if TYPE_CHECKING:
    from .iptables import Names


def proto_port(service: int) -> tuple[str, int]:
    """A service port (model/serverid.py) as iptables names it: protocol and port."""
    return "udp" if service & UDP_SERVICE else "tcp", service & 0xFFFF


def port_match(service: int, option: str) -> str:
    """The match of a service port's packets by `option` (--dport, --sport) after a
    rule's ``-p PROTO``: nothing for every port of the protocol."""
    proto, port = proto_port(service)
    return "" if port == ALL_PORTS else f" -m {proto} {option} {port}"


def stray_rules(rules: RuleSet, n: Names) -> list[str]:
    """Mangle FORWARD: drop a tracked real's packet that conntrack does not know
    (ruleset.tracked_reals says why). A real answering on every port also opens
    connections of its own from any port, which cannot be told from such replies after
    their first packet, so there only SYN-ACKs are dropped, as the engine does; a UDP
    one has no such first packet, so nothing is (docs/design.rst, "Fast path").

    One connection-state test comes first, so a packet of a known connection (all but
    a connection's first) passes one rule instead of a rule per real and port: every
    packet the director forwards on the kernel path meets these rules, and their
    number showed in its new connections (docs/benchmarks.rst)."""
    out = []
    for addr, service in rules.stray:
        proto, port = proto_port(service)
        if port == ALL_PORTS and proto == "udp":
            continue
        match = ("--tcp-flags SYN,ACK SYN,ACK" if port == ALL_PORTS
                 else f"--sport {port}")
        out.append(f"-A {n.stray} -s {n.host(addr)} -p {proto} -m {proto} {match} -j DROP")
    gate = f"-A {n.reply} -m conntrack --ctstate INVALID,NEW -j {n.stray}"
    return [gate, *out] if out else []


def dispatch_rules(rules: RuleSet, marks: dict[tuple[int, int], int], n: Names
                   ) -> list[str]:
    """Dispatched forwarding: a packet the engine marked for a real is cloned to that
    real unchanged (TEE: the real's MAC, the VIP's address) and the original dropped, so
    it never follows the VIP's own route (docs/design.rst, "Scale-out")."""
    out = []
    for addr, port in rules.targets:
        if port == DISPATCH_PORT:
            match = f"-A {n.chain} -m mark --mark 0x{marks[(addr, port)]:x}/0x{MARK_MASK:x}"
            out += [f"{match} -j TEE --gateway {format_ip(addr)}", f"{match} -j DROP"]
    return out


def nat_rules(rules: RuleSet, marks: dict[tuple[int, int], int], n: Names) -> list[str]:
    """The mark map: one DNAT per fast-path target and protocol (port 0: the client's
    port stays)."""
    out = []
    for addr, service in rules.targets:
        if service == DISPATCH_PORT:
            continue
        proto, port = proto_port(service)
        to = n.to(addr, port)
        out.append(f"-A {n.chain} -p {proto} -m mark --mark 0x{marks[(addr, service)]:x}"
                   f"/0x{MARK_MASK:x} -j DNAT --to-destination {to}")
    return out


def static_rules(rules: RuleSet, n: Names) -> list[str]:
    """`static REAL VIP`: the first packet of a connection the real opens (nat sees no
    other) gets the VIP as its source; conntrack translates the rest and the replies.
    The replies of the real to clients never reach it: the engine's are untracked, the
    kernel's belong to connections conntrack already knows (docs/design.rst, "Static")."""
    return [f"-A {n.static} -s {n.host(real)} -j SNAT --to-source {format_ip(vip)}"
            for real, vip in rules.statics]
