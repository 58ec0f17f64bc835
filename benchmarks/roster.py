"""Every benchmark contender by name (benchmarks/contenders.py, benchmarks/appliance.py),
for either family, and the appliance's twins from another checkout."""

from __future__ import annotations

from .appliance import (LocalDirector, LocalDirectorFastpath, LocalDirectorKernel,
                        LocalDirectorKernelMaglev, LocalDirectorKernelMaglevMany,
                        LocalDirectorKernelMaglevVips)
from .contenders import (Contender, Direct, HAProxy, KernelNat, NfqueueNull, NfqueueNullOwn,
                         NfqueueNullOwnTwo)
from .lab import PLAN4, PLANS, Plan

_KINDS: tuple[type[Contender], ...] = (
    Direct, KernelNat, HAProxy, LocalDirector, LocalDirectorFastpath, LocalDirectorKernel,
    LocalDirectorKernelMaglev, LocalDirectorKernelMaglevMany, LocalDirectorKernelMaglevVips,
    NfqueueNull, NfqueueNullOwn, NfqueueNullOwnTwo)


def all_contenders(plan: Plan = PLAN4) -> list[Contender]:
    """Every contender, serving `plan`'s family."""
    return [kind(plan) for kind in _KINDS]


def contenders_of(names: list[str], families: list[str]) -> list[Contender]:
    """The contenders `names` for each of `families` (``ipv4``, ``ipv6``), a contender's
    families side by side, in the order of `names`."""
    ours = {(c.name, family): c for family in families for c in all_contenders(PLANS[family])}
    return [ours[(name, family)] for name in names for family in families
            if (name, family) in ours]


def with_baseline(contenders: list[Contender], tree: str | None,
                  per: int = 1) -> list[Contender]:
    """`contenders` (each name's `per` families side by side), each appliance's followed
    by twins running the appliance of the checkout `tree` (named ``NAME@base``), so that
    a change is measured side by side with the code before it in the same runs;
    unchanged without a tree."""
    out: list[Contender] = []
    for at in range(0, len(contenders), per):
        group = contenders[at:at + per]
        out += group
        for contender in group:
            if tree and isinstance(contender, LocalDirector):
                twin = type(contender)(contender.plan)
                twin.name, twin.tree = f"{contender.name}@base", tree
                out.append(twin)
    return out
