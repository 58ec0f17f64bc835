"""The failover service: one entry of `cli.SERVICES` (docs/design.rst, "Failover").

It writes keepalived's and conntrackd's files from the model, runs and supervises them,
follows keepalived's verdicts through its notify FIFO (becoming active: commit
conntrackd's external cache behind the drop guard, then lift the guard), talks to the
other unit over the failover link while a `failover key` is set (status, the
configuration, step-down and save requests: stream.py, configcopy.py), and answers the
failover commands through `FailoverHandle`."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from typing import TYPE_CHECKING, Any

from localdirector import runtime
from localdirector.runtime import Supervised
from localdirector.model.addr import format_ip
from localdirector.model.director import Director
from localdirector.model.failover import DaemonStatus, FailoverStatus

from . import configs
from .configcopy import ConfigCopy
from .guard import STOP_SIGNAL, Guard, sentinel_argv
from .interfaces import interface_addresses, link_up
from .linkfilter import LinkFilter
from . import presence
from .presence import LinkWatch
from .replication import Replicator
from .stream import Stream

if TYPE_CHECKING:
    from localdirector.appliance import Appliance
    from localdirector.dataplane.plane import DataPlane

log = logging.getLogger("localdirector.failover")

# keepalived's sync-group verdicts, as this unit shows them.
ROLES = {"MASTER": "Active", "BACKUP": "Standby", "FAULT": "Fault", "STOP": "Standby"}
STEP_DOWN_WAIT = 5.0
STANDING_BY = ("Standby", "Fault", "Starting")   # roles that may take over


class FailoverService:
    def __init__(self, appliance: "Appliance", unit: configs.Unit,
                 plane: "DataPlane | None" = None) -> None:
        self.appliance = appliance
        self.unit = unit
        self.role = "Starting"
        self._active_since: float | None = None
        self._active_total = 0.0
        self._peer_status: dict[str, Any] = {}
        self._peer_heard = 0.0
        self._lock = threading.Lock()
        self._yields: set[str] = set()   # why keepalived is held out of MASTER now
        self._changed = threading.Event()
        self._stopping = threading.Event()
        self._written: tuple[str, str] = ("", "")
        self._sent_config: list[str] | None = None
        self.guard = Guard(unit.link)
        self.guard.raise_()
        self.link_filter = LinkFilter(unit.link)
        self.link_watch = LinkWatch(
            unit.link, lambda: self.role in STANDING_BY,
            lambda: presence.asks(self._instances(), interface_addresses()),
            lambda on: self._yield("link", on))
        self.keepalived: Supervised | None = None
        self.conntrackd: Supervised | None = None
        self.sentinel = Supervised("failover", "guard sentinel",
                                   sentinel_argv(unit.directory),
                                   unit.directory / "sentinel.out", stop_signal=STOP_SIGNAL)
        self.stream = Stream(unit, self._receive, self._peer_connected,
                             lambda: self.appliance.director.settings.failover.hold_ms / 1000)
        self.copy = ConfigCopy(appliance, self._send)
        self.replicator = None if plane is None else Replicator(
            plane, lambda: self.appliance.director, self._send,
            lambda: self.appliance.director.settings.failover.poll_ms / 1000)
        self._resend_conns = False   # the other unit connected: conns follow its config
        self._threads = [threading.Thread(target=self._follow_model, name="failover-model",
                                          daemon=True),
                         threading.Thread(target=self._read_notify, name="failover-notify",
                                          daemon=True)]

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self._remove_virtuals()   # a killed run's keepalived may have left them
        os.mkfifo(self.unit.notify_fifo)
        self.unit.yield_file.write_text("0\n")
        self.appliance.reload_hooks.append(self._adopt)
        self._adopt(self.appliance.director)
        self.appliance.failover = self
        if self.replicator is not None:
            self.replicator.start()
            self.replicator.plane.before_verdicts(self.replicator.write_before_verdicts)
        for thread in self._threads:
            thread.start()
        self.link_watch.start()
        self.sentinel.start()

    def stop(self) -> None:
        self._stopping.set()
        self._changed.set()
        self.link_watch.stop()
        self.sentinel.stop()      # it raises the guard as it goes; remove() lowers it
        self.appliance.failover = None
        if self.replicator is not None:
            self.replicator.plane.before_verdicts(None)
            self.replicator.stop()
        for daemon in (self.keepalived, self.conntrackd):
            if daemon is not None:
                daemon.stop()
        self.stream.stop()
        self._remove_virtuals()
        self.guard.remove()
        self.link_filter.remove()
        runtime.release(self.unit.directory)

    def _adopt(self, director: Director) -> None:
        """A new model (boot, `reload`, configuration from the active): follow it."""
        director.subscribe(self._changed.set)
        self._changed.set()

    # -- the model -> the helpers' files, the peer's configuration ---------------------------
    def _follow_model(self) -> None:
        """Also the hello: the other unit hears this one's role every poll."""
        while not self._stopping.is_set():
            poll = self.appliance.director.settings.failover.poll_ms / 1000
            if self._changed.wait(poll):
                self._changed.clear()
                if self._stopping.is_set():
                    return
                time.sleep(0.05)   # a burst of typed lines is one update
                try:
                    self._apply_model()
                except Exception:  # a bad model must not end supervision; say why
                    log.exception("failover: cannot apply the configuration")
            self._hello()

    def _apply_model(self) -> None:
        director = self.appliance.director
        with director.lock:
            config = director.settings.failover
            enabled = config.enabled and config.peer and config.virtuals
            keepalived = (configs.keepalived(config, self.unit, interface_addresses())
                          if enabled else "")
            conntrackd = configs.conntrackd(config, self.unit) if enabled else ""
            peer, key = (format_ip(config.peer) if enabled else ""), config.key
            admitted = format_ip(config.peer) if config.peer else None
        lines = self.copy.lines()
        self.link_filter.admit(admitted)
        if (keepalived, conntrackd) != self._written:
            self._rewrite(keepalived, conntrackd)
        self.stream.follow(peer, key)
        if self.role == "Active" and lines != self._sent_config:
            self._send_config(lines)
        self._replicate()

    def _replicate(self) -> None:
        """Connections go to the other unit while this one is active and `replicate`
        is on."""
        if self.replicator is not None:
            replicate = self.appliance.director.settings.failover.replicate
            self.replicator.set_sending(self.role == "Active" and replicate)

    def _rewrite(self, keepalived: str, conntrackd: str) -> None:
        old_keepalived, old_conntrackd = self._written
        self._written = (keepalived, conntrackd)
        if not keepalived:
            for daemon in (self.keepalived, self.conntrackd):
                if daemon is not None:
                    daemon.stop()
            self.keepalived = self.conntrackd = None
            self._remove_virtuals()
            self.guard.lower()     # not a pair: forward as a single director does
            self._set_role("Off")
            return
        if self.role != "Active":
            self.guard.raise_()
        if conntrackd != old_conntrackd:
            self.unit.conntrackd_conf.write_text(conntrackd)
            if self.conntrackd is not None:
                self.conntrackd.stop()
            self.conntrackd = Supervised(
                "failover", "conntrackd", ["conntrackd", "-C", str(self.unit.conntrackd_conf)],
                self.unit.directory / "conntrackd.out", self._clear_conntrackd,
                with_parent=False)
            self.conntrackd.start()
        if keepalived != old_keepalived:
            self.unit.keepalived_conf.write_text(keepalived)
            if self.keepalived is not None and self.keepalived.pid is not None:
                self.keepalived.signal(signal.SIGHUP)   # keepalived reloads its file
            else:
                if self.keepalived is not None:
                    self.keepalived.stop()
                d = self.unit.directory
                self.keepalived = Supervised(
                    "failover", "keepalived",
                    ["keepalived", "--dont-fork", "--log-console", "--vrrp",
                     "-f", str(self.unit.keepalived_conf), "-p", str(d / "keepalived.pid"),
                     "-r", str(d / "vrrp.pid"), "-c", str(d / "checkers.pid")],
                    d / "keepalived.out", self._clear_keepalived, with_parent=False)
                self.keepalived.start()

    def _clear_conntrackd(self) -> None:
        (self.unit.directory / "conntrackd.lock").unlink(missing_ok=True)
        (self.unit.directory / "conntrackd.ctl").unlink(missing_ok=True)

    def _clear_keepalived(self) -> None:
        """A keepalived that died left its addresses behind: this unit is not active
        until the new one says so."""
        self.guard.raise_()
        self._set_role("Starting")
        self._remove_virtuals()
        for name in ("keepalived.pid", "vrrp.pid", "checkers.pid"):
            (self.unit.directory / name).unlink(missing_ok=True)

    def _remove_virtuals(self) -> None:
        for _ifname, vips in self._instances():
            for vip in vips:
                subprocess.run(["ip", "addr", "del", vip, "dev", _ifname],
                               capture_output=True, check=False)

    def _instances(self) -> list[tuple[str, list[str]]]:
        director = self.appliance.director
        with director.lock:
            try:
                return configs.instances(director.settings.failover, interface_addresses())
            except ValueError:
                return []

    def _yield(self, reason: str, on: bool) -> None:
        """keepalived's track file, the one way this unit stays out of MASTER: held while
        any reason holds it (a step-down, a dark failover link), so one ending never
        lets go of the other's."""
        with self._lock:
            if on:
                self._yields.add(reason)
            else:
                self._yields.discard(reason)
            self.unit.yield_file.write_text("1\n" if self._yields else "0\n")

    # -- keepalived's verdicts ----------------------------------------------------------
    def _read_notify(self) -> None:
        fd = os.open(self.unit.notify_fifo, os.O_RDWR)   # RDWR: never sees EOF
        with os.fdopen(fd, "r") as fifo:
            for line in fifo:
                if self._stopping.is_set():
                    return
                words = line.split()
                if len(words) >= 3 and words[0] == "GROUP":
                    self._verdict(words[2])

    def _verdict(self, state: str) -> None:
        role = ROLES.get(state)
        if role is None:
            return
        if role == "Active":
            self._commit()
            self.guard.lower()
        else:
            self.guard.raise_()
            if self.replicator is not None:   # now, not after conntrackd's commands
                self.replicator.set_sending(False)
            self._conntrackd("-t")
            if role == "Standby":
                self._conntrackd("-n")
        self._set_role(role)
        log.warning("failover: this unit is now %s", role.lower())
        if role == "Active":
            self._sent_config = None
            self._changed.set()

    def _commit(self) -> None:
        """Replicated fast-path state into the kernel before the guard lifts
        (keepalived's primary-backup.sh order: commit, flush, resync, bulk send)."""
        for option in ("-c", "-f", "-R", "-B"):
            self._conntrackd(option)

    def _conntrackd(self, option: str) -> None:
        if self.conntrackd is None:
            return
        proc = subprocess.run(["conntrackd", "-C", str(self.unit.conntrackd_conf), option],
                              capture_output=True, text=True, check=False, timeout=10)
        if proc.returncode != 0:
            log.error("failover: conntrackd %s failed: %s", option,
                      (proc.stderr or proc.stdout).strip())

    def _set_role(self, role: str) -> None:
        with self._lock:
            now = time.monotonic()
            if self._active_since is not None:
                self._active_total += now - self._active_since
                self._active_since = None
            if role == "Active":
                self._active_since = now
            before, self.role = self.role, role
        self._replicate()
        if role != before:
            for hook in self.appliance.role_hooks:
                hook(before, role)

    def _active_seconds(self) -> float:
        with self._lock:
            extra = 0.0 if self._active_since is None else time.monotonic() - self._active_since
            return self._active_total + extra

    # -- the other unit ---------------------------------------------------------------
    def _peer_connected(self) -> None:
        self._sent_config = None
        self._resend_conns = True
        self._changed.set()
        self._hello()

    def _hello(self) -> None:
        self._send({"t": "status", "role": self.role, "active": self._active_seconds()})

    def _send(self, message: dict[str, Any], wait: bool = True) -> bool:
        return self.stream.send(message, wait)

    def _receive(self, message: dict[str, Any]) -> None:
        kind = message.get("t")
        if kind == "status":
            self._peer_status = message
            self._peer_heard = time.monotonic()
        elif kind == "config" and self.role != "Active":
            self.copy.apply(message.get("lines"))
        elif kind == "save" and self.role != "Active":
            self.copy.save(message)
        elif kind == "saved" and self.role == "Active":
            self.copy.saved(message)
        elif kind == "conns" and self.replicator is not None:
            self.replicator.receive(message, late=self.role == "Active")
        elif kind == "step-down" and self.role == "Active":
            threading.Thread(target=self._step_down, daemon=True).start()

    def _send_config(self, lines: list[str]) -> None:
        if self._send({"t": "config", "lines": lines}):
            self._sent_config = lines
            if self._resend_conns and self.replicator is not None:
                self._resend_conns = False
                self.replicator.resend()   # after the configuration they refer to

    def _step_down(self) -> None:
        """Behind the drop guard, hand every connection to the other unit (hand_over), then
        go to FAULT through keepalived's track file until the other unit is active, then
        back to BACKUP (nopreempt: it stays active); if keepalived did not move, go on."""
        self.guard.raise_()
        if self.replicator is not None:
            self.replicator.hand_over()
        self._yield("step-down", True)
        deadline = time.monotonic() + STEP_DOWN_WAIT
        while time.monotonic() < deadline and self._peer_status.get("role") != "Active":
            self._hello()
            time.sleep(0.05)
        self._yield("step-down", False)
        if self.role == "Active":
            self.guard.lower()
            self._replicate()

    # -- FailoverHandle -----------------------------------------------------------------
    def status(self) -> FailoverStatus:
        director = self.appliance.director
        hold = director.settings.failover.hold_ms / 1000
        heard = time.monotonic() - self._peer_heard < hold
        peer = self._peer_status if heard else {}
        note = self.link_watch.note
        link = "Normal" if link_up(self.unit.link) else f"Down ({note})" if note else "Down"
        replication = self.stream.status(heard)
        if self.replicator is not None:
            replication += f"; connections {self.replicator.counts()}"
        daemons = tuple(DaemonStatus(d.name, d.pid, d.restarts)
                        for d in (self.keepalived, self.conntrackd) if d is not None)
        return FailoverStatus(
            unit=self.unit.role.capitalize(), role=self.role,
            active_seconds=self._active_seconds(), link=self.unit.link,
            own_address=self.unit.address, link_state=link,
            peer_role=peer.get("role", "Unknown (not heard)"),
            peer_active_seconds=float(peer.get("active", 0.0)),
            replication=replication, daemons=daemons)

    def take_over(self) -> str:
        if self.role == "Active":
            return "This unit is already active"
        if self.stream.peer is None:
            return f"% {self.stream.off}"
        if not self._send({"t": "step-down"}):
            return "% The other unit does not answer; it takes over when it is gone"
        deadline = time.monotonic() + STEP_DOWN_WAIT
        while time.monotonic() < deadline and self.role != "Active":
            time.sleep(0.05)
        return "This unit is now active" if self.role == "Active" else \
            "% The other unit did not step down"

    def reset(self) -> str:
        self._written = ("", "")
        for daemon in (self.keepalived, self.conntrackd):
            if daemon is not None:
                daemon.stop()
        self.keepalived = self.conntrackd = None
        self._set_role("Starting")
        self._changed.set()
        return "Failover reset: keepalived and conntrackd restarted"

    def push_config(self) -> str:
        if self.role != "Active":
            return "% Only the active unit sends its configuration"
        if self.stream.peer is None:
            return f"% {self.stream.off}"
        lines = self.copy.lines()
        self._send_config(lines)
        if self._sent_config != lines:
            return "% The standby does not answer"
        return self.copy.request_save()
