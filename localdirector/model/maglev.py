"""Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table of prime size
that every director builds identically from the same configuration, so a flow that
ECMP moves to another director still reaches the same real (docs/design.rst,
"Scale-out").

Identical everywhere: a real's place in the table comes from keyed BLAKE2b of its
"ADDR:PORT" (never Python's per-process `hash()`), the members are sorted by that
identity (bind order does not matter), and a flow's slot is BLAKE2b of its 4-tuple.
Weights: each round of the population a real of weight w takes w slots, so its share
is ~w / total. Pure Python with `array`: 65537 slots x 1,000 reals builds in about a
second (docs/benchmarks.rst), and a table is rebuilt only when its members change."""

from __future__ import annotations

import hashlib
import sys
from array import array
from collections.abc import Callable
from dataclasses import dataclass

from typing import TYPE_CHECKING

from .addr import IPV6, bracketed
from .connection import KEY_LIMIT, UDP_KEY
from .state import State

if TYPE_CHECKING:
    from .virtual import VirtualMachine

DEFAULT_SIZE = 65537
MIN_SIZE = 7
MAX_SIZE = 1000003
_KEY = b"localdirector-maglev"
_OFFSET = b"maglev-offset"
_SKIP = b"maglev-skip"
_FLOW = b"maglev-flow"

Member = tuple[int, int, int]   # (real address, real port, weight)
# An IPv6 flow key (model/connection.py) lays its tuple out by the key width of an IPv6
# address int, 129 bits with its tag: source and port, VIP and port, 2 * 129 + 32 bits,
# and the UDP bit above them.
_V6_FLOW_BITS = 2 * (IPV6.width + 1) + 33


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


def identity(addr: int, port: int) -> str:
    """What a real is hashed as: the same text on every director (an IPv6 address in
    brackets, as before any port; an IPv4 real's text, and so its slots, as before)."""
    return f"{bracketed(addr)}:{port}"


def _hash(data: bytes, person: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, key=_KEY,
                                          person=person).digest(), "big")


def flow_hash(flow: int) -> int:
    """A connection's 64-bit hash: `flow` is the engine's flow key (client address and
    port, VIP and port), 96 bits, a UDP flow's with its protocol bit above (97 bits,
    hashed as 13 bytes, so a TCP key hashes as it always did). An IPv6 key is above
    every IPv4 one (KEY_LIMIT): its tuple and protocol bit are hashed, never a
    per-datagram flow's real above them, as for IPv4."""
    if flow < UDP_KEY:
        data = flow.to_bytes(12, "big")
    elif flow < KEY_LIMIT:
        data = (flow & (UDP_KEY << 1) - 1).to_bytes(13, "big")
    else:
        data = (flow & (1 << _V6_FLOW_BITS) - 1).to_bytes(_V6_FLOW_BITS + 7 >> 3, "big")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8,
                                          key=_KEY, person=_FLOW).digest(), "big")


def populate(members: list[Member], size: int = DEFAULT_SIZE) -> array:
    """The lookup table: slot -> index into `members` (which must be sorted and
    non-empty). The paper's population loop, weighted: in each round member i claims
    its next w_i preferred free slots."""
    n = len(members)
    offsets = []
    skips = []
    for addr, port, _weight in members:
        data = identity(addr, port).encode()
        offsets.append(_hash(data, _OFFSET) % size)
        skips.append(_hash(data, _SKIP) % (size - 1) + 1)
    weights = [w for _addr, _port, w in members]
    nexts = [0] * n          # the next candidate slot of each member, as a position
    table = array("i", [-1]) * size
    filled = 0
    while True:
        for i in range(n):
            skip = skips[i]
            slot = nexts[i]
            for _ in range(weights[i]):
                while table[slot] >= 0:
                    slot += skip
                    if slot >= size:
                        slot -= size
                table[slot] = i
                filled += 1
                if filled == size:
                    return table
            nexts[i] = slot


@dataclass(slots=True)
class MaglevTable:
    """One virtual's table and what it was built from."""

    members: list[Member]
    size: int
    table: array

    @classmethod
    def build(cls, members: list[Member], size: int = DEFAULT_SIZE) -> MaglevTable:
        ordered = sorted(members)
        return cls(ordered, size, populate(ordered, size))

    def lookup(self, flow: int) -> int:
        """Index (into `members`) of the real for a flow key."""
        return self.table[flow_hash(flow) % self.size]

    def choose(self, flow: int, eligible: Callable[[int], bool]) -> int | None:
        """The member for a flow among those `eligible` now: its slot's, else the first
        eligible one of the following slots (a real that is full or being left must not
        take it; every director walks the same way). None when none is eligible."""
        size = self.size
        table = self.table
        slot = flow_hash(flow) % size
        for _ in range(size):
            i = table[slot]
            if eligible(i):
                return i
            slot = slot + 1 if slot + 1 < size else 0
        return None

    def shares(self) -> list[int]:
        """Slots per member."""
        counts = [0] * len(self.members)
        for i in self.table:
            counts[i] += 1
        return counts

    def digest(self) -> str:
        """A short fingerprint of the whole table: equal on two directors exactly when
        their tables are."""
        h = hashlib.blake2b(digest_size=8)
        for addr, port, weight in self.members:
            h.update(f"{identity(addr, port)}/{weight};".encode())
        table = array("i", self.table)
        if sys.byteorder == "little":
            table.byteswap()   # the same bytes on every machine
        h.update(table.tobytes())
        return h.hexdigest()


def members(virtual: VirtualMachine) -> list[Member]:
    """The reals a virtual's table is built from: bound and in service as far as the
    configuration and the probes tell (a FAILED, TESTING or probed-out real is not, so
    directors that see the same health build the same table)."""
    return sorted((link.real.addr, link.real.port, link.real.weight)
                  for link in virtual.iter_links()
                  if link.real.state is State.IN_SERVICE and not link.real.probe_down)


def table_for(virtual: VirtualMachine) -> MaglevTable | None:
    """The virtual's table, rebuilt only when its members or its size changed; None
    when it has no member."""
    wanted = members(virtual)
    cached = virtual.maglev
    if cached is not None and cached.members == wanted and cached.size == virtual.maglev_size:
        return cached
    if not wanted:
        return None
    virtual.maglev = MaglevTable.build(wanted, virtual.maglev_size)
    return virtual.maglev
