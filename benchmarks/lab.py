"""The benchmark lab: the test lab of ``localdirector.lab`` with nginx on the reals and a
client fleet spread over many source addresses.

Built by composition over :class:`localdirector.lab.Lab` (its public methods only): the
lab's own Python HTTP servers are too slow to be the thing a load balancer is measured
against, so they are stopped and each real runs Debian's nginx on port 80 instead.

Why the fleet uses one uid per source address: ``wrk`` cannot bind a source address, yet
short-connection load from one address cycles its ephemeral ports within seconds, and
then the reals' TIME_WAIT sockets, not the director, decide the result. A policy-routing
rule per uid (``ip rule uidrange U-U lookup T``) whose table routes with ``src ADDR``
gives every client process its own address at the cost of one rule lookup per connect,
with no conntrack or NAT in the client namespace that would load the shared CPUs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from localdirector.lab import Lab, LabError, require_allowed
from localdirector.lab.cluster import Cluster

VIP = "192.0.2.10"
VIP_PORT = 80
REALS = ("203.0.113.11", "203.0.113.12", "203.0.113.13")
REAL_NET = "203.0.113.0/24"
VIP_NET = "192.0.2.0/24"
GATEWAY = "198.51.100.1"   # the director's address on the client link
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
        listen {real}:{port} backlog=8192;{vip_listen}
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

    def _route_sources(self) -> None:
        """One rule and one table per client process: see the module docstring."""
        lines = []
        for index, source in enumerate(self.sources):
            table = _TABLE_BASE + index
            lines.append(f"route add {VIP_NET} via {GATEWAY} dev eth0 src {source} "
                         f"table {table}")
            uid = _UID_BASE + index
            lines.append(f"rule add uidrange {uid}-{uid} lookup {table} pref {table}")
        self.ip_batch(self.client_ns, lines)

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
        for real in self.reals:
            self.wait_http(f"http://{real}:{VIP_PORT}{SMALL_PATH}", ns=self.director_ns,
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
        lines = [f"route {verb} {REAL_NET} via {GATEWAY} dev eth0"]
        lines += [f"route {verb} {REAL_NET} via {GATEWAY} dev eth0 src {source} "
                  f"table {_TABLE_BASE + index}" for index, source in enumerate(self.sources)]
        self.ip_batch(self.client_ns, lines)
        self._direct_routes = on

    # ---------------------------------------------------------------- plumbing
    def ip_batch(self, ns: str, lines: list[str]) -> None:
        """``ip -batch`` inside ``ns`` after checking every address against the lab's
        documentation ranges."""
        for line in lines:
            for token in line.split():
                if token[0].isdigit() and "." in token:
                    require_allowed(token)
        self.run(ns, ["ip", "-batch", "-"], input="\n".join(lines) + "\n")

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
