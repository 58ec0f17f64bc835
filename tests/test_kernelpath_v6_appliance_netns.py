"""IPv6 virtuals decided in the kernel by the appliance as an operator starts it
(`localdirector --config FILE` in the director's namespace of the IPv6 lab of
tests/test_kernelpath_v6_netns.py): needs IPv6 server ids in the shell and the
appliance's ip6tables rules for the VIPs and reals (the SYN guards, the known clients,
the untracked replies' drop), though no packet of these virtuals is queued."""

from __future__ import annotations

import collections
import sys
import time
from pathlib import Path

import pytest
from appliance_driver import Console
from test_kernelpath_v6_netns import CLIENTS, REALS, VIP, VIP_MAGLEV, Lab6, lab6

pytestmark = pytest.mark.netns
__all__ = ["lab6"]  # the fixture, imported so pytest finds it here


APPLIANCE_QUEUE = 3
CONFIG = [
    *(f"real [{addr}]" for addr in REALS),
    f"virtual [{VIP}]:80", f"predictor [{VIP}]:80 roundrobin",
    f"bind [{VIP}]:80 {' '.join(f'[{a}]' for a in REALS)}",
    f"virtual [{VIP_MAGLEV}]:80", f"predictor [{VIP_MAGLEV}]:80 maglev",
    f"bind [{VIP_MAGLEV}]:80 {' '.join(f'[{a}]' for a in REALS)}",
    f"fastpath [{VIP}]:80 kernel",
]


def test_the_appliance_started_from_its_config_decides_ipv6_virtuals_in_the_kernel(
        lab6: Lab6, tmp_path: Path) -> None:
    """As an operator starts it (`localdirector --config FILE`): curl -6 clients spread
    by roundrobin, Maglev flows agree with the model-built table's, totals come from
    the kernel's counters, and nothing reaches the queue."""
    config = tmp_path / "startup-config"
    config.write_text("\n".join(CONFIG) + "\n")
    console = Console(["ip", "netns", "exec", lab6.director, sys.executable, "-m",
                       "localdirector", "--config", str(config), "--queue",
                       str(APPLIANCE_QUEUE)])
    try:
        listed = lab6.run(lab6.director, ["nft", "list", "table", "ip6",
                                          f"localdirector{APPLIANCE_QUEUE}"], text=True)
        assert "ip6 daddr . tcp dport vmap" in listed.stdout, (listed.stderr,
                                                               console.boot_messages)
        got = collections.Counter(lab6.curl(f"http://[{VIP}]/", CLIENTS[i % 8]).strip()
                                  for i in range(12))
        assert got == {b"real-1": 4, b"real-2": 4, b"real-3": 4}
        flows = lab6.flows(VIP_MAGLEV, 30)
        assert set(flows.values()) == {"real-1", "real-2", "real-3"}, flows

        def totals() -> list[int]:
            rows = console.rows("real")
            return [int(rows[f"[{a}]:0:0:tcp"][3]) for a in REALS]

        want = [4 + list(flows.values()).count(f"real-{i}") for i in (1, 2, 3)]
        deadline = time.monotonic() + 6   # folded at the rule sync's next wake-up
        while totals() != want and time.monotonic() < deadline:
            time.sleep(0.2)
        assert totals() == want
        assert console.kernel_line()["queued"] == 0
    finally:
        assert console.exit() == 0
    listed = lab6.run(lab6.director, ["nft", "list", "tables"], text=True).stdout
    assert f"localdirector{APPLIANCE_QUEUE}" not in listed
