"""Virtual machine object (FIG. 3A): one instance (VIP, port, Bind ID) of a published service."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from . import maglev
from .serverid import ServerId
from .state import State

if TYPE_CHECKING:
    from .link import Link

DEFAULT_PREDICTOR = "leastconns"   # a name in model/predictors.py PREDICTORS
DEFAULT_STICKY = 0                 # minutes; 0 = off
DEFAULT_TIMEOUT = 900
# UDP has no end of flow, so the idle timeout is all that ends one: 60 s outlives a
# resolver's retries (5 s apart) and a DNS query/answer pair by far, yet frees a
# client's flow a minute after its last datagram instead of fifteen (conntrack waits
# 30 s for an unanswered flow and 120 s for an answered one; one number is simpler and
# lies between). docs/design.rst, "UDP flows".
DEFAULT_UDP_TIMEOUT = 60
DEFAULT_SYNGUARD = 0               # half-open connections; 0 = off
DEFAULT_MAXCONNS = 0               # LocalDirector's `maxconns VIRTUAL N`; 0 = unlimited
# UDP flows one virtual holds at most: beyond, a new flow evicts the oldest unanswered
# ones (a spoofed flood's), counted (docs/design.rst, "UDP flows").
DEFAULT_FLOWS = 65536


class VirtualMachine:
    """Fields follow FIG. 3A; counters are updated by the data plane under the model lock."""

    __slots__ = ("next", "sid", "addr", "port", "bind_id", "proto", "state", "backup",
                 "predictor", "_sticky", "timeout", "synguard", "maxconns", "fastpath", "kernel", "dispatched",
                 "advertise", "maglev", "maglev_size", "links", "rr_cursor",
                 "service", "per_datagram", "flows", "flows_evicted",
                 "sticky_table", "conns_current", "conns_total", "half_open",
                 "synguard_drops", "no_real_drops", "sticky_full", "pending_fallbacks",
                 "packets_in", "packets_out", "bytes_in", "bytes_out", "assign_entries",
                 "assign_hits", "buddy", "buddies")

    def __init__(self, sid: ServerId, state: State = State.IN_SERVICE) -> None:
        self.next: VirtualMachine | None = None
        self.sid = sid
        self.addr = sid.addr
        self.port = sid.port
        self.bind_id = sid.bind
        self.proto = sid.proto
        # Port and protocol as one int, as the model's indexes key services
        # (serverid.UDP_SERVICE).
        self.service = sid.service
        self.state = state
        self.backup: ServerId | None = None
        self.predictor = DEFAULT_PREDICTOR
        # client address -> (real, when its last connection opened or closed): sticky
        # affinity, in that order (model/predictors.py, remember_sticky).
        self.sticky_table: dict[int, tuple[object, float]] = {}
        self._sticky = DEFAULT_STICKY
        # `buddy VIRTUAL NAME` (model/buddy.py): the group's name ("" = none) and the
        # group's other virtuals, whose sticky clients this one follows.
        self.buddy = ""
        self.buddies: tuple[VirtualMachine, ...] = ()
        self.timeout = DEFAULT_UDP_TIMEOUT if sid.proto == "udp" else DEFAULT_TIMEOUT
        self.synguard = DEFAULT_SYNGUARD
        # Open connections the instance takes; at the limit new ones go to its backup
        # virtual, as when no real can take them (patent ¶10).
        self.maxconns = DEFAULT_MAXCONNS
        # UDP only: `per-datagram` balances every client datagram anew (IPVS's one-packet
        # scheduling), and `flows` bounds the flows the virtual holds.
        self.per_datagram = False
        self.flows = DEFAULT_FLOWS
        # Connections translated by conntrack NAT once the engine decided them (`fastpath`,
        # model/fastpath.py); False: every packet goes through the engine.
        self.fastpath = False
        # With `fastpath`: the kernel also decides the connection (instance and real;
        # `fastpath VIRTUAL kernel`, model/kernelpath.py), so Python sees none of it.
        self.kernel = False
        # Dispatched forwarding (docs/design.rst, "Scale-out"): the director routes the
        # client's packets to the real unchanged and the real answers the client
        # directly; False: directed (NAT) mode.
        self.dispatched = False
        # `advertise`: announce the VIP by BGP while this instance can serve.
        self.advertise = False
        # `predictor maglev`: the lookup table's size, and the table last built
        # (model/maglev.py rebuilds it when the members change).
        self.maglev_size = maglev.DEFAULT_SIZE
        self.maglev: maglev.MaglevTable | None = None
        self.links: Link | None = None
        self.rr_cursor = 0
        self.reset_counters()
        self.conns_current = 0
        self.half_open = 0
        # Assign entries naming this instance, kept by BindIdTable: the metrics report
        # them per virtual without walking 100,000 entries under the lock.
        self.assign_entries = 0

    def reset_counters(self) -> None:
        """`clear counters`: totals restart, live gauges (current, half-open) do not."""
        self.conns_total = 0
        self.synguard_drops = 0
        self.no_real_drops = 0
        self.flows_evicted = 0  # UDP flows given up for new ones (`flows`)
        self.sticky_full = 0    # clients not remembered: the sticky table was full
        # Connections given to a real whose first probe result was awaited, because no
        # real was known good (model/predictors.py).
        self.pending_fallbacks = 0
        self.packets_in = 0
        self.packets_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.assign_hits = 0    # SYNs its assign entries sent it, removed entries' too

    @property
    def sticky(self) -> int:
        """Minutes a client stays with its real after its last connection; 0 = off."""
        return self._sticky

    @sticky.setter
    def sticky(self, minutes: int) -> None:
        # `no sticky` forgets every client at once, and frees the table's memory.
        self._sticky = minutes
        if not minutes:
            self.sticky_table = {}

    def iter_links(self) -> Iterator[Link]:
        link = self.links
        while link is not None:
            yield link
            link = link.next
