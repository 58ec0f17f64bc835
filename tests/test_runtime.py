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
from localdirector.failover import guard as guard_module


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(runtime, "RUN", tmp_path)
    return tmp_path


_alive = runtime.running


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


def test_the_sentinel_raises_the_guard_before_it_ends_a_killed_appliances_helpers(
        tmp_path: Path) -> None:
    """The appliance is SIGKILLed: the guard sentinel (its child, parent-death signal)
    first runs the guard's command, then tells the run's helpers (keepalived,
    conntrackd: not started with die_with_parent) to go; each helper, at its SIGTERM,
    finds the guard already up. With both dying at the kill, the box went on forwarding
    kernel-decided connections whose state nobody replicated any more."""
    run_dir = tmp_path / "localdirector-failover-1"
    run_dir.mkdir()
    guard, seen = tmp_path / "guard-up", tmp_path / "seen"
    helper_code = ("import signal, sys, time, pathlib\n"
                   "def bye(*_):\n"
                   f"    pathlib.Path({str(seen)!r}).write_text("
                   f"str(pathlib.Path({str(guard)!r}).exists()))\n"
                   "    sys.exit(0)\n"
                   "signal.signal(signal.SIGTERM, bye)\n"
                   "print('ready', flush=True)\n"
                   "time.sleep(60)\n")
    argv = guard_module.sentinel_argv(run_dir)
    argv[argv.index("iptables"):] = ["touch", str(guard)]
    starter = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys\n"
        "from localdirector.runtime import die_with_parent\n"
        f"subprocess.Popen({argv!r}, preexec_fn=die_with_parent)\n"
        f"h = subprocess.Popen([sys.executable, '-c', {helper_code!r}, {str(run_dir)!r}],"
        " stdout=subprocess.PIPE, text=True, start_new_session=True)\n"
        "print(h.pid, h.stdout.readline().strip(), flush=True)\n"
        "sys.stdin.read()\n")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert starter.stdout is not None
    pid, ready = starter.stdout.readline().split()
    assert ready == "ready" and _alive(int(pid))
    time.sleep(0.3)                       # the sentinel is waiting in sigwait
    assert not guard.exists()
    starter.kill()                        # SIGKILL: no cleanup runs in the appliance
    starter.wait()
    deadline = time.monotonic() + 10
    while _alive(int(pid)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(int(pid))
    assert guard.exists() and seen.read_text() == "True"
