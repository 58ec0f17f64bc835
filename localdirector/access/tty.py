"""`--tty DEVICE`: the shell on a serial line (or any terminal device), like a console port.

The line waits at "Press RETURN to get started", asks for the login `password` when one
is set (someone at the console port has physical access; with no password configured
the console is open, as on a fresh router), and after logout, `kill` or the idle timeout
goes back to waiting. The device is opened without becoming our controlling terminal,
so nothing typed on it can signal the appliance; if it goes away (a USB adapter pulled,
the far end of a pseudo-terminal closed) it is reopened."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import termios
from collections.abc import Iterator
from typing import TYPE_CHECKING, TextIO

from prompt_toolkit.application.current import create_app_session
from prompt_toolkit.input.vt100 import Vt100Input
from prompt_toolkit.key_binding import KeyPress
from prompt_toolkit.output.vt100 import Vt100_Output

from .login import password_set
from ..shell.repl import open_front, plain_front
from .terminal import Activity, login, serve_terminal

if TYPE_CHECKING:
    from ..appliance import Appliance

log = logging.getLogger("localdirector.access")

TERM = "vt100"
REOPEN_DELAY = 2.0   # seconds between attempts to reopen a line that went away


@contextlib.contextmanager
def open_line(device: str) -> Iterator[tuple[TextIO, TextIO]]:
    """The device as prompt_toolkit's stdin/stdout, set up as a console line.

    Input is raw (prompt_toolkit echoes and edits; no signals, no flow-control bytes
    swallowed); output keeps NL -> CR NL so printed text starts at the left margin.
    The line's previous settings are restored on the way out."""
    fd = os.open(device, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        os.set_blocking(fd, True)   # O_NONBLOCK only so open() does not wait for carrier
        saved = termios.tcgetattr(fd)
        attrs = termios.tcgetattr(fd)
        attrs[0] &= ~(termios.IXON | termios.IXOFF | termios.INLCR | termios.IGNCR
                      | termios.ISTRIP)
        attrs[1] |= termios.OPOST | termios.ONLCR
        attrs[2] = (attrs[2] | termios.CLOCAL | termios.CREAD) & ~termios.CRTSCTS
        attrs[3] &= ~(termios.ECHO | termios.ICANON | termios.ISIG | termios.IEXTEN)
        attrs[6][termios.VMIN] = 1
        attrs[6][termios.VTIME] = 0
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        try:
            with open(fd, "r", encoding="utf-8", errors="replace", closefd=False) as reader, \
                 open(fd, "w", encoding="utf-8", errors="replace", closefd=False) as writer:
                yield reader, writer
        finally:
            with contextlib.suppress(termios.error):
                termios.tcsetattr(fd, termios.TCSANOW, saved)
    finally:
        os.close(fd)


class _Keyboard(Vt100Input):
    """The line's input, noting each keystroke for the idle timeout and `who`."""

    def __init__(self, stdin: TextIO, activity: Activity) -> None:
        super().__init__(stdin)
        self.activity = activity

    def read_keys(self) -> list[KeyPress]:
        keys = super().read_keys()
        if keys:
            self.activity.touch()
        return keys


class TtyConsole:
    """One device, served for as long as the appliance runs."""

    def __init__(self, appliance: "Appliance", device: str) -> None:
        self.appliance = appliance
        self.device = device
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        with open_line(self.device):   # a wrong device is a start-up error, not a retry loop
            pass
        self._task = asyncio.get_running_loop().create_task(self._serve_forever())
        log.info("console on %s", self.device)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _serve_forever(self) -> None:
        failure = ""
        while True:
            try:
                with open_line(self.device) as (reader, writer):
                    failure = ""
                    await self._serve_line(reader, writer)
            except (OSError, EOFError) as err:
                if str(err) != failure:   # log a dead line once, not every retry
                    failure = str(err)
                    log.warning("console %s: %s", self.device, failure or "hung up")
            await asyncio.sleep(REOPEN_DELAY)

    async def _serve_line(self, reader: TextIO, writer: TextIO) -> None:
        """Sessions one after another until the line hangs up (EOFError)."""
        activity = Activity()
        output = Vt100_Output.from_pty(writer, term=TERM)
        # A cursor-position request is noise on a dumb serial terminal that never answers.
        output.enable_cpr = False
        with create_app_session(input=_Keyboard(reader, activity), output=output):
            while True:
                hostname = self.appliance.director.settings.hostname
                # Nobody may be at the line yet: the terminal is probed once someone is.
                with plain_front() as waiting:
                    waiting.write(f"\n{hostname} console {self.device}\n\n"
                                  "Press RETURN to get started.\n")
                    await waiting.read_line("")
                with await open_front() as front:
                    if password_set(self.appliance.director):
                        if not await login(self.appliance, "tty", self.device, self.device,
                                           front):
                            continue
                    await serve_terminal(self.appliance, "tty", self.device, self.device,
                                         activity, front)
