"""The part of AgentX (RFC 2741) a read-only subagent needs: open a session with the
master agent (snmpd), register a subtree, answer Get, GetNext and GetBulk from a sorted
table, refuse every Set, and send notifications for snmpd to turn into traps
(docs/design.rst, "Monitoring").

Pure encoding and decoding over bytes, no socket: monitor/snmp.py holds the session.
Every PDU this side sends is in network byte order (the header says so); a PDU from
the master is read in the order its header gives. A malformed PDU raises AgentXError,
and the session (monitor/snmp.py) drops the connection and opens a new one."""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

VERSION = 1
HEADER = 20
NETWORK_BYTE_ORDER = 0x10
NON_DEFAULT_CONTEXT = 0x08
# PDU types (RFC 2741 6.1).
OPEN, CLOSE, REGISTER, GET, GETNEXT, GETBULK = 1, 2, 3, 5, 6, 7
TESTSET, COMMITSET, UNDOSET, CLEANUPSET, NOTIFY, PING, RESPONSE = 8, 9, 10, 11, 12, 13, 18
# Value types (RFC 2741 5.4).
INTEGER, OCTET_STRING, NULL, OBJECT_ID, IP_ADDRESS = 2, 4, 5, 6, 64
COUNTER32, GAUGE32, TIMETICKS, COUNTER64 = 65, 66, 67, 70
NO_SUCH_OBJECT, NO_SUCH_INSTANCE, END_OF_MIB_VIEW = 128, 129, 130
NOT_WRITABLE = 17            # the error a TestSet gets: nothing here can be written
CLOSE_SHUTDOWN = 5
INTERNET = (1, 3, 6, 1)

Oid = tuple[int, ...]
Value = tuple[int, object]          # (type, value): int, bytes, an Oid, or None
VarBind = tuple[Oid, int, object]


class AgentXError(Exception):
    """A PDU this side cannot read."""


@dataclass(frozen=True)
class Header:
    type: int
    flags: int
    session: int
    transaction: int
    packet: int
    length: int

    @property
    def order(self) -> str:
        return "!" if self.flags & NETWORK_BYTE_ORDER else "<"


def header(data: bytes) -> Header:
    """The 20-byte header at the start of `data`."""
    if len(data) < HEADER or data[0] != VERSION:
        raise AgentXError("not an AgentX version 1 header")
    order = "!" if data[2] & NETWORK_BYTE_ORDER else "<"
    session, transaction, packet, length = struct.unpack_from(order + "4I", data, 4)
    if length % 4:
        raise AgentXError("payload length not a multiple of 4")
    return Header(data[1], data[2], session, transaction, packet, length)


def pdu(kind: int, payload: bytes, session: int = 0, transaction: int = 0,
        packet: int = 0, flags: int = 0) -> bytes:
    return struct.pack("!BBBBIIII", VERSION, kind, flags | NETWORK_BYTE_ORDER, 0,
                       session, transaction, packet, len(payload)) + payload


# -- encoding ------------------------------------------------------------------------------

def oid(name: Oid, include: bool = False) -> bytes:
    prefix = 0
    if len(name) > 4 and name[:4] == INTERNET and 0 < name[4] < 256:
        prefix, name = name[4], name[5:]
    return struct.pack(f"!BBBB{len(name)}I", len(name), prefix, int(include), 0, *name)


def octets(data: bytes) -> bytes:
    return struct.pack("!I", len(data)) + data + bytes(-len(data) % 4)


def varbind(name: Oid, kind: int, value: object) -> bytes:
    head = struct.pack("!HH", kind, 0) + oid(name)
    if kind in (INTEGER, COUNTER32, GAUGE32, TIMETICKS):
        return head + struct.pack("!I", int(value) & 0xFFFFFFFF)    # type: ignore[call-overload]
    if kind == COUNTER64:
        return head + struct.pack("!Q", int(value) & 0xFFFFFFFFFFFFFFFF)  # type: ignore[call-overload]
    if kind in (OCTET_STRING, IP_ADDRESS):
        return head + octets(value)                                # type: ignore[arg-type]
    if kind == OBJECT_ID:
        return head + oid(value)                                   # type: ignore[arg-type]
    return head                          # NULL and the three exceptions carry no value


def open_pdu(ident: Oid, description: str, timeout: int = 5) -> bytes:
    return pdu(OPEN, struct.pack("!B3x", timeout) + oid(ident)
               + octets(description.encode()))


def register_pdu(session: int, subtree: Oid, packet: int, priority: int = 127) -> bytes:
    return pdu(REGISTER, struct.pack("!BBBx", 0, priority, 0) + oid(subtree), session,
               packet=packet)


