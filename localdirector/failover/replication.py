"""Replication of the engine's connections over the failover link (docs/design.rst,
"Failover"): the userspace connections only the engine knows (the fast path's are
conntrack's, which conntrackd carries).

On the active unit the engine's observer notes each connection that opened, was
answered, moved or closed, at the cost of a dict store under the lock it already
holds, and wakes the sender, which sends the noted connections encoded as they are then
in the appliance's stream (what is noted while it is busy goes in its next message): a
connection reaches the standby within a millisecond or so of its SYN, not at the next
poll. Whole, in chunks, when the other unit (re)connects or this one becomes active,
and every third of the shortest idle timeout (a virtual's or a real's own) so the
standby's copies of idle-but-alive connections do not time out there. The standby
installs each with `Engine.import_conn` (none of its packets passes the standby: the
drop guard is up), so its engine carries them on at the takeover, after checking
every field (the stream is input like any other: a malformed record is dropped and
counted) and never beyond `conn-limit`. Times travel as ages: clocks need not agree."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from localdirector.dataplane.engine import CLOSED_EVENT
from localdirector.dataplane.worker import WORKER_NICE
from localdirector.model.connection import (
    CLOSED,
    ESTABLISHED,
    FASTPATH,
    FIN_WAIT,
    KEY_LIMIT,
    REPLIED,
    SYN_RCVD,
    SYN_SENT,
    UNREPLIED,
    Connection,
    UdpFlow,
    real_tag,
)
from localdirector.model.addr import V6, family_of
from localdirector.model.director import Director
from localdirector.model.predictors import remember_sticky
from localdirector.model.serverid import ServerId

if TYPE_CHECKING:
    from localdirector.dataplane.plane import DataPlane

log = logging.getLogger("localdirector.failover")

DRAIN = 0.05         # seconds for the packets queued before a step-down to be handled
TURN_WAIT = 0.02      # seconds the worker waits for a turn in progress to end
CHUNK = 2000         # connections per message of a whole resend (one lock hold each)
REFRESH_RANGE = (5.0, 300.0)   # seconds between whole resends, clamped
# The model's own state strings: the engine compares them by identity.
_STATES = {state: state for state in (SYN_SENT, SYN_RCVD, ESTABLISHED, FIN_WAIT, CLOSED,
                                      FASTPATH, UNREPLIED, REPLIED)}
# What `decode` returns for a record it cannot install.
UNKNOWN = "unknown"        # names an instance or a real this unit does not have (yet)
MALFORMED = "malformed"    # a field of the wrong type or out of its range


def _int(high: int) -> Callable[[Any], bool]:
    return lambda value: type(value) is int and 0 <= value <= high


def _age(value: Any) -> bool:
    return type(value) in (int, float) and 0 <= value and math.isfinite(value)


def _text(value: Any) -> bool:
    return type(value) is str


def _addr(value: Any) -> bool:
    """An address int of either family (model/addr.py): IPv4's 32 bits, or IPv6's 128
    with the tag, bit 128."""
    return type(value) is int and (0 <= value <= 0xFFFFFFFF or V6 <= value < V6 << 1)


_U16, _U32 = _int(0xFFFF), _int(0xFFFFFFFF)
# A flow key: client address and port, VIP and port (and for a UDP flow, the protocol
# bit and a per-datagram real), laid out by the family's width (model/connection.py); an
# IPv6 one with a per-datagram real's tag stays below 2**600. `decode` bounds it by its
# family's layout and rebuilds it from the fields it carries, which checks the rest.
_KEY = _int(max(KEY_LIMIT, 1 << 600) - 1)
# One check per field of `encode`'s record and of `encode_sticky`'s entry.
_RECORD = (_KEY, _addr, _U16, _U16, _text, _addr, _U16, _U16, _text, _U16, _U16,
           lambda state: type(state) is str and state in _STATES,
           lambda answered: type(answered) is bool, _int(0xFF), _U32, _U32, _int(0xFFFF),
           _age, _age)
_STICKY = (_addr, _U16, _U16, _text, _addr, _addr, _U16, _U16, _text, _age)


def _tag_bits(vip: int) -> tuple[int, int]:
    """The lowest bit a per-datagram flow's real tag sets in the key layout of the VIP's
    family (model/connection.py's `real_tag`), and the bound of every key of that layout:
    a key may differ from the one rebuilt from its fields only from that bit up (the
    flow moved off its real), and only below the bound (KEY_LIMIT for IPv4)."""
    family = family_of(vip)
    low = real_tag(family.tag, 1)
    return low & -low, 1 << real_tag(family.tag | family.all_ones, 0xFFFF).bit_length()


def _valid(record: Any, checks: tuple[Callable[[Any], bool], ...]) -> bool:
    return type(record) is list and len(record) == len(checks) and \
        all(check(value) for check, value in zip(checks, record))


def encode(conn: Connection, now: float) -> list[Any]:
    """One connection as a JSON list: client tuple, instance, real, translation, TCP
    state and sequence marks, ages."""
    v, r = conn.virtual.sid, conn.real.sid
    return [conn.in_key, v.addr, v.port, v.bind, v.proto, r.addr, r.port, r.bind, r.proto,
            conn.virtual_port, conn.remap, conn.tcp_state, conn.answered, conn.bits,
            conn.ack_in, conn.ack_out, conn.syn_resends,
            round(now - conn.last_seen, 3), round(now - conn.created, 3)]


def decode(record: Any, director: Director, now: float) -> Connection | str:
    """The connection a record describes, on this model's objects; UNKNOWN when its
    instance or real does not exist here (yet), MALFORMED when a field is not what
    `encode` writes or its client tuple is not toward its instance. Never raises."""
    if not _valid(record, _RECORD):
        return MALFORMED
    (in_key, vaddr, vport, vbind, vproto, raddr, rport, rbind, rproto, virtual_port,
     remap, state, answered, bits, ack_in, ack_out, syn_resends, seen, created) = record
    virtual = director.virtuals.get(ServerId(vaddr, vport, vbind, vproto))
    real = director.reals.get(ServerId(raddr, rport, rbind, rproto))
    if virtual is None or real is None:
        return UNKNOWN
    # A UDP flow (docs/design.rst, "UDP flows") travels in the same record: its key
    # carries the protocol (and a per-datagram flow's real), its state is UDP's.
    cls = UdpFlow if virtual.proto == "udp" else Connection
    port = virtual.port or virtual_port
    # The client, read out of the key by the connection's own layout (its family's).
    layout = cls(0, 0, virtual.addr, port, virtual, real, now)
    layout.in_key = in_key
    client = layout.foreign_ip
    if family_of(client) is not family_of(virtual.addr) or not _addr(client):
        return MALFORMED
    conn = cls(client, layout.foreign_port, virtual.addr, port, virtual, real, now - created)
    low, limit = _tag_bits(virtual.addr)
    if in_key >= limit or conn.in_key != in_key and (cls is Connection
                                                     or conn.in_key ^ in_key < low):
        return MALFORMED   # only a per-datagram flow moved off its real may differ (tag)
    conn.in_key = in_key
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


def apply_sticky(entries: Iterable[Any], director: Director, now: float) -> int:
    """Remember the entries of sticky virtuals; returns how many were malformed."""
    malformed = 0
    for entry in entries:
        if not _valid(entry, _STICKY):
            malformed += 1
            continue
        vaddr, vport, vbind, vproto, client, raddr, rport, rbind, rproto, age = entry
        if family_of(client) is not family_of(vaddr):
            malformed += 1
            continue
        virtual = director.virtuals.get(ServerId(vaddr, vport, vbind, vproto))
        real = director.reals.get(ServerId(raddr, rport, rbind, rproto))
        if virtual is not None and real is not None and virtual.sticky:
            remember_sticky(virtual, client, real, now - age)
    return malformed


class Replicator:
    """Both ends of the connection stream of one unit. `send(message, wait)` writes a
    message to the other unit (False when it is not connected, or, `wait` False, when it
    cannot be written at once); `director` gives the model in use
    now (another after each `reload` or configuration from the active)."""

    def __init__(self, plane: "DataPlane", director: Callable[[], Director],
                 send: Callable[[dict[str, Any], bool], bool],
                 poll: Callable[[], float]) -> None:
        self.plane = plane
        self.director = director
        self.send = send
        self.poll = poll
        self.sending = False          # this unit is active and `replicate` is on
        self.sent = 0                 # connection records sent to the other unit
        self.applied = 0              # connections installed from the other unit
        self.malformed = 0            # records, closed tuples, sticky entries dropped
        self.over_limit = 0           # connections refused: `conn-limit` was reached
        self._noted: dict[int, Connection] = {}
        self._closed: set[int] = set()
        self._whole = threading.Event()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._turning = threading.Lock()   # one turn at a time: messages stay in order
        self._stuck = False   # the worker's wait for the current turn timed out
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

    def counts(self) -> str:
        """For `show failover`: records sent; received, and those the standby dropped."""
        return (f"{self.sent} sent, {self.applied} received, {self.malformed} malformed, "
                f"{self.over_limit} over conn-limit")

    def hand_over(self) -> None:
        """The step-down, behind the drop guard (no new connection opens here, TCP
        resends what it drops to the other unit), before yielding: let the engine finish
        what the queue already held, send what is noted now, in this thread, and stop
        sending, so that nothing the engine opened stays behind. Never raises: the
        step-down must go on to yield whatever happens here."""
        if not self.sending:
            return
        time.sleep(DRAIN)
        try:
            self._turn()
        except Exception:  # said, and the step-down goes on
            log.exception("failover: stepping down: cannot send the connections")
        if self._whole.is_set():
            log.error("failover: stepping down: the other unit did not get them all")
        self.set_sending(False)

    # -- the active's side ---------------------------------------------------------------
    def _note(self, event: str, conn: Connection) -> None:
        """The engine's observer, under its lock: a dict store, and a wake-up of the
        sender unless it is awake already (then only the `is_set` call). Only at a connection's
        open, answer, move and close: the established path pays nothing."""
        if not self.sending or conn.fastpath:
            return
        key = conn.in_key
        if event is CLOSED_EVENT:
            self._noted.pop(key, None)
            self._closed.add(key)
        else:
            self._noted[key] = conn
        wake = self._wake
        if not wake.is_set():
            wake.set()

    def _run(self) -> None:
        # As soon as the worker that noted a connection lets go of the interpreter: at
        # the worker's priority, not behind the host's other processes (worker.py).
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICE)
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
        with self._turning:
            if not self.sending:
                return
            plane = self.plane
            try:
                if self._whole.is_set() or plane.clock() >= self._next_refresh:
                    self._whole.clear()
                    self._send_whole(reset=True)
                else:
                    self._send_noted()
            finally:
                self._stuck = False

    def write_before_verdicts(self) -> None:
        """The data-plane worker, before a batch of verdicts leaves: what the batch
        opened, answered or closed is written to the stream first, so that a unit that
        dies a moment after letting a SYN through has told the other unit of it (issue
        22). Waits up to `TURN_WAIT` for a sender's turn in progress, once per turn;
        not while a whole resend is due (it carries these); a record the socket cannot
        take at once stays noted (docs/design.rst, "Failover"). Never raises into the
        worker."""
        if not (self._noted or self._closed) or not self.sending or self._whole.is_set():
            return
        # A turn that outlasts the wait is stuck on the socket (the other unit reads
        # nothing): waiting at every batch held the verdicts 20 ms each.
        if not self._turning.acquire(timeout=0 if self._stuck else TURN_WAIT):
            self._stuck = True
            return
        try:
            if self.sending and not self._whole.is_set():
                self._send_noted(wait=False)
        except Exception:  # the packets must go on; said
            log.exception("failover: cannot write connections before their verdicts")
        finally:
            self._turning.release()

    def _send_noted(self, wait: bool = True) -> None:
        director = self.director()
        with director.lock:
            noted, self._noted = self._noted, {}
            closed, self._closed = self._closed, set()
            now = self.plane.clock()
            up = [encode(conn, now) for conn in noted.values()
                  if director.conns.inbound.get(conn.in_key) is conn]
        if up or closed:
            if self.send({"t": "conns", "up": up, "down": list(closed)}, wait):
                self.sent += len(up)
            elif wait:
                self._whole.set()   # lost: the other unit gets everything when it is back
            else:
                # The worker's write found the stream busy or full: the sender's next
                # turn, which may wait for room, carries these (a whole resend would
                # only add to what the other unit has not read yet). A stream it broke
                # is resent whole when it reconnects.
                with director.lock:
                    for key, conn in noted.items():
                        self._noted.setdefault(key, conn)
                    self._closed |= closed
                self._wake.set()

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
            timeouts = [s.timeout for s in (*director.virtuals.values(),
                                            *director.reals.values()) if s.timeout]
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
    def receive(self, message: dict[str, Any], late: bool = False) -> None:
        """A message of the active's stream: reset (forget what came before), sticky
        entries, closed tuples, then connections. What is not as `encode` and
        `encode_sticky` write it is dropped and counted, never raised; connections beyond
        `conn-limit` are refused and counted (the standby's table must take what its
        engine takes). Each kind of trouble is logged once per message.

        `late`: this unit is active already, and the message was written by the other
        unit before it stopped (its last records, read after the takeover, which a
        dead box on a direct cable makes quick): only connections this unit does not
        know are taken, nothing is reset, closed or made sticky, so that the other
        unit's word never undoes what this one's engine did since."""
        plane = self.plane
        if message.get("reset") is True and not late:
            plane.clear_conns()
        director = self.director()
        now = plane.clock()
        sticky, down, up = (_listed(message, name) for name in ("sticky", "down", "up"))
        if late:
            sticky, down = [], []
        malformed = sum(part is None for part in (sticky, down, up))
        if sticky:
            with director.lock:
                malformed += apply_sticky(sticky, director, now)
        for key in down or ():
            if _KEY(key):
                plane.forget_conn(key)
            else:
                malformed += 1
        unknown = full = 0
        for record in up or ():
            with director.lock:
                conn = decode(record, director, now)
                inbound = director.conns.inbound
                if isinstance(conn, Connection) and conn.in_key not in inbound \
                        and len(inbound) >= director.settings.max_conns:
                    conn = None
                elif late and isinstance(conn, Connection) and conn.in_key in inbound:
                    continue
            if conn is None:
                full += 1
            elif conn is UNKNOWN:
                unknown += 1
            elif conn is MALFORMED:
                malformed += 1
            else:
                plane.import_conn(conn)
                self.applied += 1
        self.malformed += malformed
        self.over_limit += full
        if unknown:
            log.warning("failover: %d replicated connections name an instance or a real "
                        "this unit does not have", unknown)
        if malformed:
            log.warning("failover: %d malformed connection records from the other unit "
                        "dropped", malformed)
        if full:
            log.warning("failover: %d replicated connections refused: this unit's table "
                        "is full (conn-limit %d)", full, director.settings.max_conns)


def _listed(message: dict[str, Any], name: str) -> list[Any] | None:
    """The message's list `name`: empty when absent, None when it is not a list."""
    value = message.get(name, [])
    return value if type(value) is list else None
