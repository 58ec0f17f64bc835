"""Issue 27 item 6 through the real data path: LocalDirector's `buddy` and `delay` in a
startup configuration booted with `localdirector --config`. Two virtuals on one VIP
(ports 80 and 8001, the lab servers' two ports), sticky and round robin on each, in one
buddy group: a client's connections to both land on the same real address, where round
robin alone would part them. And `delay` keeps a closed connection in the table its
seconds, where the default lets it go after 2."""

from __future__ import annotations

import time

import pytest
from appliance_driver import GENERAL, R12, R13, VIP, appliance, bodies, name

from localdirector.lab import Lab

pytestmark = pytest.mark.netns
__all__ = ["appliance"]


def _config() -> list[str]:
    lines = [f"real {r}:{p}" for r in (R12, R13) for p in (80, 8001)]
    for port in (80, 8001):
        lines += [f"virtual {VIP}:{port}", f"predictor {VIP}:{port} roundrobin",
                  f"bind {VIP}:{port} {R12}:{port} {R13}:{port}",
                  f"sticky {VIP}:{port} 10", f"buddy {VIP}:{port} shop"]
    return [*lines, f"delay {VIP}:80 5"]


def _served(lab: Lab, port: int, source: str) -> str:
    return bodies(lab.get_many(f"http://{VIP}:{port}/", [source]))[0]


def test_a_client_keeps_one_real_address_across_its_buddy_virtuals(
        lab: Lab, appliance) -> None:
    console = appliance(_config())
    config = console.run("show running-config").splitlines()
    for line in (f"buddy {VIP}:80 shop", f"buddy {VIP}:8001 shop",
                 f"delay {R12}:80 5", f"delay {R13}:80 5"):
        assert line in config, (line, config)
    first, second = lab.client_addresses[GENERAL][:2]
    # Round robin on :80 parts the two clients, and sticky keeps each where it went.
    assert _served(lab, 80, first) == name(R12, 80)
    assert _served(lab, 80, second) == name(R13, 80)
    # On :8001 round robin would start again at R12 and then R13: the buddy group
    # sends each client to its :80 real's address instead.
    assert _served(lab, 8001, second) == name(R13, 8001)
    assert _served(lab, 8001, first) == name(R12, 8001)
    assert _served(lab, 80, first) == name(R12, 80)
    closed_at = time.monotonic()
    shown = console.run("show buddy")
    assert "shop" in shown and f"{VIP}:8001" in shown, shown
    # `delay VIP:80 5`: the last connection, closed, is still listed 3 s on.
    time.sleep(max(0.0, closed_at + 3.0 - time.monotonic()))
    assert first in console.run("show conns")
    console.wait_for(lambda: first not in console.run("show conns"),
                     what="the closed connection removed after its delay")
