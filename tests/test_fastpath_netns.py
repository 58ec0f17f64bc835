"""The kernel fast path (`fastpath VIRTUAL`) with real TCP stacks on both sides.

The appliance runs as an operator starts it (appliance_driver.py); the engine decides
each connection and conntrack NAT translates it. What the clients receive (which real,
byte-exact bodies) is the evidence, checked against `show` output; every test ends by
making sure the appliance took its chains out of the raw, mangle and nat tables.
"""

from __future__ import annotations

import collections
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from appliance_driver import (Appliances, FIG1_CONFIG, GENERAL, R11, R12, R13, R14, R15,
                              SETTLE, VIP, Side, appliance, bodies, held_bodies,
                              hold, name, simple_config,
                              ditched_then_retried, fig1_pools_answer,
                              ten_megabytes_each_way)
from test_ipv6_netns import UDP_CLIENT, UDP_ECHO

from localdirector.lab import Lab

pytestmark = pytest.mark.netns
__all__ = ["appliance"]  # the fixture, imported so pytest finds it here

FAST = f"fastpath {VIP}:80"


def iptables_save(lab: Lab, table: str) -> str:
    proc = lab.run_in(lab.director_ns, ["iptables-save", "-t", table])
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(params=["ipv4", "ipv6"])
def side(request: pytest.FixtureRequest, lab: Lab) -> Side:
    """The family a test runs in: an IPv6 virtual over the reals' IPv6 twins, with IPv6
    clients, takes the same checks as the IPv4 one (docs/design.rst, "Fast path")."""
    return Side(lab, request.param == "ipv6")


@pytest.fixture
def boot(lab: Lab, appliance: Appliances) -> Iterator[Appliances]:
    """`appliance`, plus: on the way out every console exits and none of our chains is
    left in any of the three tables the fast path uses (and, as `appliance` checks, no
    set of known clients)."""
    yield appliance
    appliance.exit_all()
    for table in ("raw", "mangle", "nat"):
        assert "LOCALDIRECTOR" not in iptables_save(lab, table), table


def test_fig1_pools_with_every_instance_on_the_fast_path(lab: Lab, boot) -> None:
    lines = FIG1_CONFIG.read_text().splitlines()
    console = boot([*lines, *(f"fastpath {VIP}:80:{bind}" for bind in (0, 1, 2))])
    fig1_pools_answer(lab)
    stats = console.statistics()
    assert stats["fastpath conns"] == stats["conns created"] == 3 * 16 + 1
    assert stats["translated in"] == stats["translated out"] == 0
    # The VIP and its reals are left to conntrack (raw only guards the VIP's SYNs); the
    # mark map covers every real.
    raw, nat = iptables_save(lab, "raw"), iptables_save(lab, "nat")
    assert not any(VIP in line and "-QUEUE" in line for line in raw.splitlines())
    assert not any(real in raw for real in (R11, R12, R13, R14, R15))
    assert re.search(r"--ctstate NEW -j LOCALDIRECTOR\d+-QUEUE", iptables_save(lab, "mangle"))
    assert nat.count("-j DNAT --to-destination") == 5
    assert f"--to-destination {R11}:8001" in nat


def test_port_translation_80_to_8001_in_the_kernel(lab: Lab, boot, side: Side) -> None:
    vip, real = side.vip, side.real(R11)
    console = boot(simple_config(vip, "roundrobin", [f"{real}:8001"], f"fastpath {vip}:80"))
    source = side.sources(GENERAL)[0]
    assert lab.client_get(f"http://{vip}/", source=source).strip() == side.name(R11, 8001)
    held = hold(lab, f"http://{vip}/hold/3", 1, source)
    console.wait_for(lambda: "FASTPATH" in console.run("show conns"), what="held connection")
    conns = console.run(f"show conns {vip} detail")
    assert f"-> {vip}:80" in conns and f"at {real}:8001" in conns, conns
    assert "State FASTPATH, answered yes" in conns and "translated by the kernel" in conns
    assert held_bodies(held) == ["held\n"]


