"""`timeout REAL SECONDS` through the real data path (issue 27): an appliance started with
`localdirector --config`, LocalDirector's `timeout` on one real. Two client connections
held idle by the lab's servers, one on each real of the virtual: the one on the real
with its own 2 s timeout leaves the table at it, while the other, under the virtual's
120 s, stays and gets its answer."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from appliance_driver import GENERAL, R12, R13, VIP, appliance, simple_config

from localdirector.lab import Lab

pytestmark = pytest.mark.netns
__all__ = ["appliance"]

HOLD = 6         # seconds the servers keep each connection idle before the body
CLIENT_WAIT = 9  # seconds the client waits for the body that cannot come


def test_a_reals_own_timeout_ends_its_idle_connection_only(lab: Lab, appliance) -> None:
    console = appliance(simple_config(VIP, "roundrobin", [R12, R13],
                                      f"timeout {R12} 2", f"timeout {VIP}:80 120"))
    config = console.run("show running-config").splitlines()
    assert f"timeout {R12} 2" in config and f"timeout {VIP}:80 120" in config
    client = lab.popen_in(lab.client_ns, [
        sys.executable, "-m", "localdirector.lab.client", "get",
        "--url", f"http://{VIP}/hold/{HOLD}", "--count", "2", "--concurrency", "2",
        "--source", lab.client_addresses[GENERAL][0], "--timeout", str(CLIENT_WAIT)],
        stdout=subprocess.PIPE, text=True)
    try:
        console.wait_for(lambda: (console.real(R12)[1], console.real(R13)[1]) == (1, 1),
                         what="one held connection on each real")
        console.wait_for(lambda: console.real(R12)[1] == 0, timeout=HOLD - 1,
                         what="the idle connection of the real with timeout 2 gone")
        assert console.real(R13)[1] == 1, console.run("show real")
        assert console.statistics()["conns timed out"] == 1
        out, _ = client.communicate(timeout=CLIENT_WAIT + 10)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    results = json.loads(out)["results"]
    answered = [r["body"] for r in results if r["error"] is None and r["status"] == 200]
    assert answered == ["held\n"], results       # the connection on the other real
