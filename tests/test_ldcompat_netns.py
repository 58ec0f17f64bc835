"""Issue 27 item 2 through the real data path: a configuration in LocalDirector's words
(`maxconns VIRTUAL N`, a virtual's id in a real's setting, `sticky ... generic`,
`timeout`, `redirection ... directed`) boots with `localdirector --config`,
and LocalDirector's `maxconns` on a virtual holds: at the limit, new connections go to
the backup virtual's reals, and back to its own once they close."""

from __future__ import annotations

import pytest
from appliance_driver import (GENERAL, PREFERRED, R12, R13, R14, VIP, appliance, hold,
                              held_bodies)

from localdirector.lab import Lab

pytestmark = pytest.mark.netns
__all__ = ["appliance"]


def _config() -> list[str]:
    return [f"real {R12}", f"real {R13}", f"real {R14}",
            f"virtual {VIP}:80", f"virtual {VIP}:80:1",
            f"bind {VIP}:80 {R12} {R13}", f"bind {VIP}:80:1 {R14}",
            f"assign {VIP}:80:1 198.51.100.0 255.255.255.0",
            f"backup {VIP}:80:1 {VIP}:80",
            f"maxconns {VIP}:80:1 2",              # the virtual's own limit
            f"retry {VIP}:80 30",                   # every real bound to it
            f"sticky {VIP}:80 5 generic", f"timeout {VIP}:80 120",
            f"redirection {VIP}:80 directed"]


def test_maxconns_on_a_virtual_overflows_to_its_backup(lab: Lab, appliance) -> None:
    console = appliance(_config())
    assert console.real(R12) == console.real(R12)           # booted without a note
    config = console.run("show running-config")
    for line in (f"maxconns {VIP}:80:1 2", f"retry {R12} 30", f"retry {R13} 30",
                 f"sticky {VIP}:80 5", f"timeout {VIP}:80 120"):
        assert line in config.splitlines(), (line, config)
    preferred = lab.client_addresses[PREFERRED][0]
    assert lab.client_addresses[GENERAL]                     # the backup's own clients
    held = hold(lab, f"http://{VIP}/hold/3", 4, preferred)
    console.wait_for(lambda: console.real(R14)[1] + console.real(R12)[1]
                     + console.real(R13)[1] == 4, what="four held connections")
    own, overflow = console.real(R14)[1], console.real(R12)[1] + console.real(R13)[1]
    assert (own, overflow) == (2, 2), console.run("show real")
    assert held_bodies(held) == ["held\n"] * 4
    console.wait_for(lambda: console.real(R14)[1] == 0, what="the held connections gone")
    # Under the limit again: the instance's own real serves.
    follow = hold(lab, f"http://{VIP}/hold/1", 1, preferred)
    console.wait_for(lambda: console.real(R14)[1] == 1, what="the instance's own real")
    assert held_bodies(follow) == ["held\n"]