def test_roundrobin_exact_and_counts_back_to_zero(lab: Lab, boot, side: Side) -> None:
    vip, reals = side.vip, [side.real(r) for r in (R12, R13, R14)]
    console = boot(simple_config(vip, "roundrobin", reals, f"fastpath {vip}:80"))
    got = collections.Counter(bodies(lab.get_many(f"http://{vip}/", side.sources(GENERAL),
                                                  count=30, concurrency=3)))
    assert got == {side.name(R12): 10, side.name(R13): 10, side.name(R14): 10}
    assert [console.real(r)[2] for r in reals] == [10, 10, 10]
    assert int(console.rows("virtual")[f"{vip}:80:0:tcp"][4]) == 30   # total

    def all_zero() -> bool:
        virtual = int(console.rows("virtual")[f"{vip}:80:0:tcp"][2])
        return [console.real(r)[1] for r in reals] == [0, 0, 0] and virtual == 0

    console.wait_for(all_zero, timeout=SETTLE + 2, what="connection counts back to 0")
    assert "No connections" in console.run("show conns")
    stats = console.statistics()
    assert stats["conns created"] == stats["conns closed"] == stats["fastpath conns"] == 30
    assert stats["fastpath marked"] == 30 and stats["dropped"] == 0

    # Each connection: its SYN queued, its SYN-ACK and the second of its FINs copied
    # (iptables.end_rules; and both of two FINs that crossed, or one a busy machine
    # retransmitted after both): every copy the kernel's NFLOG rule counted reaches the
    # engine, none lost, and the counts above came back to zero on them.
    engine, kernel_copies, overruns = settled_copies(console)
    assert 60 <= engine == kernel_copies < 90 and overruns == 0
    kernel = console.kernel_line()
    assert kernel["queued"] == 30 and kernel["dropped (queue full)"] == 0


def settled_copies(console) -> tuple[int, int, int]:
    """(copies the engine took note of, the NFLOG rule's count, overruns), once the
    first two agree: the rule is counted at once, the engine's copy up to a batch later
    (nflog.FLUSH_CS)."""
    def copies() -> tuple[int, int, int]:
        table, lines = console.statistics_and_lines()
        fast = lines["Fast path"]
        return (table["fastpath copies"], fast["packets copied (NFLOG)"],
                fast["copy overruns"])

    console.wait_for(lambda: copies()[0] == copies()[1], what="every copy counted")
    return copies()


# A client that sends its request and its FIN at once, then reads the held answer.
HALF_CLOSE = """
import socket, sys
sock = socket.create_connection((sys.argv[1], 80), timeout=10, source_address=(sys.argv[2], 0))
sock.sendall(b"GET /hold/2 HTTP/1.0\\r\\nHost: vip\\r\\n\\r\\n")
sock.shutdown(socket.SHUT_WR)
answer = b""
while chunk := sock.recv(65536):
    answer += chunk
print(answer.split(b"\\r\\n\\r\\n", 1)[-1].decode())
"""


def test_a_half_closed_connection_counts_until_the_real_closes(lab: Lab, boot) -> None:
    """The client's FIN alone is not copied (the real has not sent one): the connection
    stays current while the real holds its answer; the real's FIN, the second, is
    copied and ends it. One SYN-ACK and one FIN copy, counts exact."""
    console = boot(simple_config(VIP, "roundrobin", [R12], FAST))
    client = lab.popen_in(lab.client_ns, [sys.executable, "-c", HALF_CLOSE, VIP,
                                          lab.client_addresses[GENERAL][0]],
                          stdout=subprocess.PIPE, text=True)
    console.wait_for(lambda: "FASTPATH" in console.run("show conns"), what="answered")
    time.sleep(0.5)   # the client's FIN is through, and would be copied within 10 ms
    assert console.real(R12)[1] == 1 and "FASTPATH" in console.run("show conns")
    out, _ = client.communicate(timeout=15)
    assert out.strip() == "held"
    console.wait_for(lambda: console.real(R12)[1] == 0, timeout=SETTLE + 2,
                     what="the real's FIN ending the connection")
    stats = console.statistics()
    assert stats["conns created"] == stats["conns closed"] == 1
    assert settled_copies(console) == (2, 2, 0)


def test_ten_megabytes_each_way_byte_exact(lab: Lab, boot, side: Side) -> None:
    vip = side.vip
    boot(simple_config(vip, "roundrobin", [side.real(R12), f"{side.real(R11)}:8001"],
                       f"fastpath {vip}:80"))
    ten_megabytes_each_way(lab, f"http://{vip}", side.sources(GENERAL)[0])


