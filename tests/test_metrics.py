"""`--metrics`: the appliance serves Prometheus metrics that `promtool` accepts and a real
Prometheus server scrapes; a port in use is a one-line error (exit 2). The appliance
runs as an operator starts it (`--no-dataplane`, on this host's loopback); traffic
counters through the data plane are in test_monitor_netns.py."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from appliance_driver import appliance_argv

CONFIG = """\
real 203.0.113.11
real 203.0.113.12 os
virtual 192.0.2.10:80
bind 192.0.2.10:80 203.0.113.11 203.0.113.12
virtual 192.0.2.10:80:1
assign 192.0.2.10:80:1 198.51.100.0 255.255.255.0
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return answer.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def wait_until(check, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while (found := check()) is None or found is False:
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)
    return found


@pytest.fixture
def metrics(tmp_path: Path) -> Iterator[int]:
    """An appliance with the config above, its metrics on a free loopback port."""
    config = tmp_path / "startup-config"
    config.write_text(CONFIG)
    port = free_port()
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen(appliance_argv(config, "--no-dataplane", "--no-console",
                                           "--metrics", f"127.0.0.1:{port}"),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def up() -> bool | None:
        if proc.poll() is not None:
            pytest.fail(f"appliance exited: {proc.communicate()}")
        try:
            return bool(scrape(port))
        except OSError:
            return None
    try:
        wait_until(up, "the metrics endpoint")
        yield port
    finally:
        proc.terminate()
        assert proc.wait(10) == 0   # --no-console: SIGTERM ends the wait


def test_scrape_gives_the_model_and_promtool_accepts_it(metrics: int) -> None:
    text = scrape(metrics)
    got = samples(text)
    v0, v1 = "192.0.2.10:80:0:tcp", "192.0.2.10:80:1:tcp"
    r11, r12 = "203.0.113.11:0:0:tcp", "203.0.113.12:0:0:tcp"
    assert got[("localdirector_virtual_open_connections", (("virtual", v0),))] == 0
    assert got[("localdirector_virtual_connections_total", (("virtual", v1),))] == 0
    assert got[("localdirector_virtual_state", (("state", "IS"), ("virtual", v0)))] == 1
    assert got[("localdirector_virtual_state", (("state", "FAILED"), ("virtual", v0)))] == 0
    assert got[("localdirector_real_state", (("real", r12), ("state", "OOS")))] == 1
    assert got[("localdirector_real_state", (("real", r12), ("state", "IS")))] == 0
    assert got[("localdirector_real_reassigns_total", (("real", r11), ("reason", "reset")))] == 0
    assert got[("localdirector_assign_hits_total",
                (("client", "198.51.100.0/24"), ("virtual", v1)))] == 0
    assert got[("localdirector_virtual_packets_total",
                (("direction", "in"), ("virtual", v0)))] == 0
    assert got[("localdirector_dataplane_running", ())] == 0
    assert not any(name.startswith(("python_", "process_")) for name, _ in got)
    check = subprocess.run(["promtool", "check", "metrics"], input=text, text=True,
                           capture_output=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_real_prometheus_server_scrapes_it(metrics: int, tmp_path: Path) -> None:
    """Prometheus 2 asks for OpenMetrics first: the library answers in it, and the
    server stores our series and marks the target up."""
    web = free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n  - job_name: localdirector\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{metrics}']\n")
    server = subprocess.Popen(
        [shutil.which("prometheus") or "prometheus",
         f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{web}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def query(expr: str) -> list | None:
        url = f"http://127.0.0.1:{web}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                return json.load(answer)["data"]["result"] or None
        except OSError:
            return None
    try:
        up = wait_until(lambda: query('up{job="localdirector"}'), "a scrape", timeout=30)
        assert up[0]["value"][1] == "1"
        state = wait_until(lambda: query(
            'localdirector_real_state{real="203.0.113.12:0:0:tcp",state="OOS"}'),
            "a series of ours", timeout=10)
        assert state[0]["value"][1] == "1"
    finally:
        server.terminate()
        server.wait(20)


def test_a_port_in_use_is_a_one_line_error(tmp_path: Path) -> None:
    config = tmp_path / "startup-config"
    config.write_text(CONFIG)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            appliance_argv(config, "--no-dataplane", "--no-console", "--metrics",
                           f"127.0.0.1:{port}"),
            env={"PYTHONPATH": str(Path(__file__).resolve().parents[1])},
            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"localdirector: metrics: cannot listen on 127.0.0.1:{port}: Address already in use"]


def test_probe_results_and_the_failover_role_are_series(tmp_path: Path) -> None:
    """In-process (no probe runner, so no probe traffic): a check's state and counts, and
    a failover unit's role, as promtool-clean series."""
    from prometheus_client import CollectorRegistry, generate_latest

    from localdirector.appliance import Appliance
    from localdirector.model.failover import FailoverStatus
    from localdirector.model.probes import record
    from localdirector.monitor.metrics import ApplianceCollector
    from localdirector.shell.registry import Mode

    appliance = Appliance(tmp_path / "startup-config")
    session = appliance.open_session("test", interactive=False)
    session.mode = Mode.CONFIG
    for line in (*CONFIG.splitlines(), "probeconfig web http port 80",
                 "probe 203.0.113.11 web"):
        assert session.execute(line), line
    [check] = appliance.director.checks.values()
    record(check, False, "refused", 0.0, time.time())

    class Pair:
        def status(self) -> FailoverStatus:
            return FailoverStatus("Primary", "Standby", 0.0, "eth2", "198.19.255.1",
                                  "Normal", "Active", 12.0, "idle", ())
    appliance.failover = Pair()   # as the failover service does
    registry = CollectorRegistry()
    registry.register(ApplianceCollector(appliance))
    text = generate_latest(registry).decode()
    got = samples(text)
    ident = (("port", "80"), ("probe", "web"), ("real", "203.0.113.11:0:0:tcp"),
             ("type", "http"))
    assert got[("localdirector_probe_state", (*ident[:3], ("state", "DOWN"), ident[3]))] == 1
    assert got[("localdirector_probe_results_total", (*ident[:2], ident[2],
                                                      ("result", "failed"), ident[3]))] == 1
    assert got[("localdirector_failover_role", (("role", "Standby"),
                                                ("unit", "Primary")))] == 1
    check_run = subprocess.run(["promtool", "check", "metrics"], input=text, text=True,
                               capture_output=True, timeout=30)
    assert check_run.returncode == 0, check_run.stdout + check_run.stderr
