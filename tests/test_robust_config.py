"""The startup-config under hostile conditions: a full or read-only disk during
`write memory`, and a damaged file at boot.

The disk cases use a real, tiny tmpfs in a private mount namespace (``unshare -m``), so
ENOSPC and EROFS come from the kernel, not from a monkeypatch, and nothing outside the
test's own namespace is mounted or changed. The appliance runs without a data plane on
a pty, exactly as an operator's console.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from appliance_driver import FIG1_CONFIG, ROOT, Console, appliance_argv
from hypothesis import given, settings
from hypothesis import strategies as st

from localdirector.appliance import Appliance
from localdirector.shell import config_file


def require_mount_namespaces() -> None:
    """Like the network labs: skip where impossible, fail under LOCALDIRECTOR_REQUIRE_NETNS."""
    problem = None
    if os.geteuid() != 0:
        problem = "needs root"
    elif shutil.which("unshare") is None or shutil.which("nsenter") is None:
        problem = "needs unshare and nsenter (util-linux)"
    if problem is None:
        return
    if os.environ.get("LOCALDIRECTOR_REQUIRE_NETNS") == "1":
        pytest.fail(f"mount namespaces required but unavailable: {problem}", pytrace=False)
    pytest.skip(f"mount namespaces unavailable: {problem}")


class DiskConsole(Console):
    """The appliance with its startup-config directory on a 16 kB tmpfs of its own."""

    def __init__(self, directory: Path, initial: str) -> None:
        config = directory / "startup-config"
        seed = directory.parent / "seed"
        seed.write_text(initial)
        script = (f"mount -t tmpfs -o size=16k,mode=0700 ldtest {directory} && "
                  f"cp {seed} {config} && exec \"$@\"")
        super().__init__(["unshare", "-m", "--propagation", "private", "sh", "-c", script,
                          "sh", *appliance_argv(config, "--no-dataplane")])
        self.directory = directory
        self.config = config

    def inside(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run a command in the appliance's mount namespace (where its tmpfs is)."""
        return subprocess.run(["nsenter", "-t", str(self.pid), "-m", *argv],
                              capture_output=True, text=True, timeout=10)

    def fill(self) -> None:
        self.inside("dd", "if=/dev/zero", f"of={self.directory}/filler", "bs=1k")
        assert self.inside("df", "--output=avail", str(self.directory)).stdout.split()[-1] \
            == "0"

    def listing(self) -> list[str]:
        return sorted(self.inside("ls", "-A", str(self.directory)).stdout.split())

    def startup_config(self) -> str:
        return self.inside("cat", str(self.config)).stdout


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[DiskConsole]:
    require_mount_namespaces()
    directory = tmp_path / "etc"
    directory.mkdir()
    console = DiskConsole(directory, "hostname localdirector\nreal 203.0.113.12\n")
    yield console
    if console.child.isalive():
        assert console.exit() == 0
    assert not os.listdir(directory)  # the tmpfs was never visible out here


def test_write_memory_on_a_full_disk_keeps_the_old_file_and_says_so(disk: DiskConsole) -> None:
    old = disk.startup_config()
    disk.configure("real 203.0.113.13")
    disk.fill()
    out = disk.run("write memory")
    assert f"% cannot write {disk.config}: No space left on device; the startup-config is unchanged" in out
    assert "[OK]" not in out
    assert disk.startup_config() == old
    assert disk.listing() == ["filler", "startup-config"]  # no half-written temp file
    assert "203.0.113.13" not in disk.run("show config")
    disk.inside("rm", f"{disk.directory}/filler")
    assert "[OK]" in disk.run("write memory")
    assert "real 203.0.113.13" in disk.startup_config().splitlines()


def test_write_memory_on_a_read_only_disk_keeps_the_old_file_and_says_so(
        disk: DiskConsole) -> None:
    old = disk.startup_config()
    disk.configure("real 203.0.113.13")
    assert disk.inside("mount", "-o", "remount,ro", str(disk.directory)).returncode == 0
    out = disk.run("write memory")
    assert f"% cannot write {disk.config}: Read-only file system; the startup-config is unchanged" in out
    assert disk.startup_config() == old and disk.listing() == ["startup-config"]
    assert "% cannot erase" in disk.confirm("write erase")
    assert disk.startup_config() == old


