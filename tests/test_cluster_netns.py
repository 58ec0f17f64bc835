"""ECMP scale-out with real daemons (docs/design.rst, "Scale-out"): a router namespace
running BIRD 2, three directors announcing the VIP by ExaBGP, reals answering the
clients directly (dispatched), FIG. 1's two instances selected by the client's address
through any director. Short BGP timers (hold 3 s); every wait polls with generous limits.
The tests run in order on one cluster per path: the engine deciding every SYN, and the
kernel deciding and forwarding every packet (`fastpath VIRTUAL kernel`); the last ones
drain and kill directors."""

from __future__ import annotations

import collections
import json
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest
from appliance_driver import QUEUE, Console, appliance_argv, bodies, name

from localdirector.lab import python_module
from localdirector.lab.cluster import Cluster, director_link
from localdirector.lab.flows import answered_by

pytestmark = pytest.mark.netns

VIP = "192.0.2.10"
GENERAL_POOL = ("203.0.113.12", "203.0.113.13", "203.0.113.14")
PREFERRED_POOL = ("203.0.113.15",)


def config(cluster: Cluster, path: str) -> list[str]:
    reals = GENERAL_POOL + PREFERRED_POOL
    return [*(f"real {r}" for r in reals),
            f"virtual {VIP}:80", f"virtual {VIP}:80:1",
            f"bind {VIP}:80 {' '.join(GENERAL_POOL)}",
            f"bind {VIP}:80:1 {' '.join(PREFERRED_POOL)}",
            f"assign {VIP}:80:1 198.51.100.0 255.255.255.0",
            *(line for bind in ("", ":1") for line in (
                f"predictor {VIP}:80{bind} maglev", f"dispatched {VIP}:80{bind}",
                f"advertise {VIP}:80{bind}")),
            *([f"fastpath {VIP}:80 kernel"] if path == "kernel" else []),
            *cluster.bgp_lines()]


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


@pytest.fixture(scope="module", params=["engine", "kernel"])
def cluster(request, tmp_path_factory) -> Iterator[tuple[Cluster, list[Console]]]:
    from conftest import require_netns
    require_netns()
    built = Cluster(3)
    try:
        built.build()
        built.hold_vip(VIP)
    except Exception as exc:   # noqa: BLE001
        built.destroy()
        pytest.fail(f"cluster build failed: {exc}", pytrace=False)
    path = tmp_path_factory.mktemp("cluster") / "startup-config"
    path.write_text("\n".join(config(built, request.param)) + "\n")
    consoles: list[Console] = []
    try:
        for ns in built.director_nss:
            consoles.append(Console(["ip", "netns", "exec", ns,
                                     *appliance_argv(path, "--queue", str(QUEUE))]))
            assert "% " not in consoles[-1].boot_messages, consoles[-1].boot_messages
        yield built, consoles
    finally:
        for console in consoles:
            if console.child.isalive():
                console.exit()
        built.destroy()


def test_announced_after_start_in_birds_table(cluster) -> None:
    lab, consoles = cluster
    everyone = {director_link(i) for i in (1, 2, 3)}
    wait_until(lambda: lab.bird_next_hops(VIP) == everyone, 30, "three BGP next hops")
    wait_until(lambda: lab.kernel_next_hops(VIP) == everyone, 10, "an ECMP kernel route")
    assert "announced" in consoles[0].run("show bgp")


def test_fig1_pools_through_any_director(cluster) -> None:
    lab, consoles = cluster
    general = collections.Counter(bodies(lab.get_many(
        f"http://{VIP}/", lab.client_addresses["general"] + lab.client_addresses["unwelcome"],
        count=60, concurrency=4)))
    assert set(general) == {name(r) for r in GENERAL_POOL}, general
    preferred = collections.Counter(bodies(lab.get_many(
        f"http://{VIP}/", lab.client_addresses["preferred"], count=30, concurrency=4)))
    assert set(preferred) == {name(r) for r in PREFERRED_POOL}, preferred
    if kernel(consoles):
        # No packet for the engine; the kernel's counters, folded every 2 s, count them.
        assert all(c.statistics()["conns created"] == 0 for c in consoles)
        wait_until(lambda: sum(accepted(c) for c in consoles) == 90, 6, "90 counted")
        created = [accepted(c) for c in consoles]
    else:
        created = [c.statistics()["conns created"] for c in consoles]
    assert sum(created) == 90 and all(n > 0 for n in created), created


