"""Whether this unit runs its stream to the other unit now, and with what (docs/design.rst,
"Failover"): the `Peer` for the configured other unit and shared key, rebuilt when
either changes, none while the pair is off or has no `failover key`. keepalived runs
regardless; only the appliance's own stream (configuration copy, replication,
step-down, save) waits for the key, and the reason it is off is said once."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .configs import Unit
from .peer import Peer

log = logging.getLogger("localdirector.failover")

NO_KEY = ("no failover key: the stream to the other unit is off (no configuration "
          "copy, replication or step-down); set the same `failover key` on both units")


class Stream:
    """`receive`, `on_connect`, `hold`: as `Peer` takes them."""

    def __init__(self, unit: Unit, receive: Callable[[dict[str, Any]], None],
                 on_connect: Callable[[], None], hold: Callable[[], float]) -> None:
        self.unit = unit
        self.receive, self.on_connect, self.hold = receive, on_connect, hold
        self.peer: Peer | None = None
        self.off = "no peer configured"    # why there is no stream, while there is none

    def follow(self, peer: str, key: bytes | None) -> None:
        """The model's pair, address and key (`peer` empty while the pair is off)."""
        if self.peer is not None and (self.peer.peer, self.peer.key) != (peer, key):
            self.peer.stop()
            self.peer = None
        off = "no peer configured" if not peer else NO_KEY if key is None else ""
        if off == NO_KEY and self.off != NO_KEY:
            log.warning("failover: %s", NO_KEY)
        self.off = off
        if peer and key is not None and self.peer is None:
            self.peer = Peer(self.unit, peer, key, self.receive, self.on_connect, self.hold)
            self.peer.start()

    def send(self, message: dict[str, Any], wait: bool = True) -> bool:
        return self.peer is not None and self.peer.send(message, wait)

    def status(self, heard: bool) -> str:
        """`show failover`'s replication line; `heard`: the other unit's hello is recent."""
        if self.peer is None:
            return self.off
        if self.peer.connected and heard:
            return f"to {self.peer.peer}, up"
        return f"to {self.peer.peer}, waiting for the other unit"

    def stop(self) -> None:
        if self.peer is not None:
            self.peer.stop()
            self.peer = None
