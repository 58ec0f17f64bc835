"""What is the udp protocol's own in the model (docs/design.rst, "UDP flows"): the
refusal that keeps one service one protocol, and `per-datagram` balancing. Mixed into
Director (director.py), whose lock and `changed()` it shares."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import ModelError

if TYPE_CHECKING:
    from .serverid import ServerId
    from .virtual import VirtualMachine


def refuse_other_protocol(fmt: Callable[[ServerId], str], sid: ServerId,
                          other: ServerId, what: str) -> None:
    """A virtual's reals and backups serve its own protocol: a udp datagram translated
    to a tcp real (or overflowing to a tcp virtual) would reach a port that speaks
    another protocol, so `bind` and `backup` across protocols are refused."""
    if sid.proto != other.proto:
        raise ModelError(f"cannot {what} {sid.proto} {fmt(sid)} to {other.proto} "
                         f"{fmt(other)}: a service is one protocol")


def per_datagram_refusal(fmt: Callable[[ServerId], str], virtual: VirtualMachine) -> str:
    """Why a per-datagram virtual cannot be on a fast path: conntrack's NAT, and the
    kernel's hash of a dispatched flow, send every datagram of a flow to one real."""
    return (f"{fmt(virtual.sid)} is per-datagram: on the fast path the kernel sends "
            "every datagram of a flow to one real (no per-datagram fastpath ID)")


class UdpSettings:
    """`per-datagram VIRTUAL`: every client datagram balanced anew."""

    if TYPE_CHECKING:
        def changed(self) -> None: ...

        def virtual(self, sid: ServerId) -> VirtualMachine: ...

        def fmt(self, sid: ServerId) -> str: ...

    def set_per_datagram(self, sid: ServerId, on: bool) -> None:
        """`[no] per-datagram VIRTUAL`: IPVS's one-packet scheduling. A resolver reusing
        one source port would otherwise pin all its queries on one real; each datagram
        is decided anew, and its answers still translated back (docs/design.rst, "UDP
        flows"). Refused on a tcp virtual, whose segments belong to one connection."""
        virtual = self.virtual(sid)
        if virtual.proto != "udp":
            raise ModelError("per-datagram applies to udp virtuals only")
        if on and virtual.fastpath:
            raise ModelError(per_datagram_refusal(self.fmt, virtual))
        if virtual.per_datagram != on:
            virtual.per_datagram = on
            self.changed()
