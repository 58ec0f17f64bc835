"""IOS conventions that automation clients parse (issue 24, item 2), each in the shape the
client reads and about this program, never claiming to be Cisco software: `show
privilege`, `show version`'s IOS lines, `show startup-config`, `write` alone, `copy
running-config startup-config` with its question, `terminal width`, `| section`, and the
host's interfaces in `show ip interface brief` and `show interfaces`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest
from test_access_remote import ENABLE, MAIN_CONFIG, PASSWORD, Appliance as Box
from test_shell_commands import Shell

from localdirector.shell.registry import Mode

# Loopback traffic only, in a network namespace of the module's own.
pytestmark = pytest.mark.usefixtures("private_loopback")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def sh(tmp_path: Path) -> Shell:
    return Shell(tmp_path)


def test_show_privilege_is_1_in_user_mode_and_15_after_enable(sh: Shell) -> None:
    sh.session.mode = Mode.USER
    assert sh("show privilege") and sh.take() == "Current privilege level is 1\n"
    sh.session.mode = Mode.PRIV
    assert sh("show privilege") and sh.take() == "Current privilege level is 15\n"
    sh.session.mode = Mode.CONFIG
    assert sh("do show privilege") and sh.take() == "Current privilege level is 15\n"
    assert sh("do show privilege | json") and '"privilege": 15' in sh.take()


def test_show_version_has_the_lines_ansible_and_napalm_read(sh: Shell) -> None:
    """The regular expressions are the clients' own (cisco.ios `ios_facts` and cliconf,
    NAPALM `ios` get_facts); the vendor is never claimed."""
    assert sh("hostname edge", "do show version")
    text = sh.take()
    assert re.search(r"Version (\S+?)(?:,\s|\s)", text)[1] == "0.1.0"
    assert re.search(r"^(.+) uptime", text, re.M)[1] == "edge"
    uptime = next(line for line in text.splitlines() if " uptime is " in line)
    assert re.fullmatch(r"edge uptime is (\d+ (year|week|day|hour)s?, )*\d+ minutes?",
                        uptime)
    assert re.search(r'image file is "(.+)"', text)[1] == str(ROOT / "localdirector")
    assert re.search(r"board ID (\S+)", text)
    assert re.search(r"with \d+K bytes of memory", text)
    assert "Cisco IOS" not in text and "not Cisco software" in text


def test_write_alone_and_copy_running_config_save(sh: Shell) -> None:
    path = sh.appliance.config_path
    assert sh("hostname one", "do write") and path.read_text().count("hostname one") == 1
    assert sh.take().endswith("Building configuration...\n[OK]\n")
    assert sh("hostname two", "do copy running-config startup-config")
    assert "hostname two" in path.read_text()
    assert sh("do copy run start") and sh.take().endswith("[OK]\n")
    sh.session.mode = Mode.PRIV
    assert sh("show startup-config") and "hostname two" in sh.take()


def test_copy_asks_the_destination_on_a_terminal(tmp_path: Path) -> None:
    sh = Shell(tmp_path, interactive=True)
    path = sh.appliance.config_path
    assert sh("hostname asked", "do copy running-config startup-config")
    assert sh.session.question.prompt == "Destination filename [startup-config]? "
    assert not path.exists()
    assert sh.session.answer("") and "hostname asked" in path.read_text()
    assert sh("hostname elsewhere", "do copy running-config startup-config")
    assert not sh.session.answer("flash:backup")
    assert sh.take().endswith("% cannot copy to 'flash:backup': the only destination is "
                              "startup-config\n")
    assert "hostname elsewhere" not in path.read_text()


def test_terminal_width_is_accepted_and_bounded(sh: Shell) -> None:
    sh.session.mode = Mode.USER
    assert sh("terminal width 512") and sh.take() == ""
    assert not sh("terminal width 513")
    assert sh.take().splitlines()[-1] == "% expected a number 0-512, not '513'"


def test_section_keeps_the_indented_lines_under_a_match(sh: Shell) -> None:
    assert sh("router bgp 64512", "bgp neighbor 198.19.255.1 remote-as 64500",
              "hostname lab", "do show running-config | section bgp")
    shown = sh.take().splitlines()
    full = sh.config()
    assert shown and all(line in full for line in shown)
    assert all("bgp" in line or line[:1].isspace() for line in shown)
    assert "hostname lab" not in shown
    assert sh("do show running-config | section ^hostname")
    assert sh.take() == "hostname lab\n"


def test_copy_over_ssh_answers_the_question_as_ansible_does(tmp_path: Path) -> None:
    """Over a real `ssh -tt`: the question, Enter, `[OK]`, and the file written."""
    with Box(tmp_path / "box", MAIN_CONFIG) as box:
        child = pexpect.spawn("sshpass", ["-p", PASSWORD, *box.ssh_argv(
            "-tt", "-o", "PubkeyAuthentication=no", "admin@127.0.0.1")],
            encoding="utf-8", timeout=15, env={"TERM": "dumb", "PATH": "/usr/bin:/bin"})
        child.expect_exact("lab>")
        for line, answer in (("enable", "Password: "), (ENABLE, "lab#"),
                             ("configure terminal", "lab(config)#"),
                             ("hostname saved", "saved(config)#"), ("end", "saved#"),
                             ("copy running-config startup-config",
                              "Destination filename [startup-config]? "),
                             ("", "saved#")):
            child.send(line + "\r")
            child.expect_exact(answer)
        assert "Building configuration...\r\n[OK]\r\n" in child.before
        assert "hostname saved" in box.config.read_text()
        child.send("exit\r")
        child.expect(pexpect.EOF)


NAMESPACE = """
set -e
ip link set lo up
ip link add ld0 type veth peer name ld1
ip addr add 192.0.2.1/24 dev ld0
ip link set ld0 up
exec "$@"
"""


@pytest.mark.netns
def test_interfaces_are_the_hosts_own(netns: None, tmp_path: Path) -> None:
    """In a namespace the test builds: loopback, a veth end up with an address whose
    peer is down (so no carrier), and that peer; NAPALM's get_facts takes the first
    column after the header."""
    script = "enable\nshow ip interface brief\nshow interfaces\n"
    result = subprocess.run(
        ["unshare", "--net", "sh", "-c", NAMESPACE, "sh", sys.executable, "-m",
         "localdirector", "--no-dataplane", "--config", str(tmp_path / "startup-config")],
        input=script, capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    header = lines.index("Interface              IP-Address      OK? Method Status"
                         "                Protocol")
    brief = {line.split()[0]: line for line in lines[header + 1:header + 4]}
    assert brief == {
        "lo": "lo                     127.0.0.1       YES manual up                    up",
        "ld0": "ld0                    192.0.2.1       YES manual down                  down",
        "ld1": "ld1                    unassigned      YES unset  administratively down down"}
    text = "\n".join(lines[header + 4:])
    assert re.search(r"^ld0 is down, line protocol is down\n  Hardware is Ethernet, "
                     r"address is [0-9a-f]{4}\.[0-9a-f]{4}\.[0-9a-f]{4} \(bia ", text, re.M)
    assert "\n  Internet address is 192.0.2.1/24\n  MTU 1500 bytes, BW 0 Kbit/sec" in text
    assert "ld1 is administratively down, line protocol is down" in text
    assert "lo is up, line protocol is up\n  Hardware is Loopback" in text


def test_destructive_commands_ask_confirm_on_a_terminal(tmp_path: Path) -> None:
    """`clear counters` and `write erase` (and `clear conns`, `reload`) ask `[confirm]`
    on a terminal: anything but Return or y leaves everything as it was."""
    sh = Shell(tmp_path, interactive=True)
    sh.session.mode = Mode.PRIV
    path = sh.appliance.config_path
    assert sh("configure terminal", "real 203.0.113.12", "end", "write memory")
    real = next(sh.director.iter_reals())
    real.total_conns = 7
    assert sh("clear counters")
    assert sh.session.question.prompt == ("Clear the counters of every virtual and real? "
                                          "[confirm]")
    sh.take()
    assert not sh.session.answer("n") and sh.take() == "Clear aborted\n"
    assert real.total_conns == 7
    assert sh("clear counters") and sh.session.answer("") and real.total_conns == 0
    assert sh.take().endswith("Counters cleared\n")
    assert sh("write erase") and sh.session.question.prompt.endswith("Continue? [confirm]")
    assert not sh.session.answer("no") and path.exists()
    assert sh("write erase") and sh.session.answer("y") and not path.exists()
    assert sh.take().endswith("Erase aborted\n[OK]\n")
    assert not sh("clear conns")                      # no data plane: refused, not asked
    assert sh.session.question is None
    assert sh.take().endswith("% data plane not running\n")


def test_a_script_is_not_asked(sh: Shell) -> None:
    sh.session.mode = Mode.PRIV
    assert sh("write memory", "write erase") and sh.session.question is None
    assert not sh.appliance.config_path.exists()
