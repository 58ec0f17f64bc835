"""The lab as tests drive it: its servers, commands run in its namespaces, requests.

:class:`Lab` is a :class:`~localdirector.lab.topology.Topology` whose reals run the HTTP
servers of :mod:`localdirector.lab.servers` (and, asked for, the DNS and syslog servers of
:mod:`localdirector.lab.udpservers`); it checks connectivity before a caller may send
traffic, and sends HTTP only from the lab's own addresses to addresses in range.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from localdirector.lab.client import Fetch, netloc

from .addresses import CLIENT_SUBNETS6, prefixlen
from .udpservers import DNS_PORT, SYSLOG_PORT, dnsmasq_argv, rsyslog_argv
from .topology import (BUILD_DEADLINE, CLIENT_SUBNETS, DEFAULT_CLIENTS_PER_SUBNET,
                       DEFAULT_REALS, VIP_NET, Job, LabError, Topology, _ip_batch_job,
                       client_neighbours, finish, require_allowed, start_job)

DEFAULT_PORTS = (80, 8001)
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
# A port nothing listens on in the director: a RST from it proves the round trip.
UNUSED_PORT = 9


class ClientError(LabError):
    """An HTTP client run inside a namespace failed (curl exit code in ``returncode``)."""

    def __init__(self, message: str, returncode: int, stderr: str) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr


def python_module(name: str, *args: str) -> list[str]:
    """argv running ``localdirector.lab.<name>``, meant to follow ``ip netns exec NS``.

    The real interpreter path skips version-manager shims and ``-S`` skips site-packages
    (the lab modules need only the stdlib): together they cut start-up to a few
    milliseconds, which matters when a build starts a dozen of these.
    """
    return [sys.executable, "-S", "-m", f"localdirector.lab.{name}", *args]


def lab_env() -> dict[str, str]:
    """Environment for commands in the lab: our package importable, no proxies."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    paths = [str(PACKAGE_ROOT), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    return env


