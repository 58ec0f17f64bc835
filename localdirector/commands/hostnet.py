"""The appliance's own network lines of a LocalDirector configuration (issue 27 item 3;
docs/design.rst, "LocalDirector's language").

A LocalDirector was a box whose addresses, routes and interfaces its configuration set.
This appliance is a program on a host whose network the operating system manages, so
each such line is accepted with a one-line note naming the host's equivalent, and never
refused: a pasted configuration loads. Started with `--host-network IFACE` (off by
default), the director applies `ip address`, `alias ip address`, `route` and `arp` to
its own network namespace through netlink (hostlinks.py), keeps them in the running
config, and shows them in `show interfaces`, `show route` and `show arp`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from localdirector.model.addr import format_ip, format_mask, parse_ip, parse_mask, prefix_mask
from localdirector.model.director import Director
from localdirector.shell import args
from localdirector.shell.grammar import Arg, ArgError, Keyword, opt
from localdirector.shell.registry import Mode, command, declare
from localdirector.shell.session import Session

from . import hostlinks
from .ldcompat import note

CONFIG = Mode.CONFIG
MANAGED = "the host's network is managed by the operating system"


def _iface(session: Session) -> str | None:
    """The interface LocalDirector's `ip address` goes on, or None: notes only."""
    return getattr(session.appliance, "host_network", None)


def _mac(text: str, _session: object) -> str:
    """`0000.0c12.3456` (LocalDirector, IOS) or `00:00:0c:12:34:56`."""
    digits = text.replace(".", "").replace(":", "").replace("-", "").lower()
    if len(digits) != 12 or any(c not in "0123456789abcdef" for c in digits):
        raise ArgError(f"expected a MAC address such as 0000.0c12.3456, not '{text}'")
    return ":".join(digits[i:i + 2] for i in range(0, 12, 2))


def _saver(kind: str) -> Callable[[Director], list[Sequence[object]]]:
    return lambda d: list(d.settings.host_lines.get(kind, []))


def _prefix(addr: int, mask: int) -> str:
    return f"{format_ip(addr & prefix_mask(mask))}/{mask}"


def _apply(session: Session, kind: str, words: tuple[str, ...], no: bool, key: int,
           action: Callable[[str], str], equivalent: str) -> None:
    """With --host-network: `action(iface)` changes the namespace and says what it did,
    and the line is kept; without: the note and the host command that would do it."""
    iface = _iface(session)
    if iface is None:
        note(session, f"{MANAGED}: not applied (equivalent: {equivalent}; or start the "
                      "director with --host-network IFACE)")
        return
    done = action(iface)
    session.director.keep_host_line(kind, words, keep=not no, key=key)
    note(session, done)


# -- lines the director may apply -----------------------------------------------------------

@command(CONFIG, Keyword("ip", "The appliance's own address (LocalDirector)"),
         Keyword("address", "The appliance's address and mask"),
         args.ipv4("addr", "Address"), args.mask(), no=2, saver=_saver("ip address"))
def ip_address(session: Session, addr: int = 0, mask: int = 32, no: bool = False) -> None:
    kept = session.director.settings.host_lines.get("ip address")
    if no and not addr and kept:         # `no ip address`: the one this line set
        addr, mask = parse_ip(kept[0][0]), parse_mask(kept[0][1])
    words = (format_ip(addr), format_mask(mask))
    _apply(session, "ip address", words, no, 0,
           lambda iface: hostlinks.address(iface, addr, mask, "ip address", no),
           f"ip addr {'del' if no else 'replace'} {format_ip(addr)}/{mask} dev IFACE")


@command(CONFIG, Keyword("alias", "A further address of the appliance (LocalDirector)"),
         Keyword("ip", "IP"), Keyword("address", "Address and mask"),
         args.ipv4("addr", "Address"), args.mask(), no=4, saver=_saver("alias ip address"))
def alias_ip_address(session: Session, addr: int, mask: int = 32, no: bool = False) -> None:
    words = (format_ip(addr), format_mask(mask))
    _apply(session, "alias ip address", words, no, 1,
           lambda iface: hostlinks.address(iface, addr, mask, "alias", no),
           f"ip addr {'del' if no else 'add'} {format_ip(addr)}/{mask} dev IFACE")


