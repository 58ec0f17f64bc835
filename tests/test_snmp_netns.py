"""The SNMP agent as an operator runs it: `localdirector --config FILE --snmp ADDR:PORT`
in the lab's director namespace, walked and read with net-snmp's own snmpwalk and
snmpget from a management namespace (an IPv4 and an IPv6 virtual, their reals and
binds, each row named by net-snmp from the MIB's InetAddressType/InetAddress index), a
wrong community and the client segment left unanswered, and a real of each family that
fails and comes back through the real data plane reported to net-snmp's snmptrapd; a
SIGKILLed appliance takes its snmpd with it.

The management namespace is linked to the director's by 198.19.255.0/24 (director .1,
manager .2), with its own snmptrapd configuration and files: the host's SNMP
configuration is neither used nor touched."""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from appliance_driver import (LINK_DIRECTOR, LINK_PEER, R12, R13, VIP,  # noqa: F401
                              Side, appliance, appliance_argv, ditched_then_retried,
                              linked_namespace, simple_config)

from localdirector.lab import Lab

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[1]
DIRECTOR_SIDE, MANAGER = LINK_DIRECTOR, LINK_PEER
COMMUNITY = "s3cret-ro"
MIB = ["-m", "LOCALDIRECTOR-MIB", "-M", f"+{ROOT / 'mibs'}:{ROOT / 'tests' / 'mibs'}"]


@pytest.fixture
def manager(lab: Lab, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A management namespace with snmptrapd on MANAGER:162 logging to a file; yields
    (namespace, that file)."""
    with linked_namespace(lab, "nms", "nms0") as ns:
        conf = tmp_path / "snmptrapd.conf"
        conf.write_text(f"authCommunity log {COMMUNITY}\n")
        received = tmp_path / "traps.log"
        env = {**os.environ, "SNMP_PERSISTENT_DIR": str(tmp_path / "trapd-state")}
        proc = subprocess.Popen(["ip", "netns", "exec", ns, "snmptrapd", "-f", "-C", "-c",
                                 str(conf), "-Lf", str(received), *MIB, "-m",
                                 "LOCALDIRECTOR-MIB:SNMPv2-MIB", f"udp:{MANAGER}:162"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=env)
        try:
            deadline = time.monotonic() + 10
            while f"{MANAGER}:162 " not in subprocess.run(
                    ["ip", "netns", "exec", ns, "ss", "-lun"], capture_output=True,
                    text=True).stdout:
                assert proc.poll() is None, proc.communicate()[0]
                assert time.monotonic() < deadline, "snmptrapd did not start listening"
                time.sleep(0.1)
            yield ns, received
        finally:
            proc.terminate()
            proc.wait(10)


def index(addr: str) -> str:
    """An address in a row's name as net-snmp prints an InetAddressType, InetAddress
    index: ipv4."192.0.2.10", ipv6."20:01:0d:b8:...:10" (its 16 octets in hex)."""
    ip = ipaddress.ip_address(addr.strip("[]"))
    if ip.version == 4:
        return f'ipv4."{ip}"'
    return 'ipv6."' + ":".join(f"{octet:02x}" for octet in ip.packed) + '"'


def numeric(addr: str) -> str:
    """The same index by numbers, as snmpget takes it: the type (ipv4 1, ipv6 2), the
    octets' count, the octets (net-snmp reads a quoted address as characters)."""
    ip = ipaddress.ip_address(addr.strip("[]"))
    return ".".join(map(str, (1 if ip.version == 4 else 2, len(ip.packed), *ip.packed)))


def trapped(traps: Path, kind: str, real: str, state: str) -> None:
    """Waits for snmptrapd to log `kind` (ldRealFailed, ldRealRecovered) about `real`
    (its id's address) with the state given (failed(3), inService(1)), the variables
    named by the real's index."""
    at = re.escape(index(real))
    found = re.compile(rf"{kind}\b[^\n]*\tLOCALDIRECTOR-MIB::ldRealName\.{at}\.0\.tcp = "
                       rf"STRING: {re.escape(real)}:0:0:tcp\t[^\n]*"
                       rf"ldRealState\.{at}\.0\.tcp = INTEGER: {re.escape(state)}")
    deadline = time.monotonic() + 10
    text = ""
    while not found.search(text):
        assert time.monotonic() < deadline, text
        time.sleep(0.2)
        text = traps.read_text() if traps.exists() else ""


def snmp(lab: Lab, ns: str, tool: str, *argv: str, community: str = COMMUNITY,
         agent: str = DIRECTOR_SIDE) -> subprocess.CompletedProcess:
    """net-snmp's `tool` in `ns` (the lab's, or the management namespace of this test)."""
    argv = [tool, "-v2c", "-c", community, "-t", "1", "-r", "1", *MIB, "-OQ", agent, *argv]
    if ns in lab.namespaces:
        return lab.run_in(ns, argv)
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True,
                          text=True, timeout=30)


