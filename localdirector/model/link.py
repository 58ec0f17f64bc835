"""Link object (FIG. 2): one virtual bound to one real, chained per virtual."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .real import PhysicalMachine
    from .virtual import VirtualMachine


class Link:
    """A virtual reaches its reals through these, as in the patent, so one real can serve
    several virtuals and each pairing keeps its own weighted-round-robin credit."""

    __slots__ = ("next", "virtual", "real", "credit")

    def __init__(self, virtual: "VirtualMachine", real: "PhysicalMachine") -> None:
        self.next: Link | None = None
        self.virtual = virtual
        self.real = real
        self.credit = 0
