"""Probes in the model and the shell, without a network: definitions and attachments
round-trip through the running config, `no` forms undo them, a check's results move its
real in and out exactly as docs/design.rst ("Probes") says, and a real out by probe is
treated like any failed real by backups and virtual states."""

from __future__ import annotations

import asyncio
import time

import pytest

from localdirector.appliance import Appliance
from localdirector.model.director import Director, ModelError
from localdirector.model import probes
from localdirector.model.probes import (DEFAULT_INTERVAL, DOWN, NO_PORT, UNKNOWN, UP,
                                       parse_status)
from localdirector.model.serverid import ServerId
from localdirector.model.state import State
from localdirector.probes.runner import ProbeRunner
from localdirector.shell import running_config

R12, R13, R14 = (ServerId.parse(f"203.0.113.{n}") for n in (12, 13, 14))
VIP = ServerId.parse("192.0.2.10:80")


def shell(*lines: str) -> tuple[Appliance, list[str]]:
    appliance = Appliance()
    out: list[str] = []
    session = appliance.open_session("test", "test", write=out.append, interactive=False)
    for line in ("enable", "configure terminal", *lines):
        assert session.execute(line), "".join(out)
    return appliance, out


CONFIG = ["real 203.0.113.12", "real 203.0.113.13:8080", "virtual 192.0.2.10:80",
          "bind 192.0.2.10:80 203.0.113.12 203.0.113.13:8080",
          "probeconfig web http interval 2 timeout 0.5 failures 4 successes 1 port 8001 "
          "method HEAD path /health?full=1 status 200-299,301 host www.example "
          "expect all good",
          "probeconfig alive tcp",
          "probe 192.0.2.10:80 web", "probe 203.0.113.13:8080 alive"]


def test_running_config_round_trips() -> None:
    appliance, _ = shell(*CONFIG)
    saved = running_config.render(appliance.director, appliance.registry)
    assert [l for l in saved if l.startswith("probe")] == [
        "probeconfig web http interval 2 timeout 0.5 failures 4 successes 1 port 8001 "
        "method HEAD path /health?full=1 status 200-299,301 host www.example "
        "expect all good",
        "probeconfig alive tcp",
        "probe 192.0.2.10:80 web",
        "probe 203.0.113.13:8080 alive"]
    replayed, _ = shell(*(l for l in saved if not l.startswith("!")))
    assert running_config.render(replayed.director, replayed.registry) == saved


def test_checks_follow_attachments_binds_and_removals() -> None:
    appliance, out = shell(*CONFIG[:4], "probeconfig web http", "probe 192.0.2.10:80 web")
    d = appliance.director
    # A port-0 real is probed on its virtual's port, a port-translated one on its own.
    assert sorted(k[2] for k in d.checks) == [80, 8080]
    shell_ = appliance.open_session("t", "t", write=out.append, interactive=False)
    for line in ("enable", "configure terminal", "no bind 192.0.2.10:80 203.0.113.12"):
        assert shell_.execute(line)
    assert [k[2] for k in d.checks] == [8080]
    assert shell_.execute("no probeconfig web")
    assert "probe web detached from 192.0.2.10:80:0:tcp" in "".join(out)
    assert not d.checks and not d.probe_attach
    assert shell_.execute("probeconfig web tcp port 81")
    assert shell_.execute("probe 203.0.113.12 web")
    assert shell_.execute("no real 203.0.113.12")
    assert not d.probe_attach and not d.checks


def test_no_forms_and_help() -> None:
    appliance, _ = shell(*CONFIG)
    session = appliance.open_session("t", "t", write=lambda _: None, interactive=False)
    for line in ("enable", "configure terminal"):
        session.execute(line)
    after_interval = [line.split()[0]
                      for line in session.help_lines("probeconfig web http interval 2 ")]
    assert after_interval == ["expect", "failures", "host", "method", "path", "port",
                              "query", "rcode", "recurse", "send", "status", "successes",
                              "timeout", "type", "<cr>"]
    assert session.help_lines("probeconfig web ")[0].split()[0] == "tcp|http|udp|dns"
    assert session.help_lines("probeconfig d dns type")[0].split()[0] == "type"
    assert session.execute("no probe 203.0.113.13:8080 alive")
    assert not session.execute("no probe 203.0.113.13:8080 alive")
    assert session.execute("no probe 192.0.2.10:80")
    assert not appliance.director.probe_attach


