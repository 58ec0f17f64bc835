"""The startup-config file: replay with line-numbered errors, atomic `write memory`,
`--check`, scripted standard input, and how `main()` starts services."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from localdirector import cli
from localdirector.appliance import Appliance
from localdirector.model.director import Director
from localdirector.model.serverid import ServerId
from localdirector.shell import config_file
from localdirector.shell.registry import Mode

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

GOOD_AND_BAD = """\
! comment lines are skipped
: so are these
real 203.0.113.12
virtual 192.0.2.10:99999
virtual 192.0.2.10:80
assign 192.0.2.10:80 198.51.100.0 255.255.255.0
bind 192.0.2.10:80 203.0.113.12
"""


def localdirector(*args: str, stdin: str = "", **kwargs) -> subprocess.CompletedProcess:
    """Run the installed executable (the console script), as an operator would."""
    exe = shutil.which("localdirector")
    command = [exe] if exe else [sys.executable, "-m", "localdirector"]
    return subprocess.run([*command, *args], input=stdin, capture_output=True, text=True,
                          timeout=30, **kwargs)


def test_replay_reports_bad_lines_by_number_and_applies_the_rest(tmp_path):
    appliance = Appliance(tmp_path / "cfg")
    report: list[str] = []
    failures = config_file.replay(appliance, appliance.director,
                                  GOOD_AND_BAD.splitlines(), report.append)
    assert failures == 2
    assert report == [
        "line 4: virtual 192.0.2.10:99999",
        " " * len("line 4: virtual 192.0.2.10:") + "^",
        "line 4: % Invalid input detected at '^' marker.",
        " " * len("line 4: ") + "% invalid port '99999' (0-65535)",
        "line 6: assign 192.0.2.10:80 198.51.100.0 255.255.255.0",
        "line 6: % virtual 192.0.2.10:80:0:tcp has Bind ID 0; assign needs a non-zero "
        "Bind ID instance",
    ]
    [v] = appliance.director.iter_virtuals()
    assert [link.real.sid for link in v.iter_links()] == [ServerId.parse("203.0.113.12")]


def test_each_line_is_replayed_in_configuration_mode(tmp_path):
    """A stray `end` or `exit` in a file must not strand the lines after it."""
    appliance = Appliance(tmp_path / "cfg")
    lines = ["real 203.0.113.12", "end", "exit", "real 203.0.113.13"]
    assert config_file.replay(appliance, appliance.director, lines, print) == 0
    assert len(appliance.director.reals) == 2


def test_boot_with_a_missing_file_starts_empty_and_says_so(tmp_path):
    appliance = Appliance(tmp_path / "missing")
    messages: list[str] = []
    appliance.boot(messages.append)
    assert messages == [f"no startup-config at {tmp_path / 'missing'}: starting with an "
                        "empty configuration"]
    assert not appliance.director.virtuals


def saved_appliance(tmp_path: Path) -> tuple[Appliance, list[str]]:
    appliance = Appliance(tmp_path / "etc" / "startup-config")
    output: list[str] = []
    session = appliance.open_session("test", write=output.append, interactive=False)
    session.mode = Mode.CONFIG
    assert session.execute("real 203.0.113.12")
    assert session.execute("do write memory")
    assert session.execute("real 203.0.113.13")
    return appliance, output


@pytest.mark.parametrize("fails", ["fsync", "replace"])
def test_write_memory_failure_leaves_the_old_file_intact(tmp_path, monkeypatch, fails):
    appliance, output = saved_appliance(tmp_path)
    path = appliance.config_path
    old = path.read_text()
    assert "203.0.113.12" in old and "203.0.113.13" not in old

    def broken(*_args):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, fails, broken)
    [session] = list(appliance.sessions)
    output.clear()
    assert not session.execute("do write memory")
    assert output[-1].endswith(f"% cannot write {path}: No space left on device; the startup-config is unchanged\n")
    assert path.read_text() == old
    assert sorted(p.name for p in path.parent.iterdir()) == ["startup-config"]


def test_write_memory_replaces_the_file_and_keeps_it_private(tmp_path):
    appliance, _ = saved_appliance(tmp_path)
    [session] = list(appliance.sessions)
    assert session.execute("do write memory")
    path = appliance.config_path
    assert "real 203.0.113.13" in path.read_text().splitlines()
    assert path.stat().st_mode & 0o077 == 0     # password hashes live in it
    assert sorted(p.name for p in path.parent.iterdir()) == ["startup-config"]


def test_check_accepts_the_fig1_example():
    result = localdirector("--check", str(EXAMPLES / "fig1.cfg"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("OK")


def test_check_reports_line_numbers_and_fails(tmp_path):
    path = tmp_path / "bad.cfg"
    path.write_text(GOOD_AND_BAD)
    result = localdirector("--check", str(path))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert "line 4: % Invalid input detected at '^' marker." in lines
    assert any(l.startswith("line 6: % virtual 192.0.2.10:80:0:tcp has Bind ID 0")
               for l in lines)
    assert lines[-1] == f"{path}: 2 bad lines"
    assert localdirector("--check", str(tmp_path / "absent")).returncode == 1


def test_scripted_stdin_prints_output_and_exit_status(tmp_path):
    config = tmp_path / "startup-config"
    script = "enable\nconfigure terminal\nreal 203.0.113.12\nend\nshow real | count\n"
    result = localdirector("--no-dataplane", "--config", str(config), stdin=script)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "Number of lines which match regexp = 3\n"
    assert "no startup-config at" in result.stderr
    result = localdirector("--no-dataplane", "--config", str(config),
                           stdin="enable\nshow bogus\nshow version\n")
    assert result.returncode == 1
    assert result.stdout.splitlines()[:3] == [
        "localdirector#show bogus", " " * len("localdirector#show ") + "^",
        "% Invalid input detected at '^' marker."]
    assert "Hostname:        localdirector" in result.stdout   # later lines still ran


def test_scripted_enable_password_is_read_from_the_next_line(tmp_path):
    config = tmp_path / "startup-config"
    setup = "enable\nconf t\nenable password pw1\nend\nwrite memory\n"
    assert localdirector("--no-dataplane", "--config", str(config),
                         stdin=setup).returncode == 0
    ok = localdirector("--no-dataplane", "--config", str(config),
                       stdin="enable\npw1\nshow running-config | include ^hostname\n")
    assert (ok.returncode, ok.stdout) == (0, "hostname localdirector\n")
    denied = localdirector("--no-dataplane", "--config", str(config),
                           stdin="enable\nwrong\nshow running-config\n")
    assert denied.returncode == 1
    assert denied.stdout.startswith("% Access denied\n")


def test_python_dash_m_runs_the_same_main(tmp_path):
    result = subprocess.run([sys.executable, "-m", "localdirector", "--no-dataplane",
                             "--config", str(EXAMPLES / "fig1.cfg")],
                            input="enable\ntest assign 198.51.100.7 192.0.2.10:80\n",
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert "192.0.2.10:80:1:tcp" in result.stdout


class FakeService(types.ModuleType):
    """Stands in for localdirector.dataplane.plane: records start/stop."""

    def __init__(self, error: Exception | None = None) -> None:
        super().__init__("localdirector.dataplane.plane")
        self.error = error
        self.calls: list[object] = []

    def start(self, director: Director, queue: int, bypass: bool):
        if self.error:
            raise self.error
        self.calls.append(("start", queue, len(director.reals), bypass))
        return self

    def adopt(self, director: Director) -> None:
        self.calls.append("adopt")

    def stop(self) -> None:
        self.calls.append("stop")


def run_main(monkeypatch, service: FakeService, argv: list[str], stdin: str) -> int:
    import localdirector.dataplane as dataplane
    monkeypatch.setitem(sys.modules, "localdirector.dataplane.plane", service)
    monkeypatch.setattr(dataplane, "plane", service, raising=False)
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    return cli.main(argv)


def test_main_starts_the_data_plane_after_boot_and_stops_it(monkeypatch, capsys):
    service = FakeService()
    code = run_main(monkeypatch, service, ["--config", str(EXAMPLES / "fig1.cfg"),
                                           "--queue", "7"], "show version\n")
    assert code == 0
    assert service.calls == [("start", 7, 5, True), "stop"]   # a single director
    assert "Data plane:      running (NFQUEUE 7)" in capsys.readouterr().out


def test_main_exits_2_when_the_data_plane_cannot_start(monkeypatch, capsys):
    code = run_main(monkeypatch, FakeService(RuntimeError("no NFQUEUE here")),
                    ["--config", str(EXAMPLES / "fig1.cfg")], "show version\n")
    assert code == 2
    assert capsys.readouterr().err.strip() == "localdirector: data plane: no NFQUEUE here"
