"""Stock automation drives the shell unchanged (docs/design.rst, "Operator access"):
Netmiko's `cisco_ios` driver over SSH, and expect-style scripts over SSH, telnet and the
console, all on clients that do not answer the cursor-position request, so the shell
speaks IOS's plain line discipline to them: the echo, the output, the prompt, and not
one escape sequence."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pexpect
import pytest
from netmiko import ConnectHandler
from test_access_remote import ENABLE, MAIN_CONFIG, PASSWORD, Appliance

# Loopback traffic only, in a network namespace of the module's own.
pytestmark = pytest.mark.usefixtures("private_loopback")

MODEL = """\
virtual 192.0.2.10:80
virtual 192.0.2.11:443
real 203.0.113.11:8001
real 203.0.113.12
real 203.0.113.13 os
bind 192.0.2.10:80 203.0.113.11:8001 203.0.113.12
bind 192.0.2.11:443 203.0.113.13
"""
# Commands whose output does not change while the test runs, typed over and over.
COMMANDS = ["show virtual", "show real", "sh bind", "show predictor", "show weight",
            "show bind | include 203.0.113.1[23]", "show maxconns", "show sticky | json",
            "sh vir 192.0.2.11:443", "show real | count"] * 2


@pytest.fixture
def box(tmp_path: Path):
    appliance = Appliance(tmp_path / "box", MAIN_CONFIG + MODEL).start()
    try:
        yield appliance
    finally:
        appliance.stop()


def expected(box: Appliance, command: str) -> str:
    """What the command prints, taken from an exec channel (no terminal at all)."""
    result = box.ssh(command)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_netmiko_cisco_ios_driver(box):
    device = ConnectHandler(device_type="cisco_ios", host="127.0.0.1", port=box.ssh_port,
                            username="admin", password=PASSWORD, secret=ENABLE,
                            use_keys=False, allow_agent=False, fast_cli=False)
    try:
        assert device.find_prompt() == "lab>"
        device.enable()
        assert device.find_prompt() == "lab#"
        table = device.send_command("show virtual")
        assert table == expected(box, "show virtual").rstrip("\n")
        assert "\x1b" not in table
        device.send_config_set(["virtual 192.0.2.20:25", "real 203.0.113.20",
                                "bind 192.0.2.20:25 203.0.113.20"])
        assert device.find_prompt() == "lab#"
        bind = device.send_command("show bind 192.0.2.20:25")
        assert "203.0.113.20:0:0:tcp" in bind
        saved = device.save_config()
        assert "[OK]" in saved
    finally:
        device.disconnect()
    startup = box.config.read_text()
    assert {"virtual 192.0.2.20:25", "real 203.0.113.20"} <= set(startup.splitlines())


def drive(child: pexpect.spawn, box: Appliance, prompt: str) -> None:
    """Each command, sent as a line: the text before the next prompt is exactly its
    echo and its output, every time; nothing on the wire is an escape sequence."""
    child.sendline("terminal length 0")
    child.expect_exact(prompt)
    for command in COMMANDS:
        child.send(command + "\r")
        child.expect_exact(prompt)
        body = expected(box, command).replace("\n", "\r\n")
        assert child.before == f"{command}\r\n{body}", command
    child.send("exit\r")
    child.expect(pexpect.EOF)


def spawn(argv: list[str], term: str = "dumb") -> tuple[pexpect.spawn, io.StringIO]:
    wire = io.StringIO()
    child = pexpect.spawn(argv[0], argv[1:], encoding="utf-8", timeout=15,
                          env={**os.environ, "TERM": term}, dimensions=(40, 160))
    child.logfile_read = wire
    return child, wire


def test_expect_script_over_ssh(box):
    child, wire = spawn(["sshpass", "-p", PASSWORD, *box.ssh_argv(
        "-tt", "-o", "PubkeyAuthentication=no", "admin@127.0.0.1")])
    child.expect_exact("lab>")
    drive(child, box, "lab>")
    assert "\x1b" not in wire.getvalue() and "CPR" not in wire.getvalue()


def test_expect_script_over_telnet(box):
    child, wire = spawn(["telnet", "127.0.0.1", str(box.telnet_port)])
    child.expect_exact("Password:")
    child.send(PASSWORD + "\r")
    child.expect_exact("lab>")
    drive(child, box, "lab>")
    assert "\x1b" not in wire.getvalue()


def test_expect_script_on_the_console(box):
    child, wire = spawn([sys.executable, "-m", "localdirector", "--no-dataplane",
                         "--config", str(box.config)])
    child.expect_exact("lab>")
    drive(child, box, "lab>")
    assert "\x1b" not in wire.getvalue() and "CPR" not in wire.getvalue()


def test_a_client_that_does_not_answer_the_cursor_request_gets_plain_lines(box):
    """TERM says vt100, but nothing answers: after the one request, plain lines; `?`,
    Tab and backspace still work the way a line-at-a-time reader can follow."""
    child, wire = spawn(["sshpass", "-p", PASSWORD, *box.ssh_argv(
        "-tt", "-o", "PubkeyAuthentication=no", "admin@127.0.0.1")], term="vt100")
    child.expect_exact("lab>")
    child.send("sh vx\x7firtual ?")
    child.expect_exact("<cr>")
    child.expect_exact("lab>")
    assert child.before.endswith("\r\n")
    child.expect_exact("sh virtual ")          # the line, re-printed after the help
    child.send("\r")
    child.expect_exact("lab>")
    assert "192.0.2.10:80:0:tcp" in child.before
    child.send("sh pred\t")
    child.expect_exact("sh predictor ")
    child.send("\r")
    child.expect_exact("lab>")
    assert child.before.startswith("\r\n") and "Predictor" in child.before
    child.send("exit\r")
    child.expect(pexpect.EOF)
    screen = wire.getvalue().replace("\x1b[6n", "", 1)   # the one request
    assert "\x1b" not in screen and "CPR" not in screen
    assert "sh vx\b \birtual ?\r\n" in screen


def test_a_connection_without_a_channel_is_in_who_and_can_be_killed(box):
    """Logged in, no channel: still a way in, so `who` lists it and `kill` ends it."""
    import asyncio
    import re

    import asyncssh

    async def scenario() -> None:
        async with asyncssh.connect("127.0.0.1", box.ssh_port, username="admin",
                                    password=PASSWORD, known_hosts=None, client_keys=(),
                                    agent_path=None) as conn:
            port = conn.get_extra_info("sockname")[1]
            who = await asyncio.to_thread(expected, box, "who")
            [session] = re.findall(rf"^\s+(\d+)\s+ssh\s+127\.0\.0\.1:{port}\s", who, re.M)
            script = "\n".join(["enable", ENABLE, f"kill {session}"]) + "\n"
            result = await asyncio.to_thread(box.ssh, stdin=script)
            assert f"Session {session} closed" in result.stdout, result.stdout
            await asyncio.wait_for(conn.wait_closed(), 10)
        who = await asyncio.to_thread(expected, box, "who")
        assert f"127.0.0.1:{port} " not in who

    asyncio.run(asyncio.wait_for(scenario(), 60))


_LOGGING_CONSOLE = r"""
import logging, sys, threading, time
from localdirector import cli
def chatter():
    for n in range(400):
        logging.getLogger("localdirector").warning("real 203.0.113.%d FAILED", n % 250)
        time.sleep(0.005)
threading.Thread(target=chatter, daemon=True).start()
sys.exit(cli.main(["--no-dataplane", "--config", sys.argv[1]]))
"""


def test_log_lines_never_split_a_typed_line_on_a_plain_console(tmp_path: Path) -> None:
    """IOS `logging synchronous` in the line discipline: a log message from another
    thread goes on a line of its own and the prompt and the typed text are printed
    again, so an expect script still finds each command's echo and output whole."""
    from appliance_driver import Console

    console = Console([sys.executable, "-c", _LOGGING_CONSOLE,
                       str(tmp_path / "startup-config")])
    try:
        for _ in range(20):
            assert "Hostname:        localdirector" in console.run("show version")
    finally:
        console.child.sendline("exit")
        console.child.close()
