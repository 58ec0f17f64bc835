"""Network-namespace lab: one client namespace, one director, one namespace per real.

Integration tests need real TCP stacks on both sides of the director without touching the
host's network, so everything here lives in namespaces named ``<prefix><4 hex>-<role>``
(``ld3f9a-cli``, ``ld3f9a-dir``, ``ld3f9a-r11``). Interfaces are created directly inside
their namespaces (never in the host namespace), so their short names cannot collide
with the host's or with another lab's.

Topology (documentation addresses only, checked before anything is configured)::

    client ns  eth0: 198.51.100.2.. /24, 198.18.0.2.. /24, 198.19.0.2.. /24
                     route 192.0.2.0/24 via 198.51.100.1
        |  veth
    director ns cli0: 198.51.100.1/24, 198.18.0.1/24, 198.19.0.1/24
                br0: 203.0.113.1/24 (bridge of r11, r12, ... veths)
                ip_forward=1, rp_filter=0
        |  veth per real
    real ns    eth0: 203.0.113.N/24, default via 203.0.113.1, HTTP servers on PORTS

Nothing owns 192.0.2.0/24: the appliance in the director namespace translates it.

Ownership: a lab claims its id with an exclusive file ``/run/localdirector-lab/<prefix><id>``
holding the owner's pid and start time, so :func:`clean_stale` removes only namespaces
whose owner is gone and never a lab that another test run is using right now.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from localdirector.lab.client import Fetch

VIP_NET = ipaddress.IPv4Network("192.0.2.0/24")
REAL_NET = ipaddress.IPv4Network("203.0.113.0/24")
CLIENT_SUBNETS = {
    "preferred": ipaddress.IPv4Network("198.51.100.0/24"),
    "unwelcome": ipaddress.IPv4Network("198.18.0.0/24"),
    "general": ipaddress.IPv4Network("198.19.0.0/24"),
}
# Every address the lab configures or sends to must fall in one of these (DESIGN.md §6).
ALLOWED_NETS = (
    VIP_NET,
    ipaddress.IPv4Network("198.51.100.0/24"),
    ipaddress.IPv4Network("198.18.0.0/15"),
    REAL_NET,
)
DIRECTOR_REAL_SIDE = "203.0.113.1"
DEFAULT_REALS = tuple(f"203.0.113.{n}" for n in range(11, 16))
DEFAULT_PORTS = (80, 8001)
OWNER_DIR = Path("/run/localdirector-lab")
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
# A port nothing listens on in the director: a RST from it proves the round trip.
UNUSED_PORT = 9
BUILD_DEADLINE = 5.0

_IPV4_TOKEN = re.compile(r"^\d+\.\d+\.\d+\.\d+(?:/\d+)?$")


class _Job(NamedTuple):
    """A helper process started in parallel with others; ``stdin`` is fed on finish."""

    what: str
    proc: subprocess.Popen[str]
    stdin: str | None = None


class LabError(RuntimeError):
    """The lab could not be built, checked or driven; the message says which step."""


class ClientError(LabError):
    """An HTTP client run inside a namespace failed (curl exit code in ``returncode``)."""

    def __init__(self, message: str, returncode: int, stderr: str) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr


def require_allowed(address: str, nets: Iterable[ipaddress.IPv4Network] = ALLOWED_NETS) -> None:
    """Raise unless ``address`` (or network) lies inside one of ``nets``.

    The lab's one hard safety rule: no other address may ever be configured or targeted.
    """
    try:
        net = ipaddress.IPv4Network(address, strict=False)
    except ValueError as exc:
        raise LabError(f"not an IPv4 address: {address!r}") from exc
    if not any(net.subnet_of(allowed) for allowed in nets):
        raise LabError(f"address {address} is outside the lab's documentation ranges")


def _real_address(text: str) -> str:
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


def python_module(name: str, *args: str) -> list[str]:
    """argv running ``localdirector.lab.<name>``, meant to follow ``ip netns exec NS``.

    The real interpreter path skips version-manager shims and ``-S`` skips site-packages
    (the lab modules need only the stdlib): together they cut start-up to a few
    milliseconds, which matters when a build starts a dozen of these.
    """
    return [sys.executable, "-S", "-m", f"localdirector.lab.{name}", *args]


def _tag(real: str) -> str:
    """``r11`` for 203.0.113.11: the real's namespace suffix and its director-side veth."""
    return f"r{real.rsplit('.', 1)[1]}"


