"""`--telnet`: the shell over telnet, for networks where nothing better exists.

Off unless asked for. A connection from outside the `telnet` access list is closed before
any byte is sent; an allowed one negotiates character mode and its terminal type, then
gets the `Password:` prompt (three tries) and the shell.

The option parser is our own rather than prompt_toolkit's: it bounds subnegotiations
(a peer cannot grow our memory with an endless `IAC SB`), answers options we do not
support with a refusal, and folds the CR NUL / CR LF of an Enter key into one Enter."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from prompt_toolkit.application.current import create_app_session
from prompt_toolkit.data_structures import Size
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output.vt100 import Vt100_Output

from ..shell.repl import open_front
from .login import Gate, Place, peer_label
from .terminal import Activity, feed_keys, login, serve_terminal

if TYPE_CHECKING:
    from ..appliance import Appliance

log = logging.getLogger("localdirector.access")

IAC, DONT, DO, WONT, WILL, SB, SE = 255, 254, 253, 252, 251, 250, 240
IP = 244                       # "interrupt process": the peer's Ctrl-C
ECHO, SGA, TTYPE, NAWS = 1, 3, 24, 31
IS, SEND = 0, 1
CR, LF, NUL = 13, 10, 0

MAX_SUBNEGOTIATION = 64
TTYPE_WAIT = 2.0               # seconds to learn the terminal type before assuming vt100
DEFAULT_TERM = "vt100"

# We echo and suppress go-ahead (character mode); the peer tells its size and type.
GREETING = bytes([IAC, WILL, ECHO, IAC, WILL, SGA, IAC, DO, SGA,
                  IAC, DO, NAWS, IAC, DO, TTYPE])
OUR_OPTIONS = {ECHO, SGA}
THEIR_OPTIONS = {SGA, NAWS, TTYPE}


class TelnetParser:
    """Splits the byte stream into keystrokes and telnet commands."""

    def __init__(self, on_keys: Callable[[bytes], None],
                 on_option: Callable[[int, int], None],
                 on_subnegotiation: Callable[[int, bytes], None]) -> None:
        self.on_keys = on_keys
        self.on_option = on_option
        self.on_subnegotiation = on_subnegotiation
        self._state = self._data
        self._command = 0
        self._sub = bytearray()
        self._keys = bytearray()

    def feed(self, data: bytes) -> None:
        for byte in data:
            self._state(byte)
        if self._keys:
            keys, self._keys = bytes(self._keys), bytearray()
            self.on_keys(keys)

    def _data(self, byte: int) -> None:
        if byte == IAC:
            self._state = self._iac
        else:
            self._keys.append(byte)
            if byte == CR:
                self._state = self._after_cr

    def _after_cr(self, byte: int) -> None:
        self._state = self._data
        if byte not in (NUL, LF):
            self._data(byte)

    def _iac(self, byte: int) -> None:
        self._state = self._data
        if byte == IAC:
            self._keys.append(IAC)
        elif byte in (DO, DONT, WILL, WONT):
            self._command = byte
            self._state = self._option
        elif byte == SB:
            self._sub.clear()
            self._state = self._subnegotiation
        elif byte == IP:
            self._keys.append(3)

    def _option(self, byte: int) -> None:
        self._state = self._data
        self.on_option(self._command, byte)

    def _subnegotiation(self, byte: int) -> None:
        if byte == IAC:
            self._state = self._sub_iac
        elif len(self._sub) < MAX_SUBNEGOTIATION:
            self._sub.append(byte)

    def _sub_iac(self, byte: int) -> None:
        if byte == IAC:
            self._state = self._subnegotiation
            self._subnegotiation(IAC)
            return
        self._state = self._data
        if byte == SE and self._sub:
            self.on_subnegotiation(self._sub[0], bytes(self._sub[1:]))


class _Stdout:
    """What Vt100_Output writes to: the connection, with telnet's CR LF line ends."""

    encoding = "utf-8"

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    def write(self, text: str) -> None:
        if not self.transport.is_closing():
            self.transport.write(text.replace("\n", "\r\n").encode("utf-8", "replace"))

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True


