"""End to end: the real `localdirector` executable on a pseudo-terminal, typed at as an
operator would (abbreviations, `?`, Tab, typos, Ctrl-Z, paging, passwords, saving)."""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pexpect
import pytest
from pty_terminal import TaggedTyping, clean

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
CONFIG_PROMPT = "localdirector(config)#"


class Operator(TaggedTyping):
    """One appliance process on a pty. The pty does not echo (prompt_toolkit draws what
    is typed), so a tag typed after a command shows up only once the prompt is back:
    everything before it is that command's output."""

    def __init__(self, config: Path, full: bool = True) -> None:
        exe = shutil.which("localdirector")
        command, args = (exe, []) if exe else (sys.executable, ["-m", "localdirector"])
        # This checkout's code, whichever checkout the installed entry point belongs to.
        env = dict(os.environ, TERM="xterm", PROMPT_TOOLKIT_NO_CPR="1", PYTHONPATH=str(ROOT))
        self.child = pexpect.spawn(command, [*args, "--no-dataplane", "--config",
                                             str(config)],
                                   env=env, encoding="utf-8", timeout=30,
                                   dimensions=(40, 160), echo=False)
        # A full terminal answers the cursor-position request the shell sends first;
        # one that does not gets the plain line discipline (tests/test_automation.py).
        self.child.expect_exact("\x1b[6n")
        if full:
            self.child.send("\x1b[1;1R")

    def lines(self, line: str) -> list[str]:
        """Output lines of one command (prompt redraws dropped)."""
        return [l for l in self.run(line).split("\n") if l and "localdirector" not in l[:14]]

    def configure(self, *lines: str) -> None:
        """From privileged mode: these configuration lines, back to privileged mode."""
        for line in ("conf t", *lines, "end"):
            self.run(line)

    def close(self) -> int:
        self.child.send("end\rexit\r")
        self.child.expect(pexpect.EOF)
        self.child.close()
        return self.child.exitstatus


def test_operator_session(tmp_path):
    op = Operator(tmp_path / "startup-config")
    assert "localdirector#" in op.run("en")
    assert "Enter configuration commands" in op.run("conf t")
    # `?` after a space: the next words, and the typed line is kept and finished.
    screen = op.type("virtual 192.0.2.10:80 ?os\r")
    assert "  is    In service\n  os    Out of service\n  <cr>\n" in screen
    assert f"{CONFIG_PROMPT}virtual 192.0.2.10:80 os\n" in screen
    # `?` inside a word: the keywords it abbreviates; then typing goes on.
    screen = op.type("do sh v?ir\r")
    assert "version  virtual\n" in screen
    assert re.search(r"192\.0\.2\.10:80:0:tcp\s+OOS", screen)
    # Tab completes the unique keyword (and adds the space).
    screen = op.type("do sh runn\t| inc ^virtual\r")
    assert f"{CONFIG_PROMPT}do sh running-config | inc ^virtual\n" in screen
    assert "\nvirtual 192.0.2.10:80 os\n" in screen
    # A mistyped word: the caret sits under its first character.
    for line, word in [("virtaul 192.0.2.11:80", "virtaul"),
                       ("real 203.0.113.12 oss", "oss")]:
        out = op.lines(line)
        assert out[-1] == "% Invalid input detected at '^' marker."
        assert out[-2] == " " * (len(CONFIG_PROMPT) + line.index(word)) + "^"
    assert op.lines("do sh v") == ['% Ambiguous command: "do sh v"']
    # A pasted block (bracketed paste) runs line by line, as if typed.
    op.type("\x1b[200~real 203.0.113.21\nreal 203.0.113.22 os\x1b[201~\r")
    assert [l.split()[:2] for l in op.lines("do show real | include 203.0.113.2")] == [
        ["203.0.113.21:0:0:tcp", "IS"], ["203.0.113.22:0:0:tcp", "OOS"]]
    # Ctrl-Z runs what was typed, then leaves configuration mode.
    screen = op.type("real 203.0.113.20\x1a")
    assert screen.rstrip().endswith("localdirector#!")
    assert op.lines("show real | include 203.0.113.20")[0].startswith(
        "203.0.113.20:0:0:tcp")
    assert op.lines("show running-config | include ^virtual") == [
        "virtual 192.0.2.10:80 os"]
    # History: the up arrow brings back the last command.
    first = op.lines("show version")
    assert op.lines("\x1b[A\x1b[A") == first     # up twice: past the sync comment
    assert op.close() == 0


