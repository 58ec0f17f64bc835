"""The failover lab (`localdirector lab --failover`, docs/design.rst "Failover"): two
director namespaces, the primary and the secondary unit, sharing the client segment and
the reals' segment through bridges, with a failover link of their own.

    clients (bridge br0 in -cli) --+-- d1 (primary)   --+-- bridge br0 in -seg -- reals
                                   +-- d2 (secondary) --+
                   d1 fo0 198.19.255.1 ---- 198.19.255.2 fo0 d2

The addresses clients and reals route through (198.51.100.1, 198.18.0.1, 198.19.0.1 and
203.0.113.1, as in the one-director lab) are the pair's failover virtuals: keepalived
puts them on the active unit. Each unit has its own address beside them on each segment
(.252 the primary, .253 the secondary), which keepalived's instances need."""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Sequence

from .driver import DEFAULT_PORTS, Lab
from .topology import (
    CLIENT_SUBNETS,
    DEFAULT_CLIENTS_PER_SUBNET,
    DEFAULT_REALS,
    DIRECTOR_REAL_SIDE,
    REAL_NET,
    VIP_NET,
    LabError,
    _ip_batch_job,
    _sysctl_job,
    finish,
    kill_processes,
)

UNITS = ("primary", "secondary")
LINK_NET = "198.19.255"
POLL_MS, HOLD_MS = 100, 500        # quick enough to watch, slow enough for a busy machine
KEY = "lab-pair-passphrase"        # the lab's own: a real pair's is secret


def link_address(unit: str) -> str:
    """The unit's address on the failover link."""
    return f"{LINK_NET}.{UNITS.index(unit) + 1}"


def own_address(net: ipaddress.IPv4Network, unit: str) -> str:
    """The unit's own address on a segment: .252 the primary, .253 the secondary."""
    return str(net.network_address + 252 + UNITS.index(unit))


def failover_lines(unit: str) -> list[str]:
    """What the pair adds to FIG. 1 on `unit`: the other unit, the stream's shared key,
    the timing, the virtual addresses that move, replication, and failover on."""
    other = UNITS[1 - UNITS.index(unit)]
    gateways = [*(net.network_address + 1 for net in CLIENT_SUBNETS.values()),
                DIRECTOR_REAL_SIDE]
    return [f"failover ip address {link_address(other)}", f"failover key {KEY}",
            f"failover poll {POLL_MS} holdtime {HOLD_MS}",
            *(f"failover virtual {gateway} 255.255.255.0" for gateway in gateways),
            "replicate", "failover"]


def appliance_arguments(unit: str) -> list[str]:
    """The facts of the box the appliance's command line gives (docs/design.rst)."""
    return ["--failover-link", "fo0", "--failover-unit", unit]


