"""The scale-out lab (`localdirector lab --cluster N`, docs/design.rst "Scale-out"): a
router namespace running BIRD 2 with ECMP, N director namespaces that announce the VIPs
to it by BGP, reals that hold the VIPs on their loopback and answer the clients
directly, and the clients behind the router.

    clients --- router (BIRD, ECMP over the BGP next hops)
                  |  198.19.255.0/24: one link segment, director i at .(10+i)
                  |    (`ipv6`: also 2001:db8:ff::/64, director i at ::(10+i))
                  |  203.0.113.0/24: the reals' segment, router .1, director i .(1+i)
                 directors d1..dN --TEE--> reals --> router --> clients

The router and the directors share both segments through bridges in the router
namespace: a director forwards a client's packet to a real's MAC (dispatched), and the
real's answer goes to the router, never back through a director."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from localdirector.model.addr import family_of, format_ip, is_v6, parse_ip

from .driver import DEFAULT_PORTS, Lab
from .topology import (DEFAULT_CLIENTS_PER_SUBNET, DEFAULT_REALS, LabError, _ip_batch_job,
                       _sysctl_job, finish, require_allowed)

LINK_NET = "198.19.255"
ROUTER_LINK = f"{LINK_NET}.1"
ROUTER_REAL_SIDE = "203.0.113.1"
ROUTER_AS = 65000
DIRECTOR_AS = 65001
MAX_DIRECTORS = 8          # director i holds 203.0.113.(1+i), below the reals' .11
LINK_NET6 = "2001:db8:ff::"      # the same link in IPv6 (`ipv6=True`)
ROUTER_LINK6 = f"{LINK_NET6}1"
BIRD_CONF = """\
router id {router};
log "{log}" all;
protocol device {{ scan time 1; }}
protocol direct {{ ipv4; ipv6; }}
protocol kernel {{
    ipv4 {{ import none; export all; }};
    merge paths on;     # the directors' equal BGP routes become one ECMP route
}}
protocol kernel {{
    ipv6 {{ import none; export all; }};
    merge paths on;
}}
template bgp director_session {{
    local as {router_as};
    hold time {hold};
    keepalive time 1;
    connect retry time 1;
    error wait time 1, 2;
}}
template bgp director from director_session {{
    ipv4 {{ import all; export none; }};
}}
template bgp director6 from director_session {{
    ipv6 {{ import all; export none; }};
}}
{neighbors}
"""


def bird_config(sessions: Sequence[tuple[str, str]], hold: int, log: Path) -> str:
    """The router's BIRD 2 configuration: one BGP session per (protocol name, director
    address), IPv4 or IPv6 by the address (an IPv6 session carries IPv6 unicast, its
    next hop the director's IPv6 address on the link), and a kernel protocol per family
    merging equal routes into one ECMP route."""
    lines = []
    for name, addr in sessions:
        v6 = is_v6(parse_ip(addr))
        lines.append(f"protocol bgp {name} from director{'6' if v6 else ''} {{ "
                     f"local {ROUTER_LINK6 if v6 else ROUTER_LINK}; "
                     f"neighbor {addr} as {DIRECTOR_AS}; }}")
    return BIRD_CONF.format(router=ROUTER_LINK, router_as=ROUTER_AS, hold=hold,
                            neighbors="\n".join(lines), log=log)


def director_link(i: int) -> str:
    """Director i's address (1-based) on the router link."""
    return f"{LINK_NET}.{10 + i}"


def director_link6(i: int) -> str:
    return f"{LINK_NET6}{10 + i}"


def director_real_side(i: int) -> str:
    return f"203.0.113.{1 + i}"


class Cluster(Lab):
    """Builds like Lab (servers on the reals' own addresses, checked), with a router and
    N directors in place of the one director; `director_ns` is the first director."""

    def __init__(self, directors: int = 3, reals: Sequence[str] = DEFAULT_REALS,
                 ports: Sequence[int] = DEFAULT_PORTS,
                 clients_per_subnet: int = DEFAULT_CLIENTS_PER_SUBNET, prefix: str = "ld",
                 hold: int = 3, ipv6: bool = False) -> None:
        if not 1 <= directors <= MAX_DIRECTORS:
            raise LabError(f"a cluster has 1-{MAX_DIRECTORS} directors")
        super().__init__(reals, ports, clients_per_subnet, prefix)
        self.directors = directors
        self.hold = hold
        self.ipv6 = ipv6          # the router link dual-stack: a BGP session per family
        self.router_ns = ""
        self.director_nss: list[str] = []

    @property
    def namespaces(self) -> list[str]:
        if not self.name:
            return []
        return [self.client_ns, self.router_ns, *self.director_nss, *self.real_ns.values()]

    def _claim(self) -> None:
        super()._claim()
        self.router_ns = f"{self.name}-rtr"
        self.director_nss = [f"{self.name}-d{i}" for i in range(1, self.directors + 1)]
        self.director_ns = self.director_nss[0]
        self._addresses[self.router_ns] = {ROUTER_LINK, ROUTER_REAL_SIDE,
                                           *self.director_client_side.values()}
        for i, ns in enumerate(self.director_nss, 1):
            self._addresses[ns] = {director_link(i), director_real_side(i)}
            if self.ipv6:
                self._addresses[ns].add(director_link6(i))

    def destroy(self) -> None:
        super().destroy()
        self.router_ns = ""
        self.director_nss = []

    def _create(self) -> None:
        finish([_ip_batch_job(None, [f"netns add {ns}" for ns in self.namespaces])])
        no_ipv6 = ["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"]
        forwarding = ["net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
                      "net.ipv4.conf.default.rp_filter=0",
                      *(["net.ipv6.conf.all.forwarding=1"] if self.ipv6 else [])]
        routers = {self.router_ns, *self.director_nss}
        # `ipv6`: the router link carries IPv6 too (the BGP sessions of the IPv6 VIPs).
        finish([_sysctl_job(ns, (forwarding if ns in routers else [])
                            + ([] if self.ipv6 and ns in routers else no_ipv6))
                for ns in self.namespaces])
        router = [
            "link set lo up",
            "link add lnk0 type bridge forward_delay 0",
            f"addr add {ROUTER_LINK}/24 dev lnk0",
            *([f"addr add {ROUTER_LINK6}/64 dev lnk0 nodad"] if self.ipv6 else []),
            "link set lnk0 up",
            "link add srv0 type bridge forward_delay 0",
            f"addr add {ROUTER_REAL_SIDE}/24 dev srv0", "link set srv0 up",
            f"link add cli0 type veth peer name eth0 netns {self.client_ns}",
            *(f"addr add {addr}/24 dev cli0" for addr in self.director_client_side.values()),
            "link set cli0 up",
        ]
        for i, ns in enumerate(self.director_nss, 1):
            router += [f"link add d{i}l type veth peer name eth0 netns {ns}",
                       f"link set d{i}l master lnk0", f"link set d{i}l up",
                       f"link add d{i}s type veth peer name eth1 netns {ns}",
                       f"link set d{i}s master srv0", f"link set d{i}s up"]
        for real, ns in self.real_ns.items():
            tag = f"r{real.rsplit('.', 1)[1]}"
            router += [f"link add {tag} type veth peer name eth0 netns {ns}",
                       f"link set {tag} master srv0", f"link set {tag} up"]
        finish([_ip_batch_job(self.router_ns, router)])
        client = ["link set lo up", "link set eth0 up",
                  *(f"addr add {addr}/24 dev eth0" for addr in self.all_client_addresses),
                  f"route add 192.0.2.0/24 via {self.director_client_side['preferred']}"]
        jobs = [_ip_batch_job(self.client_ns, client)]
        for i, ns in enumerate(self.director_nss, 1):
            jobs.append(_ip_batch_job(ns, [
                "link set lo up", f"addr add {director_link(i)}/24 dev eth0",
                *([f"addr add {director_link6(i)}/64 dev eth0 nodad"] if self.ipv6 else []),
                "link set eth0 up", f"addr add {director_real_side(i)}/24 dev eth1",
                "link set eth1 up", f"route add default via {ROUTER_LINK}"]))
        for real, ns in self.real_ns.items():
            jobs.append(_ip_batch_job(ns, [
                "link set lo up", f"addr add {real}/24 dev eth0", "link set eth0 up",
                f"route add default via {ROUTER_REAL_SIDE}"]))
        # ECMP by the L4 hash, so one client's connections spread over the directors.
        jobs.append(_sysctl_job(self.router_ns, [
            "net.ipv4.fib_multipath_hash_policy=1",
            *(["net.ipv6.fib_multipath_hash_policy=1"] if self.ipv6 else []),
            *(f"net.ipv4.conf.{iface}.rp_filter=0"
              for iface in ("lnk0", "srv0", "cli0", "lo"))]))
        finish(jobs)

    def build(self) -> Cluster:
        super().build()
        try:
            self._start_bird()
        except BaseException:
            self.destroy()
            raise
        return self

    # -- BIRD --------------------------------------------------------------------------
    @property
    def bird_socket(self) -> Path:
        assert self._logdir is not None
        return self._logdir / "bird.ctl"

    def _start_bird(self) -> None:
        assert self._logdir is not None
        sessions = [(f"d{i}", director_link(i)) for i in range(1, self.directors + 1)]
        if self.ipv6:
            sessions += [(f"d{i}v6", director_link6(i))
                         for i in range(1, self.directors + 1)]
        conf = self._logdir / "bird.conf"
        conf.write_text(bird_config(sessions, self.hold, self._logdir / "bird.log"))
        self.popen_in(self.router_ns, ["bird", "-f", "-c", str(conf),
                                       "-s", str(self.bird_socket)],
                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while self.birdc("show status").returncode != 0:
            if time.monotonic() > deadline:
                raise LabError("BIRD did not start in the router namespace")
            time.sleep(0.1)

    def birdc(self, command: str) -> subprocess.CompletedProcess[str]:
        return self.run_in(self.router_ns, ["birdc", "-s", str(self.bird_socket),
                                            *command.split()])

    def bird_next_hops(self, vip: str) -> set[str]:
        """The next hops BIRD's own table holds for VIP/32 or VIP/128 (empty: no route)."""
        out = self.birdc(f"show route {host_prefix(vip)} all").stdout
        return {word for line in out.splitlines() if "via" in line
                for word in line.split()[line.split().index("via") + 1:][:1]}

    def kernel_next_hops(self, vip: str) -> set[str]:
        """The router's kernel route for VIP/32 or VIP/128: its ECMP next hops."""
        prefix = host_prefix(vip)
        out = self.run_in(self.router_ns, ["ip", f"-{family_of(parse_ip(vip)).version}",
                                           "route", "show", prefix]).stdout
        words = out.split()
        return {words[i + 1] for i, w in enumerate(words) if w == "via"}

    def bgp_lines(self) -> list[str]:
        """Every director's BGP configuration: its session to the router (and its IPv6
        one, which carries the IPv6 VIPs, with `ipv6`)."""
        return [f"router bgp {DIRECTOR_AS}",
                f"bgp neighbor {ROUTER_LINK} remote-as {ROUTER_AS} hold-time {self.hold}",
                *([f"bgp neighbor {ROUTER_LINK6} remote-as {ROUTER_AS} hold-time "
                   f"{self.hold}"] if self.ipv6 else [])]


def host_prefix(vip: str) -> str:
    """VIP/32 or VIP/128, inside the lab's ranges (IPv6: 2001:db8::/32 only)."""
    addr = parse_ip(vip)
    if is_v6(addr):
        if addr >> 96 != parse_ip("2001:db8::") >> 96:
            raise LabError(f"address {vip} is outside 2001:db8::/32")
    else:
        require_allowed(vip)
    return f"{format_ip(addr)}/{family_of(addr).width}"
