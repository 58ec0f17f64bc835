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

from localdirector.model.addr import parse_ip

# Loopback traffic only, in a network namespace of the module's own.
pytestmark = pytest.mark.usefixtures("private_loopback")

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
    assert got[("localdirector_virtual_assign_entries", (("virtual", v1),))] == 1
    assert got[("localdirector_virtual_assign_entries", (("virtual", v0),))] == 0
    assert got[("localdirector_virtual_assign_hits_total", (("virtual", v1),))] == 0
    assert got[("localdirector_virtual_pending_fallbacks_total", (("virtual", v0),))] == 0
    assert not any(name == "localdirector_assign_hits_total" for name, _ in got)
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


def test_a_detail_without_the_endpoint_is_a_one_line_error(tmp_path: Path) -> None:
    config = tmp_path / "startup-config"
    config.write_text(CONFIG)
    result = subprocess.run(
        appliance_argv(config, "--no-dataplane", "--no-console", "--metrics-detail", "assign"),
        env={"PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "localdirector: metrics: --metrics-detail needs --metrics [ADDR:]PORT"]


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


# -- the endpoint safe by default: bind, access list, bounds, size ----------------------

def _appliance(tmp_path: Path, *lines: str):
    """An in-process appliance configured by shell lines, as a startup-config would."""
    from localdirector.appliance import Appliance
    from localdirector.shell.registry import Mode

    appliance = Appliance(tmp_path / "startup-config")
    session = appliance.open_session("test", interactive=False)
    session.mode = Mode.CONFIG
    for line in lines:
        assert session.execute(line), line
    return appliance, session


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[object, object, object]]:
    """(appliance, config session, server): the exporter in this process on a free
    loopback port, as `--metrics 127.0.0.1:0` would start it."""
    from localdirector.monitor import exporter

    appliance, session = _appliance(tmp_path, *CONFIG.splitlines())
    server = exporter.serve(appliance, "127.0.0.1", 0)
    try:
        yield appliance, session, server
    finally:
        server.stop()


def test_a_port_alone_listens_on_the_loopback_only(tmp_path: Path) -> None:
    import argparse

    from localdirector.monitor import exporter

    parser = argparse.ArgumentParser()
    exporter.add_arguments(parser)
    appliance, _ = _appliance(tmp_path)
    server = exporter.start(appliance, parser.parse_args(["--metrics", str(free_port())]))
    try:
        assert server.server.sockets[0].getsockname()[0] == "127.0.0.1"
        assert scrape(server.port)
    finally:
        server.stop()
    given = exporter.start(appliance, parser.parse_args(["--metrics", f"0.0.0.0:{free_port()}"]))
    try:
        assert given.server.sockets[0].getsockname()[0] == "0.0.0.0"
    finally:
        given.stop()


def _closed(port: int) -> dict[str, float]:
    got = samples(scrape(port))
    return {dict(labels)["reason"]: value for (name, labels), value in got.items()
            if name == "localdirector_metrics_closed_connections_total"}


def test_the_metrics_access_list_closes_other_peers_at_once(served, caplog) -> None:
    appliance, session, server = served
    assert session.execute("metrics 198.51.100.0 255.255.255.0")
    assert "metrics 198.51.100.0 255.255.255.0" in appliance.running_config()
    with caplog.at_level("WARNING", logger="localdirector.access"):
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
                sock.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
                try:
                    assert sock.recv(100) == b""   # closed, not a byte sent
                except ConnectionResetError:
                    pass
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert refusals == ["metrics connection from 127.0.0.1 refused by the access list"]
    assert session.execute("metrics 127.0.0.0 255.0.0.0")
    assert _closed(server.port)["access-list"] == 3


def test_idle_connections_take_no_thread_and_a_scrape_still_works(served) -> None:
    """1,000 connections that never send a request: the endpoint keeps its two threads,
    closes the longest idle ones to stay at MAX_CONNECTIONS, and answers a scrape."""
    import threading

    from localdirector.monitor.scrapes import MAX_CONNECTIONS

    _, _, server = served
    before = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=5)
            for _ in range(1000)]
    try:
        wait_until(lambda: server.closed["evicted"] >= 1000 - MAX_CONNECTIONS,
                   "the idle connections to be taken in")
        assert len(server.peers) <= MAX_CONNECTIONS
        assert "localdirector_virtual_state" in scrape(server.port)
        ours = sorted(t.name for t in threading.enumerate() if t.name.startswith("metrics"))
        assert ours == ["metrics", "metrics-build_0"]   # the loop and the builder
        assert threading.active_count() <= before + 1   # + the builder, started lazily
    finally:
        for sock in idle:
            sock.close()


def test_an_idle_connection_is_closed_after_the_timeout(tmp_path: Path) -> None:
    from localdirector.monitor.scrapes import ScrapeServer

    server = ScrapeServer(lambda accept: (b"x 1\n", "text/plain"), lambda peer: True,
                          idle_timeout=0.5)
    server.start("127.0.0.1", 0)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while not answer.endswith(b"x 1\n"):
                answer += sock.recv(1000)
            assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
            assert sock.recv(100) == b""   # kept alive, then closed once idle
        assert server.closed["idle"] == 1
    finally:
        server.stop()


