"""Connection object (FIG. 3C) and the table that finds it from either direction."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from .addr import V6

if TYPE_CHECKING:
    from .real import PhysicalMachine
    from .virtual import VirtualMachine


# TCP states a connection goes through, as the data plane tracks them (FIG. 3C field 350).
SYN_SENT = "SYN_SENT"        # client SYN forwarded, the real has not answered
SYN_RCVD = "SYN_RCVD"        # the real answered with SYN-ACK; the client's ACK is awaited
ESTABLISHED = "ESTABLISHED"
FIN_WAIT = "FIN_WAIT"        # one side has sent FIN
CLOSED = "CLOSED"            # FIN both ways or RST: lingering so the last ACK gets through
# A fast-path connection the real answered: from here on the kernel translates it (hence
# the name shown) and the engine sees only its FIN and RST segments (not the client's ACK,
# hence not ESTABLISHED).
FASTPATH = "FASTPATH"
# Connection.bits: which side has sent a FIN, and `moved`.
FIN_IN = 1
FIN_OUT = 2
MOVED = 4
# Half-open = handshake not completed: what `synguard` caps (virtual.half_open).
HALF_OPEN_STATES = frozenset((SYN_SENT, SYN_RCVD))
# A UDP flow's states, in conntrack's words: the real has not answered yet, or has.
UNREPLIED = "UNREPLIED"
REPLIED = "REPLIED"
# Flow keys (docs/design.rst, "Addresses" and "UDP flows"): one int per 5-tuple, laid
# out by the width W of the family's address ints, 32 for IPv4 and 129 for IPv6 (its
# tag, bit 128, included): ((src << 16 | sport) << W | dst) << 16 | dport, which for
# IPv4 is src << 64 | sport << 48 | dst << 16 | dport, as it always was. A UDP flow's
# keys carry bit 2W + 32 above that (UDP_KEY for IPv4: bit 96), so a TCP connection and
# a UDP flow of one tuple never share a key; a `per-datagram` flow also carries its real
# above it (UdpFlow), one flow per client tuple and real. An IPv6 key is at least
# 2**289 (its source's tag) and an IPv4 one below 2**145, so the families never meet.
WIDTHS = (32, 129)        # indexed by addr >> 128: the key width of an address's family
UDP_KEY = 1 << 96
_TAG_SHIFT = 97
KEY_LIMIT = 1 << (_TAG_SHIFT + 48)   # every IPv4 flow key is below: the tag is 48 bits


def key_width(addr: int) -> int:
    """W of the key layout for an address of this family: 32, or 129 for IPv6."""
    return WIDTHS[addr >> 128]


def udp_key(width: int) -> int:
    """The bit a UDP flow's keys carry, for key width `width` (UDP_KEY for IPv4)."""
    return 1 << (2 * width + 32)


def flow_key(src: int, sport: int, dst: int, dport: int) -> int:
    """One int per 4-tuple: hashes faster than a tuple and allocates one object, not five.
    Either family (the addresses' own); the packet path inlines it."""
    if dst < V6:
        return (src << 64) | (sport << 48) | (dst << 16) | dport
    return ((((src << 16) | sport) << 129 | dst) << 16) | dport


