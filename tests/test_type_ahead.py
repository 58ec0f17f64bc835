"""Type-ahead (issue 24): what a client sends before the prompt is drawn, or even before
the shell exists, is kept and run in order, as IOS runs a script pasted at a terminal.

Each test sends a whole 20-line script at once, before the first prompt, with the real
client: OpenSSH `ssh -tt` with the script on its standard input (20 times: a lost byte
hangs the session at its first prompt), the `telnet` client, and the console's pty. The
transcript must be exactly the echo and output of every line, in order."""

from __future__ import annotations

import os
import subprocess
import sys

import pexpect
import pytest
from test_access_remote import ENABLE, MAIN_CONFIG, PASSWORD, Appliance
from test_automation import COMMANDS, MODEL, expected

# Loopback traffic only, in a network namespace of the module's own.
pytestmark = pytest.mark.usefixtures("private_loopback")

SCRIPT = ["enable", ENABLE, "terminal length 0", *COMMANDS[:16], "exit"]
TRIES = 20


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory):
    with Appliance(tmp_path_factory.mktemp("type-ahead"), MAIN_CONFIG + MODEL) as appliance:
        yield appliance


@pytest.fixture(scope="module")
def transcript(box: Appliance) -> str:
    """What a person typing SCRIPT line by line would see, from `lab>enable` on."""
    outputs = {command: expected(box, command) for command in set(COMMANDS)}
    return ("lab>enable\nPassword: \nlab#terminal length 0\n"
            + "".join(f"lab#{command}\n{outputs[command]}" for command in COMMANDS[:16])
            + "lab#exit\n")


def test_a_script_piped_into_ssh_tt_runs_whole_every_time(box, transcript):
    """`printf ... | ssh -tt box`: the script reaches the appliance with the shell request,
    before the prompt's input exists. Plain (TERM=dumb) and probed (vt100) terminals."""
    script = "".join(line + "\n" for line in SCRIPT)
    hangs = []
    for attempt in range(TRIES):
        term = "vt100" if attempt % 2 else "dumb"
        try:
            result = subprocess.run(
                ["sshpass", "-p", PASSWORD, *box.ssh_argv(
                    "-tt", "-o", "PubkeyAuthentication=no", "admin@127.0.0.1")],
                input=script, capture_output=True, text=True, timeout=20,
                env={**os.environ, "TERM": term})
        except subprocess.TimeoutExpired as hung:
            hangs.append((term, hung.stdout))
            continue
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.replace("\x1b[6n", "", 1) == transcript, term
    assert hangs == []


def spawn(argv: list[str]) -> pexpect.spawn:
    """The client on a pty that echoes nothing itself: all on screen is the appliance's."""
    return pexpect.spawn(argv[0], argv[1:], encoding="utf-8", timeout=20, echo=False,
                         env={**os.environ, "TERM": "dumb"}, dimensions=(40, 160))


def test_a_script_typed_ahead_over_telnet_runs_whole(box, transcript):
    """Password and script sent the moment the client starts, before `Password:`."""
    child = spawn(["telnet", "127.0.0.1", str(box.telnet_port)])
    child.send("".join(line + "\r" for line in [PASSWORD, *SCRIPT]))
    child.expect(pexpect.EOF)
    screen = child.before.replace("\r\n", "\n")
    assert "Password: \n" + transcript in screen


def test_a_script_typed_ahead_on_the_console_runs_whole(box, transcript):
    """Typed while the appliance is still starting: the console's line keeps it."""
    child = spawn([sys.executable, "-m", "localdirector", "--no-dataplane",
                   "--config", str(box.config)])
    child.send("".join(line + "\n" for line in SCRIPT))
    child.expect(pexpect.EOF)
    screen = child.before.replace("\r\n", "\n")
    assert transcript in screen
