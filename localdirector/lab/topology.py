"""The lab's namespaces, links and addresses, and the guard that keeps them in range.

Integration tests need real TCP stacks on both sides of the director without touching
the host's network: one client namespace, one director, one namespace per real, named
``<prefix><4 hex>-<role>`` (``ld3f9a-cli``, ``ld3f9a-dir``, ``ld3f9a-r11``), holding
documentation addresses only (docs/design.rst, "Lab"). Interfaces are created directly
inside their namespaces, never in the host's, so their short names cannot collide with
the host's or another lab's. Nothing owns 192.0.2.0/24: the appliance in the director
namespace translates it.

A lab claims its id with an exclusive file ``/run/localdirector-lab/<prefix><id>``
holding the owner's pid and start time, so :func:`clean_stale` removes only namespaces
whose owner is gone, never a lab another test run is using right now.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from localdirector.runtime import identity

VIP_NET = ipaddress.IPv4Network("192.0.2.0/24")
REAL_NET = ipaddress.IPv4Network("203.0.113.0/24")
CLIENT_SUBNETS = {
    "preferred": ipaddress.IPv4Network("198.51.100.0/24"),
    "unwelcome": ipaddress.IPv4Network("198.18.0.0/24"),
    "general": ipaddress.IPv4Network("198.19.0.0/24"),
}
# Every address the lab configures or sends to must fall in one of these.
ALLOWED_NETS = (
    VIP_NET,
    ipaddress.IPv4Network("198.51.100.0/24"),
    ipaddress.IPv4Network("198.18.0.0/15"),
    REAL_NET,
)
DIRECTOR_REAL_SIDE = "203.0.113.1"
DEFAULT_REALS = tuple(f"203.0.113.{n}" for n in range(11, 16))
DEFAULT_CLIENTS_PER_SUBNET = 8
OWNER_DIR = Path("/run/localdirector-lab")
BUILD_DEADLINE = 5.0

_IPV4_TOKEN = re.compile(r"^\d+\.\d+\.\d+\.\d+(?:/\d+)?$")


class LabError(RuntimeError):
    """The lab could not be built, checked or driven; the message says which step."""


class Job(NamedTuple):
    """A helper process started in parallel with others; ``stdin`` is fed on finish."""

    what: str
    proc: subprocess.Popen[str]
    stdin: str | None = None


def start_job(what: str, argv: list[str], stdin: str | None = None,
              env: Mapping[str, str] | None = None) -> Job:
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env,
    )
    return Job(what, proc, stdin)


def finish(jobs: list[Job]) -> None:
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


def client_addresses(per_subnet: int = DEFAULT_CLIENTS_PER_SUBNET) -> dict[str, tuple[str, ...]]:
    """The client addresses of each subnet: .2, .3, ... (.1 is the director's)."""
    return {role: tuple(str(net.network_address + i) for i in range(2, 2 + per_subnet))
            for role, net in CLIENT_SUBNETS.items()}


def _tag(real: str) -> str:
    """``r11`` for 203.0.113.11: the real's namespace suffix and its director-side veth."""
    return f"r{real.rsplit('.', 1)[1]}"


def _ns_pattern(prefix: str) -> re.Pattern[str]:
    return re.compile(
        rf"^{re.escape(prefix)}(?P<id>[0-9a-f]{{4}})-(?:cli|dir|rtr|seg|d\d|r\d{{1,3}})$")


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


def _owner_alive(lab_name: str) -> bool:
    try:
        recorded = (OWNER_DIR / lab_name).read_text().strip()
        pid = int(recorded.split()[0])
    except (OSError, ValueError, IndexError):
        return False
    return identity(pid) == recorded


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
        draft.write_text(f"{identity(os.getpid())}\n")
        try:
            os.link(draft, OWNER_DIR / name)
        except FileExistsError:
            continue
        finally:
            draft.unlink()
        return name
    raise LabError("could not find a free lab id")


def kill_processes(names: Sequence[str]) -> None:
    """SIGKILL every process inside the namespaces ``names`` (but this one) and wait
    until they are gone: a crashed box's, or a lab's before its namespaces go."""
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


def remove_namespaces(names: Sequence[str]) -> None:
    """Kill every process inside ``names`` and delete them; missing names are ignored.

    Processes are killed first because a namespace with live processes outlives
    ``ip netns del`` invisibly (and keeps its servers answering).
    """
    if not names:
        return
    kill_processes(names)
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
    remove_namespaces(stale)
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
        remove_namespaces([f"{name}-dir"])
    except LabError as exc:
        return f"cannot create network namespaces: {exc}"
    finally:
        (OWNER_DIR / name).unlink(missing_ok=True)
    return None


class Topology:
    """The client/director/reals namespaces with their links, addresses and routes.

    :meth:`build` claims an id and creates everything, removing it all again if a step
    fails; :meth:`destroy` is idempotent (also after a half-finished build) and returns
    the object to its unbuilt state, ready to be built again.
    """

    def __init__(
        self,
        reals: Sequence[str] = DEFAULT_REALS,
        clients_per_subnet: int = DEFAULT_CLIENTS_PER_SUBNET,
        prefix: str = "ld",
    ) -> None:
        _check_prefix(prefix)
        self.reals = tuple(_real_address(real) for real in reals)
        self.prefix = prefix
        if not self.reals or len(set(self.reals)) != len(self.reals):
            raise LabError(f"reals must be a non-empty list without duplicates: {self.reals}")
        if not 1 <= clients_per_subnet <= 253:
            raise LabError("clients_per_subnet must be between 1 and 253")
        self.client_addresses = client_addresses(clients_per_subnet)
        self.director_client_side = {
            role: str(net.network_address + 1) for role, net in CLIENT_SUBNETS.items()
        }
        self.name = ""
        self.client_ns = ""
        self.director_ns = ""
        self.real_ns: dict[str, str] = {}
        self._addresses: dict[str, set[str]] = {}

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

    def build(self) -> Topology:
        """Claim an id, then create namespaces, links, addresses and routes."""
        if self.name:
            raise LabError(f"lab {self.name} is already built")
        try:
            self._claim()
            self._create()
        except BaseException:
            self.destroy()
            raise
        return self

    def destroy(self) -> None:
        """Delete every namespace of this lab (and its processes) and the claim."""
        if self.name:
            existing = set(list_namespaces())
            remove_namespaces([ns for ns in self.namespaces if ns in existing])
            (OWNER_DIR / self.name).unlink(missing_ok=True)
            self.name = self.client_ns = self.director_ns = ""
            self.real_ns = {}
            self._addresses = {}

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

    def _create(self) -> None:
        """Namespaces and their sysctls first, then the director (which creates every veth
        pair with the far end directly inside its namespace), then all other sides in
        parallel.

        IPv6 is off before any interface exists: otherwise every link would get an
        fe80:: address and send solicitations, i.e. use addresses outside the lab ranges.
        """
        finish([_ip_batch_job(None, [f"netns add {ns}" for ns in self.namespaces])])
        no_ipv6 = ["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"]
        forwarding = ["net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
                      "net.ipv4.conf.default.rp_filter=0"]
        finish([
            _sysctl_job(ns, no_ipv6 + (forwarding if ns == self.director_ns else []))
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
        finish([_ip_batch_job(self.director_ns, director)])
        client = ["link set lo up", "link set eth0 up"]
        client += [f"addr add {addr}/24 dev eth0" for addr in self.all_client_addresses]
        client.append(f"route add {VIP_NET} via {self.director_client_side['preferred']}")
        jobs = [_ip_batch_job(self.client_ns, client)]
        for real, ns in self.real_ns.items():
            jobs.append(_ip_batch_job(ns, [
                "link set lo up",
                f"addr add {real}/24 dev eth0",
                "link set eth0 up",
                f"route add default via {DIRECTOR_REAL_SIDE}",
            ]))
        interfaces = ["lo", "br0", "cli0", *map(_tag, self.reals)]
        jobs.append(_sysctl_job(
            self.director_ns, [f"net.ipv4.conf.{iface}.rp_filter=0" for iface in interfaces]
        ))
        finish(jobs)


def _sysctl_job(ns: str, settings: list[str]) -> Job:
    # -e: a kernel without IPv6 has no such keys, which is as good as disabled.
    argv = ["ip", "netns", "exec", ns, "sysctl", "-e", "-q", "-w", *settings]
    return start_job(f"sysctl in {ns}", argv)


def _ip_batch_job(ns: str | None, lines: list[str]) -> Job:
    """Start ``ip [-n NS] -batch -`` after checking every address in ``lines``."""
    for line in lines:
        for token in line.split():
            if _IPV4_TOKEN.match(token):
                require_allowed(token)
    argv = ["ip", *(["-n", ns] if ns else []), "-batch", "-"]
    return start_job(f"ip batch in {ns or 'host'}", argv, "\n".join(lines) + "\n")
