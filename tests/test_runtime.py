"""What a killed appliance leaves and the next start ends (localdirector/runtime.py,
docs/design.rst "Failover"): helpers named by a dead owner's directory are killed and
the directory removed; a live owner in this namespace is refused; a clean release
leaves nothing; a helper started with die_with_parent goes when its starter does."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from localdirector import runtime


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(runtime, "RUN", tmp_path)
    return tmp_path


def _alive(pid: int) -> bool:
    return bool(runtime.identity(pid)) and \
        "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:1]


def test_a_dead_owners_helpers_are_ended_and_its_directory_removed(
        run: Path, caplog: pytest.LogCaptureFixture) -> None:
    left = run / "localdirector-failover-12345"
    left.mkdir()
    (left / "owner").write_text("999999999 1\n")          # no such process
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                               "-f", str(left / "keepalived.conf")])
    other = subprocess.Popen(["sleep", "60"])             # names no directory
    deadline = time.monotonic() + 5
    while str(left).encode() not in Path(f"/proc/{helper.pid}/cmdline").read_bytes():
        assert time.monotonic() < deadline, "the helper never started"
        time.sleep(0.01)                                  # exec'd yet?
    try:
        mine = runtime.claim("failover")
        helper.wait(timeout=5)
        assert f"ended 1 helper processes a killed run left (pids {helper.pid})" \
            in caplog.text and not left.exists()
        assert other.poll() is None
        assert (mine / "owner").read_text() == f"{runtime.identity(os.getpid())}\n"
        runtime.release(mine)
        assert list(run.iterdir()) == []
    finally:
        for proc in (helper, other):
            proc.kill()
            proc.wait()


def test_a_live_owner_in_this_namespace_is_refused(run: Path) -> None:
    owner = subprocess.Popen(["sleep", "60"])
    try:
        inode = os.stat("/proc/self/ns/net").st_ino
        taken = run / f"localdirector-bgp-{inode}"
        taken.mkdir()
        (taken / "owner").write_text(f"{runtime.identity(owner.pid)}\n")
        with pytest.raises(runtime.Claimed, match=f"pid {owner.pid}"):
            runtime.claim("bgp")
        assert (taken / "owner").exists()
        # The same pid with another start time is a reused pid, not the owner.
        (taken / "owner").write_text(f"{owner.pid} 1\n")
        mine = runtime.claim("bgp")
        assert mine == taken and owner.poll() is None
    finally:
        owner.kill()
        owner.wait()


def test_a_helper_dies_with_the_thread_that_started_it() -> None:
    starter = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys\n"
        "from localdirector.runtime import die_with_parent\n"
        "p = subprocess.Popen(['sleep', '60'], preexec_fn=die_with_parent)\n"
        "print(p.pid, flush=True)\n"
        "sys.stdin.read()\n")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert starter.stdout is not None
    helper = int(starter.stdout.readline())
    assert _alive(helper)
    starter.kill()                                      # SIGKILL: no cleanup runs
    starter.wait()
    deadline = time.monotonic() + 5
    while _alive(helper) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(helper)
