"""The drop guard: while this unit is not active (and during the commit of replicated
state when it becomes active), packets it would forward are dropped in raw PREROUTING,
before conntrack or the engine could answer a connection they do not know yet with a
RST; TCP resends them once the guard is lifted (docs/design.rst, "Failover").

Traffic for the box itself (VRRP, the replication stream, health-probe replies) and
anything on the failover link passes."""

from __future__ import annotations

import subprocess

CHAIN = "LDFAILOVER"


def iptables_raw(*args: str, check: bool = True) -> bool:
    proc = subprocess.run(["iptables", "-w", "-t", "raw", *args], capture_output=True,
                          text=True, check=False)
    if check and proc.returncode != 0:
        raise OSError(f"iptables -t raw {' '.join(args)}: {proc.stderr.strip()}")
    return proc.returncode == 0


class Guard:
    def __init__(self, link: str) -> None:
        self.link = link
        self.up = False
        iptables_raw("-N", CHAIN, check=False)
        iptables_raw("-F", CHAIN)
        for rule in (("-i", link, "-j", "RETURN"),
                     ("-m", "addrtype", "--dst-type", "LOCAL", "-j", "RETURN"),
                     ("-p", "vrrp", "-j", "RETURN"),
                     ("-j", "DROP")):
            iptables_raw("-A", CHAIN, *rule)

    def raise_(self) -> None:
        if not self.up:
            iptables_raw("-I", "PREROUTING", "1", "-j", CHAIN)
            self.up = True

    def lower(self) -> None:
        while iptables_raw("-D", "PREROUTING", "-j", CHAIN, check=False):
            pass
        self.up = False

    def remove(self) -> None:
        self.lower()
        iptables_raw("-F", CHAIN, check=False)
        iptables_raw("-X", CHAIN, check=False)