# ------------------------------------------------------------------ damaged files

def damaged_fig1() -> tuple[bytes, set[int]]:
    """FIG. 1's file with CRLF line ends, damage of every kind between its lines, and
    its last line cut short; returns the bytes and the numbers of the damaged lines."""
    lines = [line.encode() for line in FIG1_CONFIG.read_text().splitlines()]
    damage = {
        3: b"\xff\xfe\x00 not text at all",                        # not UTF-8
        8: b"\x00\x01\x1b[2Jbinary\x07junk",                       # controls, NUL, escape
        20: b"virtual 192.0.2.10:80:9:tcp sideways",               # no such state
        25: b"assign 192.0.2.10:80:1:tcp 198.51.100.\xe9 255.255.255.0",  # bad byte in a command
        30: b"x" * 5000,                                           # overlong garbage
    }
    bad: set[int] = set()
    for offset, (at, text) in enumerate(sorted(damage.items())):
        lines.insert(at + offset, text)
        bad.add(at + offset + 1)
    lines.append(b"backup 192.0.2.10:80:2:tcp 192.0.2.1")  # cut short: no such virtual
    bad.add(len(lines))
    return b"\r\n".join(lines), bad  # no final newline: the write was interrupted


def test_a_damaged_startup_config_boots_with_every_good_line_and_reports_every_bad_one(
        tmp_path: Path) -> None:
    data, bad = damaged_fig1()
    damaged = tmp_path / "damaged"
    damaged.write_bytes(data)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    show = "enable\nshow running-config\n"
    boot = subprocess.run(appliance_argv(damaged, "--no-dataplane"), input=show,
                          capture_output=True, text=True, timeout=30, env=env)
    assert boot.returncode == 0, boot.stderr
    reported = {int(line.split(":")[0].removeprefix("line "))
                for line in boot.stderr.splitlines() if ": % " in line}
    assert reported == bad
    assert "\x1b" not in boot.stderr and "\x00" not in boot.stderr  # echoed safely
    clean = subprocess.run(appliance_argv(FIG1_CONFIG, "--no-dataplane"), input=show,
                           capture_output=True, text=True, timeout=30, env=env)
    assert boot.stdout == clean.stdout  # every good line applied, nothing else
    check = subprocess.run([sys.executable, "-m", "localdirector", "--check", str(damaged)],
                           capture_output=True, text=True, timeout=30, env=env)
    assert check.returncode == 1 and check.stdout.splitlines()[-1].endswith(
        f"{len(bad)} bad lines")


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8),
       st.integers(0, 10**6))
def test_any_damage_boots_and_reports_by_line(tmp_path_factory, flips, cut) -> None:
    """Random bytes overwritten and the file cut anywhere: booting never fails, every
    failure is reported once with a line number in range, and an undamaged line applies
    unless it needs something a damaged line should have created."""
    data = bytearray(FIG1_CONFIG.read_bytes())
    for position, value in flips:
        data[position % len(data)] = value
    data = data[:cut % (len(data) + 1)]
    path = tmp_path_factory.mktemp("damage") / "startup-config"
    path.write_bytes(bytes(data))
    appliance = Appliance(path)
    report: list[str] = []
    lines = config_file.read(path)
    failures = config_file.replay(appliance, appliance.director, lines, report.append)
    # A failure's last line is its message; the echo of the damaged line before its caret
    # may itself read `% ...`, so only lines not followed by a caret count.
    numbers = [int(line.split(":")[0].removeprefix("line "))
               for line, after in zip(report, [*report[1:], ""])
               if ": % " in line and not after.strip().startswith("^")]
    assert len(numbers) == failures == len(set(numbers))
    assert all(1 <= n <= len(lines) for n in numbers)
    original = FIG1_CONFIG.read_text().splitlines()
    first_damage = next((i for i, line in enumerate(lines, 1)
                         if i > len(original) or line != original[i - 1]), len(lines) + 1)
    assert all(n >= first_damage for n in numbers)  # what precedes the damage applies
