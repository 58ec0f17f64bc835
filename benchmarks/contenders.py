"""The ways of getting the clients' requests to the three nginx reals, over either
family, but the appliance's own (benchmarks/appliance.py); benchmarks/roster.py names
them all.

A contender serves one family, its `plan` (benchmarks/lab.py: the VIP, the reals, the
words iptables and nft use): the same class measures IPv4 and IPv6, so the two differ in
addresses only.

Each contender installs its state in the director namespace on ``start`` and removes it on
``stop``; :func:`reset_director` then wipes whatever might be left (nft ruleset, conntrack
table, addresses on ``lo``) and checks that nothing runs there any more, so no contender
measures in the wake of another. ``stop`` returns notes about state a contender failed to
clean up by itself, which the report shows: leaving rules behind is a bug worth seeing.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from localdirector.lab import LabError

from .lab import PLAN4, SMALL_PATH, VIP_PORT, BenchLab, Plan, netloc, url
from .udp import nat_rule

_STOP_DEADLINE = 10.0
_NFT_TABLE = "ldbench_nat"


class ContenderUnavailable(RuntimeError):
    """The contender cannot run here; the message is the reason printed in its place."""


class Contender:
    """Base: clients target the VIP; subclasses say how it gets to the reals."""

    name = ""
    description = ""
    nfqueue = False  # packets pass an NFQUEUE: the kernel's queue counters are worth reading
    every_packet = False  # ... all of them, so CPU per queued packet is a per-packet cost
    workers = 1      # processes: the first and its children count as the contender's CPU

    def __init__(self, plan: Plan = PLAN4) -> None:
        self.plan = plan
        self.proc: subprocess.Popen[bytes] | None = None
        self.unavailable: str | None = None
        self._log: Path | None = None

    def target(self, index: int) -> str:
        """Host client process ``index`` connects to."""
        return self.plan.vip

    @property
    def label(self) -> str:
        """The name and family, as the log and the unavailable notes say it."""
        return f"{self.name} ({self.plan.name})"

    @property
    def pid(self) -> int | None:
        """The process doing the forwarding, if it is a process (for CPU and py-spy)."""
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def start(self, bench: BenchLab) -> None:
        raise NotImplementedError

    def stop(self, bench: BenchLab) -> list[str]:
        raise NotImplementedError

    def _wait_ready(self, bench: BenchLab) -> None:
        try:
            bench.wait_http(url(self.target(0), SMALL_PATH), what=self.label)
        except LabError as exc:
            raise ContenderUnavailable(f"{exc}{self._log_tail()}") from exc

    def _spawn(self, bench: BenchLab, argv: list[str]) -> None:
        """Start the forwarding process in the director namespace, output to a log whose
        tail explains a failure."""
        assert bench.work is not None
        self._log = bench.work / f"{self.name}-{self.plan.name}.log"
        with open(self._log, "ab") as log:
            self.proc = bench.popen(bench.director_ns, argv, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=log)

    def _log_text(self) -> str:
        if self._log is None or not self._log.exists():
            return ""
        return self._log.read_text(errors="replace")

    def _log_tail(self) -> str:
        text = self._log_text()[-500:].strip()
        return f"; {self.name} said: {text}" if text else ""

    def _terminate(self) -> int | None:
        """SIGTERM, then SIGKILL after a grace period; the exit status, None if none ran."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(_STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode


class Direct(Contender):
    """(a) No translation: client process i talks to real i mod 3, routed by the director."""

    name = "direct"
    description = "direct routing to the reals, no translation"

    def target(self, index: int) -> str:
        return self.plan.reals[index % len(self.plan.reals)]

    def start(self, bench: BenchLab) -> None:
        bench.set_direct_routes(True)
        for real in self.plan.reals:
            bench.wait_http(url(real, SMALL_PATH), what="direct route")

    def stop(self, bench: BenchLab) -> list[str]:
        bench.set_direct_routes(False)
        return []


class KernelNat(Contender):
    """(b) nftables DNAT in the director, round robin by ``numgen``; conntrack un-NATs
    the replies the director forwards back. The same for DNS on udp 53 (benchmarks/udp.py)."""

    name = "kernel-nat"
    description = "nftables dnat (numgen round robin) + conntrack"

    def start(self, bench: BenchLab) -> None:
        self._install_nat(bench)
        self._wait_ready(bench)

    def stop(self, bench: BenchLab) -> list[str]:
        bench.run(bench.director_ns, ["nft", "delete", "table", self.plan.nft, _NFT_TABLE],
                  check=False)
        return []

    def _install_nat(self, bench: BenchLab) -> None:
        plan = self.plan
        reals = ", ".join(f"{i} : {real}" for i, real in enumerate(plan.reals))
        ruleset = (
            f"table {plan.nft} {_NFT_TABLE} {{\n"
            "  chain prerouting {\n"
            "    type nat hook prerouting priority dstnat; policy accept;\n"
            f"    {plan.nft} daddr {plan.vip} tcp dport {VIP_PORT} "
            f"dnat to numgen inc mod {len(plan.reals)} map {{ {reals} }}\n"
            + nat_rule(plan, reals) +
            "  }\n"
            "}\n")
        try:
            bench.run(bench.director_ns, ["nft", "-f", "-"], input=ruleset)
        except LabError as exc:
            raise ContenderUnavailable(str(exc)) from exc


