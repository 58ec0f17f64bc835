"""Traffic across a takeover of the failover pair (docs/design.rst, "Failover"): the
failover lab (lab/pair.py) with both units running their data planes, real keepalived
and conntrackd, real TCP. Paced 10 MB downloads through a userspace virtual, a fast
path one and one decided in the kernel survive the crash of the active box (its links,
then its processes) and the kill of its appliance process alone, byte-exact; with
`no replicate` the userspace one breaks (the test discriminates); a graceful `failover
active` loses nothing; a split brain ends with the primary active and the returning
unit standing by."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from localdirector.lab import python_module
from localdirector.lab.main import find_example
from localdirector.lab.pair import (
    UNITS,
    FailoverPair,
    appliance_arguments,
    failover_lines,
)
from localdirector.lab.servers import pattern_digest
from tests.appliance_driver import QUEUE, Console, appliance_argv
from tests.conftest import require_netns
from tests.test_failover_netns import role, wait_for

pytestmark = pytest.mark.netns

SIZE = 10 * 1024 * 1024
RATE = 2_500_000          # bytes a second: a 10 MB download runs about 4 s
WAIT = 30.0               # generous: a loaded 2-core machine (wait_for's own: 20 s)
USERSPACE = "192.0.2.10"  # FIG. 1
FAST = "192.0.2.20"       # a fast-path virtual beside it
KERNEL = "192.0.2.30"      # the fast path decided in the kernel
FAST_LINES = ["real 203.0.113.12:8001:0:tcp is", f"virtual {FAST}:80:0:tcp is",
              f"bind {FAST}:80 203.0.113.12:8001", f"fastpath {FAST}:80",
              "real 203.0.113.13:8001", f"virtual {KERNEL}:80",
              f"predictor {KERNEL}:80 roundrobin", f"bind {KERNEL}:80 203.0.113.13:8001",
              f"fastpath {KERNEL}:80 kernel"]
PATHS = ("userspace", "fast path", "kernel")


class Running:
    """The pair with an appliance in each unit's namespace."""

    def __init__(self, lab: FailoverPair, tmp_path: Path) -> None:
        self.lab = lab
        self.tmp_path = tmp_path
        self.consoles: dict[str, Console] = {}

    def boot(self, unit: str) -> Console:
        config = self.tmp_path / f"{unit}.cfg"
        config.write_text(find_example().read_text() + "\n".join(
            [*FAST_LINES, *failover_lines(unit), ""]))
        self.consoles[unit] = Console(
            ["ip", "netns", "exec", self.lab.unit_ns[unit],
             *appliance_argv(config, "--queue", str(QUEUE), *appliance_arguments(unit))],
            timeout=30)
        return self.consoles[unit]

    def roles(self) -> dict[str, str]:
        return {unit: role(console) for unit, console in self.consoles.items()}

    def up(self) -> tuple[str, str]:
        """Both units booted, one active and the other standing by and hearing it."""
        for unit in UNITS:
            self.boot(unit)
        wait_for(lambda: sorted(self.roles().values()) == ["Active", "Standby"],
                 "one active and one standby unit")
        active = next(u for u, r in self.roles().items() if r == "Active")
        standby = next(u for u in UNITS if u != active)
        wait_for(lambda: "- Standby" in self.consoles[active].run("show failover")
                 .split("Other host:")[1], "the active to hear the standby")
        return active, standby

    def crash(self, unit: str) -> None:
        """The box dies (lab.crash: its cables, then every process)."""
        self.lab.crash(unit)
        self.consoles.pop(unit).close()

    def download(self, vip: str, patience: float = WAIT) -> subprocess.Popen[str]:
        """A paced download; the client gives up after `patience` seconds of silence."""
        return self.lab.popen_in(self.lab.client_ns, [
            *python_module("client", "get", "--url", f"http://{vip}/bytes/{SIZE}",
                           "--source", "198.51.100.2", "--digest", "--rate", str(RATE),
                           "--timeout", str(patience))],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def received(self, unit: str) -> int:
        found = re.search(r"(\d+) received", self.consoles[unit].run("show failover"))
        return int(found[1]) if found else 0

    def new_connection_works(self) -> bool:
        results = self.lab.get_many(f"http://{USERSPACE}/", ["198.19.0.2"], count=1,
                                    timeout=1.0)
        return all(r.ok for r in results)


def outcome(proc: subprocess.Popen[str]) -> dict[str, object]:
    out, err = proc.communicate(timeout=WAIT * 2)
    assert proc.returncode == 0, err
    return json.loads(out)["results"][0]


def byte_exact(result: dict[str, object]) -> bool:
    return result["error"] is None and result["length"] == SIZE \
        and result["sha256"] == pattern_digest(SIZE)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Running]:
    require_netns()
    lab = FailoverPair(prefix="ldfo")
    try:
        lab.build()
        yield Running(lab, tmp_path)
    finally:
        lab.destroy()


