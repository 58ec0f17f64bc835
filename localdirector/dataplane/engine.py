"""FIG. 5 for every queued packet: find or create the connection (a TCP connection or
a UDP flow), translate, follow its state.

Pure Python over the packet's `bytearray` with an injectable clock, so every behaviour is
testable with crafted packets. The NFQUEUE worker calls `handle()` per packet and `tick()`
about twice a second; every entry point holds `director.lock` for its whole span, so
worker threads and the shell share one engine and always see whole updates. Here: the
steps both protocols share (the FIG. 5 decision that opens a connection or flow, the
translation, reassigning, closing, timers); TCP's state machine is tcp.py's, UDP's flows
udp.py's. Policy for refused, reset and unanswered SYNs and malformed input:
docs/design.rst, "Packet flow" and "UDP flows"; what the fast path does differently:
fastpath.py and "Fast path".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..model.connection import (
    ESTABLISHED,
    FASTPATH,
    REPLIED,
    SYN_RCVD,
    SYN_SENT,
    UNREPLIED,
    Connection,
    UdpFlow,
)
from ..model.director import Director
from ..model.health import end_probe, start_probe
from ..model.predictors import STICKY_LIMIT, expire_sticky, sticky_closed
from ..model.real import PhysicalMachine
from ..model.serverid import UDP_SERVICE
from ..model.state import State
from ..model.virtual import VirtualMachine
from .carried import ANSWERED, CLOSED_EVENT, MOVED, OPENED, CarriedConnections
from .conntrack import KernelTable, NoKernel
from .dispatch import Dispatch
from .expiry import Expiry
from .fastpath import FastPath
from .icmp_errors import IcmpErrors
from .ipv6 import parse_tcp6
from .packet import BAD_VERSION, SYN, Buffer, parse_tcp, rewrite, tcp_checksum_valid
from .ports import ClientPorts
from .replies import RealReplies
from .stats import BAD_CHECKSUM, CONN_LIMIT, MARK_PENDING, NO_VIRTUAL, SYNGUARD, Stats
from .tcp import CLIENT_SYN_MASK, CONTROL, TcpState
from .udp import UdpFlows
from .verdicts import ACCEPT_MARK, ACCEPT_MODIFIED, ACCEPT_UNCHANGED, DROP

# The worker's verdicts and the replication stream's events are imported from here,
# with the engine.
__all__ = ["Engine", "DROP", "ACCEPT_UNCHANGED", "ACCEPT_MODIFIED", "ACCEPT_MARK",
           "OPENED", "ANSWERED", "MOVED", "CLOSED_EVENT"]

log = logging.getLogger("localdirector")

RESPONSE_WEIGHT = 0.25    # EWMA weight of a new response-time sample (`fastest`)
STICKY_LOG_INTERVAL = 60.0  # seconds between two "sticky table full" messages
# RSTs for segments of unknown connections, per tick (about half a second): a spoofed
# flood of such segments is not reflected at more than twice this a second.
RESETS_PER_TICK = 500

_IN_SERVICE = State.IN_SERVICE


class Engine(TcpState, UdpFlows, IcmpErrors, CarriedConnections, RealReplies):
    """The FIG. 5 data plane over one Director. `kernel`: conntrack's table, for the fast
    path (none by default). What each protocol does is in its mixin (tcp.py, udp.py);
    what it does with ICMP and other protocols, with connections it did not open and
    with a real's packets of none is in the others (icmp_errors.py, carried.py,
    replies.py, which also keeps the model's addresses)."""

    def __init__(self, director: Director, clock: Callable[[], float] = time.monotonic,
                 kernel: KernelTable | None = None) -> None:
        self.director = director
        self.clock = clock
        self.stats = Stats()
        self._fastpath = FastPath(self.stats, kernel if kernel is not None else NoKernel())
        self._dispatch = Dispatch(self._fastpath, self.stats)
        self._lock = director.lock
        self._ports = ClientPorts(self.stats)
        self._expiry = Expiry(self.clock())
        self._probes: dict[PhysicalMachine, Connection] = {}
        # Each virtual's UDP flows, oldest first: what `flows` evicts (udp.py).
        self._flow_order: dict[VirtualMachine, dict[int, Connection]] = {}
        # What the model holds (replies.py) is recomputed when its generation moves.
        self._vip_generation = -1
        self._resets_left = RESETS_PER_TICK
        self._sticky_full_logged = 0   # virtuals' sticky_full total when last logged
        self._sticky_logged_at = float("-inf")
        # Told of every connection's open, answer, move and close (see `observe`).
        self._observer: Callable[[str, Connection], None] | None = None

    # The fast path's state, as the data-plane service and the worker know it.
    @property
    def kernel(self) -> KernelTable:
        """Conntrack's table (NoKernel when there is none to talk to)."""
        return self._fastpath.conntrack

    @kernel.setter
    def kernel(self, table: KernelTable) -> None:
        self._fastpath.conntrack = table

    @property
    def marks(self) -> dict[tuple[int, int], int]:
        """(real address, real port) -> the mark of its DNAT rule, as installed."""
        return self._fastpath.marks

    @marks.setter
    def marks(self, marks: dict[tuple[int, int], int]) -> None:
        self._fastpath.marks = marks

    @property
    def verdict_mark(self) -> int:
        """The mark an ACCEPT_MARK verdict sets."""
        return self._fastpath.verdict_mark

    # -- packet path ---------------------------------------------------------------
    def handle(self, buf: Buffer) -> int:
        """FIG. 5 for one IPv4 or IPv6 packet; returns DROP, ACCEPT_UNCHANGED,
        ACCEPT_MODIFIED (then `buf` holds the translated packet, to its IP total length)
        or ACCEPT_MARK (`verdict_mark`). Never raises on packet contents. A fast-path
        connection is never ESTABLISHED (see FASTPATH), so its packets take the control
        branches and the established userspace path pays nothing for the fast path.
        IPv6 is parse_tcp's `bad-version`, read again by ipv6.parse_tcp6 into the same
        fields, so IPv4 pays nothing for it; the flow key's layout is the family's
        (`width`, model/connection.py), the rest one body for both."""
        fields = parse_tcp(buf)  # reads only the packet: no need to hold the lock
        # Not `with`: its __exit__ call costs a tenth of a microsecond a packet.
        lock = self._lock
        lock.acquire()
        try:
            if type(fields) is int:
                if fields != BAD_VERSION or buf[0] >> 4 != 6:
                    return self._not_tcp(buf, fields)
                fields = parse_tcp6(buf)
                if type(fields) is int:
                    return self._not_tcp(buf, fields)
            ihl, size, src, dst, sport, dport, flags, seq, ack, width = fields
            now = self.clock()
            key = ((((src << 16) | sport) << width | dst) << 16) | dport  # flow_key
            director = self.director
            conns = director.conns
            # A packet to a VIP can only be a client's, so each direction probes one
            # table of a million entries, not two (a cache miss each). A client's packet
            # to a VIP since removed (its connections drain) is found by the fallback.
            if director.generation != self._vip_generation:
                self._refresh_model()
            to_vip = dst in self._vip_addrs
            if not to_vip:
                conn = conns.reply.get(key)
                if conn is not None:
                    if flags & CONTROL or conn.tcp_state is not ESTABLISHED:
                        verdict = self._real_control(conn, flags, seq, now)
                        if verdict is not None:
                            return verdict
                    return self._forward_out(buf, ihl, size, conn, dst, ack, now)
            conn = conns.inbound.get(key)
            if conn is not None:
                if flags & CONTROL or conn.tcp_state is not ESTABLISHED:
                    verdict = self._client_control(buf, ihl, conn, flags, seq, now)
                    if verdict is not None:
                        return verdict
                return self._forward_in(buf, ihl, size, conn, src, ack, now)
            if to_vip and flags & CLIENT_SYN_MASK == SYN:
                if not tcp_checksum_valid(buf, ihl):
                    return self._drop(BAD_CHECKSUM)
                return self._open(buf, ihl, size, src, dst, sport, dport, key, now)
            return self._no_connection(buf, ihl, src, dst, dport, flags, key, now)
        finally:
            lock.release()

    def _forward_in(self, buf: Buffer, ihl: int, size: int, conn: Connection, src: int,
                    ack: int, now: float, udp: bool = False) -> int:
        """Client -> real: destination to the real, client port to `remap` if remapped.
        `size`: the IP total length (the queue may copy less); `ack`: the packet's
        acknowledgment number, the sequence the real's RST must carry (0 for UDP)."""
        conn.last_seen = now
        conn.ack_in = ack
        virtual = conn.virtual
        virtual.packets_in += 1
        virtual.bytes_in += size
        real = conn.real
        real.packets_in += 1
        real.bytes_in += size
        if virtual.dispatched:
            return self._dispatch.forward(conn)
        rewrite(buf, ihl, conn.real_ip, conn.real_port, True, udp)   # destination
        if conn.remap:
            rewrite(buf, ihl, src, conn.remap, False, udp)          # source
        self.stats.translated_in += 1
        return ACCEPT_MODIFIED

    def _forward_out(self, buf: Buffer, ihl: int, size: int, conn: Connection, dst: int,
                     ack: int, now: float, udp: bool = False) -> int:
        """Real -> client: source back to the VIP:port the client used, and its own port."""
        conn.last_seen = now
        conn.ack_out = ack
        virtual = conn.virtual
        virtual.packets_out += 1
        virtual.bytes_out += size
        real = conn.real
        real.packets_out += 1
        real.bytes_out += size
        rewrite(buf, ihl, conn.virtual_ip, conn.virtual_port, False, udp)   # source
        if conn.remap:
            rewrite(buf, ihl, dst, conn.foreign_port, True, udp)               # destination
        self.stats.translated_out += 1
        return ACCEPT_MODIFIED

    def _drop(self, reason: int) -> int:
        self.stats.drops[reason] += 1
        return DROP

    def _unchanged(self) -> int:
        self.stats.unchanged += 1
        return ACCEPT_UNCHANGED


    def _answered(self, conn: Connection, now: float) -> None:
        """SYN-ACK, or a UDP flow's first reply: the real is alive; record its response
        time for `fastest`."""
        conn.answered = True
        if conn.tcp_state is SYN_SENT:
            self.director.conns.set_state(conn, FASTPATH if conn.fastpath else SYN_RCVD)
        elif conn.tcp_state is UNREPLIED:
            conn.tcp_state = REPLIED
        real = conn.real
        sample = max(now - conn.syn_sent_at, 1e-6)  # 0.0 would read as "unmeasured"
        if real.response_time == 0.0:
            real.response_time = sample
        else:
            real.response_time += RESPONSE_WEIGHT * (sample - real.response_time)
        if self._probes:
            self._end_probe(conn)
        if real.consecutive_fails or real.state is not _IN_SERVICE:  # else nothing to note
            self.director.note_answer(real)
        observer = self._observer
        if observer is not None:
            observer(ANSWERED, conn)

    def _open(self, buf: Buffer, ihl: int, size: int, src: int, dst: int, sport: int,
              dport: int, key: int, now: float, udp: bool = False) -> int:
        """FIG. 5 steps 510-520 for a client SYN, or (`udp`) the datagram that opens a
        UDP flow, its checksum already verified: one decision for both protocols.
        `size`: its IP total length; `key`: its flow key, the new connection's `in_key`.
        What every SYN pays is written out here rather than spread over small calls (a
        Python call costs about as much as a dict insert into the table)."""
        director = self.director
        conns = director.conns
        table = conns.inbound
        if len(table) >= director.settings.max_conns and not self._evict_half_open(now):
            return self._drop(CONN_LIMIT)
        virtual = director.lookup_virtual(src, dst, dport | UDP_SERVICE if udp else dport,
                                          count=True)
        if virtual is None:
            return self._drop(NO_VIRTUAL)
        if virtual.synguard and virtual.half_open >= virtual.synguard:
            virtual.synguard_drops += 1
            return self._drop(SYNGUARD)
        decision = director.decide_for(virtual, src, now, flow=key)
        real, served = decision.real, decision.served_by
        if real is None or served is None:
            return self._refuse(buf, ihl, virtual)
        if served is not virtual and served.synguard and served.half_open >= served.synguard:
            served.synguard_drops += 1
            return self._drop(SYNGUARD)
        fastpath = virtual.fastpath  # one mode per group (model/fastpath.py): served's too
        if fastpath and not self._fastpath.ready(real, udp) \
                or served.dispatched and not self._dispatch.ready(real):
            return self._drop(MARK_PENDING)
        # The model's own address and port objects: no int per connection for them.
        if udp:
            conn = UdpFlow(src, sport, virtual.addr, virtual.port or dport, served, real, now)
            known = table.get(conn.in_key)
            if known is not None:   # per-datagram: this client's flow to that real
                return self._udp_client(buf, ihl, size, known, src, now)
            self._file_flow(served, conn, now)   # within the virtual's `flows` (udp.py)
        else:
            conn = Connection(src, sport, virtual.addr, virtual.port or dport, served, real,
                              now)
        if fastpath:
            conn.fastpath = True  # the kernel's NAT remaps the client port if it must
        elif not served.dispatched:  # dispatched: nothing is translated
            port = self._ports.choose(conns.reply, conn.real_ip, conn.real_port, src, sport,
                                      udp)
            if port != sport:
                conn.remap = port
        conns.add(conn)
        stats = self.stats
        if len(table) > stats.peak_conns:
            stats.peak_conns = len(table)
        if real.state is not _IN_SERVICE:   # only a TESTING real takes a probe
            self._start_probe(conn)
        self._expiry.start(conn, now)
        stats.conns_created += 1
        observer = self._observer
        if observer is not None:
            observer(OPENED, conn)
        if fastpath:
            return self._fastpath.opened(conn)
        return self._forward_in(buf, ihl, size, conn, src, 0, now, udp)


    def _reassign(self, conn: Connection, now: float, reset: bool) -> bool:
        """Ditch the real that did not answer (or reset) the SYN; False when no other
        real can take the connection, which then stays where it is."""
        old = conn.real
        self._end_probe(conn)
        self.director.note_failure(old, now)
        conn.syn_resends = 0
        service = conn.virtual_port | (conn.virtual.service & UDP_SERVICE)
        decision = self.director.decide(conn.foreign_ip, conn.virtual_ip, service, now,
                                        exclude=old, flow=conn.in_key)
        new = decision.real
        if new is None:
            return False
        if reset:
            old.reset_reassigns += 1
        else:
            old.noanswer_reassigns += 1
        if conn.fastpath:
            nat_port = self._fastpath.unbind(conn)
        elif conn.virtual.dispatched:
            nat_port = conn.foreign_port
        else:
            # The old real may hold a half-open socket for this tuple: avoid it a while.
            self._ports.remember(conn.reply_key(), now)
            nat_port = self._ports.choose(self.director.conns.reply, new.addr,
                                          new.port or conn.virtual_port, conn.foreign_ip,
                                          conn.foreign_port, service > 0xFFFF)
        previous = conn.virtual
        self.director.conns.move(conn, new, decision.served_by, nat_port)
        if conn.virtual is not previous:   # overflowed to a backup instance
            self._refile_flow(conn, previous)
        conn.syn_sent_at = now
        self._start_probe(conn)
        self.stats.conns_reassigned += 1
        self._notify(MOVED, conn)
        return True

    def _close(self, conn: Connection, now: float) -> None:
        """Remove a connection now (idempotent), remembering its tuple toward the real
        (userspace only: the kernel keeps its own TIME_WAIT for fast-path tuples)."""
        reply_key = self.director.conns.remove(conn)
        if reply_key is None:
            return
        if type(conn) is UdpFlow:
            self._unfile_flow(conn)
        if not conn.fastpath:
            self._ports.remember(reply_key, now)
        if self._probes:
            self._end_probe(conn)
        self._expiry.closed()
        self.stats.conns_closed += 1
        virtual, real = conn.virtual, conn.real
        if virtual.sticky:
            sticky_closed(virtual, conn.foreign_ip, real, now)
        observer = self._observer
        if observer is not None:
            observer(CLOSED_EVENT, conn)
        # Identity in a set, not a ServerId key (whose hash and == are Python code).
        if self.director.generation != self._vip_generation:
            self._refresh_model()
        servers = self._servers
        if virtual not in servers or real not in servers:
            # Its virtual or real was removed (or replaced by `reload`): netfilter kept
            # queueing its traffic for it alone (rules.desired_rules); let them go.
            self.director.changed()

    def _start_probe(self, conn: Connection) -> None:
        """A TESTING real takes exactly one connection as its test (FIG. 3B)."""
        if start_probe(conn.real):
            self._probes[conn.real] = conn

    def _end_probe(self, conn: Connection) -> None:
        """The probe is over (answered, ditched or gone): let the real be tested again."""
        real = conn.real
        if self._probes.get(real) is conn:
            del self._probes[real]
            end_probe(real)

    # -- timers --------------------------------------------------------------------
    def tick(self, now: float | None = None) -> None:
        """Periodic work (the worker calls it about every 0.5 s): FAILED reals whose retry
        time passed go TESTING, lingering and idle connections go, old tuples expire."""
        with self._lock:
            if now is None:
                now = self.clock()
            director = self.director
            director.tick(now)
            inbound = director.conns.inbound
            expiry = self._expiry
            expiry.notice_timeouts(director.virtuals.values(), director.reals.values(),
                                   now, inbound)
            for conn in expiry.lingered(now):
                self._close(conn, now)
            for conn in expiry.idle(now, inbound):
                if conn.fastpath and self._fastpath.held(conn, now):
                    continue
                self._close(conn, now)
                self.stats.conns_timed_out += 1
            self._ports.expire(now)
            self._expire_sticky(now)
            self._resets_left = RESETS_PER_TICK

    def _expire_sticky(self, now: float) -> None:
        """Sticky entries go `sticky` minutes after the client's last connection closed
        (docs/design.rst, "Sticky"); a full table is said in the log, once a minute."""
        full = 0
        for virtual in self.director.virtuals.values():
            if virtual.sticky_table:
                expire_sticky(virtual, now)
            full += virtual.sticky_full
        if full < self._sticky_full_logged:   # `clear counters`
            self._sticky_full_logged = 0
        if full > self._sticky_full_logged and \
                now - self._sticky_logged_at >= STICKY_LOG_INTERVAL:
            log.warning("sticky table full (%d clients per virtual): %d new clients "
                        "balanced without being remembered",
                        STICKY_LIMIT, full - self._sticky_full_logged)
            self._sticky_full_logged = full
            self._sticky_logged_at = now

    # -- operator actions ----------------------------------------------------------
    def clear_conns(self) -> int:
        """`clear conns`: drop every connection as if closed; returns how many. The kernel
        forgets fast-path ones too, so they stop flowing like userspace ones."""
        with self._lock:
            now = self.clock()
            inbound = self.director.conns.inbound
            conns = list(inbound.values())
            for conn in conns:
                if conn.fastpath:
                    self._fastpath.forget(conn)
                self._close(conn, now)
            self._expiry.rebuild(now, inbound)
            return len(conns)