class NfqueueNull(KernelNat):
    """Diagnostic, not one of the products compared: kernel NAT translates, but every
    packet also passes through a Python NFQUEUE worker that re-injects it unchanged
    (benchmarks/nfq_null.py), queued where the appliance queues. What it loses against
    kernel NAT is the NFQUEUE tax any Python data plane pays; what localdirector loses
    against it is the engine's own cost."""

    name = "nfqueue-null"
    description = "kernel NAT + a do-nothing Python NFQUEUE worker (diagnostic)"
    nfqueue = True
    every_packet = True

    binding: tuple[str, ...] = ()
    queues = ("--queue-num", "0")

    def _rules(self) -> list[list[str]]:
        match = [["-d", self.plan.vip, "-p", "tcp", "--dport", str(VIP_PORT)]]
        match += [["-s", real, "-p", "tcp", "--sport", str(VIP_PORT)]
                  for real in self.plan.reals]
        return [["PREROUTING", *m, "-j", "NFQUEUE", *self.queues, "--queue-bypass"]
                for m in match]

    def start(self, bench: BenchLab) -> None:
        self._spawn(bench, [sys.executable, "-m", "benchmarks.nfq_null", "--queue", "0",
                            *self.binding])
        deadline = time.monotonic() + 10
        while "bound" not in self._log_text():
            if self.proc is not None and self.proc.poll() is not None or \
                    time.monotonic() > deadline:
                raise ContenderUnavailable(f"NFQUEUE worker did not bind{self._log_tail()}")
            time.sleep(0.05)
        for rule in self._rules():
            bench.run(bench.director_ns, [self.plan.iptables, "-w", "-t", "raw", "-A", *rule])
        self._install_nat(bench)
        self._wait_ready(bench)

    def stop(self, bench: BenchLab) -> list[str]:
        for rule in self._rules():
            bench.run(bench.director_ns, [self.plan.iptables, "-w", "-t", "raw", "-D", *rule],
                      check=False)
        notes = super().stop(bench)
        self._terminate()
        return notes


class NfqueueNullOwn(NfqueueNull):
    """Diagnostic: the do-nothing worker on the appliance's own binding (batched
    verdicts, GSO), accepting every packet unchanged: the floor of that binding."""

    name = "nfqueue-null-own"
    description = "kernel NAT + a do-nothing worker on localdirector's NFQUEUE binding"
    binding = ("--binding", "own")


class NfqueueNullOwnTwo(NfqueueNull):
    """Diagnostic: the same in two processes on two queues, the kernel spreading
    packets over them by address (``--queue-balance``): the ceiling a data plane split
    over two cores would have."""

    name = "nfqueue-null-own-2"
    description = "kernel NAT + two do-nothing worker processes on two queues"
    binding = ("--binding", "own", "--workers", "2")
    queues = ("--queue-balance", "0:1")
    workers = 2


class HAProxy(Contender):
    """(c) HAProxy in TCP mode: a full proxy, so the VIP must be a local address (on
    ``lo``) for this contender only. HAProxy reads an IPv6 address in brackets before
    its port, as a URL writes it."""

    name = "haproxy"
    description = "HAProxy, mode tcp, roundrobin"

    def start(self, bench: BenchLab) -> None:
        assert bench.work is not None
        plan = self.plan
        servers = "\n".join(f"    server r{i} {netloc(real)}" for i, real in enumerate(plan.reals))
        conf = bench.work / f"haproxy-{plan.name}.cfg"
        conf.write_text(
            "global\n    maxconn 8000\n"
            "defaults\n    mode tcp\n    maxconn 8000\n    timeout connect 5s\n"
            "    timeout client 60s\n    timeout server 60s\n"
            f"frontend vip\n    bind {netloc(plan.vip)}\n    default_backend reals\n"
            f"backend reals\n    balance roundrobin\n{servers}\n")
        bench.ip_batch(bench.director_ns, [f"addr add {plan.host} dev lo"], plan)
        self._spawn(bench, ["haproxy", "-db", "-f", str(conf)])
        self._wait_ready(bench)

    def stop(self, bench: BenchLab) -> list[str]:
        self._terminate()
        bench.run(bench.director_ns, ["ip", "addr", "del", self.plan.host, "dev", "lo"],
                  check=False)
        return []


def queue_counters(bench: BenchLab) -> dict[str, int] | None:
    """The kernel's counters of the NFQUEUEs in the director, summed: packets queued so
    far and packets lost on the way to the workers (full queue, full socket buffer)."""
    text = bench.run(bench.director_ns, ["cat", "/proc/net/netfilter/nfnetlink_queue"],
                     check=False).stdout
    counters = None
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 8:
            counters = counters or {"queued": 0, "queue_dropped": 0, "user_dropped": 0}
            counters["queued"] += int(fields[7])
            counters["queue_dropped"] += int(fields[5])
            counters["user_dropped"] += int(fields[6])
    return counters


def reset_director(bench: BenchLab) -> list[str]:
    """Leave the director namespace as the lab built it; returns what had to be wiped."""
    notes = []
    listing = json.loads(bench.run(bench.director_ns, ["nft", "-j", "list", "ruleset"]).stdout)
    rules = sum(1 for item in listing.get("nftables", []) if "rule" in item)
    if rules:
        notes.append(f"{rules} nft rules were left in the director")
    bench.run(bench.director_ns, ["nft", "flush", "ruleset"])
    addrs = bench.run(bench.director_ns, ["ip", "-o", "addr", "show", "dev", "lo"]).stdout
    for plan in bench.plans:
        bench.run(bench.director_ns, ["conntrack", "-F", "-f", plan.name], check=False)
        if f" {plan.host} " in addrs:
            notes.append(f"{plan.vip} was left on lo")
            bench.ip_batch(bench.director_ns, [f"addr del {plan.host} dev lo"], plan)
    pids = bench.director_pids()
    if pids:
        raise LabError(f"processes still running in the director namespace: {pids}")
    return notes
