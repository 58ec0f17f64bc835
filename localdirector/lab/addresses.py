"""The lab's address plan, both families, and the guard that keeps every address in it.

Documentation addresses only (docs/design.rst, "Lab"): IPv4 from 192.0.2.0/24 (VIPs),
203.0.113.0/24 (reals), 198.51.100.0/24 and 198.18.0.0/15 (clients); IPv6 from
2001:db8::/32 only. Each IPv4 address of the lab has an IPv6 twin written with the same
digits, so a reader maps one to the other at a glance: real 203.0.113.14 is
2001:db8:1::14, preferred client 198.51.100.3 is 2001:db8:c::3. Each client group is a
/48 of its own (what an `assign` names), of which the lab puts the first /64 on the
link: an address of the /48 outside that /64 is routed nowhere, as 198.18.0.0/15 outside
198.18.0.0/24 is, so spoofed sources of a flood cost the director no neighbour entry.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

VIP_NET = ipaddress.IPv4Network("192.0.2.0/24")
REAL_NET = ipaddress.IPv4Network("203.0.113.0/24")
CLIENT_SUBNETS = {
    "preferred": ipaddress.IPv4Network("198.51.100.0/24"),
    "unwelcome": ipaddress.IPv4Network("198.18.0.0/24"),
    "general": ipaddress.IPv4Network("198.19.0.0/24"),
}
VIP_NET6 = ipaddress.IPv6Network("2001:db8::/64")
REAL_NET6 = ipaddress.IPv6Network("2001:db8:1::/64")
# Each group's /48 (what the configuration assigns) and the /64 of it on the link.
# preferred 2001:db8:c::/48, unwelcome 2001:db8:d::/48, general 2001:db8:e::/48
CLIENT_NETS6 = {group: ipaddress.IPv6Network(f"2001:db8:{letter}::/48")
                for group, letter in zip(CLIENT_SUBNETS, "cde")}
CLIENT_SUBNETS6 = {group: next(net.subnets(new_prefix=64))
                   for group, net in CLIENT_NETS6.items()}
LINK_NET6 = ipaddress.IPv6Network("2001:db8:ff::/48")
# Every address the lab configures or sends to must fall in one of these.
ALLOWED_NETS: tuple[IPNetwork, ...] = (
    VIP_NET,
    ipaddress.IPv4Network("198.51.100.0/24"),
    ipaddress.IPv4Network("198.18.0.0/15"),
    REAL_NET,
    VIP_NET6,
    REAL_NET6,
    *CLIENT_NETS6.values(),
    LINK_NET6,
)
DIRECTOR_REAL_SIDE = "203.0.113.1"
DIRECTOR_REAL_SIDE6 = "2001:db8:1::1"
DEFAULT_REALS = tuple(f"203.0.113.{n}" for n in range(11, 16))
DEFAULT_CLIENTS_PER_SUBNET = 8

_ADDRESS_TOKEN = re.compile(r"^(?:\d+\.\d+\.\d+\.\d+|[0-9a-f]*:[0-9a-f:]*)(?:/\d+)?$")


class LabError(RuntimeError):
    """The lab could not be built, checked or driven; the message says which step."""


def require_allowed(address: str, nets: Iterable[IPNetwork] = ALLOWED_NETS) -> None:
    """Raise unless ``address`` (or network, either family) lies inside one of ``nets``.

    The lab's one hard safety rule: no other address may ever be configured or targeted.
    """
    try:
        net = ipaddress.ip_network(address, strict=False)
    except ValueError as exc:
        raise LabError(f"not an IP address: {address!r}") from exc
    if not any(net.version == allowed.version and net.subnet_of(allowed)  # type: ignore[arg-type]
               for allowed in nets):
        raise LabError(f"address {address} is outside the lab's documentation ranges")


def check_tokens(line: str) -> None:
    """Every address in a line of `ip` commands is allowed (the build's last guard); a
    hardware address (after `address` or `lladdr`) is not an IP address."""
    tokens = line.split()
    for before, token in zip(["", *tokens], tokens):
        if _ADDRESS_TOKEN.match(token) and before not in ("address", "lladdr"):
            require_allowed(token)


def real_address(text: str) -> str:
    """Normalise a real's address; it must be a host of 203.0.113.0/24 other than the
    director's .1 (and not the network or broadcast address)."""
    try:
        addr = ipaddress.IPv4Address(text)
    except ValueError as exc:
        raise LabError(f"not an IPv4 address: {text!r}") from exc
    require_allowed(str(addr), [REAL_NET])
    if addr.packed[3] in (0, 1, 255):
        raise LabError(f"real {addr} collides with the network, director or broadcast")
    return str(addr)


def twin(net: ipaddress.IPv6Network, ipv4: str) -> str:
    """The IPv6 address of `net` written with the IPv4 address's last number: 14 of
    203.0.113.14 in 2001:db8:1::/64 is 2001:db8:1::14."""
    return str(net.network_address + int(ipv4.rsplit(".", 1)[1], 16))


def real6(real: str) -> str:
    """A real's IPv6 address: 203.0.113.14 -> 2001:db8:1::14."""
    return twin(REAL_NET6, real)


def client_addresses(per_subnet: int = DEFAULT_CLIENTS_PER_SUBNET) -> dict[str, tuple[str, ...]]:
    """The client addresses of each subnet: .2, .3, ... (.1 is the director's)."""
    return {role: tuple(str(net.network_address + i) for i in range(2, 2 + per_subnet))
            for role, net in CLIENT_SUBNETS.items()}


def client_addresses6(per_subnet: int = DEFAULT_CLIENTS_PER_SUBNET) -> dict[str, tuple[str, ...]]:
    """Each group's IPv6 clients, the twins of its IPv4 ones: 2001:db8:c::2, ::3, ..."""
    return {role: tuple(twin(CLIENT_SUBNETS6[role], addr) for addr in addrs)
            for role, addrs in client_addresses(per_subnet).items()}


def prefixlen(address: str) -> int:
    """The length of the lab's on-link prefix around `address`: /24 or /64."""
    return 24 if ipaddress.ip_address(address).version == 4 else 64
