"""Data-plane counters for `show statistics` and `clear counters`.

Every packet the engine handles ends in exactly one bucket (translated in or out, ICMP
translated, unchanged, the fast path's marked SYNs or copies, or dropped for one named
reason), and `packets` is their sum, so an operator can account for every packet. A SYN
refused with a RST is in its drop reason's bucket; `refused` counts the RSTs. The engine
counts under the model lock, so the counts stay exact across worker threads.
"""

from __future__ import annotations

from . import datagram, packet

# Engine drop reasons continue the packet parsers' codes (packet.py's, then
# datagram.py's) so one list indexed by reason counts every kind.
_FIRST = len(datagram.REASON_NAMES)
NO_CONNECTION = _FIRST       # not a SYN, toward a VIP, no connection
NO_VIRTUAL = _FIRST + 1      # SYN toward a VIP address with no virtual for this client/port
NO_REAL = _FIRST + 2         # the virtual (and its backups) had no real to take it
SYNGUARD = _FIRST + 3        # the virtual already has `synguard` half-open connections
CONN_LIMIT = _FIRST + 4      # the connection table is full (settings.max_conns)
STALE_REPLY = _FIRST + 5     # a real's late packet for a connection closed moments ago
RESET_ABSORBED = _FIRST + 6  # a real's RST to the SYN; the connection moved elsewhere
BAD_FLAGS = _FIRST + 7       # a flag combination no TCP sends (SYN+FIN, SYN+RST, no ACK)
BAD_CHECKSUM = _FIRST + 8    # a SYN whose TCP checksum is wrong: no state for corrupt data
MARK_PENDING = _FIRST + 9    # fast path: the chosen real's DNAT rule is not installed yet
REASSIGNED = _FIRST + 10     # fast path: a SYN whose connection just moved to another real
OUT_OF_WINDOW = _FIRST + 11  # a RST or FIN whose sequence is outside the window
RST_IN_WINDOW = _FIRST + 12  # a RST in window but not at the expected sequence
UNKNOWN_REPLY = _FIRST + 13  # from a translated real's serving port, of no connection
UNREACHABLE_ABSORBED = _FIRST + 14  # a real's ICMP unreachable for a UDP flow; flow moved

REASON_NAMES: tuple[str, ...] = datagram.REASON_NAMES + (
    "no-connection",
    "no-virtual",
    "no-real",
    "synguard",
    "conn-limit",
    "stale-reply",
    "reset-absorbed",
    "bad-flags",
    "bad-checksum",
    "mark-pending",
    "reassigned",
    "out-of-window",
    "rst-in-window",
    "unknown-reply",
    "unreachable-absorbed",
)

# Scalar counters in the order `show statistics` lists them.
COUNTERS = (
    "packets",
    "translated_in",
    "translated_out",
    "icmp_translated",
    "unchanged",
    "conns_created",
    "conns_closed",
    "conns_timed_out",
    "conns_reassigned",
    "syn_resends",
    "port_remaps",
    "refused",        # SYNs answered with a RST (also counted under no-real)
    "unknown_resets",  # segments of unknown connections to a VIP answered with a RST
                       # (also counted under no-connection)
    "reply_resets",   # a real's packets of no connection answered with a RST
                      # (also counted under unknown-reply)
    "peak_conns",     # the most connections the table has held (a gauge's high-water mark)
    "half_open_evicted",  # half-open connections given up to make room for a SYN
    "fastpath_conns",  # connections opened on the fast path (also in conns_created)
    "fastpath_marked",  # bucket: a fast-path SYN accepted with its real's mark (conntrack NATs it)
    "fastpath_copies",  # bucket: a fast-path SYN-ACK, FIN or RST copy (NFLOG) taken note of
    "flows_evicted",  # UDP flows given up for a new one: their virtual held `flows`
    "maglev_forwarded",  # dispatched packets of flows no connection holds (ECMP moved
                         # them here), sent where the Maglev table says (also translated_in)
)


_STORED = tuple(name for name in COUNTERS if name != "packets")


class Stats:
    """Plain int attributes and one list, so the packet path pays an attribute
    increment, never a method call."""

    __slots__ = _STORED + ("drops",)

    def __init__(self) -> None:
        self.drops = [0] * len(REASON_NAMES)
        self.reset()

    def reset(self) -> None:
        """`clear counters`. The drop list is zeroed in place: holders of a reference
        to it keep counting into the live list."""
        for name in _STORED:
            setattr(self, name, 0)
        for i in range(len(self.drops)):
            self.drops[i] = 0

    @property
    def dropped(self) -> int:
        return sum(self.drops)

    @property
    def packets(self) -> int:
        """Every packet the engine handled: the sum of the buckets."""
        return (self.translated_in + self.translated_out + self.icmp_translated
                + self.unchanged + self.fastpath_marked + self.fastpath_copies
                + self.dropped)

    def snapshot(self) -> dict[str, int | dict[str, int]]:
        """Copy for display: the counters in display order, `dropped` (total) and
        `drops` (every reason by name, zeros included so the listing is stable)."""
        snap: dict[str, int | dict[str, int]] = {name: getattr(self, name) for name in COUNTERS}
        snap["dropped"] = self.dropped
        snap["drops"] = {REASON_NAMES[i]: n for i, n in enumerate(self.drops) if i != packet.OK}
        return snap
