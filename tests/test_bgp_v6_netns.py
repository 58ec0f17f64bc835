"""IPv6 VIPs spread by ECMP (docs/design.rst, "Scale-out"): the cluster lab's router
with its link dual-stack (`Cluster(ipv6=True)`), two directors whose BGP services run
real ExaBGP with an IPv4 and an IPv6 session each, and BIRD 2 installing one ECMP route
per VIP in the router's kernel, IPv6's over the directors' IPv6 addresses; a director
that stops withdraws its routes. The control plane only: the BGP service runs on the
model, without a data plane (the IPv6 data plane's own tests carry traffic)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from localdirector.lab.cluster import Cluster, director_link, director_link6
from tests.failover_site import until

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[1]
VIP6, VIP4 = "2001:db8::10", "192.0.2.10"
# One director's BGP service on its model, until stdin closes (then withdrawn, stopped);
# each line it reads, it prints its sessions' states as ExaBGP reported them.
SCRIPT = """
import sys
from pathlib import Path
from localdirector import runtime
from localdirector.appliance import Appliance
from localdirector.bgp.service import BgpService
from localdirector.model.addr import format_ip
from localdirector.shell.registry import Mode

runtime.RUN = Path(sys.argv[1])
runtime.RUN.mkdir(parents=True, exist_ok=True)
model = Appliance(runtime.RUN / "startup-config")
session = model.open_session("test", write=sys.stderr.write)
session.mode = Mode.CONFIG
for line in sys.argv[2:]:
    assert session.execute(line), line
service = BgpService(model)
service.start()
print("started", flush=True)
for _line in sys.stdin:           # each line asks for the sessions' states
    status = service.status()
    print(sorted((format_ip(a), state) for a, state in status.sessions.items()), flush=True)
service.stop()
"""


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Cluster, list[subprocess.Popen]]]:
    from conftest import require_netns
    require_netns()
    built = Cluster(2, reals=("203.0.113.12",), ipv6=True)
    try:
        built.build()
    except Exception as exc:   # noqa: BLE001
        built.destroy()
        pytest.fail(f"cluster build failed: {exc}", pytrace=False)
    lines = ["real [2001:db8:1::11]", f"virtual [{VIP6}]:80",
             f"bind [{VIP6}]:80 [2001:db8:1::11]", f"advertise [{VIP6}]:80",
             "real 203.0.113.12", f"virtual {VIP4}:80", f"bind {VIP4}:80 203.0.113.12",
             f"advertise {VIP4}:80", *built.bgp_lines()]
    speakers: list[subprocess.Popen] = []
    try:
        for i, ns in enumerate(built.director_nss, 1):
            speakers.append(subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, "-c", SCRIPT,
                 str(tmp_path / f"d{i}"), *lines],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                env={**os.environ, "PYTHONPATH": str(ROOT)}))
            assert speakers[-1].stdout.readline() == "started\n"
        yield built, speakers
    finally:
        for speaker in speakers:
            if speaker.poll() is None:
                speaker.communicate(timeout=20)
        built.destroy()


def test_birds_ecmp_route_for_an_ipv6_vip_learnt_from_two_exabgp_speakers(cluster) -> None:
    lab, speakers = cluster
    six = {director_link6(1), director_link6(2)}
    four = {director_link(1), director_link(2)}
    until(lambda: lab.bird_next_hops(VIP6) == six, "two IPv6 BGP next hops", 30)
    until(lambda: lab.kernel_next_hops(VIP6) == six, "an IPv6 ECMP kernel route", 10)
    # The IPv4 VIP beside it, over the IPv4 sessions, as before.
    until(lambda: lab.kernel_next_hops(VIP4) == four, "an IPv4 ECMP kernel route", 10)
    assert "2001:db8::10/128" in lab.birdc(f"show route {VIP6}/128").stdout
    # ExaBGP's events name the IPv6 session as the IPv4 one (show bgp's State column).
    speakers[1].stdin.write("status\n")
    speakers[1].stdin.flush()
    assert speakers[1].stdout.readline().strip() == repr(
        [("198.19.255.1", "up"), ("2001:db8:ff::1", "up")])
    # A director that stops withdraws both: the router keeps the other's.
    speakers[0].communicate(timeout=20)
    until(lambda: lab.kernel_next_hops(VIP6) == {director_link6(2)},
          "the IPv6 route through d2 alone", 10)
    until(lambda: lab.kernel_next_hops(VIP4) == {director_link(2)},
          "the IPv4 route through d2 alone", 10)
