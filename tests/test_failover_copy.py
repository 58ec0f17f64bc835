"""The configuration copy between the units, in process (failover/configcopy.py,
failover/stream.py; docs/design.rst, "Failover"): the standby applies what it receives
as configuration only (issue 22: `do write memory` in a received configuration
rewrote the standby's startup-config), keeps its own per-unit lines, saves only when
the active's `write standby` asks and says whether it could; without a key there is
no stream, and the log says why once."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from localdirector.failover import stream
from localdirector.failover.configcopy import ConfigCopy
from localdirector.failover.configs import Unit
from tests.test_failover import KEY, PAIR, shell

ATTACK = ["hostname evil", "do write memory", "end", "no failover", "in-service 192.0.2.9",
          "do reload", "failover ip address 198.19.255.9", "failover key none"]


def standby(tmp_path: Path) -> tuple[Any, ConfigCopy, list[dict[str, Any]]]:
    appliance, _out, session = shell(tmp_path)
    for line in PAIR:
        assert session.execute(line)
    sent: list[dict[str, Any]] = []
    return appliance, ConfigCopy(appliance, lambda m: bool(sent.append(m)) or True), sent


def test_received_configuration_runs_no_exec_command(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture
                                                     ) -> None:
    appliance, copy, _sent = standby(tmp_path)
    with caplog.at_level(logging.ERROR, "localdirector.failover"):
        copy.apply(["! localdirector configuration", "failover poll 200 holdtime 1000",
                    "failover", *ATTACK])
    assert not appliance.config_path.exists()              # no `do write memory`
    lines = appliance.running_config()
    assert "hostname evil" in lines                          # configuration applies
    assert "failover" in lines                               # `no failover` refused
    assert "failover ip address 198.19.255.2" in lines       # its own lines stay
    assert KEY in lines and "failover key none" not in lines
    refused = "\n".join(caplog.messages)
    for line in ("do write memory", "end", "no failover", "in-service 192.0.2.9",
                 "do reload"):
        assert f"refused: {line}" in refused


def test_the_copy_leaves_out_the_per_unit_lines(tmp_path: Path) -> None:
    _appliance, copy, _sent = standby(tmp_path)
    lines = copy.lines()
    assert not [line for line in lines if line.startswith(("failover ip", "failover key"))]
    assert "failover poll 100 holdtime 500" in lines


def test_write_standby_saves_on_the_standby_and_says_so(tmp_path: Path) -> None:
    """The active's request reaches the standby's copy, which saves as `write memory`
    does and answers; the active's `request_save` returns the answer."""
    (tmp_path / "a").mkdir()
    (tmp_path / "s").mkdir()
    _active_app, active, _ = standby(tmp_path / "a")
    standby_app, passive, _ = standby(tmp_path / "s")
    active.send = lambda m: threading.Thread(target=passive.save, args=(m,)).start() or True
    passive.send = lambda m: active.saved(m) or True
    assert active.request_save() == "[OK] saved on the standby"
    assert standby_app.config_path.read_text().splitlines() == standby_app.running_config()
    assert not standby_app.unsaved()
    standby_app.config_path = tmp_path / "missing" / "dir" / "file"
    (tmp_path / "missing").write_text("a file, not a directory")
    answer = active.request_save()
    assert answer.startswith("% The standby could not save: cannot write"), answer
    active.send = lambda m: False
    assert "does not answer" in active.request_save()


def test_without_a_key_there_is_no_stream_and_the_log_says_why_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    unit = Unit("primary", "fo0", "198.19.255.1", tmp_path)
    keeper = stream.Stream(unit, lambda m: None, lambda: None, lambda: 0.5)
    with caplog.at_level(logging.WARNING, "localdirector.failover"):
        for _ in range(5):                     # every poll
            keeper.follow("198.19.255.2", None)
    assert keeper.peer is None and not keeper.send({"t": "step-down"})
    assert keeper.status(True) == stream.NO_KEY
    assert [r.getMessage() for r in caplog.records] == [f"failover: {stream.NO_KEY}"]
    keeper.follow("", None)
    assert keeper.status(True) == "no peer configured"
