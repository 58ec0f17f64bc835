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

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.failover_site import CLIENT, GATEWAY, LINK, OWN, TAKEOVER, Site, built, ip, until

pytestmark = pytest.mark.netns


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    yield from built(tmp_path, "cable")


@pytest.mark.parametrize("link", ["cable", "switch"])
def test_a_dead_box_is_replaced_over_a_cable_and_through_a_switch(tmp_path: Path,
                                                                  link: str) -> None:
    for site in built(tmp_path, link):
        active, standby = site.up()
        start = time.monotonic()
        site.crash(active)
        until(lambda: site.holders() == [standby], "the survivor to take the gateway",
              TAKEOVER)
        took = time.monotonic() - start
        # keepalived adds the addresses, then tells the appliance, which commits
        # conntrackd's cache before it calls itself active: on a loaded machine that
        # comes a moment after the gateway moved.
        until(lambda: site.roles() == {standby: "Active"}, f"the survivor to be active "
              f"({took:.2f} s after the crash it held the gateway)", TAKEOVER)
        carrier = "Down" if link == "cable" else "Normal"
        assert f"Failover link fo0: {carrier}" in site.consoles[standby].run("show failover")


def test_a_killed_appliance_takes_its_helpers_and_a_restart_finds_none(site: Site) -> None:
    active, standby = site.up()
    helpers = site.helpers(active)
    assert helpers["keepalived"] and helpers["conntrackd"] == 1, helpers
    site.consoles.pop(active).kill()             # the appliance process alone
    until(lambda: site.holders() == [standby], "the standby to take the gateway", TAKEOVER)
    until(lambda: site.processes(active) == [], "the killed run's helpers to go", 5.0)
    # Its box forwards nothing more: the sentinel raised the drop guard as it went.
    raw = subprocess.run(["ip", "netns", "exec", site.ns[active], "iptables", "-w", "-t",
                          "raw", "-S", "PREROUTING"], capture_output=True, text=True,
                         check=True).stdout
    assert "-j LDFAILOVER" in raw.split("\n")[1], raw
    assert site.roles() == {standby: "Active"}
    assert len(site.run_directories(active)) == 1    # left by SIGKILL, cleaned at start
    site.boot(active)
    until(lambda: site.roles()[active] == "Standby", "the restarted unit to stand by")
    assert site.helpers(active) == helpers, "one run of each helper"
    assert site.holders() == [standby]
    [directory] = site.run_directories(active)
    owner = int((directory / "owner").read_text().split()[0])
    assert owner == site.consoles[active].pid
    assert site.consoles.pop(active).exit() == 0
    until(lambda: site.run_directories(active) == [], "a clean exit to remove its files")


def test_a_pulled_failover_cable_leaves_the_active_alone(site: Site) -> None:
    active, standby = site.up()
    for unit in (active, standby):                 # both ends lose carrier
        ip("-n", site.ns[unit], "link", "set", "fo0", "down")
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
    ip("-n", site.client, "route", "add", f"{LINK[standby]}/32", "via", GATEWAY)
    ip("-n", site.client, "route", "add", f"{LINK[active]}/32", "via", OWN[standby])
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
