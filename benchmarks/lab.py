"""The benchmark lab: the test lab of ``localdirector.lab`` with nginx on the reals and a
client fleet spread over many source addresses, both families.

Built by composition over :class:`localdirector.lab.Lab` (its public methods only): the
lab's own Python HTTP servers are too slow to be the thing a load balancer is measured
against, so they are stopped and each real runs Debian's nginx on port 80 instead.

Why the fleet uses one uid per source address: ``wrk`` cannot bind a source address, yet
short-connection load from one address cycles its ephemeral ports within seconds, and
then the reals' TIME_WAIT sockets, not the director, decide the result. A policy-routing
rule per uid (``ip rule uidrange U-U lookup T``) whose table routes with ``src ADDR``
gives every client process its own address at the cost of one rule lookup per connect,
with no conntrack or NAT in the client namespace that would load the shared CPUs.

Both families (issue 26): the lab is dual-stack (every IPv4 address has its IPv6 twin in
2001:db8::/32, docs/design.rst "Lab"), and each uid's table routes the IPv6 VIP with the
process's IPv6 twin as ``src`` beside the IPv4 route, so one client process measures
either family from its own address. A :class:`Plan` is one family's addresses: what a
contender targets, translates to and configures.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from localdirector.lab import Lab, LabError
from localdirector.lab.addresses import check_tokens
from localdirector.lab.cluster import Cluster
from localdirector.model.addr import IPV4, IPV6, Family, bracketed, parse_ip

VIP = "192.0.2.10"
VIP_PORT = 80
REALS = ("203.0.113.11", "203.0.113.12", "203.0.113.13")
REAL_NET = "203.0.113.0/24"
VIP_NET = "192.0.2.0/24"
GATEWAY = "198.51.100.1"   # the director's address on the client link
# The IPv6 twins (localdirector/lab/addresses.py writes 203.0.113.11 as 2001:db8:1::11).
VIP6 = "2001:db8::10"
REALS6 = ("2001:db8:1::11", "2001:db8:1::12", "2001:db8:1::13")
REAL_NET6 = "2001:db8:1::/64"
VIP_NET6 = "2001:db8::/64"
GATEWAY6 = "2001:db8:c::1"
SMALL_PATH = "/small"
LARGE_PATH = "/large"
SMALL_BYTES = 128
LARGE_BYTES = 32 * 1024 * 1024
# The lab insists on at least one server port; its Python servers run there only until
# nginx takes over port 80.
_PLACEHOLDER_PORT = 8080
_UID_BASE = 64000          # client process i runs as uid _UID_BASE + i
_TABLE_BASE = 100          # ... and routes by table _TABLE_BASE + i
_READY_DEADLINE = 10.0

_NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
user root;
pid {work}/nginx-{tag}.pid;
worker_rlimit_nofile 65536;
events {{ worker_connections 16384; multi_accept on; }}
http {{
    access_log off;
    error_log {work}/nginx-{tag}.log warn;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    client_body_temp_path {work}/nginx-{tag}-body;
    server {{
        listen {real}:{port} backlog=8192;
        listen [::]:{port} backlog=8192;{vip_listen}
        root {docroot};
        location / {{ }}
    }}
}}
"""

# sysctls per role: deep accept queues everywhere a listener sits, and the full port
# range for every side that opens connections (clients; HAProxy toward the reals).
_SYSCTLS = {
    "client": ["net.ipv4.ip_local_port_range=1024 65535"],
    "director": ["net.ipv4.ip_local_port_range=1024 65535", "net.core.somaxconn=8192",
                 "net.ipv4.tcp_max_syn_backlog=8192"],
    "real": ["net.core.somaxconn=8192", "net.ipv4.tcp_max_syn_backlog=8192"],
}


@dataclass(frozen=True)
class Plan:
    """One family's addresses in the bench lab: the VIP the clients target, the reals
    behind it, the networks the clients route through the director, and the words
    iptables and nft use for the family."""

    family: Family
    vip: str
    reals: tuple[str, ...]
    vip_net: str
    real_net: str
    gateway: str

    @property
    def name(self) -> str:
        return self.family.name

    @property
    def host(self) -> str:
        """The VIP as one host's prefix: 192.0.2.10/32, 2001:db8::10/128."""
        return f"{self.vip}/{self.family.width}"

    @property
    def nft(self) -> str:
        return "ip" if self.family is IPV4 else "ip6"

    @property
    def iptables(self) -> str:
        return "iptables" if self.family is IPV4 else "ip6tables"


PLAN4 = Plan(IPV4, VIP, REALS, VIP_NET, REAL_NET, GATEWAY)
PLAN6 = Plan(IPV6, VIP6, REALS6, VIP_NET6, REAL_NET6, GATEWAY6)
PLANS = {plan.name: plan for plan in (PLAN4, PLAN6)}


