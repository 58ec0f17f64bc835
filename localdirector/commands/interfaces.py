"""`show ip interface brief` and `show interfaces`: the host's own network interfaces, in
the shapes IOS prints them, because automation asks for them to inventory a box (NAPALM
`get_facts` takes the first column of the brief table as its interface list; Ansible's
`ios_facts` reads `show interfaces`). An answer that were an error would be parsed as
data; a box with no interfaces gets the header alone."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass

from localdirector.shell.grammar import Keyword
from localdirector.shell.registry import EXEC, command
from localdirector.shell.render import Rows
from localdirector.shell.session import CommandFailed, Session

SHOW = Keyword("show", "Show running system information")
BRIEF = "{:<22} {:<15} {:<3} {:<6} {:<21} {}"


@dataclass(frozen=True)
class Link:
    """One interface as the kernel reports it (over netlink, so in the appliance's own
    network namespace, which /sys need not be)."""

    name: str
    hardware: str             # Ethernet, or Loopback
    enabled: bool             # administratively up
    carrier: bool             # line protocol up
    mac: str
    mtu: int
    addresses: tuple[tuple[str, int], ...]

    @property
    def status(self) -> str:
        if not self.enabled:
            return "administratively down"
        return "up" if self.carrier else "down"

    @property
    def protocol(self) -> str:
        return "up" if self.enabled and self.carrier else "down"


def links() -> list[Link]:
    """Every interface, in the kernel's order; `ip` failing is a one-line error."""
    try:
        found = json.loads(subprocess.run(["ip", "-j", "addr", "show"], capture_output=True,
                                          text=True, check=True, timeout=10).stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as err:
        raise CommandFailed(f"cannot list the interfaces: {err}") from None
    return [Link(name=link["ifname"],
                 hardware="Loopback" if link.get("link_type") == "loopback" else "Ethernet",
                 enabled="UP" in link.get("flags", ()),
                 carrier="LOWER_UP" in link.get("flags", ()),
                 mac=link.get("address", ""), mtu=link.get("mtu", 0),
                 addresses=tuple((a["local"], a["prefixlen"])
                                 for a in link.get("addr_info", ()) if a.get("family") == "inet"))
            for link in found]


def _cisco_mac(mac: str) -> str:
    """`aa:bb:cc:dd:ee:ff` as IOS writes it, `aabb.ccdd.eeff`."""
    digits = mac.replace(":", "")
    if len(digits) != 12:
        return "0000.0000.0000"
    return ".".join(digits[i:i + 4] for i in range(0, 12, 4))


@command(EXEC, SHOW, Keyword("ip", "IP information"),
         Keyword("interface", "The interfaces' IP addresses and state"),
         Keyword("brief", "One line per interface"), output=True, locked=False)
def show_ip_interface_brief(session: Session) -> None:
    """IOS's fixed columns (its parsers split on spaces; a two-word status stays in its
    column). Method `manual`: the host's configuration set the address, not DHCP."""
    rows = [(link.name, link.addresses[0][0] if link.addresses else "unassigned",
             "YES", "manual" if link.addresses else "unset", link.status,
             link.protocol) for link in links()]
    session.print_lines([BRIEF.format("Interface", "IP-Address", "OK?", "Method", "Status",
                                      "Protocol"),
                         *(BRIEF.format(*row).rstrip() for row in rows)])
    session.data = Rows(("interface", "ip_address", "ok", "method", "status", "protocol"),
                        rows)


@command(EXEC, SHOW, Keyword("interfaces", "Every interface's state, address and MTU"),
         output=True, locked=False)
def show_interfaces(session: Session) -> None:
    lines = []
    for link in links():
        lines += [f"{link.name} is {link.status}, line protocol is {link.protocol}",
                  f"  Hardware is {link.hardware}, address is {_cisco_mac(link.mac)} "
                  f"(bia {_cisco_mac(link.mac)})"]
        lines += [f"  Internet address is {addr}/{plen}" for addr, plen in link.addresses]
        # IOS always prints a bandwidth; the appliance does not read link speeds: 0.
        lines.append(f"  MTU {link.mtu} bytes, BW 0 Kbit/sec")
    session.print_lines(lines)
