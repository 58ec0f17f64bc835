"""Keeps the remote syslog senders (syslog/remote.py) in step with the model's `logging`
settings, through every change and every `reload` (docs/design.rst, "Monitoring").

It listens to `Director.changed`, which runs under the model lock for every change, so
it only compares a few fields and hands a changed set to the senders, which start their
sockets and threads without waiting on the network."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from localdirector.model.addr import format_ip
from localdirector.model.director import Director
from localdirector.syslog import remote

if TYPE_CHECKING:
    from localdirector.appliance import Appliance


class LoggingHosts:
    """A cli.py service: on from start to exit, whatever the configuration says."""

    def __init__(self, appliance: "Appliance") -> None:
        self.appliance = appliance
        self._applied: tuple | None = None
        self._stopped = False

    def follow(self, director: Director) -> None:
        """Listen to `director` (the booted model, then each `reload`'s)."""
        director.subscribe(lambda: self.apply(director))
        self.apply(director)

    def apply(self, director: Director) -> None:
        if self._stopped or director is not self.appliance.director:
            return   # a model `reload` replaced: its listener stays, and stays quiet
        settings = director.settings
        wanted = (settings.hostname, settings.log_trap, tuple(settings.log_hosts),
                  settings.log_facility)
        if wanted != self._applied:
            self._applied = wanted
            remote.HANDLER.configure(settings.hostname, settings.log_trap, [
                remote.Target(format_ip(h.addr), h.transport, h.port)
                for h in settings.log_hosts], settings.log_facility)

    def stop(self) -> None:
        self._stopped = True
        settings = self.appliance.director.settings
        remote.HANDLER.configure(settings.hostname, settings.log_trap, [])


def start(appliance: "Appliance", _args: argparse.Namespace) -> LoggingHosts:
    """SERVICES entry: always on (the startup-config or a later command may name hosts)."""
    hosts = LoggingHosts(appliance)
    appliance.reload_hooks.append(hosts.follow)
    hosts.follow(appliance.director)
    return hosts
