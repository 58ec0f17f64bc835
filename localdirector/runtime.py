"""What the appliance's helper processes (keepalived, conntrackd, ExaBGP, snmpd) leave
on the box, and how none of it outlives the appliance (docs/design.rst, "Failover", "No
orphan"); `Supervised` keeps one running.

Each service that runs helpers keeps their files in one directory per network
namespace, `/run/localdirector-KIND-INODE` (INODE: the namespace's, so pairs in several
namespaces of one host never meet, and an appliance restarted in the same namespace
finds what the last one left). The directory holds `owner`: the appliance's pid and
its start time, so a pid reused by another process is never taken for the owner.
`claim` ends what a dead owner's run left (every process whose command line names the
directory: a helper and its children) and removes its directory, for every namespace;
a live owner in this namespace is another appliance, and claiming is refused.

Helpers are started with `die_with_parent`: a SIGKILLed appliance takes them with it;
the failover pair's keepalived and conntrackd instead go after the guard sentinel raised
the drop guard (failover/guard.py), which then ends them with `end_leftovers`."""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("localdirector")

RUN = Path("/run")
PR_SET_PDEATHSIG = 1
END_WAIT = 3.0      # seconds for a leftover helper to go after SIGKILL
RESTART_DELAY = 0.5     # seconds between a helper's exit and its restart
STOP_GRACE = 3.0


class Claimed(Exception):
    """Another live appliance holds this namespace's directory."""


def die_with_parent() -> None:
    """In the child before exec (Popen's preexec_fn): SIGTERM when the thread that
    started it ends, as it does when the appliance is killed (PR_SET_PDEATHSIG).
    SIGTERM, not SIGKILL: keepalived then gives its addresses up and tells the other
    unit (priority 0), which takes over at once; ExaBGP closes its sessions, so the
    router withdraws the VIPs at once. What ignores it is killed by `claim` later."""
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _netns_inode() -> int:
    return os.stat("/proc/self/ns/net").st_ino


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command's closing parenthesis (the state
    first), or None once the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def identity(pid: int) -> str:
    """``PID STARTTIME`` (field 22 of /proc/PID/stat), or "" once it is gone: the start
    time tells a reused pid from the process it was."""
    fields = _stat(pid)
    return f"{pid} {fields[19]}" if fields is not None else ""


def running(pid: int) -> bool:
    """`pid` exists and is not a zombie: a helper whose parent died is reaped by
    whoever adopted it, perhaps late, and is gone as far as its sockets go."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def _owner_alive(directory: Path) -> int | None:
    """The pid of the live appliance that owns `directory`, or None."""
    try:
        recorded = (directory / "owner").read_text().strip()
        pid = int(recorded.split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if identity(pid) == recorded else None


def _users(directory: Path) -> list[int]:
    """Processes whose command line names `directory`: the helpers of its run."""
    needle = str(directory).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def end_leftovers(directory: Path, signum: int = signal.SIGKILL) -> list[int]:
    """Send `signum` to every process of `directory`'s run and wait until they are
    gone (their sockets and addresses with them); returns their pids. SIGKILL for a
    dead run's leftovers; SIGTERM from the guard sentinel, so keepalived says goodbye
    (priority 0) as it goes, with SIGKILL for whatever is still there after END_WAIT."""
    pids = _users(directory)
    for signal_now in dict.fromkeys((signum, signal.SIGKILL)):
        # Only those still there: a pid gone after the first signal may be reused.
        for pid in [pid for pid in pids if running(pid)]:
            try:
                os.kill(pid, signal_now)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + END_WAIT
        while time.monotonic() < deadline and any(running(pid) for pid in pids):
            time.sleep(0.02)
    return pids


def claim(kind: str) -> Path:
    """This namespace's directory for `kind`, made anew and owned by this process; the
    helpers of a dead run it ended are logged. Raises Claimed when a live appliance
    owns it."""
    ended: list[int] = []
    mine = RUN / f"localdirector-{kind}-{_netns_inode()}"
    for directory in RUN.glob(f"localdirector-{kind}-*"):
        owner = _owner_alive(directory)
        if owner is not None and owner != os.getpid():
            if directory == mine:
                raise Claimed(f"another appliance (pid {owner}) runs {kind} in this "
                              "network namespace")
            continue
        ended += end_leftovers(directory)
        shutil.rmtree(directory, ignore_errors=True)
    # Made under a name the glob above never matches, then renamed: another appliance
    # claiming at the same moment never sees it without its owner.
    made = Path(tempfile.mkdtemp(prefix=f".localdirector-{kind}-", dir=RUN))
    (made / "owner").write_text(f"{identity(os.getpid())}\n")
    made.rename(mine)
    if ended:
        log.warning("%s: ended %d helper processes a killed run left (pids %s)", kind,
                    len(ended), " ".join(map(str, ended)))
    return mine


def release(directory: Path) -> None:
    """At a clean stop, after the helpers are stopped: nothing is left behind."""
    end_leftovers(directory)
    shutil.rmtree(directory, ignore_errors=True)


class Supervised:
    """A helper (keepalived, conntrackd, snmpd) kept running in the foreground in its own
    process group: restarted and logged when it exits, stopped with its children, and
    killed by the kernel if the appliance dies without stopping it. `service` names the
    appliance's service in its log lines and its thread (`failover-keepalived`)."""

    def __init__(self, service: str, name: str, argv: list[str], output: Path,
                 prepare: Callable[[], None] = lambda: None,
                 with_parent: bool = True, stop_signal: int = signal.SIGTERM) -> None:
        self.service = service
        # False: not ended by the appliance's death itself but by the failover guard
        # sentinel once the drop guard is up (failover/guard.py).
        self.with_parent = with_parent
        self.stop_signal = stop_signal
        self.log = logging.getLogger(f"localdirector.{service}")
        self.name = name
        self.argv = argv
        self.output = output
        self.prepare = prepare     # before every start: clear what a crash left behind
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{service}-{name}",
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
                self.log.info("%s: %s started (pid %d)", self.service, self.name,
                              self._proc.pid)
            else:
                self.log.warning("%s: %s restarted (pid %d)", self.service, self.name,
                                 self._proc.pid)
            first = False
            status = self._proc.wait()
            _end_group(self._proc.pid)   # orphaned children of a crash go with it
            if self._stopping.is_set():
                break
            self.log.error("%s: %s exited (status %d); restarting", self.service,
                           self.name, status)
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
