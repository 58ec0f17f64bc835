"""`static REAL VIP` (LocalDirector; issue 27 item 4; docs/design.rst, "Static"): the
connections a real opens itself leave the director with a virtual's address as their
source, so the outside sees one address for the site.

A line names two addresses; which one is the real's and which the virtual's is read off
the model (LocalDirector's documentation of the line's order is lost, so either order is
accepted and saved as `static REAL VIP`). What here is pure model: which pair a line
means, and why a pair cannot take effect (`conflict`), which the command refuses and
`show static` and the rules (dataplane/ruleset.py) honour when a later bind causes it."""

from __future__ import annotations

from .addr import format_ip
from .director import Director
from .errors import ModelError
from .serverid import ALL_PORTS


def pair(director: Director, first: int, second: int) -> tuple[int, int]:
    """(real, vip) of `static FIRST SECOND`, in whichever order fits: one address must be
    a configured real's and the other a configured virtual's."""
    reals = {r.addr for r in director.iter_reals()}
    vips = {v.addr for v in director.iter_virtuals()}
    fits = [(r, v) for r, v in ((first, second), (second, first)) if r in reals and v in vips]
    words = f"{format_ip(first)} {format_ip(second)}"
    if not fits:
        raise ModelError(f"static {words}: needs a configured real's address and a "
                         "virtual's address (in either order)")
    if len(fits) == 2:
        raise ModelError(f"static {words}: each address is both a real's and a virtual's, "
                         "so which one leaves as which is not clear")
    return fits[0]


def conflict(director: Director, real: int, vip: int) -> str | None:
    """Why a real's own connections cannot leave as VIP, or None. The engine's path
    takes every packet of an address on every port (NOTRACK: untracked, so never
    translated): a real that answers a userspace virtual on every port sends nothing the
    kernel could translate, and a userspace virtual on every port of VIP would take the
    replies of the translated connections."""
    for v in director.iter_virtuals():
        if v.fastpath or v.dispatched:
            continue
        if v.addr == vip and v.port == ALL_PORTS:
            return (f"{director.fmt(v.sid)} takes every port of {format_ip(vip)} in the "
                    "engine, replies included")
        for link in v.iter_links():
            for r in director.backup_chain(link.real):
                if r.addr == real and (r.port or v.port) == ALL_PORTS:
                    return (f"{director.fmt(r.sid)} answers {director.fmt(v.sid)} on every "
                            "port, so the engine takes all its packets")
    return None


def add(director: Director, first: int, second: int) -> tuple[int, int]:
    """`static FIRST SECOND`: a real has one such address; a new line replaces its old."""
    real, vip = pair(director, first, second)
    why = conflict(director, real, vip)
    if why is not None:
        raise ModelError(f"static {format_ip(real)} {format_ip(vip)}: {why}")
    director.set_static(real, vip)
    return real, vip


def remove(director: Director, first: int, second: int) -> None:
    """`no static FIRST SECOND`, in either order (its virtual may be gone by now)."""
    statics = director.settings.statics
    for real, vip in ((first, second), (second, first)):
        if statics.get(real) == vip:
            director.set_static(real, None)
            return
    raise ModelError(f"no static {format_ip(first)} {format_ip(second)}")
