"""BGP announcement of the VIPs, IOS-like without a sub-mode (docs/design.rst,
"Scale-out"), either family (a neighbour's address says its session's and the VIPs it
carries): `router bgp ASN`, `bgp router-id A.B.C.D`, `bgp neighbor ADDR remote-as ASN
[hold-time S]`, `advertise VIRTUAL`, `bgp drain`, and `show bgp`.

The configuration lives in the model (model/bgp.py). Sessions and what ExaBGP was told
come through `BgpHandle`, which the BGP service (localdirector/bgp/) attaches to its
appliance; without it `show bgp` shows the configuration and what would be announced."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from localdirector.model import bgp
from localdirector.model.addr import family_of, format_ip
from localdirector.model.serverid import ServerId
from localdirector.shell import args
from localdirector.shell.grammar import Keyword, opt
from localdirector.shell.registry import EXEC, Mode, command
from localdirector.shell.session import Session


CONFIG = Mode.CONFIG
BGP = Keyword("bgp", "BGP announcement of the VIPs")
ASN = (1, bgp.MAX_ASN)


@dataclass
class BgpStatus:
    """What the running service knows: ExaBGP's process, each session's last state
    (neighbor address -> up/down/connected), the VIPs announced now."""

    running: str                       # "running (pid N)", "stopped", or why not
    sessions: dict[int, str] = field(default_factory=dict)
    announced: frozenset[int] = frozenset()


class BgpHandle(Protocol):
    def status(self) -> BgpStatus: ...


# -- configuration, in running-config order ------------------------------------------------

@command(CONFIG, Keyword("router", "Routing protocol settings"),
         Keyword("bgp", "Announce the VIPs by BGP (ExaBGP) from this AS"),
         args.number("asn", *ASN, "Local AS number"), no=2,
         saver=lambda d: [(d.settings.bgp.asn,)] if d.settings.bgp.asn else [])
def router_bgp(session: Session, asn: int = 0, no: bool = False) -> None:
    session.director.set_bgp_as(0 if no else asn)


@command(CONFIG, BGP, Keyword("router-id", "BGP identifier [the local address]"),
         args.ipv4("addr", "An address of this director"), no=2,
         saver=lambda d: [(format_ip(d.settings.bgp.router_id),)]
         if d.settings.bgp.router_id else [])
def bgp_router_id(session: Session, addr: int = 0, no: bool = False) -> None:
    session.director.set_bgp_router_id(0 if no else addr)


def _saved_neighbors(director) -> list[tuple[object, ...]]:
    return [(format_ip(n.addr), "remote-as", n.remote_as,
             *(("hold-time", n.hold) if n.hold != bgp.DEFAULT_HOLD else ()))
            for n in director.settings.bgp.neighbors]


@command(CONFIG, BGP, Keyword("neighbor", "A BGP peer (the upstream router)"),
         args.ip("addr", "The peer's address: its family is the session's and its "
                         "routes'"),
         Keyword("remote-as", "The peer's AS"), args.number("remote_as", *ASN, "AS number"),
         opt(Keyword("hold-time", f"Seconds of silence before the session drops "
                                  f"[{bgp.DEFAULT_HOLD}]"),
             args.number("hold", *bgp.HOLD_RANGE, "Seconds")),
         no=3, saver=_saved_neighbors)
def bgp_neighbor(session: Session, addr: int, remote_as: int = 0,
                 hold: int = bgp.DEFAULT_HOLD, no: bool = False) -> None:
    if no:
        session.director.remove_bgp_neighbor(addr)
    else:
        session.director.add_bgp_neighbor(addr, remote_as, hold)


@command(CONFIG, Keyword("advertise", "Announce a virtual's VIP by BGP while it can serve"),
         args.virtual_id("id"), no=2,
         saver=lambda d: [(v.sid,) for v in d.iter_virtuals() if v.advertise])
def advertise(session: Session, id: ServerId, no: bool = False) -> None:
    session.director.set_advertise(id, not no)


@command(CONFIG, BGP, Keyword("drain", "Withdraw every VIP: the router sends no new flows "
                                       "here; open ones keep working"),
         no=2, saver=lambda d: [()] if d.settings.bgp.drain else [])
def bgp_drain(session: Session, no: bool = False) -> None:
    session.director.set_bgp_drain(not no)


# -- show bgp --------------------------------------------------------------------------------

@command(EXEC, Keyword("show", "Show running system information"),
         Keyword("bgp", "BGP: local AS, sessions, announced VIPs"), output=True)
def show_bgp(session: Session) -> None:
    director = session.director
    config = director.settings.bgp
    handle = session.appliance.bgp
    status = handle.status() if handle is not None else None
    wanted = bgp.wanted(director)
    if not config.asn:
        session.print("BGP not configured (router bgp ASN)")
        session.record(asn=None)
        return
    rid = format_ip(config.router_id) if config.router_id else "the local address"
    session.print_lines([f"BGP local AS {config.asn}, router-id {rid}"
                         f"{', DRAINED: every VIP withdrawn' if config.drain else ''}",
                         f"ExaBGP: {status.running if status else 'not running (no --bgp)'}"])
    session.record(asn=config.asn,
                   router_id=format_ip(config.router_id) if config.router_id else None,
                   drain=config.drain, exabgp=status.running if status else None)
    session.print_table(("Neighbor", "Remote-AS", "Hold", "State"),
                        [(format_ip(n.addr), n.remote_as, n.hold,
                          status.sessions.get(n.addr, "idle") if status else "-")
                         for n in config.neighbors], key="neighbors")
    announced = status.announced if status else frozenset()
    up = {addr for addr, state in status.sessions.items() if state == "up"} if status \
        else set()

    def state(vip: int) -> str:
        family = family_of(vip)
        if vip in announced:
            return "announced" if any(family_of(n) is family for n in up) else \
                "announced (no session up)"
        if config.drain:
            return "withdrawn (drain)"
        if not bgp.has_session(config, vip):
            return f"withdrawn (no {family.name} neighbor)"
        return "pending" if vip in wanted else "withdrawn (cannot serve)"

    rows = [(f"{format_ip(v.addr)}/{family_of(v.addr).width}", director.fmt(v.sid),
             state(v.addr)) for v in director.iter_virtuals() if v.advertise]
    session.print_table(("Prefix", "Virtual", "State"), rows, key="prefixes",
                        empty="No virtual is advertised (advertise VIRTUAL)")
