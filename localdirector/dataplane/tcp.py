"""TCP's own way through FIG. 5 (docs/design.rst, "Packet flow" and "Sequence checks"):
the state changes the client's and the real's control segments drive (SYN, SYN-ACK,
FIN, RST), the sequence checks of a RST or FIN, reassigning an unanswered or reset
SYN's connection, and what a segment of no connection gets. Mixed into Engine
(engine.py), whose shared FIG. 5 steps (`_open`, `_reassign`, `_close`, `_answered`)
it calls, as udp.py does for UDP flows."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..model.connection import (
    CLOSED,
    ESTABLISHED,
    FIN_IN,
    FIN_OUT,
    FIN_WAIT,
    SYN_RCVD,
    SYN_SENT,
    Connection,
)
from ..model.serverid import UDP_SERVICE
from .packet import ACK, FIN, RST, SYN, Buffer, ip_total, reset_reply, tcp_checksum_valid
from .stats import (
    BAD_CHECKSUM,
    BAD_FLAGS,
    NO_CONNECTION,
    NO_REAL,
    OUT_OF_WINDOW,
    RESET_ABSORBED,
    RST_IN_WINDOW,
    STALE_REPLY,
)
from .verdicts import ACCEPT_MODIFIED

if TYPE_CHECKING:
    from ..model.director import Director
    from ..model.virtual import VirtualMachine
    from .dispatch import Dispatch
    from .expiry import Expiry
    from .fastpath import FastPath
    from .ports import ClientPorts
    from .stats import Stats

CONTROL = SYN | FIN | RST             # flags that take a segment off the established path
_ENDS = FIN | RST
CLIENT_SYN_MASK = SYN | ACK | RST | FIN  # & flags == SYN: a client's SYN
# How far from the sequence a side expects a FIN may lie, and a RST beyond it, and still
# be in window (docs/design.rst, "Sequence checks"): more than any receive window a
# default Linux stack opens, far less than the 2**32 a blind attacker must cover.
SEQ_WINDOW = 1 << 22
_SEQ_MASK = 0xFFFFFFFF
_BOTH_FINS = FIN_IN | FIN_OUT
# Half-open connections a full table gives up at once for a new SYN: one walk of the
# timers pays for the next SYNs too.
EVICT_BATCH = 64


class TcpState:
    """The TCP state machine of a connection, as the engine follows it."""

    director: Director
    stats: Stats
    _expiry: Expiry
    _fastpath: FastPath
    _dispatch: Dispatch
    _ports: ClientPorts
    _resets_left: int

    if TYPE_CHECKING:
        def _drop(self, reason: int) -> int: ...

        def _vips(self) -> frozenset[int]: ...

        def _open(self, buf: Buffer, ihl: int, size: int, src: int, dst: int, sport: int,
                  dport: int, key: int, now: float, udp: bool = False) -> int: ...

        def _close(self, conn: Connection, now: float) -> None: ...

        def _reassign(self, conn: Connection, now: float, reset: bool) -> bool: ...

        def _answered(self, conn: Connection, now: float) -> None: ...

        def _reset(self, buf: Buffer, ihl: int, reason: int) -> int: ...

        def _real_reply(self, buf: Buffer, ihl: int, flags: int, key: int) -> int: ...

    def _client_control(self, buf: Buffer, ihl: int, conn: Connection, flags: int,
                        seq: int, now: float) -> int | None:
        """State changes driven by the client; a verdict, or None to translate as usual.
        A fast-path connection's client packet is a SYN queued while conntrack has seen no
        answer, a copy of a FIN or RST, or anything conntrack picked up as new (it lost
        the entry), which is marked again toward the same real."""
        if _BAD_FLAGS[flags]:
            return self._drop(BAD_FLAGS)
        if flags & CLIENT_SYN_MASK == SYN:
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
            return self._open(buf, ihl, ip_total(buf), conn.foreign_ip,
                              conn.virtual_ip, conn.foreign_port, conn.virtual_port,
                              conn.in_key, now)
        if conn.moved:
            # The first SYN the real a reassign chose gets: not a retransmission.
            conn.moved = False
            conn.syn_sent_at = now
        elif not conn.answered:
            self.stats.syn_resends += 1
            conn.syn_resends += 1
            reassign = conn.real.reassign
            if conn.syn_resends >= reassign and reassign:   # 0: the client's retries
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
        FIN never passes here: the client's ends it, and the table forwards the rest.
        Nor does a fast-path connection's first FIN: the kernel copies a FIN only once
        both sides sent one (iptables.end_rules), so its copy ends the connection."""
        if conn.fastpath:
            conn.bits |= _BOTH_FINS
        elif client:
            conn.bits |= _BOTH_FINS if conn.virtual.dispatched else FIN_IN
        else:
            conn.bits |= FIN_OUT
        if conn.bits & _BOTH_FINS == _BOTH_FINS:
            self._closing(conn, now)
        elif conn.tcp_state is not FIN_WAIT:
            self.director.conns.set_state(conn, FIN_WAIT)

    def _closing(self, conn: Connection, now: float) -> None:
        """FIN both ways or RST: keep translating for the real's `delay`, then remove."""
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

    def _refuse(self, buf: Buffer, ihl: int, virtual: VirtualMachine) -> int:
        """Nothing can take this SYN: it is dropped (`no-real`) and the client told so by
        the RST that `buf` becomes; on the fast path only dropped, as the RST would
        travel with the SYN's conntrack entry, which would rewrite it. A UDP datagram is
        only dropped: an ICMP error per datagram would reflect a spoofed flood."""
        virtual.no_real_drops += 1
        if virtual.fastpath or virtual.service & UDP_SERVICE:
            return self._drop(NO_REAL)
        self.stats.drops[NO_REAL] += 1
        self.stats.refused += 1
        reset_reply(buf, ihl)
        return ACCEPT_MODIFIED

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


def _bad_flags(flags: int) -> bool:
    """A combination no TCP sends: SYN with FIN or RST, or a segment that is neither a
    SYN nor a RST and yet acknowledges nothing."""
    if flags & SYN:
        return bool(flags & _ENDS)
    return not flags & (ACK | RST)


# _bad_flags of every flags byte: an index per control packet instead of a call.
_BAD_FLAGS = tuple(_bad_flags(flags) for flags in range(256))
