"""Where the benchmark's CPU went (benchmarks/run.py): the machine's busy time, a
contender's own user and system seconds, and other work on the machine outside the lab's
namespaces, which skews the figures and is reported beside them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .lab import BenchLab


def machine_times() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine: every namespace shares these CPUs."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def _stat(pid: int | str) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (which may hold spaces
    and parentheses), numbered from the state at 0; None once the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def process_cpu(pid: int | None, children: bool = False) -> tuple[float, float]:
    """(user, system) CPU seconds, all threads, of ``pid`` so far (and of its live
    child processes with ``children``); zeros without one.

    The split matters for the appliance: system time is the kernel work its NFQUEUE
    system calls carry (receiving, and the verdict that sends the packet on its way),
    user time is everything Python does, the engine included."""
    own = _stat(pid) if pid is not None else None
    if own is None:
        return 0.0, 0.0
    stats = [own]
    for entry in os.scandir("/proc") if children else ():
        if entry.name.isdigit() and entry.name != str(pid):
            stat = _stat(entry.name)
            if stat is not None and int(stat[1]) == pid:
                stats.append(stat)
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(int(stat[11]) for stat in stats) / tick,
            sum(int(stat[12]) for stat in stats) / tick)


def lab_inodes(bench: BenchLab) -> set[int]:
    """Network-namespace inodes of the lab: a process in one of them is ours."""
    inodes = set()
    for ns in bench.lab.namespaces:
        try:
            inodes.add(os.stat(f"/run/netns/{ns}").st_ino)
        except OSError:
            pass
    return inodes


_PF_KTHREAD = 0x00200000


def foreign_cpu(ours: set[int]) -> dict[int, float]:
    """CPU seconds so far of every user process outside the lab's namespaces: other
    work on the machine, which skews the figures (our own harness idles while wrk runs).
    Kernel threads are left out: ksoftirqd and kworkers do the lab's own packet work
    when softirqs overflow, and they live in the host namespace."""
    tick = os.sysconf("SC_CLK_TCK")
    result = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry.name}/ns/net").st_ino in ours:
                continue
        except OSError:
            continue
        stat = _stat(entry.name)
        if stat is None or int(stat[6]) & _PF_KTHREAD:
            continue
        result[int(entry.name)] = (int(stat[11]) + int(stat[12])) / tick
    return result
