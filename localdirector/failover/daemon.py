"""A helper process the appliance keeps running (keepalived, conntrackd): started in
the foreground in its own process group, restarted and logged when it exits, stopped
with its children at exit, and killed by the kernel if the appliance dies without
stopping it (docs/design.rst, "Failover")."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from localdirector.runtime import die_with_parent

log = logging.getLogger("localdirector.failover")

RESTART_DELAY = 0.5     # seconds between a helper's exit and its restart
STOP_GRACE = 3.0


class Supervised:
    def __init__(self, name: str, argv: list[str], output: Path,
                 prepare: Callable[[], None] = lambda: None,
                 with_parent: bool = True, stop_signal: int = signal.SIGTERM) -> None:
        self.name = name
        self.argv = argv
        # False: not ended by the appliance's death itself but by the guard sentinel
        # once the drop guard is up (guard.py).
        self.with_parent = with_parent
        self.stop_signal = stop_signal
        self.output = output
        self.prepare = prepare     # before every start: clear what a crash left behind
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"failover-{name}",
                                        daemon=True)

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def start(self) -> None:
        self._thread.start()

    def signal(self, signum: int) -> None:
        pid = self.pid
        if pid is not None:
            os.kill(pid, signum)

    def _run(self) -> None:
        first = True
        while not self._stopping.is_set():
            self.prepare()
            with self.output.open("ab") as out:
                self._proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL,
                                              start_new_session=True,
                                              preexec_fn=die_with_parent
                                              if self.with_parent else None)
            if first:
                log.info("failover: %s started (pid %d)", self.name, self._proc.pid)
            else:
                log.warning("failover: %s restarted (pid %d)", self.name, self._proc.pid)
            first = False
            status = self._proc.wait()
            _end_group(self._proc.pid)   # orphaned children of a crash go with it
            if self._stopping.is_set():
                break
            log.error("failover: %s exited (status %d); restarting", self.name, status)
            self.restarts += 1
            self._stopping.wait(RESTART_DELAY)

    def stop(self) -> None:
        self._stopping.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            _kill_group(proc.pid, self.stop_signal)
            try:
                proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                pass
            _end_group(proc.pid)
        if self._thread.is_alive():
            self._thread.join(STOP_GRACE + 1)


def _kill_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _end_group(pgid: int) -> None:
    """SIGKILL what is left of a process group and wait until it is gone, so a restart
    never meets the old instance's pid file or sockets still in use."""
    _kill_group(pgid, signal.SIGKILL)
    deadline = time.monotonic() + STOP_GRACE
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.02)
