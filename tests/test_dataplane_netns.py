"""The appliance as an operator runs it, with real TCP stacks on both sides.

Each test starts ``python -m localdirector --config CFG --queue N`` inside the lab's
director namespace on a pseudo-terminal (pexpect), drives it with shell commands, and
sends traffic only from the lab's client namespace. What a client receives (which real
answered, byte-exact bodies) is the evidence; `show` output is checked against it.

One lab per module (conftest's ``lab`` fixture); every test boots its own appliance from
its own startup-config, and on the way out checks that the appliance removed all of its
netfilter rules, so no test inherits another's state.
"""

from __future__ import annotations

import collections
import hashlib
import os
import re
import signal
import time

import pexpect
import pytest
from appliance_driver import (FIG1_CONFIG, GENERAL, PREFERRED, R11, R12, R13, R14, R15,
                              QUEUE, SETTLE, UNWELCOME, VIP, appliance, bodies, held_bodies,
                              hold, name, raw_table, simple_config,
                              ditched_then_retried, fig1_pools_answer,
                              ten_megabytes_each_way)

from localdirector.lab import Lab, pattern_digest

pytestmark = pytest.mark.netns
__all__ = ["appliance"]  # the fixture, imported so pytest finds it here


# --------------------------------------------------------------------------- tests


def test_fig1_client_address_selects_the_pool(lab: Lab, appliance) -> None:
    """FIG. 1: one VIP, three pools chosen by the client's source address; preferred
    clients reach 203.0.113.11 on port 8001 through VIP port 80."""
    console = appliance(FIG1_CONFIG)
    fig1_pools_answer(lab)
    hits = {cells[1]: int(cells[3]) for cells in console.rows("assign").values()}
    assert hits == {"198.51.100.0": 2 * 8 + 1, "198.18.0.0": 2 * 8}
    pools = {PREFERRED: [(R14, 0), (R11, 8001)], UNWELCOME: [(R15, 0)],
             GENERAL: [(R12, 0), (R13, 0)]}
    totals = {pool: sum(console.real(*real)[2] for real in reals)
              for pool, reals in pools.items()}
    assert totals == {PREFERRED: 2 * 8 + 1, UNWELCOME: 2 * 8, GENERAL: 2 * 8}


def test_port_translation_80_to_8001(lab: Lab, appliance) -> None:
    """The client talks to VIP:80 only (its TCP stack would reset a segment from
    anywhere else); the real serves it on 8001."""
    console = appliance(simple_config(VIP, "roundrobin", [f"{R11}:8001"]))
    source = lab.client_addresses[GENERAL][0]
    assert lab.client_get(f"http://{VIP}/", source=source).strip() == name(R11, 8001)
    held = hold(lab, f"http://{VIP}/hold/2", 1, source)
    console.wait_for(lambda: console.real(R11, 8001)[1] == 1, what="held connection")
    conns = console.run(f"show conns {VIP} detail")
    assert f"-> {VIP}:80" in conns and f"at {R11}:8001" in conns, conns
    assert held_bodies(held) == ["held\n"]


def test_roundrobin_spreads_exactly(lab: Lab, appliance) -> None:
    console = appliance(simple_config(VIP, "roundrobin", [R12, R13, R14]))
    got = collections.Counter(bodies(lab.get_many(f"http://{VIP}/",
                                                  lab.client_addresses[GENERAL], count=30)))
    assert got == {name(R12): 10, name(R13): 10, name(R14): 10}
    assert [console.real(r)[2] for r in (R12, R13, R14)] == [10, 10, 10]


def test_leastconns_avoids_reals_holding_connections(lab: Lab, appliance) -> None:
    console = appliance(simple_config(VIP, "leastconns", [R12, R13, R14]))
    held = hold(lab, f"http://{VIP}/hold/3", 2, lab.client_addresses[GENERAL][0])
    console.wait_for(lambda: sorted(console.real(r)[1] for r in (R12, R13, R14)) == [0, 1, 1],
                     what="two held connections on two reals")
    idle = next(r for r in (R12, R13, R14) if console.real(r)[1] == 0)
    source = lab.client_addresses[GENERAL][1]
    assert lab.client_get(f"http://{VIP}/", source=source).strip() == name(idle)
    assert held_bodies(held) == ["held\n", "held\n"]


@pytest.mark.parametrize("fault", ["refuse", "blackhole"])
def test_failing_real_is_bypassed_failed_and_recovers(lab: Lab, appliance, fault: str) -> None:
    """`refuse`: the listener is gone, the real's kernel answers RST; `blackhole`: its
    packets vanish. Clients never notice beyond a SYN retransmission; after `threshold`
    ditched connections the real is FAILED, after `retry` seconds it is tested, and an
    answer puts it back in service."""
    bad = R13
    console = appliance(simple_config(VIP, "roundrobin", [R12, bad],
                                      f"threshold {bad} 2", f"reassign {bad} 1",
                                      f"retry {bad} 2"))
    stats = ditched_then_retried(lab, console, fault, bad, R12, timeout=8)
    if fault == "refuse":
        assert stats["reset-absorbed"] == 2


def test_maxconns_refuses_beyond_the_limit(lab: Lab, appliance) -> None:
    console = appliance(simple_config(VIP, "leastconns", [R12, R13],
                                      f"maxconns {R12} 1", f"maxconns {R13} 1"))
    held = hold(lab, f"http://{VIP}/hold/3", 2, lab.client_addresses[GENERAL][0])
    console.wait_for(lambda: [console.real(r)[1] for r in (R12, R13)] == [1, 1],
                     what="both reals at maxconns")
    refused = lab.get_many(f"http://{VIP}/", [lab.client_addresses[GENERAL][1]], timeout=0.8)
    assert not refused[0].ok
    assert console.statistics()["no-real"] >= 1
    assert held_bodies(held) == ["held\n", "held\n"]
    time.sleep(SETTLE)  # the held connections linger, still counted, then go
    assert bodies(lab.get_many(f"http://{VIP}/", [lab.client_addresses[GENERAL][1]]))