def kernel(consoles: list[Console]) -> bool:
    return consoles[0].rows("virtual")[f"{VIP}:80:0:tcp"][-1] == "kernel"


def accepted(console: Console) -> int:
    """Connections a director gave a real (both instances)."""
    rows = console.rows("virtual")
    return sum(int(rows[f"{VIP}:80:{b}:tcp"][4]) for b in (0, 1))


def test_every_director_sends_a_flow_to_the_same_real(cluster) -> None:
    """The same 5-tuples through d1 alone, then d2 alone: flow by flow the same real
    (Maglev from the configuration alone; in the kernel, jhash with the seed of the
    virtual's identity)."""
    lab, consoles = cluster
    sources = list(lab.client_addresses["general"] + lab.client_addresses["unwelcome"])
    seen = []
    for alone in (0, 1):
        for i, c in enumerate(consoles):
            c.configure("no bgp drain" if i == alone else "bgp drain")
        wait_until(lambda: lab.kernel_next_hops(VIP) == {director_link(alone + 1)}, 20,
                   f"d{alone + 1} alone")
        seen.append(answered_by(lab, VIP, sources, 60))
    for c in consoles:
        c.configure("no bgp drain")
    wait_until(lambda: len(lab.kernel_next_hops(VIP)) == 3, 20, "all three back")
    assert seen[0] == seen[1]
    assert set(seen[0].values()) == {name(r) for r in GENERAL_POOL}, seen[0]


def test_a_real_out_of_service_moves_its_own_flows_on_every_director(cluster) -> None:
    """A health change (here the operator's) rewrites every director's table: the
    leaving real's flows go to the others, the rest stay where they were, and back in
    service every flow returns to its real (in the kernel: one nft transaction each)."""
    lab, consoles = cluster
    sources = list(lab.client_addresses["general"] + lab.client_addresses["unwelcome"])
    before = answered_by(lab, VIP, sources, 60, first=30000)
    leaving = GENERAL_POOL[1]
    for c in consoles:
        c.configure(f"out-of-service {leaving}")
    if kernel(consoles):
        wait_until(lambda: all(f"dup to {leaving} " not in c_table(lab, ns)
                               for ns in lab.director_nss), 10, "the tables rewritten")
        forget_flows(lab)
    after = answered_by(lab, VIP, sources, 60, first=30000)
    moved = [f for f, real in before.items() if real != name(leaving) and after[f] != real]
    assert name(leaving) in before.values() and name(leaving) not in after.values(), after
    assert len(moved) <= 3, moved
    for c in consoles:
        c.configure(f"in-service {leaving}")
    if kernel(consoles):
        wait_until(lambda: all(f"dup to {leaving} " in c_table(lab, ns)
                               for ns in lab.director_nss), 10, "the tables rewritten")
        forget_flows(lab)
    assert answered_by(lab, VIP, sources, 60, first=30000) == before


def forget_flows(lab: Cluster) -> None:
    """Empty every director's flow memory: the kernel remembers these 5-tuples' reals
    for 10 s after their RST (docs/design.rst, "Decided in the kernel", *Flow memory*),
    and the test asks where the hash sends them as new flows."""
    for ns in lab.director_nss:
        for line in lab.run_in(ns, ["nft", "list", "tables", "ip"]).stdout.splitlines():
            if "localdirector" in line:
                done = lab.run_in(ns, ["nft", "flush", "map", "ip", line.split()[-1],
                                       "flows_tcp"])
                assert done.returncode == 0, done.stderr


def c_table(lab: Cluster, ns: str) -> str:
    """A director's nft ruleset, as text."""
    return lab.run_in(ns, ["nft", "list", "ruleset"]).stdout


