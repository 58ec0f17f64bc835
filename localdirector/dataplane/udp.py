"""UDP's own way through FIG. 5 (docs/design.rst, "UDP flows"): a flow is the client's
5-tuple, opened by its first datagram through the decision TCP's SYN takes
(Engine._open), translated both ways like a connection, ended by its virtual's idle
timeout. Here: the datagram's path to its flow, passive failure detection (unanswered
datagrams; the real's ICMP unreachables, which icmp_errors.py hands over), and the
per-virtual bound on flows that keeps a spoofed flood from growing the table. Mixed
into Engine (engine.py)."""

from __future__ import annotations

from collections.abc import Callable
from itertools import islice
from typing import TYPE_CHECKING

from ..model.connection import Connection, UdpFlow
from .datagram import parse_udp, udp_checksum_valid
from .stats import BAD_CHECKSUM, STALE_REPLY, UNKNOWN_REPLY, UNREACHABLE_ABSORBED

if TYPE_CHECKING:
    from ..model.director import Director
    from ..model.virtual import VirtualMachine
    from .expiry import Expiry
    from .fastpath import FastPath
    from .packet import Buffer
    from .ports import ClientPorts
    from .stats import Stats

# Flows looked at, oldest first, for an unanswered one to evict before the oldest.
EVICT_SCAN = 16


