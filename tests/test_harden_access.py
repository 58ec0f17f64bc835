"""Hardening of operator access, tried as an attacker would (issue 15) with real clients
(OpenSSH, telnet, raw sockets) against a real appliance on loopback: each test here
failed before its fix."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_access_remote import ENABLE, MAIN_CONFIG, PASSWORD, Appliance

from localdirector.model.passwords import hash_password

# Loopback traffic only, in a network namespace of the module's own.
pytestmark = pytest.mark.usefixtures("private_loopback")


@pytest.fixture
def appliance(tmp_path: Path) -> Iterator[Appliance]:
    running = Appliance(tmp_path, MAIN_CONFIG).start()
    try:
        yield running
    finally:
        running.stop()


def privileged(appliance: Appliance, *lines: str) -> str:
    """A script over SSH after `enable`: what it printed (stdout and stderr)."""
    result = appliance.ssh(stdin="\n".join(["enable", ENABLE, *lines]) + "\n")
    return result.stdout + result.stderr


# -- 12, 13: what a file or the configuration holds never harms a terminal ----------------

def test_show_config_with_bytes_that_are_not_text(tmp_path: Path) -> None:
    running = Appliance(tmp_path, "")
    running.config.write_bytes(MAIN_CONFIG.encode() + b"! caf\xe9 \xff\n"
                               b"! \x1b]0;owned\x07\x1b[2J\n")
    running.start()
    try:
        shown = privileged(running, "show config", "show version")
        assert "! caf\ufffd \ufffd" in shown, shown
        assert "! ?]0;owned??[2J" in shown and "\x1b" not in shown
        assert "Hostname:" in shown          # the session survived the bad bytes
    finally:
        running.stop()


def test_stored_hash_with_control_characters_is_refused(appliance: Appliance) -> None:
    good = hash_password("x")
    head, key = good.rsplit("$", 1)
    for bad in (f"{head}${key[:4]}\x1b[2J{key[4:]}", good.replace("$16384$", "$ 16384$"),
                f"{head}${key[:4]}\x07{key[4:]}"):
        shown = privileged(appliance, "configure terminal", f"enable password {bad} encrypted",
                           "end", "show running-config")
        assert "% Invalid input" in shown or "not a password hash" in shown, shown
        assert "\x1b" not in shown and "\x07" not in shown
    assert "password scrypt$" in privileged(appliance, "show running-config")  # unchanged


# -- 4: password limits hold whatever the client pipelines; guessing is throttled ---------

def test_pipelined_ssh_passwords_cannot_pass_the_limit(tmp_path: Path) -> None:
    """asyncssh cancels a check in progress when the next USERAUTH_REQUEST arrives: the
    count must be taken before the check, or 20 pipelined guesses are never counted."""
    from localdirector.access.ssh import SSHDoor, _Connection
    from localdirector.appliance import Appliance as Model
    from localdirector.shell.registry import Mode

    model = Model(tmp_path / "startup-config")
    session = model.open_session("test")
    session.mode = Mode.CONFIG
    assert session.execute(f"password {PASSWORD}")
    connection = _Connection(SSHDoor(model, "127.0.0.1", 0, str(tmp_path / "key"), None))
    connection.peer = "192.0.2.1"

    async def pipeline() -> bool:
        task = None
        for n in range(20):
            if task is not None:
                task.cancel()
            task = asyncio.ensure_future(connection.validate_password("admin", f"guess{n}"))
            await asyncio.sleep(0)
        task.cancel()
        return await connection.validate_password("admin", PASSWORD)

    assert asyncio.run(pipeline()) is False


def test_failed_logins_are_throttled_per_source(appliance: Appliance) -> None:
    def telnet_guesses(source: str, passwords: list[str]) -> str:
        with socket.create_connection(("127.0.0.1", appliance.telnet_port), timeout=10,
                                      source_address=(source, 0)) as sock:
            seen = b""
            for password in passwords:
                while b"Password:" not in seen:
                    chunk = sock.recv(4096)
                    if not chunk:                  # refused: no further prompt
                        return seen.decode(errors="replace")
                    seen += chunk
                seen = seen.split(b"Password:", 1)[1]
                sock.sendall(password.encode() + b"\r")
            sock.settimeout(5)
            try:
                while chunk := sock.recv(4096):
                    seen += chunk
                    if b"lab>" in seen:
                        break
            except OSError:
                pass
            return seen.decode(errors="replace")

    for round_ in range(4):                        # 12 wrong passwords from 127.0.0.1
        telnet_guesses("127.0.0.1", [f"guess{round_}{n}" for n in range(3)])
    refused = telnet_guesses("127.0.0.1", [PASSWORD])
    assert "% Too many failed passwords" in refused and "lab>" not in refused
    assert "lab>" in telnet_guesses("127.0.0.2", [PASSWORD])   # others still log in
    assert appliance.logged("telnet login from 127.0.0.1:")
    assert appliance.logged("failed passwords from 127.0.0.1 within a minute")
    assert "refused: 10 failed passwords" in privileged_from(appliance, "127.0.0.2",
                                                             "show syslog")


def privileged_from(appliance: Appliance, source: str, *lines: str) -> str:
    result = subprocess.run(
        ["sshpass", "-p", PASSWORD, *appliance.ssh_argv(
            "-T", "-b", source, "-o", "PubkeyAuthentication=no", "admin@127.0.0.1")],
        input="\n".join(["enable", ENABLE, *lines]) + "\n", capture_output=True, text=True,
        timeout=20)
    return result.stdout + result.stderr


# -- 5: enable --------------------------------------------------------------------------

def test_remote_enable_needs_a_password_and_guessing_is_slow(tmp_path: Path) -> None:
    running = Appliance(tmp_path, f"hostname lab\npassword {PASSWORD}\n").start()
    try:
        shown = running.ssh(stdin="enable\nshow running-config\n")
        assert "% No password set" in shown.stdout and "password scrypt$" not in shown.stdout
    finally:
        running.stop()


def test_wrong_enable_passwords_are_delayed_limited_and_logged(appliance: Appliance) -> None:
    script = "".join(f"enable\nguess{n}\n" for n in range(5)) + f"enable\n{ENABLE}\nshow users\n"
    result = appliance.ssh(stdin=script)
    assert result.stdout.count("% Access denied") == 1, result.stdout
    assert "% Bad secrets" in result.stdout and "lab#" not in result.stdout
    assert "Bad secrets; try again later" in result.stdout    # the rest were not checked
    assert appliance.logged("enable from 127.0.0.1")
    assert appliance.logged("failed: wrong password (1 of 3)")


# -- 6: idle connections from one address do not lock the others out ----------------------

def test_idle_flood_from_one_source_leaves_room_for_others(appliance: Appliance) -> None:
    held = []
    try:
        for _ in range(40):
            for port in (appliance.ssh_port, appliance.telnet_port):
                with contextlib.suppress(OSError):
                    held.append(socket.create_connection(("127.0.0.1", port), timeout=5,
                                                         source_address=("127.0.0.1", 0)))
        time.sleep(0.5)
        ok = subprocess.run(["sshpass", "-p", PASSWORD, *appliance.ssh_argv(
            "-T", "-b", "127.0.0.2", "-o", "PubkeyAuthentication=no", "admin@127.0.0.1",
            "show version")], capture_output=True, text=True, timeout=20)
        assert ok.returncode == 0 and "Hostname:" in ok.stdout, ok.stderr
    finally:
        for sock in held:
            sock.close()
    log = appliance.log()
    assert "refused: 4 from it not logged in yet" in log
    assert log.count("not logged in yet") <= 4                 # not one line per refusal


def test_connections_that_never_log_in_are_dropped_soon(appliance: Appliance) -> None:
    from localdirector.access.login import LOGIN_TIMEOUT
    assert LOGIN_TIMEOUT <= 15
    with socket.create_connection(("127.0.0.1", appliance.telnet_port), timeout=30) as sock:
        started = time.monotonic()
        with contextlib.suppress(OSError):
            while sock.recv(4096):
                pass
        assert time.monotonic() - started < LOGIN_TIMEOUT + 5


# -- 7: kill ends the whole SSH connection; channels are capped -----------------------------

def test_kill_closes_the_connection_and_channels_are_capped(appliance: Appliance) -> None:
    import asyncssh

    async def scenario() -> None:
        async with asyncssh.connect("127.0.0.1", appliance.ssh_port, username="admin",
                                    password=PASSWORD, known_hosts=None, client_keys=(),
                                    agent_path=None) as conn:
            shells = [await conn.create_process(term_type="vt100", term_size=(80, 24))
                      for _ in range(4)]
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.create_process(term_type="vt100", term_size=(80, 24))
            for shell in shells:
                await asyncio.wait_for(shell.stdout.readuntil("lab>"), 10)
            who = await asyncio.to_thread(privileged, appliance, "show users")
            ids = re.findall(r"^\s+(\d+)\s+ssh\s+127\.0\.0\.1:\d+\s+user", who, re.M)
            assert len(ids) == 4, who
            await asyncio.to_thread(privileged, appliance, f"kill {ids[0]}")
            await asyncio.wait_for(conn.wait_closed(), 10)    # the connection, not a channel

    asyncio.run(asyncio.wait_for(scenario(), 60))


# -- 8: a long paste ----------------------------------------------------------------------

def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_long_pasted_line_is_cut_and_memory_stays_bounded(appliance: Appliance) -> None:
    assert appliance.proc is not None
    term = appliance.telnet_terminal()
    before = rss_kib(appliance.proc.pid)
    started = time.monotonic()
    term.child.send("x" * 65536)
    term.child.expect_exact("% Line too long", timeout=60)
    term.child.timeout = 120                               # the rest of the paste is read
    screen = term.run("\x15show version")                 # Ctrl-U, then a command
    print(f"prompt back after {time.monotonic() - started:.1f} s")
    assert "Hostname:" in screen
    grown_mib = (rss_kib(appliance.proc.pid) - before) / 1024
    print(f"RSS grew {grown_mib:.1f} MiB for a 64 KiB paste")
    assert grown_mib < 100