def _start_both(pair: Running, active: str) -> tuple[subprocess.Popen[str], ...]:
    """A download on each path running, the userspace one replicated to the standby."""
    standby = UNITS[1 - UNITS.index(active)]
    before = pair.received(standby)
    downloads = pair.download(USERSPACE), pair.download(FAST), pair.download(KERNEL)
    wait_for(lambda: pair.received(standby) > before, "the connection to be replicated")
    assert all(d.poll() is None for d in downloads), "finished before the takeover"
    return downloads


def test_kill_of_the_active_keeps_both_transfers(pair: Running) -> None:
    active, standby = pair.up()
    downloads = _start_both(pair, active)
    pair.crash(active)
    wait_for(lambda: pair.roles()[standby] == "Active", "the standby to take over")
    wait_for(pair.new_connection_works, "a new connection through the new active")
    for name, result in zip(PATHS, map(outcome, downloads)):
        assert byte_exact(result), (name, result)
    # The old active comes back as standby and gets every connection again.
    pair.lab.plug(active)
    pair.boot(active)
    wait_for(lambda: pair.roles()[active] == "Standby", "the returning unit to stand by")
    assert pair.roles()[standby] == "Active"


def test_kill_of_the_active_appliance_alone_keeps_both_transfers(pair: Running) -> None:
    """SIGKILL of the appliance process, not the box: its keepalived and conntrackd go
    with it (they held the gateways for a data plane that was gone), the standby takes
    over and both transfers finish byte-exact; a restart stands by."""
    active, standby = pair.up()
    downloads = _start_both(pair, active)
    pair.consoles.pop(active).kill()
    wait_for(lambda: pair.lab.holders() == [standby], "the standby to take the gateways")
    wait_for(pair.new_connection_works, "a new connection through the new active")
    for name, result in zip(PATHS, map(outcome, downloads)):
        assert byte_exact(result), (name, result)
    pair.boot(active)
    wait_for(lambda: pair.roles()[active] == "Standby", "the restarted unit to stand by")
    assert pair.lab.holders() == [standby]


def test_without_replicate_the_userspace_transfer_breaks(pair: Running) -> None:
    active, standby = pair.up()
    pair.consoles[active].configure("no replicate")
    wait_for(lambda: "replicate" not in pair.consoles[standby].run("write terminal")
             .split(), "the standby to follow `no replicate`")
    # Reset by the new active, or silent: either way it never completes.
    download = pair.download(USERSPACE, patience=5.0)
    wait_for(lambda: pair.consoles[active].statistics()["translated out"] >= 100,
             "the download to be under way")
    assert download.poll() is None
    pair.crash(active)
    wait_for(lambda: pair.roles()[standby] == "Active", "the standby to take over")
    assert not byte_exact(outcome(download))
    assert pair.received(standby) == 0


def test_graceful_takeover_loses_nothing(pair: Running) -> None:
    active, standby = pair.up()
    downloads = _start_both(pair, active)
    assert "now active" in pair.consoles[standby].run("failover active")
    wait_for(lambda: pair.roles()[active] == "Standby", "the old active to stand by")
    for name, result in zip(PATHS, map(outcome, downloads)):
        assert byte_exact(result), (name, result)


def test_split_brain_ends_with_the_primary_active(pair: Running) -> None:
    pair.up()
    pair.lab.cut_link()
    wait_for(lambda: set(pair.roles().values()) == {"Active"}, "both units to be active")
    assert sorted(pair.lab.holders()) == sorted(UNITS)
    pair.lab.cut_link(cut=False)
    wait_for(lambda: pair.roles() == {"primary": "Active", "secondary": "Standby"},
             "the primary to stay active and the secondary to stand by")
    wait_for(lambda: pair.lab.holders() == ["primary"], "the addresses on the primary only")
    # Replication resumes: a transfer through the primary reaches the secondary.
    download = pair.download(USERSPACE)
    wait_for(lambda: pair.received("secondary") > 0, "replication to the secondary")
    assert byte_exact(outcome(download))
