"""`--ssh`: the appliance's shell over SSH, for people (a PTY) and for scripts (exec).

The server offers a shell and nothing else: no port forwarding, agent or X11 forwarding,
SFTP or SCP, so a login cannot reach the host behind the appliance. Authentication is the
configured `password` (any user name, as on a LocalDirector, whose logins have no users),
a `username NAME privilege 15 password ...` with its own password, whose sessions start
privileged (IOS), or a key listed in the authorized-keys file (never privileged);
otherwise `enable` asks for the enable password.

    ssh -p 2222 admin@appliance                    interactive shell
    ssh -p 2222 admin@appliance "show version"     one command; exit status 0 / 1
    ssh -p 2222 admin@appliance < script           each line in turn, as typed
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import TYPE_CHECKING, Any

from ..shell.scripted import run_script
from ..shell.registry import Mode
from ..shell.session import Session
from .hostkey import load_or_create_host_key
from .login import (FAIL_DELAY, LOGIN_TIMEOUT, MAX_TRIES, Gate, Place, login_level,
                    note_failure, password_set, peer_label, throttled, users_set)
from .sshlib import PromptToolkitSSHSession, asyncssh
from .terminal import Activity, feed_keys, serve_terminal, supervise

if TYPE_CHECKING:
    from ..appliance import Appliance

log = logging.getLogger("localdirector.access")

# The version string every client sees before authenticating: the product, not the
# library and its release, which would tell an attacker which advisories to try.
SERVER_VERSION = "LocalDirector"
# A script read from standard input is held whole before it runs; past this it is refused.
MAX_SCRIPT_BYTES = 1 << 20
# Sessions (channels) open at once on one connection: each interactive one costs about a
# megabyte, so an unbounded number would let one login exhaust memory.
MAX_CHANNELS = 4
CLOSE_WAIT = 0.5   # seconds for a killed session's last words before its connection goes
# Keystrokes held for a terminal whose input pipe does not exist yet (type-ahead sent with
# the shell request); as much as the pipe itself holds, past it they are dropped.
MAX_TYPE_AHEAD = 1 << 16


class SSHDoor:
    """The listening SSH server and what all its connections share."""

    def __init__(self, appliance: "Appliance", host: str, port: int,
                 host_key_path: str, authorized_keys_path: str | None) -> None:
        self.appliance = appliance
        self.host = host
        self.port = port
        self.host_key_path = host_key_path
        self.authorized_keys_path = authorized_keys_path
        self.gate = Gate("ssh")
        self._server: asyncssh.SSHAcceptor | None = None

    async def start(self) -> None:
        key = load_or_create_host_key(self.host_key_path)
        self._server = await asyncssh.create_server(
            lambda: _Connection(self), self.host, self.port,
            server_host_keys=[key], server_version=SERVER_VERSION,
            login_timeout=LOGIN_TIMEOUT, encoding="utf-8", line_editor=False,
            agent_forwarding=False, x11_forwarding=False, allow_scp=False,
            sftp_factory=None, reuse_address=True)
        log.info("SSH listening on %s port %d (host key %s)", self.host or "*", self.port,
                 key.get_fingerprint())

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def authorized_keys(self) -> asyncssh.SSHAuthorizedKeys | None:
        """Read at every login, so adding or revoking a key needs no restart."""
        path = self.authorized_keys_path
        if not path or not os.path.exists(path):
            return None
        try:
            return asyncssh.read_authorized_keys(path)
        except (OSError, ValueError) as err:
            log.warning("authorized keys %s unusable: %s", path, err)
            return None


class _Connection(asyncssh.SSHServer):
    """One client connection: the access list, the login with three password tries, then
    at most MAX_CHANNELS sessions; `kill` or the idle timeout of one ends them all.

    A logged-in connection with no channel open is still a way in: `who` lists it as a
    placeholder session, and `kill` of that closes the connection."""

    def __init__(self, door: SSHDoor) -> None:
        self.door = door
        self.conn: asyncssh.SSHServerConnection | None = None
        self.peer = ""
        self.label = ""
        self.tries = 0
        self.username = ""
        # Set only by a `username` whose own password matched at privilege 15.
        self.privileged = False
        self.place: Place | None = None
        self.channels: set["_Session"] = set()
        self.placeholder: Session | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        host, port = conn.get_extra_info("peername")[:2]
        self.peer, self.label = host, peer_label(host, port)
        self.place = self.door.gate.admit(self.door.appliance.director, host)
        if self.place is None:
            # Before our version string goes out: a refused peer learns nothing.
            conn.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.place is not None:
            self.place.release()
        self._unlist()

    def listed(self) -> None:
        """No channel open (logged in, or the last one closed): in `who` as a placeholder."""
        if self.placeholder is not None or self.channels or self.conn is None:
            return
        loop = asyncio.get_running_loop()
        placeholder = self.door.appliance.open_session("ssh", self.label, interactive=False)
        placeholder.source = self.peer
        placeholder.on_close = lambda: loop.call_soon_threadsafe(self._placeholder_closed,
                                                                 placeholder)
        self.placeholder = placeholder

    def _unlist(self) -> None:
        """A channel opened, or the connection went: the placeholder leaves `who`."""
        placeholder, self.placeholder = self.placeholder, None
        if placeholder is not None:
            placeholder.on_close = None
            placeholder.close()

    def _placeholder_closed(self, placeholder: Session) -> None:
        """Only `kill` closes a placeholder that is still listed: end the connection."""
        if placeholder is self.placeholder:
            self.placeholder = None
            self.close()

    def close(self) -> None:
        """The whole connection, not one channel: a killed or timed-out operator must
        log in again, not open another channel on the same authentication."""
        if self.conn is not None:
            self.conn.close()

    def begin_auth(self, username: str) -> bool:
        self.username = username
        keys = self.door.authorized_keys()
        if keys is not None and self.conn is not None:
            self.conn.set_authorized_keys(keys)
        return True

    def password_auth_supported(self) -> bool:
        director = self.door.appliance.director
        return password_set(director) or users_set(director)

    def _disconnect(self) -> None:
        if self.conn is not None:
            # Scheduled, so the failure reply goes out first and the client can report it.
            asyncio.get_running_loop().call_soon(
                self.conn.disconnect, asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE,
                "Too many authentication failures")

    async def validate_password(self, username: str, password: str) -> bool:
        # Counted before the first await: asyncssh cancels a check still running when the
        # client sends its next request, so a count taken after the check (or after the
        # delay) is never reached by a client that pipelines its guesses.
        self.tries += 1
        tries = self.tries
        if tries > MAX_TRIES:
            self._disconnect()
            return False
        if throttled("ssh", self.label, self.peer):
            self.tries = MAX_TRIES
            await asyncio.sleep(FAIL_DELAY)
            self._disconnect()
            return False
        level = await asyncio.to_thread(login_level, self.door.appliance.director,
                                        username, password)
        if level is not None:
            self.privileged = level == 15
            return True
        note_failure("ssh", self.peer, self.peer, tries)
        await asyncio.sleep(FAIL_DELAY)
        if tries >= MAX_TRIES:
            self._disconnect()
        return False

    def auth_completed(self) -> None:
        if self.place is not None:
            self.place.logged_in()
        log.info("ssh login from %s (user %s)", self.label, self.username)
        self.listed()

    def session_requested(self) -> asyncssh.SSHServerSession | bool:
        if len(self.channels) >= MAX_CHANNELS:
            log.warning("ssh session from %s refused: %d already open on its connection",
                        self.label, MAX_CHANNELS)
            return False
        self._unlist()
        return _Session(self)


class _Session(PromptToolkitSSHSession):
    """A PTY gets the interactive shell; an exec request or a PTY-less shell is a script."""

    def __init__(self, connection: _Connection) -> None:
        super().__init__(self._interactive, enable_cpr=False)
        self.connection = connection
        self.appliance = connection.door.appliance
        self.peer = connection.label
        connection.channels.add(self)
        self.activity = Activity()
        self.command: str | None = None
        self.scripted = False
        self.stdin: list[str] = []
        self.stdin_size = 0
        self.stdin_done = asyncio.Event()
        self.typed_ahead = bytearray()
        self.task: asyncio.Task[None] | None = None

    def exec_requested(self, command: str) -> bool:
        self.command = command
        return True

    def session_started(self) -> None:
        assert self._chan is not None
        if self.command is None and self._chan.get_terminal_type() is not None:
            super().session_started()
            self.task = self.interact_task
        else:
            self.scripted = True
            self.task = asyncio.get_running_loop().create_task(self._script())

    async def _interactive(self, _ssh_session: Any) -> None:
        # The pipe exists from here on: what the client sent before it goes in first.
        if self._input is not None and self.typed_ahead:
            feed_keys(self._input, bytes(self.typed_ahead))
        self.typed_ahead.clear()
        ended = await serve_terminal(self.appliance, "ssh", self.peer, self.connection.peer,
                                     self.activity, privileged=self.connection.privileged)
        # A shell left with `exit` is a clean end: say so, or OpenSSH reports 255.
        if self._chan is not None:
            with contextlib.suppress(OSError):
                self._chan.exit(1 if ended else 0)
        if ended:   # once the channel's last words ("% Session closed by ...") went out
            asyncio.get_running_loop().call_later(CLOSE_WAIT, self.connection.close)

    def data_received(self, data: str, datatype: object) -> None:
        self.activity.touch()
        if not self.scripted:
            # A script piped into `ssh -tt` arrives with the shell request, before the
            # prompt's input pipe exists: held, not dropped, so it runs in order (IOS
            # type-ahead).
            if self._input is not None:
                feed_keys(self._input, data.encode("utf-8"))
            elif len(self.typed_ahead) < MAX_TYPE_AHEAD:
                room = MAX_TYPE_AHEAD - len(self.typed_ahead)
                self.typed_ahead += data.encode("utf-8")[:room]
        elif self.command is None and not self.stdin_done.is_set():
            self.stdin_size += len(data)
            self.stdin.append(data)
            if self.stdin_size > MAX_SCRIPT_BYTES:
                self.stdin_done.set()

    def eof_received(self) -> bool:
        self.stdin_done.set()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        # The client hung up: end its shell so it leaves `who` now, not at the timeout.
        self.connection.channels.discard(self)
        if self.task is not None:
            self.task.cancel()
        self.connection.listed()

    async def _script(self) -> None:
        assert self._chan is not None
        chan = self._chan
        # `ssh -t host command`: the client's terminal is raw, so lines need their CR.
        pty = chan.get_terminal_type() is not None
        session = self.appliance.open_session(
            "ssh", self.peer, interactive=False,
            write=(lambda text: chan.write(text.replace("\n", "\r\n"))) if pty else chan.write)
        session.source = self.connection.peer
        if self.connection.privileged:
            session.mode = Mode.PRIV
        self.activity.session = session
        status = 1
        try:
            if self.command is not None:
                lines = [self.command]
            else:
                reading = asyncio.ensure_future(self.stdin_done.wait())
                if await supervise(self.appliance, session, reading) or session.closed:
                    self.connection.close()
                    return
                if self.stdin_size > MAX_SCRIPT_BYTES:
                    chan.write_stderr(f"% Script longer than {MAX_SCRIPT_BYTES} bytes\n")
                    return
                lines = "".join(self.stdin).splitlines()
            status = 0 if run_script(session, lines) else 1
        finally:
            session.close()
            self.activity.session = None
            with contextlib.suppress(OSError):   # the client may be gone already
                chan.exit(status)