class Lab(Topology):
    """A disposable client/director/reals lab with an HTTP server per real and port.

    Use as a context manager, or call :meth:`build` and then :meth:`destroy` (idempotent,
    also after a half-finished build). A failed build cleans up after itself and raises
    :class:`LabError`, so a caller never sends traffic into a half-built lab.
    """

    def __init__(
        self,
        reals: Sequence[str] = DEFAULT_REALS,
        ports: Sequence[int] = DEFAULT_PORTS,
        clients_per_subnet: int = DEFAULT_CLIENTS_PER_SUBNET,
        prefix: str = "ld",
        dns: bool = False,
    ) -> None:
        super().__init__(reals, clients_per_subnet, prefix)
        self.ports = tuple(ports)
        # dnsmasq on every real's port 53 (udpservers.py): `localdirector lab` and the
        # UDP tests ask for it; other labs leave port 53 to tests that run their own.
        self.dns = dns
        if not self.ports or len(set(self.ports)) != len(self.ports):
            raise LabError(f"ports must be a non-empty list without duplicates: {self.ports}")
        if not all(isinstance(p, int) and 0 < p < 65536 for p in self.ports):
            raise LabError(f"ports must be TCP port numbers: {self.ports}")
        self.build_seconds = 0.0
        self._servers: dict[tuple[str, int], subprocess.Popen[bytes]] = {}
        self._dns: dict[str, subprocess.Popen[bytes]] = {}
        self._procs: list[subprocess.Popen[Any]] = []
        self._logdir: Path | None = None

    # ----------------------------------------------------------------- lifecycle

    def __enter__(self) -> Lab:
        self.build()
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def build(self) -> Lab:
        """Create the topology, start the servers; verify connectivity."""
        started = time.monotonic()
        super().build()
        try:
            self._logdir = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
            for real in self.reals:
                for port in self.ports:
                    self._spawn_server(real, port)
                if self.dns:
                    self._dns[real] = self._spawn(real, f"{real}_dns", dnsmasq_argv(
                        real, self._logdir / f"{real}_dnsmasq.log"))
            self._verify()
        except BaseException:
            self.destroy()
            raise
        self.build_seconds = time.monotonic() - started
        return self

    def destroy(self) -> None:
        """Kill every process and delete every namespace of this lab; safe to repeat.

        Afterwards the object is back in its unbuilt state and may be built again.
        """
        for proc in [*self._servers.values(), *self._dns.values(), *self._procs]:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        self._servers.clear()
        self._dns.clear()
        self._procs.clear()
        super().destroy()
        if self._logdir is not None:
            shutil.rmtree(self._logdir, ignore_errors=True)
            self._logdir = None

    def _verify(self) -> None:
        """Clients reach the director from every subnet; the director reaches every server;
        each over both families where the lab has IPv6.

        Both probes run inside the lab (client and director namespaces), in parallel.
        """
        sources = [addrs[0] for addrs in self.client_addresses.values()]
        sides = list(self.director_client_side.values())
        if self.v6:
            sources += [addrs[0] for addrs in self.client_addresses6.values()]
            sides += self.director_client_side6.values()
        targets = [netloc(addr, UNUSED_PORT) for addr in sides]
        to_director = self._client_module_job(self.client_ns, "client->director", [
            "probe", "--refused-ok", "--deadline", str(BUILD_DEADLINE),
            *(arg for src in sources for arg in ("--source", src)),
            *(arg for target in targets for arg in ("--target", target)),
        ])
        try:
            # dnsmasq serves tcp 53 as well: a connect proves it is up.
            finish([to_director, self._servers_probe_job(
                [*self._servers], [netloc(real, DNS_PORT) for real in self._dns])])
        except LabError as exc:
            raise LabError(f"{exc}; {self._server_logs()}") from exc

    # ------------------------------------------------------------------ servers

    def hold_vip(self, vip: str, port: int = 80) -> None:
        """Dispatched forwarding's reals (docs/design.rst, "Scale-out"): every real
        holds `vip` on its loopback, answers no ARP for it (arp_ignore=1, arp_announce=2)
        and serves it on `port` under its own name, so a body still tells which real
        answered. The servers go with the lab."""
        require_allowed(vip, [VIP_NET])
        jobs = []
        for real, ns in self.real_ns.items():
            jobs.append(_ip_batch_job(ns, [f"addr add {vip}/32 dev lo"]))
            jobs.append(start_job(f"sysctl in {ns}", [
                "ip", "netns", "exec", ns, "sysctl", "-q", "-w",
                "net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2"]))
        finish(jobs)
        assert self._logdir is not None
        for real, ns in self.real_ns.items():
            argv = python_module("servers", "--bind", vip, "--port", str(port),
                                 "--name", f"real-{real}:{port}")
            with open(self._logdir / f"{real}_{vip}_{port}.log", "wb") as log:
                self._procs.append(subprocess.Popen(
                    ["ip", "netns", "exec", ns, *argv], stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, stderr=log, env=lab_env()))
        time.sleep(0.5)   # python start-up; the tests poll their first request anyway

    def listens_on(self, real: str) -> list[str]:
        """The addresses a real's HTTP servers listen on: its own, and its IPv6 twin
        where the lab has IPv6."""
        return [real, self.reals6[real]] if self.v6 else [real]

    def _spawn_server(self, real: str, port: int) -> None:
        binds = [a for addr in self.listens_on(real) for a in ("--bind", addr)]
        self._servers[(real, port)] = self._spawn(
            real, f"{real}_{port}", python_module("servers", *binds, "--port", str(port)))

    def _spawn(self, real: str, log_name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        """A server in `real`'s namespace, its stderr to the lab's log `log_name`."""
        assert self._logdir is not None
        with open(self._logdir / f"{log_name}.log", "wb") as log:
            return subprocess.Popen(["ip", "netns", "exec", self.real_ns[real], *argv],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=log, env=lab_env())

    def start_syslog(self) -> dict[str, Path]:
        """rsyslogd on every real's udp 514 (udpservers.py), each in a directory of its
        own; returns each real's messages file once every server listens. The servers go
        with the lab."""
        assert self._logdir is not None
        files = {}
        for real in self.reals:
            workdir = self._logdir / f"{real}_syslog"
            workdir.mkdir()
            self._procs.append(self._spawn(real, f"{real}_rsyslogd",
                                           rsyslog_argv(real, workdir)))
            files[real] = workdir / "messages"
        for real, ns in self.real_ns.items():
            self.wait_udp(ns, real, SYSLOG_PORT)
        return files

    def wait_udp(self, ns: str, addr: str, port: int) -> None:
        """Until a socket in `ns` is bound to `addr`:`port` over UDP (no probe packet
        needed, which a syslog server could not answer anyway)."""
        deadline = time.monotonic() + BUILD_DEADLINE
        while f"{addr}:{port} " not in self.run_in(ns, ["ss", "-Hnlu"]).stdout:
            if time.monotonic() > deadline:
                raise LabError(f"nothing listens on udp {addr}:{port} in {ns} after "
                               f"{BUILD_DEADLINE:g} s; {self._server_logs()}")
            time.sleep(0.05)

    def _servers_probe_job(self, keys: list[tuple[str, int]], more: Sequence[str] = ()) -> Job:
        """Probe each (real, port)'s HTTP server on every address it listens on, and the
        `more` targets (``ADDR:PORT``)."""
        targets = [*(netloc(addr, port) for real, port in keys
                     for addr in self.listens_on(real)), *more]
        return self._client_module_job(self.director_ns, "director->reals", [
            "probe", "--deadline", str(BUILD_DEADLINE),
            *(a for target in targets for a in ("--target", target)),
        ])

    def _client_module_job(self, ns: str, what: str, args: list[str]) -> Job:
        return start_job(what, ["ip", "netns", "exec", ns, *python_module("client", *args)],
                         env=lab_env())

    def _server_logs(self) -> str:
        dead = []
        servers = [(f"{real}:{port}", f"{real}_{port}", proc)
                   for (real, port), proc in self._servers.items()]
        servers += [(f"dnsmasq on {real}", f"{real}_dns", proc)
                    for real, proc in self._dns.items()]
        for what, log_name, proc in servers:
            if proc.poll() is not None and self._logdir is not None:
                tail = (self._logdir / f"{log_name}.log").read_text(errors="replace")[-500:]
                dead.append(f"server {what} exited rc={proc.returncode}: {tail.strip()}")
        return "; ".join(dead)

    def stop_server(self, real: str, port: int) -> None:
        """Kill one real's listener so new SYNs to it get a RST from the real's kernel."""
        proc = self._servers.pop((real, port), None)
        if proc is None:
            raise LabError(f"no server running on {real}:{port}")
        proc.kill()
        proc.wait()

    def start_server(self, real: str, port: int) -> None:
        """(Re)start one real's listener and return once the director reaches it."""
        if real not in self.real_ns:
            raise LabError(f"{real} is not a real of this lab")
        if (real, port) in self._servers:
            raise LabError(f"server on {real}:{port} is already running")
        self._spawn_server(real, port)
        try:
            finish([self._servers_probe_job([(real, port)])])
        except LabError as exc:
            raise LabError(f"{exc}; {self._server_logs()}") from exc

    # -------------------------------------------------------------- execution

    def _check_ns(self, ns: str) -> None:
        if ns not in self.namespaces:
            raise LabError(f"{ns!r} is not a namespace of this lab (never run in the host)")

    def run_in(self, ns: str, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` inside ``ns``; output captured as text unless overridden."""
        self._check_ns(ns)
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("env", lab_env())
        return subprocess.run(["ip", "netns", "exec", ns, *argv], check=False, **kw)

    def popen_in(self, ns: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside ``ns``; :meth:`destroy` kills it if still running."""
        self._check_ns(ns)
        kw.setdefault("env", lab_env())
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kw)
        self._procs.append(proc)
        return proc

    def real_iptables(self, real: str, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        """Run ``iptables -w ARGS`` inside a real's namespace (e.g. to DROP its packets)."""
        if real not in self.real_ns:
            raise LabError(f"{real} is not a real of this lab")
        proc = self.run_in(self.real_ns[real], ["iptables", "-w", *args])
        if proc.returncode != 0:
            raise LabError(f"iptables {' '.join(args)} in {real} failed: {proc.stderr.strip()}")
        return proc

    @contextmanager
    def more_clients(self, addrs: Sequence[str]) -> Iterator[None]:
        """More client addresses (of the lab's client subnets, none of its own) while the
        block runs: a test that needs more distinct clients than the lab was built with."""
        taken = self._addresses[self.client_ns] | set(self.director_client_side.values()) \
            | set(self.director_client_side6.values())
        for addr in addrs:
            require_allowed(addr, [*CLIENT_SUBNETS.values(), *CLIENT_SUBNETS6.values()])
            if addr in taken:
                raise LabError(f"{addr} is already an address of the lab")
        batch = "".join(f"addr add {addr}/{prefixlen(addr)} dev eth0\n" for addr in addrs)
        six = [addr for addr in addrs if prefixlen(addr) == 64]
        done = self.run_in(self.client_ns, ["ip", "-batch", "-"], input=batch)
        if done.returncode == 0 and six:
            done = self.run_in(self.director_ns, ["ip", "-batch", "-"],
                               input="\n".join(client_neighbours(six)) + "\n")
        if done.returncode != 0:
            raise LabError(f"adding client addresses failed: {done.stderr.strip()}")
        self._addresses[self.client_ns].update(addrs)
        try:
            yield
        finally:
            self._addresses[self.client_ns].difference_update(addrs)
            self.run_in(self.client_ns, ["ip", "-batch", "-"],
                        input=batch.replace("addr add", "addr del"))
            if six:
                self.run_in(self.director_ns, ["ip", "-force", "-batch", "-"],
                            input="\n".join(client_neighbours(six, "del")) + "\n")

    # ------------------------------------------------------------ HTTP clients

    def _http_target(self, url: str, ns: str | None, sources: Sequence[str]) -> str:
        """Check the URL's host and the source addresses; return the namespace to use."""
        ns = ns or self.client_ns
        self._check_ns(ns)
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise LabError(f"only http://ADDR[:PORT]/... URLs are supported: {url!r}")
        require_allowed(parts.hostname)
        for source in sources:
            if source not in self._addresses[ns]:
                raise LabError(f"source {source} is not an address of {ns}")
        return ns

    def _curl(self, url: str, ns: str | None, source: str | None, timeout: float,
              data: bytes | None) -> str:
        ns = self._http_target(url, ns, [source] if source else [])
        argv = ["curl", "-q", "-sS", "--noproxy", "*", "--fail-with-body",
                "--max-time", str(timeout)]
        if source:
            argv += ["--interface", source]
        if data is not None:
            argv += ["-H", "Expect:", "-H", "Content-Type: application/octet-stream",
                     "--data-binary", "@-"]
        argv.append(url)
        proc = self.run_in(ns, argv, input=data, text=False, timeout=timeout + 10)
        body = proc.stdout.decode("utf-8", "replace")
        if proc.returncode != 0:
            stderr = proc.stderr.decode("utf-8", "replace").strip()
            raise ClientError(f"curl {url} from {source or ns} failed (rc={proc.returncode}): "
                              f"{stderr}", proc.returncode, stderr)
        return body

    def client_get(self, url: str, source: str | None = None, timeout: float = 5.0,
                   ns: str | None = None) -> str:
        """GET ``url`` with curl bound to ``source``, inside ``ns`` (default: the client
        namespace); returns the body, raises :class:`ClientError` on any failure."""
        return self._curl(url, ns, source, timeout, None)

    def client_post(self, url: str, data: bytes, source: str | None = None,
                    timeout: float = 5.0, ns: str | None = None) -> str:
        """POST ``data`` to ``url`` like :meth:`client_get` (e.g. to ``/sha256``)."""
        return self._curl(url, ns, source, timeout, data)

    def get_many(self, url: str, sources: Sequence[str] = (), count: int | None = None,
                 concurrency: int = 1, timeout: float = 5.0, digest: bool = False,
                 ns: str | None = None) -> list[Fetch]:
        """Run ``count`` GETs (default one per source) from one process inside ``ns``
        (default: the client namespace); request i binds to ``sources[i % len]``, and
        without sources the kernel picks the source address.

        With ``digest`` each result carries sha256+length instead of the body, so
        multi-megabyte downloads do not travel through JSON.
        """
        ns = self._http_target(url, ns, sources)
        count = (len(sources) or 1) if count is None else count
        if count < 1:
            raise LabError("get_many needs at least one request")
        args = ["get", "--url", url, "--count", str(count), "--concurrency", str(concurrency),
                "--timeout", str(timeout), *(a for s in sources for a in ("--source", s))]
        if digest:
            args.append("--digest")
        rounds = math.ceil(count / max(1, concurrency))
        proc = self.run_in(ns, python_module("client", *args), timeout=rounds * (timeout + 1) + 30)
        if proc.returncode != 0:
            raise LabError(f"lab client failed in {ns}: {proc.stderr.strip()}")
        return [Fetch(**record) for record in json.loads(proc.stdout)["results"]]
