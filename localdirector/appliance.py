"""The running appliance: the live model, the commands, where its configuration is kept,
who is logged in, and the hooks through which the data plane follows the model."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from localdirector.model.director import Director

from .commands import REGISTRY, Registry
from .commands.bgp import BgpHandle
from .commands.failover import FailoverHandle
from .commands.handle import DataPlaneHandle
from .shell import config_file, running_config
from .shell.session import Session

DEFAULT_CONFIG = Path("/etc/localdirector/startup-config")


class SessionRegistry:
    """Live sessions for `who` / `show users` / `kill`; transports register and discard."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._sessions: dict[int, Session] = {}

    def add(self, session: Session) -> Session:
        with self._lock:
            session.id = next(self._ids)
            self._sessions[session.id] = session
        return session

    def discard(self, session: Session) -> None:
        with self._lock:
            self._sessions.pop(session.id, None)

    def get(self, session_id: int) -> Session | None:
        with self._lock:
            return self._sessions.get(session_id)

    def __iter__(self) -> Iterator[Session]:
        with self._lock:
            return iter(sorted(self._sessions.values(), key=lambda s: s.id))


class Appliance:
    def __init__(self, config_path: Path = DEFAULT_CONFIG, queue_num: int = 0) -> None:
        self.director = Director()
        self.registry: Registry = REGISTRY
        self._saved: list[str] = self.running_config()
        self.config_path = Path(config_path)
        self.queue_num = queue_num
        self.sessions = SessionRegistry()
        self.started = time.time()
        # Set once by cli.py when the data plane runs (None: `--no-dataplane`).
        self.dataplane: DataPlaneHandle | None = None
        # Set by the failover and BGP services while they run (their commands' view).
        self.failover: FailoverHandle | None = None
        self.bgp: BgpHandle | None = None
        # `--host-network IFACE`: the interface a LocalDirector configuration's `ip
        # address` goes on, and leave to apply its host lines (commands/hostnet.py).
        self.host_network: str | None = None
        # Called with the new Director after `reload` replaced the model.
        self.reload_hooks: list[Callable[[Director], None]] = []

    def open_session(self, kind: str, peer: str = "", *,
                     write: Callable[[str], None] | None = None,
                     interactive: bool = True) -> Session:
        """What every transport calls first; `session.close()` when the peer goes away."""
        return self.sessions.add(Session(self, kind, peer, write=write,
                                         interactive=interactive))

    def load(self, report: Callable[[str], None]) -> Director:
        """A fresh model built from the startup-config; bad lines go to `report`."""
        director = Director(self.director.lock)
        lines = config_file.read(self.config_path)
        if lines is None:
            report(f"no startup-config at {self.config_path}: starting with an empty "
                   "configuration")
        else:
            config_file.replay(self, director, lines, report)
        return director

    def boot(self, report: Callable[[str], None]) -> None:
        self.director = self.load(report)
        self.saved(self.running_config())

    def reload(self, report: Callable[[str], None]) -> None:
        """Swap in a model re-read from the startup-config; the data plane is told."""
        director = self.load(report)
        self.director = director
        self.saved(self.running_config())
        for hook in self.reload_hooks:
            hook(director)

    def running_config(self) -> list[str]:
        with self.director.lock:
            return running_config.render(self.director, self.registry)

    def write_memory(self) -> str | None:
        """The running-config becomes the startup-config, atomically (`config_file.save`);
        one line saying why not, with the old file unchanged, or None. `write memory`
        and a failover standby told to save by the active (`write standby`) call it."""
        lines = self.running_config()   # the disk is written unlocked
        try:
            config_file.save(self.config_path, "\n".join(lines) + "\n")
        except OSError as err:
            return (f"cannot write {self.config_path}: {err.strerror or err}; "
                    "the startup-config is unchanged")
        self.saved(lines)
        return None

    def saved(self, lines: list[str]) -> None:
        """What the startup-config now holds, as `running_config()` renders it."""
        self._saved = lines

    def unsaved(self) -> bool:
        """Whether the running configuration differs from the startup-config (IOS asks
        before `reload` throws such changes away). Compared as rendered, so a
        hand-written startup-config that means the same counts as saved."""
        return self.running_config() != self._saved
