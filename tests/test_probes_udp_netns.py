"""The udp and dns probes for real (issue 25, item 5): the appliance, started the
documented way in the lab's director namespace, probes dnsmasq and a small UDP echo
server in the reals' own namespaces. An answering server is UP; a stopped one is DOWN
at once by the ICMP port unreachable its kernel sends (`refused`, not `timeout`); an
unexpected rcode, an answer without the expected text, silence and an answer that is
no DNS answer each fail with their own result."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from localdirector.lab import Lab

from appliance_driver import R12, R13, R14, appliance  # noqa: F401
from test_probes_netns import probe_rows, wait_listening, wait_state

ECHO_PORT = 7007
# Answers "PONG " and the datagram; a datagram starting with MUTE gets no answer.
ECHO_SERVER = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[1], int(sys.argv[2])))
while True:
    data, peer = sock.recvfrom(2048)
    if not data.startswith(b"MUTE"):
        sock.sendto(b"PONG " + data, peer)
"""
FAST = "interval 1 timeout 0.5 failures 1 successes 1"


@contextmanager
def dnsmasq(lab: Lab, real: str, run_dir: Path) -> Iterator[subprocess.Popen]:
    """dnsmasq on the real's port 53 only: `who.example` has a TXT record, other names
    under `example` are NXDOMAIN, and nothing is forwarded anywhere."""
    proc = lab.popen_in(lab.real_ns[real], [
        "/usr/sbin/dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts", "--port", "53",
        "--listen-address", real, "--bind-interfaces", "--txt-record=who.example,real1",
        "--local=/example/", f"--pid-file={run_dir / f'dnsmasq-{real}.pid'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(lab, lab.real_ns[real], 53, udp=True)
        yield proc
    finally:
        proc.terminate()
        proc.wait(5)


@contextmanager
def echo_server(lab: Lab, real: str) -> Iterator[None]:
    proc = lab.popen_in(lab.real_ns[real], [sys.executable, "-c", ECHO_SERVER, real,
                                            str(ECHO_PORT)])
    try:
        wait_listening(lab, lab.real_ns[real], ECHO_PORT, udp=True)
        yield
    finally:
        proc.kill()
        proc.wait(5)


def result(console, real: str, probe: str) -> list[str]:
    """(state, result) of one check in `show probe`."""
    return probe_rows(console)[(real, probe)][4:6]


@pytest.mark.netns
def test_udp_and_dns_probes_judge_real_servers(lab: Lab, appliance, tmp_path: Path
                                                ) -> None:
    # Every probe of R14's dead port must be answered by an ICMP error, not only the
    # first few a second: the kernel's default rate limit would turn some into timeouts.
    lab.run_in(lab.real_ns[R14], ["sysctl", "-qw", "net.ipv4.icmp_ratelimit=0"])
    with dnsmasq(lab, R12, tmp_path), dnsmasq(lab, R14, tmp_path) as r14_dns, \
            echo_server(lab, R13):
        console = appliance([
            f"real {R12}:53", f"real {R14}:53", f"real {R13}:{ECHO_PORT}",
            f"probeconfig who dns {FAST} query who.example type txt",
            f"probeconfig nx dns {FAST} query nosuch.example type a",
            f"probeconfig nxok dns {FAST} query nosuch.example type a rcode nxdomain,refused",
            f"probeconfig echo udp {FAST} send PING\\x20me expect PONG\\x20PING\\x20",
            f"probeconfig wrong udp {FAST} send PING expect nothing like it",
            f"probeconfig mute udp {FAST} send MUTE",
            f"probeconfig notdns dns {FAST}",
            # One probe per server: the others reach the same reals through virtuals.
            "virtual 192.0.2.10:53", f"bind 192.0.2.10:53 {R12}:53 {R14}:53",
            "probe 192.0.2.10:53 who", f"probe {R12}:53 nx",
            "virtual 192.0.2.11:53", f"bind 192.0.2.11:53 {R12}:53", "probe 192.0.2.11:53 nxok",
            f"probe {R13}:{ECHO_PORT} echo",
            *(line for n, probe in ((12, "wrong"), (13, "mute"), (14, "notdns"))
              for line in (f"virtual 192.0.2.{n}:{ECHO_PORT}",
                           f"bind 192.0.2.{n}:{ECHO_PORT} {R13}:{ECHO_PORT}",
                           f"probe 192.0.2.{n}:{ECHO_PORT} {probe}"))])
        r12, r13, r14 = f"{R12}:53:0:tcp", f"{R13}:{ECHO_PORT}:0:tcp", f"{R14}:53:0:tcp"
        for real, probe in ((r12, "who"), (r14, "who"), (r13, "echo")):
            wait_state(console, real, "UP", timeout=5, probe=probe)
        for real, probe in ((r12, "nx"), (r13, "wrong"), (r13, "mute"), (r13, "notdns")):
            wait_state(console, real, "DOWN", timeout=5, probe=probe)
        wait_state(console, r12, "UP", timeout=5, probe="nxok")
        assert result(console, r12, "who") == ["UP", "NOERROR"]
        assert result(console, r13, "echo") == ["UP", "answered"]
        assert result(console, r12, "nx") == ["DOWN", "NXDOMAIN"]
        assert result(console, r12, "nxok") == ["UP", "NXDOMAIN"]
        assert result(console, r13, "wrong") == ["DOWN", "no-text"]
        assert result(console, r13, "mute") == ["DOWN", "timeout"]
        assert result(console, r13, "notdns") == ["DOWN", "bad-response"]

        r14_dns.terminate()
        r14_dns.wait(5)
        wait_state(console, r14, "DOWN", timeout=5, probe="who")
        assert result(console, r14, "who") == ["DOWN", "refused"]
        assert console.rows("real")[r14][-1] == "probe"
        assert result(console, r12, "who") == ["UP", "NOERROR"]
        assert "probe who (port 53) DOWN: refused" in console.run("show syslog")
        with dnsmasq(lab, R14, tmp_path):
            wait_state(console, r14, "UP", timeout=5, probe="who")
