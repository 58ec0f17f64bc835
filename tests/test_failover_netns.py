"""The failover pair for real (docs/design.rst, "Failover"): two appliances in their
own namespaces sharing a client segment, a failover link between them, real keepalived
and conntrackd. Roles, the moving address, `failover active`, configuration copied to
the standby, `write standby`, supervision of the helpers, the return of a killed unit
as standby, and issue 22's attacks on the units' stream from the client segment and
from the failover link."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.appliance_driver import Console
from tests.failover_site import KEY, LINK, OWN, Site, built, ip

pytestmark = pytest.mark.netns

WAIT = 20.0     # generous: a loaded 2-core machine


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Site]:
    """The pair over a direct cable, built as README deploys it (tests/failover_site.py)."""
    yield from built(tmp_path, "cable")


def wait_for(check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def role(console: Console) -> str:
    match = re.search(r"This host: (\w+) - (\w+)", console.run("show failover"))
    return match[2] if match else ""


def both_up(pair: Site) -> tuple[Console, Console]:
    primary, secondary = pair.boot("primary"), pair.boot("secondary")
    wait_for(lambda: {role(primary), role(secondary)} == {"Active", "Standby"},
             "one active and one standby unit")
    return primary, secondary


def test_pair_roles_takeover_and_configuration(pair: Site) -> None:
    primary, secondary = both_up(pair)
    active, standby = ((primary, secondary) if role(primary) == "Active"
                       else (secondary, primary))
    units = {id(primary): "primary", id(secondary): "secondary"}
    assert pair.holders() == [units[id(active)]]
    shown = active.run("show failover")
    assert "Failover On" in shown and "Replication On" in shown
    assert re.search(r"keepalived: running \(pid \d+\)", shown)
    assert re.search(r"conntrackd: running \(pid \d+\)", shown)
    wait_for(lambda: "Other host: " in (out := active.run("show failover"))
             and "- Standby" in out.split("Other host:")[1], "the active to hear the standby")

    # Configuration typed on the active reaches the standby; its own peer line stays.
    active.configure("real 203.0.113.11", "virtual 192.0.2.10:80", "bind 192.0.2.10:80 "
                     "203.0.113.11")
    wait_for(lambda: "bind 192.0.2.10:80 203.0.113.11" in standby.run("write terminal"),
             "the standby's running-config to show the bind")
    peer_line = standby.run("write terminal")
    assert f"failover ip address {LINK[units[id(active)]]}" in peer_line
    # `write standby` pushes the whole configuration.
    assert "[OK]" in active.run("write standby")
    assert "Only the active" in standby.run("write standby")

    # Graceful takeover: `failover active` on the standby.
    out = standby.run("failover active")
    assert "now active" in out, out
    wait_for(lambda: role(active) == "Standby", "the old active to stand by")
    assert units[id(standby)] in pair.holders()
    wait_for(lambda: units[id(active)] not in pair.holders(), "the address to leave")


def test_crashed_helpers_are_restarted_and_logged(pair: Site) -> None:
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


def test_killed_active_is_replaced_and_returns_as_standby(pair: Site) -> None:
    primary, secondary = both_up(pair)
    active_unit = "primary" if role(primary) == "Active" else "secondary"
    other_unit = "secondary" if active_unit == "primary" else "primary"
    other = secondary if active_unit == "primary" else primary
    pair.crash(active_unit)                    # the box dies: its helpers with it
    wait_for(lambda: role(other) == "Active", "the standby to take over")
    assert other_unit in pair.holders()
    # The old active comes back: it stands by (LocalDirector did not take over again).
    pair.links(active_unit, "up")
    returned = pair.boot(active_unit)
    wait_for(lambda: role(returned) == "Standby", "the returning unit to stand by")
    assert role(other) == "Active" and other_unit in pair.holders()


# Run in a unit's namespace: read the failover link until the unit named by argv[1]
# sends a whole configuration message; print that line (as the wire carried it) in hex.
SNIFF = """
import socket, sys
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
sock.bind(("fo0", 0))
sock.settimeout(30)
source, segments = socket.inet_aton(sys.argv[1]), {}
print("ready", flush=True)
while True:
    frame = sock.recv(65535)
    ip = frame[14:]
    if frame[12:14] != b"\\x08\\x00" or ip[9] != 6 or ip[12:16] != source:
        continue
    tcp = ip[(ip[0] & 15) * 4:int.from_bytes(ip[2:4], "big")]
    if int.from_bytes(tcp[2:4], "big") != 7405:
        continue
    segments[int.from_bytes(tcp[4:8], "big")] = tcp[(tcp[12] >> 4) * 4:]
    lines = b"".join(segments[seq] for seq in sorted(segments)).split(b"\\n")[1:-1]
    for line in lines:
        if b'"t":"config"' in line:
            print(line.hex(), flush=True)
            sys.exit(0)
