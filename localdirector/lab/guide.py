"""What a newcomer reads about a running lab: where things are, who goes where.

``localdirector lab`` prints it as its banner and ``show lab`` prints it again; the
"who goes where" table comes from the model's own FIG. 5 lookup on whatever configuration
is loaded, so it follows edits. :class:`LabInfo` travels to the appliance, started by
``ip netns exec``, as JSON in one environment variable (docs/design.rst, "Lab").
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from localdirector.model.addr import IPV4, IPV6, Family, bracketed, family_of, parse_ip
from localdirector.model.director import Director
from localdirector.model.serverid import service_port
from localdirector.model.virtual import VirtualMachine
from localdirector.services import LAB_ENV
from localdirector.shell.render import table

from .addresses import DIRECTOR_REAL_SIDE, DIRECTOR_REAL_SIDE6
from .udpservers import BIG_NAME, DNS_PORT, WHO_NAME

if TYPE_CHECKING:
    from .driver import Lab

ENV = LAB_ENV
# Port used for "who goes where" when a virtual listens on all ports (port 0): the
# lab's HTTP servers' for tcp, its DNS servers' for udp.
DEFAULT_PORT = 80
DEFAULT_PORTS = {"tcp": DEFAULT_PORT, "udp": DNS_PORT}


@dataclass(frozen=True)
class LabInfo:
    """The facts about a built lab that the appliance inside it needs."""

    name: str
    client_ns: str
    director_ns: str
    real_ns: dict[str, str]          # real address -> its namespace
    ports: list[int]                 # ports every real's HTTP server listens on
    clients: dict[str, list[str]]    # group (preferred, ...) -> client addresses
    director_side: dict[str, str]    # group -> director address on that subnet
    config: str                      # the configuration file the lab started from
    dns: bool = False                # every real runs dnsmasq on port 53 (udpservers.py)
    # The IPv6 side of a dual-stack lab (empty where its namespaces have no IPv6):
    clients6: dict[str, list[str]] = field(default_factory=dict)   # group -> addresses
    director_side6: dict[str, str] = field(default_factory=dict)
    reals6: dict[str, str] = field(default_factory=dict)           # real -> IPv6 twin

    @classmethod
    def from_lab(cls, lab: Lab, config: str) -> LabInfo:
        six = lab.v6
        return cls(lab.name, lab.client_ns, lab.director_ns, dict(lab.real_ns),
                   list(lab.ports), {g: list(a) for g, a in lab.client_addresses.items()},
                   dict(lab.director_client_side), config, lab.dns,
                   {g: list(a) for g, a in lab.client_addresses6.items()} if six else {},
                   dict(lab.director_client_side6) if six else {},
                   dict(lab.reals6) if six else {})

    def groups(self, family: Family) -> dict[str, list[str]]:
        """The client groups' addresses of one family."""
        return self.clients6 if family is IPV6 else self.clients

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> LabInfo | None:
        """The lab this process runs in, or None outside a lab (or on a garbled value,
        which must never turn lab commands on half-configured)."""
        text = environ.get(ENV)
        if not text:
            return None
        try:
            return cls(**json.loads(text))
        except (ValueError, TypeError):
            return None


def address_range(addresses: Sequence[str]) -> str:
    """``198.51.100.2-9``, ``2001:db8:c::2-9`` for consecutive addresses; the lab
    allocates them that way."""
    if len(addresses) == 1:
        return addresses[0]
    return f"{addresses[0]}-{re.split(r'[.:]', addresses[-1])[-1]}"


def destinations(director: Director, proto: str | None = None,
                 family: Family | None = None) -> list[tuple[int, int, str]]:
    """Every (VIP, port, protocol) a client can send to (of `proto` and `family` only,
    if given), in configuration order, port 0 (all ports) shown as the port the lab's
    servers of that protocol use (80 for `lab curl`, 53 for `lab dig`)."""
    seen: dict[tuple[int, int, str], None] = {}
    for v in director.iter_virtuals():
        if proto in (None, v.sid.proto) and family in (None, family_of(v.addr)):
            seen.setdefault((v.addr, v.port or DEFAULT_PORTS[v.sid.proto], v.sid.proto), None)
    return list(seen)


def destination(addr: int, port: int, proto: str) -> str:
    """``192.0.2.10:80``, ``[2001:db8::10]:80``, and ``192.0.2.10:53/udp`` for a udp
    service."""
    return f"{bracketed(addr)}:{port}" + ("/udp" if proto == "udp" else "")


def _reals(director: Director, virtual: VirtualMachine) -> str:
    return " ".join(director.fmt(link.real.sid) for link in virtual.iter_links()) or "(none)"


def who_goes_where(info: LabInfo, director: Director) -> list[str]:
    """One row per client group and destination: the instance its SYN selects (the
    Bind ID lookup of FIG. 5 steps 510-516) and the reals of that instance."""
    rows = []
    for addr, port, proto in destinations(director):
        for group, clients in info.groups(family_of(addr)).items():
            source = parse_ip(clients[0])
            virtual = director.lookup_virtual(source, addr, service_port(port, proto))
            target = destination(addr, port, proto)
            label = f"{group} {address_range(clients)}"
            if virtual is None:
                dropped = "datagram" if proto == "udp" else "SYN"
                rows.append((label, target, "-", f"no instance: {dropped} dropped", "-"))
                continue
            backup = director.fmt(virtual.backup) if virtual.backup else "-"
            rows.append((label, target, director.fmt(virtual.sid),
                         _reals(director, virtual), backup))
    if not rows:
        return ["No virtual servers are configured yet (see `show running-config`)."]
    return table(("Clients", "Connect to", "Instance", "Reals", "Overflow"), rows)


