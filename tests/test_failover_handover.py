"""The failover service's side of a hand-over, without keepalived or iptables (the
drop guard is a fake): a step-down raises the guard, sends every noted connection and
stops sending before it yields through keepalived's track file; a unit keepalived
tells BACKUP or FAULT stops sending at once (docs/design.rst, "Failover")."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from localdirector.failover import service as service_module
from localdirector.failover.configs import Unit
from localdirector.failover.service import FailoverService
from tests.test_engine import Lab, fig1


class FakeGuard:
    def __init__(self, link: str) -> None:
        self.up = False

    def raise_(self) -> None:
        self.up = True

    def lower(self) -> None:
        self.up = False


@pytest.fixture
def active(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[FailoverService, Lab,
                                                                       list[Any]]:
    monkeypatch.setattr(service_module, "Guard", FakeGuard)
    lab = Lab(fig1())
    lab.d.settings.failover.replicate = True
    unit = Unit("primary", "fo0", "198.19.255.1", tmp_path)
    service = FailoverService(SimpleNamespace(director=lab.d), unit, lab.engine)
    unit.yield_file.write_text("0\n")
    sent: list[Any] = []

    def send(message: dict[str, Any], wait: bool = True) -> bool:
        sent.append((message, service.guard.up, unit.yield_file.read_text()))
        return True

    service._send = send
    service.replicator.send = send
    lab.engine.observe(service.replicator._note)
    service._set_role("Active")
    service.replicator._turn()        # the whole resend of becoming active
    return service, lab, sent


def test_a_step_down_hands_everything_over_before_it_yields(active: Any) -> None:
    service, lab, sent = active
    conn = lab.syn()
    service._peer_status = {"role": "Active"}   # the other unit says so at once
    service._step_down()
    records = [(m, guard, track) for m, guard, track in sent if m.get("up")]
    assert records == [({"t": "conns", "up": records[0][0]["up"], "down": []}, True, "0\n")]
    assert records[0][0]["up"][0][0] == conn.in_key
    assert service.unit.yield_file.read_text() == "0\n"
    # keepalived did not move here (there is none): this unit carries on as active.
    assert not service.guard.up and service.replicator.sending


@pytest.mark.parametrize("verdict", ["BACKUP", "FAULT"])
def test_told_backup_or_fault_it_stops_sending(active: Any, verdict: str) -> None:
    service, lab, sent = active
    ports = iter(range(41000, 41010))

    def conntrackd(option: str) -> None:   # meanwhile a SYN, and the sender's turn
        lab.syn(next(ports))
        service.replicator._turn()

    service._conntrackd = conntrackd
    service._verdict(verdict)
    assert service.guard.up and not service.replicator.sending
    assert not [m for m, _, _ in sent if m.get("up")]
