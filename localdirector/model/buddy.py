"""Buddy groups of virtuals (LocalDirector's `buddy VIRTUAL NAME`; docs/design.rst,
"Sticky"): a client that sticky keeps on a real of one virtual of a group is sent, on
another virtual of the group, to that virtual's real with the same address. The two
halves of one shop (its HTTP and its HTTPS) then see one client on one machine, which
sticky on each virtual alone does not promise.

Each virtual keeps its group's name and the other members (`buddies`), so a SYN looks at
its buddies' sticky tables without a search (model/predictors.py, select_real)."""

from __future__ import annotations

from collections.abc import Iterable

from .errors import ModelError
from .family import refuse_mixed_group
from .virtual import VirtualMachine


def set_buddy(virtual: VirtualMachine, name: str, virtuals: Iterable[VirtualMachine]) -> None:
    """Put `virtual` in group `name` ("" takes it out of its group). `virtuals`: all of
    the model's, whose `buddies` are brought up to date. A kernel-decided virtual's
    SYNs never reach the predictors, so it cannot follow its buddies: refused."""
    if name and virtual.kernel:
        raise ModelError("buddy needs the engine to decide: this virtual is decided in "
                         "the kernel (no fastpath VIRTUAL kernel first)")
    virtuals = list(virtuals)
    if name:
        refuse_mixed_group(name, virtual.sid,
                           [v.sid for v in virtuals if v.buddy == name and v is not virtual])
    virtual.buddy = name
    regroup(virtuals)


def regroup(virtuals: Iterable[VirtualMachine]) -> None:
    """Every virtual's `buddies`: the other members of its group (a virtual added to or
    removed from the model, or a group changed)."""
    groups: dict[str, list[VirtualMachine]] = {}
    members = list(virtuals)
    for v in members:
        if v.buddy:
            groups.setdefault(v.buddy, []).append(v)
    for v in members:
        v.buddies = tuple(o for o in groups.get(v.buddy, ()) if o is not v) if v.buddy else ()
