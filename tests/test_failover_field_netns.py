"""The failover pair deployed as README's pair section says, in namespaces built here by
hand (not the project's lab), each unit started the documented way (`localdirector
--config FILE --failover-link fo0 --failover-unit ...`), and failed the way the world
fails it (docs/design.rst, "Failover"):

- a box that dies (every process killed, every link down): over a direct failover
  cable, whose survivor's end loses carrier, and through a switch, whose does not;
- the appliance process alone killed with SIGKILL: keepalived and conntrackd go with
  it, the other unit takes over, and a restart finds nothing of the old run;
- the failover cable pulled while both units live: the standby hears the active still
  answering for the gateway on the client segment and stays standby;
- forged VRRP from the client segment, with the peer's own address as its source:
  dropped, and the roles never move."""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from localdirector.lab.topology import kill_processes, remove_namespaces
from tests.appliance_driver import Console
from tests.conftest import require_netns

pytestmark = pytest.mark.netns

GATEWAY = "198.51.100.1"          # the failover virtual clients route through
CLIENT = "198.51.100.9"           # a host on the client segment (the attacker, too)
LINK = {"primary": "198.19.255.1", "secondary": "198.19.255.2"}
OWN = {"primary": "198.51.100.252", "secondary": "198.51.100.253"}
TAKEOVER = 5.0                    # documented: within a second or two; generous here
WAIT = 20.0


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _other(unit: str) -> str:
    return "secondary" if unit == "primary" else "primary"


