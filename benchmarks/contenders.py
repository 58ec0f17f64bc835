"""The four ways of getting the clients' requests to the three nginx reals, over either
family.

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

import ipaddress
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from localdirector.lab import LabError

from .lab import PLAN4, PLANS, SMALL_PATH, VIP_PORT, BenchLab, Plan, netloc, url
from .udp import appliance_lines, nat_rule, udp_virtual

_STOP_DEADLINE = 10.0
SPARE_REALS = 100    # localdirector-kernel-maglev-many's reals beyond the three
SPARE_VIPS = 50      # localdirector-kernel-maglev-vips's VIP addresses beyond the one
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


class LocalDirector(Contender):
    """(d) The appliance itself, booted from a startup-config in the director namespace:
    the plan's virtual (``192.0.2.10:80:0:tcp`` or ``[2001:db8::10]:80:0:tcp``) bound to
    its family's reals, a udp virtual for DNS beside it (benchmarks/udp.py)."""

    name = "localdirector"
    description = "localdirector (NFQUEUE, Python engine)"
    nfqueue = True
    every_packet = True
    fastpath: str | None = None     # the `fastpath VIRTUAL` line's tail, if any
    predictor = "roundrobin"
    tables: tuple[str, ...] = ("raw",)      # where its iptables rules live
    tree: str | None = None    # another checkout's appliance (baseline_of), else this one

    def virtuals(self) -> tuple[str, str]:
        """The TCP virtual measured and the udp virtual for DNS."""
        return f"{netloc(self.plan.vip)}:0:tcp", udp_virtual(self.plan.vip)

    def config(self) -> str:
        virtual = self.virtuals()[0]
        reals = [f"{netloc(real, 0)}:0:tcp" for real in self.plan.reals]
        return "\n".join([
            "hostname bench",
            *(f"real {real} is" for real in reals),
            f"virtual {virtual} is",
            f"predictor {virtual} {self.predictor}",
            f"bind {virtual} {' '.join(reals)}",
            *appliance_lines(self.plan.vip, self.plan.reals, self.predictor),
            *(f"fastpath {v}{self.fastpath}" for v in self.virtuals()
              if self.fastpath is not None),
            "",
        ])

    def start(self, bench: BenchLab) -> None:
        assert bench.work is not None
        conf = bench.work / f"localdirector-{self.plan.name}.cfg"
        conf.write_text(self.config())
        # `-m` puts the working directory first on the path: the tree's, not ours.
        tree = ["env", "-C", self.tree, f"PYTHONPATH={self.tree}"] if self.tree else []
        self._spawn(bench, [*tree, sys.executable, "-m", "localdirector", "--no-console",
                            "--config", str(conf)])
        time.sleep(0.2)
        if self.proc.poll() is not None:
            raise ContenderUnavailable(f"exited at start (rc={self.proc.returncode})"
                                       f"{self._log_tail()}")
        self._wait_ready(bench)

    def stop(self, bench: BenchLab) -> list[str]:
        notes = []
        rc = self._terminate()
        if rc not in (0, 143, -signal.SIGTERM):
            notes.append(f"localdirector exited with status {rc}{self._log_tail()}")
        for tool in ("iptables-save", "ip6tables-save"):
            for table in self.tables:
                saved = bench.run(bench.director_ns, [tool, "-t", table], check=False).stdout
                if "LOCALDIRECTOR" in saved:
                    notes.append(f"localdirector left its {tool} {table}-table rules behind")
        return notes


class LocalDirectorFastpath(LocalDirector):
    """(e) The appliance with `fastpath` on the virtual: it decides each connection (its
    SYN is queued and marked), conntrack NAT translates the rest."""

    name = "localdirector-fastpath"
    description = "localdirector fastpath (Python decides, conntrack translates)"
    every_packet = False   # only SYNs are queued
    fastpath = ""
    tables = ("raw", "mangle", "nat")


class LocalDirectorKernel(LocalDirectorFastpath):
    """(f) The appliance with `fastpath VIRTUAL kernel`: its model compiled into nftables
    maps (Bind ID intervals, round robin by numgen), so the kernel decides each connection
    and Python sees none of its packets."""

    name = "localdirector-kernel"
    description = "localdirector fastpath kernel (the model compiled into nftables)"
    nfqueue = False
    fastpath = " kernel"

    def stop(self, bench: BenchLab) -> list[str]:
        notes = super().stop(bench)
        tables = bench.run(bench.director_ns, ["nft", "list", "tables"], check=False).stdout
        if "localdirector" in tables:
            notes.append("localdirector left its nftables table behind")
        return notes


