"""Many short connections across an event (a crash of the failover pair's active unit, a
`failover active`), driven from a test or a benchmark: the lab client (client.py) runs
`count` GETs, `concurrency` at a time, from the client namespace while the event
happens. A raw-table rule there counts every packet from the reals' network that reaches
the clients: they reach the reals only through the VIPs, so any such packet is a reply
the director leaked untranslated (docs/design.rst, "Packet flow")."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .client import Fetch
from .driver import Lab, python_module
from .topology import REAL_NET, LabError

LEAK_RULE = ("PREROUTING", "-s", str(REAL_NET))


@dataclass
class Churn:
    """What the clients saw: every request's outcome, and the packets from the reals."""

    results: list[Fetch]
    leaked: int

    @property
    def lost(self) -> list[Fetch]:
        return [r for r in self.results if not r.ok]


def across(lab: Lab, vip: str, sources: Sequence[str], under_way: Callable[[], bool],
           event: Callable[[], None], count: int = 800, concurrency: int = 6,
           timeout: float = 20.0) -> Churn:
    """Start the requests, wait until `under_way()` says they cross the director, run
    `event` while they still run, and collect them. `timeout`: each connection's, long
    enough for SYN retransmissions to span a takeover."""
    if _iptables(lab, "-C", *LEAK_RULE, check=False).returncode != 0:
        _iptables(lab, "-I", *LEAK_RULE)
    _iptables(lab, "-Z", LEAK_RULE[0])
    client = lab.popen_in(lab.client_ns, [
        *python_module("client", "get"), "--url", f"http://{vip}/", "--count", str(count),
        "--concurrency", str(concurrency), "--timeout", str(timeout),
        *(arg for source in sources for arg in ("--source", source))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not under_way():
        if time.monotonic() > deadline or client.poll() is not None:
            client.kill()
            raise LabError("the requests did not get under way before they ended")
        time.sleep(0.02)
    if client.poll() is not None:
        raise LabError("the requests ended before the event")
    event()
    out, err = client.communicate(timeout=30 + count * timeout / concurrency)
    if client.returncode != 0:
        raise LabError(f"lab client failed: {err.strip()}")
    results = [Fetch(**record) for record in json.loads(out)["results"]]
    listing = _iptables(lab, "-nvxL", LEAK_RULE[0]).stdout
    rows = [line.split() for line in listing.splitlines() if LEAK_RULE[2] in line]
    return Churn(results, int(rows[0][0]))


def _iptables(lab: Lab, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = lab.run_in(lab.client_ns, ["iptables", "-w", "-t", "raw", *args])
    if check and proc.returncode != 0:
        raise LabError(f"iptables {' '.join(args)} in {lab.client_ns}: {proc.stderr.strip()}")
    return proc