def test_status_lists() -> None:
    assert parse_status("200") == ((200, 200),)
    assert parse_status("200-299,301") == ((200, 299), (301, 301))
    for bad in ("", "2000", "99", "600", "300-200", "200-", "abc", "200,"):
        with pytest.raises(ValueError):
            parse_status(bad)


def director_with_probe(failures: int = 2, successes: int = 2) -> Director:
    d = Director()
    for sid in (R12, R13, R14):
        d.add_real(sid)
    d.add_virtual(VIP)
    d.bind(VIP, R12, R13)
    d.define_probe("web", "http", failures=failures, successes=successes)
    d.attach_probe(VIP, "web")
    return d


def check_of(d: Director, sid: ServerId):
    return next(c for c in d.checks.values() if c.real_sid == sid)


def test_first_result_decides_then_failures_and_successes_in_a_row() -> None:
    d = director_with_probe(failures=2, successes=2)
    c12, c13 = check_of(d, R12), check_of(d, R13)
    assert (c12.state, c13.state) == (UNKNOWN, UNKNOWN)
    d.probe_result(c12, True, "HTTP-200", 0.001, 1.0)
    d.probe_result(c13, False, "refused", 0.0, 1.0)
    assert (c12.state, c13.state) == (UP, DOWN)
    assert d.reals[R13].probe_down == "web" and d.real_state(d.reals[R13]) == "FAILED"
    d.probe_result(c12, False, "HTTP-500", 0.0, 2.0)
    assert c12.state == UP                  # one failure of two
    d.probe_result(c12, True, "HTTP-200", 0.0, 3.0)
    d.probe_result(c12, False, "HTTP-500", 0.0, 4.0)
    assert c12.state == UP                  # the failures were not in a row
    d.probe_result(c12, False, "HTTP-500", 0.0, 5.0)
    assert c12.state == DOWN and c12.last_change == 5.0
    d.probe_result(c13, True, "HTTP-200", 0.0, 6.0)
    assert c13.state == DOWN
    d.probe_result(c13, True, "HTTP-200", 0.0, 7.0)
    assert c13.state == UP and not d.reals[R13].probe_down
    assert (d.probe_counters.sent, d.probe_counters.ok, d.probe_counters.failed) == (8, 4, 4)


def test_a_real_awaiting_its_first_result_is_passed_over_while_another_is_known_good(
        ) -> None:
    """Issue 23 item 1: UNKNOWN is not chosen while its first result is awaited; with
    no real known good a pending one is, rather than a refusal, and that is counted."""
    d = director_with_probe()
    d.virtuals[VIP].predictor = "roundrobin"
    r12, r13 = d.reals[R12], d.reals[R13]
    assert r12.probe_pending and r13.probe_pending
    assert d.decide(1, VIP.addr, 80, 0.0).real in (r12, r13)
    assert d.virtuals[VIP].pending_fallbacks == 1
    d.probe_result(check_of(d, R12), True, "HTTP-200", 0.001, 1.0)
    assert not r12.probe_pending and r13.probe_pending
    assert {d.decide(c, VIP.addr, 80, 0.0).real for c in range(1, 9)} == {r12}
    assert d.virtuals[VIP].pending_fallbacks == 1
    assert d.virtual_state(d.virtuals[VIP]) == "IS"
    d.probe_result(check_of(d, R13), True, "HTTP-200", 0.001, 1.0)
    assert {d.decide(c, VIP.addr, 80, 0.0).real for c in range(1, 9)} == {r12, r13}


def test_a_first_result_is_awaited_for_one_interval_at_most() -> None:
    """A runner that never reports must not keep a real out: after one interval the
    UNKNOWN check counts as up again (the data plane's tick ends the wait)."""
    d = director_with_probe()
    d.virtuals[VIP].predictor = "roundrobin"
    check = check_of(d, R13)
    assert 0 < check.pending_until - time.monotonic() <= DEFAULT_INTERVAL
    d.probe_result(check_of(d, R12), True, "HTTP-200", 0.001, 1.0)
    d.end_overdue_pending(check.pending_until - 0.01)
    assert d.reals[R13].probe_pending
    d.end_overdue_pending(check.pending_until)
    assert not d.reals[R13].probe_pending and check.state == UNKNOWN
    assert {d.decide(c, VIP.addr, 80, 0.0).real for c in range(1, 9)} == {
        d.reals[R12], d.reals[R13]}


