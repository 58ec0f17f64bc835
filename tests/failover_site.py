"""A failover pair built by hand as README's pair section deploys one (not the project's
lab): two units, the client segment, and a failover link that is a direct cable or a
switch; each unit started the documented way (`localdirector --config FILE
--failover-link fo0 --failover-unit UNIT`, without a data plane), and failed as the world
fails it: a box that dies (links down, then every process killed), a pulled cable, a
killed process."""

from __future__ import annotations

import re
import secrets
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from localdirector.lab.topology import kill_processes, remove_namespaces
from tests.appliance_driver import Console
from tests.conftest import require_netns

GATEWAY = "198.51.100.1"          # the failover virtual clients route through
CLIENT = "198.51.100.9"           # a host on the client segment (the attacker, too)
LINK = {"primary": "198.19.255.1", "secondary": "198.19.255.2"}
OWN = {"primary": "198.51.100.252", "secondary": "198.51.100.253"}
TAKEOVER = 5.0                    # documented: within a second or two; generous here
WAIT = 20.0                       # generous: a loaded 2-core machine
KEY = "site-pair-passphrase"
# With `ipv6`: the client segment dual-stack, an IPv6 failover virtual beside the IPv4
# one, and a reals' segment (IPv6) whose real, in namespace `-r`, routes through the
# pair's second IPv6 failover virtual.
GATEWAY6 = "2001:db8:c::1"
CLIENT6 = "2001:db8:c::9"
OWN6 = {"primary": "2001:db8:c::fc", "secondary": "2001:db8:c::fd"}
REAL_GATEWAY6 = "2001:db8:1::1"
REAL6 = "2001:db8:1::11"
OWN_REAL6 = {"primary": "2001:db8:1::fc", "secondary": "2001:db8:1::fd"}


def ip(*args: str) -> None:
    """`ip ARGS`, which must succeed."""
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _other(unit: str) -> str:
    return "secondary" if unit == "primary" else "primary"


