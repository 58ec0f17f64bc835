"""The failover pair for real (docs/design.rst, "Failover"): two appliances in their
own namespaces sharing a client segment, a failover link between them, real keepalived
and conntrackd. Roles, the moving address, `failover active`, configuration copied to
the standby, `write standby`, supervision of the helpers, and the return of a killed
unit as standby."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.appliance_driver import Console, appliance_argv
from tests.conftest import require_netns

pytestmark = pytest.mark.netns

VIRTUAL = "198.51.100.1"
UNITS = {"primary": ("198.19.255.1", "198.51.100.252"),
         "secondary": ("198.19.255.2", "198.51.100.253")}
WAIT = 20.0     # generous: a loaded 2-core machine
KEY = "netns-pair-passphrase"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class Pair:
    """Namespaces `fo<hex>-p`, `-s` (the units) and `-c` (the client segment's bridge)."""

    def __init__(self, tmp_path: Path) -> None:
        self.name = f"fo{secrets.token_hex(2)}"
        self.ns = {"primary": f"{self.name}-p", "secondary": f"{self.name}-s"}
        self.segment = f"{self.name}-c"
        self.tmp_path = tmp_path
        self.consoles: dict[str, Console] = {}

    def build(self) -> None:
        for ns in (*self.ns.values(), self.segment):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        p, s = self.ns["primary"], self.ns["secondary"]
        _ip("-n", p, "link", "add", "fo0", "type", "veth", "peer", "name", "fo0", "netns", s)
        _ip("-n", self.segment, "link", "add", "br0", "type", "bridge", "forward_delay", "0")
        _ip("-n", self.segment, "addr", "add", "198.51.100.9/24", "dev", "br0")
        _ip("-n", self.segment, "link", "set", "br0", "up")
        for unit, ns in self.ns.items():
            link, client = UNITS[unit]
            _ip("-n", ns, "addr", "add", f"{link}/24", "dev", "fo0")
            _ip("-n", ns, "link", "set", "fo0", "up")
            port = f"to{unit[0]}"
            _ip("-n", ns, "link", "add", "cli0", "type", "veth", "peer", "name", port,
                "netns", self.segment)
            _ip("-n", self.segment, "link", "set", port, "master", "br0")
            _ip("-n", self.segment, "link", "set", port, "up")
            _ip("-n", ns, "addr", "add", f"{client}/24", "dev", "cli0")
            _ip("-n", ns, "link", "set", "cli0", "up")

    def boot(self, unit: str) -> Console:
        peer = UNITS["secondary" if unit == "primary" else "primary"][0]
        config = self.tmp_path / f"{unit}.cfg"
        config.write_text("\n".join([
            f"failover ip address {peer}", f"failover key {KEY}",
            "failover poll 100 holdtime 500",
            f"failover virtual {VIRTUAL} 255.255.255.0", "replicate", "failover", ""]))
        argv = ["ip", "netns", "exec", self.ns[unit],
                *appliance_argv(config, "--no-dataplane", "--failover-link", "fo0",
                                "--failover-unit", unit)]
        self.consoles[unit] = Console(argv)
        return self.consoles[unit]

    def owns_virtual(self, unit: str) -> bool:
        out = subprocess.run(["ip", "-n", self.ns[unit], "-4", "addr", "show", "cli0"],
                             capture_output=True, text=True, check=False).stdout
        return f"{VIRTUAL}/24" in out

    def destroy(self) -> None:
        for console in self.consoles.values():
            if console.child.isalive():
                console.kill()
        for ns in (*self.ns.values(), self.segment):
            for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                                      text=True, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    require_netns()
    built = Pair(tmp_path)
    try:
        built.build()
        yield built
    finally:
        built.destroy()


def wait_for(check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def role(console: Console) -> str:
    match = re.search(r"This host: (\w+) - (\w+)", console.run("show failover"))
    return match[2] if match else ""


def both_up(pair: Pair) -> tuple[Console, Console]:
    primary, secondary = pair.boot("primary"), pair.boot("secondary")
    wait_for(lambda: {role(primary), role(secondary)} == {"Active", "Standby"},
             "one active and one standby unit")
    return primary, secondary


def test_pair_roles_takeover_and_configuration(pair: Pair) -> None:
    primary, secondary = both_up(pair)
    active, standby = ((primary, secondary) if role(primary) == "Active"
                       else (secondary, primary))
    units = {id(primary): "primary", id(secondary): "secondary"}
    assert pair.owns_virtual(units[id(active)]) and not pair.owns_virtual(units[id(standby)])
    shown = active.run("show failover")
    assert "Failover On" in shown and "Replication On" in shown
    assert re.search(r"keepalived: running \(pid \d+\)", shown)
    assert re.search(r"conntrackd: running \(pid \d+\)", shown)
    wait_for(lambda: "Other host: " in (out := active.run("show failover"))
             and "- Standby" in out.split("Other host:")[1], "the active to hear the standby")

    # Configuration typed on the active reaches the standby; its own peer line stays.
    active.configure("real 203.0.113.11", "virtual 192.0.2.10:80", "bind 192.0.2.10:80 "
                     "203.0.113.11")
    wait_for(lambda: "bind 192.0.2.10:80:0:tcp 203.0.113.11" in standby.run("write terminal"),
             "the standby's running-config to show the bind")
    peer_line = standby.run("write terminal")
    assert f"failover ip address {UNITS[units[id(active)]][0]}" in peer_line
    # `write standby` pushes the whole configuration.
    assert "[OK]" in active.run("write standby")
    assert "Only the active" in standby.run("write standby")

    # Graceful takeover: `failover active` on the standby.
    out = standby.run("failover active")
    assert "now active" in out, out
    wait_for(lambda: role(active) == "Standby", "the old active to stand by")
    assert pair.owns_virtual(units[id(standby)])
    wait_for(lambda: not pair.owns_virtual(units[id(active)]), "the address to leave")


def test_crashed_helpers_are_restarted_and_logged(pair: Pair) -> None:
    primary, _secondary = both_up(pair)
    for helper in ("keepalived", "conntrackd"):
        pid = int(re.search(rf"{helper}: running \(pid (\d+)\)",
                            primary.run("show failover"))[1])
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: re.search(rf"{helper}: running \(pid (?!{pid}\b)\d+\), "
                                   r"restarted \d+ times", primary.run("show failover")),
                 f"{helper} to be restarted")
        assert f"{helper} exited" in primary.run("show syslog")
    wait_for(lambda: {role(primary), role(_secondary)} == {"Active", "Standby"},
             "one active unit again")


def test_killed_active_is_replaced_and_returns_as_standby(pair: Pair) -> None:
    primary, secondary = both_up(pair)
    active_unit = "primary" if role(primary) == "Active" else "secondary"
    other_unit = "secondary" if active_unit == "primary" else "primary"
    other = secondary if active_unit == "primary" else primary
    pair.consoles[active_unit].kill()
    for pid in subprocess.run(["ip", "netns", "pids", pair.ns[active_unit]],
                              capture_output=True, text=True).stdout.split():
        os.kill(int(pid), signal.SIGKILL)      # the box dies: its helpers with it
    _ip("-n", pair.ns[active_unit], "link", "set", "cli0", "down")
    wait_for(lambda: role(other) == "Active", "the standby to take over")
    assert pair.owns_virtual(other_unit)
    # The old active comes back: it stands by (LocalDirector did not take over again).
    _ip("-n", pair.ns[active_unit], "addr", "flush", "dev", "cli0")
    _ip("-n", pair.ns[active_unit], "addr", "add", f"{UNITS[active_unit][1]}/24", "dev",
        "cli0")
    _ip("-n", pair.ns[active_unit], "link", "set", "cli0", "up")
    returned = pair.boot(active_unit)
    wait_for(lambda: role(returned) == "Standby", "the returning unit to stand by")
    assert role(other) == "Active" and pair.owns_virtual(other_unit)