class UdpFlows:
    """UDP datagrams to and from the virtuals' reals."""

    director: Director
    stats: Stats
    clock: Callable[[], float]
    _ports: ClientPorts
    _expiry: Expiry
    _vip_generation: int
    _vip_addrs: frozenset[int]
    _bound: frozenset[int]
    _flow_order: dict[VirtualMachine, dict[int, Connection]]
    _fastpath: FastPath

    if TYPE_CHECKING:
        def _drop(self, reason: int) -> int: ...

        def _unchanged(self) -> int: ...

        def _refresh_model(self) -> None: ...

        def _open(self, buf: Buffer, ihl: int, size: int, src: int, dst: int, sport: int,
                  dport: int, key: int, now: float, udp: bool = False) -> int: ...

        def _forward_in(self, buf: Buffer, ihl: int, size: int, conn: Connection, src: int,
                        ack: int, now: float, udp: bool = False) -> int: ...

        def _forward_out(self, buf: Buffer, ihl: int, size: int, conn: Connection,
                         dst: int, ack: int, now: float, udp: bool = False) -> int: ...

        def _answered(self, conn: Connection, now: float) -> None: ...

        def _reassign(self, conn: Connection, now: float, reset: bool) -> bool: ...

        def _close(self, conn: Connection, now: float) -> None: ...

    def _udp(self, buf: Buffer) -> int:
        """FIG. 5 for a datagram (the lock held): a real's reply to its flow, a client's
        datagram of its flow, or one that opens a flow. Malformed ones are dropped under
        their reason (datagram.py), never raise."""
        fields = parse_udp(buf)
        if type(fields) is int:
            return self._drop(fields)
        ihl, size, src, dst, sport, dport, width = fields
        now = self.clock()
        # flow_key with the UDP bit (connection.udp_key), inlined
        key = ((((src << 16) | sport) << width | dst) << 16) | dport | 1 << (width * 2 + 32)
        conns = self.director.conns
        if self.director.generation != self._vip_generation:
            self._refresh_model()
        to_vip = dst in self._vip_addrs
        if not to_vip:
            conn = conns.reply.get(key)
            if conn is not None:
                return self._udp_reply(buf, ihl, size, conn, dst, now)
        conn = conns.inbound.get(key)
        if conn is not None:
            return self._udp_client(buf, ihl, size, conn, src, now)
        if not to_vip:
            if key in self._ports:
                return self._drop(STALE_REPLY)
            # From a translated real's serving port, of no flow: a reply we cannot
            # translate (replies.py), dropped rather than leaked with the real's address.
            return self._drop(UNKNOWN_REPLY) if (key >> (width + 16)) in self._bound \
                else self._unchanged()
        if not udp_checksum_valid(buf, ihl):
            return self._drop(BAD_CHECKSUM)
        return self._open(buf, ihl, size, src, dst, sport, dport, key, now, True)

    def _udp_client(self, buf: Buffer, ihl: int, size: int, conn: Connection, src: int,
                    now: float) -> int:
        """A client datagram of a known flow. `reassign` datagrams without an answer
        since the real last answered are a failure of that real (as unanswered SYNs
        are), and this one goes to another real if one can take the flow; the count
        starts again either way, so a lone real is failed once per `reassign` of them
        (never at `reassign 0`, for a service that never answers). On the fast path only
        the flow's unanswered datagrams come here (conntrack queues those it calls NEW):
        marked like a resent SYN, or dropped once the flow moved, as its conntrack entry
        still names the old real; the next one opens a fresh entry."""
        unanswered = conn.syn_resends
        reassign = conn.real.reassign
        if unanswered >= reassign and reassign:   # reassign 0: never for silence
            moved = self._reassign(conn, now, reset=False)
            unanswered = 0
            if moved and conn.fastpath:
                conn.syn_resends = 1
                return self._fastpath.reassigned()
        conn.syn_resends = unanswered + 1
        if conn.fastpath:
            conn.last_seen = now
            return self._fastpath.mark(conn)
        return self._forward_in(buf, ihl, size, conn, src, 0, now, True)

    def _udp_reply(self, buf: Buffer, ihl: int, size: int, conn: Connection, dst: int,
                   now: float) -> int:
        """The real's datagram of a flow: translated back to the VIP; the flow is
        answered (the real is alive) and its run of unanswered datagrams over. On the
        fast path: a copy of one of the flow's first replies (NFLOG), noted only."""
        conn.syn_resends = 0
        if not conn.answered:
            self._answered(conn, now)
        if conn.fastpath:
            conn.last_seen = now
            return self._fastpath.noted()
        return self._forward_out(buf, ihl, size, conn, dst, 0, now, True)

    def _udp_unreachable(self, conn: Connection, now: float) -> bool:
        """A port or host unreachable quoting a client datagram the flow sent its real:
        a failure of that real, as a RST to a SYN is. True when the flow moved to
        another real (the error is then absorbed, counted); False: no other real can
        take it, and the client is shown the error."""
        if self._reassign(conn, now, reset=True):
            conn.syn_resends = 0
            self.stats.drops[UNREACHABLE_ABSORBED] += 1
            return True
        return False

    # -- the bound on flows (`flows VIRTUAL N`) --------------------------------------
    def _file_flow(self, virtual: VirtualMachine, conn: Connection, now: float) -> None:
        """File a new flow of `virtual`, giving up one of its flows first when it holds
        `flows` already: the oldest unanswered among the EVICT_SCAN oldest (a spoofed
        flood's flows are never answered when its sources are unreachable), else the
        oldest. Counted per virtual and in `flows_evicted`."""
        order = self._flow_order.get(virtual)
        if order is None:
            order = self._flow_order[virtual] = {}
        inbound = self.director.conns.inbound
        while virtual.conns_current >= virtual.flows and order:
            victim = None
            for key, flow in list(islice(order.items(), EVICT_SCAN)):
                if inbound.get(key) is not flow or flow.virtual is not virtual:
                    del order[key]     # moved to another virtual meanwhile
                elif victim is None or (victim.answered and not flow.answered):
                    victim = flow
                    if not flow.answered:
                        break
            if victim is not None:
                if victim.fastpath:        # the kernel stops translating it too
                    self._fastpath.forget(victim)
                self._close(victim, now)   # which unfiles it
                virtual.flows_evicted += 1
                self.stats.flows_evicted += 1
        # (an eviction that emptied the virtual's order took it out: put it back)
        self._flow_order.setdefault(virtual, order)[conn.in_key] = conn

    def _unfile_flow(self, conn: Connection, virtual: VirtualMachine | None = None) -> None:
        """A flow left the table (or `virtual`, the instance it was filed under)."""
        order = self._flow_order.get(virtual or conn.virtual)
        if order is not None:
            order.pop(conn.in_key, None)
            if not order:
                del self._flow_order[virtual or conn.virtual]

    def _refile_flow(self, conn: Connection, previous: VirtualMachine) -> None:
        """A flow moved from instance `previous` to another (a backup took it over);
        a TCP connection is not filed."""
        if type(conn) is UdpFlow:
            self._unfile_flow(conn, previous)
            self._flow_order.setdefault(conn.virtual, {})[conn.in_key] = conn

    def _refile_flows(self) -> None:
        """File every flow of the table afresh: the instances changed (`reload`), or the
        flows were carried in from the other unit (replication)."""
        self._flow_order = order = {}
        for key, conn in self.director.conns.inbound.items():
            if type(conn) is UdpFlow:
                order.setdefault(conn.virtual, {})[key] = conn
