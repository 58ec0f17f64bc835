"""The fast path decided in the kernel (`fastpath VIRTUAL kernel`) with real TCP stacks.

The appliance runs as an operator starts it; nft rules compiled from the model pick the
instance and the real, so no packet of these virtuals reaches the queue. What the
clients receive (which real answered, from which client address) is the evidence,
checked against `show` output, whose counts come from the kernel's counters. Every test
ends by making sure the appliance took its table out.
"""

from __future__ import annotations

import collections
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from appliance_driver import (Appliances, FIG1_CONFIG, GENERAL, PREFERRED, R11, R12, R13,
                              R14, R15, UNWELCOME, VIP, Console, appliance, bodies,
                              fig1_pools_answer, held_bodies, hold, name, simple_config)

from localdirector.lab import Lab
from localdirector.lab.driver import ClientError
from localdirector.lab.flows import answered_by

pytestmark = pytest.mark.netns
__all__ = ["appliance"]  # the fixture, imported so pytest finds it here

KERNEL = f"fastpath {VIP}:80 kernel"


def nft_tables(lab: Lab) -> str:
    proc = lab.run_in(lab.director_ns, ["nft", "list", "tables"])
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def nft_table(lab: Lab) -> str:
    table = next(line.split()[-1] for line in nft_tables(lab).splitlines()
                 if "localdirector" in line)
    proc = lab.run_in(lab.director_ns, ["nft", "list", "table", "ip", table])
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture
def boot(lab: Lab, appliance: Appliances) -> Iterator[Appliances]:
    """`appliance`, plus: on the way out every console exits and our nft table is gone."""
    yield appliance
    appliance.exit_all()
    assert "localdirector" not in nft_tables(lab)


def totals(console: Console, *reals: str) -> list[int]:
    return [console.real(r)[2] for r in reals]


def wait_totals(console: Console, reals: tuple[str, ...], want: list[int]) -> None:
    """The kernel's counters reach the model at the rule sync's next wake-up (<= 2 s)."""
    console.wait_for(lambda: totals(console, *reals) == want, timeout=6,
                     what=f"totals {want} of {reals}")


def nothing_queued(console: Console) -> None:
    """No packet of a kernel-decided virtual reached the queue or the engine."""
    assert console.kernel_line()["queued"] == 0
    stats = console.statistics()
    assert stats["conns created"] == 0 and stats["fastpath conns"] == 0


def configure(console: Console, lab: Lab, *lines: str, until: str) -> None:
    """Type `lines`, then wait until the kernel's table holds `until` (the rule sync
    applies a change some 50 ms later)."""
    console.configure(*lines)
    console.wait_for(lambda: until in nft_table(lab), timeout=5, what=until)


def test_fig1_bind_ids_steer_by_source_in_the_kernel(lab: Lab, boot) -> None:
    """FIG. 1's three pools, each client network to its own instance (198.51.100.0/24
    preferred, 198.18.0.0/24 unwelcome, the rest general), port 80 translated to 8001,
    the reals seeing the clients' own addresses; counts exact, the queue never used."""
    lines = FIG1_CONFIG.read_text().splitlines()
    console = boot([*lines, *(f"predictor {VIP}:80:{b} roundrobin" for b in (0, 1, 2)),
                    KERNEL])
    fig1_pools_answer(lab)
    # 16 requests per pool, one more from a preferred client; roundrobin is exact.
    wait_totals(console, (R12, R13, R15), [8, 8, 16])
    assert sorted([console.real(R14)[2], console.real(R11, 8001)[2]]) == [8, 9]
    virtuals = console.rows("virtual")
    assert [virtuals[f"{VIP}:80:{b}:tcp"][4] for b in (0, 1, 2)] == ["16", "17", "16"]
    assert {row[-1] for row in virtuals.values()} == {"kernel"}
    assert virtuals[f"{VIP}:80:0:tcp"][2] == "-"   # live gauges are not known
    assert "fast path, decided in the kernel" in console.run(f"show virtual {VIP}:80 detail")
    nothing_queued(console)
    # The source map: the /24s to their instances, everything else to Bind ID 0.
    table = nft_table(lab)
    assert "198.51.100.0/24 : goto i_192_0_2_10_80_1" in table
    assert "198.18.0.0/24 : goto i_192_0_2_10_80_2" in table
    assert "0.0.0.0-198.17.255.255 : goto i_192_0_2_10_80_0" in table
    assert "Not listed: connections of virtuals decided in the kernel" in console.run(
        "show conns")
    running = console.run("show running-config")
    assert f"fastpath {VIP}:80 kernel" in running