class _TelnetConnection(asyncio.Protocol):
    """One telnet peer: admission, option negotiation, then login and shell."""

    def __init__(self, door: "TelnetDoor") -> None:
        self.door = door
        self.transport: asyncio.Transport | None = None
        self.place: Place | None = None
        self.source = ""
        self.label = ""
        self.term = DEFAULT_TERM
        self.size = Size(rows=24, columns=80)
        self.typed = asyncio.Event()
        self.activity = Activity()
        self.parser = TelnetParser(self._keys, self._option, self._subnegotiation)
        self.task: asyncio.Task[None] | None = None
        self._pipes = contextlib.ExitStack()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        host, port = transport.get_extra_info("peername")[:2]
        self.place = self.door.gate.admit(self.door.appliance.director, host)
        if self.place is None:
            transport.abort()
            return
        self.transport = transport
        self.source, self.label = host, peer_label(host, port)
        self.input = self._pipes.enter_context(create_pipe_input())
        transport.write(GREETING)
        self.task = asyncio.get_running_loop().create_task(self._run())
        self.door.tasks.add(self.task)
        self.task.add_done_callback(self.door.tasks.discard)

    def data_received(self, data: bytes) -> None:
        if self.transport is not None:
            self.parser.feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.place is not None:
            self.place.release()
        if self.task is not None:
            self.task.cancel()

    # -- telnet options -----------------------------------------------------------------
    def _send(self, *codes: int) -> None:
        assert self.transport is not None
        self.transport.write(bytes(codes))

    def _option(self, command: int, option: int) -> None:
        if command == WILL and option == TTYPE:
            self._send(IAC, SB, TTYPE, SEND, IAC, SE)
        elif command == WONT and option == TTYPE:
            self.typed.set()
        elif command == DO and option not in OUR_OPTIONS:
            self._send(IAC, WONT, option)
        elif command == WILL and option not in THEIR_OPTIONS:
            self._send(IAC, DONT, option)

    def _subnegotiation(self, option: int, data: bytes) -> None:
        if option == NAWS and len(data) == 4:
            columns, rows = int.from_bytes(data[:2], "big"), int.from_bytes(data[2:], "big")
            if columns and rows:
                self.size = Size(rows=rows, columns=columns)
        elif option == TTYPE and data[:1] == bytes([IS]) and not self.typed.is_set():
            name = data[1:].decode("ascii", "replace").lower()
            if name and name.isprintable():
                self.term = name
            self.typed.set()

    def _keys(self, data: bytes) -> None:
        self.activity.touch()
        feed_keys(self.input, data)

    # -- the session --------------------------------------------------------------------
    async def _run(self) -> None:
        assert self.transport is not None
        appliance = self.door.appliance
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.typed.wait(), TTYPE_WAIT)
            output = Vt100_Output(_Stdout(self.transport), lambda: self.size,
                                  term=self.term, enable_cpr=False)
            with create_app_session(input=self.input, output=output), \
                 await open_front() as front:
                if await login(appliance, "telnet", self.label, self.source, front):
                    assert self.place is not None
                    self.place.logged_in()
                    await serve_terminal(appliance, "telnet", self.label, self.source,
                                         self.activity, front)
        finally:
            self._pipes.close()
            self.transport.close()


class TelnetDoor:
    """The listening telnet server."""

    def __init__(self, appliance: "Appliance", host: str, port: int) -> None:
        self.appliance = appliance
        self.host = host
        self.port = port
        self.tasks: set[asyncio.Task[None]] = set()
        self.gate = Gate("telnet")
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _TelnetConnection(self),
                                                self.host or None, self.port,
                                                reuse_address=True)
        log.info("telnet listening on %s port %d", self.host or "*", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self.tasks):
            task.cancel()