def test_out_of_service_real_drains(lab: Lab, appliance) -> None:
    console = appliance(simple_config(VIP, "roundrobin", [R12, R13]))
    held = hold(lab, f"http://{VIP}/hold/3", 1, lab.client_addresses[GENERAL][0])
    console.wait_for(lambda: console.real(R12)[1] == 1, what="held connection on R12")
    console.configure(f"out-of-service {R12}")
    got = bodies(lab.get_many(f"http://{VIP}/", lab.client_addresses[GENERAL], count=6))
    assert got == [name(R13)] * 6
    assert held_bodies(held) == ["held\n"]
    assert console.real(R12)[0] == "OOS"


def test_ten_megabytes_each_way_byte_exact(lab: Lab, appliance) -> None:
    appliance(simple_config(VIP, "roundrobin", [R12, f"{R11}:8001"]))
    ten_megabytes_each_way(lab)


def test_bulk_crosses_the_queue_in_gso_super_packets_byte_exact(lab: Lab, appliance) -> None:
    """32 MiB down and 32 MiB up through a userspace virtual, byte-exact: the worker got
    GSO super-packets far above the MTU (up to 64 KB a queue round trip), translated
    and handed back whole. Every packet of the lab's local TCP stacks reaches the queue
    with its checksum left to the hardware: the SYNs passing the engine's checksum check
    and nothing dropped show the worker finished them."""
    console = appliance(simple_config(VIP, "roundrobin", [R12]))
    size = 32 * 1024 * 1024
    source = lab.client_addresses[GENERAL][0]
    down = lab.get_many(f"http://{VIP}/bytes/{size}", [source], count=1, digest=True,
                        timeout=120)
    assert [(r.ok, r.length, r.sha256) for r in down] == [(True, size, pattern_digest(size))]
    upload = os.urandom(size)
    answer = lab.client_post(f"http://{VIP}/sha256", upload, source=source, timeout=120)
    assert answer.strip() == hashlib.sha256(upload).hexdigest()
    shown = re.search(r"Queue: +(\d+) GSO super-packets, longest packet (\d+) bytes",
                      console.run("show statistics"))
    assert shown is not None
    gso, longest = map(int, shown.groups())
    assert gso > 100 and 10_000 < longest <= 65531
    stats = console.statistics()
    assert (stats["conns created"], stats["dropped"]) == (2, 0)


def test_connection_counts_return_to_zero(lab: Lab, appliance) -> None:
    console = appliance(simple_config(VIP, "leastconns", [R12, R13, R14]))
    results = lab.get_many(f"http://{VIP}/", lab.all_client_addresses, count=300,
                           concurrency=8)
    assert len(bodies(results)) == 300
    assert sum(console.real(r)[2] for r in (R12, R13, R14)) == 300

    def all_zero() -> bool:
        reals = [console.real(r)[1] for r in (R12, R13, R14)]
        virtual = int(console.rows("virtual")[f"{VIP}:80:0:tcp"][2])
        return reals == [0, 0, 0] and virtual == 0

    console.wait_for(all_zero, timeout=SETTLE + 2, what="connection counts back to 0")
    assert "No connections" in console.run("show conns")
    stats = console.statistics()
    assert stats["conns created"] == stats["conns closed"] == 300
    assert stats["dropped"] == 0


def test_rules_follow_the_model_and_reload(lab: Lab, appliance) -> None:
    """Rules track `conf t` edits; `reload` rebuilds the model from the startup-config
    and the running data plane adopts it; exactly one jump into our chain at any time."""
    other = "192.0.2.20"
    console = appliance(simple_config(VIP, "roundrobin", [R12]))
    assert raw_table(lab).count("-A PREROUTING -j LOCALDIRECTOR") == 1
    assert f"--queue-num {QUEUE} --queue-bypass" in raw_table(lab)
    console.configure(f"real {R14}", f"virtual {other}:80", f"bind {other}:80 {R14}")
    console.wait_for(lambda: f"-d {other}/32" in raw_table(lab), what="rule for new VIP")
    assert lab.client_get(f"http://{other}/").strip() == name(R14)
    console.reload()
    console.wait_for(lambda: f"-d {other}/32" not in raw_table(lab), what="reload")
    console.wait_for(lambda: "1 reloads" in console.run("show statistics"), what="reload")
    assert raw_table(lab).count("-A PREROUTING -j LOCALDIRECTOR") == 1
    assert lab.client_get(f"http://{VIP}/").strip() == name(R12)


def test_restart_after_crash_replaces_stale_rules(lab: Lab, appliance) -> None:
    """A crash leaves the rules (with --queue-bypass traffic passes untranslated); the
    next start replaces them; SIGTERM, like `exit`, removes them."""
    config = simple_config(VIP, "roundrobin", [R12])
    crashed = appliance(config)
    crashed.kill()
    assert raw_table(lab).count("-A PREROUTING -j LOCALDIRECTOR") == 1
    console = appliance(config)
    assert raw_table(lab).count("-A PREROUTING -j LOCALDIRECTOR") == 1
    assert lab.client_get(f"http://{VIP}/").strip() == name(R12)
    console.child.kill(signal.SIGTERM)
    console.child.expect(pexpect.EOF)
    console.child.close()
    assert console.child.exitstatus == 143
    assert "LOCALDIRECTOR" not in raw_table(lab)
