"""One ExaBGP process: its configuration written from the model, its API reached
through two FIFOs (docs/design.rst, "Scale-out").

ExaBGP reads API commands from the stdout of a process it starts itself and writes its
events to that process's stdin. That process is a two-line shell relay between ExaBGP
and two FIFOs the appliance holds open: commands in, events (session up/down) out.
Acknowledgements are off (`exabgp.api.ack=false`): nobody would read them and the
pipe would fill until ExaBGP stalls."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from localdirector.model.addr import family_of, format_ip, is_v6
from localdirector.model.bgp import BgpConfig
from localdirector.runtime import die_with_parent

STOP_GRACE = 3.0
ENVIRONMENT = {
    "exabgp.daemon.user": "root",       # it runs the relay, and binds nothing < 1024
    "exabgp.daemon.daemonize": "false",
    "exabgp.daemon.drop": "false",
    "exabgp.api.ack": "false",
    "exabgp.api.cli": "false",          # no named pipes of its own in /run
    "exabgp.log.destination": "stdout",
    "exabgp.log.level": "INFO",
}

RELAY = """#!/bin/sh
# ExaBGP's API process: commands from the appliance, events back to it.
cat "$1" &
exec cat > "$2"
"""


def find_exabgp() -> str | None:
    """The `exabgp` program: on PATH, else beside the interpreter running the appliance.
    A virtualenv's programs share its `bin`, and a unit started by full path (systemd's
    `ExecStart=/opt/venv/bin/localdirector`) has that `bin` nowhere on PATH."""
    return (shutil.which("exabgp")
            or shutil.which("exabgp", path=os.path.dirname(sys.executable)))


def router_id(config: BgpConfig, local: dict[int, int]) -> int:
    """The BGP identifier: `bgp router-id`, else the lowest local IPv4 address of a
    session. It is 32 bits (RFC 6286), so a director whose sessions are all IPv6 must
    be given one."""
    if config.router_id:
        return config.router_id
    ours = sorted(local[n.addr] for n in config.neighbors if not is_v6(local[n.addr]))
    if not ours:
        raise ValueError("BGP over IPv6 alone needs bgp router-id A.B.C.D (a BGP "
                         "identifier is 32 bits)")
    return ours[0]


def config_text(config: BgpConfig, local: dict[int, int], relay: Path, commands: Path,
                events: Path) -> str:
    """ExaBGP's configuration: the relay as its API process, one block per neighbour,
    each carrying its own family's unicast routes (an IPv6 session IPv6's, next hop
    this director's IPv6 address on it). `local`: neighbour -> the local address that
    reaches it."""
    lines = ["process localdirector {", f"    run {relay} {commands} {events};",
             "    encoder text;", "}"]
    for n in config.neighbors:
        here = local[n.addr]
        identifier = router_id(config, local) if is_v6(here) else config.router_id or here
        lines += [
            f"neighbor {format_ip(n.addr)} {{",
            f"    router-id {format_ip(identifier)};",
            f"    local-address {format_ip(here)};",
            f"    local-as {config.asn};",
            f"    peer-as {n.remote_as};",
            f"    hold-time {n.hold};",
            f"    family {{\n        {family_of(n.addr).name} unicast;\n    }}",
            "    api {",
            "        processes [ localdirector ];",
            "        neighbor-changes;",
            "    }",
            "}",
        ]
    return "\n".join(lines) + "\n"


class Speaker:
    """ExaBGP over one configuration; `send` writes API lines, `on_event` hears its
    event lines (from a thread of its own)."""

    def __init__(self, program: str, directory: Path, text: str,
                 on_event: Callable[[str], None]) -> None:
        self.directory = directory
        self._on_event = on_event
        directory.mkdir(parents=True, exist_ok=True)
        self.conf = directory / "exabgp.conf"
        relay = directory / "relay.sh"
        relay.write_text(RELAY)
        relay.chmod(0o700)
        self.commands = directory / "commands"
        self.events = directory / "events"
        for fifo in (self.commands, self.events):
            if not fifo.exists():
                os.mkfifo(fifo, 0o600)
        self.conf.write_text(text)
        # O_RDWR: opening a FIFO this way never waits for the other end (Linux).
        self._out = os.open(self.commands, os.O_RDWR)
        self._in = os.open(self.events, os.O_RDWR)
        self.log = directory / "exabgp.log"
        env = {**os.environ, **ENVIRONMENT}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([program, str(self.conf)], env=env,
                                         stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=die_with_parent)
        self._stopped = False
        self._reader = threading.Thread(target=self._read, name="bgp-events", daemon=True)
        self._reader.start()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, line: str) -> None:
        os.write(self._out, (line + "\n").encode())

    def _read(self) -> None:
        buffered = b""
        while True:
            try:
                chunk = os.read(self._in, 4096)
            except OSError:
                return
            if not chunk or self._stopped:
                return
            buffered += chunk
            *lines, buffered = buffered.split(b"\n")
            for line in lines:
                self._on_event(line.decode(errors="replace"))

    def stop(self) -> None:
        """SIGTERM to its process group (ExaBGP and the relay); SIGKILL after a grace."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        self._stopped = True
        os.write(self._in, b"\n")   # wakes the reader, which sees it is over
        self._reader.join(1.0)
        for fd in (self._out, self._in):
            try:
                os.close(fd)
            except OSError:
                pass