def test_walked_read_and_trapped_with_net_snmp(lab: Lab, appliance, manager) -> None:
    ns, traps = manager
    bad = R13
    six = Side(lab, True)
    vip6, good6, bad6 = six.vip, six.real(R12), six.real(bad)
    health = [f"{line} {real} {n}" for real in (bad, bad6)
              for line, n in (("threshold", 2), ("reassign", 1), ("retry", 2))]
    console = appliance(simple_config(VIP, "roundrobin", [R12, bad]) + simple_config(
        vip6, "roundrobin", [good6, bad6], f"weight {bad6} 2", *health,
        f"snmp-server community {COMMUNITY}", "snmp-server location lab rack 1",
        f"snmp-server host {MANAGER}", "snmp-server enable traps"),
        "--snmp", f"{DIRECTOR_SIDE}:161")

    walk = snmp(lab, ns, "snmpwalk", "LOCALDIRECTOR-MIB::ldObjects")
    assert walk.returncode == 0, walk.stderr   # snmpwalk stops at an OID out of order
    got = dict(line.split(" = ", 1) for line in walk.stdout.splitlines()
               if "No more variables" not in line)   # the walk's end, after the last
    for vip, reals, weights in ((VIP, (R12, bad), ("1", "1")),
                                (vip6, (good6, bad6), ("1", "2"))):
        virtual = f"{index(vip)}.80.0.tcp"
        assert got[f"LOCALDIRECTOR-MIB::ldVirtualName.{virtual}"] == f"{vip}:80:0:tcp"
        assert got[f"LOCALDIRECTOR-MIB::ldVirtualState.{virtual}"] == "inService"
        assert got[f"LOCALDIRECTOR-MIB::ldVirtualConnsTotal.{virtual}"] == "0"
        assert got[f"LOCALDIRECTOR-MIB::ldVirtualPacketsIn.{virtual}"] == "0"
        for real, weight in zip(reals, weights):
            assert got[f"LOCALDIRECTOR-MIB::ldRealState.{index(real)}.0.tcp"] == "inService"
            assert got[f"LOCALDIRECTOR-MIB::ldRealConnsTotal.{index(real)}.0.tcp"] == "0"
            assert got[f"LOCALDIRECTOR-MIB::ldBindWeight.{virtual}.{index(real)}.0.tcp"] \
                == weight
    # Each column's IPv4 rows, then its IPv6 ones (the type, 1 or 2, comes first).
    assert [name.split(".", 1)[1] for name in got if "::ldRealName." in name] == [
        f"{index(real)}.0.tcp" for real in (R12, bad, good6, bad6)]
    assert got["LOCALDIRECTOR-MIB::ldFailoverRole.0"] == "off"
    location = snmp(lab, ns, "snmpget", ".1.3.6.1.2.1.1.6.0")
    assert location.stdout.strip().strip('"').endswith("lab rack 1"), location

    # A wrong community, and the client segment (the agent is bound to one address),
    # get no answer at all.
    wrong = snmp(lab, ns, "snmpget", "LOCALDIRECTOR-MIB::ldFailoverRole.0",
                 community="public")
    assert wrong.returncode != 0 and "Timeout" in wrong.stderr, wrong
    client = snmp(lab, lab.client_ns, "snmpget", "LOCALDIRECTOR-MIB::ldFailoverRole.0",
                  agent=lab.director_client_side["preferred"])
    assert client.returncode != 0 and "Timeout" in client.stderr, client

    # A real of each family fails and comes back: traps and counters name it by its
    # index. The counters are cleared between, so each family's are its own.
    for side, vip, real in ((Side(lab, False), VIP, bad), (six, vip6, bad6)):
        console.confirm("clear counters")
        ditched_then_retried(lab, console, "refuse", bad, R12, timeout=8, side=side)
        trapped(traps, "ldRealFailed", real, "failed(3)")
        trapped(traps, "ldRealRecovered", real, "inService(1)")
        time.sleep(1.1)   # the agent serves a snapshot up to a second old
        counts = snmp(lab, ns, "snmpget", f"LOCALDIRECTOR-MIB::ldRealResets.{numeric(real)}.0.6",
                      f"LOCALDIRECTOR-MIB::ldVirtualConnsTotal.{numeric(vip)}.80.0.6",
                      f"LOCALDIRECTOR-MIB::ldRealState.{numeric(real)}.0.6")
        assert counts.returncode == 0, counts.stderr
        values = dict(line.split(" = ") for line in counts.stdout.splitlines())
        assert values[f"LOCALDIRECTOR-MIB::ldRealResets.{index(real)}.0.tcp"] == "2", counts
        assert int(values[f"LOCALDIRECTOR-MIB::ldVirtualConnsTotal.{index(vip)}.80.0.tcp"]
                   ) >= 10, counts
        assert values[f"LOCALDIRECTOR-MIB::ldRealState.{index(real)}.0.tcp"] == "inService"
    show = console.run("show snmp")
    assert COMMUNITY not in show and re.search(r"Traps: enabled, 4 sent, 0 dropped", show), show