def until(check: Callable[[], object], what: str, timeout: float = WAIT) -> float:
    """Seconds it took `check` to hold; fails the test after `timeout`."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - start


class Site:
    """Two units, the client segment (a bridge in namespace `-c`, which is also the
    client host), and a failover link: a veth cable between the units, or a bridge in
    namespace `-w` (a switch)."""

    def __init__(self, tmp_path: Path, link: str, ipv6: bool = False) -> None:
        self.name = f"ff{secrets.token_hex(2)}"
        self.ns = {"primary": f"{self.name}-p", "secondary": f"{self.name}-s"}
        self.client = f"{self.name}-c"
        self.switch = f"{self.name}-w" if link == "switch" else ""
        self.tmp_path = tmp_path
        self.consoles: dict[str, Console] = {}
        self.ipv6 = ipv6
        self.real = f"{self.name}-r" if ipv6 else ""

    @property
    def namespaces(self) -> list[str]:
        return [*self.ns.values(), self.client, *([self.switch] if self.switch else []),
                *([self.real] if self.real else [])]

    def build(self) -> None:
        for ns in self.namespaces:
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
        c = self.client
        ip("-n", c, "link", "add", "br0", "type", "bridge", "forward_delay", "0")
        ip("-n", c, "addr", "add", f"{CLIENT}/24", "dev", "br0")
        if self.ipv6:
            ip("-n", c, "addr", "add", f"{CLIENT6}/64", "dev", "br0", "nodad")
            ip("-n", self.real, "link", "add", "br0", "type", "bridge", "forward_delay", "0")
            ip("-n", self.real, "addr", "add", f"{REAL6}/64", "dev", "br0", "nodad")
            ip("-n", self.real, "link", "set", "br0", "up")
            ip("-n", self.real, "-6", "route", "add", "default", "via", REAL_GATEWAY6)
        ip("-n", c, "link", "set", "br0", "up")
        if self.switch:
            ip("-n", self.switch, "link", "add", "br0", "type", "bridge",
                "forward_delay", "0")
            ip("-n", self.switch, "link", "set", "br0", "up")
        else:
            ip("-n", self.ns["primary"], "link", "add", "fo0", "type", "veth", "peer",
                "name", "fo0", "netns", self.ns["secondary"])
        for unit, ns in self.ns.items():
            # A router, with no reverse-path filter (as the project's lab and routers on
            # asymmetric paths run): the appliance's own rules must do the filtering.
            subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw",
                            "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
                            "net.ipv4.conf.default.rp_filter=0"], check=True)
            port = f"to{unit[0]}"
            if self.switch:
                ip("-n", ns, "link", "add", "fo0", "type", "veth", "peer", "name", port,
                    "netns", self.switch)
                ip("-n", self.switch, "link", "set", port, "master", "br0")
                ip("-n", self.switch, "link", "set", port, "up")
            ip("-n", ns, "addr", "add", f"{LINK[unit]}/24", "dev", "fo0")
            ip("-n", ns, "link", "set", "fo0", "up")
            ip("-n", ns, "link", "add", "cli0", "type", "veth", "peer", "name", port,
                "netns", c)
            ip("-n", c, "link", "set", port, "master", "br0")
            ip("-n", c, "link", "set", port, "up")
            ip("-n", ns, "addr", "add", f"{OWN[unit]}/24", "dev", "cli0")
            if self.ipv6:
                ip("-n", ns, "addr", "add", f"{OWN6[unit]}/64", "dev", "cli0", "nodad")
                subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw",
                                "net.ipv6.conf.all.forwarding=1"], check=True)
                ip("-n", ns, "link", "add", "real0", "type", "veth", "peer", "name", port,
                    "netns", self.real)
                ip("-n", self.real, "link", "set", port, "master", "br0")
                ip("-n", self.real, "link", "set", port, "up")
                ip("-n", ns, "addr", "add", f"{OWN_REAL6[unit]}/64", "dev", "real0", "nodad")
                ip("-n", ns, "link", "set", "real0", "up")
            ip("-n", ns, "link", "set", "cli0", "up")

    def boot(self, unit: str, lines: Sequence[str] = (),
             dataplane: Sequence[str] = ()) -> Console:
        """The unit started the documented way with `lines` added to the pair's; without
        a data plane unless `dataplane` gives its options (`--queue N`)."""
        config = self.tmp_path / f"{unit}.cfg"
        config.write_text("\n".join([
            f"failover ip address {LINK[_other(unit)]}",
            f"failover key {KEY}", "failover poll 100 holdtime 500",
            f"failover virtual {GATEWAY} 255.255.255.0",
            *([f"failover virtual {GATEWAY6}/64", f"failover virtual {REAL_GATEWAY6}/64"]
              if self.ipv6 else []), "replicate", "failover", *lines, ""]))
        self.consoles[unit] = Console(
            ["ip", "netns", "exec", self.ns[unit], "localdirector", "--config", str(config),
             *(dataplane or ["--no-dataplane"]), "--failover-link", "fo0",
             "--failover-unit", unit])
        return self.consoles[unit]

    def up(self, lines: Sequence[str] = (), dataplane: Sequence[str] = ()
           ) -> tuple[str, str]:
        """Both booted (`boot`'s arguments), one active holding the gateway and the
        other standing by."""
        for unit in self.ns:
            self.boot(unit, lines, dataplane)
        until(lambda: sorted(self.roles().values()) == ["Active", "Standby"],
              "one active and one standby unit")
        active = next(u for u, r in self.roles().items() if r == "Active")
        until(lambda: self.holders() == [active], "the gateway on the active alone")
        return active, _other(active)

    def roles(self) -> dict[str, str]:
        found = {}
        for unit, console in self.consoles.items():
            match = re.search(r"This host: \w+ - (\w+)", console.run("show failover"))
            found[unit] = match[1] if match else ""
        return found

    def holders(self, gateway: str = f"{GATEWAY}/24") -> list[str]:
        """The units that hold the gateway address (or `gateway`, e.g. the IPv6 one's
        f"{GATEWAY6}/64") on a live link now (a dead box's SIGKILLed keepalived leaves it
        on its downed interface)."""
        return [unit for unit, ns in self.ns.items() if f" {gateway} " in subprocess.run(
            ["ip", "-n", ns, "-o", "addr", "show", "dev", "cli0", "up"],
            capture_output=True, text=True, check=False).stdout]

    def processes(self, unit: str) -> list[str]:
        """The command names of the processes in the unit's namespace."""
        names = []
        for pid in subprocess.run(["ip", "netns", "pids", self.ns[unit]], capture_output=True,
                                  text=True, check=False).stdout.split():
            try:
                names.append(Path(f"/proc/{pid}/comm").read_text().strip())
            except OSError:
                pass
        return names

    def helpers(self, unit: str) -> Counter[str]:
        """How many keepalived and conntrackd processes run in the unit's namespace
        (the appliance's own short-lived `ip` and `iptables` are left out)."""
        return Counter(name for name in self.processes(unit)
                       if name in ("keepalived", "conntrackd"))

    def run_directories(self, unit: str) -> list[Path]:
        inode = subprocess.run(["ip", "netns", "exec", self.ns[unit], "stat", "-L", "-c",
                                "%i", "/proc/self/ns/net"], capture_output=True, text=True,
                               check=True).stdout.strip()
        return sorted(Path("/run").glob(f"localdirector-*-{inode}"))

    def links(self, unit: str, state: str) -> None:
        """The unit's own ends of all its cables: as a dead box's, or a pulled plug's."""
        for iface in ("fo0", "cli0", *(["real0"] if self.real else [])):
            ip("-n", self.ns[unit], "link", "set", iface, state)

    def crash(self, unit: str) -> None:
        """The box dies: every link loses carrier at once, so nothing it would still
        say gets out (no priority-0 advert of a keepalived told to stop), then every
        process is SIGKILLed."""
        self.links(unit, "down")
        kill_processes([self.ns[unit]])
        self.consoles.pop(unit).close()

    def destroy(self) -> None:
        remove_namespaces(self.namespaces)
        for console in self.consoles.values():
            console.close()


def built(tmp_path: Path, link: str, ipv6: bool = False) -> Iterator[Site]:
    require_netns()
    site = Site(tmp_path, link, ipv6)
    try:
        site.build()
        yield site
    finally:
        site.destroy()


