"""Real clients against the real appliance: OpenSSH (`ssh`, sshpass, keys, `ssh-keyscan`),
the `telnet` client and a pseudo-terminal standing in for a serial line, all on loopback.

Everything here is what an operator does: log in, abbreviate, ask `?`, configure in one
session and see it in another, `who` and `kill`, get timed out, get refused."""

from __future__ import annotations

import os
import pty
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pexpect.fdpexpect
import pytest
from pty_terminal import TaggedTyping, clean

# Loopback traffic only, in a network namespace of the module's own.
pytestmark = pytest.mark.usefixtures("private_loopback")

PASSWORD = "s3cret"
ENABLE = "t0p"
MAIN_CONFIG = f"""\
hostname lab
password {PASSWORD}
enable password {ENABLE}
ssh 127.0.0.0 255.0.0.0
telnet 127.0.0.0 255.0.0.0
"""
SSH_OPTIONS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Appliance:
    """`python -m localdirector` with SSH and telnet on loopback, headless."""

    def __init__(self, directory: Path, config: str, *extra: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        self.config = directory / "startup-config"
        self.config.write_text(config)
        self.authorized_keys = directory / "authorized_keys"
        self.ssh_port, self.telnet_port = free_port(), free_port()
        self.log_path = directory / "appliance.log"
        self.argv = [sys.executable, "-m", "localdirector", "--no-dataplane", "--no-console",
                     "--config", str(self.config), "--authorized-keys",
                     str(self.authorized_keys), "--ssh", f"127.0.0.1:{self.ssh_port}",
                     "--telnet", f"127.0.0.1:{self.telnet_port}", *extra]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "Appliance":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        for port in (self.ssh_port, self.telnet_port):
            while True:
                assert self.proc.poll() is None, f"appliance exited: {self.log()}"
                assert time.monotonic() < deadline, f"appliance not listening: {self.log()}"
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.05)
        return self

    def __enter__(self) -> "Appliance":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            assert self.proc.wait(10) == 0, self.log()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def logged(self, text: str, timeout: float = 5) -> bool:
        """Log records reach stderr from the appliance's log thread, a moment later."""
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    # -- clients -------------------------------------------------------------------------
    def ssh_argv(self, *args: str) -> list[str]:
        return ["ssh", "-p", str(self.ssh_port), *SSH_OPTIONS, *args]

    def ssh(self, *command: str, password: str = PASSWORD, stdin: str | None = None
            ) -> subprocess.CompletedProcess[str]:
        """Password login, no PTY: `command` as exec, or `stdin` as a script."""
        return subprocess.run(["sshpass", "-p", password,
                               *self.ssh_argv("-T", "-o", "PubkeyAuthentication=no",
                                              "admin@127.0.0.1", *command)],
                              input=stdin or "", capture_output=True, text=True, timeout=20)

    def configure(self, *lines: str) -> None:
        result = self.ssh(stdin="\n".join(["enable", ENABLE, "configure terminal", *lines]))
        assert result.returncode == 0, result.stdout + result.stderr

    def ssh_terminal(self) -> "Terminal":
        child = pexpect.spawn("sshpass", ["-p", PASSWORD, *self.ssh_argv(
            "-tt", "-o", "PubkeyAuthentication=no", "admin@127.0.0.1")],
            encoding="utf-8", timeout=10, dimensions=(40, 160))
        return Terminal(child).expect_prompt("lab>")

    def telnet(self) -> pexpect.spawn:
        return pexpect.spawn("telnet", ["127.0.0.1", str(self.telnet_port)],
                             encoding="utf-8", timeout=10, dimensions=(40, 160))

    def telnet_terminal(self) -> "Terminal":
        child = self.telnet()
        child.expect_exact("Password:")
        child.send(PASSWORD + "\r")
        return Terminal(child).expect_prompt("lab>")


