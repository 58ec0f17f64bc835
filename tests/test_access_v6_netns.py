"""Operator access and remote syslog over IPv6 (issue 26 item 5), with real clients:
OpenSSH's `ssh -6` and inetutils' `telnet -6` from a client namespace over a
2001:db8:ff::/64 link, the access lists by IPv6 prefix, `logging host` to an IPv6
collector, and which family each listener answers (docs/design.rst, "Operator access").

The appliance runs the documented way (`localdirector --config FILE`) in a namespace of
the test's own; the client namespace holds 2001:db8:c::5 (inside `ssh 2001:db8:c::/48`)
and 2001:db8:d::5 (outside it) and picks its source with -b."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from conftest import require_netns

PASSWORD = "s3cret"
DIRECTOR, COLLECTOR = "2001:db8:ff::1", "2001:db8:ff::2"
DIRECTOR_V4 = "198.19.255.1"
INSIDE, OUTSIDE = "2001:db8:c::5", "2001:db8:d::5"
SSH_PORT, TELNET_PORT, SYSLOG_PORT = 2222, 2323, 5514
SSH_OPTIONS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5",
               "-o", "PubkeyAuthentication=no"]


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def link() -> Iterator[tuple[str, str]]:
    """(director namespace, client namespace) linked by one veth: IPv6 2001:db8:ff::/64
    and IPv4 198.19.255.0/24; the client's two sources routed through its end."""
    require_netns()
    base = f"ldv6a-{os.getpid()}"
    director, client = f"{base}-d", f"{base}-c"
    sh("ip", "netns", "add", director)
    try:
        sh("ip", "netns", "add", client)
        sh("ip", "-n", director, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
           "netns", client)
        for ns, v6, v4 in ((director, DIRECTOR, DIRECTOR_V4),
                           (client, COLLECTOR, "198.19.255.2")):
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "addr", "add", f"{v6}/64", "dev", "eth0", "nodad")
            sh("ip", "-n", ns, "addr", "add", f"{v4}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
        for source in (INSIDE, OUTSIDE):
            sh("ip", "-n", client, "addr", "add", f"{source}/128", "dev", "eth0", "nodad")
            sh("ip", "-n", director, "-6", "route", "add", f"{source}/128", "via", COLLECTOR)
        yield director, client
    finally:
        for ns in (client, director):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


class Running:
    """`localdirector --config FILE` with the given doors, in the director namespace."""

    def __init__(self, ns: str, directory: Path, config: str, *doors: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "startup-config").write_text(config)
        self.log_path = directory / "appliance.log"
        self.ns = ns
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, "-m", "localdirector",
                 "--no-dataplane", "--no-console", "--config",
                 str(directory / "startup-config"), *doors],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)

    def wait_listening(self, port: int) -> None:
        deadline = time.monotonic() + 20
        while f":{port} " not in subprocess.run(["ip", "netns", "exec", self.ns, "ss", "-ltnH"],
                                                capture_output=True, text=True).stdout:
            assert self.proc.poll() is None, self.log()
            assert time.monotonic() < deadline, f"not listening on {port}: {self.log()}"
            time.sleep(0.1)

    def listening(self) -> set[str]:
        """Local address:port of each listening TCP socket, as `ss` writes them."""
        out = subprocess.run(["ip", "netns", "exec", self.ns, "ss", "-ltnH"],
                             capture_output=True, text=True).stdout
        return {line.split()[3] for line in out.splitlines()}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def ssh(client: str, source: str, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", client, "sshpass", "-p", PASSWORD, "ssh", "-6", "-T",
         "-b", source, "-p", str(SSH_PORT), *SSH_OPTIONS, f"admin@{DIRECTOR}", *command],
        capture_output=True, text=True, timeout=30)


def telnet(client: str, source: str) -> pexpect.spawn:
    return pexpect.spawn("ip", ["netns", "exec", client, "telnet", "-6", "-b", source,
                                DIRECTOR, str(TELNET_PORT)],
                         encoding="utf-8", timeout=10, dimensions=(40, 160))


COLLECT = """
import socket, sys
with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
    sock.bind((sys.argv[1], int(sys.argv[2])))
    print("bound", flush=True)
    while True:
        print(sock.recv(65536).decode(errors="replace").replace("\\n", " "), flush=True)
"""


