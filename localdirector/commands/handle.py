"""What the commands may ask of a running data plane, and nothing more.

The shell's commands and the data plane are separate floors (docs/design.rst, "Layers"):
the commands see the data plane only through this protocol, set once on
`Appliance.dataplane` by `cli.py` (None with `--no-dataplane`), so a command can neither
reach into the engine nor depend on how the data plane is built."""

from __future__ import annotations

from typing import Any, Protocol


class DataPlaneHandle(Protocol):
    def statistics(self) -> dict[str, Any]:
        """Counters for `show statistics`, snapshotted under the model lock by the data
        plane itself (the caller must not hold it)."""

    def clear_conns(self) -> int:
        """Forget every connection; returns how many there were."""

    def clear_counters(self) -> None:
        """Reset the data plane's own totals (the model's are reset by the command)."""

    def clock(self) -> float:
        """The engine's clock, which dates connections (`show conns` ages)."""

    def stop(self) -> None:
        """Remove the rules, unbind the queue, stop the worker."""