class Terminal(TaggedTyping):
    """An interactive session; prompt_toolkit redraws the line, so a sync tag typed after
    a command marks where its output ends."""

    def __init__(self, child: pexpect.spawn) -> None:
        self.child = child

    def expect_prompt(self, prompt: str) -> "Terminal":
        self.child.expect_exact(prompt)
        return self

    def enable(self) -> None:
        self.child.send("enable\r")
        self.child.expect_exact("Password:")
        self.child.send(ENABLE + "\r")
        self.child.expect_exact("lab#")

    def closed(self, timeout: float = 10) -> str:
        """Wait for the far end to hang up; what was shown until then."""
        self.child.expect(pexpect.EOF, timeout=timeout)
        return clean(self.child.before)


@pytest.fixture(scope="module")
def serial_line() -> Iterator[tuple[int, str]]:
    master, slave = pty.openpty()
    try:
        yield master, os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


@pytest.fixture(scope="module")
def main(tmp_path_factory: pytest.TempPathFactory,
         serial_line: tuple[int, str]) -> Iterator[Appliance]:
    appliance = Appliance(tmp_path_factory.mktemp("main"), MAIN_CONFIG,
                          "--tty", serial_line[1]).start()
    try:
        yield appliance
    finally:
        appliance.stop()


# -- SSH ---------------------------------------------------------------------------------

def test_ssh_exec_prints_output_and_reports_status(main: Appliance) -> None:
    ok = main.ssh("show version")
    assert ok.returncode == 0 and "Hostname:" in ok.stdout and "lab" in ok.stdout
    bad = main.ssh("show bogus")
    assert bad.returncode != 0 and "% Invalid input detected at '^' marker." in bad.stdout
    # `enable` still wants its own password, even for a script.
    script = main.ssh(stdin=f"enable\n{ENABLE}\nshow running-config\n")
    assert script.returncode == 0, script.stdout
    assert "password scrypt$" in script.stdout and PASSWORD not in script.stdout
    refused = main.ssh(stdin="enable\nwrong\nshow running-config\n")
    assert refused.returncode != 0 and "% Access denied" in refused.stdout
    assert "password scrypt$" not in refused.stdout


# Python's warning lines: "FILE:LINE: CATEGORY: message".
WARNING_LINE = re.compile(r"^\S+:\d+: \w*Warning: .*$", re.M)


def test_starting_with_ssh_prints_no_warnings(tmp_path: Path) -> None:
    """Issue 23 item 6: asyncssh's import warned five times under cryptography 51
    (localdirector/access/sshlib.py). A start, a login and a stop print none."""
    appliance = Appliance(tmp_path, MAIN_CONFIG).start()
    try:
        assert "Hostname:" in appliance.ssh("show version").stdout
    finally:
        appliance.stop()
    assert WARNING_LINE.findall(appliance.log()) == [], appliance.log()


def test_ssh_interactive_abbreviations_help_and_enable(main: Appliance) -> None:
    term = main.ssh_terminal()
    assert "Hostname:" in term.run("sh ver")
    screen = term.type("sh ?")
    assert re.search(r"^  version\s+\S", screen, re.M) and "lab>sh " in screen
    term.child.send("\x15")                      # Ctrl-U: drop the kept `sh `
    assert "% Invalid input" in term.run("conf t")   # user mode has no configure
    # No way out to the host: no system prompt (Meta-!), no $EDITOR (Ctrl-X Ctrl-E).
    assert "uid=" not in term.run("\x1b!id")
    assert "uid=" not in term.type("\x18\x05")
    term.enable()
    assert "Enter configuration commands" in term.run("conf t")
    assert "<cr>" in term.type("virtual 192.0.2.99:80 ?")
    term.child.send("\x15")
    term.child.send("end\rexit\r")
    term.closed()


