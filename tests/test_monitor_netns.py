"""Monitoring through the real data plane: a real that fails and comes back is reported
to a real `rsyslogd` over UDP and TCP, and the metrics endpoint counts the traffic; given
a port alone, it answers on the director's loopback and from no segment.

rsyslogd runs in a namespace of its own, linked to the director's by 198.19.255.0/24
(director .1, collector .2), with its own configuration and files: the host's syslog
is neither used nor touched."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from appliance_driver import (LINK_DIRECTOR, LINK_PEER, R12, R13, VIP,  # noqa: F401
                              appliance, ditched_then_retried, linked_namespace,
                              simple_config)
from test_metrics import samples

from localdirector.lab import Lab
from localdirector.lab.topology import DIRECTOR_REAL_SIDE

pytestmark = pytest.mark.netns

DIRECTOR_SIDE, COLLECTOR = LINK_DIRECTOR, LINK_PEER
METRICS_PORT = 9464

RSYSLOG_CONF = """\
global(workDirectory="{dir}")
module(load="imudp")
module(load="imtcp")
input(type="imudp" address="{addr}" port="514")
input(type="imtcp" address="{addr}" port="601")
template(name="line" type="string"
         string="%inputname% %hostname% %app-name% %syslogseverity-text% %msg%\\n")
action(type="omfile" file="{dir}/received.log" template="line")
"""


@pytest.fixture
def collector(lab: Lab, tmp_path: Path) -> Iterator[Path]:
    """rsyslogd listening on COLLECTOR (514/udp, 601/tcp); yields the file it writes."""
    with linked_namespace(lab, "log", "log0") as ns:
        conf = tmp_path / "rsyslog.conf"
        conf.write_text(RSYSLOG_CONF.format(dir=tmp_path, addr=COLLECTOR))
        proc = subprocess.Popen(["ip", "netns", "exec", ns, "rsyslogd", "-n", "-f", str(conf),
                                 "-i", str(tmp_path / "rsyslogd.pid")],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 10
            while ":601 " not in subprocess.run(["ip", "netns", "exec", ns, "ss", "-ltn"],
                                                 capture_output=True, text=True).stdout:
                assert proc.poll() is None, proc.communicate()[0]
                assert time.monotonic() < deadline, "rsyslogd did not start listening"
                time.sleep(0.1)
            yield tmp_path / "received.log"
        finally:
            proc.terminate()
            proc.wait(10)


def test_failed_and_back_in_service_reach_rsyslog_and_metrics_count(
        lab: Lab, appliance, collector: Path) -> None:
    bad = R13
    console = appliance(simple_config(
        VIP, "roundrobin", [R12, bad], f"threshold {bad} 2", f"reassign {bad} 1",
        f"retry {bad} 2", f"logging host {COLLECTOR}",
        f"logging host {COLLECTOR} transport tcp", "logging trap warnings"),
        "--metrics", str(METRICS_PORT))
    ditched_then_retried(lab, console, "refuse", bad, R12, timeout=8)

    failed = f"real {bad}:0:0:tcp FAILED after 2 unanswered connections"
    back = f"real {bad}:0:0:tcp answered its test connection: back in service"
    wanted = {f"{transport} localdirector localdirector warning {text}"
              for transport in ("imudp", "imtcp") for text in (failed, back)}
    deadline = time.monotonic() + 10
    while not wanted <= set(collector.read_text().splitlines() if collector.exists() else []):
        assert time.monotonic() < deadline, collector.read_text() if collector.exists() else ""
        time.sleep(0.2)
    show = console.run("show logging")
    for transport, port in (("udp", 514), ("tcp", 601)):
        row = re.search(rf"{COLLECTOR} +{transport} +{port} +(\d+) +0 +0 +ok", show)
        assert row and int(row.group(1)) >= 3, show   # FAILED, TESTING, back in service

    for ns, addr in ((lab.client_ns, lab.director_client_side["preferred"]),
                     (lab.real_ns[R12], DIRECTOR_REAL_SIDE)):
        reached = lab.run_in(ns, ["curl", "-s", "--max-time", "3",
                                  f"http://{addr}:{METRICS_PORT}/metrics"])
        assert reached.returncode == 7, (ns, addr, reached)   # 7: connection refused
    scraped = lab.run_in(lab.director_ns, ["curl", "-sf",
                                           f"http://127.0.0.1:{METRICS_PORT}/metrics"])
    assert scraped.returncode == 0, scraped.stderr
    got = samples(scraped.stdout)
    virtual = (("virtual", f"{VIP}:80:0:tcp"),)
    assert got[("localdirector_virtual_connections_total", virtual)] >= 10
    assert got[("localdirector_virtual_packets_total", (("direction", "in"), *virtual))] > 0
    assert got[("localdirector_virtual_bytes_total", (("direction", "out"), *virtual))] > 0
    assert got[("localdirector_real_state", (("real", f"{bad}:0:0:tcp"), ("state", "IS")))] == 1
    assert got[("localdirector_dataplane_running", ())] == 1
    assert got[("localdirector_dataplane_reassigned_connections_total", ())] == 2
    assert got[("localdirector_dataplane_packets_total", ())] > 0
    assert got[("localdirector_dataplane_maglev_forwarded_packets_total", ())] == 0
    assert ("localdirector_dataplane_queue_waiting_packets", ()) in got
    check = subprocess.run(["promtool", "check", "metrics"], input=scraped.stdout, text=True,
                           capture_output=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr


def test_an_address_given_opens_the_endpoint_to_the_access_list_only(
        lab: Lab, appliance) -> None:
    """`--metrics 0.0.0.0:PORT` with `metrics 198.51.100.0 255.255.255.0`: a client of
    that network scrapes through the director's client-side address; a real, which can
    reach the real-side address, is closed without an answer, and the refusal logged."""
    console = appliance(simple_config(VIP, "roundrobin", [R12],
                                      "metrics 198.51.100.0 255.255.255.0"),
                        "--metrics", f"0.0.0.0:{METRICS_PORT}")

    def curl(ns: str, addr: str) -> subprocess.CompletedProcess:
        return lab.run_in(ns, ["curl", "-s", "--max-time", "5",
                               f"http://{addr}:{METRICS_PORT}/metrics"])
    listed = curl(lab.client_ns, lab.director_client_side["preferred"])
    assert listed.returncode == 0 and "localdirector_info{" in listed.stdout, listed
    other = curl(lab.real_ns[R12], DIRECTOR_REAL_SIDE)
    assert other.returncode in (52, 56) and other.stdout == "", other   # closed at once
    assert (f"metrics connection from {R12} refused by the access list"
            in console.run("show syslog"))