@pytest.mark.parametrize("fault", ["refuse", "blackhole"])
def test_a_real_that_stops_answering_is_bypassed_and_failed(lab: Lab, boot, fault: str,
                                                            side: Side) -> None:
    """`refuse`: its listener is gone and its RST to the SYN is absorbed; `blackhole`:
    its packets vanish, the retransmitted SYN triggers the reassign. Either way the
    conntrack entry toward it is deleted and the client's next SYN reaches the other
    real: clients see a delay, never an error, and after `threshold` the real FAILs."""
    bad = side.real(R13)
    console = boot(simple_config(side.vip, "roundrobin", [side.real(R12), bad],
                                 f"threshold {bad} 2", f"reassign {bad} 1", f"retry {bad} 2",
                                 f"fastpath {side.vip}:80"))
    stats = ditched_then_retried(lab, console, fault, R13, R12, timeout=10, side=side)
    assert stats["reset-absorbed" if fault == "refuse" else "reassigned"] == 2


def test_fast_and_userspace_virtuals_side_by_side(lab: Lab, boot) -> None:
    """One VIP on the fast path, another in userspace on a real of its own; a real may
    not answer for both, so binding one across is refused and changes nothing."""
    other = "192.0.2.20"
    console = boot([*simple_config(VIP, "roundrobin", [R12, R13], FAST),
                    f"real {R14}", f"virtual {other}:80", f"bind {other}:80 {R14}"])
    assert bodies(lab.get_many(f"http://{VIP}/", lab.client_addresses[GENERAL][:2])) == [
        name(R12), name(R13)]
    assert lab.client_get(f"http://{other}/").strip() == name(R14)
    console.run("configure terminal")
    refused = console.run(f"bind {other}:80 {R12}")
    console.run("end")
    assert refused.strip().splitlines()[-1] == (
        f"% {VIP}:80:0:tcp is on the fast path and {other}:80:0:tcp is not, but both send "
        f"connections to {R12} port 80")
    raw = iptables_save(lab, "raw")
    assert f"-s {R14}/32" in raw and f"-s {R12}/32" not in raw
    time.sleep(0.3)   # a rule sync, had the refused bind slipped through
    assert f"-s {R12}/32" not in iptables_save(lab, "raw")
    assert lab.client_get(f"http://{VIP}/").strip() in (name(R12), name(R13))


def test_an_ipv6_udp_flow_on_the_fast_path(lab: Lab, boot) -> None:
    """A UDP virtual over IPv6 on the fast path: the engine decides the flow's first
    datagram, conntrack translates the other 19 and their answers (each byte-exact,
    from the VIP), the real's first answer reaches the engine as a copy."""
    side = Side(lab, True)
    vip, reals = side.vip, [lab.reals6[r] for r in (R12, R13)]
    servers = [lab.popen_in(lab.real_ns[r], [sys.executable, "-c", UDP_ECHO, lab.reals6[r]])
               for r in (R12, R13)]
    try:
        for r, addr in zip((R12, R13), reals):
            lab.wait_udp(lab.real_ns[r], f"[{addr}]", 53)
        console = boot([*(f"real [{r}]:0:0:udp" for r in reals), f"virtual {vip}:53:0:udp",
                        f"bind {vip}:53:0:udp {' '.join(f'[{r}]:0:0:udp' for r in reals)}",
                        f"fastpath {vip}:53:0:udp"])
        source = side.sources(GENERAL)[0]
        done = lab.run_in(lab.client_ns, [sys.executable, "-c", UDP_CLIENT, vip[1:-1], source])
        assert done.returncode == 0, done.stderr
        ok, answered_by = done.stdout.split()
        assert (int(ok), answered_by) == (20, reals[0])
        console.wait_for(lambda: "REPLIED" in console.run("show conns"), what="the answer's copy")
        stats = console.statistics()
        assert stats["fastpath conns"] == stats["conns created"] == 1
        assert stats["translated in"] == stats["translated out"] == 0
        assert console.rows("real")[f"[{reals[0]}]:0:0:udp"][3] == "1"
    finally:
        for server in servers:
            server.kill()
            server.wait()