class Connection:
    """One client connection to a virtual, assigned to a real.

    A million of these live at once, so every slot counts (docs/benchmarks.rst): the
    client's address and port live only in `in_key` (read back by properties, off the
    packet path), `virtual_ip`, `virtual_port` and `real_port` are the model's own int
    objects, and there are no per-connection packet or byte counters (the virtual's and
    the real's count the traffic, as conntrack without `nf_conntrack_acct`).

    `remap` is the client port used toward the real when it is not the client's own
    (0 otherwise): that tuple toward the real was still in TIME_WAIT there
    (docs/design.rst, "Port reuse"). `fastpath`: translated by conntrack NAT.

    `ack_in` and `ack_out` are the last acknowledgment numbers the client and the real
    sent (0 until the real answers): the next sequence each side expects of the other,
    against which a RST or FIN is checked (docs/design.rst, "Sequence checks"). They
    are paid for by `bits`, one slot for three flags: FIN_IN and FIN_OUT (which sides
    sent a FIN) and MOVED (see `moved`)."""

    __slots__ = ("virtual_ip", "virtual_port", "real_ip", "real_port", "remap",
                 "syn_resends", "tcp_state", "created", "last_seen", "stamp",
                 "answered", "bits", "fastpath", "ack_in", "ack_out",
                 "virtual", "real", "in_key")

    def __init__(self, foreign_ip: int, foreign_port: int, virtual_ip: int,
                 virtual_port: int, virtual: "VirtualMachine", real: "PhysicalMachine",
                 now: float) -> None:
        self.virtual_ip = virtual_ip
        self.virtual_port = virtual_port
        self.virtual = virtual
        self.real = real
        self.real_ip = real.addr
        self.real_port = real.port or virtual_port
        self.remap = 0
        self.syn_resends = 0
        self.tcp_state = SYN_SENT
        self.created = now
        self.last_seen = now
        self.stamp = now
        self.answered = False
        self.bits = 0
        self.ack_in = 0
        self.ack_out = 0
        self.fastpath = False
        # flow_key, inlined: one call fewer for every SYN (IPv4's layout written out).
        if virtual_ip < V6:
            self.in_key = ((foreign_ip << 64) | (foreign_port << 48) | (virtual_ip << 16)
                           | virtual_port)
        else:
            self.in_key = ((((foreign_ip << 16) | foreign_port) << 129 | virtual_ip) << 16
                           | virtual_port)

    @property
    def foreign_ip(self) -> int:
        return self.in_key >> (64 if self.virtual_ip < V6 else 161)

    @property
    def foreign_port(self) -> int:
        return (self.in_key >> (48 if self.virtual_ip < V6 else 145)) & 0xFFFF

    @property
    def nat_port(self) -> int:
        """The client port the real sees."""
        return self.remap or self.foreign_port

    @nat_port.setter
    def nat_port(self, port: int) -> None:
        self.remap = 0 if port == self.foreign_port else port

    @property
    def moved(self) -> bool:
        """A fast-path connection reassigned to a real that has not had its first SYN
        yet (the SYN that caused the move was dropped; docs/design.rst, "Fast path")."""
        return bool(self.bits & MOVED)

    @moved.setter
    def moved(self, value: bool) -> None:
        self.bits = self.bits | MOVED if value else self.bits & ~MOVED

    # One slot for two times never needed together: a CLOSED connection is never
    # answered again, so its SYN's time is over when its lingering starts.
    def _get_stamp(self) -> float:
        return self.stamp

    def _set_stamp(self, when: float) -> None:
        self.stamp = when

    syn_sent_at = property(_get_stamp, _set_stamp,
                           doc="When the SYN went to the current real (response time).")
    closing_at = property(_get_stamp, _set_stamp,
                          doc="CLOSED: when lingering ends and the connection goes.")

    def reply_key(self) -> int:
        """The tuple of the real's replies (recomputed, not stored: 8 bytes a connection;
        flow_key and the properties inlined, as it runs for every new connection; IPv4's
        layout written out, so IPv4 computes no width)."""
        key = self.in_key
        real_ip = self.real_ip
        if real_ip < V6:
            return ((real_ip << 64) | (self.real_port << 48) | ((key >> 64) << 16)
                    | (self.remap or (key >> 48) & 0xFFFF))
        return ((((((real_ip << 16) | self.real_port) << 129) | key >> 161) << 16)
                | (self.remap or (key >> 145) & 0xFFFF))


