"""Configuration and exec commands through a Session: defaults, validation, `no` forms,
and the rule that a refused command leaves the model exactly as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from localdirector.appliance import Appliance
from localdirector.model.addr import parse_ip
from localdirector.model.serverid import ServerId
from localdirector.model.state import State
from localdirector.shell import running_config
from localdirector.model.passwords import hash_password, is_hash, verify_password
from localdirector.shell.registry import Mode

BASE = """\
real 203.0.113.12
real 203.0.113.13
real 203.0.113.11:8001
virtual 192.0.2.10:80
virtual 192.0.2.10:80:1
bind 192.0.2.10:80 203.0.113.12 203.0.113.13
bind 192.0.2.10:80:1 203.0.113.11:8001
assign 192.0.2.10:80:1 198.51.100.0 255.255.255.0
name 203.0.113.13 web2
"""


class Shell:
    """A scripted session in configuration mode, with everything it printed."""

    def __init__(self, tmp_path: Path, interactive: bool = False) -> None:
        self.appliance = Appliance(tmp_path / "startup-config")
        self.output: list[str] = []
        self.session = self.appliance.open_session("test", write=self.output.append,
                                                   interactive=interactive)
        self.session.mode = Mode.CONFIG

    def __call__(self, *lines: str) -> bool:
        return all([self.session.execute(line) for line in lines])

    def take(self) -> str:
        text = "".join(self.output)
        self.output.clear()
        return text

    def config(self) -> list[str]:
        return running_config.render(self.appliance.director, self.session.registry)

    @property
    def director(self):
        return self.appliance.director

    @classmethod
    def configured(cls, tmp_path: Path, text: str) -> "Shell":
        """A shell where every line of `text` has been accepted, its output taken."""
        shell = cls(tmp_path)
        assert shell(*text.splitlines()), shell.take()
        shell.take()
        return shell


@pytest.fixture
def sh(tmp_path: Path) -> Shell:
    return Shell.configured(tmp_path, BASE)


def sid(text: str) -> ServerId:
    return ServerId.parse(text)


def _invalid(reason: str) -> tuple[str, str]:
    return ("% Invalid input detected at '^' marker.", f"% {reason}")


REFUSED = [
    # (line, message line(s), caret column in the line or None)
    # A refused argument says why on the line after IOS's message, the caret under the
    # field at fault.
    ("virtual 192.0.2.300:80", _invalid("invalid address or unknown name '192.0.2.300'"), 8),
    ("virtual 192.0.2.10:70000", _invalid("invalid port '70000' (0-65535)"), 19),
    ("virtual 192.0.2.10:80:70000", _invalid("invalid bind id '70000' (0-65535)"), 22),
    ("virtual 192.0.2.10:80:1:sctp", _invalid("unsupported protocol 'sctp' (tcp or udp)"), 24),
    ("real 203.0.113.12:80:1", _invalid("a real server id takes no bind id"), 21),
    ("real nosuchname:80", _invalid("invalid address or unknown name 'nosuchname'"), 5),
    ("assign 192.0.2.99:80:1 198.51.100.0", "% virtual 192.0.2.99:80:1:tcp does not exist",
     None),
    ("assign 192.0.2.10:80 198.18.0.0 255.255.255.0",
     "% virtual 192.0.2.10:80:0:tcp has Bind ID 0; assign needs a non-zero Bind ID "
     "instance", None),
    ("assign 192.0.2.10:80:1 198.18.0.0 255.0.255.0",
     _invalid("invalid subnet mask '255.0.255.0'"), 34),
    ("bind 192.0.2.10:80:1 203.0.113.12 203.0.113.99",
     "% real 203.0.113.99:0:0:tcp does not exist", None),
    ("bind 192.0.2.99:80 203.0.113.12", "% virtual 192.0.2.99:80:0:tcp does not exist",
     None),
    ("no bind 192.0.2.10:80 203.0.113.12 203.0.113.11:8001",
     "% 203.0.113.11:8001:0:tcp is not bound to 192.0.2.10:80:0:tcp", None),
    ("weight 203.0.113.12 0", _invalid("expected a number 1-1000, not '0'"), 20),
    ("weight 203.0.113.99 5", "% real 203.0.113.99:0:0:tcp does not exist", None),
    ("predictor 192.0.2.10:80 fastest-ever", "% Invalid input detected at '^' marker.", 24),
    ("timeout 192.0.2.10:80:7 30", "% virtual 192.0.2.10:80:7:tcp does not exist", None),
    ("timeout 203.0.113.99 30", "% no virtual or real 203.0.113.99:0:0:tcp", None),
    ("timeout 203.0.113.12 0", _invalid("expected a number 1-86400, not '0'"), 21),
    ("timeout 203.0.113.12 5s", _invalid("expected a number 1-86400, not '5s'"), 21),
    ("timeout all:0 0", "% timeout out of range 1-86400", None),
    ("name 203.0.113.12 web2", "% name 'web2' already names another address", None),
    ("name 203.0.113.12 9lives",
     _invalid("a name starts with a letter: letters, digits, '_', '.', '-'"), 18),
    ("no name 203.0.113.14", "% no name for that address", None),
    ("backup 203.0.113.12 203.0.113.12", "% a server cannot be its own backup", None),
    ("backup 203.0.113.12 192.0.2.10:80", "% real 192.0.2.10:80:0:tcp does not exist", None),
    ("backup 203.0.113.77 203.0.113.12", "% no virtual or real 203.0.113.77:0:0:tcp", None),
    ("real 192.0.2.10:80", "% 192.0.2.10:80:0:tcp is already a virtual", None),
    ("virtual 203.0.113.12", "% 203.0.113.12:0:0:tcp is already a real", None),
    ("no assign 192.0.2.10:80:1 198.18.0.0 255.255.0.0", "% no such assign entry", None),
    ("no telnet 198.51.100.0 255.255.255.0",
     "% no telnet entry 198.51.100.0 255.255.255.0", None),
    ("enable password notahash encrypted",
     "% not a password hash written by this appliance", None),
    ("in-service 192.0.2.77:80", "% no virtual or real 192.0.2.77:80:0:tcp", None),
    ("i 192.0.2.10:80", '% Ambiguous command: "i"', None),
    ("bind 192.0.2.10:80", "% Incomplete command.", None),
    ("hostname", "% Incomplete command.", None),
]


@pytest.mark.parametrize("line, message, column", REFUSED)
def test_refused_command_reports_ios_style_and_changes_nothing(sh, line, message, column):
    before = sh.config()
    generation = sh.director.generation
    assert not sh(line)
    lines = sh.take().splitlines()
    prompt = "localdirector(config)#"
    assert lines[0] == prompt + line          # scripted sessions echo the failed line
    expected = [message] if isinstance(message, str) else list(message)
    assert lines[-len(expected):] == expected
    if column is None:
        assert len(lines) == 1 + len(expected)
    else:
        assert lines[1] == " " * (len(prompt) + column) + "^"
    assert sh.config() == before
    assert sh.director.generation == generation


def test_caret_is_not_echoed_twice_on_an_interactive_terminal(tmp_path):
    shell = Shell(tmp_path, interactive=True)
    assert not shell("virtul 192.0.2.10:80")
    assert shell.take().splitlines() == [" " * len("localdirector(config)#") + "^",
                                         "% Invalid input detected at '^' marker."]


SETTINGS = [
    ("weight 203.0.113.12 7", "real", "203.0.113.12", "weight", 7, 1),
    ("maxconns 203.0.113.12 100", "real", "203.0.113.12", "maxconns", 100, 0),
    ("threshold 203.0.113.12 2", "real", "203.0.113.12", "threshold", 2, 8),
    ("reassign 203.0.113.12 5", "real", "203.0.113.12", "reassign", 5, 3),
    ("retry 203.0.113.12 30", "real", "203.0.113.12", "retry", 30, 60),
    # LocalDirector's `timeout REAL`: the real's own; 0, none, its virtual's applies.
    ("timeout 203.0.113.12 30", "real", "203.0.113.12", "timeout", 30, 0),
    ("predictor 192.0.2.10:80 weighted", "virtual", "192.0.2.10:80", "predictor",
     "weighted", "leastconns"),
    ("timeout 192.0.2.10:80 60", "virtual", "192.0.2.10:80", "timeout", 60, 900),
    ("sticky 192.0.2.10:80 10", "virtual", "192.0.2.10:80", "sticky", 10, 0),
    ("synguard 192.0.2.10:80 50", "virtual", "192.0.2.10:80", "synguard", 50, 0),
]


@pytest.mark.parametrize("line, kind, ident, field, value, default", SETTINGS)
def test_setting_defaults_and_no_form(sh, line, kind, ident, field, value, default):
    table = sh.director.reals if kind == "real" else sh.director.virtuals
    obj = table[sid(ident)]
    assert getattr(obj, field) == default
    before = sh.config()
    assert sh(line)
    assert getattr(obj, field) == value
    saved = [l for l in sh.config() if l.startswith(line.split()[0] + " ")]
    assert saved == [line]                           # shown as typed: canonical form
    assert sh("no " + " ".join(line.split()[:2]))   # `no weight REAL`
    assert getattr(obj, field) == default
    assert sh(line, "no " + line)                    # `no weight REAL 7` too
    assert sh.config() == before


def test_abbreviated_config_commands(sh):
    assert sh("wei 203.0.113.12 3", "pred 192.0.2.10:80 roun", "ma 203.0.113.12 9")
    r = sh.director.reals[sid("203.0.113.12")]
    assert (r.weight, r.maxconns) == (3, 9)
    assert sh.director.virtuals[sid("192.0.2.10:80")].predictor == "roundrobin"


def test_virtual_and_real_state_and_removal(sh):
    v = sh.director.virtuals[sid("192.0.2.10:80")]
    assert sh("virtual 192.0.2.10:80 os")
    assert v.state is State.OUT_OF_SERVICE
    assert sh("is 192.0.2.10:80")
    assert v.state is State.IN_SERVICE
    assert sh("no in-service 192.0.2.10:80")
    assert v.state is State.OUT_OF_SERVICE
    assert sh("no out-of-service 192.0.2.10:80", "os 203.0.113.12")
    assert v.state is State.IN_SERVICE
    assert sh.director.reals[sid("203.0.113.12")].admin_state is State.OUT_OF_SERVICE
    assert "real 203.0.113.12 os" in sh.config()
    assert sh("no virtual 192.0.2.10:80:1")
    assert not any(l.startswith("assign") for l in sh.config())
    assert sh("no real 203.0.113.13")
    assert "bind 192.0.2.10:80 203.0.113.12" in sh.config()


def test_bind_unbind_and_names_in_ids(sh):
    assert sh("no bind 192.0.2.10:80 web2")       # a name stands for its address
    assert "bind 192.0.2.10:80 203.0.113.12" in sh.config()
    assert sh("bind 192.0.2.10:80 web2 203.0.113.12")
    assert "bind 192.0.2.10:80 203.0.113.12 203.0.113.13" in sh.config()
    assert sh("name 203.0.113.13 pool-b")          # renaming frees the old name
    assert sh.director.names == {"pool-b": parse_ip("203.0.113.13")}
    assert sh("no name 203.0.113.13")
    assert not sh("bind 192.0.2.10:80 pool-b")


def test_assign_defaults_to_a_host_mask_and_no_removes_it(sh):
    assert sh("assign 192.0.2.10:80:1 198.18.0.9")
    assert "assign 192.0.2.10:80:1 198.18.0.9" in sh.config()
    assert sh("no assign 192.0.2.10:80:1 198.18.0.9")
    assert len(sh.director.bindids) == 1


def test_backup_real_and_virtual(sh):
    assert sh("backup 203.0.113.12 203.0.113.13", "backup 192.0.2.10:80:1 192.0.2.10:80")
    assert sh.director.reals[sid("203.0.113.12")].backup == sid("203.0.113.13")
    assert sh.director.virtuals[sid("192.0.2.10:80:1")].backup == sid("192.0.2.10:80")
    config = sh.config()
    assert config.index("backup 203.0.113.12 203.0.113.13") > \
        config.index("bind 192.0.2.10:80 203.0.113.12 203.0.113.13")
    assert sh("no backup 203.0.113.12", "no backup 192.0.2.10:80:1 192.0.2.10:80")
    assert not any(l.startswith("backup") for l in sh.config())


def test_hostname_changes_the_prompt(sh):
    assert sh("hostname edge-1")
    assert sh.session.prompt == "edge-1(config)#"
    assert sh("no hostname")
    assert sh.session.prompt == "localdirector(config)#"


def test_access_lists(sh):
    assert sh("telnet 198.51.100.0 255.255.255.0", "ssh 198.18.0.7 255.255.255.0",
              "ssh 198.18.0.0 255.255.255.0")   # same network twice: one entry
    assert sh.config()[-4:] == ["telnet 198.51.100.0 255.255.255.0", "!",
                                "ssh 198.18.0.0 255.255.255.0", "!"]
    assert sh("no ssh 198.18.0.0 255.255.255.0")
    assert sh.director.settings.ssh_access == []


def test_passwords_are_stored_hashed_and_enable_asks_for_it(sh):
    assert sh("enable password s3cret", "password remote-pw")
    settings = sh.director.settings
    assert is_hash(settings.enable_secret) and "s3cret" not in settings.enable_secret
    assert verify_password("remote-pw", settings.login_secret)
    assert not verify_password("wrong", settings.login_secret)
    assert f"enable password {settings.enable_secret} encrypted" in sh.config()
    session = sh.session
    session.mode = Mode.USER
    assert sh("enable") and session.question.prompt == "Password: "
    assert not session.answer("guess")
    assert sh.take() == "% Access denied\n" and session.mode is Mode.USER
    assert not sh("enable")                         # within a second of a wrong one
    assert "% Bad secrets; try again later" in sh.take()
    session.retry_at = 0.0                          # a second later
    assert sh("enable") and session.answer("s3cret")
    assert session.mode is Mode.PRIV
    session.mode = Mode.CONFIG
    stored = hash_password("other")
    assert sh(f"enable password {stored} encrypted")
    assert settings.enable_secret == stored
    assert sh("no enable password", "no password")
    assert settings.enable_secret == settings.login_secret == ""


def test_modes_do_end_exit_disable(sh):
    session = sh.session
    assert sh("do show predictor | include :1:")
    assert sh.take().splitlines() == ["192.0.2.10:80:1:tcp  leastconns  0"]
    assert session.mode is Mode.CONFIG
    assert sh("end") and session.mode is Mode.PRIV
    assert sh("configure terminal", "exit") and session.mode is Mode.PRIV
    assert not sh("virtual 192.0.2.11:80")          # config commands need config mode
    assert sh("disable") and session.mode is Mode.USER
    assert not sh("configure terminal")              # privileged only
    assert sh("enable") and session.mode is Mode.PRIV  # no enable password set
    assert sh("exit") and session.closed
    assert list(sh.appliance.sessions) == []


def test_show_history_terminal_length_and_comments(sh):
    sh.session.history.clear()
    assert sh("! a comment", ": another", "", "do terminal length 5", "do show history")
    assert sh.take().splitlines() == ["! a comment", ": another", "do terminal length 5",
                                      "do show history"]
    assert sh.session.terminal_length == 5


def test_who_kill_and_show_users(sh):
    other = sh.appliance.open_session("ssh", "198.51.100.7:50000", interactive=True)
    closed = []
    other.on_close = lambda: closed.append(True)
    assert sh("do who")
    text = sh.take()
    assert "198.51.100.7:50000" in text and "* " in text.splitlines()[2]
    assert sh("do show users | count")
    assert sh.take() == "Number of lines which match regexp = 4\n"
    assert not sh(f"do kill {sh.session.id}")
    assert "use exit" in sh.take()
    assert not sh("do kill 999")
    assert sh(f"do kill {other.id}")
    assert other.closed and closed == [True] and other.killed_by == sh.session.id
    assert [s.id for s in sh.appliance.sessions] == [sh.session.id]


def test_write_memory_erase_show_config_and_reload(sh):
    path = sh.appliance.config_path
    assert sh("do show config")
    assert sh.take() == f"% no startup-config at {path}\n"
    assert sh("do write memory")
    assert sh.take() == "Building configuration...\n[OK]\n"
    assert path.read_text().splitlines() == sh.config()
    assert sh("do show config | include ^bind")
    assert sh.take().count("bind ") == 2
    told = []
    sh.appliance.reload_hooks.append(told.append)
    old = sh.director
    assert sh("no virtual 192.0.2.10:80:1", "weight 203.0.113.12 9", "do reload")
    assert sh.director is not old and told == [sh.director]
    assert sh.config() == path.read_text().splitlines()
    assert sh("do write erase") and not path.exists()


def test_filters(sh):
    assert sh("do show real | include 8001")
    assert sh.take().splitlines()[0].startswith("203.0.113.11:8001:0:tcp")
    assert sh("do show real | exclude ^Real|^--")
    assert [l.split()[0] for l in sh.take().splitlines()] == [
        "203.0.113.12:0:0:tcp", "web2:0:0:tcp", "203.0.113.11:8001:0:tcp"]
    assert sh("do show running-config | begin ^virtual")
    assert sh.take().splitlines()[0] == "virtual 192.0.2.10:80"
    assert sh("do show real | count :0:0:tcp")
    assert sh.take() == "Number of lines which match regexp = 2\n"
    assert sh("do write terminal | include virtual 192.0.2.10:80:1$")
    assert sh.take() == "virtual 192.0.2.10:80:1\n"
    assert not sh("do show real | include (")        # bad regex: caret under it


def test_help_lines_and_completions(tmp_path):
    shell = Shell(tmp_path, interactive=True)
    session = shell.session
    session.mode = Mode.PRIV
    assert session.help_lines("sh") == ["show"]
    assert session.help_lines("conf") == ["configure"]
    listing = session.help_lines("show ")
    assert "  virtual         Virtual server instances" in listing
    assert "  running-config  The configuration in effect" in listing
    assert session.help_lines("show virtual ")[-1] == "  <cr>"
    assert session.help_lines("shw ") == [" " * len("localdirector#") + "^",
                                          "% Invalid input detected at '^' marker."]
    assert session.help_lines("zz") == ["% Unrecognized command"]
    session.mode = Mode.CONFIG
    assert shell("virtual 192.0.2.10:80", "real 203.0.113.12")
    assert session.help_lines("virtual 192.0.2.10:80 ") == [
        "  is    In service", "  os    Out of service", "  <cr>"]
    assert [w for w, _ in session.completions("bind ")] == ["192.0.2.10:80:0:tcp"]
    assert [w for w, _ in session.completions("bind 192.0.2.10:80 2")] == [
        "203.0.113.12:0:0:tcp"]
    assert [w for w, _ in session.completions("pred")] == ["predictor"]


def test_assigning_a_network_to_another_instance_moves_it_and_says_so(sh):
    """Patent ¶8: one entry remains, `test assign` names the new instance."""
    assert sh("virtual 192.0.2.10:80:2", "bind 192.0.2.10:80:2 203.0.113.13")
    sh.take()
    assert sh("assign 192.0.2.10:80:2 198.51.100.0 255.255.255.0")
    assert sh.take() == ("198.51.100.0 255.255.255.0 moved from 192.0.2.10:80:1:tcp "
                         "to 192.0.2.10:80:2:tcp\n")
    assert [line for line in sh.config() if line.startswith("assign")] == [
        "assign 192.0.2.10:80:2 198.51.100.0 255.255.255.0"]
    assert sh("do test assign 198.51.100.7 192.0.2.10:80")
    assert "192.0.2.10:80:2:tcp" in sh.take()
    assert sh("assign 192.0.2.10:80:2 198.51.100.0 255.255.255.0")   # again: nothing moves
    assert sh.take() == ""


def test_retyping_a_server_without_a_state_keeps_it(sh):
    assert sh("out-of-service 203.0.113.12", "real 203.0.113.12", "virtual 192.0.2.10:80:1 os",
              "virtual 192.0.2.10:80:1")
    assert sh.director.reals[sid("203.0.113.12")].state is State.OUT_OF_SERVICE
    assert sh.director.virtuals[sid("192.0.2.10:80:1")].state is State.OUT_OF_SERVICE
    assert sh("real 203.0.113.12 is")
    assert sh.director.reals[sid("203.0.113.12")].state is State.IN_SERVICE


def _privileged(tmp_path, interactive: bool) -> Shell:
    (tmp_path / "startup-config").write_text("real 203.0.113.12\n")
    shell = Shell(tmp_path, interactive=interactive)
    shell.appliance.boot(lambda _line: None)
    shell.session.mode = Mode.PRIV
    return shell


def test_reload_on_a_terminal_offers_to_save_then_confirms(tmp_path):
    """IOS's dialogue: modified -> Save? [yes/no], then Proceed with reload? [confirm]."""
    shell = _privileged(tmp_path, interactive=True)
    session = shell.session
    assert shell("reload") and session.question.prompt == "Proceed with reload? [confirm]"
    assert not session.answer("n") and "Reload aborted" in shell.take()
    assert shell("configure terminal", "real 203.0.113.13", "end", "reload")
    assert session.question.prompt == "System configuration has been modified. Save? [yes/no]: "
    assert session.answer("yes")
    assert "[OK]" in shell.take() and "203.0.113.13" in (tmp_path / "startup-config").read_text()
    assert session.question.prompt == "Proceed with reload? [confirm]"
    assert session.answer("")
    assert sid("203.0.113.13") in shell.director.reals
    assert not shell.appliance.unsaved()


def test_reload_answered_no_discards_and_a_bad_answer_aborts(tmp_path):
    shell = _privileged(tmp_path, interactive=True)
    session = shell.session
    assert shell("configure terminal", "real 203.0.113.13", "end", "reload")
    assert not session.answer("maybe") and session.question is None
    assert "Please answer 'yes' or 'no'" in shell.take()
    assert sid("203.0.113.13") in shell.director.reals           # nothing happened
    assert shell("reload") and session.answer("no") and session.answer("y")
    assert sid("203.0.113.13") not in shell.director.reals       # discarded, as asked


def test_reload_in_a_script_says_what_it_discarded(tmp_path):
    shell = _privileged(tmp_path, interactive=False)
    assert shell("reload") and "discarded" not in shell.take()
    assert shell("configure terminal", "real 203.0.113.13", "end", "reload")
    out = shell.take()
    assert "% Unsaved changes to the running configuration were discarded\n" in out
    assert sid("203.0.113.13") not in shell.director.reals