@pytest.mark.parametrize("full", [True, False], ids=["line-editor", "plain"])
def test_enter_on_a_line_at_the_cap_refuses_it(tmp_path, full):
    """Issue 23 item 7: what is left of a line cut at 512 characters may be another valid
    command (here `show version` without its filter), so Enter refuses it, as IOS does,
    and the next line needs no Ctrl-U."""
    from localdirector.shell.repl import MAX_LINE, NOT_RUN
    op = Operator(tmp_path / "startup-config", full)
    op.run("enable")
    line = "show version" + " " * MAX_LINE + "| include Uptime"
    screen = op.run(line)
    assert NOT_RUN in screen and "Hostname:" not in screen, screen
    assert op.run("show version" + " " * (MAX_LINE - 13)).count("Hostname:") == 1
    assert "Hostname:" in op.run("show version")
    assert op.close() == 0


def test_write_memory_then_a_fresh_process_boots_from_it(tmp_path):
    path = tmp_path / "etc" / "startup-config"
    op = Operator(path)
    op.run("enable")
    op.run("configure terminal")
    for line in (EXAMPLES / "fig1.cfg").read_text().splitlines():
        if line and not line.startswith("!"):
            assert "%" not in op.run(line), line
    op.run("weight 203.0.113.14 3")
    assert op.lines("do write memory") == ["Building configuration...", "[OK]"]
    op.run("do terminal length 0")
    before = op.lines("do show running-config")
    assert op.close() == 0
    assert "weight 203.0.113.14 3" in before and len(before) > 20

    again = Operator(path)
    again.run("enable")
    again.run("terminal length 0")
    assert again.lines("show running-config") == before
    assert path.read_text().splitlines() == before
    assert again.close() == 0


def test_test_assign_on_the_fig1_example(tmp_path):
    op = Operator(EXAMPLES / "fig1.cfg")
    op.run("enable")
    for client, instance in [("198.51.100.7", "192.0.2.10:80:1:tcp"),
                             ("198.18.0.9", "192.0.2.10:80:2:tcp"),
                             ("198.19.0.5", "192.0.2.10:80:0:tcp")]:
        [row] = op.lines(f"tes ass {client} 192.0.2.10:80")[2:]
        assert row.split()[2] == instance
    assert op.close() == 0


def test_long_output_pages_with_more(tmp_path):
    path = tmp_path / "startup-config"
    path.write_text("virtual 192.0.2.10:80:1\n" + "".join(
        f"assign 192.0.2.10:80:1 198.51.100.{i}\n" for i in range(1, 31)))
    op = Operator(path)
    op.run("enable")
    op.run("terminal length 10")
    child = op.child
    child.send("show assign\r")
    shown = ""
    for key in (" ", "\r", "q"):         # a page, a line, quit
        child.expect_exact("--More--")
        shown += clean(child.before)
        child.send(key)
    shown += op.run("")
    rows = re.findall(r"198\.51\.100\.(\d+) ", shown)
    assert rows == [str(i) for i in range(1, 18)]   # 7 + 9 + 1 rows of 30
    assert op.lines("show assign | count") == ["Number of lines which match regexp = 32"]
    assert op.close() == 0


def test_enable_password_is_asked_without_echo(tmp_path):
    path = tmp_path / "startup-config"
    op = Operator(path)
    op.run("enable")
    op.configure("enable password Tr0ub4dor")
    op.run("disable")
    child = op.child
    child.send("enable\r")
    child.expect_exact("Password:")
    child.send("n0tit\r")
    child.expect_exact("% Access denied")
    assert "n0tit" not in clean(child.before)
    child.send("enable\r")
    child.expect_exact("Password:")
    child.send("Tr0ub4dor\r")
    screen = op.run("")
    assert "Tr0ub4dor" not in screen and "n0tit" not in screen
    assert screen.rstrip().endswith("localdirector#!")
    assert op.close() == 0


def test_reload_asks_to_save_unsaved_changes_then_confirms(tmp_path):
    path = tmp_path / "startup-config"
    op = Operator(path)
    op.run("enable")
    op.configure("real 203.0.113.12")
    child = op.child
    child.send("reload\r")
    child.expect_exact("System configuration has been modified. Save? [yes/no]:")
    child.send("yes\r")
    child.expect_exact("Proceed with reload? [confirm]")
    assert "[OK]" in clean(child.before)                  # saved before asking
    assert "real 203.0.113.12" in path.read_text().splitlines()
    child.send("\r")
    screen = op.run("")
    assert f"Reloading from {path}" in screen and screen.rstrip().endswith("localdirector#!")
    child.send("reload\r")                                  # nothing unsaved: confirm only
    child.expect_exact("Proceed with reload? [confirm]")
    child.send("n\r")
    assert "Reload aborted" in op.run("")
    assert op.close() == 0
