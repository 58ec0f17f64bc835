"""UDP flows of the fast paths across a takeover of the failover pair (issue 25 item 6;
docs/design.rst, "Fast path"): conntrackd replicates their conntrack entries to the
standby like TCP connections' (its external cache lists them before the crash), and
after the active box dies the same flows, sent again from the same 5-tuples, are
answered by the same reals through the new active: the engine-decided one without a
new decision, the kernel-decided roundrobin one although its flows come back in the
opposite order (a fresh counter would give every one of them the other real)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_failover_netns import wait_for
from tests import test_failover_traffic_netns as traffic
from tests.test_failover_traffic_netns import Running, pair
from tests.test_udp_fastpath_netns import NAMED_CLIENT, NAMED_SERVER

pytestmark = pytest.mark.netns
__all__ = ["pair"]  # the fixture, imported so pytest finds it here

FAST = "192.0.2.40"       # a udp virtual on the engine-decided fast path
KERNEL = "192.0.2.41"     # one decided in the kernel, roundrobin over two reals
PORT = 5400
R12, R13, R14 = "203.0.113.12", "203.0.113.13", "203.0.113.14"
UDP_LINES = [f"real {R12}:0:0:udp", f"real {R13}:0:0:udp", f"real {R14}:0:0:udp",
             f"virtual {FAST}:{PORT}:0:udp", f"bind {FAST}:{PORT}:0:udp {R12}:0:0:udp",
             f"fastpath {FAST}:{PORT}:0:udp", f"virtual {KERNEL}:{PORT}:0:udp",
             f"predictor {KERNEL}:{PORT}:0:udp roundrobin",
             f"bind {KERNEL}:{PORT}:0:udp {R13}:0:0:udp {R14}:0:0:udp",
             f"fastpath {KERNEL}:{PORT}:0:udp kernel"]


def ask(lab, vip: str, pairs: list[str]) -> dict[str, str]:
    """{source#port: "real vip:port exact"}, one datagram per fixed 5-tuple."""
    done = lab.run_in(lab.client_ns, [sys.executable, "-c", NAMED_CLIENT, vip, str(PORT), "8",
                                      *pairs])
    assert done.returncode == 0, done.stderr
    return dict(line.split(" ", 1) for line in done.stdout.splitlines())


def external_cache(lab, unit: str) -> str:
    """What the unit's conntrackd holds from the other unit (`conntrackd -e`)."""
    ns = lab.unit_ns[unit]
    inode = subprocess.run(["ip", "netns", "exec", ns, "stat", "-L", "-c", "%i",
                            "/proc/self/ns/net"], capture_output=True, text=True,
                           check=True).stdout.strip()
    [conf] = [p for d in Path("/run").glob(f"localdirector-*-{inode}")
              for p in d.rglob("conntrackd.conf")]
    done = lab.run_in(ns, ["conntrackd", "-C", str(conf), "-e"])
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_udp_flows_reach_the_standby_and_keep_their_reals_after_a_crash(
        pair: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    # Both units boot test_failover_traffic_netns's configuration with udp virtuals added.
    monkeypatch.setattr(traffic, "FAST_LINES", [*traffic.FAST_LINES, *UDP_LINES])
    running, lab = pair, pair.lab
    for real in (R12, R13, R14):
        lab.popen_in(lab.real_ns[real], [sys.executable, "-c", NAMED_SERVER, real, str(PORT),
                                         real])
    time.sleep(0.5)
    active, standby = running.up()
    fast_pairs = [f"198.51.100.2#{43000 + i}" for i in range(4)]
    kernel_pairs = [f"198.51.100.2#{44000 + i}" for i in range(8)]
    before_fast = ask(lab, FAST, fast_pairs)
    before_kernel = ask(lab, KERNEL, kernel_pairs)
    assert all(got == f"{R12} {FAST}:{PORT} True" for got in before_fast.values()), before_fast
    assert sorted(got.split()[0] for got in before_kernel.values()) == [R13] * 4 + [R14] * 4

    def replicated() -> bool:
        cache = external_cache(lab, standby)
        return all(f"sport={p.split('#')[1]} dport={PORT}" in cache
                   for p in fast_pairs + kernel_pairs)

    wait_for(replicated, "the udp flows' entries in the standby's conntrackd cache")
    running.crash(active)
    wait_for(lambda: running.roles()[standby] == "Active", "the standby to take over")
    # The same flows again, the kernel-decided ones in the opposite order.
    after_kernel = ask(lab, KERNEL, kernel_pairs[::-1])
    assert after_kernel == before_kernel
    assert ask(lab, FAST, fast_pairs) == before_fast
    table = lab.run_in(lab.unit_ns[standby], ["conntrack", "-L", "-p", "udp"]).stdout
    assert sum(f"dport={PORT} " in line for line in table.splitlines()) >= 12, table