def namespaces(info: LabInfo) -> list[str]:
    """Where each part of the lab lives, with its addresses (a dual-stack lab's IPv6
    ones on a line of their own below)."""
    def groups(clients: dict[str, list[str]]) -> str:
        return ", ".join(f"{g} {address_range(a)}" for g, a in clients.items())

    director = " ".join([*info.director_side.values(), DIRECTOR_REAL_SIDE])
    reals = list(info.real_ns)
    reals6 = f" and {address_range(list(info.reals6.values()))}" if info.reals6 else ""
    real_ns = list(info.real_ns.values())
    real_ns_text = real_ns[0] if len(real_ns) == 1 else \
        f"{real_ns[0]}..{real_ns[-1].rsplit('-', 1)[1]}"
    ports = " ".join(map(str, info.ports))
    dns = f"; {WHO_NAME} TXT on udp {DNS_PORT} too" if info.dns else ""
    six = bool(info.clients6)
    director6 = " ".join([*info.director_side6.values(), DIRECTOR_REAL_SIDE6])
    return table(("Namespace", "Role", "Addresses"), [
        (info.client_ns, "clients", groups(info.clients)),
        *([("", "", groups(info.clients6))] if six else []),
        (info.director_ns, "director", f"{director} (this appliance)"),
        *([("", "", director6)] if six else []),
        (real_ns_text, "reals", f"{address_range(reals)}{reals6}, each answers GET / with "
                                f"its name, on ports {ports}{dns}"),
    ])


def sample_curl(info: LabInfo, director: Director, family: Family = IPV4) -> str:
    """A curl line to paste into another terminal: the first group's first client of
    `family`, to the first virtual of that family."""
    clients = next(iter(info.groups(family).values()))
    targets = destinations(director, "tcp", family)
    addr, port, _ = targets[0] if targets else (parse_ip("192.0.2.10"), DEFAULT_PORT, "tcp")
    return (f"ip netns exec {info.client_ns} curl --noproxy '*' --interface "
            f"{clients[0]} http://{bracketed(addr)}:{port}/")


def sample_dig(info: LabInfo, director: Director) -> str:
    """A dig line to paste into another terminal: the first group's first client."""
    addr, port, _ = destinations(director, "udp")[0]
    return (f"ip netns exec {info.client_ns} dig @{bracketed(addr)} -p {port} -b "
            f"{next(iter(info.clients.values()))[0]} {WHO_NAME} TXT +short")


def overview(info: LabInfo, director: Director) -> list[str]:
    """The banner / `show lab` text; with probes configured it points at `show probe`,
    what a probes configuration is there to show."""
    first, *others = info.clients
    dig = bool(info.dns and destinations(director, "udp", IPV4))
    curl = bool(destinations(director, "tcp", IPV4)) or not dig
    curl6 = bool(info.clients6 and destinations(director, "tcp", IPV6))
    last = others[-1] if others else first
    tries = [
        *([(f"lab curl {first} 4", f"4 requests from {first} clients; each answer names "
                                    "its real"),
           *((f"lab curl {group}", f"the same from the {group} clients") for group in others),
           (f"lab curl {last} 6 hold 60", "6 connections kept open for 60 s, then:")]
          if curl else []),
        *([(f"lab curl -6 {first} 4", f"the same from {first} clients over IPv6, to the "
                                       "first IPv6 virtual")] if curl6 else []),
        *([(f"lab dig {first} 4", f"4 DNS queries ({WHO_NAME} TXT) over udp; each answer "
                                   "names its real"),
           (f"lab dig {last} {BIG_NAME}", "a 3.8 KB answer, fragmented on the way")]
          if dig else []),
        ("show conns", "who is connected to which real, right now"),
        ("show real", "connections per real"),
        *([("show probe", "each real's health checks: state, last result, latency")]
          if director.probes else []),
        ("show lab", "this overview again"),
    ]
    width = max(len(command) for command, _ in tries)
    return [
        f"Lab {info.name}: everything below lives in network namespaces {info.name}-*;",
        "this machine's own network is not touched.",
        "",
        *namespaces(info),
        "",
        f"Who goes where with {info.config}: the client's address picks the",
        "instance (its Bind ID), the instance's predictor picks the real.",
        "",
        *who_goes_where(info, director),
        "",
        "Try:",
        *(f"  {command.ljust(width)}  {what}" for command, what in tries),
        "From another terminal, the same request by hand:",
        f"  {sample_curl(info, director) if curl else sample_dig(info, director)}",
        *([f"  {sample_curl(info, director, IPV6)}"] if curl6 else []),
        "Leave with `exit`: the lab is removed. After a crash: localdirector lab --clean",
    ]
