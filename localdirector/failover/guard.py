"""The drop guard: while this unit is not active (and during the commit of replicated
state when it becomes active), packets it would forward are dropped in raw PREROUTING,
before conntrack or the engine could answer a connection they do not know yet with a
RST; TCP resends them once the guard is lifted (docs/design.rst, "Failover").

Traffic for the box itself (VRRP, the replication stream, health-probe replies) and
anything on the failover link passes.

The guard also outlives a killed appliance: `sentinel_argv` is a process that dies with
it (PR_SET_PDEATHSIG) and raises the guard as it goes, so a unit whose appliance was
SIGKILLed on a live box stops forwarding at once, the fast path decided in the kernel
included (its nftables DNAT needs no process and would go on serving clients that still
send to this box, while the reals answer through the new active)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CHAIN = "LDFAILOVER"


def iptables_raw(*args: str, check: bool = True) -> bool:
    proc = subprocess.run(["iptables", "-w", "-t", "raw", *args], capture_output=True,
                          text=True, check=False)
    if check and proc.returncode != 0:
        raise OSError(f"iptables -t raw {' '.join(args)}: {proc.stderr.strip()}")
    return proc.returncode == 0


# Blocks SIGTERM, waits for it, then runs its arguments: the parent-death signal's
# SIGTERM becomes one iptables call.
_SENTINEL = ("import signal, subprocess, sys\n"
             "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})\n"
             "signal.sigwait({signal.SIGTERM})\n"
             "subprocess.run(sys.argv[2:], check=False)\n")


def sentinel_argv(directory: Path) -> list[str]:
    """The sentinel's command line; `directory` (the run directory) names it, so a start
    after a crash ends a leftover one with the other helpers (runtime.claim)."""
    return [sys.executable, "-c", _SENTINEL, str(directory),
            "iptables", "-w", "-t", "raw", "-I", "PREROUTING", "1", "-j", CHAIN]


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
