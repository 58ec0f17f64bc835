"""The lab's namespaces, links and addresses (the plan and its guard: addresses.py).

Integration tests need real TCP stacks on both sides of the director without touching
the host's network: one client namespace, one director, one namespace per real, named
``<prefix><4 hex>-<role>`` (``ld3f9a-cli``, ``ld3f9a-dir``, ``ld3f9a-r11``), holding
documentation addresses only (docs/design.rst, "Lab"). Interfaces are created directly
inside their namespaces, never in the host's, so their short names cannot collide with
the host's or another lab's. Nothing owns 192.0.2.0/24 or 2001:db8::/64: the
appliance in the director namespace translates them.

A lab claims its id with an exclusive file ``/run/localdirector-lab/<prefix><id>``
holding the owner's pid and start time, so :func:`clean_stale` removes only namespaces
whose owner is gone, never a lab another test run is using right now.
"""

from __future__ import annotations

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

from .addresses import (CLIENT_SUBNETS, CLIENT_SUBNETS6, DEFAULT_CLIENTS_PER_SUBNET,
                        DEFAULT_REALS, DIRECTOR_REAL_SIDE, DIRECTOR_REAL_SIDE6, REAL_NET,
                        VIP_NET, VIP_NET6, LabError, check_tokens, client_addresses,
                        client_addresses6, real6, real_address, require_allowed)

# Names of the address plan other modules have always taken from here.
__all__ = ["BUILD_DEADLINE", "CLIENT_SUBNETS", "DEFAULT_CLIENTS_PER_SUBNET", "DEFAULT_REALS",
           "DIRECTOR_REAL_SIDE", "OWNER_DIR", "REAL_NET", "VIP_NET", "Job", "LabError",
           "Topology", "clean_stale", "client_addresses", "finish", "kill_processes",
           "list_namespaces", "remove_namespaces", "require_allowed", "start_job",
           "unavailable_reason"]

OWNER_DIR = Path("/run/localdirector-lab")
BUILD_DEADLINE = 5.0
# IPv6 in every namespace, without what would use addresses outside the lab's: no
# link-local address generated (so no fe80::), no router solicitations or
# advertisements taken, no duplicate address detection (addresses usable at once).
IPV6_QUIET = [f"net.ipv6.conf.{which}.{key}" for which in ("all", "default")
              for key in ("addr_gen_mode=1", "accept_ra=0", "accept_dad=0",
                          "router_solicitations=0")]
# So the director knows its IPv6 neighbours without asking: the kernel solicits a
# neighbour from the packet's own source only when that is an address of the outgoing
# interface, else from a link-local address, and there is none; a forwarded packet's
# source never is the director's. So the client's and the reals' interfaces get fixed
# hardware addresses and the director permanent neighbour entries for them. The other
# way too: the client and the reals hold permanent entries for the director's IPv6
# addresses (its two sides' fixed hardware addresses), so no lab packet waits on
# neighbour discovery, whose one-second retries a loaded machine turned into "no route
# to host" (docs/design.rst, "The lab").
CLIENT_MAC = "02:1d:00:00:00:01"
DIRECTOR_CLIENT_MAC = "02:1d:00:00:00:02"   # the director's cli0
DIRECTOR_REAL_MAC = "02:1d:00:00:00:03"     # the director's br0


def real_mac(real: str) -> str:
    """The fixed hardware address of a real's interface: 02:1d:00:00:01:0e for .14."""
    return f"02:1d:00:00:01:{int(real.rsplit('.', 1)[1]):02x}"