def _snmpd_pids(lab: Lab) -> list[int]:
    out = lab.run_in(lab.director_ns, ["pgrep", "-x", "snmpd"]).stdout.split()
    mine = set(subprocess.run(["ip", "netns", "pids", lab.director_ns], capture_output=True,
                              text=True).stdout.split())
    return [int(pid) for pid in out if pid in mine]


def test_snmpd_goes_with_the_appliance_even_when_it_is_killed(lab: Lab, appliance) -> None:
    """A port alone: the loopback. A community changed on the console is snmpd's at once
    (the old one answered no more); SIGKILL: snmpd goes too, and a new appliance runs
    its own."""
    console = appliance(simple_config(VIP, "roundrobin", [R12],
                                      f"snmp-server community {COMMUNITY}"), "--snmp", "1161")
    assert len(_snmpd_pids(lab)) == 1

    def role(community: str) -> str:
        return lab.run_in(lab.director_ns, [
            "snmpget", "-v2c", "-c", community, "-t", "1", "-r", "0", *MIB, "-OQv",
            "127.0.0.1:1161", "LOCALDIRECTOR-MIB::ldFailoverRole.0"]).stdout.strip()
    assert role(COMMUNITY) == "off"
    console.configure("snmp-server community changed-ro")
    console.wait_for(lambda: role("changed-ro") == "off", timeout=5, what="new community")
    assert role(COMMUNITY) == ""
    console.kill()
    deadline = time.monotonic() + 5
    while _snmpd_pids(lab):
        assert time.monotonic() < deadline, "snmpd outlived the appliance"
        time.sleep(0.05)
    restarted = appliance(simple_config(VIP, "roundrobin", [R12]), "--snmp", "1161")
    assert len(_snmpd_pids(lab)) == 1
    assert restarted.exit() == 0
    assert _snmpd_pids(lab) == []


def test_an_address_snmpd_cannot_listen_on_ends_the_program(lab: Lab, tmp_path: Path) -> None:
    config = tmp_path / "startup-config"
    config.write_text(f"snmp-server community {COMMUNITY}\n")
    result = lab.run_in(lab.director_ns, appliance_argv(
        config, "--no-dataplane", "--no-console", "--snmp", "192.0.2.99:161"), timeout=60)
    assert result.returncode == 2, result
    assert ('localdirector: snmp: snmpd cannot serve 192.0.2.99:161: Error opening '
            'specified endpoint "192.0.2.99:161"') in result.stderr, result.stderr
    assert _snmpd_pids(lab) == []
