"""The operator-access service: SSH, telnet and serial consoles on one event loop.

All doors share one asyncio loop in one background thread: sessions are I/O bound and
the model has its own lock, so one thread serves any number of operators while the data
plane keeps its threads to itself. `localdirector.cli` lists this service in SERVICES."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import threading
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from ..listeners import listen_address
from ..services import ServiceError

if TYPE_CHECKING:
    from ..appliance import Appliance

AUTHORIZED_KEYS_NAME = "authorized_keys"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0


class Door(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("operator access")
    group.add_argument("--ssh", type=listen_address, metavar="[ADDR:]PORT",
                       help="serve the shell over SSH (login: `password` or a key)")
    group.add_argument("--telnet", type=listen_address, metavar="[ADDR:]PORT",
                       help="serve the shell over telnet (off unless given)")
    group.add_argument("--tty", action="append", default=[], metavar="DEVICE",
                       help="serve the shell on a serial line or other tty (repeatable)")
    group.add_argument("--host-key", metavar="PATH",
                       help="SSH host key, created if missing (default: "
                            "ssh_host_ed25519_key beside the startup-config)")
    group.add_argument("--authorized-keys", metavar="PATH",
                       help="public keys allowed to log in by SSH, re-read at each login "
                            f"(default: {AUTHORIZED_KEYS_NAME} beside the startup-config)")


def _doors(appliance: "Appliance", args: argparse.Namespace) -> list[Door]:
    doors: list[Door] = []
    config_dir = os.path.dirname(os.path.abspath(appliance.config_path))
    if args.ssh is not None:
        from .hostkey import default_host_key_path
        from .ssh import SSHDoor
        doors.append(SSHDoor(
            appliance, *args.ssh,
            host_key_path=args.host_key or default_host_key_path(str(appliance.config_path)),
            authorized_keys_path=(args.authorized_keys
                                  or os.path.join(config_dir, AUTHORIZED_KEYS_NAME))))
    if args.telnet is not None:
        from .telnet import TelnetDoor
        doors.append(TelnetDoor(appliance, *args.telnet))
    if args.tty:
        from .tty import TtyConsole
        doors.extend(TtyConsole(appliance, device) for device in args.tty)
    return doors


class AccessService:
    """The loop thread and the doors it serves; `stop()` closes them all."""

    def __init__(self, doors: list[Door]) -> None:
        self.doors = doors
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever,
                                       name="operator-access", daemon=True)
        self._started: list[Door] = []

    def _call(self, coro: Coroutine[Any, Any, None], timeout: float) -> None:
        asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> None:
        self.thread.start()
        try:
            self._call(self._start_doors(), START_TIMEOUT)
        except BaseException:
            self.stop()
            raise

    async def _start_doors(self) -> None:
        for door in self.doors:
            await door.start()
            self._started.append(door)

    async def _stop_doors(self) -> None:
        for door in reversed(self._started):
            with contextlib.suppress(Exception):
                await door.stop()
        # Sessions still open end now, each running its own clean-up.
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        if others:
            await asyncio.wait(others, timeout=STOP_TIMEOUT)

    def stop(self) -> None:
        if self.thread.is_alive():
            with contextlib.suppress(Exception):
                self._call(self._stop_doors(), STOP_TIMEOUT * 2)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(STOP_TIMEOUT)


def start(appliance: "Appliance", args: argparse.Namespace) -> AccessService | None:
    """SERVICES entry: None when no door was asked for."""
    doors = _doors(appliance, args)
    if not doors:
        return None
    service = AccessService(doors)
    try:
        service.start()
    except Exception as err:
        raise ServiceError(f"operator access: {err}") from err
    return service