def test_maglev_tables_identical_on_every_director(cluster) -> None:
    _lab, consoles = cluster
    for bind in ("", ":1"):
        digests = {c.run(f"show maglev {VIP}:80{bind}").split("digest ")[1].split(",")[0]
                   for c in consoles}
        assert len(digests) == 1, digests
        # Decided in the kernel: the table it loads and the jhash seed, the same too.
        loaded = {next((line for line in c.run(f"show maglev {VIP}:80{bind}").splitlines()
                        if line.startswith("In the kernel:")), None) for c in consoles}
        assert len(loaded) == 1 and (None in loaded) != kernel(consoles), loaded


def test_drain_withdraws_and_undrain_announces(cluster) -> None:
    lab, consoles = cluster
    consoles[0].configure("bgp drain")
    others = {director_link(2), director_link(3)}
    wait_until(lambda: lab.bird_next_hops(VIP) == others, 15, "d1's route gone in BIRD")
    assert "withdrawn (drain)" in consoles[0].run("show bgp")
    consoles[0].configure("no bgp drain")
    wait_until(lambda: len(lab.bird_next_hops(VIP)) == 3, 15, "d1's route back in BIRD")


def test_long_lived_connections_survive_drain_and_kill(cluster) -> None:
    lab, consoles = cluster
    sources = list(lab.client_addresses["general"] + lab.client_addresses["unwelcome"])
    proc = lab.popen_in(lab.client_ns, [
        *python_module("slowpost"), "--vip", VIP, "--count", "60",
        *(a for s in sources for a in ("--source", s))],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdin is not None

    def step() -> dict:
        line = proc.stdout.readline()
        assert line, "slowpost ended early"
        return json.loads(line)

    assert step() == {"open": 60}
    if kernel(consoles):   # open connections are not known: those opened were counted
        wait_until(lambda: sum(accepted(c) for c in consoles) >= 60, 6, "60 counted")
    else:
        wait_until(lambda: sum(int(c.rows("virtual")[f"{VIP}:80:0:tcp"][2])
                               for c in consoles) == 60, 15,
                   "60 open connections over the directors")
        spread = [int(c.rows("virtual")[f"{VIP}:80:0:tcp"][2]) for c in consoles]
        assert all(n > 0 for n in spread), spread
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert step() == {"sent": 1}
    # Drain d1: the router moves its flows; the others forward them by the table.
    consoles[0].configure("bgp drain")
    wait_until(lambda: director_link(1) not in lab.kernel_next_hops(VIP), 15,
               "d1 withdrawn")
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert step() == {"sent": 2}
    # The flows d1 had reach the others as strangers: `show statistics` counts them
    # (the kernel hashes every packet: nothing tells strangers apart there).
    if not kernel(consoles):
        assert sum(c.statistics()["maglev forwarded"] for c in consoles[1:]) > 0
    # Kill d2 as a dead box: links down, appliance gone; BGP's hold time tells BIRD.
    d2 = lab.director_nss[1]
    lab.run_in(d2, ["ip", "link", "set", "eth0", "down"])
    consoles[1].kill()
    wait_until(lambda: lab.kernel_next_hops(VIP) == {director_link(3)}, 20,
               "d2's route gone after the hold time")
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert step() == {"sent": 3}
    result = step()
    assert proc.wait(30) == 0
    assert result == {"good": 60, "errors": []}, result


def test_a_killed_appliance_is_withdrawn_when_its_session_closes(cluster) -> None:
    """Issue 23 item 5: a killed appliance process on a live box takes ExaBGP with it
    (PR_SET_PDEATHSIG); the box's kernel closes the BGP session and BIRD withdraws the
    route then, not when the hold time runs out, which only a box that says nothing
    (the test before) waits for."""
    lab, consoles = cluster
    d3 = director_link(3)
    assert d3 in lab.kernel_next_hops(VIP)
    started = time.monotonic()
    consoles[2].kill()
    wait_until(lambda: d3 not in lab.kernel_next_hops(VIP), 20, "d3's route gone")
    print(f"\nkilled appliance: its route gone after "
          f"{(time.monotonic() - started) * 1000:.0f} ms")
    state = lab.birdc("show protocols all d3").stdout
    # The dead speaker's kernel ended the session (a FIN, or a RST when data it had not
    # read was still queued), not BIRD's hold timer.
    assert ("Connection closed" in state or "Connection reset by peer" in state) \
        and "Hold timer expired" not in state, state