def test_a_new_check_is_probed_at_once() -> None:
    """The runner asks a check's first result at once, not at a random moment of its
    first interval; the probe after that is spread over the interval."""
    appliance, _ = shell(*CONFIG)
    runner = ProbeRunner(appliance)      # its loop never runs: no probe is sent
    runner._round(1000.0)
    assert len(runner._tasks) == len(appliance.director.checks) == 3
    assert all(1000.0 < due <= 1000.0 + c.probe.interval for due, _, c in runner._queue)
    tasks = list(runner._tasks)
    for task in tasks:
        task.cancel()                    # before their first step
    runner._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    runner._loop.close()


def test_a_real_out_by_probe_is_a_failed_real_to_backups_and_virtuals() -> None:
    d = director_with_probe(failures=1)
    d.set_backup(R12, R14)
    for sid in (R12, R13):
        d.probe_result(check_of(d, sid), False, "timeout", 0.0, 1.0)
    assert d.virtual_state(d.virtuals[VIP]) == "IS"      # R14, the backup, serves
    assert d.decide(1, VIP.addr, 80, 0.0).real is d.reals[R14]
    d.set_state(R14, State.OUT_OF_SERVICE)
    assert d.virtual_state(d.virtuals[VIP]) == "FAILED"
    assert d.decide(1, VIP.addr, 80, 0.0).real is None
    assert d.real_cause(d.reals[R12]) == "probe"
    # Passive detection still runs beside it.
    real = d.reals[R13]
    for _ in range(real.threshold):
        d.note_failure(real, 2.0)
    assert real.state is State.FAILED and d.real_cause(real) == "probe+passive"


def fail_passively(d: Director, sid: ServerId) -> None:
    real = d.reals[sid]
    for _ in range(real.threshold):
        d.note_failure(real, 2.0)
    assert real.state is State.FAILED


def test_a_passing_probe_ends_a_passive_failure_in_either_order() -> None:
    """Issue 23 item 2: a healthy real stayed out for `retry` (a minute) after its probe
    said UP. A good result of a probe attached to the real (check UP, no check DOWN)
    ends the passive failure at once; a failing probe never does."""
    d = director_with_probe(failures=1, successes=2)
    r12, r13 = d.reals[R12], d.reals[R13]
    c12, c13 = check_of(d, R12), check_of(d, R13)
    # Passive first, then the probe fails too, then recovers: in once the check is UP.
    d.probe_result(c12, True, "HTTP-200", 0.001, 1.0)
    fail_passively(d, R12)
    d.probe_result(c12, False, "refused", 0.0, 3.0)
    assert d.real_cause(r12) == "probe+passive"
    d.probe_result(c12, True, "HTTP-200", 0.001, 4.0)
    assert c12.state == probes.DOWN and r12.state is State.FAILED   # one of two successes
    d.probe_result(c12, True, "HTTP-200", 0.001, 5.0)
    assert r12.state is State.IN_SERVICE and d.real_cause(r12) == "-"
    assert d.decide(1, VIP.addr, 80, 0.0).real is not None and r12.consecutive_fails == 0
    # The probe already UP, then passive detection trips: the next good result ends it.
    d.probe_result(c13, True, "HTTP-200", 0.001, 1.0)
    fail_passively(d, R13)
    d.tick(2.0 + r13.retry)
    assert r13.state is State.TESTING
    d.probe_result(c13, True, "HTTP-200", 0.001, 6.0)
    assert r13.state is State.IN_SERVICE and not r13.testing
    # A failing probe result leaves a passive failure as it is.
    fail_passively(d, R13)
    d.probe_result(c13, False, "HTTP-500", 0.0, 7.0)
    assert r13.state is State.FAILED and d.real_cause(r13) == "probe+passive"
    # The operator's out-of-service wins over both.
    d.set_state(R12, State.OUT_OF_SERVICE)
    d.probe_result(c12, True, "HTTP-200", 0.001, 8.0)
    assert r12.state is State.OUT_OF_SERVICE


def test_a_portless_check_is_listed_not_run() -> None:
    d = Director()
    d.add_real(R12)
    d.add_virtual(ServerId.parse("192.0.2.10:0"))
    d.bind(ServerId.parse("192.0.2.10:0"), R12)
    d.define_probe("web", "tcp")
    d.attach_probe(ServerId.parse("192.0.2.10:0"), "web")
    (check,) = d.checks.values()
    assert check.state == NO_PORT and not check.runnable
    with pytest.raises(ModelError, match="must name a port"):
        d.attach_probe(R12, "web")
