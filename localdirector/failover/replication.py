"""Replication of the engine's connections over the failover link (docs/design.rst,
"Failover"): the userspace connections only the engine knows (the fast path's are
conntrack's, which conntrackd carries).

On the active unit the engine's observer notes each connection that opened, was
answered, moved or closed, at the cost of a dict store under the lock it already
holds; every poll interval (sooner when a batch fills) the noted connections are
encoded as they are then and sent in the appliance's stream. Whole, in chunks, when the
other unit (re)connects or this one becomes active, and again every third of the
shortest idle timeout so the standby's copies of idle-but-alive connections do not time
out there. The standby installs each with `Engine.import_conn` (no packet of it passes
the standby: the drop guard is up), so its engine carries them on at the takeover.
Times travel as ages, so the two units' clocks need not agree."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from localdirector.dataplane.engine import CLOSED_EVENT
from localdirector.model.connection import (
    CLOSED,
    ESTABLISHED,
    FASTPATH,
    FIN_WAIT,
    SYN_RCVD,
    SYN_SENT,
    Connection,
)
from localdirector.model.director import Director
from localdirector.model.predictors import remember_sticky
from localdirector.model.serverid import ServerId

if TYPE_CHECKING:
    from localdirector.dataplane.plane import DataPlane

log = logging.getLogger("localdirector.failover")

BATCH = 512          # noted connections that make the sender go before the poll
CHUNK = 2000         # connections per message of a whole resend (one lock hold each)
REFRESH_RANGE = (5.0, 300.0)   # seconds between whole resends, clamped
# The model's own state strings: the engine compares them by identity.
_STATES = {state: state for state in (SYN_SENT, SYN_RCVD, ESTABLISHED, FIN_WAIT, CLOSED,
                                      FASTPATH)}


def encode(conn: Connection, now: float) -> list[Any]:
    """One connection as a JSON list: client tuple, instance, real, translation, TCP
    state and sequence marks, ages."""
    v, r = conn.virtual.sid, conn.real.sid
    return [conn.in_key, v.addr, v.port, v.bind, v.proto, r.addr, r.port, r.bind, r.proto,
            conn.virtual_port, conn.remap, conn.tcp_state, conn.answered, conn.bits,
            conn.ack_in, conn.ack_out, conn.syn_resends,
            round(now - conn.last_seen, 3), round(now - conn.created, 3)]


def decode(record: list[Any], director: Director, now: float) -> Connection | None:
    """The connection a record describes, on this model's objects; None when its
    instance or real does not exist here (yet)."""
    (in_key, vaddr, vport, vbind, vproto, raddr, rport, rbind, rproto, virtual_port,
     remap, state, answered, bits, ack_in, ack_out, syn_resends, seen, created) = record
    virtual = director.virtuals.get(ServerId(vaddr, vport, vbind, vproto))
    real = director.reals.get(ServerId(raddr, rport, rbind, rproto))
    if virtual is None or real is None:
        return None
    conn = Connection(in_key >> 64, (in_key >> 48) & 0xFFFF, virtual.addr,
                      virtual.port or virtual_port, virtual, real, now - created)
    conn.remap = remap
    conn.tcp_state = _STATES[state]
    conn.answered = answered
    conn.bits = bits
    conn.ack_in, conn.ack_out = ack_in, ack_out
    conn.syn_resends = syn_resends
    conn.last_seen = now - seen
    return conn


def encode_sticky(director: Director, now: float) -> list[list[Any]]:
    """Every sticky entry, oldest first per virtual (the order expiry relies on)."""
    entries = []
    for virtual in director.virtuals.values():
        v = virtual.sid
        for client, (real, last) in virtual.sticky_table.items():
            r = real.sid
            entries.append([v.addr, v.port, v.bind, v.proto, client,
                            r.addr, r.port, r.bind, r.proto, round(now - last, 3)])
    return entries


def apply_sticky(entries: Iterable[list[Any]], director: Director, now: float) -> None:
    for vaddr, vport, vbind, vproto, client, raddr, rport, rbind, rproto, age in entries:
        virtual = director.virtuals.get(ServerId(vaddr, vport, vbind, vproto))
        real = director.reals.get(ServerId(raddr, rport, rbind, rproto))
        if virtual is not None and real is not None and virtual.sticky:
            remember_sticky(virtual, client, real, now - age)


class Replicator:
    """Both ends of the connection stream of one unit. `send` writes a message to the
    other unit (False when it is not connected); `director` gives the model in use
    now (another after each `reload` or configuration from the active)."""

    def __init__(self, plane: "DataPlane", director: Callable[[], Director],
                 send: Callable[[dict[str, Any]], bool],
                 poll: Callable[[], float]) -> None:
        self.plane = plane
        self.director = director
        self.send = send
        self.poll = poll
        self.sending = False          # this unit is active and `replicate` is on
        self.sent = 0                 # connection records sent to the other unit
        self.applied = 0              # connections installed from the other unit
        self._noted: dict[int, Connection] = {}
        self._closed: set[int] = set()
        self._whole = threading.Event()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._next_refresh = 0.0
        self._thread = threading.Thread(target=self._run, name="failover-conns",
                                        daemon=True)

    def start(self) -> None:
        self.plane.observe(self._note)
        self._thread.start()

    def stop(self) -> None:
        self.plane.observe(None)
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(5.0)

    def set_sending(self, sending: bool) -> None:
        if sending != self.sending:
            self.sending = sending
            if sending:
                self.resend()

    def resend(self) -> None:
        """Send every connection again, from scratch, at the next turn."""
        self._whole.set()
        self._wake.set()

    # -- the active's side ---------------------------------------------------------------
    def _note(self, event: str, conn: Connection) -> None:
        """The engine's observer, under its lock: never more than a dict store."""
        if not self.sending or conn.fastpath:
            return
        key = conn.in_key
        if event is CLOSED_EVENT:
            self._noted.pop(key, None)
            self._closed.add(key)
        else:
            self._noted[key] = conn
        if len(self._noted) >= BATCH:
            self._wake.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.poll())
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                self._turn()
            except Exception:  # a bad turn must not end replication; say why
                log.exception("failover: cannot send connections to the other unit")

    def _turn(self) -> None:
        if not self.sending:
            return
        plane = self.plane
        if self._whole.is_set() or plane.clock() >= self._next_refresh:
            self._whole.clear()
            self._send_whole(reset=True)
            return
        director = self.director()
        with director.lock:
            noted, self._noted = self._noted, {}
            closed, self._closed = self._closed, set()
            now = plane.clock()
            up = [encode(conn, now) for conn in noted.values()
                  if director.conns.inbound.get(conn.in_key) is conn]
        if up or closed:
            if self.send({"t": "conns", "up": up, "down": list(closed)}):
                self.sent += len(up)
            else:
                self._whole.set()   # lost: the other unit gets everything when it is back

    def _send_whole(self, reset: bool) -> None:
        """Everything, in chunks of one lock hold each; what changes meanwhile is
        noted and goes in the next turns."""
        director = self.director()
        with director.lock:
            self._noted.clear()
            self._closed.clear()
            now = self.plane.clock()
            conns = [c for c in director.conns.inbound.values() if not c.fastpath]
            sticky = encode_sticky(director, now)
            timeouts = [v.timeout for v in director.virtuals.values()]
        low, high = REFRESH_RANGE
        self._next_refresh = now + max(low, min(high, min(timeouts, default=high * 3) / 3))
        if not self.send({"t": "conns", "reset": reset, "sticky": sticky}):
            self._whole.set()
            return
        for start in range(0, len(conns), CHUNK):
            with director.lock:
                now = self.plane.clock()
                up = [encode(conn, now) for conn in conns[start:start + CHUNK]
                      if director.conns.inbound.get(conn.in_key) is conn]
            if not self.send({"t": "conns", "up": up, "down": []}):
                self._whole.set()
                return
            self.sent += len(up)

    # -- the standby's side --------------------------------------------------------------
    def receive(self, message: dict[str, Any]) -> None:
        """A message of the active's stream: reset (forget what came before), sticky
        entries, closed tuples, then connections."""
        plane = self.plane
        if message.get("reset"):
            plane.clear_conns()
        director = self.director()
        now = plane.clock()
        if message.get("sticky"):
            with director.lock:
                apply_sticky(message["sticky"], director, now)
        for key in message.get("down", ()):
            plane.forget_conn(key)
        unknown = 0
        for record in message.get("up", ()):
            with director.lock:
                conn = decode(record, director, now)
            if conn is None:
                unknown += 1
                continue
            plane.import_conn(conn)
            self.applied += 1
        if unknown:
            log.warning("failover: %d replicated connections name an instance or a real "
                        "this unit does not have", unknown)
