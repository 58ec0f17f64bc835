"""What the box's interfaces say, as `ip` reports them: the addresses the pair's
instances are placed by, and whether the failover link has carrier."""

from __future__ import annotations

import subprocess


def interface_addresses() -> list[tuple[str, str, int]]:
    """(interface, address, prefix length) of every IPv4 address of this box and every
    IPv6 one but the link-local (a failover virtual is global: model/failover.py)."""
    out = subprocess.run(["ip", "-o", "addr", "show"], capture_output=True,
                         text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        words = line.split()
        if words[2] == "inet6" and "link" in words[4:6]:   # `scope link`
            continue
        if words[2] in ("inet", "inet6"):
            addr, _, plen = words[3].partition("/")
            found.append((words[1], addr, int(plen)))
    return found


def link_up(ifname: str) -> bool:
    """Up and with carrier (LOWER_UP): a pulled cable or a dead peer on a direct cable
    clears it."""
    out = subprocess.run(["ip", "-o", "link", "show", "dev", ifname], capture_output=True,
                         text=True, check=False).stdout
    return "LOWER_UP" in out and ",UP" in out