def test_roundrobin_weighted_health_backup_and_refusal(lab: Lab, boot) -> None:
    console = boot(simple_config(VIP, "roundrobin", [R12, R13, R14], f"real {R15}", KERNEL))
    general = lab.client_addresses[GENERAL]
    url = f"http://{VIP}/"

    def spread(count: int) -> collections.Counter[str]:
        return collections.Counter(bodies(lab.get_many(url, general, count=count)))

    assert spread(30) == {name(R12): 10, name(R13): 10, name(R14): 10}
    wait_totals(console, (R12, R13, R14), [10, 10, 10])
    assert console.rows("virtual")[f"{VIP}:80:0:tcp"][4] == "30"

    # Weighted 3:1:1: exact shares per cycle of five.
    configure(console, lab, f"predictor {VIP}:80 weighted", f"weight {R12} 3",
              until="numgen inc mod 5")
    assert spread(50) == {name(R12): 30, name(R13): 10, name(R14): 10}
    wait_totals(console, (R12, R13, R14), [40, 20, 20])

    # A real out of service gets no new connection.
    configure(console, lab, f"out-of-service {R13}", until="numgen inc mod 4")
    assert spread(20) == {name(R12): 15, name(R14): 5}

    # No primary can serve: the backup real takes every connection.
    configure(console, lab, f"backup {R14} {R15}", f"out-of-service {R12}",
              f"out-of-service {R14}", until=f"dnat to {R15}")
    assert spread(4) == {name(R15): 4}
    wait_totals(console, (R12, R13, R14, R15), [55, 20, 25, 4])

    # Nothing can serve: the SYN is answered with a RST (connection refused at once,
    # not a timeout), counted as the virtual's no-real drop.
    configure(console, lab, f"out-of-service {R15}", until="reject with tcp reset")
    with pytest.raises(ClientError) as refused:
        lab.client_get(url, source=general[0], timeout=5)
    assert refused.value.returncode == 7, refused.value.stderr   # couldn't connect
    detail = f"show virtual {VIP}:80 detail"
    console.wait_for(lambda: "0 synguard, 1 no real" in console.run(detail), timeout=6,
                     what="the refusal counted")
    assert console.rows("virtual")[f"{VIP}:80:0:tcp"][4] == "104"
    nothing_queued(console)


def test_ineligible_change_is_refused_on_the_console(lab: Lab, boot) -> None:
    """A change the kernel could not decide is refused with its reason and changes
    nothing, in the model or in the kernel."""
    console = boot(simple_config(VIP, "roundrobin", [R12, R13], KERNEL))
    before = nft_table(lab)
    console.run("configure terminal")
    refused = console.run(f"maxconns {R12} 10")
    console.run("end")
    assert refused.strip().splitlines()[-1] == (
        f"% real {R12}:0:0:tcp has maxconns: the kernel does not count open connections")
    assert console.real(R12)[0] == "IS" and "maxconns" not in console.run(
        "show running-config")
    assert nft_table(lab) == before
    assert bodies(lab.get_many(f"http://{VIP}/", lab.client_addresses[PREFERRED][:2])) == [
        name(R12), name(R13)]
    # The unwelcome network has no instance of its own here: Bind ID 0 serves it.
    assert lab.client_get(f"http://{VIP}/",
                          source=lab.client_addresses[UNWELCOME][0]).strip() == name(R12)


HELD_CLIENT = """
import socket, sys
s = socket.socket()
s.bind((sys.argv[1], 40123))
s.connect((sys.argv[2], 80))
s.sendall(b"GET /hold/2 HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
print(s.recv(4096).decode().split("\\r\\n")[0], flush=True)
s.settimeout(6)
try:
    print(repr(s.recv(4096)), flush=True)
except OSError as exc:
    print(type(exc).__name__, flush=True)
"""