@command(CONFIG, Keyword("route", "A static route of the appliance (LocalDirector)"),
         args.ipv4("dest", "Destination network"), args.mask(),
         args.ipv4("gateway", "Next hop"),
         opt(args.number("metric", 1, 65535, "Metric [1]")), no=3, saver=_saver("route"))
def route(session: Session, dest: int, mask: int, gateway: int = 0, metric: int = 1,
          no: bool = False) -> None:
    net = _prefix(dest, mask)
    words = (format_ip(dest), format_mask(mask), format_ip(gateway), str(metric))
    _apply(session, "route", words, no, 2,
           lambda _iface: hostlinks.route(net, format_ip(gateway) if gateway else None,
                                          metric, no),
           f"ip route {'del' if no else 'replace'} {net} via {format_ip(gateway)}")


@command(CONFIG, Keyword("arp", "A static ARP entry of the appliance (LocalDirector)"),
         args.ipv4("addr", "Address"),
         Arg("mac", "HHHH.HHHH.HHHH", "Hardware address", _mac),
         opt(Keyword("alias", "Answer ARP for it too (proxy)", "proxy", True)),
         no=2, saver=_saver("arp"))
def arp(session: Session, addr: int, mac: str = "", proxy: bool = False,
        no: bool = False) -> None:
    words = (format_ip(addr), mac) + (("alias",) if proxy else ())
    _apply(session, "arp", words, no, 1,
           lambda iface: hostlinks.neighbour(iface, format_ip(addr), mac, no),
           f"ip neigh replace {format_ip(addr)} lladdr {mac} dev IFACE nud permanent")


# -- lines only noted ---------------------------------------------------------------------

_ETHERNET = Keyword("ethernet", "A LocalDirector interface, by number")
_NUMBER = args.number("interface", 0, 15, "Interface number")
_REST = Arg("rest", "LINE", "The rest of the line", lambda text, _s: text, rest=True)


def _noted(*syntax: object, equivalent: str, no: int | None = None) -> None:
    """A line accepted with a note only: its meaning is the host's, said by `equivalent`
    (formatted with the line's captures)."""
    def handler(session: Session, no: bool = False, **captures: object) -> None:
        note(session, f"{MANAGED}: not applied (equivalent: "
                      f"{equivalent.format(**captures, state='up' if no else 'down')})")
    declare(CONFIG, *syntax, handler=handler, no=no)


_noted(Keyword("interface", "A LocalDirector interface's speed and duplex"), _ETHERNET,
       _NUMBER, args.word("speed", "auto, 10baset, 100basetx, 100full, ..."), no=3,
       equivalent="ethtool -s IFACE speed/duplex, or autoneg for {speed}")
_noted(Keyword("shutdown", "Disable a LocalDirector interface"), _ETHERNET, _NUMBER,
       no=3, equivalent="ip link set IFACE {state}")
_noted(Keyword("mtu", "A LocalDirector interface's MTU"), _NUMBER,
       args.number("bytes", 64, 65535, "Bytes"), no=2,
       equivalent="ip link set IFACE mtu {bytes}")
_noted(Keyword("ping-allow", "Which interfaces answer ping"), _NUMBER, opt(_REST), no=2,
       equivalent="the host firewall (nft) decides who may ping it")
_noted(Keyword("secure", "Pass only traffic for virtuals on an interface"), _NUMBER,
       no=2, equivalent="the host firewall (nft); the director only handles its VIPs")
_noted(Keyword("rip", "RIP on the appliance"), Keyword("passive", "Learn routes by RIP"),
       no=2, equivalent="a routing daemon on the host (bird2); routes: route DEST MASK GW")
_noted(Keyword("rip", "RIP on the appliance"), Keyword("version", "RIP version"),
       args.number("version", 1, 2, "1 or 2"), no=2,
       equivalent="a routing daemon on the host (bird2) speaking RIP {version}")
_noted(Keyword("multiring", "Token Ring multiring"), opt(_REST), no=1,
       equivalent="none: Token Ring source routing does not exist on Ethernet")
_noted(Keyword("failover", "Failover pair settings and actions"),
       Keyword("alias", "The standby unit's further address"),
       Keyword("ip", "IP"), Keyword("address", "Address"), args.ipv4("addr", "Address"),
       args.mask(), no=4, equivalent="the standby host's own address; addresses that "
       "move to the active unit are failover virtual ADDR MASK")
