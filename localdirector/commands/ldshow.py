"""`show real ld` and `show virtual ld`: LocalDirector's own column layout (issue 27
item 8), for an administrator whose eyes and scripts know it. The project's tables stay
the default; the data (`| json`) is the same rows under LocalDirector's headers.
`show buddy`: LocalDirector's listing of its buddy groups."""

from __future__ import annotations

from localdirector.model.serverid import ServerPattern
from localdirector.shell import args
from localdirector.shell.grammar import Keyword, opt
from localdirector.shell.registry import EXEC, command
from localdirector.shell.session import Session

from .show import SHOW, _selected

_LD = Keyword("ld", "In LocalDirector's column layout")


@command(EXEC, SHOW, Keyword("real", "Real servers"), _LD, opt(args.server_pattern()),
         output=True)
def show_real_ld(session: Session, pattern: ServerPattern | None = None) -> None:
    d = session.director
    reals = _selected(list(d.iter_reals()), pattern, "real")
    rows = [(str(r.sid), r.current_conns, d.real_state(r), r.threshold,
             r.noanswer_reassigns, r.reset_reassigns, r.total_conns) for r in reals]
    session.print("Real Machines:")
    session.print_table(("Machine", "Connect", "State", "Thresh", "No Answer Reassigns",
                         "TCP Reset Reassigns", "Total Conns"), rows,
                        fields=("machine", "connect", "state", "thresh",
                                "no_answer_reassigns", "tcp_reset_reassigns",
                                "total_conns"))


@command(EXEC, SHOW, Keyword("virtual", "Virtual server instances"), _LD,
         opt(args.server_pattern()), output=True)
def show_virtual_ld(session: Session, pattern: ServerPattern | None = None) -> None:
    d = session.director
    virtuals = _selected(list(d.iter_virtuals()), pattern, "virtual")
    rows = [(str(v.sid), v.sid.bind, v.conns_current, d.virtual_state(v), v.sticky,
             v.predictor, "dispatched" if v.dispatched else "directed") for v in virtuals]
    session.print("Virtual Machines:")
    session.print_table(("Machine", "Bind ID", "Connect", "State", "Sticky", "Predictor",
                         "Redirection"), rows)


@command(EXEC, SHOW, Keyword("buddy", "Buddy groups of virtuals (buddy VIRTUAL NAME)"),
         opt(args.word("name", "Only this buddy group")), output=True)
def show_buddy(session: Session, name: str | None = None) -> None:
    d = session.director
    rows = [(v.buddy, d.fmt(v.sid), v.sticky, d.virtual_state(v))
            for v in sorted(d.iter_virtuals(), key=lambda v: v.buddy)
            if v.buddy and (name is None or v.buddy == name)]
    session.print_table(("Buddy Group", "Virtual", "Sticky", "State"), rows,
                        fields=("buddy", "virtual", "sticky", "state"))