def until(check, what: str, timeout: float = WAIT) -> float:  # type: ignore[no-untyped-def]
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

    def __init__(self, tmp_path: Path, link: str) -> None:
        self.name = f"ff{secrets.token_hex(2)}"
        self.ns = {"primary": f"{self.name}-p", "secondary": f"{self.name}-s"}
        self.client = f"{self.name}-c"
        self.switch = f"{self.name}-w" if link == "switch" else ""
        self.tmp_path = tmp_path
        self.consoles: dict[str, Console] = {}

    @property
    def namespaces(self) -> list[str]:
        return [*self.ns.values(), self.client, *([self.switch] if self.switch else [])]

    def build(self) -> None:
        for ns in self.namespaces:
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        c = self.client
        _ip("-n", c, "link", "add", "br0", "type", "bridge", "forward_delay", "0")
        _ip("-n", c, "addr", "add", f"{CLIENT}/24", "dev", "br0")
        _ip("-n", c, "link", "set", "br0", "up")
        if self.switch:
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge",
                "forward_delay", "0")
            _ip("-n", self.switch, "link", "set", "br0", "up")
        else:
            _ip("-n", self.ns["primary"], "link", "add", "fo0", "type", "veth", "peer",
                "name", "fo0", "netns", self.ns["secondary"])
        for unit, ns in self.ns.items():
            # A router, with no reverse-path filter (as the project's lab and routers on
            # asymmetric paths run): the appliance's own rules must do the filtering.
            subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw",
                            "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
                            "net.ipv4.conf.default.rp_filter=0"], check=True)
            port = f"to{unit[0]}"
            if self.switch:
                _ip("-n", ns, "link", "add", "fo0", "type", "veth", "peer", "name", port,
                    "netns", self.switch)
                _ip("-n", self.switch, "link", "set", port, "master", "br0")
                _ip("-n", self.switch, "link", "set", port, "up")
            _ip("-n", ns, "addr", "add", f"{LINK[unit]}/24", "dev", "fo0")
            _ip("-n", ns, "link", "set", "fo0", "up")
            _ip("-n", ns, "link", "add", "cli0", "type", "veth", "peer", "name", port,
                "netns", c)
            _ip("-n", c, "link", "set", port, "master", "br0")
            _ip("-n", c, "link", "set", port, "up")
            _ip("-n", ns, "addr", "add", f"{OWN[unit]}/24", "dev", "cli0")
            _ip("-n", ns, "link", "set", "cli0", "up")

    def boot(self, unit: str) -> Console:
        config = self.tmp_path / f"{unit}.cfg"
        config.write_text("\n".join([
            f"failover ip address {LINK[_other(unit)]}",
            "failover key field-test-passphrase", "failover poll 100 holdtime 500",
            f"failover virtual {GATEWAY} 255.255.255.0",
            "failover", ""]))
        self.consoles[unit] = Console(
            ["ip", "netns", "exec", self.ns[unit], "localdirector", "--config", str(config),
             "--no-dataplane", "--failover-link", "fo0", "--failover-unit", unit])
        return self.consoles[unit]

    def up(self) -> tuple[str, str]:
        """Both booted, one active holding the gateway and the other standing by."""
        for unit in self.ns:
            self.boot(unit)
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

    def holders(self) -> list[str]:
        """The units that hold the gateway address now."""
        return [unit for unit, ns in self.ns.items() if f"{GATEWAY}/24" in subprocess.run(
            ["ip", "-n", ns, "-4", "-o", "addr", "show", "dev", "cli0"],
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

    def run_directories(self, unit: str) -> list[Path]:
        inode = subprocess.run(["ip", "netns", "exec", self.ns[unit], "stat", "-L", "-c",
                                "%i", "/proc/self/ns/net"], capture_output=True, text=True,
                               check=True).stdout.strip()
        return sorted(Path("/run").glob(f"localdirector-*-{inode}"))

    def links(self, unit: str, state: str) -> None:
        """The unit's own ends of all its cables: as a dead box's, or a pulled plug's."""
        for iface in ("fo0", "cli0"):
            _ip("-n", self.ns[unit], "link", "set", iface, state)

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


def _site(tmp_path: Path, link: str) -> Iterator[Site]:
    require_netns()
    site = Site(tmp_path, link)
    try:
        site.build()
        yield site
    finally:
        site.destroy()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    yield from _site(tmp_path, "cable")


@pytest.mark.parametrize("link", ["cable", "switch"])
def test_a_dead_box_is_replaced_over_a_cable_and_through_a_switch(tmp_path: Path,
                                                                  link: str) -> None:
    for site in _site(tmp_path, link):
        active, standby = site.up()
        start = time.monotonic()
        site.crash(active)
        until(lambda: site.holders() == [standby], "the survivor to take the gateway",
              TAKEOVER)
        took = time.monotonic() - start
        assert site.roles() == {standby: "Active"}, took
        carrier = "Down" if link == "cable" else "Normal"
        assert f"Failover link fo0: {carrier}" in site.consoles[standby].run("show failover")


def test_a_killed_appliance_takes_its_helpers_and_a_restart_finds_none(site: Site) -> None:
    active, standby = site.up()
    helpers = sorted(site.processes(active))
    assert "keepalived" in helpers and "conntrackd" in helpers, helpers
    site.consoles.pop(active).kill()             # the appliance process alone
    until(lambda: site.holders() == [standby], "the standby to take the gateway", TAKEOVER)
    until(lambda: site.processes(active) == [], "the killed run's helpers to go", 5.0)
    assert site.roles() == {standby: "Active"}
    assert len(site.run_directories(active)) == 1    # left by SIGKILL, cleaned at start
    site.boot(active)
    until(lambda: site.roles()[active] == "Standby", "the restarted unit to stand by")
    assert sorted(site.processes(active)) == sorted([*helpers]), "one run of each helper"
    assert site.holders() == [standby]
    [directory] = site.run_directories(active)
    owner = int((directory / "owner").read_text().split()[0])
    assert owner == site.consoles[active].pid
    assert site.consoles.pop(active).exit() == 0
    until(lambda: site.run_directories(active) == [], "a clean exit to remove its files")


def test_a_pulled_failover_cable_leaves_the_active_alone(site: Site) -> None:
    active, standby = site.up()
    for unit in (active, standby):                 # both ends lose carrier
        _ip("-n", site.ns[unit], "link", "set", "fo0", "down")
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:
        assert site.holders() == [active], "the standby took the gateway while the " \
            "active still answered for it"
        time.sleep(0.05)
    out = site.consoles[standby].run("show failover")
    assert "Failover link fo0: Down" in out and "answers for" in out, out
    # The active dies too: now nobody answers for the gateway, and the standby takes it.
    site.crash(active)
    until(lambda: site.holders() == [standby], "the standby to take over", TAKEOVER)


VRRP_FLOOD = """
import logging, sys, time
logging.getLogger("scapy").setLevel(logging.ERROR)
from scapy.all import IP, send
from scapy.layers.vrrp import VRRPv3
target, source, priority = sys.argv[1], sys.argv[2], int(sys.argv[3])
advert = IP(src=source, dst=target, ttl=255) / VRRPv3(
    vrid=51, priority=priority, ipcount=1, adv=10, addrlist=["198.51.100.1"])
end = time.monotonic() + 3
while time.monotonic() < end:
    send(advert, verbose=False)
    time.sleep(0.02)
"""


def _dropped_vrrp(site: Site, unit: str) -> int:
    out = subprocess.run(["ip", "netns", "exec", site.ns[unit], "iptables", "-w", "-t", "raw",
                          "-L", "LDPEER", "-v", "-x", "-n"], capture_output=True, text=True,
                         check=True).stdout
    return sum(int(line.split()[0]) for line in out.splitlines()
               if "DROP" in line and ("vrrp" in line or " 112 " in line))


def test_forged_vrrp_from_the_client_segment_moves_nothing(site: Site) -> None:
    """Adverts sent to each unit's failover-link address, routed through the other unit
    (which would forward them onto the link, TTL 254), from the attacker's own address
    and forged with the peer's: none reaches keepalived, and no unit forwards one."""
    active, standby = site.up()
    _ip("-n", site.client, "route", "add", f"{LINK[standby]}/32", "via", GATEWAY)
    _ip("-n", site.client, "route", "add", f"{LINK[active]}/32", "via", OWN[standby])
    floods = [subprocess.Popen(["ip", "netns", "exec", site.client, sys.executable, "-c",
                                VRRP_FLOOD, target, source, priority])
              for target, source, priority in (
                  (LINK[active], CLIENT, "255"),           # "I outrank you"
                  (LINK[active], LINK[standby], "255"),
                  (LINK[standby], CLIENT, "0"),            # "the active resigns"
                  (LINK[standby], LINK[active], "0"))]
    while any(flood.poll() is None for flood in floods):
        assert site.holders() == [active]
        time.sleep(0.05)
    assert all(flood.returncode == 0 for flood in floods)
    assert site.roles() == {active: "Active", standby: "Standby"}
    assert _dropped_vrrp(site, active) >= 50 and _dropped_vrrp(site, standby) >= 50
