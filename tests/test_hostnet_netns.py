"""Issue 27 item 3: with `--host-network IFACE` the director applies a LocalDirector
configuration's `ip address`, `alias ip address`, `route` and `arp` to its own network
namespace (pyroute2), shows them in `show interfaces`, `show route` and `show arp`, keeps
them in the running config, and `ping` answers in IOS's shape. Without the option the
same lines are only noted (tests/test_ldcompat.py)."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

pytestmark = pytest.mark.netns


def _ip(*argv: str) -> str:
    return subprocess.run(["ip", *argv], check=True, capture_output=True, text=True,
                          timeout=10).stdout


@pytest.fixture
def pair(netns: None) -> Iterator[tuple[str, str]]:
    """The director's namespace and a gateway's, joined by a veth (link addresses
    198.19.255.0/24): the gateway answers ping at 198.19.255.1."""
    token = secrets.token_hex(3)
    director, gateway = f"ldhn{token}-dir", f"ldhn{token}-gw"
    try:
        _ip("netns", "add", director)
        _ip("netns", "add", gateway)
        _ip("link", "add", "ldhn0", "netns", director, "type", "veth", "peer", "name",
            "ldhn1", "netns", gateway)
        _ip("-n", director, "link", "set", "ldhn0", "up")
        _ip("-n", director, "link", "set", "lo", "up")
        _ip("-n", gateway, "addr", "add", "198.19.255.1/24", "dev", "ldhn1")
        _ip("-n", gateway, "link", "set", "ldhn1", "up")
    except subprocess.CalledProcessError as err:
        for ns in (director, gateway):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        pytest.fail(f"lab build failed: {err.stderr}", pytrace=False)
    try:
        yield director, gateway
    finally:
        for ns in (director, gateway):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


CONFIG = """\
: LocalDirector's own network lines
ip address 198.19.255.2 255.255.255.0
alias ip address 198.19.254.2 255.255.255.0
route 198.18.0.0 255.254.0.0 198.19.255.1 1
arp 198.19.255.9 0000.0c12.3456
virtual 192.0.2.10:80 is
"""


def test_host_network_lines_are_applied_shown_saved_and_ping_answers(
        pair: tuple[str, str], tmp_path: Path) -> None:
    director, _gateway = pair
    config = tmp_path / "startup-config"
    config.write_text(CONFIG)
    script = "enable\nshow route\nshow arp\nshow interfaces\nping 198.19.255.1\n" \
             "ping 198.19.255.77\nwrite terminal\nconfigure terminal\n" \
             "no route 198.18.0.0 255.254.0.0\nno arp 198.19.255.9\nno ip address\nend\n"
    result = subprocess.run(["ip", "netns", "exec", director, sys.executable, "-m",
                             "localdirector", "--no-dataplane", "--host-network", "ldhn0",
                             "--config", str(config)], input=script, capture_output=True,
                            text=True, env=ENV, timeout=60)
    out = result.stdout
    assert result.returncode == 0, (out, result.stderr)
    # Shown by the director, noted at boot.
    assert "applied to ldhn0: 198.19.255.2/24" in result.stderr
    assert re.search(r"^198\.18\.0\.0/15 +198\.19\.255\.1 +ldhn0 +1 ", out, re.M), out
    assert re.search(r"^198\.19\.255\.9 +00:00:0c:12:34:56 +ldhn0 +PERMANENT", out, re.M)
    # Their `no` forms took them away again, the alias staying.
    assert json.loads(_ip("-n", director, "-j", "route", "show", "198.18.0.0/15")) == []
    assert "198.19.255.9 " not in _ip("-n", director, "neigh", "show")
    left = {a["local"] for link in json.loads(_ip("-n", director, "-j", "addr", "show",
                                                  "dev", "ldhn0"))
            for a in link["addr_info"] if a["family"] == "inet"}
    assert left == {"198.19.254.2"}
    assert "Internet address is 198.19.255.2/24" in out
    # ping: IOS's shape, a reachable gateway and an address nobody holds.
    assert "Sending 5, 100-byte ICMP Echos to 198.19.255.1, timeout is 2 seconds:\n" \
           "!!!!!\nSuccess rate is 100 percent (5/5), round-trip min/avg/max" in out
    assert ".....\nSuccess rate is 0 percent (0/5)" in out
    # Kept in the running config, in LocalDirector's lines.
    for line in ("ip address 198.19.255.2 255.255.255.0",
                 "alias ip address 198.19.254.2 255.255.255.0",
                 "route 198.18.0.0 255.254.0.0 198.19.255.1 1",
                 "arp 198.19.255.9 00:00:0c:12:34:56"):
        assert line in out.splitlines(), line
