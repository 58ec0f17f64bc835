"""Short connections through the userspace virtual across takeovers of the pair (issue
22 B; docs/design.rst, "Failover" and "Packet flow"): 3,000 of them, six at a time, while
the active is killed and, separately, while `failover active` moves the role. None is
lost, and no client ever receives a packet from a real's address (lab/churn.py counts
them in the client namespace)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from localdirector.lab.churn import across
from tests import test_failover_traffic_netns as traffic
from tests.test_failover_netns import wait_for
from tests.test_failover_traffic_netns import USERSPACE, Running

pair = traffic.pair   # the fixture: the pair lab, built and destroyed around each test

pytestmark = pytest.mark.netns

# One client of each of FIG. 1's client groups (Bind IDs 1, 2 and 0).
SOURCES = ("198.51.100.2", "198.18.0.2", "198.19.0.2")
# Enough that most are opened after the event even on an idle machine, where 800 could
# all be through the old active (and replicated) before it happened.
COUNT = 3000


def _across(pair: Running, event: Callable[[str, str], None]) -> None:
    active, standby = pair.up()
    received = pair.received(standby)
    churn = across(pair.lab, USERSPACE, SOURCES,
                   lambda: pair.received(standby) >= received + 40,   # replicated ones
                   lambda: event(active, standby), count=COUNT)
    assert (len(churn.results), churn.lost, churn.leaked) == (COUNT, [], 0)
    assert pair.roles()[standby] == "Active"
    assert pair.consoles[standby].statistics()["conns created"] > 0   # after the takeover


def test_a_crash_of_the_active_loses_no_short_connection(pair: Running) -> None:
    def crash(active: str, standby: str) -> None:
        pair.crash(active)        # cables first, as a dead box: it forwards nothing more
        wait_for(lambda: pair.roles()[standby] == "Active", "the standby to take over")

    _across(pair, crash)


def test_failover_active_loses_no_short_connection(pair: Running) -> None:
    def switch(active: str, standby: str) -> None:
        assert "now active" in pair.consoles[standby].run("failover active")
        wait_for(lambda: pair.roles()[active] == "Standby", "the old active to stand by")

    _across(pair, switch)
