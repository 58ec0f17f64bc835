"""One operator at one terminal, whatever carries the bytes: login, shell, idle timeout.

SSH, telnet and the serial line each build a prompt_toolkit input/output pair and then
call `serve_terminal` inside `create_app_session(input, output)`; from there on every
door behaves the same, which is what makes the shared policy in `login` trustworthy.
Whatever a terminal is told or asked goes through its front end (shell/repl.py
`open_front`): the line editor, or for automation the plain line discipline."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import TYPE_CHECKING, cast

from prompt_toolkit.input import PipeInput
from prompt_toolkit.input.posix_pipe import PosixPipeInput

from ..shell.registry import Mode
from ..shell.repl import Front, open_front, run_shell_async
from ..shell.session import Session
from .login import LOGIN_TIMEOUT, password_login

if TYPE_CHECKING:
    from ..appliance import Appliance

log = logging.getLogger("localdirector.access")

# How often a session's idle time and `kill` are checked: timeouts are in minutes, so a
# second of slack is invisible, and one timer per session costs nothing.
WATCH_INTERVAL = 1.0


class Activity:
    """Keystrokes seen by a transport. Typing counts as activity even before Enter, so an
    operator composing a long line is not timed out; `who` shows the same idle time."""

    def __init__(self) -> None:
        self.session: Session | None = None

    def touch(self) -> None:
        if self.session is not None:
            self.session.last_activity = time.time()


def feed_keys(pipe: PipeInput, data: bytes) -> None:
    """Hand a peer's keystrokes to its prompt without ever blocking the event loop.

    The pipe holds 64 KiB; a peer that floods it while no prompt reads (a paste during a
    command, bytes before the login prompt) loses the excess instead of freezing every
    other session on the loop."""
    fd = cast(PosixPipeInput, pipe).pipe.write_fd
    with contextlib.suppress(OSError):   # full (BlockingIOError), or already closed
        os.set_blocking(fd, False)
        os.write(fd, data)


async def login(appliance: "Appliance", kind: str, peer: str, source: str,
                front: Front) -> bool:
    """The `Password:` exchange of telnet and the serial line, bounded in time."""
    def say(line: str) -> None:
        front.write(line + "\n")

    async def ask_password() -> str:
        return await front.read_answer("Password: ")

    try:
        return await asyncio.wait_for(
            password_login(appliance.director, kind, peer, source, ask_password, say),
            LOGIN_TIMEOUT)
    except TimeoutError:
        say("% Login timed out")
        log.warning("%s login from %s timed out", kind, peer)
        return False


async def supervise(appliance: "Appliance", session: Session, work: asyncio.Future) -> bool:
    """Wait for `work` (the session's shell or script); end it on `kill` or idle timeout.

    Returns True when it was ended for being idle. `kill` closes the session from any
    thread; polling for that here also covers prompts other than the shell's own."""
    while not work.done():
        await asyncio.wait({work}, timeout=WATCH_INTERVAL)
        if work.done():
            break
        limit = appliance.director.settings.idle_seconds
        if session.closed:
            work.cancel()
        elif limit and time.time() - session.last_activity >= limit:
            log.info("%s session %d from %s closed after idle timeout",
                     session.kind, session.id, session.peer)
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError, EOFError):
                await work
            return True
    with contextlib.suppress(asyncio.CancelledError, EOFError):
        await work
    return False


async def serve_terminal(appliance: "Appliance", kind: str, peer: str, source: str,
                         activity: Activity, front: Front | None = None,
                         privileged: bool = False) -> bool:
    """A full shell until `exit`, hang-up, `kill` or the idle timeout; True for the last
    two, when the transport must drop the whole connection, not just this shell.
    Without a `front` (no login asked first), the terminal is probed for one here.
    `privileged`: the login was a privilege-15 user's, so the shell starts at `#`."""
    if front is None:
        with await open_front() as front:
            return await serve_terminal(appliance, kind, peer, source, activity, front,
                                        privileged)
    session = appliance.open_session(kind, peer)
    session.source = source
    if privileged:
        session.mode = Mode.PRIV
    activity.session = session
    shell = asyncio.ensure_future(run_shell_async(session, front))
    try:
        timed_out = await supervise(appliance, session, shell)
    finally:
        shell.cancel()
        session.close()
        activity.session = None
    if timed_out:
        front.write("\n% Session timed out\n")
    elif session.killed_by is not None:
        front.write(f"\n% Session closed by session {session.killed_by}\n")
    return timed_out or session.killed_by is not None
