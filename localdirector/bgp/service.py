"""The BGP service: one entry of `cli.SERVICES` (docs/design.rst, "Scale-out").

A thread follows the model: when BGP's configuration changes it (re)starts ExaBGP with
a configuration written from it; every half second, and at once after a change, it
compares the VIPs (either family) the model wants announced (model/bgp.py: advertised, in service,
some real can take a connection, not drained) with what ExaBGP was told and sends the
difference. Health changes (a real FAILED, a probe) move no generation, hence the
poll. At stop every VIP is withdrawn before ExaBGP is stopped."""

from __future__ import annotations

import argparse
import logging
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from localdirector import runtime
from localdirector.commands.bgp import BgpStatus
from localdirector.model import bgp
from localdirector.model.addr import family_of, format_ip, parse_ip
from localdirector.model.bgp import BgpConfig

from .speaker import Speaker, config_text, find_exabgp

if TYPE_CHECKING:
    from localdirector.appliance import Appliance

log = logging.getLogger("localdirector.bgp")

POLL = 0.5
WITHDRAW_GRACE = 0.5     # at stop: time for ExaBGP to send the withdrawals
RESTART_DELAY = 1.0
_EVENT = re.compile(r"^neighbor (\S+) (up|down|connected)\b")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Nothing to ask for: the service runs beside the data plane and starts ExaBGP
    once `router bgp` and a neighbour are configured."""


def start(appliance: "Appliance", args: argparse.Namespace) -> "BgpService | None":
    if getattr(args, "no_dataplane", False):
        return None   # announcing VIPs nobody forwards would black-hole them
    service = BgpService(appliance)
    service.start()
    return service


def _local_address(neighbor: int) -> int:
    """The address this box reaches `neighbor` from (its route's source), in the
    neighbour's family: an IPv6 session's next hop is this director's IPv6 address."""
    version = f"-{family_of(neighbor).version}"
    out = subprocess.run(["ip", "-o", version, "route", "get", format_ip(neighbor)],
                         capture_output=True, text=True, check=False).stdout
    match = re.search(r"\bsrc (\S+)", out)
    if match is None:
        raise RuntimeError(f"no route to BGP neighbor {format_ip(neighbor)}")
    return parse_ip(match.group(1))


def _config_key(config: BgpConfig) -> tuple:
    return (config.asn, config.router_id, tuple(config.neighbors))


class BgpService:
    def __init__(self, appliance: "Appliance") -> None:
        self.appliance = appliance
        self._directory: Path | None = None   # claimed when ExaBGP first starts
        self._speaker: Speaker | None = None
        self._key: tuple | None = None
        self._announced: set[int] = set()
        self._neighbors: list[int] = []     # the running ExaBGP's sessions
        self._sessions: dict[int, str] = {}
        self._problem = ""
        self._wake = threading.Event()
        self._stopping = False
        self._lock = threading.Lock()      # the speaker, announced, sessions
        self._thread = threading.Thread(target=self._run, name="bgp", daemon=True)
        self._subscribed: object = None

    def start(self) -> None:
        self._subscribe()
        self.appliance.bgp = self
        self._thread.start()

    def _subscribe(self) -> None:
        director = self.appliance.director
        if self._subscribed is not director:   # `reload` built a new model
            director.subscribe(self._wake.set)
            self._subscribed = director

    def status(self) -> BgpStatus:
        with self._lock:
            speaker = self._speaker
            if speaker is not None and speaker.alive():
                running = f"running (pid {speaker.proc.pid})"
            else:
                running = self._problem or "stopped (no router bgp or no neighbor)"
            return BgpStatus(running, dict(self._sessions), frozenset(self._announced))

    # -- the thread ------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping:
            try:
                self._step()
            except Exception as err:   # noqa: BLE001 - keep following the model
                log.error("bgp: %s", err)
                self._problem = f"error: {err}"
                time.sleep(RESTART_DELAY)
            self._wake.wait(POLL)
            self._wake.clear()
        self._stop_speaker()   # in this thread: ExaBGP dies with the thread that started it

    def _step(self) -> None:
        self._subscribe()
        director = self.appliance.director
        with director.lock:
            config = director.settings.bgp
            key = _config_key(config)
            snapshot = BgpConfig(config.asn, config.router_id, list(config.neighbors),
                                 config.drain)
            wanted = bgp.wanted(director)
        speaker = self._speaker
        if key != self._key or (speaker is not None and not speaker.alive()):
            if speaker is not None and not speaker.alive() and key == self._key:
                log.warning("bgp: exabgp exited (status %s); restarting",
                            speaker.proc.returncode)
                time.sleep(RESTART_DELAY)
            self._restart(snapshot, key)
        if self._speaker is None:
            return
        with self._lock:
            for vip in sorted(wanted - self._announced):
                self._route("announce", vip)
            for vip in sorted(self._announced - wanted):
                self._route("withdraw", vip)
            self._announced = set(wanted)

    def _route(self, verb: str, vip: int, speaker: Speaker | None = None) -> None:
        """Announce or withdraw VIP/32 or VIP/128 to each neighbour of its family (an
        ExaBGP command without a neighbour goes to all, and a session of the other
        family has no place for it)."""
        prefix = f"{format_ip(vip)}/{family_of(vip).width}"
        for neighbor in self._neighbors:
            if family_of(neighbor) is family_of(vip):
                (speaker or self._speaker).send(
                    f"neighbor {format_ip(neighbor)} {verb} route {prefix} next-hop self")
        log.info("bgp: %s %s", "announced" if verb == "announce" else "withdrew", prefix)

    def _restart(self, config: BgpConfig, key: tuple) -> None:
        self._stop_speaker()
        self._key = key
        if not config.asn or not config.neighbors:
            self._problem = ""
            return
        program = find_exabgp()
        if program is None:
            self._problem = ("exabgp is not installed (pip install exabgp): "
                             f"not on PATH nor beside {sys.executable}")
            log.error("bgp: %s", self._problem)
            return
        local = {n.addr: _local_address(n.addr) for n in config.neighbors}
        if self._directory is None:
            self._directory = runtime.claim("bgp")
        directory = self._directory
        text = config_text(config, local, directory / "relay.sh", directory / "commands",
                           directory / "events")
        with self._lock:
            self._speaker = Speaker(program, directory, text, self._event)
            self._neighbors = [n.addr for n in config.neighbors]
            self._announced = set()
            self._sessions = {}
        self._problem = ""
        log.info("bgp: exabgp started (pid %d), AS %d, %d neighbor(s)",
                 self._speaker.proc.pid, config.asn, len(config.neighbors))

    def _event(self, line: str) -> None:
        match = _EVENT.match(line)
        if match is None:
            return
        addr, state = parse_ip(match.group(1)), match.group(2)
        with self._lock:
            if self._sessions.get(addr) != state:
                log.warning("bgp: neighbor %s %s", match.group(1), state)
            self._sessions[addr] = state

    def _stop_speaker(self) -> None:
        with self._lock:
            speaker, self._speaker = self._speaker, None
            announced, self._announced = self._announced, set()
            self._sessions = {}
        if speaker is None:
            return
        if announced and speaker.alive():
            for vip in sorted(announced):
                self._route("withdraw", vip, speaker)
            time.sleep(WITHDRAW_GRACE)
        speaker.stop()

    def stop(self) -> None:
        """Withdraw everything, stop ExaBGP, forget the files."""
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(10)
        self.appliance.bgp = None
        if self._directory is not None:
            runtime.release(self._directory)
