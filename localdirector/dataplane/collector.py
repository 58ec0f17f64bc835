"""Keep CPython's cyclic garbage collector from stopping the data plane for half a second.

A full collection traverses every live connection (280 ms at a million, benchmarks.micro),
forwarding nothing meanwhile, and under 10,000 new connections a second CPython starts one
every 25 s or so. Connections never form cycles (reference counting frees them, frozen or
not), so at every tick the worker freezes what is alive; every `thaw_every` seconds it
thaws and collects once, so cyclic garbage among the frozen lives ten minutes, not forever
(docs/design.rst, "Data-plane service").
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
