"""FIG. 5 for every queued packet: find or create the connection, translate, follow TCP.

Pure Python over the packet's `bytearray` with an injectable clock, so every behaviour is
testable with crafted packets. The NFQUEUE worker calls `handle()` per packet and `tick()`
about twice a second; every entry point holds `director.lock` for its whole span, so
worker threads and the shell share one engine and always see whole updates. Policy for
refused, reset and unanswered SYNs and malformed input: docs/design.rst, "Packet flow";
what the fast path does differently: fastpath.py and "Fast path".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..model.connection import (
    CLOSED,
    ESTABLISHED,
    FASTPATH,
    FIN_IN,
    FIN_OUT,
    FIN_WAIT,
    SYN_RCVD,
    SYN_SENT,
    Connection,
)
from ..model.director import Director
from ..model.health import end_probe, start_probe
from ..model.predictors import STICKY_LIMIT, expire_sticky, sticky_closed
from ..model.real import PhysicalMachine
from ..model.state import State
from ..model.virtual import VirtualMachine
from .carried import ANSWERED, CLOSED_EVENT, MOVED, OPENED, CarriedConnections
from .conntrack import KernelTable, NoKernel
from .dispatch import Dispatch
from .expiry import Expiry
from .fastpath import FastPath
from .icmp_errors import IcmpErrors
from .packet import (
    ACK,
    Buffer,
    FIN,
    RST,
    SYN,
    parse_tcp,
    reset_reply,
    rewrite,
    tcp_checksum_valid,
)
from .ports import ClientPorts
from .replies import RealReplies
from .stats import (
    BAD_CHECKSUM,
    BAD_FLAGS,
    CONN_LIMIT,
    MARK_PENDING,
    NO_CONNECTION,
    NO_REAL,
    NO_VIRTUAL,
    OUT_OF_WINDOW,
    RESET_ABSORBED,
    RST_IN_WINDOW,
    STALE_REPLY,
    SYNGUARD,
    Stats,
)
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
# Half-open connections a full table gives up at once for a new SYN: one walk of the
# timers pays for the next SYNs too.
EVICT_BATCH = 64

_CONTROL = SYN | FIN | RST
_ENDS = FIN | RST
_CLIENT_SYN_MASK = SYN | ACK | RST | FIN
# How far from the sequence a side expects a FIN may lie, and a RST beyond it, and still
# be in window (docs/design.rst, "Sequence checks"): more than any receive window a
# default Linux stack opens, far less than the 2**32 a blind attacker must cover.
SEQ_WINDOW = 1 << 22
_SEQ_MASK = 0xFFFFFFFF
_BOTH_FINS = FIN_IN | FIN_OUT
_IN_SERVICE = State.IN_SERVICE


class Engine(IcmpErrors, CarriedConnections, RealReplies):
    """The FIG. 5 data plane over one Director. `kernel`: conntrack's table, for the fast
    path (none by default). What it does with packets that are not TCP, with connections
    it did not open and with a real's packets of none is in its mixins (icmp_errors.py,
    carried.py, replies.py, which also keeps the model's addresses)."""

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
        """FIG. 5 for one IPv4 packet; returns DROP, ACCEPT_UNCHANGED, ACCEPT_MODIFIED
        (then `buf` holds the translated packet, to its IP total length) or ACCEPT_MARK
        (`verdict_mark`). Never raises on packet contents. A fast-path connection is never
        ESTABLISHED (see FASTPATH), so its packets take the control branches and the
        established userspace path pays nothing for the fast path."""
        fields = parse_tcp(buf)  # reads only the packet: no need to hold the lock
        # Not `with`: its __exit__ call costs a tenth of a microsecond a packet.
        lock = self._lock
        lock.acquire()
        try:
            if type(fields) is int:
                return self._not_tcp(buf, fields)
            ihl, size, src, dst, sport, dport, flags, seq, ack = fields
            now = self.clock()
            key = (src << 64) | (sport << 48) | (dst << 16) | dport  # flow_key, inlined
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
                    if flags & _CONTROL or conn.tcp_state is not ESTABLISHED:
                        verdict = self._real_control(conn, flags, seq, now)
                        if verdict is not None:
                            return verdict
                    return self._forward_out(buf, ihl, size, conn, dst, ack, now)
            conn = conns.inbound.get(key)
            if conn is not None:
                if flags & _CONTROL or conn.tcp_state is not ESTABLISHED:
                    verdict = self._client_control(buf, ihl, conn, flags, seq, now)
                    if verdict is not None:
                        return verdict
                return self._forward_in(buf, ihl, size, conn, src, ack, now)
            if to_vip and flags & _CLIENT_SYN_MASK == SYN:
                if not tcp_checksum_valid(buf, ihl):
                    return self._drop(BAD_CHECKSUM)
                return self._open(buf, ihl, size, src, dst, sport, dport, key, now)
            return self._no_connection(buf, ihl, src, dst, dport, flags, key, now)
        finally:
            lock.release()

    def _forward_in(self, buf: Buffer, ihl: int, size: int, conn: Connection, src: int,
                    ack: int, now: float) -> int:
        """Client -> real: destination to the real, client port to `remap` if remapped.
        `size`: the IP total length (the queue may copy less); `ack`: the packet's
        acknowledgment number, the sequence the real's RST must carry."""
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
        rewrite(buf, ihl, conn.real_ip, conn.real_port, True)   # destination
        if conn.remap:
            rewrite(buf, ihl, src, conn.remap, False)          # source
        self.stats.translated_in += 1
        return ACCEPT_MODIFIED

    def _forward_out(self, buf: Buffer, ihl: int, size: int, conn: Connection, dst: int,
                     ack: int, now: float) -> int:
        """Real -> client: source back to the VIP:port the client used, and its own port."""
        conn.last_seen = now
        conn.ack_out = ack
        virtual = conn.virtual
        virtual.packets_out += 1
        virtual.bytes_out += size
        real = conn.real
        real.packets_out += 1
        real.bytes_out += size
        rewrite(buf, ihl, conn.virtual_ip, conn.virtual_port, False)   # source
        if conn.remap:
            rewrite(buf, ihl, dst, conn.foreign_port, True)               # destination
        self.stats.translated_out += 1
        return ACCEPT_MODIFIED

    def _drop(self, reason: int) -> int:
        self.stats.drops[reason] += 1
        return DROP

    def _unchanged(self) -> int:
        self.stats.unchanged += 1
        return ACCEPT_UNCHANGED

    def _refuse(self, buf: Buffer, ihl: int, virtual: VirtualMachine) -> int:
        """Nothing can take this SYN: it is dropped (`no-real`) and the client told so by
        the RST that `buf` becomes; on the fast path only dropped, as the RST would
        travel with the SYN's conntrack entry, which would rewrite it."""
        virtual.no_real_drops += 1
        if virtual.fastpath:
            return self._drop(NO_REAL)
        self.stats.drops[NO_REAL] += 1
        self.stats.refused += 1
        reset_reply(buf, ihl)
        return ACCEPT_MODIFIED

    # -- TCP state -----------------------------------------------------------------
    def _client_control(self, buf: Buffer, ihl: int, conn: Connection, flags: int,
                        seq: int, now: float) -> int | None:
        """State changes driven by the client; a verdict, or None to translate as usual.
        A fast-path connection's client packet is a SYN queued while conntrack has seen no
        answer, a copy of a FIN or RST, or anything conntrack picked up as new (it lost
        the entry), which is marked again toward the same real."""
        if _BAD_FLAGS[flags]:
            return self._drop(BAD_FLAGS)
        if flags & _CLIENT_SYN_MASK == SYN:
            return self._client_syn(buf, ihl, conn, now)
        state = conn.tcp_state
        if state is not CLOSED:
            if flags & _ENDS and conn.answered and not conn.fastpath \
                    and not conn.virtual.dispatched:   # the real's ACKs never pass here
                verdict = self._out_of_sequence(flags, seq, conn.ack_out)
                if verdict is not None:
                    return verdict
            if flags & RST:
                self._closing(conn, now)
            elif flags & FIN:
                self._fin(conn, now, True)
            elif conn.fastpath:
                return self._fastpath.mark(conn)
            elif state is SYN_SENT and flags & ACK and conn.virtual.dispatched:
                self._dispatched_answer(conn, now)
            elif state is SYN_RCVD and flags & ACK:
                self.director.conns.set_state(conn, ESTABLISHED)
        return self._fastpath.noted() if conn.fastpath else None

    def _client_syn(self, buf: Buffer, ihl: int, conn: Connection,
                    now: float) -> int | None:
        """A client's SYN on a known connection: a new connection on a closed one's
        tuple, or a retransmission, which after `reassign` of them moves the connection
        (or refuses the client when no other real can take it)."""
        if not tcp_checksum_valid(buf, ihl):
            return self._drop(BAD_CHECKSUM)
        if conn.tcp_state is CLOSED:
            # The client reuses its port while the old connection lingers: that one
            # is over, and this SYN opens a new connection.
            self._close(conn, now)
            return self._open(buf, ihl, (buf[2] << 8) | buf[3], conn.foreign_ip,
                              conn.virtual_ip, conn.foreign_port, conn.virtual_port,
                              conn.in_key, now)
        if conn.moved:
            # The first SYN the real a reassign chose gets: not a retransmission.
            conn.moved = False
            conn.syn_sent_at = now
        elif not conn.answered:
            self.stats.syn_resends += 1
            conn.syn_resends += 1
            if conn.syn_resends >= conn.real.reassign:
                if self._reassign(conn, now, reset=False):
                    if conn.fastpath:
                        return self._fastpath.reassigned()
                else:
                    self._closing(conn, now)
                    if conn.fastpath:
                        self._fastpath.forget(conn)
                    return self._refuse(buf, ihl, conn.virtual)
        return self._fastpath.mark(conn) if conn.fastpath else None

    def _real_control(self, conn: Connection, flags: int, seq: int,
                      now: float) -> int | None:
        """State changes driven by the real; a verdict, or None to translate as usual.
        Before the real answered, a RST is its refusal of the SYN: nothing to check its
        sequence against (and it moves the connection, see _reassign)."""
        if _BAD_FLAGS[flags]:
            return self._drop(BAD_FLAGS)
        if conn.tcp_state is not CLOSED:
            if flags & _ENDS and conn.answered and not conn.fastpath:
                verdict = self._out_of_sequence(flags, seq, conn.ack_in)
                if verdict is not None:
                    return verdict
            if flags & RST:
                if not conn.answered and self._reassign(conn, now, reset=True):
                    return self._drop(RESET_ABSORBED)
                self._closing(conn, now)
            elif flags & SYN:
                if flags & ACK and not conn.answered:
                    conn.ack_in = (seq + 1) & _SEQ_MASK  # until the client's ACK says so
                    self._answered(conn, now)
            elif flags & FIN:
                self._fin(conn, now, False)
        return self._fastpath.noted() if conn.fastpath else None

    def _dispatched_answer(self, conn: Connection, now: float) -> None:
        """Dispatched: the real's SYN-ACK goes to the client, not through us; the client's
        ACK of it is how we learn that the real answered (docs/design.rst, "Scale-out")."""
        self._answered(conn, now)
        self.director.conns.set_state(conn, ESTABLISHED)

    def _out_of_sequence(self, flags: int, seq: int, expected: int) -> int | None:
        """DROP for a RST or FIN an off-path sender may have guessed, None for one its
        peer can have sent (docs/design.rst, "Sequence checks"). `expected`: the last
        acknowledgment the other side sent. A RST must carry exactly that sequence (RFC
        5961): one merely in window is dropped rather than answered with a challenge
        ACK, as the peer's next segment draws the exact RST from a closed endpoint. A
        FIN may lie a window either side (retransmitted, or after unacknowledged data)."""
        offset = (seq - expected) & _SEQ_MASK
        if flags & RST:
            if offset == 0:
                return None
            return self._drop(RST_IN_WINDOW if offset < SEQ_WINDOW else OUT_OF_WINDOW)
        if offset < SEQ_WINDOW or offset > _SEQ_MASK - SEQ_WINDOW:
            return None
        return self._drop(OUT_OF_WINDOW)

    def _fin(self, conn: Connection, now: float, client: bool) -> None:
        """A FIN from one side; from both, the connection is over. A dispatched real's
        FIN never passes here: the client's ends it, and the table forwards the rest."""
        if client:
            conn.bits |= _BOTH_FINS if conn.virtual.dispatched else FIN_IN
        else:
            conn.bits |= FIN_OUT
        if conn.bits & _BOTH_FINS == _BOTH_FINS:
            self._closing(conn, now)
        elif conn.tcp_state is not FIN_WAIT:
            self.director.conns.set_state(conn, FIN_WAIT)

    def _answered(self, conn: Connection, now: float) -> None:
        """SYN-ACK: the real is alive; record its response time for `fastest`."""
        conn.answered = True
        if conn.tcp_state is SYN_SENT:
            self.director.conns.set_state(conn, FASTPATH if conn.fastpath else SYN_RCVD)
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

    def _closing(self, conn: Connection, now: float) -> None:
        """FIN both ways or RST: keep translating for a while (LINGER), then remove."""
        self.director.conns.set_state(conn, CLOSED)
        self._expiry.linger(conn, now)

    # -- connections ---------------------------------------------------------------
    def _no_connection(self, buf: Buffer, ihl: int, src: int, dst: int, dport: int,
                       flags: int, key: int, now: float) -> int:
        """FIG. 5 step 506 'no' for all but a client's SYN to a VIP (which `handle` hands
        to `_open`): anything else toward a VIP is dropped; traffic of reals with others
        is none of our business, but a reply we cannot translate is dropped (replies.py)."""
        if dst not in self._vips():
            if key in self._ports:
                return self._drop(STALE_REPLY)
            return self._real_reply(buf, ihl, flags, key)
        if _BAD_FLAGS[flags]:
            return self._drop(BAD_FLAGS)
        virtual = self.director.lookup_virtual(src, dst, dport)
        if virtual is not None and virtual.fastpath:
            if flags & _ENDS:
                # The end of a fast-path connection the engine does not know
                # (cleared, or from before a restart): conntrack translates it, if it
                # has it.
                return self._fastpath.noted()
            return self._drop(NO_CONNECTION)
        if virtual is not None and virtual.dispatched:
            # ECMP moved the flow here from another director, or its connection
            # ended here: it goes where the Maglev table says, as it went there.
            verdict = self._dispatch.stranger(virtual, key)
            if verdict is not None:
                return verdict
        if virtual is None or flags & RST or self._resets_left <= 0:
            return self._drop(NO_CONNECTION)
        # Nobody knows this connection (from before a restart, or long closed): a
        # RST tells the client now, as a closed port would, rather than letting it
        # retransmit into silence for minutes.
        self.stats.unknown_resets += 1
        return self._reset(buf, ihl, NO_CONNECTION)

    def _open(self, buf: Buffer, ihl: int, size: int, src: int, dst: int, sport: int,
              dport: int, key: int, now: float) -> int:
        """FIG. 5 steps 510-520 for a client SYN (its checksum already verified). `size`:
        its IP total length; `key`: its flow key, the new connection's `in_key`. What
        every SYN pays is written out here rather than spread over small calls (a
        Python call costs about as much as a dict insert into the table)."""
        director = self.director
        conns = director.conns
        table = conns.inbound
        if len(table) >= director.settings.max_conns and not self._evict_half_open(now):
            return self._drop(CONN_LIMIT)
        virtual = director.lookup_virtual(src, dst, dport, count=True)
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
        if fastpath and not self._fastpath.ready(real) \
                or served.dispatched and not self._dispatch.ready(real):
            return self._drop(MARK_PENDING)
        # The model's own address and port objects: no int per connection for them.
        conn = Connection(src, sport, virtual.addr, virtual.port or dport, served, real, now)
        if fastpath:
            conn.fastpath = True  # the kernel's NAT remaps the client port if it must
        elif not served.dispatched:  # dispatched: nothing is translated
            port = self._ports.choose(conns.reply, conn.real_ip, conn.real_port, src, sport)
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
        return self._forward_in(buf, ihl, size, conn, src, 0, now)

    def _evict_half_open(self, now: float) -> bool:
        """The table is full: give up its oldest half-open connections (a SYN flood's,
        most likely) rather than refuse a new client; established ones are never given
        up. False when there is none (docs/design.rst, "Packet flow")."""
        victims = self._expiry.oldest_half_open(now, self.director.conns.inbound,
                                                EVICT_BATCH)
        for conn in victims:
            if conn.fastpath:
                self._fastpath.forget(conn)
            self._close(conn, now)
        self.stats.half_open_evicted += len(victims)
        return bool(victims)

    def _reassign(self, conn: Connection, now: float, reset: bool) -> bool:
        """Ditch the real that did not answer (or reset) the SYN; False when no other
        real can take the connection, which then stays where it is."""
        old = conn.real
        self._end_probe(conn)
        self.director.note_failure(old, now)
        conn.syn_resends = 0
        decision = self.director.decide(conn.foreign_ip, conn.virtual_ip, conn.virtual_port,
                                        now, exclude=old, flow=conn.in_key)
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
                                          conn.foreign_port)
        self.director.conns.move(conn, new, decision.served_by, nat_port)
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
            expiry.notice_timeouts(director.virtuals.values(), now, inbound)
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


def _bad_flags(flags: int) -> bool:
    """A combination no TCP sends: SYN with FIN or RST, or a segment that is neither a
    SYN nor a RST and yet acknowledges nothing."""
    if flags & SYN:
        return bool(flags & _ENDS)
    return not flags & (ACK | RST)


# _bad_flags of every flags byte: an index per control packet instead of a call.
_BAD_FLAGS = tuple(_bad_flags(flags) for flags in range(256))