def client_neighbours(addrs: Iterable[str], verb: str = "replace") -> list[str]:
    """The director's `ip neigh` lines for IPv6 client addresses (`del`: forget them)."""
    tail = f" lladdr {CLIENT_MAC} dev cli0 nud permanent" if verb == "replace" else " dev cli0"
    return [f"neigh {verb} {addr}{tail}" for addr in addrs]


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
        self.reals = tuple(real_address(real) for real in reals)
        self.prefix = prefix
        if not self.reals or len(set(self.reals)) != len(self.reals):
            raise LabError(f"reals must be a non-empty list without duplicates: {self.reals}")
        if not 1 <= clients_per_subnet <= 253:
            raise LabError("clients_per_subnet must be between 1 and 253")
        self.client_addresses = client_addresses(clients_per_subnet)
        self.director_client_side = {
            role: str(net.network_address + 1) for role, net in CLIENT_SUBNETS.items()
        }
        # The IPv6 side (docs/design.rst, "Lab"): every address's twin, built by _create.
        self.client_addresses6 = client_addresses6(clients_per_subnet)
        self.director_client_side6 = {
            role: str(net.network_address + 1) for role, net in CLIENT_SUBNETS6.items()
        }
        self.reals6 = {real: real6(real) for real in self.reals}
        self.v6 = False                  # whether this lab's namespaces have IPv6
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

    @property
    def all_client_addresses6(self) -> tuple[str, ...]:
        """The IPv6 twins of :attr:`all_client_addresses`, in the same order."""
        return tuple(a for addrs in self.client_addresses6.values() for a in addrs)

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
            self.v6 = False

    def _claim(self) -> None:
        self.name = _claim_lab_name(self.prefix)
        self.client_ns = f"{self.name}-cli"
        self.director_ns = f"{self.name}-dir"
        self.real_ns = {real: f"{self.name}-{_tag(real)}" for real in self.reals}
        self._addresses = {
            self.client_ns: {*self.all_client_addresses, *self.all_client_addresses6},
            self.director_ns: {DIRECTOR_REAL_SIDE, *self.director_client_side.values(),
                               DIRECTOR_REAL_SIDE6, *self.director_client_side6.values()},
            **{ns: {real, self.reals6[real]} for real, ns in self.real_ns.items()},
        }

    def _create(self) -> None:
        """Namespaces and their sysctls first, then the director (which creates every veth
        pair with the far end directly inside its namespace), then all other sides in
        parallel. Both families: each IPv4 address has its IPv6 twin (addresses.py).

        IPv6 is quiet before any interface exists (IPV6_QUIET): otherwise every link
        would get an fe80:: address and send solicitations, i.e. use addresses outside
        the lab ranges.
        """
        finish([_ip_batch_job(None, [f"netns add {ns}" for ns in self.namespaces])])
        forwarding = ["net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
                      "net.ipv4.conf.default.rp_filter=0", "net.ipv6.conf.all.forwarding=1"]
        finish([
            _sysctl_job(ns, IPV6_QUIET + (forwarding if ns == self.director_ns else []))
            for ns in self.namespaces
        ])
        director = [
            "link set lo up",
            f"link add br0 address {DIRECTOR_REAL_MAC} type bridge forward_delay 0",
            f"addr add {DIRECTOR_REAL_SIDE}/24 dev br0",
            f"addr add {DIRECTOR_REAL_SIDE6}/64 dev br0 nodad",
            "link set br0 up",
            f"link add cli0 address {DIRECTOR_CLIENT_MAC} type veth peer name eth0 address "
            f"{CLIENT_MAC} netns {self.client_ns}",
            *(f"addr add {addr}/24 dev cli0" for addr in self.director_client_side.values()),
            *(f"addr add {addr}/64 dev cli0 nodad"
              for addr in self.director_client_side6.values()),
            "link set cli0 up",
        ]
        for real, ns in self.real_ns.items():
            director += [
                f"link add {_tag(real)} type veth peer name eth0 address {real_mac(real)} "
                f"netns {ns}",
                f"link set {_tag(real)} master br0",
                f"link set {_tag(real)} up",
                f"neigh replace {self.reals6[real]} lladdr {real_mac(real)} dev br0 "
                "nud permanent",
            ]
        director += client_neighbours(self.all_client_addresses6)
        finish([_ip_batch_job(self.director_ns, director)])
        client = ["link set lo up", "link set eth0 up"]
        client += [f"addr add {addr}/24 dev eth0" for addr in self.all_client_addresses]
        client += [f"addr add {addr}/64 dev eth0 nodad" for addr in self.all_client_addresses6]
        client += [f"neigh replace {addr} lladdr {DIRECTOR_CLIENT_MAC} dev eth0 nud permanent"
                   for addr in self.director_client_side6.values()]
        client.append(f"route add {VIP_NET} via {self.director_client_side['preferred']}")
        client.append(f"route add {VIP_NET6} via {self.director_client_side6['preferred']}")
        jobs = [_ip_batch_job(self.client_ns, client)]
        for real, ns in self.real_ns.items():
            jobs.append(_ip_batch_job(ns, [
                "link set lo up",
                f"addr add {real}/24 dev eth0",
                f"addr add {self.reals6[real]}/64 dev eth0 nodad",
                "link set eth0 up",
                f"route add default via {DIRECTOR_REAL_SIDE}",
                f"route add default via {DIRECTOR_REAL_SIDE6}",
                f"neigh replace {DIRECTOR_REAL_SIDE6} lladdr {DIRECTOR_REAL_MAC} dev eth0 "
                "nud permanent",
            ]))
        interfaces = ["lo", "br0", "cli0", *map(_tag, self.reals)]
        jobs.append(_sysctl_job(
            self.director_ns, [f"net.ipv4.conf.{iface}.rp_filter=0" for iface in interfaces]
        ))
        finish(jobs)
        self.v6 = True


def _sysctl_job(ns: str, settings: list[str]) -> Job:
    # -e: a kernel without IPv6 has no such keys (the IPv4 lab still works there).
    argv = ["ip", "netns", "exec", ns, "sysctl", "-e", "-q", "-w", *settings]
    return start_job(f"sysctl in {ns}", argv)


def _ip_batch_job(ns: str | None, lines: list[str]) -> Job:
    """Start ``ip [-n NS] -batch -`` after checking every address in ``lines``."""
    for line in lines:
        check_tokens(line)
    argv = ["ip", *(["-n", ns] if ns else []), "-batch", "-"]
    return start_job(f"ip batch in {ns or 'host'}", argv, "\n".join(lines) + "\n")