def test_assign_entries_are_counted_per_virtual_unless_detail_is_asked(
        tmp_path: Path) -> None:
    """20,000 assign entries: the default scrape has two series per virtual for them,
    exact, and stays small; `--metrics-detail assign` gives one series per entry."""
    from prometheus_client import CollectorRegistry, generate_latest

    from localdirector.model.serverid import ServerId
    from localdirector.monitor.metrics import ApplianceCollector

    appliance, _ = _appliance(tmp_path, *CONFIG.splitlines(), "virtual 192.0.2.10:80:2")
    director = appliance.director
    v1, v2 = (ServerId(parse_ip("192.0.2.10"), 80, bind) for bind in (1, 2))
    with director.lock:
        for n in range(1, 20_001):   # + the configured 198.51.100.0/24 on instance 1
            director.assign(v1 if n % 4 else v2, parse_ip("198.18.0.0") + n, 32)
        for n in (1, 2, 4):          # SYNs from clients of the entries: 2 to :1, 1 to :2
            director.lookup_virtual(parse_ip("198.18.0.0") + n, parse_ip("192.0.2.10"), 80,
                                    count=True)
        director.unassign(v2, parse_ip("198.18.0.4"), 32)   # its hit stays counted

    def scraped(*detail: str) -> str:
        registry = CollectorRegistry()
        registry.register(ApplianceCollector(appliance, detail))
        return generate_latest(registry).decode()

    text = scraped()
    got = samples(text)
    entries = {dict(labels)["virtual"]: value for (name, labels), value in got.items()
               if name == "localdirector_virtual_assign_entries"}
    hits = {dict(labels)["virtual"]: value for (name, labels), value in got.items()
            if name == "localdirector_virtual_assign_hits_total"}
    ident = "192.0.2.10:80:{}:tcp".format
    assert entries == {ident(0): 0, ident(1): 15_001, ident(2): 4_999}
    assert hits == {ident(0): 0, ident(1): 2, ident(2): 1}
    assert "assign_hits_total{" not in text.replace("virtual_assign_hits_total{", "")
    assert len(text) < 20_000
    detailed = samples(scraped("assign"))
    per_entry = [labels for name, labels in detailed if name == "localdirector_assign_hits_total"]
    assert len(per_entry) == 20_000
    assert detailed[("localdirector_assign_hits_total",
                     (("client", "198.18.0.1/32"), ("virtual", ident(1))))] == 1


def test_a_build_is_served_again_for_a_second_whoever_asks(tmp_path: Path) -> None:
    """Scrapers in a loop get the body built at most once per MIN_INTERVAL and format."""
    from prometheus_client import CollectorRegistry

    from localdirector.monitor.exporter import MIN_INTERVAL, Exposition
    from localdirector.monitor.metrics import ApplianceCollector

    appliance, session = _appliance(tmp_path, *CONFIG.splitlines())
    registry = CollectorRegistry()
    registry.register(ApplianceCollector(appliance))
    now = [100.0]
    exposition = Exposition(registry, clock=lambda: now[0])
    text, text_type = exposition.render("")
    assert text_type.startswith("text/plain") and b'virtual="192.0.2.10:80:1:tcp"' in text
    assert session.execute("virtual 192.0.2.10:80:2")
    now[0] += MIN_INTERVAL / 2
    assert exposition.render("*/*")[0] is text                  # built once, served again
    om, om_type = exposition.render("application/openmetrics-text; version=1.0.0")
    assert om_type.startswith("application/openmetrics-text") and b":80:2:tcp" in om
    now[0] += MIN_INTERVAL / 2
    assert b":80:2:tcp" in exposition.render("")[0]           # a second on: built anew


def test_ipv6_servers_are_labelled_by_bracketed_ids_over_an_ipv6_endpoint(
        tmp_path: Path) -> None:
    """`--metrics [::1]:PORT` with `metrics ::1/128`: an IPv6 scraper reads IPv6
    virtuals, reals, assign networks and probe checks, each id in brackets."""
    from localdirector.monitor import exporter

    appliance, session = _appliance(
        tmp_path, "virtual [2001:db8::10]:80:1", "real [2001:db8:1::11]:8001",
        "bind [2001:db8::10]:80:1 [2001:db8:1::11]:8001", "assign [2001:db8::10]:80:1 "
        "2001:db8:c::/48", "probeconfig web tcp", "probe [2001:db8:1::11]:8001 web",
        "metrics ::1/128")
    server = exporter.serve(appliance, "::1", 0, ("assign",))
    try:
        with urllib.request.urlopen(f"http://[::1]:{server.port}/metrics", timeout=5) as got:
            text = got.read().decode()
    finally:
        server.stop()
    labels = {(name, dict(labels).get("virtual") or dict(labels).get("real"))
              for (name, labels) in samples(text)}
    assert ("localdirector_virtual_open_connections", "[2001:db8::10]:80:1:tcp") in labels
    assert ("localdirector_real_open_connections", "[2001:db8:1::11]:8001:0:tcp") in labels
    assert ("localdirector_probe_state", "[2001:db8:1::11]:8001:0:tcp") in labels
    assert {dict(labels)["client"] for (name, labels) in samples(text)
            if name == "localdirector_assign_hits_total"} == {"2001:db8:c::/48"}
