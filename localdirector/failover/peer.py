"""The appliance's own stream between the two units over the failover link: status
hellos, the configuration, step-down requests (docs/design.rst, "Failover").

Each unit listens on its failover-link address and keeps one connection to the other's,
reconnecting while it is away; messages are JSON lines. What a unit must resend whole
when the other comes back (the configuration) it sends from `on_connect`."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("localdirector.failover")

PORT = 7405
RETRY = 0.2      # seconds between connection attempts


class Peer:
    def __init__(self, own: str, peer: str, receive: Callable[[dict[str, Any]], None],
                 on_connect: Callable[[], None]) -> None:
        self.own, self.peer = own, peer
        self.receive = receive
        self.on_connect = on_connect
        self._out: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._stopping = threading.Event()
        self._listener = socket.create_server((own, PORT), reuse_port=False)
        self._listener.settimeout(0.5)
        self._threads = [threading.Thread(target=self._accept, name="failover-in",
                                          daemon=True),
                         threading.Thread(target=self._connect, name="failover-out",
                                          daemon=True)]

    @property
    def connected(self) -> bool:
        return self._out is not None

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def send(self, message: dict[str, Any]) -> bool:
        """Queue-free: written now or lost (the next status or resend covers it)."""
        data = (json.dumps(message, separators=(",", ":")) + "\n").encode()
        with self._send_lock:
            out = self._out
            if out is None:
                return False
            try:
                out.sendall(data)
                return True
            except OSError:
                self._drop_out()
                return False

    def _drop_out(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

    def _connect(self) -> None:
        while not self._stopping.is_set():
            if self._out is None:
                try:
                    sock = socket.create_connection((self.peer, PORT), timeout=1.0,
                                                    source_address=(self.own, 0))
                    sock.settimeout(5.0)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    self._stopping.wait(RETRY)
                    continue
                with self._send_lock:
                    self._out = sock
                log.info("failover: connected to the other unit at %s", self.peer)
                self.on_connect()
            self._stopping.wait(RETRY)

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._read, args=(conn,), name="failover-read",
                             daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        conn.settimeout(None)
        with conn, conn.makefile("rb") as stream:
            for line in stream:
                if self._stopping.is_set():
                    return
                try:
                    message = json.loads(line)
                except ValueError:
                    log.error("failover: garbled message from the other unit")
                    return
                try:
                    self.receive(message)
                except Exception:  # one bad message must not end the stream; say why
                    log.exception("failover: cannot apply a message from the other unit")

    def stop(self) -> None:
        self._stopping.set()
        self._listener.close()
        with self._send_lock:
            self._drop_out()
