"""When connections go: idle timeouts, shorter while the handshake is incomplete, and the
lingering of closed ones (docs/design.rst, "Connection lifecycle and health")."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator

from ..model.connection import CLOSED, HALF_OPEN_STATES, Connection
from ..model.real import DEFAULT_DELAY, PhysicalMachine
from ..model.virtual import VirtualMachine
from .timers import DROP, KEEP, TAKE, TimerWheel

# Closed connections keep translating this long by default (last ACK, RST races); each
# real's `delay` sets its own (LocalDirector's delayed removal).
LINGER = float(DEFAULT_DELAY)
EMBRYONIC_TIMEOUT = 75.0  # idle limit of a connection whose handshake has not completed
_COMPACT_MIN = 4096       # dead timer entries tolerated before the wheel is rebuilt


def timeout(conn: Connection) -> float:
    """How long this connection may stay idle in its current state: its real's own
    `timeout` when it has one, else its virtual's. Read when the timer is filed, never
    per packet."""
    state = conn.tcp_state
    if state is CLOSED:
        return conn.real.delay
    limit = conn.real.idle_timeout(conn.virtual)
    if state in HALF_OPEN_STATES and limit > EMBRYONIC_TIMEOUT:
        return EMBRYONIC_TIMEOUT
    return limit


def _shortens(server: VirtualMachine | PhysicalMachine, before: int, after: int) -> bool:
    """Whether a change of `server`'s timeout may shorten a connection's limit."""
    if type(server) is PhysicalMachine and (not before or not after):
        return before != after   # a real's own set or removed: 0 is "the virtual's"
    return after < before


class Expiry:
    """The idle timers of the live connections and the queue of lingering closed ones.

    Timers are checked lazily: a connection that saw traffic since it was filed is filed
    again under its new deadline. Closed ones stay filed until their second comes (the
    `closed()` count of them), or the wheel is rebuilt without them."""

    __slots__ = ("_wheel", "_dead", "_timeouts", "_linger")

    def __init__(self, now: float) -> None:
        self._wheel: TimerWheel[Connection] = TimerWheel(now)
        self._dead = 0
        self._timeouts: dict[VirtualMachine | PhysicalMachine, int] = {}
        self._linger: dict[float, deque[Connection]] = {}

    def __len__(self) -> int:
        """Timer entries filed, dead ones included."""
        return len(self._wheel)

    def start(self, conn: Connection, now: float) -> None:
        """A new connection's idle timer."""
        self._wheel.add(conn, now + timeout(conn))

    def linger(self, conn: Connection, now: float) -> None:
        """A connection just CLOSED: it goes its real's `delay` seconds from now."""
        delay = conn.real.delay
        conn.closing_at = now + delay
        queue = self._linger.get(delay)
        if queue is None:
            queue = self._linger[delay] = deque()
        queue.append(conn)

    def closed(self) -> None:
        """A connection left the table: its timer entry is dead from now on."""
        self._dead += 1

    def lingered(self, now: float) -> Iterator[Connection]:
        """The lingering connections whose time is up, to be removed."""
        for delay, queue in list(self._linger.items()):
            while queue and queue[0].closing_at <= now:
                yield queue.popleft()
            if not queue:
                del self._linger[delay]

    def idle(self, now: float, inbound: dict[int, Connection]) -> Iterator[Connection]:
        """The live connections (`inbound`: the table) idle past their deadline. The
        caller removes each, or marks it seen (`last_seen`) to keep it: one still in the
        table when the iteration resumes is filed again."""
        wheel = self._wheel
        for conn in wheel.due(now):
            if inbound.get(conn.in_key) is not conn:
                self._dead = max(0, self._dead - 1)
                continue
            deadline = conn.last_seen + timeout(conn)
            if deadline <= now:
                yield conn
                if inbound.get(conn.in_key) is not conn:
                    self._dead -= 1  # removed: its entry is already gone from the wheel
                    continue
                deadline = conn.last_seen + timeout(conn)
            wheel.add(conn, deadline)
        if self._dead > _COMPACT_MIN and self._dead > len(wheel) // 2:
            self.rebuild(now, inbound)

    def oldest_half_open(self, now: float, inbound: dict[int, Connection],
                         limit: int) -> list[Connection]:
        """Up to `limit` half-open connections of the table, the soonest to time out
        first (the oldest, give or take a retransmitted SYN), their timers taken out:
        what a full table gives up for a new SYN. Every half-open connection's timer
        is due within EMBRYONIC_TIMEOUT, so only those seconds of the wheel are walked,
        and the dead entries met on the way are dropped for good."""
        dropped = 0

        def kind(conn: Connection) -> int:
            nonlocal dropped
            if inbound.get(conn.in_key) is not conn:
                dropped += 1
                return DROP
            return TAKE if conn.tcp_state in HALF_OPEN_STATES else KEEP

        taken = self._wheel.take(kind, limit, now + EMBRYONIC_TIMEOUT + 1)
        # Dead entries dropped; the taken ones' entries count as dead again when the
        # caller closes them (closed()).
        self._dead = max(0, self._dead - dropped - len(taken))
        return taken

    def notice_timeouts(self, virtuals: Iterable[VirtualMachine],
                        reals: Iterable[PhysicalMachine], now: float,
                        inbound: dict[int, Connection]) -> None:
        """A shortened `timeout` must apply to existing connections now, not when their
        old, longer deadline comes up: rebuild the timers when a virtual's timeout
        shrank, or a real's own shrank, was set or was removed (the virtual's it
        stands for, or falls back to, may be the shorter). A longer one needs nothing:
        a timer that comes up early is filed again under the new deadline."""
        before = self._timeouts
        timeouts: dict[VirtualMachine | PhysicalMachine, int] = {
            v: v.timeout for v in virtuals}
        timeouts.update({r: r.timeout for r in reals})
        if timeouts == before:   # every tick under the lock: the common case costs little
            return
        self._timeouts = timeouts
        if any(_shortens(s, before.get(s, t), t) for s, t in timeouts.items()):
            self.rebuild(now, inbound)

    def forget_timeouts(self) -> None:
        """The model was replaced (`reload`): its servers' timeouts are the new baseline."""
        self._timeouts = {}

    def rebuild(self, now: float, inbound: dict[int, Connection]) -> None:
        """File every connection of the table afresh, without the dead entries."""
        self._wheel = wheel = TimerWheel(now)
        for conn in inbound.values():
            wheel.add(conn, conn.last_seen + timeout(conn))
        self._dead = 0