"""

# Run in a namespace: connect from argv[1] (bound to device argv[2] unless "-") to
# argv[3]:7405, read the banner if one comes, send the line argv[4] (hex) and say what
# the listener did: "refused" (no connection), "dropped" (closed it) or "open".
INJECT = """
import socket, sys
source, device, target, line = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
sock = socket.socket()
if device != "-":
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
sock.bind((source, 0))
sock.settimeout(3)
try:
    sock.connect((target, 7405))
except OSError:
    print("refused")
    sys.exit(0)
try:
    sock.sendall(bytes.fromhex(line) + b"\\n")
    while sock.recv(4096):
        pass
    print("dropped")
except TimeoutError:
    print("open")
except OSError:
    print("dropped")
"""


def inject(pair: Site, ns: str, source: str, device: str, target: str, line: bytes) -> str:
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", INJECT, source,
                          device, target, line.hex()], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_the_stream_refuses_issue_22s_attacks(pair: Site) -> None:
    """From the client segment with a route to the failover link, and from the link
    with the other unit's address: an unauthenticated configuration ending in `do
    write memory`, a step-down, and a captured authentic configuration replayed. The
    units' configurations, startup-configs and roles stay as they were; the real
    active's copy and `write standby` still work."""
    primary, secondary = both_up(pair)
    active, standby = ((primary, secondary) if role(primary) == "Active"
                       else (secondary, primary))
    names = {id(primary): "primary", id(secondary): "secondary"}
    active_link, standby_link = LINK[names[id(active)]], LINK[names[id(standby)]]
    active_ns, standby_ns = pair.ns[names[id(active)]], pair.ns[names[id(standby)]]

    sniffer = subprocess.Popen(["ip", "netns", "exec", standby_ns, sys.executable, "-c",
                                SNIFF, active_link], stdout=subprocess.PIPE, text=True)
    try:
        assert sniffer.stdout is not None and sniffer.stdout.readline() == "ready\n"
        active.configure("name 203.0.113.50 captured")
        captured = bytes.fromhex(sniffer.stdout.readline())
    finally:
        sniffer.kill()
        sniffer.wait()
    assert b"captured" in captured
    active.configure("name 203.0.113.51 current")
    wait_for(lambda: "name 203.0.113.51 current" in standby.run("write terminal"),
             "the standby to get the configuration")
    before = {unit: (console.run("write terminal"), role(console),
                     (pair.tmp_path / f"{names[id(console)]}.cfg").read_bytes())
              for unit, console in (("active", active), ("standby", standby))}

    forged = [b'{"t":"config","lines":["name 203.0.113.66 evil","do write memory"]}',
              b'{"t":"step-down"}']
    # The client segment, routed to the failover link through each unit's own address.
    for unit, link in LINK.items():
        ip("-n", pair.client, "route", "add", f"{link}/32", "via", OWN[unit])
        for line in forged:
            assert inject(pair, pair.client, "198.51.100.9", "-", link, line) \
                == "refused", unit
    # The failover link itself, with the other unit's address.
    for line in (*forged, captured):
        assert inject(pair, active_ns, active_link, "fo0", standby_link, line) == "dropped"
    assert inject(pair, standby_ns, standby_link, "fo0", active_link, forged[1]) \
        == "dropped"

    time.sleep(1.0)
    after = {unit: (console.run("write terminal"), role(console),
                    (pair.tmp_path / f"{names[id(console)]}.cfg").read_bytes())
             for unit, console in (("active", active), ("standby", standby))}
    assert after == before
    assert "bad MAC" in standby.run("show syslog")

    # The real active's `write standby` still copies and saves.
    out = active.run("write standby")
    assert "[OK] saved on the standby" in out, out
    saved = (pair.tmp_path / f"{names[id(standby)]}.cfg").read_text()
    assert "name 203.0.113.51 current" in saved and "evil" not in saved
    assert f"failover ip address {active_link}" in saved
    assert "failover key hashed " in saved and KEY not in saved