class UdpFlow(Connection):
    """A UDP flow (docs/design.rst, "UDP flows"): the client's 5-tuple, created by its
    first datagram, ended by the idle timeout. A subclass, not a flag, so a TCP
    connection computes nothing for UDP: only the key layout differs (UDP_KEY, and the
    real's tag of a per-datagram flow), which the client's address must be masked out
    of. `syn_resends` counts the client's datagrams since the real last answered."""

    __slots__ = ()

    def __init__(self, foreign_ip: int, foreign_port: int, virtual_ip: int,
                 virtual_port: int, virtual: "VirtualMachine", real: "PhysicalMachine",
                 now: float) -> None:
        super().__init__(foreign_ip, foreign_port, virtual_ip, virtual_port, virtual, real,
                         now)
        self.tcp_state = UNREPLIED
        self.syn_resends = 1   # the datagram that opens it, unanswered so far
        self.in_key |= udp_key(WIDTHS[virtual_ip >> 128])
        if virtual.per_datagram:
            self.in_key |= real_tag(real.addr, self.real_port)

    @property
    def foreign_ip(self) -> int:
        width = WIDTHS[self.virtual_ip >> 128]
        return (self.in_key >> (width + 32)) & ((1 << width) - 1)

    def reply_key(self) -> int:
        key = self.in_key
        width = WIDTHS[self.real_ip >> 128]
        client = (key >> (width + 32)) & ((1 << width) - 1)
        return udp_key(width) | (((((self.real_ip << 16) | self.real_port) << width
                                   | client) << 16)
                                 | (self.remap or (key >> (width + 16)) & 0xFFFF))


def real_tag(real_ip: int, real_port: int) -> int:
    """What a per-datagram flow's key carries above its UDP bit: the real it goes to, so
    a client tuple has one flow (and one reply key) per real its datagrams went to."""
    return ((real_ip << 16) | real_port) << (2 * WIDTHS[real_ip >> 128] + 33)


class ConnectionTable:
    """Hash table keyed by inbound and by reply 4-tuple; owns the live connection counts
    of virtuals and reals (and the virtuals' half-open gauge) so they can only change
    together with the table."""

    __slots__ = ("inbound", "reply")

    def __init__(self) -> None:
        self.inbound: dict[int, Connection] = {}
        self.reply: dict[int, Connection] = {}

    def __len__(self) -> int:
        return len(self.inbound)

    def __iter__(self) -> Iterator[Connection]:
        return iter(list(self.inbound.values()))

    def add(self, conn: Connection) -> None:
        self.inbound[conn.in_key] = conn
        self.reply[conn.reply_key()] = conn
        virtual, real = conn.virtual, conn.real
        virtual.conns_current += 1
        virtual.conns_total += 1
        real.current_conns += 1
        real.total_conns += 1
        if conn.tcp_state in HALF_OPEN_STATES:
            virtual.half_open += 1

    def remove(self, conn: Connection) -> int | None:
        """Take `conn` out of the table; returns its reply key (its tuple toward the
        real, which a close remembers), None when it was not in the table."""
        in_key = conn.in_key
        if self.inbound.get(in_key) is not conn:
            return None
        del self.inbound[in_key]
        out_key = conn.reply_key()
        if self.reply.get(out_key) is conn:
            del self.reply[out_key]
        virtual = conn.virtual
        virtual.conns_current -= 1
        conn.real.current_conns -= 1
        if conn.tcp_state in HALF_OPEN_STATES:
            virtual.half_open -= 1
        return out_key

    def set_state(self, conn: Connection, state: str) -> None:
        """Change the TCP state, keeping the virtual's half-open gauge exact."""
        was_half_open = conn.tcp_state in HALF_OPEN_STATES
        conn.tcp_state = state
        is_half_open = state in HALF_OPEN_STATES
        if was_half_open != is_half_open and self.inbound.get(conn.in_key) is conn:
            conn.virtual.half_open += 1 if is_half_open else -1

    def move(self, conn: Connection, real: "PhysicalMachine",
             virtual: "VirtualMachine | None" = None, nat_port: int | None = None) -> None:
        """Reassign (FIG. 3C field 353): same client tuple, another real.

        `virtual` moves it to another instance too (the backup virtual took over);
        `nat_port` sets the client port used toward the new real, chosen by the caller
        because the tuple toward the new real may still be in TIME_WAIT there."""
        self.remove(conn)
        same_virtual = virtual is None or virtual is conn.virtual
        if not same_virtual:
            conn.virtual = virtual
        conn.real = real
        conn.real_ip = real.addr
        conn.real_port = real.port or conn.virtual_port
        if nat_port is not None:
            conn.nat_port = nat_port
        self.add(conn)
        if same_virtual:
            conn.virtual.conns_total -= 1  # still one connection to the virtual
