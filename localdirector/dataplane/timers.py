"""Idle timers of a million connections for 8 bytes each: a timing wheel of seconds.

A heap entry per connection cost 124 bytes, a fifth of a connection's memory; a wheel
slot costs one list reference. Entries are lazy: whoever files an item checks it again
when its second comes (expiry.py). A second is finer than the engine's tick (0.5 s).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

SLOTS = 4096   # seconds the wheel spans; a later deadline goes round again (one more check)
_MASK = SLOTS - 1
KEEP, TAKE, DROP = 0, 1, 2   # what TimerWheel.take does with an item


class TimerWheel(Generic[T]):
    """Items filed by the second of their deadline, handed back once that second came."""

    __slots__ = ("_slots", "_next", "_count")

    def __init__(self, now: float) -> None:
        self._slots: list[list[T]] = [[] for _ in range(SLOTS)]
        self._next = int(now)   # the earliest second not yet handed back in full
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, item: T, deadline: float) -> None:
        second = int(deadline)
        if second < self._next:
            second = self._next
        self._slots[second & _MASK].append(item)
        self._count += 1

    def take(self, kind: Callable[[T], int], limit: int, until: float) -> list[T]:
        """Up to `limit` items filed under the earliest seconds up to `until`, taken out
        of the wheel: those `kind` calls TAKE, in deadline order. Items it calls DROP go
        too (dead entries: the slots walked are compacted, so walking them again costs
        nothing); KEEP ones stay filed."""
        taken: list[T] = []
        slots = self._slots
        for second in range(self._next, int(until) + 1):
            index = second & _MASK
            filed = slots[index]
            if not filed:
                continue
            kept = []
            for position, item in enumerate(filed):
                if len(taken) >= limit:
                    kept += filed[position:]
                    break
                verdict = kind(item)
                if verdict == TAKE:
                    taken.append(item)
                elif verdict == KEEP:
                    kept.append(item)
            self._count -= len(filed) - len(kept)
            slots[index] = kept
            if len(taken) >= limit:
                break
        return taken

    def due(self, now: float) -> Iterator[T]:
        """Everything filed under a second up to `now`'s, the current one included (its
        items may not be due yet: the caller checks each and files it again). Items filed
        while iterating are kept for the next call."""
        current = int(now)
        first = max(self._next, current - _MASK)
        self._next = current
        slots = self._slots
        for second in range(first, current + 1):
            index = second & _MASK
            filed = slots[index]
            if filed:
                slots[index] = []
                self._count -= len(filed)
                yield from filed
