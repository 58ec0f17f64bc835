"""The drop guard: while this unit is not active (and during the commit of replicated
state when it becomes active), packets it would forward are dropped in raw PREROUTING,
before conntrack or the engine could answer a connection they do not know yet with a
RST; TCP resends them once the guard is lifted (docs/design.rst, "Failover").

Traffic for the box itself (VRRP, the replication stream, health-probe replies) and
anything on the failover link passes. Both families: IPv4's chain in iptables' raw
table, IPv6's the same in ip6tables' (IPv6 virtuals move with the pair too).

The guard also outlives a killed appliance: `sentinel_argv` is a process that dies with
it (PR_SET_PDEATHSIG) and raises the guard as it goes, so a unit whose appliance was
SIGKILLed on a live box stops forwarding at once, the fast path decided in the kernel
included (its nftables DNAT needs no process and would go on serving clients that still
send to this box, while the reals answer through the new active)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

CHAIN = "LDFAILOVER"
TOOLS = ("iptables", "ip6tables")     # the guard's, one chain per family


def iptables_raw(*args: str, check: bool = True, tool: str = "iptables") -> bool:
    proc = subprocess.run([tool, "-w", "-t", "raw", *args], capture_output=True,
                          text=True, check=False)
    if check and proc.returncode != 0:
        raise OSError(f"{tool} -t raw {' '.join(args)}: {proc.stderr.strip()}")
    return proc.returncode == 0


# Blocks its two signals, waits for one, then runs its arguments: one call per family,
# separated by ';'.
# SIGTERM is the parent-death signal: the appliance died (the thread that started the
# sentinel ends only with it, after a clean stop's STOP_SIGNAL), so the sentinel then
# ends the run's keepalived and conntrackd, which were not told of the death: until the
# guard is up, this box's nftables DNAT still takes new connections of the
# kernel-decided path, and conntrackd must live to send their entries to the other
# unit, which must not take over before it has them (a kill lost 18 of 5,000 such
# connections when both died with the appliance). HANDOFF: for conntrackd's last
# events to leave.
STOP_SIGNAL = signal.SIGUSR1
HANDOFF = 0.02
_SENTINEL = ("import signal, subprocess, sys, time\n"
             "from pathlib import Path\n"
             "from localdirector.runtime import end_leftovers\n"
             "waited = {signal.SIGTERM, signal.SIGUSR1}\n"
             "signal.pthread_sigmask(signal.SIG_BLOCK, waited)\n"
             "died = signal.sigwait(waited) == signal.SIGTERM\n"
             "args = sys.argv[3:]\n"
             "while args:\n"
             "    cut = args.index(';') if ';' in args else len(args)\n"
             "    subprocess.run(args[:cut], check=False)\n"
             "    args = args[cut + 1:]\n"
             "if died:\n"
             "    time.sleep(float(sys.argv[2]))\n"
             "    end_leftovers(Path(sys.argv[1]), signal.SIGTERM)\n")


def sentinel_argv(directory: Path) -> list[str]:
    """The sentinel's command line; `directory` (the run directory) names it, so a start
    after a crash ends a leftover one with the other helpers (runtime.claim)."""
    raise_ = ["-w", "-t", "raw", "-I", "PREROUTING", "1", "-j", CHAIN]
    calls = [word for i, tool in enumerate(TOOLS)
             for word in [*([";"] if i else []), tool, *raise_]]
    return [sys.executable, "-c", _SENTINEL, str(directory), str(HANDOFF), *calls]


class Guard:
    def __init__(self, link: str) -> None:
        self.link = link
        self.up = False
        for tool in TOOLS:
            iptables_raw("-N", CHAIN, check=False, tool=tool)
            iptables_raw("-F", CHAIN, tool=tool)
            for rule in (("-i", link, "-j", "RETURN"),
                         ("-m", "addrtype", "--dst-type", "LOCAL", "-j", "RETURN"),
                         ("-p", "vrrp", "-j", "RETURN"),
                         ("-j", "DROP")):
                iptables_raw("-A", CHAIN, *rule, tool=tool)

    def raise_(self) -> None:
        if not self.up:
            for tool in TOOLS:
                iptables_raw("-I", "PREROUTING", "1", "-j", CHAIN, tool=tool)
            self.up = True

    def lower(self) -> None:
        for tool in TOOLS:
            while iptables_raw("-D", "PREROUTING", "-j", CHAIN, check=False, tool=tool):
                pass
        self.up = False

    def remove(self) -> None:
        self.lower()
        for tool in TOOLS:
            iptables_raw("-F", CHAIN, check=False, tool=tool)
            iptables_raw("-X", CHAIN, check=False, tool=tool)