def close_pdu(session: int, reason: int = CLOSE_SHUTDOWN) -> bytes:
    return pdu(CLOSE, struct.pack("!B3x", reason), session)


def notify_pdu(session: int, packet: int, binds: Sequence[VarBind]) -> bytes:
    return pdu(NOTIFY, b"".join(varbind(*b) for b in binds), session, packet=packet)


def response(request: Header, binds: Sequence[VarBind] = (), error: int = 0,
             index: int = 0) -> bytes:
    return pdu(RESPONSE, struct.pack("!IHH", 0, error, index)
               + b"".join(varbind(*b) for b in binds),
               request.session, request.transaction, request.packet)


# -- decoding ------------------------------------------------------------------------------

class _Reader:
    def __init__(self, data: bytes, order: str) -> None:
        self.data, self.order, self.at = data, order, 0

    def take(self, fmt: str) -> tuple:
        try:
            values = struct.unpack_from(self.order + fmt, self.data, self.at)
        except struct.error:
            raise AgentXError("PDU shorter than its contents") from None
        self.at += struct.calcsize(self.order + fmt)
        return values

    def oid(self) -> tuple[Oid, bool]:
        count, prefix, include, _ = self.take("BBBB")
        subids = self.take(f"{count}I") if count else ()
        name = (*INTERNET, prefix, *subids) if prefix else tuple(subids)
        return name, bool(include)

    def octets(self) -> bytes:
        (length,) = self.take("I")
        data = self.data[self.at:self.at + length]
        if len(data) != length:
            raise AgentXError("octet string past the PDU's end")
        self.at += length + (-length % 4)
        return data

    @property
    def done(self) -> bool:
        return self.at >= len(self.data)


def ranges(request: Header, payload: bytes) -> tuple[int, int, list[tuple[Oid, bool, Oid]]]:
    """(non-repeaters, max-repetitions, [(start, include, end)]) of a Get, GetNext or
    GetBulk; a non-default context is skipped (this subagent has one view)."""
    reader = _Reader(payload, request.order)
    if request.flags & NON_DEFAULT_CONTEXT:
        reader.octets()
    non_repeaters = repetitions = 0
    if request.type == GETBULK:
        non_repeaters, repetitions = reader.take("HH")
    found = []
    while not reader.done:
        start, include = reader.oid()
        end, _ = reader.oid()
        found.append((start, include, end))
    return non_repeaters, repetitions, found


def response_fields(request: Header, payload: bytes) -> tuple[int, int]:
    """(sysUpTime, error) of a Response; the Open's carries the session id in its header."""
    uptime, error, _index = _Reader(payload, request.order).take("IHH")
    return uptime, error


# -- answering from a table ----------------------------------------------------------------

class Table:
    """What the subagent serves: values by OID, sorted so GetNext is one bisection.
    `objects` are the OIDs of the MIB's columns and scalars: an absent instance under
    one is noSuchInstance, anything else noSuchObject."""

    def __init__(self, rows: dict[Oid, Value], objects: Sequence[Oid]) -> None:
        self.names = sorted(rows)
        self.rows = rows
        self.objects = tuple(objects)

    def get(self, name: Oid) -> VarBind:
        found = self.rows.get(name)
        if found is not None:
            return (name, *found)
        known = any(name[:len(o)] == o and len(name) > len(o) for o in self.objects)
        return (name, NO_SUCH_INSTANCE if known else NO_SUCH_OBJECT, None)

    def next(self, start: Oid, include: bool, end: Oid) -> VarBind:
        """The first name after `start` (or at it, `include`), before `end` if given."""
        at = (bisect.bisect_left if include else bisect.bisect_right)(self.names, start)
        if at < len(self.names) and (not end or self.names[at] < end):
            name = self.names[at]
            return (name, *self.rows[name])
        return (start, END_OF_MIB_VIEW, None)

    def answer(self, request: Header, payload: bytes) -> list[VarBind]:
        non_repeaters, repetitions, asked = ranges(request, payload)
        if request.type == GET:
            return [self.get(start) for start, _, _ in asked]
        if request.type == GETNEXT:
            return [self.next(*r) for r in asked]
        return list(self._bulk(asked[:non_repeaters], asked[non_repeaters:], repetitions))

    def _bulk(self, single: list[tuple[Oid, bool, Oid]],
              repeated: list[tuple[Oid, bool, Oid]], repetitions: int) -> Iterator[VarBind]:
        for r in single:
            yield self.next(*r)
        current = list(repeated)
        for _ in range(repetitions):
            if not current:
                return
            row = [self.next(*r) for r in current]
            yield from row
            if all(kind == END_OF_MIB_VIEW for _, kind, _ in row):
                return
            current = [(name, False, end) for (name, _, _), (_, _, end) in zip(row, current)]