def _ns_pattern(prefix: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(prefix)}(?P<id>[0-9a-f]{{4}})-(?:cli|dir|r\d{{1,3}})$")


def _check_prefix(prefix: str) -> None:
    if not re.fullmatch(r"[a-z]{1,6}", prefix):
        raise LabError(f"lab prefix must be 1-6 lowercase letters, not {prefix!r}")


def _run(argv: Sequence[str], stdin: str | None = None, what: str = "") -> str:
    """Run a host-side configuration command (``ip``; never traffic) or raise LabError."""
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()
        raise LabError(f"{what or ' '.join(argv)} failed (rc={proc.returncode}): {detail}")
    return proc.stdout


def list_namespaces() -> list[str]:
    """Names of all named network namespaces on the host."""
    return [line.split()[0] for line in _run(["ip", "netns", "list"]).splitlines() if line.strip()]


def _process_identity(pid: int) -> str:
    """``PID STARTTIME``: the start time tells a recycled pid from the original owner."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return f"{pid} {stat.rsplit(')', 1)[1].split()[19]}"


def _owner_alive(lab_name: str) -> bool:
    try:
        recorded = (OWNER_DIR / lab_name).read_text().strip()
        pid = int(recorded.split()[0])
    except (OSError, ValueError, IndexError):
        return False
    return _process_identity(pid) == recorded


def _claim_lab_name(prefix: str) -> str:
    """Pick an unused ``<prefix><4 hex>`` and claim it with an exclusive owner file."""
    OWNER_DIR.mkdir(parents=True, exist_ok=True)
    existing = list_namespaces()
    for _ in range(64):
        name = f"{prefix}{secrets.token_hex(2)}"
        if any(ns.startswith(f"{name}-") for ns in existing):
            continue
        # Write then hard-link: the claim appears atomically *with* its content, so a
        # concurrent clean_stale never sees an empty (ownerless-looking) file.
        draft = OWNER_DIR / f".{name}.{os.getpid()}"
        draft.write_text(f"{_process_identity(os.getpid())}\n")
        try:
            os.link(draft, OWNER_DIR / name)
        except FileExistsError:
            continue
        finally:
            draft.unlink()
        return name
    raise LabError("could not find a free lab id")


def _remove_namespaces(names: Sequence[str]) -> None:
    """Kill every process inside ``names`` and delete them; missing names are ignored.

    Processes are killed first because a namespace with live processes outlives
    ``ip netns del`` invisibly (and keeps its servers answering).
    """
    if not names:
        return
    pids = subprocess.run(
        ["ip", "-force", "-batch", "-"],
        input="".join(f"netns pids {name}\n" for name in names),
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    killed = []
    for pid in pids:
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                os.kill(int(pid), signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
    # SIGKILL is asynchronous; a dying process still pins its namespace and mounts.
    deadline = time.monotonic() + 2.0
    while killed and time.monotonic() < deadline:
        killed = [pid for pid in killed if os.path.exists(f"/proc/{pid}/ns/net")]
        if killed:
            time.sleep(0.01)
    subprocess.run(
        ["ip", "-force", "-batch", "-"],
        input="".join(f"netns del {name}\n" for name in names),
        capture_output=True,
        text=True,
        check=False,
    )
    left = set(names) & set(list_namespaces())
    if left:
        raise LabError(f"could not delete namespaces: {sorted(left)}")


def clean_stale(prefix: str = "ld") -> list[str]:
    """Remove lab namespaces left by killed runs; return the names removed.

    Only names matching ``<prefix><4 hex>-(cli|dir|rN)`` are considered, and of those only
    the ones whose owning process is gone, so a lab in use by a concurrent run survives.
    """
    _check_prefix(prefix)
    pattern = _ns_pattern(prefix)
    stale = []
    for name in list_namespaces():
        match = pattern.match(name)
        if match and not _owner_alive(f"{prefix}{match['id']}"):
            stale.append(name)
    _remove_namespaces(stale)
    if OWNER_DIR.is_dir():
        owner_pattern = re.compile(rf"^{re.escape(prefix)}[0-9a-f]{{4}}$")
        for owner in OWNER_DIR.iterdir():
            if owner_pattern.match(owner.name) and not _owner_alive(owner.name):
                owner.unlink(missing_ok=True)
    return stale


def unavailable_reason(prefix: str = "ld") -> str | None:
    """Why namespace labs cannot run here, or None when they can.

    Creates and deletes one real namespace, because root alone does not prove it
    (containers may lack CAP_SYS_ADMIN or a writable /run/netns).
    """
    if os.geteuid() != 0:
        return "network-namespace lab needs root"
    missing = [tool for tool in ("ip", "iptables", "curl") if shutil.which(tool) is None]
    if missing:
        return f"missing tools: {', '.join(missing)}"
    try:
        name = _claim_lab_name(prefix)
    except (LabError, OSError) as exc:
        return f"cannot use 'ip netns' or {OWNER_DIR}: {exc}"
    try:
        _run(["ip", "netns", "add", f"{name}-dir"])
        _remove_namespaces([f"{name}-dir"])
    except LabError as exc:
        return f"cannot create network namespaces: {exc}"
    finally:
        (OWNER_DIR / name).unlink(missing_ok=True)
    return None


class Lab:
    """A disposable client/director/reals topology; see the module docstring.

    Use as a context manager, or call :meth:`build` and then :meth:`destroy` (idempotent,
    also after a half-finished build). A failed build cleans up after itself and raises
    :class:`LabError`, so a caller never sends traffic into a half-built lab.
    """

    def __init__(
        self,
        reals: Sequence[str] = DEFAULT_REALS,
        ports: Sequence[int] = DEFAULT_PORTS,
        clients_per_subnet: int = 8,
        prefix: str = "ld",
    ) -> None:
        _check_prefix(prefix)
        self.reals = tuple(_real_address(real) for real in reals)
        self.ports = tuple(ports)
        self.prefix = prefix
        if not self.reals or len(set(self.reals)) != len(self.reals):
            raise LabError(f"reals must be a non-empty list without duplicates: {self.reals}")
        if not self.ports or len(set(self.ports)) != len(self.ports):
            raise LabError(f"ports must be a non-empty list without duplicates: {self.ports}")
        if not all(isinstance(p, int) and 0 < p < 65536 for p in self.ports):
            raise LabError(f"ports must be TCP port numbers: {self.ports}")
        if not 1 <= clients_per_subnet <= 253:
            raise LabError("clients_per_subnet must be between 1 and 253")
        self.client_addresses: dict[str, tuple[str, ...]] = {
            role: tuple(str(net.network_address + i) for i in range(2, 2 + clients_per_subnet))
            for role, net in CLIENT_SUBNETS.items()
        }
        self.director_client_side = {
            role: str(net.network_address + 1) for role, net in CLIENT_SUBNETS.items()
        }
        self.name = ""
        self.client_ns = ""
        self.director_ns = ""
        self.real_ns: dict[str, str] = {}
        self.build_seconds = 0.0
        self._addresses: dict[str, set[str]] = {}
        self._servers: dict[tuple[str, int], subprocess.Popen[bytes]] = {}
        self._procs: list[subprocess.Popen[Any]] = []
        self._logdir: Path | None = None

    # ----------------------------------------------------------------- lifecycle

    @property
    def namespaces(self) -> list[str]:
        """Every namespace this lab owns (empty before :meth:`build`)."""
        if not self.name:
            return []
        return [self.client_ns, self.director_ns, *self.real_ns.values()]

    @property
    def all_client_addresses(self) -> tuple[str, ...]:
        """Client addresses of all three subnets, preferred first."""
        return tuple(a for addrs in self.client_addresses.values() for a in addrs)

    def __enter__(self) -> Lab:
        self.build()
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def build(self) -> Lab:
        """Create namespaces, links, addresses, routes and servers; verify connectivity."""
        if self.name:
            raise LabError(f"lab {self.name} is already built")
        started = time.monotonic()
        try:
            self._claim()
            self._create_topology()
            for real in self.reals:
                for port in self.ports:
                    self._spawn_server(real, port)
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
        for proc in [*self._servers.values(), *self._procs]:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        self._servers.clear()
        self._procs.clear()
        if self.name:
            existing = set(list_namespaces())
            _remove_namespaces([ns for ns in self.namespaces if ns in existing])
            (OWNER_DIR / self.name).unlink(missing_ok=True)
            self.name = self.client_ns = self.director_ns = ""
            self.real_ns = {}
            self._addresses = {}
        if self._logdir is not None:
            shutil.rmtree(self._logdir, ignore_errors=True)
            self._logdir = None

    def _claim(self) -> None:
        self.name = _claim_lab_name(self.prefix)
        self.client_ns = f"{self.name}-cli"
        self.director_ns = f"{self.name}-dir"
        self.real_ns = {real: f"{self.name}-{_tag(real)}" for real in self.reals}
        self._addresses = {
            self.client_ns: set(self.all_client_addresses),
            self.director_ns: {DIRECTOR_REAL_SIDE, *self.director_client_side.values()},
            **{ns: {real} for real, ns in self.real_ns.items()},
        }
        self._logdir = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))

    def _create_topology(self) -> None:
        """Namespaces and their sysctls first, then the director (which creates every veth
        pair with the far end directly inside its namespace), then all other sides in
        parallel.

        IPv6 is off before any interface exists: otherwise every link would get an
        fe80:: address and send solicitations, i.e. use addresses outside the lab ranges.
        """
        self._ip_batch(None, [f"netns add {ns}" for ns in self.namespaces])
        no_ipv6 = ["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"]
        forwarding = ["net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
                      "net.ipv4.conf.default.rp_filter=0"]
        self._finish([
            self._sysctl_job(ns, no_ipv6 + (forwarding if ns == self.director_ns else []))
            for ns in self.namespaces
        ])
        director = [
            "link set lo up",
            "link add br0 type bridge forward_delay 0",
            f"addr add {DIRECTOR_REAL_SIDE}/24 dev br0",
            "link set br0 up",
            f"link add cli0 type veth peer name eth0 netns {self.client_ns}",
            *(f"addr add {addr}/24 dev cli0" for addr in self.director_client_side.values()),
            "link set cli0 up",
        ]
        for real, ns in self.real_ns.items():
            director += [
                f"link add {_tag(real)} type veth peer name eth0 netns {ns}",
                f"link set {_tag(real)} master br0",
                f"link set {_tag(real)} up",
            ]
        self._ip_batch(self.director_ns, director)
        client = ["link set lo up", "link set eth0 up"]
        client += [f"addr add {addr}/24 dev eth0" for addr in self.all_client_addresses]
        client.append(f"route add {VIP_NET} via {self.director_client_side['preferred']}")
        jobs = [self._ip_batch_job(self.client_ns, client)]
        for real, ns in self.real_ns.items():
            jobs.append(self._ip_batch_job(ns, [
                "link set lo up",
                f"addr add {real}/24 dev eth0",
                "link set eth0 up",
                f"route add default via {DIRECTOR_REAL_SIDE}",
            ]))
        interfaces = ["lo", "br0", "cli0", *map(_tag, self.reals)]
        jobs.append(self._sysctl_job(
            self.director_ns, [f"net.ipv4.conf.{iface}.rp_filter=0" for iface in interfaces]
        ))
        self._finish(jobs)

    def _sysctl_job(self, ns: str, settings: list[str]) -> _Job:
        # -e: a kernel without IPv6 has no such keys, which is as good as disabled.
        argv = ["ip", "netns", "exec", ns, "sysctl", "-e", "-q", "-w", *settings]
        return self._job(f"sysctl in {ns}", argv)

    def _verify(self) -> None:
        """Clients reach the director from every subnet; the director reaches every server.

        Both probes run inside the lab (client and director namespaces), in parallel.
        """
        sources = [addrs[0] for addrs in self.client_addresses.values()]
        targets = [f"{addr}:{UNUSED_PORT}" for addr in self.director_client_side.values()]
        to_director = self._client_module_job(self.client_ns, "client->director", [
            "probe", "--refused-ok", "--deadline", str(BUILD_DEADLINE),
            *(arg for src in sources for arg in ("--source", src)),
            *(arg for target in targets for arg in ("--target", target)),
        ])
        try:
            self._finish([to_director, self._servers_probe_job(list(self._servers))])
        except LabError as exc:
            raise LabError(f"{exc}; {self._server_logs()}") from exc

    # ------------------------------------------------------------- configuration

    def _ip_batch(self, ns: str | None, lines: list[str]) -> None:
        self._finish([self._ip_batch_job(ns, lines)])

    def _ip_batch_job(self, ns: str | None, lines: list[str]) -> _Job:
        """Start ``ip [-n NS] -batch -`` after checking every address in ``lines``."""
        for line in lines:
            for token in line.split():
                if _IPV4_TOKEN.match(token):
                    require_allowed(token)
        argv = ["ip", *(["-n", ns] if ns else []), "-batch", "-"]
        return self._job(f"ip batch in {ns or 'host'}", argv, "\n".join(lines) + "\n")

    def _job(self, what: str, argv: list[str], stdin: str | None = None) -> _Job:
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=self._env(),
        )
        return _Job(what, proc, stdin)

    @staticmethod
    def _finish(jobs: list[_Job]) -> None:
        """Wait for parallel jobs; raise one LabError naming every failed job."""
        failures = []
        for job in jobs:
            try:
                out, err = job.proc.communicate(job.stdin, timeout=BUILD_DEADLINE + 10)
            except subprocess.TimeoutExpired:
                job.proc.kill()
                out, err = job.proc.communicate()
                failures.append(f"{job.what}: timed out")
                continue
            if job.proc.returncode != 0:
                failures.append(f"{job.what} (rc={job.proc.returncode}): {(out + err).strip()}")
        if failures:
            raise LabError("lab setup failed: " + "; ".join(failures))

    # ------------------------------------------------------------------ servers

    def _spawn_server(self, real: str, port: int) -> None:
        assert self._logdir is not None
        argv = python_module("servers", "--bind", real, "--port", str(port))
        with open(self._logdir / f"{real}_{port}.log", "wb") as log:
            self._servers[(real, port)] = subprocess.Popen(
                ["ip", "netns", "exec", self.real_ns[real], *argv],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, env=self._env(),
            )

    def _servers_probe_job(self, keys: list[tuple[str, int]]) -> _Job:
        return self._client_module_job(self.director_ns, "director->reals", [
            "probe", "--deadline", str(BUILD_DEADLINE),
            *(a for real, port in keys for a in ("--target", f"{real}:{port}")),
        ])

    def _client_module_job(self, ns: str, what: str, args: list[str]) -> _Job:
        return self._job(what, ["ip", "netns", "exec", ns, *python_module("client", *args)])

    def _server_logs(self) -> str:
        dead = []
        for (real, port), proc in self._servers.items():
            if proc.poll() is not None and self._logdir is not None:
                tail = (self._logdir / f"{real}_{port}.log").read_text(errors="replace")[-500:]
                dead.append(f"server {real}:{port} exited rc={proc.returncode}: {tail.strip()}")
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
            self._finish([self._servers_probe_job([(real, port)])])
        except LabError as exc:
            raise LabError(f"{exc}; {self._server_logs()}") from exc

    # -------------------------------------------------------------- execution

    def _env(self) -> dict[str, str]:
        """Environment for commands in the lab: our package importable, no proxies."""
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        paths = [str(PACKAGE_ROOT), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
        return env

    def _check_ns(self, ns: str) -> None:
        if ns not in self.namespaces:
            raise LabError(f"{ns!r} is not a namespace of this lab (never run in the host)")

    def run_in(self, ns: str, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` inside ``ns``; output captured as text unless overridden."""
        self._check_ns(ns)
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("env", self._env())
        return subprocess.run(["ip", "netns", "exec", ns, *argv], check=False, **kw)

    def popen_in(self, ns: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside ``ns``; :meth:`destroy` kills it if still running."""
        self._check_ns(ns)
        kw.setdefault("env", self._env())
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
