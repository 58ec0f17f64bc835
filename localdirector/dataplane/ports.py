"""The client ports the reals see: which tuples toward a real are still in TIME_WAIT
there, and which port a new connection uses instead (docs/design.rst, "Port reuse")."""

from __future__ import annotations

import random
from collections import OrderedDict

from ..model.addr import V6
from ..model.connection import UDP_KEY, Connection, udp_key
from .stats import Stats

TIME_WAIT = 60.0         # how long a closed tuple toward a real is avoided (Linux's value)
RECENT_MAX = 1 << 18     # recently-closed tuples kept at most (oldest forgotten first)
_LOW = 1024
_COUNT = 65536 - _LOW


class ClientPorts:
    """Recently-closed tuples toward the reals (reply keys), and the cursor that hands
    out another client port when a new connection's own tuple is taken."""

    __slots__ = ("_recent", "_next", "_stats")

    def __init__(self, stats: Stats) -> None:
        # Tuple toward a real (the reply key) -> when its connection closed, oldest first.
        self._recent: OrderedDict[int, float] = OrderedDict()
        self._next = _LOW + random.randrange(_COUNT)
        self._stats = stats

    def __len__(self) -> int:
        return len(self._recent)

    def __contains__(self, reply_key: int) -> bool:
        """Whether this tuple toward a real closed less than TIME_WAIT ago."""
        return reply_key in self._recent

    def remember(self, reply_key: int, now: float) -> None:
        """A connection left this tuple toward its real (closed, or moved elsewhere)."""
        recent = self._recent
        recent.pop(reply_key, None)
        recent[reply_key] = now
        if len(recent) > RECENT_MAX:
            recent.popitem(last=False)

    def expire(self, now: float) -> None:
        """Forget the tuples that closed TIME_WAIT ago or more."""
        recent = self._recent
        cutoff = now - TIME_WAIT
        while recent:
            reply_key, closed_at = next(iter(recent.items()))
            if closed_at > cutoff:
                break
            del recent[reply_key]

    def choose(self, reply: dict[int, Connection], real_ip: int, real_port: int,
               client_ip: int, port: int, udp: bool = False) -> int:
        """The client port to use toward the real: the client's own unless that tuple is
        live (in `reply`) or closed less than TIME_WAIT ago. `udp`: a UDP flow's tuple
        (its keys carry connection.udp_key)."""
        if real_ip < V6:   # flow_key, inlined: IPv4's layout written out
            base = (real_ip << 64) | (real_port << 48) | (client_ip << 16)
            if udp:
                base |= UDP_KEY
        else:
            base = ((((real_ip << 16) | real_port) << 129) | client_ip) << 16
            if udp:
                base |= udp_key(129)
        key = base | port
        recent = self._recent
        if key not in reply and key not in recent:
            return port
        self._stats.port_remaps += 1
        for _ in range(_COUNT):
            candidate = self._next
            self._next = candidate + 1 if candidate < 65535 else _LOW
            if base | candidate not in reply and base | candidate not in recent:
                return candidate
        return port  # every port toward this real is taken: nothing better exists