@pytest.fixture(scope="module")
def collector(link: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[Path]:
    """A UDP socket on COLLECTOR in the client namespace, the remote syslog host; yields
    the file it writes each datagram to, a line each."""
    path = tmp_path_factory.mktemp("collector") / "received"
    with open(path, "w") as out:
        proc = subprocess.Popen(["ip", "netns", "exec", link[1], sys.executable, "-c", COLLECT,
                                 COLLECTOR, str(SYSLOG_PORT)], stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while "bound" not in path.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, path.read_text()
            time.sleep(0.05)
        yield path
    finally:
        proc.kill()
        proc.wait(10)


@pytest.fixture(scope="module")
def appliance(link: tuple[str, str], tmp_path_factory: pytest.TempPathFactory,
              collector: Path) -> Iterator[Running]:
    config = (f"hostname v6edge\npassword {PASSWORD}\n"
              "ssh 2001:db8:c::/48\ntelnet 2001:db8:c::/48\nssh 198.51.100.0 255.255.255.0\n"
              f"logging host {COLLECTOR} transport udp port {SYSLOG_PORT}\n")
    running = Running(link[0], tmp_path_factory.mktemp("v6"), config,
                      "--ssh", f"[{DIRECTOR}]:{SSH_PORT}",
                      "--telnet", f"[{DIRECTOR}]:{TELNET_PORT}")
    try:
        running.wait_listening(SSH_PORT)
        running.wait_listening(TELNET_PORT)
        yield running
    finally:
        running.stop()


def received(path: Path, text: str, timeout: float = 10) -> list[str]:
    """The collector's datagrams, once one contains `text` (or the time is up)."""
    deadline = time.monotonic() + timeout
    while text not in path.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    return path.read_text().splitlines()


def test_listeners_bind_the_ipv6_address_given_and_nothing_else(appliance: Running) -> None:
    assert appliance.listening() == {f"[{DIRECTOR}]:{SSH_PORT}",
                                     f"[{DIRECTOR}]:{TELNET_PORT}"}


def test_ssh_over_ipv6_admits_the_listed_prefix_only(appliance: Running, link, collector
                                                     ) -> None:
    inside = ssh(link[1], INSIDE, "show version")
    assert inside.returncode == 0 and "v6edge" in inside.stdout, inside.stderr
    outside = ssh(link[1], OUTSIDE, "show version")
    assert outside.returncode != 0 and "v6edge" not in outside.stdout
    # The refusal reaches the IPv6 syslog collector, over UDP.
    got = received(collector, f"ssh connection from {OUTSIDE} refused by the access list")
    assert any(f"ssh connection from {OUTSIDE} refused" in m and " v6edge " in m
               for m in got), got
    who = ssh(link[1], INSIDE, "show users")
    assert INSIDE in who.stdout, who.stdout


def test_telnet_over_ipv6_admits_the_listed_prefix_only(appliance: Running, link) -> None:
    inside = telnet(link[1], INSIDE)
    try:
        inside.expect_exact("Password:")
        inside.send(PASSWORD + "\r")
        inside.expect_exact("v6edge>")
        inside.send("exit\r")
        inside.expect(pexpect.EOF)
    finally:
        inside.close(force=True)
    outside = telnet(link[1], OUTSIDE)
    try:
        outside.expect(pexpect.EOF)
        assert "Password:" not in outside.before
    finally:
        outside.close(force=True)
    assert "telnet connection from 2001:db8:d::5 refused" in appliance.log()


def test_an_ipv4_address_listens_on_ipv4_only_and_no_address_on_both(
        link: tuple[str, str], tmp_path: Path, appliance: Running) -> None:
    """`--ssh 198.19.255.1:P` is no accidental dual-stack listener; `--telnet P` (no
    address) is meant to be one: every address of both families."""
    appliance.stop()
    running = Running(link[0], tmp_path, f"password {PASSWORD}\n",
                      "--ssh", f"{DIRECTOR_V4}:{SSH_PORT}", "--telnet", str(TELNET_PORT))
    try:
        running.wait_listening(SSH_PORT)
        running.wait_listening(TELNET_PORT)
        assert running.listening() == {f"{DIRECTOR_V4}:{SSH_PORT}", f"0.0.0.0:{TELNET_PORT}",
                                       f"[::]:{TELNET_PORT}"}
        refused = ssh(link[1], INSIDE, "show version")
        assert refused.returncode == 255 and "refused" in refused.stderr, refused.stderr
        answered = telnet(link[1], INSIDE)
        try:
            answered.expect_exact("Password:")
        finally:
            answered.close(force=True)
    finally:
        running.stop()


def test_snmp_agent_on_an_ipv6_address_answers_an_ipv6_manager(
        link: tuple[str, str], tmp_path: Path) -> None:
    """`--snmp [ADDR]:PORT`: snmpd on that address (udp6, rocommunity6) answers
    snmpwalk from the client namespace with the rows of both families' reals."""
    running = Running(link[0], tmp_path, "hostname v6snmp\nsnmp-server community n0c\n"
                      "real 203.0.113.11:80\nreal [2001:db8:1::11]:8001\n",
                      "--snmp", f"[{DIRECTOR}]:1161")
    try:
        deadline = time.monotonic() + 20
        while True:
            got = subprocess.run(
                ["ip", "netns", "exec", link[1], "snmpwalk", "-v2c", "-c", "n0c", "-On",
                 "-t", "1", "-r", "0", f"udp6:[{DIRECTOR}]:1161", ".1.3.6.1"],
                capture_output=True, text=True, timeout=30)
            if got.returncode == 0 or time.monotonic() > deadline:
                break
            assert running.proc.poll() is None, running.log()
            time.sleep(0.3)
        assert got.returncode == 0, got.stderr + running.log()
        assert '"v6snmp"' in got.stdout                           # sysName
        assert '"203.0.113.11:80:0:tcp"' in got.stdout             # ldRealName
        real6 = ".1.3.6.1.4.1.32473.6324.1.2.1.4.2.16.32.1.13.184.0.1" + ".0" * 9 + ".17.8001.6"
        assert f'{real6} = STRING: "[2001:db8:1::11]:8001:0:tcp"' in got.stdout
    finally:
        running.stop()
