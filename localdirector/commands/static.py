"""`static REAL VIP` and `show static`: LocalDirector's source NAT of the reals' own
connections (issue 27 item 4; docs/design.rst, "Static"). The model decides which address
is which and refuses what cannot work (model/statics.py); the rules follow the model
(dataplane/ruleset.py). Saved as `static REAL VIP`, after the servers it names."""

from __future__ import annotations

from collections.abc import Sequence

from localdirector.model import statics
from localdirector.model.addr import format_ip
from localdirector.model.director import Director
from localdirector.shell import args
from localdirector.shell.grammar import Keyword
from localdirector.shell.registry import EXEC, Mode, command
from localdirector.shell.session import Session

from .show import SHOW


def _saver(director: Director) -> list[Sequence[object]]:
    return [(format_ip(real), format_ip(vip))
            for real, vip in sorted(director.settings.statics.items())]


@command(Mode.CONFIG, Keyword("static", "A real's own connections leave with a VIP's "
                                        "address"),
         args.host("first", "The real's address, or the virtual's (either order)",
                   ipv4_only=True),
         args.host("second", "The virtual's address, or the real's",
                   ipv4_only=True), no=3, saver=_saver)
def static(session: Session, first: int, second: int, no: bool = False) -> None:
    """Either order: the model tells the real from the virtual (model/statics.py)."""
    if no:
        statics.remove(session.director, first, second)
    else:
        statics.add(session.director, first, second)


@command(EXEC, SHOW, Keyword("static", "Reals whose own connections leave as a VIP"),
         output=True)
def show_static(session: Session) -> None:
    """Every line, and whether it takes effect now: a bind made after it may have put
    the real's or the VIP's packets in the engine (statics.conflict)."""
    d = session.director
    rows = [(format_ip(real), format_ip(vip),
             statics.conflict(d, real, vip) or "active")
            for real, vip in sorted(d.settings.statics.items())]
    session.print_table(("Real", "Virtual", "State"), rows, empty="No static entries.")
