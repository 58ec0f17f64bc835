"""IPv6 through the real appliance, beside IPv4 (issue 26 items 6 and 7): the appliance
started the documented way, `localdirector --config examples/dual-stack.cfg`, in the
dual-stack lab's director namespace; real `curl` and socket clients in the lab's client
namespace, from each client group's IPv6 addresses (2001:db8:c::/48 preferred,
2001:db8:d::/48 unwelcome, 2001:db8:e::/48 general) and its IPv4 ones in the same run;
and a spoofed IPv6 SYN flood from random sources of one /48 while a known client keeps
being served."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import time

import pytest
from appliance_driver import (GENERAL, PREFERRED, ROOT, UNWELCOME, Sampler, appliance, bodies,
                              fig1_pools_answer, simple_config, ten_megabytes_each_way)

from localdirector.lab import Lab

pytestmark = pytest.mark.netns
__all__ = ["appliance"]  # the fixture, imported so pytest finds it here

DUAL_STACK = ROOT / "examples" / "dual-stack.cfg"
VIP6 = "2001:db8::10"
URL6 = f"http://[{VIP6}]"


def name6(n: int, port: int = 80) -> str:
    """What real 2001:db8:1::N answers on `/` over IPv6, on `port`."""
    return f"real-[2001:db8:1::{n}]:{port}"


def curl6(lab: Lab, source: str, path: str = "/") -> str:
    """One request by real `curl -6` from `source`, through the director."""
    proc = lab.run_in(lab.client_ns, ["curl", "-6", "-sS", "--noproxy", "*", "--max-time",
                                      "5", "--interface", source, f"{URL6}{path}"],
                      timeout=15)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_dual_stack_example_serves_fig1_to_both_families(lab: Lab, appliance) -> None:
    """Each IPv6 client group reaches its own Bind ID's IPv6 reals (preferred ones
    2001:db8:1::11 on port 8001 through VIP port 80), the real sees the client's own
    IPv6 address, 10 MiB each way arrive byte-exact over IPv6, and the IPv4 clients of
    the same run still get FIG. 1."""
    console = appliance(DUAL_STACK)
    expected = {PREFERRED: {name6(14), name6(11, 8001)}, UNWELCOME: {name6(15)},
                GENERAL: {name6(12), name6(13)}}
    for group, reals in expected.items():
        sources = lab.client_addresses6[group]
        assert {curl6(lab, source) for source in sources[:2]} <= reals, group
        got = collections.Counter(bodies(lab.get_many(f"{URL6}/", sources,
                                                      count=2 * len(sources))))
        assert set(got) == reals, (group, got)
    source = lab.client_addresses6[PREFERRED][3]
    assert curl6(lab, source, "/peer") == source
    ten_megabytes_each_way(lab, URL6, lab.client_addresses6[GENERAL][0])
    fig1_pools_answer(lab)
    conns = console.run("show virtual")
    assert f"[{VIP6}]:80:1:tcp" in conns and "192.0.2.10:80:1:tcp" in conns


FLOOD_NET6 = "2001:db8:d::/48"   # spoofed sources: the unwelcome /48, beyond its /64 on-link
FLOOD_SECONDS = 4
RSS_BOUND_KB = 64 * 1024       # as the IPv4 flood test's bound (test_robust_netns.py)
CONN_LIMIT = 20_000


def test_a_spoofed_ipv6_syn_flood_from_one_48_leaves_a_known_client_served(
        lab: Lab, appliance) -> None:
    """SYNs from random sources of 2001:db8:d::/48 (benchmarks/synflood.py's flooder,
    a raw IPv6 socket in the client namespace), each source in a /64 of its own, flood
    the IPv6 VIP while 2001:db8:c::2, which used the service before, connects one
    request after another: at least 95 % of its requests are answered, and the
    appliance's connection table and memory stay bounded."""
    from benchmarks.synflood import FLOODER, LEGIT
    real = "[2001:db8:1::11]"
    console = appliance(simple_config(f"[{VIP6}]", "roundrobin", [real],
                                      f"conn-limit {CONN_LIMIT}"))
    known = lab.client_addresses6[PREFERRED][0]
    assert curl6(lab, known) == name6(11)
    sampler = Sampler(console)
    sampler.sample()
    before = console.kernel_line()
    flood = lab.popen_in(lab.client_ns, [sys.executable, "-c", FLOODER, VIP6, "80",
                                         str(FLOOD_SECONDS), FLOOD_NET6],
                         stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    legit = lab.popen_in(lab.client_ns, [sys.executable, "-c", LEGIT, VIP6, known,
                                         str(FLOOD_SECONDS - 1), "5"],
                         stdout=subprocess.PIPE, text=True)
    sampler.during(flood)
    flooded = json.loads(flood.communicate(timeout=60)[0].strip().splitlines()[-1])
    client = json.loads(legit.communicate(timeout=60)[0].strip().splitlines()[-1])
    sampler.sample()
    kernel = {k: v - before.get(k, 0) for k, v in console.kernel_line().items()}
    print(f"\nFIGURES IPv6 flood: {flooded}, {client}, conns {max(sampler.conns)}, rss kB "
          f"{sampler.rss[0]}->{max(sampler.rss)}, kernel {kernel}")
    total = client["ok"] + client["failed"]
    assert total > 10 and client["failed"] <= total // 20, client
    # Each spoofed source is new in its /64: the kernel sheds what is over the budget of
    # new sources before the queue, so the engine sees a fraction of the flood.
    assert kernel["SYNs shed (new sources)"] > flooded["sent"] // 2, (flooded, kernel)
    assert max(sampler.conns) <= CONN_LIMIT, sampler.conns
    assert max(sampler.rss) - sampler.rss[0] < RSS_BOUND_KB, sampler.rss
    assert curl6(lab, known) == name6(11)   # and served after it, too
