"""FIG. 5 for every queued packet: find or create the connection, translate, follow TCP.

The engine is pure Python over the packet's `bytearray`: no kernel, no sockets, and time
comes from an injectable clock, so every behaviour is testable with crafted packets. The
NFQUEUE worker calls `handle()` per packet (re-injecting the buffer only when the verdict
is ACCEPT_MODIFIED) and `tick()` about twice a second for the timers.

Locking: every entry point holds `director.lock` for its whole span, so one engine may be
shared by several worker threads and the shell always sees whole updates and exact counts.

Choices the design leaves open, and why:

* A real's RST to our SYN is dropped and the connection moved to another real at once,
  but nothing is sent to the new real then: userspace no longer has the client's SYN, so
  the client's own retransmission (about 1 s later) is the first packet the new real
  sees. When no other real can take it, the RST is translated and passed on: an honest
  refusal beats a client retrying into a void.
* A connection stays reassignable until the real answers; `reassign` retransmitted SYNs
  without an answer, or a RST, ditch the real (FIG. 3B counters) and tell the director,
  whose `threshold` logic fails it. The response time a SYN-ACK records is measured from
  the first SYN sent to *that* real, so a real that needed retransmissions looks slow.
  Unanswered SYNs that no other real can take are refused like a reset one, so the
  client learns now instead of after its own connect timeout (about two minutes).
* A SYN that nothing can take (every real of the virtual and its backups failed, out of
  service or full) is answered with a RST from the VIP: the engine turns the SYN itself
  into the RST and hands it back to the kernel, which routes it to the client, as IPVS
  answers with an ICMP unreachable. The client fails at once and visibly, instead of
  retransmitting into a void; `refused` counts these (also under `no-real`). SYNs
  refused for load (`synguard`, `conn-limit`) are dropped silently instead: under a
  flood, a RST per spoofed SYN would only reflect the flood onto others.
* Malformed input never creates state: a SYN with a wrong TCP checksum (`bad-checksum`,
  checked on SYNs only, so established traffic pays nothing) and flag combinations no
  TCP sends (`bad-flags`: SYN with FIN or RST, or neither SYN, RST nor ACK) are dropped,
  counted, before they touch the table. Segments on the established fast path are not
  checked (cost): a checksum error travels on unchanged and the receiver discards it.
* Port reuse (DESIGN §3): every closed connection leaves its tuple toward the real in a
  recently-closed table for TIME_WAIT (60 s, Linux's value). A new connection whose tuple
  toward the chosen real is in that table, or in use by a live connection, gets another
  client port toward the real (Connection.nat_port), translated back on replies. The
  real then sees a tuple it holds no state for, so neither TIME_WAIT nor PAWS can stall
  the SYN. A real's late packet for a tuple in that table is dropped (`stale-reply`)
  rather than leaked to the client untranslated.
* Half-open connections (no completed handshake) expire after at most 75 s, the classic
  connection-establishment timer, long enough for the client's SYN retransmissions
  (1+2+4+8+16+32 s) to reach a reassign; established ones after the virtual's timeout.

Fast path (`fastpath VIRTUAL`, rules.py has the netfilter side). The engine decides each
new connection exactly as above, then leaves the packet unchanged and returns
ACCEPT_MARK with the chosen real's mark in `verdict_mark`; conntrack NAT translates the
connection from there, both ways. The engine sees only what keeps FIG. 5's state exact:
queued, the client's SYNs while unanswered and a real's RST that may refuse the SYN;
copied (NFLOG: the kernel has forwarded them, the verdict is ignored), the real's
SYN-ACK and the FINs and RSTs of established connections. What differs, and why:

* A reassign cannot move a conntrack entry: its NAT is bound to the old real for every
  later packet. So the entry is deleted (conntrack.py) and the packet in hand dropped,
  the retransmitted SYN (`reassigned`) or the real's RST (`reset-absorbed`); the
  client's next SYN opens a fresh entry that takes the new real's mark, one more SYN
  retransmission interval later than in userspace.
* A SYN nothing can take is dropped (`no-real`), not refused with a RST: the RST would
  travel with the SYN's conntrack entry, which would rewrite it.
* No packet or byte counters (the data never reaches the engine), no client port
  remapping (the kernel's NAT remaps on its own when a tuple is in use), and no
  `stale-reply` drops.
* Idle timeout: when a connection's timer fires the engine asks conntrack whether the
  kernel still holds the connection; while it does the object stays (counts stay
  exact), so the idle limit is conntrack's own (nf_conntrack_tcp_timeout_*).
* A kernel connection the engine no longer knows (after `clear conns`, an appliance
  restart) keeps flowing through conntrack; its FIN and RST pass unchanged. Packets of
  a known connection that conntrack lost (`conntrack -F`) are marked again, so its NAT
  is rebuilt toward the same real.
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from ..model.connection import (CLOSED, ESTABLISHED, FIN_WAIT, HALF_OPEN_STATES, KERNEL,
                                SYN_RCVD, SYN_SENT, Connection, flow_key)
from ..model.director import Director
from ..model.real import PhysicalMachine
from ..model.state import State
from ..model.virtual import VirtualMachine
from .conntrack import KernelTable, NoKernel
from .packet import (ACK, FIN, NOT_TCP, PROTO_ICMP, RST, SYN, parse_icmp_error, parse_tcp,
                     reset_reply, rewrite, rewrite_icmp, tcp_checksum_valid)
from .stats import (BAD_CHECKSUM, BAD_FLAGS, CONN_LIMIT, MARK_PENDING, NO_CONNECTION, NO_REAL,
                    NO_VIRTUAL, REASSIGNED, RESET_ABSORBED, STALE_REPLY, SYNGUARD, Stats)
from .timers import TimerWheel

# Verdicts. ACCEPT_MODIFIED tells the worker the buffer changed and must be re-injected;
# ACCEPT_UNCHANGED lets it accept the original without copying anything; ACCEPT_MARK
# accepts it unchanged with the engine's `verdict_mark` set (fast path: conntrack NAT
# translates the connection toward the real that mark stands for).
DROP = 0
ACCEPT_UNCHANGED = 1
ACCEPT_MODIFIED = 2
ACCEPT_MARK = 3

LINGER = 2.0              # closed connections keep translating this long (last ACK, RST races)
TIME_WAIT = 60.0          # how long a closed tuple toward a real is avoided
EMBRYONIC_TIMEOUT = 75.0  # idle limit of a connection whose handshake has not completed
RECENT_MAX = 1 << 18      # recently-closed tuples kept at most (oldest forgotten first)
RESPONSE_WEIGHT = 0.25    # EWMA weight of a new response-time sample (`fastest`)

_CONTROL = SYN | FIN | RST
_ENDS = FIN | RST
_CLIENT_SYN_MASK = SYN | ACK | RST | FIN
_NAT_PORT_LOW = 1024
_NAT_PORT_COUNT = 65536 - _NAT_PORT_LOW
_COMPACT_MIN = 4096       # dead timer entries tolerated before the heap is rebuilt


class Engine:
    """The FIG. 5 data plane over one Director (see the module docstring for policy)."""

    def __init__(self, director: Director, clock: Callable[[], float] = time.monotonic,
                 kernel: KernelTable | None = None) -> None:
        self.director = director
        self.clock = clock
        self.kernel: KernelTable = kernel if kernel is not None else NoKernel()
        self.stats = Stats()
        # Fast path: (real address, real port) -> the mark of its DNAT rule, as installed
        # (the rule manager replaces the dict after each transaction); and the mark of
        # the last ACCEPT_MARK verdict, for the worker.
        self.marks: dict[tuple[int, int], int] = {}
        self.verdict_mark = 0
        self._lock = director.lock
        # Tuple toward a real (the reply key) -> when its connection closed, oldest first.
        self._recent: OrderedDict[int, float] = OrderedDict()
        self._linger: deque[Connection] = deque()
        # Idle timers, checked lazily: a connection that saw traffic since it was filed
        # is filed again under its new deadline. Closed ones stay filed until their
        # second comes (`_dead_timers` of them), or the wheel is rebuilt without them.
        self._timers: TimerWheel[Connection] = TimerWheel(self.clock())
        self._dead_timers = 0
        self._timeouts: dict[VirtualMachine, int] = {}
        self._probes: dict[PhysicalMachine, Connection] = {}
        self._next_nat_port = _NAT_PORT_LOW + random.randrange(_NAT_PORT_COUNT)
        self._vip_generation = -1
        self._vip_addrs: frozenset[int] = frozenset()

    # -- packet path ---------------------------------------------------------------
    def handle(self, buf: bytearray) -> int:
        """FIG. 5 for one IPv4 packet; returns DROP, ACCEPT_UNCHANGED, ACCEPT_MODIFIED
        (then `buf` holds the translated packet) or ACCEPT_MARK (`verdict_mark`). Never
        raises on packet contents. A fast-path connection is never ESTABLISHED (see
        KERNEL), so its packets take the control branches and the established userspace
        path pays nothing for the fast path."""
        fields = parse_tcp(buf)  # reads only the packet: no need to hold the lock
        with self._lock:
            if type(fields) is int:
                return self._not_tcp(buf, fields)
            ihl, size, src, dst, sport, dport, flags = fields
            now = self.clock()
            key = (src << 64) | (sport << 48) | (dst << 16) | dport  # flow_key, inlined
            conns = self.director.conns
            # A packet to a VIP can only be a client's, so each direction probes one
            # table of a million entries, not two (a cache miss each). A client's packet
            # to a VIP since removed (its connections drain) is found by the fallback.
            if self.director.generation != self._vip_generation:
                self._refresh_vips()
            if dst not in self._vip_addrs:
                conn = conns.reply.get(key)
                if conn is not None:
                    if flags & _CONTROL or conn.tcp_state is not ESTABLISHED:
                        verdict = self._real_control(conn, flags, now)
                        if verdict is not None:
                            return verdict
                    return self._forward_out(buf, ihl, size, conn, dst, now)
            conn = conns.inbound.get(key)
            if conn is not None:
                if flags & _CONTROL or conn.tcp_state is not ESTABLISHED:
                    verdict = self._client_control(buf, ihl, conn, src, dst, sport, dport,
                                                   flags, now)
                    if verdict is not None:
                        return verdict
                return self._forward_in(buf, ihl, size, conn, src, now)
            return self._no_connection(buf, ihl, src, dst, sport, dport, flags, key, now)

    def _forward_in(self, buf: bytearray, ihl: int, size: int, conn: Connection, src: int,
                    now: float) -> int:
        """Client -> real: destination to the real, client port to `remap` if remapped.
        `size`: the IP total length (the queue may copy less)."""
        conn.last_seen = now
        virtual = conn.virtual
        virtual.packets_in += 1
        virtual.bytes_in += size
        real = conn.real
        real.packets_in += 1
        real.bytes_in += size
        rewrite(buf, ihl, conn.real_ip, conn.real_port, True)   # destination
        if conn.remap:
            rewrite(buf, ihl, src, conn.remap, False)          # source
        self.stats.translated_in += 1
        return ACCEPT_MODIFIED

    def _forward_out(self, buf: bytearray, ihl: int, size: int, conn: Connection, dst: int,
                     now: float) -> int:
        """Real -> client: source back to the VIP:port the client used, and its own port."""
        conn.last_seen = now
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

    def _refuse(self, buf: bytearray, ihl: int, virtual: VirtualMachine) -> int:
        """Nothing can take this SYN: it is dropped (`no-real`) and the client told so by
        the RST that `buf` becomes (see the module docstring); on the fast path only
        dropped."""
        virtual.no_real_drops += 1
        if virtual.fastpath:
            return self._drop(NO_REAL)
        self.stats.drops[NO_REAL] += 1
        self.stats.refused += 1
        reset_reply(buf, ihl)
        return ACCEPT_MODIFIED

    def _marked(self, conn: Connection) -> int:
        """Fast path: let the kernel translate this packet's conntrack entry toward the
        connection's real (a no-op for an entry whose NAT is already bound)."""
        real = conn.real
        mark = self.marks.get((real.addr, real.port))
        if mark is None:
            # Its DNAT rule is not installed yet (a real bound a moment ago): without it
            # the SYN would reach nobody. The client retransmits.
            return self._drop(MARK_PENDING)
        self.verdict_mark = mark
        self.stats.marked += 1
        return ACCEPT_MARK

    def _observed(self) -> int:
        """A fast-path packet the engine took note of; the kernel translates it."""
        self.stats.observed += 1
        return ACCEPT_UNCHANGED

    # -- TCP state -----------------------------------------------------------------
    def _client_control(self, buf: bytearray, ihl: int, conn: Connection, src: int, dst: int,
                        sport: int, dport: int, flags: int, now: float) -> int | None:
        """State changes driven by the client; a verdict, or None to translate as usual."""
        if _bad_flags(flags):
            return self._drop(BAD_FLAGS)
        if conn.kernel:
            return self._kernel_client(buf, ihl, conn, src, dst, sport, dport, flags, now)
        state = conn.tcp_state
        if flags & _CLIENT_SYN_MASK == SYN:
            if not tcp_checksum_valid(buf, ihl):
                return self._drop(BAD_CHECKSUM)
            if state is CLOSED:
                # The client reuses its port while the old connection lingers: that one
                # is over, and this SYN opens a new connection.
                self._close(conn, now)
                return self._open(buf, ihl, src, dst, sport, dport, now)
            if not conn.answered:
                self.stats.syn_resends += 1
                conn.syn_resends += 1
                if (conn.syn_resends >= conn.real.reassign
                        and not self._reassign(conn, now, reset=False)):
                    self._closing(conn, now)
                    return self._refuse(buf, ihl, conn.virtual)
            return None
        if state is CLOSED:
            return None
        if flags & RST:
            self._closing(conn, now)
        elif flags & FIN:
            self._fin(conn, now, client=True)
        elif state is SYN_RCVD and flags & ACK:
            self.director.conns.set_state(conn, ESTABLISHED)
        return None

    def _kernel_client(self, buf: bytearray, ihl: int, conn: Connection, src: int, dst: int,
                       sport: int, dport: int, flags: int, now: float) -> int:
        """A fast-path connection's client packet: a SYN queued while conntrack has seen
        no answer, a copy of a FIN or RST, or anything conntrack picked up as new (it
        lost the entry), which is marked again toward the same real."""
        state = conn.tcp_state
        if flags & _CLIENT_SYN_MASK == SYN:
            if not tcp_checksum_valid(buf, ihl):
                return self._drop(BAD_CHECKSUM)
            if state is CLOSED:
                self._close(conn, now)
                return self._open(buf, ihl, src, dst, sport, dport, now)
            if conn.moved:
                # The first SYN the real a reassign chose gets: not a retransmission.
                conn.moved = False
                conn.syn_sent_at = now
            elif not conn.answered:
                self.stats.syn_resends += 1
                conn.syn_resends += 1
                if conn.syn_resends >= conn.real.reassign:
                    if self._reassign(conn, now, reset=False):
                        return self._drop(REASSIGNED)
                    self._closing(conn, now)
                    self._forget(conn)
                    return self._refuse(buf, ihl, conn.virtual)
            return self._marked(conn)
        if state is CLOSED:
            return self._observed()
        if flags & RST:
            self._closing(conn, now)
        elif flags & FIN:
            self._fin(conn, now, client=True)
        else:
            return self._marked(conn)
        return self._observed()

    def _real_control(self, conn: Connection, flags: int, now: float) -> int | None:
        """State changes driven by the real; a verdict, or None to translate as usual."""
        if _bad_flags(flags):
            return self._drop(BAD_FLAGS)
        state = conn.tcp_state
        if state is CLOSED:
            return self._observed() if conn.kernel else None
        if flags & RST:
            if not conn.answered and self._reassign(conn, now, reset=True):
                return self._drop(RESET_ABSORBED)
            self._closing(conn, now)
        elif flags & SYN:
            if flags & ACK and not conn.answered:
                self._answered(conn, now)
        elif flags & FIN:
            self._fin(conn, now, client=False)
        return self._observed() if conn.kernel else None

    def _fin(self, conn: Connection, now: float, client: bool) -> None:
        """A FIN from one side; from both, the connection is over."""
        if client:
            conn.fin_in = True
        else:
            conn.fin_out = True
        if conn.fin_in and conn.fin_out:
            self._closing(conn, now)
        elif conn.tcp_state is not FIN_WAIT:
            self.director.conns.set_state(conn, FIN_WAIT)

    def _answered(self, conn: Connection, now: float) -> None:
        """SYN-ACK: the real is alive; record its response time for `fastest`."""
        conn.answered = True
        if conn.tcp_state is SYN_SENT:
            self.director.conns.set_state(conn, KERNEL if conn.kernel else SYN_RCVD)
        real = conn.real
        sample = max(now - conn.syn_sent_at, 1e-6)  # 0.0 would read as "unmeasured"
        if real.response_time == 0.0:
            real.response_time = sample
        else:
            real.response_time += RESPONSE_WEIGHT * (sample - real.response_time)
        self._end_probe(conn)
        self.director.note_answer(real)

    def _closing(self, conn: Connection, now: float) -> None:
        """FIN both ways or RST: keep translating for LINGER seconds, then remove."""
        self.director.conns.set_state(conn, CLOSED)
        conn.closing_at = now + LINGER
        self._linger.append(conn)

    # -- connections ---------------------------------------------------------------
    def _no_connection(self, buf: bytearray, ihl: int, src: int, dst: int, sport: int,
                       dport: int, flags: int, key: int, now: float) -> int:
        """FIG. 5 step 506 'no': a client SYN opens a connection; anything else toward a
        VIP is dropped; traffic of reals with others is none of our business."""
        if dst not in self._vips():
            if key in self._recent:
                return self._drop(STALE_REPLY)
            return self._unchanged()
        if flags & _CLIENT_SYN_MASK != SYN:
            if _bad_flags(flags):
                return self._drop(BAD_FLAGS)
            if flags & _ENDS:
                virtual = self.director.lookup_virtual(src, dst, dport)
                if virtual is not None and virtual.fastpath:
                    # The end of a kernel connection the engine does not know (cleared,
                    # or from before a restart): conntrack translates it, if it has it.
                    return self._observed()
            return self._drop(NO_CONNECTION)
        if not tcp_checksum_valid(buf, ihl):
            return self._drop(BAD_CHECKSUM)
        return self._open(buf, ihl, src, dst, sport, dport, now)

    def _open(self, buf: bytearray, ihl: int, src: int, dst: int, sport: int, dport: int,
              now: float) -> int:
        """FIG. 5 steps 510-520 for a client SYN (its checksum already verified)."""
        director = self.director
        table = director.conns.inbound
        if len(table) >= director.settings.max_conns:
            return self._drop(CONN_LIMIT)
        virtual = director.lookup_virtual(src, dst, dport, count=True)
        if virtual is None:
            return self._drop(NO_VIRTUAL)
        if _synguard_full(virtual):
            virtual.synguard_drops += 1
            return self._drop(SYNGUARD)
        decision = director.decide_for(virtual, src, now)
        real, served = decision.real, decision.served_by
        if real is None or served is None:
            return self._refuse(buf, ihl, virtual)
        if served is not virtual and _synguard_full(served):
            served.synguard_drops += 1
            return self._drop(SYNGUARD)
        kernel = virtual.fastpath  # one mode per group (model/fastpath.py): served's too
        if kernel and (real.addr, real.port) not in self.marks:
            return self._drop(MARK_PENDING)
        # The model's own address and port objects: no int per connection for them.
        conn = Connection(src, sport, virtual.addr, virtual.port or dport, served, real, now)
        if kernel:
            conn.kernel = True  # the kernel's NAT remaps the client port if it must
        else:
            port = self._nat_port(conn.real_ip, conn.real_port, src, sport)
            if port != sport:
                conn.remap = port
        director.conns.add(conn)
        if len(table) > self.stats.peak_conns:
            self.stats.peak_conns = len(table)
        self._start_probe(conn)
        self._timers.add(conn, now + self._timeout(conn))
        self.stats.conns_created += 1
        if kernel:
            self.stats.fastpath_conns += 1
            return self._marked(conn)
        return self._forward_in(buf, ihl, (buf[2] << 8) | buf[3], conn, src, now)

    def _reassign(self, conn: Connection, now: float, reset: bool) -> bool:
        """Ditch the real that did not answer (or reset) the SYN; False when no other
        real can take the connection, which then stays where it is."""
        old = conn.real
        self._end_probe(conn)
        self.director.note_failure(old, now)
        conn.syn_resends = 0
        decision = self.director.decide(conn.foreign_ip, conn.virtual_ip, conn.virtual_port,
                                        now, exclude=old)
        new = decision.real
        if new is None:
            return False
        if reset:
            old.reset_reassigns += 1
        else:
            old.noanswer_reassigns += 1
        if conn.kernel:
            # Its conntrack entry stays bound to the old real: the next SYN must open a
            # new one (the module docstring).
            self._forget(conn)
            conn.moved = True
            nat_port = conn.foreign_port
        else:
            # The old real may hold a half-open socket for this tuple: avoid it a while.
            self._remember(conn.reply_key(), now)
            nat_port = self._nat_port(new.addr, new.port or conn.virtual_port,
                                      conn.foreign_ip, conn.foreign_port)
        self.director.conns.move(conn, new, decision.served_by, nat_port)
        conn.syn_sent_at = now
        self._start_probe(conn)
        self.stats.conns_reassigned += 1
        return True

    def _nat_port(self, real_ip: int, real_port: int, client_ip: int, port: int) -> int:
        """The client port to use toward the real: the client's own unless that tuple is
        live or closed less than TIME_WAIT ago (DESIGN §3 port reuse)."""
        reply, recent = self.director.conns.reply, self._recent
        base = flow_key(real_ip, real_port, client_ip, 0)
        if base | port not in reply and base | port not in recent:
            return port
        self.stats.port_remaps += 1
        for _ in range(_NAT_PORT_COUNT):
            candidate = self._next_nat_port
            self._next_nat_port = candidate + 1 if candidate < 65535 else _NAT_PORT_LOW
            if base | candidate not in reply and base | candidate not in recent:
                return candidate
        return port  # every port toward this real is taken: nothing better exists

    def _forget(self, conn: Connection) -> None:
        """Fast path: make the kernel stop translating this connection."""
        self.kernel.delete(conn.foreign_ip, conn.foreign_port, conn.virtual_ip,
                           conn.virtual_port)

    def _close(self, conn: Connection, now: float) -> None:
        """Remove a connection now (idempotent), remembering its tuple toward the real
        (userspace only: the kernel keeps its own TIME_WAIT for fast-path tuples)."""
        conns = self.director.conns
        if conns.inbound.get(conn.in_key) is not conn:
            return
        conns.remove(conn)
        if not conn.kernel:
            self._remember(conn.reply_key(), now)
        self._end_probe(conn)
        self._dead_timers += 1
        self.stats.conns_closed += 1
        director = self.director
        if (director.virtuals.get(conn.virtual.sid) is not conn.virtual
                or director.reals.get(conn.real.sid) is not conn.real):
            # Its virtual or real was removed (or replaced by `reload`): netfilter kept
            # queueing its traffic for it alone (rules.desired_rules); let them go.
            director.changed()

    def _remember(self, reply_key: int, now: float) -> None:
        recent = self._recent
        recent.pop(reply_key, None)
        recent[reply_key] = now
        if len(recent) > RECENT_MAX:
            recent.popitem(last=False)

    def _start_probe(self, conn: Connection) -> None:
        """A TESTING real takes exactly one connection as its test (FIG. 3B)."""
        real = conn.real
        if real.state is State.TESTING:
            real.testing = True
            self._probes[real] = conn

    def _end_probe(self, conn: Connection) -> None:
        """The probe is over (answered, ditched or gone): let the real be tested again."""
        real = conn.real
        if self._probes.get(real) is conn:
            del self._probes[real]
            if real.state is State.TESTING:
                real.testing = False

    def _vips(self) -> frozenset[int]:
        """VIP addresses, recomputed only when the model changed."""
        if self.director.generation != self._vip_generation:
            self._refresh_vips()
        return self._vip_addrs

    def _refresh_vips(self) -> None:
        director = self.director
        self._vip_addrs = frozenset(addr for addr, _port in director.by_dest)
        self._vip_generation = director.generation

    # -- ICMP and other protocols --------------------------------------------------
    def _not_tcp(self, buf: bytearray, reason: int) -> int:
        if reason != NOT_TCP:
            return self._drop(reason)
        if buf[9] == PROTO_ICMP:
            return self._icmp(buf)
        if int.from_bytes(buf[16:20], "big") in self._vips():
            return self._drop(NOT_TCP)
        return self._unchanged()

    def _icmp(self, buf: bytearray) -> int:
        """ICMP errors quoting a translated packet are translated too, so path-MTU
        discovery and unreachables work through the director; other ICMP passes."""
        fields = parse_icmp_error(buf)
        if type(fields) is int:
            return self._unchanged()
        ihl, _osrc, _odst, _inner, _inner_ihl, isrc, idst, isport, idport = fields
        # The quoted packet flowed the way the error did not: look it up as if in flight.
        key = flow_key(idst, idport, isrc, isport)
        conns = self.director.conns
        conn = conns.inbound.get(key)
        if conn is not None:
            # Quotes our VIP -> client reply: the error belongs to the real.
            rewrite_icmp(buf, ihl, outer_dst=conn.real_ip,
                         inner_src=(conn.real_ip, conn.real_port),
                         inner_dst=(conn.foreign_ip, conn.remap) if conn.remap else None)
        else:
            conn = conns.reply.get(key)
            if conn is None:
                return self._unchanged()
            # Quotes a client -> real packet: show the client an error about the VIP.
            rewrite_icmp(buf, ihl, outer_src=conn.virtual_ip,
                         inner_dst=(conn.virtual_ip, conn.virtual_port),
                         inner_src=(conn.foreign_ip, conn.foreign_port) if conn.remap else None)
        self.stats.icmp_translated += 1
        return ACCEPT_MODIFIED

    # -- timers --------------------------------------------------------------------
    def tick(self, now: float | None = None) -> None:
        """Periodic work (the worker calls it about every 0.5 s): FAILED reals whose retry
        time passed go TESTING, lingering and idle connections go, old tuples expire."""
        with self._lock:
            if now is None:
                now = self.clock()
            self.director.tick(now)
            self._notice_timeout_changes(now)
            linger = self._linger
            while linger and linger[0].closing_at <= now:
                self._close(linger.popleft(), now)
            self._expire_idle(now)
            recent = self._recent
            cutoff = now - TIME_WAIT
            while recent:
                reply_key, closed_at = next(iter(recent.items()))
                if closed_at > cutoff:
                    break
                del recent[reply_key]

    def _timeout(self, conn: Connection) -> float:
        state = conn.tcp_state
        if state is CLOSED:
            return LINGER
        timeout = conn.virtual.timeout
        if state in HALF_OPEN_STATES and timeout > EMBRYONIC_TIMEOUT:
            return EMBRYONIC_TIMEOUT
        return timeout

    def _expire_idle(self, now: float) -> None:
        timers, inbound = self._timers, self.director.conns.inbound
        for conn in timers.due(now):
            if inbound.get(conn.in_key) is not conn:
                self._dead_timers = max(0, self._dead_timers - 1)
                continue
            deadline = conn.last_seen + self._timeout(conn)
            if deadline <= now and conn.kernel and conn.tcp_state is not CLOSED \
                    and self.kernel.alive(conn.foreign_ip, conn.foreign_port,
                                          conn.virtual_ip, conn.virtual_port):
                # Its data never reaches the engine; the kernel still holds it.
                conn.last_seen = now
                deadline = now + self._timeout(conn)
            if deadline <= now:
                self._close(conn, now)
                self._dead_timers -= 1  # its entry is already gone from the wheel
                self.stats.conns_timed_out += 1
            else:
                timers.add(conn, deadline)
        if self._dead_timers > _COMPACT_MIN and self._dead_timers > len(timers) // 2:
            self._rebuild_timers(now)

    def _notice_timeout_changes(self, now: float) -> None:
        """A shortened `timeout` must apply to existing connections now, not when their
        old, longer deadline comes up: rebuild the timers when any timeout shrank."""
        timeouts = {v: v.timeout for v in self.director.virtuals.values()}
        shrunk = any(t < self._timeouts.get(v, t) for v, t in timeouts.items())
        self._timeouts = timeouts
        if shrunk:
            self._rebuild_timers(now)

    def _rebuild_timers(self, now: float) -> None:
        self._timers = timers = TimerWheel(now)
        for conn in self.director.conns.inbound.values():
            timers.add(conn, conn.last_seen + self._timeout(conn))
        self._dead_timers = 0

    # -- operator actions ----------------------------------------------------------
    def adopt(self, director: Director) -> None:
        """`reload`: go on with the model rebuilt from the startup-config, keeping every
        live connection and the counters. A connection whose virtual and real exist in
        the new model (same ids) moves onto them, so their gauges include it; any other
        keeps flowing on its old objects until it ends, as after `no virtual`. Health
        (FAILED, TESTING) starts afresh with the new objects, so no probe survives.
        The caller holds the lock, which both models share."""
        old = self.director
        table = director.conns
        for conn in old.conns:
            virtual = director.virtuals.get(conn.virtual.sid)
            real = director.reals.get(conn.real.sid)
            old.conns.remove(conn)
            if virtual is not None and real is not None:
                conn.virtual, conn.real = virtual, real
            table.add(conn)
            conn.virtual.conns_total -= 1  # carried over, not opened: totals stay
            conn.real.total_conns -= 1
        self.director = director
        self._lock = director.lock
        self._probes.clear()
        self._timeouts = {}
        self._vip_generation = -1

    def clear_conns(self) -> int:
        """`clear conns`: drop every connection as if closed; returns how many. The kernel
        forgets fast-path ones too, so they stop flowing like userspace ones."""
        with self._lock:
            now = self.clock()
            conns = list(self.director.conns.inbound.values())
            for conn in conns:
                if conn.kernel:
                    self._forget(conn)
                self._close(conn, now)
            self._rebuild_timers(now)
            return len(conns)


def _bad_flags(flags: int) -> bool:
    """A combination no TCP sends: SYN with FIN or RST, or a segment that is neither a
    SYN nor a RST and yet acknowledges nothing."""
    if flags & SYN:
        return bool(flags & _ENDS)
    return not flags & (ACK | RST)


def _synguard_full(virtual: VirtualMachine) -> bool:
    return bool(virtual.synguard) and virtual.half_open >= virtual.synguard