class LocalDirectorKernelMaglev(LocalDirectorKernel):
    """(g) As (f) with `predictor maglev`: each connection's real is a jhash of its
    addresses and ports into the Maglev table (a 4,099-slot verdict map)."""

    name = "localdirector-kernel-maglev"
    description = "localdirector fastpath kernel, predictor maglev (jhash into the table)"
    predictor = "maglev"


def spare_addresses(network: str, count: int, taken: tuple[str, ...]) -> list[str]:
    """`count` addresses of the lab's `network` from its 100th on, none of `taken`."""
    net = ipaddress.ip_network(network)
    spares = [str(net.network_address + 100 + i) for i in range(count)]
    assert ipaddress.ip_address(spares[-1]) in net and not set(spares) & set(taken)
    return spares


class LocalDirectorKernelMaglevMany(LocalDirectorKernelMaglev):
    """(h) As (g) with ``SPARE_REALS`` more reals bound, out of service (``os``): the
    rules a site with many reals has (each tracked real's untracked-reply drop), while
    the same three serve. What the number of reals costs the kernel path's packets."""

    name = "localdirector-kernel-maglev-many"
    description = (f"localdirector fastpath kernel, predictor maglev, {SPARE_REALS} more "
                   "reals bound out of service")

    def spare_reals(self) -> list[str]:
        """Addresses in the reals' network no lab host has: never sent a packet."""
        return spare_addresses(self.plan.real_net, SPARE_REALS, self.plan.reals)

    def config(self) -> str:
        virtual = self.virtuals()[0]
        spares = [f"{netloc(real, 0)}:0:tcp" for real in self.spare_reals()]
        return super().config() + "\n".join(
            [*(f"real {real} os" for real in spares),
             *(f"bind {virtual} {real}" for real in spares), ""])


class LocalDirectorKernelMaglevVips(LocalDirectorKernelMaglev):
    """(i) As (g) with ``SPARE_VIPS`` more virtuals decided in the kernel the same way,
    on addresses of their own, bound to the same reals, never asked: the rules a site
    with many VIP addresses has (each tracked address's SYN budget and client note)."""

    name = "localdirector-kernel-maglev-vips"
    description = (f"localdirector fastpath kernel, predictor maglev, {SPARE_VIPS} more "
                   "VIP addresses")

    def spare_vips(self) -> list[str]:
        """Addresses in the VIPs' network besides the measured one."""
        return spare_addresses(self.plan.vip_net, SPARE_VIPS, (self.plan.vip,))

    def config(self) -> str:
        reals = " ".join(f"{netloc(real, 0)}:0:tcp" for real in self.plan.reals)
        lines = []
        for vip in self.spare_vips():
            virtual = f"{netloc(vip)}:0:tcp"
            # On the kernel path before its binds: a real serves one path.
            lines += [f"virtual {virtual} is", f"predictor {virtual} maglev",
                      f"fastpath {virtual} kernel", f"bind {virtual} {reals}"]
        return super().config() + "\n".join([*lines, ""])


_KINDS: tuple[type[Contender], ...] = (
    Direct, KernelNat, HAProxy, LocalDirector, LocalDirectorFastpath, LocalDirectorKernel,
    LocalDirectorKernelMaglev, LocalDirectorKernelMaglevMany, LocalDirectorKernelMaglevVips,
    NfqueueNull, NfqueueNullOwn, NfqueueNullOwnTwo)


def all_contenders(plan: Plan = PLAN4) -> list[Contender]:
    """Every contender, serving `plan`'s family."""
    return [kind(plan) for kind in _KINDS]


def contenders_of(names: list[str], families: list[str]) -> list[Contender]:
    """The contenders `names` for each of `families` (``ipv4``, ``ipv6``), a contender's
    families side by side, in the order of `names`."""
    ours = {(c.name, family): c for family in families for c in all_contenders(PLANS[family])}
    return [ours[(name, family)] for name in names for family in families
            if (name, family) in ours]


def with_baseline(contenders: list[Contender], tree: str | None,
                  per: int = 1) -> list[Contender]:
    """`contenders` (each name's `per` families side by side), each appliance's followed
    by twins running the appliance of the checkout `tree` (named ``NAME@base``), so that
    a change is measured side by side with the code before it in the same runs;
    unchanged without a tree."""
    out: list[Contender] = []
    for at in range(0, len(contenders), per):
        group = contenders[at:at + per]
        out += group
        for contender in group:
            if tree and isinstance(contender, LocalDirector):
                twin = type(contender)(contender.plan)
                twin.name, twin.tree = f"{contender.name}@base", tree
                out.append(twin)
    return out


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