def netloc(host: str, port: int = VIP_PORT) -> str:
    """``HOST:PORT``, an IPv6 host in brackets (URLs, HAProxy and server ids write it so)."""
    return f"{bracketed(parse_ip(host))}:{port}"


def url(host: str, path: str, port: int = VIP_PORT) -> str:
    return f"http://{netloc(host, port)}{path}"


class BenchLab:
    """Client fleet, director and three nginx reals; a context manager like :class:`Lab`.
    `directors` > 0: the scale-out lab instead (localdirector.lab.cluster: a router with
    BIRD, that many directors), whose reals hold the VIP on their loopback and serve it
    too, for dispatched forwarding."""

    def __init__(self, sources: int = 24, large_bytes: int = LARGE_BYTES,
                 reals: Sequence[str] = REALS, directors: int = 0,
                 dns: bool = False) -> None:
        per_subnet = max(1, -(-sources // 3))
        # dns: the lab's dnsmasq on every real, for the udp workload (benchmarks/udp.py).
        kind = {"reals": reals, "ports": (_PLACEHOLDER_PORT,),
                "clients_per_subnet": per_subnet}
        self.lab: Lab = (Cluster(directors, prefix="ldc", **kind) if directors
                         else Lab(prefix="ldb", dns=dns, **kind))
        self.reals = self.lab.reals
        self.sources = self.lab.all_client_addresses[:sources]
        if len(self.sources) < sources:
            raise LabError(f"the lab has only {len(self.sources)} client addresses")
        # Client process i's IPv6 address: the twin of its IPv4 one (the scale-out lab
        # has none: its router and directors speak IPv4 only).
        self.sources6: tuple[str, ...] = ()
        self.large_bytes = large_bytes
        self.work: Path | None = None
        self._nginx: dict[str, subprocess.Popen[bytes]] = {}
        self._direct_routes = False

    # ----------------------------------------------------------------- lifecycle
    def __enter__(self) -> BenchLab:
        self.build()
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    @property
    def client_ns(self) -> str:
        return self.lab.client_ns

    @property
    def director_ns(self) -> str:
        return self.lab.director_ns

    def build(self) -> BenchLab:
        try:
            self.lab.build()
            for real in self.reals:
                self.lab.stop_server(real, _PLACEHOLDER_PORT)
            self.work = Path(tempfile.mkdtemp(prefix=f"{self.lab.name}-bench-"))
            # Client processes run as unprivileged uids and must read their wrk script.
            self.work.chmod(0o755)
            self._tune()
            if self.lab.v6:
                self.sources6 = self.lab.all_client_addresses6[:len(self.sources)]
            self._route_sources()
            if isinstance(self.lab, Cluster):
                self._hold_vip()
            self._start_nginx()
        except BaseException:
            self.destroy()
            raise
        return self

    def destroy(self) -> None:
        """Everything goes with the namespaces; only our work directory is left to us."""
        self._nginx.clear()
        self.lab.destroy()
        if self.work is not None:
            shutil.rmtree(self.work, ignore_errors=True)
            self.work = None

    def _tune(self) -> None:
        directors = getattr(self.lab, "director_nss", [self.director_ns])
        roles = {self.client_ns: "client", **{ns: "director" for ns in directors},
                 **{ns: "real" for ns in self.lab.real_ns.values()}}
        for ns, role in roles.items():
            self.run(ns, ["sysctl", "-q", "-w", *_SYSCTLS[role]])

    @property
    def plans(self) -> list[Plan]:
        """The families this lab carries: IPv4, and IPv6 where the lab has it."""
        return [PLAN4, PLAN6] if self.sources6 else [PLAN4]

    def sources_of(self, plan: Plan) -> tuple[str, ...]:
        return self.sources6 if plan.family is IPV6 else self.sources

    def _route_sources(self) -> None:
        """One rule and one table per client process and family: see the module
        docstring. (`ip rule` takes the family from the command line, not the line.)"""
        for plan in self.plans:
            lines = []
            for index, source in enumerate(self.sources_of(plan)):
                table = _TABLE_BASE + index
                lines.append(f"route add {plan.vip_net} via {plan.gateway} dev eth0 "
                             f"src {source} table {table}")
                uid = _UID_BASE + index
                lines.append(f"rule add uidrange {uid}-{uid} lookup {table} pref {table}")
            self.ip_batch(self.client_ns, lines, plan)

    def _hold_vip(self) -> None:
        """Dispatched forwarding's reals: the VIP on the loopback, no ARP for it."""
        for ns in self.lab.real_ns.values():
            self.ip_batch(ns, [f"addr add {VIP}/32 dev lo"])
            self.run(ns, ["sysctl", "-q", "-w", "net.ipv4.conf.all.arp_ignore=1",
                          "net.ipv4.conf.all.arp_announce=2"])

    # --------------------------------------------------------------------- nginx
    def _start_nginx(self) -> None:
        assert self.work is not None
        docroot = self.work / "www"
        docroot.mkdir()
        (docroot / SMALL_PATH.lstrip("/")).write_bytes(b"x" * (SMALL_BYTES - 1) + b"\n")
        with open(docroot / LARGE_PATH.lstrip("/"), "wb") as large:
            chunk = os.urandom(1 << 20)
            for _ in range(self.large_bytes >> 20):
                large.write(chunk)
            large.write(chunk[: self.large_bytes & ((1 << 20) - 1)])
        for real, ns in self.lab.real_ns.items():
            tag = ns.rsplit("-", 1)[1]
            conf = self.work / f"nginx-{tag}.conf"
            vip_listen = (f"\n        listen {VIP}:{VIP_PORT} backlog=8192;"
                          if isinstance(self.lab, Cluster) else "")
            conf.write_text(_NGINX_CONF.format(work=self.work, tag=tag, real=real,
                                               port=VIP_PORT, docroot=docroot,
                                               vip_listen=vip_listen))
            log = open(self.work / f"nginx-{tag}.stderr", "wb")
            with log:
                self._nginx[real] = self.lab.popen_in(
                    ns, ["nginx", "-p", str(self.work), "-c", str(conf)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        for plan in self.plans:
            for real in plan.reals:
                self.wait_http(url(real, SMALL_PATH), ns=self.director_ns,
                               what=f"nginx on {real}")

    def wait_http(self, url: str, ns: str | None = None, what: str = "",
                  deadline: float = _READY_DEADLINE) -> None:
        """Poll with curl until ``url`` answers 200, or raise LabError saying why not."""
        ns = ns or self.client_ns
        until = time.monotonic() + deadline
        error = ""
        while time.monotonic() < until:
            try:
                self.lab.client_get(url, ns=ns, timeout=2.0)
                return
            except LabError as exc:
                error = str(exc)
                time.sleep(0.1)
        raise LabError(f"{what or url} not ready after {deadline:.0f} s: {error}; "
                       f"{self.nginx_problems()}")

    def nginx_problems(self) -> str:
        dead = [f"nginx on {real} exited rc={proc.returncode}"
                for real, proc in self._nginx.items() if proc.poll() is not None]
        return "; ".join(dead) or "nginx running on every real"

    # ------------------------------------------------------------------ clients
    def client_argv(self, index: int, argv: Sequence[str]) -> list[str]:
        """``argv`` as client process ``index``, i.e. from source ``sources[index]``
        (round the sources again when there are more processes than addresses)."""
        uid = str(_UID_BASE + index % len(self.sources))
        return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv]

    def set_direct_routes(self, on: bool) -> None:
        """Direct routing needs clients to reach the reals' subnet through the director;
        only that contender gets the routes, so no other can bypass the VIP."""
        if on == self._direct_routes:
            return
        verb = "add" if on else "del"
        for plan in self.plans:
            head = f"route {verb} {plan.real_net} via {plan.gateway} dev eth0"
            lines = [head, *(f"{head} src {source} table {_TABLE_BASE + index}"
                             for index, source in enumerate(self.sources_of(plan)))]
            self.ip_batch(self.client_ns, lines, plan)
        self._direct_routes = on

    # ---------------------------------------------------------------- plumbing
    def ip_batch(self, ns: str, lines: list[str], plan: Plan = PLAN4) -> None:
        """``ip -batch`` inside ``ns`` (of `plan`'s family: what a line with no address,
        such as a rule's, is about) after checking every address against the lab's
        documentation ranges."""
        for line in lines:
            check_tokens(line)
        self.run(ns, ["ip", f"-{plan.family.version}", "-batch", "-"],
                 input="\n".join(lines) + "\n")

    def run(self, ns: str, argv: Sequence[str], input: str | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = self.lab.run_in(ns, argv, input=input)
        if check and proc.returncode != 0:
            raise LabError(f"{' '.join(argv)} in {ns} failed (rc={proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()}")
        return proc

    def popen(self, ns: str, argv: Sequence[str], **kw: object) -> subprocess.Popen[bytes]:
        return self.lab.popen_in(ns, argv, **kw)

    def director_pids(self) -> list[int]:
        """Processes still running in the director namespace (should be none between
        contenders)."""
        out = subprocess.run(["ip", "netns", "pids", self.director_ns], capture_output=True,
                             text=True, check=False).stdout
        return [int(pid) for pid in out.split()]