class FailoverPair(Lab):
    """Builds like Lab (servers on the reals, checked) with two directors and the
    segment namespace in place of the one director; `director_ns` is the primary's."""

    def __init__(self, reals: Sequence[str] = DEFAULT_REALS,
                 ports: Sequence[int] = DEFAULT_PORTS,
                 clients_per_subnet: int = DEFAULT_CLIENTS_PER_SUBNET,
                 prefix: str = "ld") -> None:
        super().__init__(reals, ports, clients_per_subnet, prefix)
        self.unit_ns: dict[str, str] = {}
        self.segment_ns = ""

    @property
    def namespaces(self) -> list[str]:
        if not self.name:
            return []
        return [self.client_ns, self.segment_ns, *self.unit_ns.values(),
                *self.real_ns.values()]

    def _claim(self) -> None:
        super()._claim()
        self.segment_ns = f"{self.name}-seg"
        self.unit_ns = {unit: f"{self.name}-d{i}" for i, unit in enumerate(UNITS, 1)}
        self.director_ns = self.unit_ns["primary"]
        for unit, ns in self.unit_ns.items():
            self._addresses[ns] = {link_address(unit), own_address(REAL_NET, unit),
                                   *(own_address(net, unit) for net in CLIENT_SUBNETS.values())}

    def destroy(self) -> None:
        super().destroy()
        self.unit_ns = {}
        self.segment_ns = ""

    def _create(self) -> None:
        finish([_ip_batch_job(None, [f"netns add {ns}" for ns in self.namespaces])])
        no_ipv6 = ["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"]
        forwarding = ["net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
                      "net.ipv4.conf.default.rp_filter=0"]
        units = set(self.unit_ns.values())
        finish([_sysctl_job(ns, no_ipv6 + (forwarding if ns in units else []))
                for ns in self.namespaces])
        primary, secondary = self.unit_ns["primary"], self.unit_ns["secondary"]
        client = ["link set lo up", "link add br0 type bridge forward_delay 0",
                  *(f"addr add {addr}/24 dev br0" for addr in self.all_client_addresses),
                  "link set br0 up"]
        segment = ["link set lo up", "link add br0 type bridge forward_delay 0",
                   "link set br0 up"]
        for i, ns in enumerate(self.unit_ns.values(), 1):
            client += [f"link add d{i} type veth peer name cli0 netns {ns}",
                       f"link set d{i} master br0", f"link set d{i} up"]
            segment += [f"link add d{i} type veth peer name real0 netns {ns}",
                        f"link set d{i} master br0", f"link set d{i} up"]
        for real, ns in self.real_ns.items():
            tag = f"r{real.rsplit('.', 1)[1]}"
            segment += [f"link add {tag} type veth peer name eth0 netns {ns}",
                        f"link set {tag} master br0", f"link set {tag} up"]
        client.append(f"route add {VIP_NET} via {self.director_client_side['preferred']}")
        finish([_ip_batch_job(self.client_ns, client), _ip_batch_job(self.segment_ns, segment),
                _ip_batch_job(primary, ["link add fo0 type veth peer name fo0 netns "
                                        f"{secondary}"])])
        jobs = []
        for unit, ns in self.unit_ns.items():
            jobs.append(_ip_batch_job(ns, [
                "link set lo up",
                f"addr add {link_address(unit)}/24 dev fo0", "link set fo0 up",
                *(f"addr add {own_address(net, unit)}/24 dev cli0"
                  for net in CLIENT_SUBNETS.values()), "link set cli0 up",
                f"addr add {own_address(REAL_NET, unit)}/24 dev real0", "link set real0 up"]))
            jobs.append(_sysctl_job(ns, [f"net.ipv4.conf.{iface}.rp_filter=0"
                                         for iface in ("lo", "cli0", "real0", "fo0")]))
        for real, ns in self.real_ns.items():
            jobs.append(_ip_batch_job(ns, [
                "link set lo up", f"addr add {real}/24 dev eth0", "link set eth0 up",
                f"route add default via {DIRECTOR_REAL_SIDE}"]))
        finish(jobs)

    def _verify(self) -> None:
        """As Lab's, toward the units' own addresses: the shared ones are keepalived's."""
        saved = self.director_client_side
        self.director_client_side = {role: own_address(net, "primary")
                                     for role, net in CLIENT_SUBNETS.items()}
        try:
            super()._verify()
        finally:
            self.director_client_side = saved

    # -- what a test or a newcomer does to a unit ---------------------------------------
    def crash(self, unit: str) -> None:
        """The box dies as hardware does: every process in the unit's namespace (the
        appliance, its keepalived and conntrackd) is SIGKILLed and all its links lose
        carrier, the failover cable's too (the survivor's end of it goes down). The
        cables first: a dying box says nothing more (no keepalived told to stop)."""
        self.unplug(unit)
        kill_processes([self.unit_ns[unit]])

    def unplug(self, unit: str) -> None:
        """Pull all the unit's cables: client and real (the segments' ends of them) and
        the failover link (its own end: the other unit's end loses carrier)."""
        self._cables(unit, "down")

    def plug(self, unit: str) -> None:
        self._cables(unit, "up")

    def _cables(self, unit: str, state: str) -> None:
        port = f"d{UNITS.index(unit) + 1}"
        for ns, iface in ((self.client_ns, port), (self.segment_ns, port),
                          (self.unit_ns[unit], "fo0")):
            proc = subprocess.run(["ip", "-n", ns, "link", "set", iface, state],
                                  capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise LabError(f"cannot set {iface} {state} in {ns}: "
                               f"{proc.stderr.strip()}")

    def cut_link(self, cut: bool = True) -> None:
        """Lose every packet on the failover link while both ends stay up (a cable cut
        in the middle: keepalived sees no interface go down), or mend it."""
        action = "-I" if cut else "-D"
        for ns in self.unit_ns.values():
            for rule in (["INPUT", "-i", "fo0"], ["OUTPUT", "-o", "fo0"]):
                proc = subprocess.run(["ip", "netns", "exec", ns, "iptables", "-w", action,
                                       *rule, "-j", "DROP"], capture_output=True, text=True,
                                      check=False)
                if proc.returncode != 0:
                    raise LabError(f"cannot {'cut' if cut else 'mend'} the failover link "
                                   f"in {ns}: {proc.stderr.strip()}")

    def holders(self) -> list[str]:
        """The units holding the client side's failover address now (keepalived's
        MASTER puts it there): one normally, two in a split brain."""
        gateway = f"{self.director_client_side['preferred']}/24"
        return [unit for unit, ns in self.unit_ns.items() if gateway in subprocess.run(
            ["ip", "-n", ns, "-4", "-o", "addr", "show", "dev", "cli0"],
            capture_output=True, text=True, check=False).stdout]
