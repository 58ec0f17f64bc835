"""LOCALDIRECTOR-MIB (mibs/LOCALDIRECTOR-MIB.txt) as values: the virtual, real and bind
tables and the failover role, read from the model, and the notifications' variables
(docs/design.rst, "Monitoring").

Like a metrics scrape, a snapshot takes the model lock once, only to copy numbers; the
OIDs are built after it is released, and a snapshot is served again for up to
MIN_INTERVAL, so a walk of many requests reads the model once a second, however fast
a manager asks. Rows are indexed by the servers' own ids (address, port, bind id,
protocol), not by a position, so an index names the same server in every walk.

An address in an index is RFC 4001's InetAddressType and InetAddress pair, so servers
of both families have rows: the type (ipv4(1), ipv6(2)), then the address as an index
encodes an OCTET STRING, its length and its octets (`address_index`). IPv4 rows sort
before IPv6 ones, as GetNext needs them in OID order (agentx.Table sorts)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from localdirector.model.addr import IPV4, IPV6, family_of
from localdirector.model.director import Director
from localdirector.model.state import State

from . import agentx
from .agentx import COUNTER64, GAUGE32, INTEGER, OCTET_STRING, Oid, Table, Value

if TYPE_CHECKING:
    from localdirector.model.real import PhysicalMachine

# enterprises.32473 is the Private Enterprise Number IANA reserves for documentation
# (RFC 5612), as 192.0.2.0/24 is for addresses; .6324 after the patent. An operator
# with a PEN of their own moves the arc in the MIB and here (docs/design.rst).
ROOT: Oid = (1, 3, 6, 1, 4, 1, 32473, 6324)
NOTIFICATIONS = (*ROOT, 0)
REAL_FAILED, REAL_RECOVERED, ROLE_CHANGED = (*NOTIFICATIONS, 1), (*NOTIFICATIONS, 2), \
    (*NOTIFICATIONS, 3)
OBJECTS = (*ROOT, 1)
VIRTUAL_ENTRY, REAL_ENTRY, BIND_ENTRY = (*OBJECTS, 1, 1), (*OBJECTS, 2, 1), (*OBJECTS, 3, 1)
FAILOVER_ROLE = (*OBJECTS, 4)
SNMP_TRAP_OID = (1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0)

STATES = {State.IN_SERVICE.value: 1, State.OUT_OF_SERVICE.value: 2,
          State.FAILED.value: 3, State.TESTING.value: 4}
ROLES = {"Off": 1, "Starting": 2, "Active": 3, "Standby": 4, "Fault": 5}
PROTOCOLS = {"tcp": 6, "udp": 17}
INET_ADDRESS_TYPES = {IPV4: 1, IPV6: 2}   # InetAddressType's ipv4(1), ipv6(2)
TRUE, FALSE = 1, 2                   # TruthValue
# Columns the tables have (their OIDs), for noSuchInstance against noSuchObject.
VIRTUAL_COLUMNS, REAL_COLUMNS, BIND_COLUMNS = range(5, 14), range(4, 10), range(1, 2)
COLUMNS = (*((*VIRTUAL_ENTRY, c) for c in VIRTUAL_COLUMNS),
           *((*REAL_ENTRY, c) for c in REAL_COLUMNS),
           *((*BIND_ENTRY, c) for c in BIND_COLUMNS), FAILOVER_ROLE)


def address_index(addr: int) -> Oid:
    """An address as an InetAddressType, InetAddress pair in an index (RFC 4001, RFC
    2578 7.7): the type, then the octets' count (the InetAddress is not IMPLIED) and
    the octets. 192.0.2.10 is 1.4.192.0.2.10, 2001:db8::10 is 2.16.32.1.13.184...16."""
    family = family_of(addr)
    packed = family.packed(addr)
    return (INET_ADDRESS_TYPES[family], len(packed), *packed)


def virtual_index(addr: int, port: int, bind: int, proto: str) -> Oid:
    return (*address_index(addr), port, bind, PROTOCOLS[proto])


def real_index(addr: int, port: int, proto: str) -> Oid:
    return (*address_index(addr), port, PROTOCOLS[proto])


def snapshot(director: Director, role: str) -> Table:
    """The tables as they are now, under the model lock for the copy only."""
    with director.lock:
        virtuals = [(virtual_index(v.addr, v.port, v.bind_id, v.proto), director.fmt(v.sid),
                     director.virtual_state(v), v.conns_current, v.conns_total, v.fastpath,
                     (v.packets_in, v.packets_out, v.bytes_in, v.bytes_out))
                    for v in director.iter_virtuals()]
        reals = [(real_index(r.addr, r.port, r.sid.proto), director.fmt(r.sid),
                  director.real_state(r), r.current_conns, r.total_conns,
                  r.noanswer_reassigns, r.reset_reassigns)
                 for r in director.iter_reals()]
        binds = [(virtual_index(v.addr, v.port, v.bind_id, v.proto),
                  real_index(link.real.addr, link.real.port, link.real.sid.proto),
                  link.real.weight)
                 for v in director.iter_virtuals() for link in v.iter_links()]
    rows: dict[Oid, Value] = {}
    for index, name, state, current, total, fastpath, traffic in virtuals:
        def put(column: int, value: Value, index: Oid = index) -> None:
            rows[(*VIRTUAL_ENTRY, column, *index)] = value
        put(5, (OCTET_STRING, name.encode()))
        put(6, (INTEGER, STATES[state]))
        put(7, (GAUGE32, current))
        put(8, (COUNTER64, total))
        if not fastpath:   # the kernel forwards a fast-path virtual's data uncounted
            for column, count in zip(range(9, 13), traffic):
                put(column, (COUNTER64, count))
        put(13, (INTEGER, TRUE if fastpath else FALSE))
    for index, name, state, current, total, unanswered, reset in reals:
        for column, value in zip(range(4, 10), (
                (OCTET_STRING, name.encode()), (INTEGER, STATES[state]), (GAUGE32, current),
                (COUNTER64, total), (COUNTER64, unanswered), (COUNTER64, reset))):
            rows[(*REAL_ENTRY, column, *index)] = value
    for virtual, real, weight in binds:
        rows[(*BIND_ENTRY, 1, *virtual, *real)] = (GAUGE32, weight)
    rows[(*FAILOVER_ROLE, 0)] = (INTEGER, ROLES.get(role, ROLES["Off"]))
    return Table(rows, COLUMNS)


def real_notification(director: Director, real: "PhysicalMachine",
                      failed: bool) -> list[agentx.VarBind]:
    """ldRealFailed or ldRealRecovered with the real's name and state (under the lock:
    the model tells its watchers there). No sysUpTime.0: snmpd puts its own first.
    The variables' instances carry the real's index, so a receiver knows which real
    of either family (the index objects themselves are not-accessible)."""
    index = real_index(real.addr, real.port, real.sid.proto)
    return [(SNMP_TRAP_OID, agentx.OBJECT_ID, REAL_FAILED if failed else REAL_RECOVERED),
            ((*REAL_ENTRY, 4, *index), OCTET_STRING, director.fmt(real.sid).encode()),
            ((*REAL_ENTRY, 5, *index), INTEGER, STATES[director.real_state(real)])]


def role_notification(role: str) -> list[agentx.VarBind]:
    return [(SNMP_TRAP_OID, agentx.OBJECT_ID, ROLE_CHANGED),
            ((*FAILOVER_ROLE, 0), INTEGER, ROLES.get(role, ROLES["Off"]))]


class Snapshots:
    """The last snapshot, served again for MIN_INTERVAL (called from one thread)."""

    MIN_INTERVAL = 1.0

    def __init__(self, director: Callable[[], Director], role: Callable[[], str],
                 clock: Callable[[], float]) -> None:
        self.director, self.role, self.clock = director, role, clock
        self._last: tuple[float, Table] | None = None

    def table(self) -> Table:
        now = self.clock()
        if self._last is None or now - self._last[0] >= self.MIN_INTERVAL:
            self._last = (now, snapshot(self.director(), self.role()))
        return self._last[1]
