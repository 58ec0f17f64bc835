"""Dispatched forwarding with real TCP stacks (docs/design.rst, "Scale-out"): the reals
hold the VIP on their loopback and answer the clients themselves; the director only
forwards the clients' packets, unchanged, to the real the engine chose. FIG. 1 still
holds: the client's address selects the instance."""

from __future__ import annotations

import collections

import pytest
from appliance_driver import (GENERAL, PREFERRED, R12, R13, R14, SETTLE, VIP, appliance,
                              bodies, hold, held_bodies, name, raw_table)

from localdirector.lab import Lab

pytestmark = pytest.mark.netns
__all__ = ["appliance"]


@pytest.fixture(scope="module")
def lab(lab: Lab) -> Lab:
    lab.hold_vip(VIP)
    return lab


def _config() -> list[str]:
    return [f"real {R12}", f"real {R13}", f"real {R14}",
            f"virtual {VIP}:80", f"virtual {VIP}:80:1",
            f"bind {VIP}:80 {R12} {R13}", f"bind {VIP}:80:1 {R14}",
            f"assign {VIP}:80:1 198.51.100.0 255.255.255.0",
            f"predictor {VIP}:80 maglev", f"dispatched {VIP}:80", f"dispatched {VIP}:80:1"]


def test_reals_answer_directly_and_bind_ids_still_select(lab: Lab, appliance) -> None:
    console = appliance(_config())
    general = lab.client_addresses[GENERAL]
    got = collections.Counter(bodies(lab.get_many(f"http://{VIP}/", general, count=40,
                                                  concurrency=4)))
    assert set(got) == {name(R12), name(R13)} and sum(got.values()) == 40, got
    preferred = lab.client_addresses[PREFERRED]
    assert set(bodies(lab.get_many(f"http://{VIP}/", preferred, count=8))) == {name(R14)}
    stats = console.statistics()
    # Only the clients' side passes the engine; nothing was rewritten or sent back.
    assert stats["translated out"] == 0 and stats["conns created"] == 48
    assert stats["translated in"] > 48
    assert "LOCALDIRECTOR" in raw_table(lab)
    mangle = lab.run_in(lab.director_ns, ["iptables-save", "-t", "mangle"]).stdout
    assert mangle.count("-j TEE --gateway") == 3


def test_long_transfer_and_counts_back_to_zero(lab: Lab, appliance) -> None:
    console = appliance(_config())
    source = lab.client_addresses[GENERAL][0]
    held = hold(lab, f"http://{VIP}/hold/2", 3, source)
    console.wait_for(lambda: int(console.rows("virtual")[f"{VIP}:80:0:tcp"][2]) == 3,
                     what="three held connections")
    conns = console.run("show conns")
    assert "ESTABLISHED" in conns, conns
    assert held_bodies(held) == ["held\n"] * 3

    def zero() -> bool:
        return int(console.rows("virtual")[f"{VIP}:80:0:tcp"][2]) == 0

    console.wait_for(zero, timeout=SETTLE + 4, what="connection count back to 0")


def test_a_ported_real_is_refused(lab: Lab, appliance) -> None:
    console = appliance(_config())
    console.run("configure terminal")
    console.run(f"real {R12}:8001")
    out = console.run(f"bind {VIP}:80 {R12}:8001")
    console.run("end")
    assert "has a port: a dispatched virtual forwards without translation" in out
