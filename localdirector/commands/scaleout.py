"""Scale-out commands (docs/design.rst, "Scale-out"): a virtual's forwarding mode
(`dispatched`), its Maglev table's size (`table-size`) and `show maglev`, which prints
a table's share per real and its digest so that two directors compare at a glance."""

from __future__ import annotations

from localdirector.model import kernelpath, maglev
from localdirector.model.addr import bracketed, format_ip
from localdirector.model.serverid import ServerId
from localdirector.shell import args
from localdirector.shell.grammar import Keyword
from localdirector.shell.registry import EXEC, Mode, command
from localdirector.shell.render import Cell
from localdirector.shell.session import CommandFailed, Session

from .show import SHOW

CONFIG = Mode.CONFIG


@command(CONFIG, Keyword("table-size", "Slots of a virtual's Maglev lookup table "
                                        f"[{maglev.DEFAULT_SIZE}]"),
         args.virtual_id("id"),
         args.number("size", maglev.MIN_SIZE, maglev.MAX_SIZE, "A prime number of slots"),
         no=2, saver=lambda d: [(v.sid, v.maglev_size) for v in d.iter_virtuals()
                                if v.maglev_size != maglev.DEFAULT_SIZE])
def table_size(session: Session, id: ServerId, size: int = maglev.DEFAULT_SIZE,
                no: bool = False) -> None:
    session.director.set_maglev_size(id, maglev.DEFAULT_SIZE if no else size)


@command(CONFIG, Keyword("dispatched", "Forward a virtual's connections to the real "
                                       "unchanged; the real answers the client itself"),
         args.virtual_id("id"), no=2,
         saver=lambda d: [(v.sid,) for v in d.iter_virtuals() if v.dispatched])
def dispatched(session: Session, id: ServerId, no: bool = False) -> None:
    """LocalDirector's dispatched mode: the real holds the VIP on a loopback; `no`: back
    to directed (NAT)."""
    session.director.set_dispatched(id, not no)


@command(EXEC, SHOW, Keyword("maglev", "A virtual's Maglev table: share per real, digest"),
         args.virtual_id("id"), output=True)
def show_maglev(session: Session, id: ServerId) -> None:
    director = session.director
    virtual = director.virtual(id)
    built = maglev.table_for(virtual)
    if built is None:
        raise CommandFailed(f"{director.fmt(id)} has no real in service: no table")
    shares = built.shares()
    per_weight = [slots / weight for (_a, _p, weight), slots in zip(built.members, shares)]
    rows = [(f"{bracketed(addr)}:{port}" if port else format_ip(addr),
             weight, slots,
             Cell(f"{100 * slots / built.size:.2f}%", round(100 * slots / built.size, 2)))
            for (addr, port, weight), slots in zip(built.members, shares)]
    note = "" if virtual.predictor == "maglev" else (
        f" (predictor is {virtual.predictor}: table not used)")
    balance = max(per_weight) / min(per_weight)
    session.print(f"Maglev table: {built.size} slots, {len(built.members)} reals, "
                  f"digest {built.digest()}, balance {balance:.3f} "
                  f"(max/min slots per weight){note}")
    session.record(size=built.size, digest=built.digest(), balance=round(balance, 3),
                   predictor=virtual.predictor)
    pool = kernelpath.pool(director, virtual) if virtual.kernel else None
    hashed = pool.maglev() if pool is not None else None
    if hashed is not None:
        # What the kernel loads (model/kernelpath.py): the same members, its own size.
        seed, loaded = hashed
        session.print(f"In the kernel: {loaded.size} slots, jhash seed 0x{seed:08x}, "
                      f"digest {loaded.digest()}")
        session.record(kernel_size=loaded.size, kernel_seed=seed,
                       kernel_digest=loaded.digest())
    session.print_table(("Real", "Weight", "Slots", "Share"), rows, key="reals",
                        fields=("real", "weight", "slots", "share_percent"))
