"""Physical (real) machine object (FIG. 3B)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .serverid import ServerId
from .state import State

if TYPE_CHECKING:
    from .virtual import VirtualMachine

DEFAULT_WEIGHT = 1
DEFAULT_MAXCONNS = 0       # unlimited
DEFAULT_THRESHOLD = 8
DEFAULT_REASSIGN = 3
DEFAULT_RETRY = 60
# LocalDirector's `delay`: seconds a closed connection stays in the table, translating its
# last packets (a retransmitted FIN, the last ACK, an RST race), before it is removed.
DEFAULT_DELAY = 2
# LocalDirector's `timeout REAL SECONDS`: the real's own idle timeout, which overrides
# its virtual's for the connections it serves; 0: none, the virtual's applies
# (dataplane/expiry.py `timeout`).
DEFAULT_TIMEOUT = 0


class PhysicalMachine:
    """Port 0 means "the port the client asked for"; any other port is also translated."""

    __slots__ = ("next", "sid", "addr", "port", "state", "admin_state", "current_conns",
                 "total_conns", "noanswer_reassigns", "reset_reassigns", "consecutive_fails",
                 "threshold", "reassign", "retry", "delay", "timeout", "weight", "maxconns",
                 "backup", "response_time", "failed_at", "testing", "probe_down", "probe_pending",
                 "packets_in", "packets_out", "bytes_in", "bytes_out")

    def __init__(self, sid: ServerId, state: State = State.IN_SERVICE) -> None:
        self.next: PhysicalMachine | None = None
        self.sid = sid
        self.addr = sid.addr
        self.port = sid.port
        self.state = state
        # What the operator asked for; `state` may additionally be FAILED or TESTING.
        self.admin_state = state
        self.threshold = DEFAULT_THRESHOLD
        self.reassign = DEFAULT_REASSIGN
        self.retry = DEFAULT_RETRY
        self.delay = DEFAULT_DELAY
        self.timeout = DEFAULT_TIMEOUT
        self.weight = DEFAULT_WEIGHT
        self.maxconns = DEFAULT_MAXCONNS
        self.backup: ServerId | None = None
        self.current_conns = 0
        # Health (model/health.py): unanswered connections in a row, when it FAILED,
        # and whether a TESTING real has its single probe connection outstanding.
        self.consecutive_fails = 0
        self.failed_at = 0.0
        self.testing = False
        # Out by an active probe (model/probes.py), beside the passive `state`: the
        # name of a probe whose check is DOWN, "" while none is.
        self.probe_down = ""
        # A probe's first result is awaited (model/probes.py): passed over while another
        # real is known good.
        self.probe_pending = False
        self.reset_counters()

    def idle_timeout(self, virtual: VirtualMachine) -> int:
        """How long a connection of `virtual` served by this real may stay idle: the
        real's own `timeout`, else the virtual's (the engine's timers and the kernel's
        flow memory both ask this)."""
        return self.timeout or virtual.timeout

    def reset_counters(self) -> None:
        """`clear counters`: totals restart; live gauges and health state do not."""
        self.total_conns = 0
        self.noanswer_reassigns = 0
        self.reset_reassigns = 0
        self.response_time = 0.0
        self.packets_in = 0
        self.packets_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