def test_a_real_packet_conntrack_does_not_know_is_dropped_not_leaked(lab: Lab, boot) -> None:
    """A connection whose conntrack entry is gone (opened by a failover peer that died,
    or from before a restart): the real's next segment is no reply conntrack can
    translate. Forwarded it would reach the client from the real's own address; it is
    dropped and counted (`untracked replies dropped`), and no packet from a real's
    address reaches the client segment."""
    console = boot(simple_config(VIP, "roundrobin", [R12], KERNEL))
    client = lab.client_addresses[GENERAL][0]
    leak = ["iptables", "-I", "INPUT", "-s", "203.0.113.0/24", "-j", "DROP"]
    assert lab.run_in(lab.client_ns, leak).returncode == 0
    proc = lab.popen_in(lab.client_ns, [sys.executable, "-c", HELD_CLIENT, client, VIP],
                        stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "HTTP/1.1 200 OK"   # headers; body in 2 s
    forget = (f"from localdirector.dataplane.conntrack import Conntrack; "
              f"from localdirector.model.addr import parse_ip; "
              f"print(Conntrack().delete(parse_ip('{client}'), 40123, parse_ip('{VIP}'), 80))")
    done = lab.run_in(lab.director_ns, [sys.executable, "-c", forget])
    assert done.stdout.strip() == "True", done.stderr
    out, _ = proc.communicate(timeout=15)
    assert out.strip() != "b'held\\n'"          # the body could not be translated
    counted = lab.run_in(lab.client_ns, ["iptables", "-nvxL", "INPUT"]).stdout
    leaked = int(next(line.split()[0] for line in counted.splitlines()
                      if "203.0.113.0/24" in line))
    assert leaked == 0, counted
    console.wait_for(lambda: console.statistics_and_lines()[1]["Fast path"].get(
        "untracked replies dropped", 0) > 0, timeout=8, what="the real's segment dropped")
    # Both ends would retransmit for minutes into the next tests (the client's FIN,
    # reaching a director between two appliances, draws an ICMP error the next one
    # queues): end them.
    for ns, peer in ((lab.real_ns[R12], client), (lab.client_ns, VIP)):
        lab.run_in(ns, ["ss", "-K", "dst", peer])
        left = lab.run_in(ns, ["ss", "-Htn", "dst", peer]).stdout
        assert not left.strip(), left


def test_maglev_flows_agree_across_processes_and_a_removal_moves_about_a_third(
        lab: Lab, boot) -> None:
    """`predictor maglev` decided in the kernel: the same 5-tuples reach the same reals
    from a freshly started appliance (the table and the jhash seed come from the
    configuration alone); a real taken out moves its own flows and almost no others, in
    one nft transaction that leaves open connections, to every real, alone; back in
    service, every flow is where it was."""
    config = simple_config(VIP, "maglev", [R12, R13, R14], KERNEL)
    console = boot(config)
    sources = lab.client_addresses[GENERAL]
    first = answered_by(lab, VIP, sources, 90)
    assert set(first.values()) == {name(R12), name(R13), name(R14)}, first
    wait_totals(console, (R12, R13, R14), [list(first.values()).count(name(r))
                                            for r in (R12, R13, R14)])
    nothing_queued(console)
    console.exit()
    console = boot(config)
    assert answered_by(lab, VIP, sources, 90) == first
    held = hold(lab, f"http://{VIP}/hold/5", 9, sources[0])
    time.sleep(1)   # all nine open (headers answered) before the change
    console.configure(f"out-of-service {R13}")
    console.wait_for(lambda: f"dnat to {R13}" not in nft_table(lab), timeout=5,
                     what="R13 gone from the table")
    after = answered_by(lab, VIP, sources, 90)
    leaving = [f for f, real in first.items() if real == name(R13)]
    others_moved = [f for f, real in first.items() if real != name(R13) and after[f] != real]
    assert 15 <= len(leaving) <= 45 and name(R13) not in after.values(), after
    assert len(others_moved) <= 3, others_moved
    # The held connections (some of them to R13) all completed through the change.
    assert held_bodies(held) == ["held\n"] * 9
    print(f"\nmaglev in the kernel: {len(leaving)} of 90 flows left with R13, "
          f"{len(others_moved)} others moved")
    configure(console, lab, f"in-service {R13}", until=f"dnat to {R13}")
    assert answered_by(lab, VIP, sources, 90) == first


def test_sticky_in_the_kernel_keeps_a_client_on_its_real(lab: Lab, boot) -> None:
    """Roundrobin alternates; with sticky each client address keeps the real of its
    first connection, remembered by the kernel in a set per real."""
    boot(simple_config(VIP, "roundrobin", [R12, R13], f"sticky {VIP}:80 5", KERNEL))
    sources = lab.client_addresses[GENERAL][:4]
    got = answered_by(lab, VIP, sources, 24)
    per_source = {s: {real for flow, real in got.items() if flow.startswith(f"{s}:")}
                  for s in sources}
    assert all(len(reals) == 1 for reals in per_source.values()), per_source
    assert {r for reals in per_source.values() for r in reals} == {name(R12), name(R13)}
    assert "k_192_0_2_10_80_0__203_0_113_12_0_0_5" in nft_table(lab)


def test_a_deleted_kernel_table_comes_back_and_serves(lab: Lab, boot) -> None:
    """Another program deletes the appliance's nft table (a `nft flush ruleset` of a
    careless script): the next check finds it gone though the appliance itself changed
    nothing (the namespace's nf_tables generation moved, so the table is listed, not
    taken on trust), puts it back whole, counts a repair, and the virtual serves again
    from the same reals, Maglev's flows where they were."""
    console = boot(simple_config(VIP, "maglev", [R12, R13, R14], KERNEL))
    sources = lab.client_addresses[GENERAL]
    first = answered_by(lab, VIP, sources, 30)
    table = next(line.split()[-1] for line in nft_tables(lab).splitlines()
                 if "localdirector" in line)
    time.sleep(2.5)   # at least one check found the table intact: it is now trusted
    deleted = lab.run_in(lab.director_ns, ["nft", "delete", "table", "ip", table])
    assert deleted.returncode == 0, deleted.stderr
    console.wait_for(lambda: table in nft_tables(lab), timeout=6, what="the table back")
    assert console.statistics_and_lines()[1]["Rules"][
        "repairs (rules lost and reinstalled)"] == 1
    assert answered_by(lab, VIP, sources, 30) == first
