"""Keep CPython's cyclic garbage collector from stopping the data plane for half a second.

A million connections are a million container objects, and every full collection
traverses them all: 280 ms at a million (benchmarks.micro), during which the worker
forwards nothing and the kernel queue fills. CPython starts one whenever the objects that
survived since the last have grown by a quarter, which under 10,000 new connections a
second is every 25 seconds or so.

Connections never form reference cycles (reference counting frees them), so there is
nothing in them for the collector to find. At every tick the worker therefore freezes
(`gc.freeze`) whatever is alive: automatic collections then look only at objects younger
than a tick, and frozen objects still die by reference counting the moment they are
dropped. What freezing does hold back is cyclic garbage (a finished shell session's
frames, say) among the frozen objects: every `thaw_every` seconds the worker thaws
everything and collects once, so that garbage lives ten minutes, not forever, and the
table's full traversal happens once per ten minutes instead of every few seconds.
"""

from __future__ import annotations

import gc

THAW_EVERY = 600.0


class FrozenCollector:
    """The worker's garbage-collection policy; `tick(now)` from its timer."""

    def __init__(self, now: float, thaw_every: float = THAW_EVERY) -> None:
        self.thaw_every = thaw_every
        self._thaw_at = now + thaw_every
        self.thaws = 0

    def tick(self, now: float) -> None:
        if now >= self._thaw_at:
            self.thaw()
            self._thaw_at = now + self.thaw_every
        gc.freeze()

    def thaw(self) -> None:
        """Everything back under the collector's eye, and the cyclic garbage of the frozen
        period collected; also on stop, so the process is left as it was found."""
        gc.unfreeze()
        gc.collect()
        self.thaws += 1