def test_ssh_public_key_from_authorized_keys(main: Appliance, tmp_path: Path) -> None:
    for name in ("listed", "stranger"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                        str(tmp_path / name)], check=True)
    main.authorized_keys.write_text((tmp_path / "listed.pub").read_text())
    try:
        def with_key(name: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(main.ssh_argv(
                "-i", str(tmp_path / name), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", "PasswordAuthentication=no", "admin@127.0.0.1", "show version"),
                capture_output=True, text=True, timeout=20)
        listed = with_key("listed")
        assert listed.returncode == 0 and "Hostname:" in listed.stdout, listed.stderr
        stranger = with_key("stranger")
        assert stranger.returncode == 255 and "Permission denied" in stranger.stderr
    finally:
        main.authorized_keys.unlink()
    assert with_key("listed").returncode == 255     # revoked: re-read at every login


def test_ssh_three_wrong_passwords_disconnect_and_are_logged(main: Appliance) -> None:
    ssh, *args = main.ssh_argv("-o", "PubkeyAuthentication=no",
                               "-o", "NumberOfPasswordPrompts=5", "admin@127.0.0.1")
    child = pexpect.spawn(ssh, args, encoding="utf-8", timeout=10)
    for attempt in range(3):
        child.expect("assword:")
        child.send(f"guess{attempt}\r")
    child.expect("Too many authentication failures")
    child.expect(pexpect.EOF)
    assert "lab>" not in child.before
    for n in (1, 2, 3):
        assert main.logged(f"ssh login from 127.0.0.1 failed: wrong password ({n} of 3)")


def test_ssh_offers_no_way_to_the_host(main: Appliance) -> None:
    forward = subprocess.run(["sshpass", "-p", PASSWORD, *main.ssh_argv(
        "-o", "PubkeyAuthentication=no", "-W", f"127.0.0.1:{main.telnet_port}",
        "admin@127.0.0.1")], input="", capture_output=True, text=True, timeout=20)
    assert forward.returncode == 255 and "forwarding failed" in forward.stderr, forward.stderr
    sftp = main.ssh("-s", "sftp")
    assert sftp.returncode != 0


# -- telnet ------------------------------------------------------------------------------

def test_telnet_password_prompt_then_shell(main: Appliance) -> None:
    child = main.telnet()
    child.expect_exact("Password:")
    child.send("not-it\r")
    child.expect_exact("% Login invalid")
    child.expect_exact("Password:")
    child.send(PASSWORD + "\r")
    term = Terminal(child).expect_prompt("lab>")
    assert "Hostname:" in term.run("sh ver")
    assert re.search(r"^  who\s+Who is logged in", term.type("?"), re.M)
    child.send("\x15exit\r")
    assert "Connection closed by foreign host" in term.closed()


def test_telnet_three_wrong_passwords_disconnect(main: Appliance) -> None:
    child = main.telnet()
    for attempt in range(3):
        child.expect_exact("Password:")
        child.send(f"guess{attempt}\r")
    child.expect_exact("% Bad passwords")
    child.expect(pexpect.EOF)
    assert main.logged("telnet login from 127.0.0.1:")


# -- sessions share one model ---------------------------------------------------------------

def test_two_sessions_share_the_model_who_and_kill(main: Appliance) -> None:
    ssh = main.ssh_terminal()
    telnet = main.telnet_terminal()
    ssh.enable()
    ssh.run("conf t")
    for line in ("virtual 192.0.2.10:80", "real 203.0.113.12", "bind 192.0.2.10:80 203.0.113.12"):
        assert "%" not in ssh.run(line)
    ssh.run("end")
    # At once in the other session, and in the data plane's own decision.
    assert re.search(r"192\.0\.2\.10:80:0:tcp\s+IS", telnet.run("show virtual"))
    telnet.enable()
    assert "203.0.113.12" in telnet.run("test assign 198.51.100.5 192.0.2.10:80")
    who = telnet.run("who")
    ssh_id = re.search(r"^\s+(\d+)\s+ssh\s+127\.0\.0\.1:\d+\s+priv", who, re.M)
    own_id = re.search(r"^\*\s+(\d+)\s+telnet\s+127\.0\.0\.1:\d+", who, re.M)
    assert ssh_id and own_id, who
    assert f"Session {ssh_id[1]} closed" in telnet.run(f"kill {ssh_id[1]}")
    assert f"% Session closed by session {own_id[1]}" in ssh.closed()
    assert not re.search(rf"^\s+{ssh_id[1]}\s+ssh", telnet.run("show users"), re.M)
    telnet.run("conf t")
    telnet.run("no virtual 192.0.2.10:80")
    telnet.run("no real 203.0.113.12")
    telnet.child.send("end\rexit\r")
    telnet.closed()


def test_idle_sessions_time_out(main: Appliance) -> None:
    main.configure("exec-timeout 0 2")
    try:
        shown = main.ssh(stdin=f"enable\n{ENABLE}\nshow running-config | include exec")
        assert shown.stdout.strip().endswith("exec-timeout 0 2")
        term = main.telnet_terminal()
        started = time.monotonic()
        assert "Session timed out" in term.closed(timeout=8)
        assert 1.5 < time.monotonic() - started < 6
    finally:
        main.configure("no exec-timeout")


# -- serial console ------------------------------------------------------------------------

def test_tty_console_login_and_shell(main: Appliance, serial_line: tuple[int, str]) -> None:
    master, device = serial_line
    line = pexpect.fdpexpect.fdspawn(master, encoding="utf-8", timeout=10)
    line.send("\r")
    line.expect_exact("Password:")
    line.send("nope\r")
    line.expect_exact("% Login invalid")
    line.send(PASSWORD + "\r")
    term = Terminal(line).expect_prompt("lab>")
    assert re.search(rf"^\*\s+\d+\s+tty\s+{re.escape(device)}", term.run("who"), re.M)
    line.send("exit\r")
    line.expect_exact("Press RETURN to get started.")   # back to waiting, not to a shell


# -- refusals before any prompt, and a kept host key ---------------------------------------

def test_access_lists_refuse_other_peers_before_any_prompt(tmp_path: Path) -> None:
    appliance = Appliance(tmp_path, f"password {PASSWORD}\nssh 127.0.0.2 255.255.255.255\n"
                                    "telnet 127.0.0.2 255.255.255.255\n").start()
    try:
        ssh = appliance.ssh("show version")
        assert ssh.returncode == 255 and "kex_exchange_identification" in ssh.stderr
        assert "Hostname" not in ssh.stdout
        telnet = appliance.telnet()
        telnet.expect(pexpect.EOF)
        assert "Password" not in telnet.before
    finally:
        appliance.stop()
    log = appliance.log()
    assert "ssh connection from 127.0.0.1 refused by the access list" in log
    assert "telnet connection from 127.0.0.1 refused by the access list" in log


def test_connection_flood_is_capped_per_door(main: Appliance) -> None:
    def connect(source: str) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", main.telnet_port), timeout=5,
                                        source_address=(source, 0))
        assert sock.recv(64).startswith(b"\xff")          # admitted: option negotiation
        return sock

    def refused(source: str) -> bool:
        with socket.create_connection(("127.0.0.1", main.telnet_port), timeout=5,
                                      source_address=(source, 0)) as extra:
            try:
                return extra.recv(64) == b""
            except ConnectionResetError:
                return True

    # Four not logged in from one address, sixteen in all.
    held = [connect(f"127.0.0.{1 + n // 4}") for n in range(16)]
    try:
        assert refused("127.0.0.5")                         # the 17th is dropped at once
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 5
    while True:                                             # places come back on hang-up
        try:
            connect("127.0.0.1").close()
            break
        except (ConnectionResetError, AssertionError):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert main.logged("telnet connection from 127.0.0.5 refused: 16 connections already open")


def test_host_key_kept_across_restarts_and_no_password_no_login(tmp_path: Path) -> None:
    appliance = Appliance(tmp_path, "hostname lab\n")

    def host_key() -> str:
        scan = subprocess.run(["ssh-keyscan", "-p", str(appliance.ssh_port), "-t", "ed25519",
                               "127.0.0.1"], capture_output=True, text=True, timeout=20)
        return scan.stdout.split("ssh-ed25519", 1)[1].strip()

    appliance.start()
    try:
        first = host_key()
        assert oct(os.stat(tmp_path / "ssh_host_ed25519_key").st_mode & 0o777) == "0o600"
        # No `password` configured: nobody logs in remotely, whatever they type.
        refused = appliance.ssh("show version", password="")
        assert refused.returncode != 0 and "Permission denied" in refused.stderr
        assert "Hostname" not in refused.stdout
        telnet = appliance.telnet()
        telnet.expect_exact("% Password required, but none set")
        telnet.expect(pexpect.EOF)
    finally:
        appliance.stop()
    appliance.start()
    try:
        assert host_key() == first
    finally:
        appliance.stop()
