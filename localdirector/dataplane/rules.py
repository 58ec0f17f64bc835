"""Netfilter rules that hand the appliance exactly its own traffic (DESIGN §3 "Netfilter").

Only packets toward configured VIP:ports and the replies of bound reals are queued; the
rest of the host's traffic never leaves the kernel. Everything lives in chains of the
appliance's own (``LOCALDIRECTOR*``) in the ``raw`` table, so the appliance can replace or
remove its rules without touching anybody else's:

    -A PREROUTING -j LOCALDIRECTOR
    -A LOCALDIRECTOR -d VIP/32 -p tcp -m tcp --dport P -j LOCALDIRECTOR-QUEUE
    -A LOCALDIRECTOR -d VIP/32 -p icmp -j LOCALDIRECTOR-QUEUE
    -A LOCALDIRECTOR -s REAL/32 -p tcp -m tcp --sport P -j LOCALDIRECTOR-QUEUE
    -A LOCALDIRECTOR -s REAL/32 -p icmp -j LOCALDIRECTOR-QUEUE
    -A LOCALDIRECTOR-QUEUE -j NOTRACK
    -A LOCALDIRECTOR-QUEUE -j NFQUEUE --queue-num N --queue-bypass

Why raw PREROUTING: it runs before the routing decision, so a destination rewritten to
the real is routed to the real, and before conntrack, so NOTRACK keeps conntrack (and any
kernel NAT) from second-guessing translated packets. ``--queue-bypass`` lets packets
through untouched while no worker is bound (start-up, a crash) instead of blackholing
them. ICMP to VIPs and from reals is queued so the engine can translate ICMP errors
(path-MTU discovery) that quote a translated packet.

The director itself is a router on the path, and the errors *it* sends matter most: a
client's segment translated toward a real behind a smaller MTU comes back as the
director's own "fragmentation needed", quoting the translated packet, which the client
would not recognise. Locally generated ICMP errors leave through raw OUTPUT, so a chain
there queues them too (the kernel re-routes a packet whose addresses a queue changed)::

    -I OUTPUT 1 -p icmp -j LOCALDIRECTOR-LOCAL
    -A LOCALDIRECTOR-LOCAL -p icmp -m icmp --icmp-type 3 -j LOCALDIRECTOR-QUEUE   (11, 12)

SYN floods (`synguard`). One Python worker drains the queue at some 50-100,000 packets
a second; a flood beyond that fills the kernel queue, which then drops whatever comes
next, legitimate clients' packets included. So for every VIP:port whose virtual has a
`synguard` of N, a rule ahead of its queue rule sheds in the kernel the SYNs of any one
client address beyond N a second (bursts of N; the largest N when several Bind ID
instances share the VIP:port). A flooding address then costs the worker at most N
packets a second, of which the engine's own synguard keeps at most N half-open; a
legitimate client seldom opens N connections a second from one address, and one that
does sees a SYN retransmitted a second later, counted as shed. The shed SYNs go to a
chain holding a single counted DROP rule, declared once and never rewritten by
updates, so its counter is `show statistics`' running total::

    -A LOCALDIRECTOR -d VIP/32 -p tcp -m tcp --dport P --tcp-flags FIN,SYN,RST,ACK SYN
       -m hashlimit --hashlimit-above N/sec --hashlimit-burst N --hashlimit-mode srcip
       --hashlimit-name ldsgXXXXXXXX --hashlimit-htable-max 65536 ... -j LOCALDIRECTOR-SHED
    -A LOCALDIRECTOR-SHED -j DROP

The per-source table is bounded (65,536 addresses; the kernel drops SYNs of new
sources while it is full). A flood spread over many addresses below the rate still
reaches the engine, where `synguard` caps the half-open connections and the
queue-full drops are counted; a single-source flood costs the worker next to nothing.

Fragments. IPVS reassembles fragmented packets before it looks at them; so must we, since
only a first fragment carries the ports a connection is found by. The kernel reassembles
ahead of the raw table once anything in the namespace needs its defragmenter, and a rule
using the ``socket`` match does; so an install adds a chain that nothing jumps to, holding
one such rule that is never evaluated. The queue then sees whole packets, which the
kernel fragments again on the way out. Where the match is missing the data plane runs
without it (logged), and a fragmented packet never arrives whole: later fragments carry
no ports, so no rule queues them, and the engine drops any that reach it as `fragment`.

One appliance per network namespace: the chain names are fixed, so that a restarted
appliance finds and replaces what a killed one left behind.

Every change is one ``iptables-restore --noflush`` transaction (declaring a chain flushes
it), so the kernel never sees a half-written chain. This kernel's nftables has no native
queue expression; iptables-nft emits the xtables NFQUEUE target, which works.
"""

from __future__ import annotations

import logging
import re
import subprocess
import threading
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..model.addr import format_ip
from ..model.director import Director

log = logging.getLogger("localdirector")

CHAIN = "LOCALDIRECTOR"
QUEUE_CHAIN = "LOCALDIRECTOR-QUEUE"
LOCAL_CHAIN = "LOCALDIRECTOR-LOCAL"
SHED_CHAIN = "LOCALDIRECTOR-SHED"
DEFRAG_CHAIN = "LOCALDIRECTOR-DEFRAG"
OUR_CHAINS = (CHAIN, LOCAL_CHAIN, QUEUE_CHAIN, SHED_CHAIN, DEFRAG_CHAIN)  # referrers first
JUMP = f"-A PREROUTING -j {CHAIN}"
LOCAL_JUMP = f"-A OUTPUT -p icmp -j {LOCAL_CHAIN}"
# Destination unreachable (fragmentation needed included), time exceeded, parameter
# problem: the errors that quote a packet, as the engine translates them.
ICMP_ERRORS = (3, 11, 12)
GUARD_SOURCES = 65536      # client addresses the per-source SYN rate table holds
GUARD_EXPIRE_MS = 10000    # an address idle this long is forgotten
# The packet counters of the two rules every packet we take ends at: the queue and the
# guard's drop. `show statistics` adds them up against the engine's and the queue's.
_COUNTERS = {"queued": re.compile(rf"^\[(\d+):\d+\] -A {QUEUE_CHAIN} -j NFQUEUE ", re.M),
             "shed": re.compile(rf"^\[(\d+):\d+\] -A {SHED_CHAIN} -j DROP$", re.M)}
ALL_PORTS = 0
# A burst of configuration lines (a replayed startup-config, a pasted block) becomes one
# transaction instead of one iptables-restore per line.
SETTLE_SECONDS = 0.05

Runner = Callable[[list[str], str], str]


class RulesError(RuntimeError):
    """iptables refused a transaction; the text is what the operator needs to see."""


@dataclass(frozen=True, slots=True)
class RuleSet:
    """What must be queued: ``vips`` and ``reals`` map an address to the TCP ports
    (ALL_PORTS = every port) of traffic to / from it. Comparable, so an unchanged set
    costs no iptables call."""

    vips: tuple[tuple[int, tuple[int, ...]], ...]
    reals: tuple[tuple[int, tuple[int, ...]], ...]
    # (VIP, port, SYNs a second per client address) for VIP:ports under `synguard`.
    guards: tuple[tuple[int, int, int], ...] = ()

    def lines(self) -> list[str]:
        """The LOCALDIRECTOR chain's rules in iptables-save syntax, in a fixed order."""
        out: list[str] = []
        for direction, option, table in (("-d", "--dport", self.vips),
                                         ("-s", "--sport", self.reals)):
            for addr, ports in table:
                host = f"{direction} {format_ip(addr)}/32"
                if direction == "-d":
                    out += [_guard_line(addr, port, rate)
                            for vip, port, rate in self.guards if vip == addr]
                for port in ports:
                    match = "" if port == ALL_PORTS else f" -m tcp {option} {port}"
                    out.append(f"-A {CHAIN} {host} -p tcp{match} -j {QUEUE_CHAIN}")
                out.append(f"-A {CHAIN} {host} -p icmp -j {QUEUE_CHAIN}")
        return out


def _guard_line(addr: int, port: int, rate: int) -> str:
    """The kernel SYN-rate guard of one VIP:port (see the module docstring). The table
    name changes with the rate because the kernel keeps the settings of the first rule
    that created a table of a given name."""
    name = f"ldsg{zlib.crc32(f'{addr}:{port}:{rate}'.encode()):08x}"
    ports = f" --dport {port}" if port != ALL_PORTS else ""
    return (f"-A {CHAIN} -d {format_ip(addr)}/32 -p tcp -m tcp{ports} "
            f"--tcp-flags FIN,SYN,RST,ACK SYN -m hashlimit --hashlimit-above {rate}/sec "
            f"--hashlimit-burst {rate} --hashlimit-mode srcip --hashlimit-name {name} "
            f"--hashlimit-htable-max {GUARD_SOURCES} "
            f"--hashlimit-htable-expire {GUARD_EXPIRE_MS} -j {SHED_CHAIN}")


def desired_rules(director: Director) -> RuleSet:
    """Snapshot of what the model needs queued; call with ``director.lock`` held.

    Live connections count too: a virtual removed or a real unbound keeps its existing
    connections flowing (DESIGN §3), so their traffic must stay queued until they end."""
    vips: dict[int, set[int]] = {}
    reals: dict[int, set[int]] = {}
    guards: dict[tuple[int, int], int] = {}
    for v in director.iter_virtuals():
        vips.setdefault(v.addr, set()).add(v.port)
        if v.synguard:
            dest = (v.addr, v.port)
            guards[dest] = max(guards.get(dest, 0), v.synguard)
        for link in v.iter_links():
            # Real port 0 answers on whatever port the client asked for: the virtual's.
            reals.setdefault(link.real.addr, set()).add(link.real.port or v.port)
    for conn in director.conns:
        vips.setdefault(conn.virtual_ip, set()).add(conn.virtual_port)
        reals.setdefault(conn.real_ip, set()).add(conn.real_port)
    return RuleSet(_freeze(vips), _freeze(reals),
                   tuple((addr, port, rate) for (addr, port), rate in sorted(guards.items())))


def _freeze(table: dict[int, set[int]]) -> tuple[tuple[int, tuple[int, ...]], ...]:
    """Sorted and minimal: a wildcard port makes that address's specific ports redundant."""
    return tuple((addr, (ALL_PORTS,) if ALL_PORTS in ports else tuple(sorted(ports)))
                 for addr, ports in sorted(table.items()))


def run_iptables(argv: list[str], stdin: str = "") -> str:
    """Run one iptables tool; a failure raises RulesError with iptables' own message."""
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RulesError(f"{argv[0]}: {exc}") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise RulesError(f"{' '.join(argv)} failed: {detail[-1] if detail else done.returncode}")
    return done.stdout


class RuleManager:
    """Owns the two chains in the current network namespace's raw table."""

    def __init__(self, queue_num: int, runner: Runner = run_iptables) -> None:
        self.queue_num = queue_num
        self._run = runner
        self.applied: RuleSet | None = None
        self.transactions = 0
        self._bases = dict.fromkeys(_COUNTERS, 0)

    def _restore(self, body: Iterable[str]) -> None:
        text = "\n".join(["*raw", *body, "COMMIT", ""])
        self._run(["iptables-restore", "--noflush"], text)
        self.transactions += 1

    def _existing(self) -> tuple[int, int, set[str]]:
        """(jumps from PREROUTING, jumps from OUTPUT, which of our chains exist) as left
        by us or by an earlier run that was killed before it could clean up."""
        saved = [line.strip() for line in
                 self._run(["iptables-save", "-t", "raw"], "").splitlines()]
        chains = {line[1:].split()[0] for line in saved if line.startswith(":")}
        return saved.count(JUMP), saved.count(LOCAL_JUMP), chains & set(OUR_CHAINS)

    def install(self, rules: RuleSet) -> None:
        """First transaction: replace whatever a previous run left (every chain is
        redeclared, hence flushed) and end with exactly one jump from PREROUTING and
        one from OUTPUT."""
        jumps, local_jumps, _ = self._existing()
        self._restore([
            f":{CHAIN} - [0:0]",
            f":{QUEUE_CHAIN} - [0:0]",
            *[f"-D PREROUTING -j {CHAIN}"] * jumps,
            f"-I PREROUTING 1 -j {CHAIN}",
            f"-A {QUEUE_CHAIN} -j NOTRACK",
            f"-A {QUEUE_CHAIN} -j NFQUEUE --queue-num {self.queue_num} --queue-bypass",
            f":{LOCAL_CHAIN} - [0:0]",
            f":{SHED_CHAIN} - [0:0]",
            *[LOCAL_JUMP.replace("-A ", "-D ", 1)] * local_jumps,
            LOCAL_JUMP.replace("-A OUTPUT", "-I OUTPUT 1", 1),
            *(f"-A {LOCAL_CHAIN} -p icmp -m icmp --icmp-type {kind} -j {QUEUE_CHAIN}"
              for kind in ICMP_ERRORS),
            f"-A {SHED_CHAIN} -j DROP",
            *rules.lines(),
        ])
        self.applied = rules
        self._bases = dict.fromkeys(_COUNTERS, 0)
        try:
            self._restore([f":{DEFRAG_CHAIN} - [0:0]", f"-A {DEFRAG_CHAIN} -m socket -j RETURN"])
        except RulesError as exc:
            log.warning("fragments will not be reassembled before translation: %s", exc)

    def update(self, rules: RuleSet) -> bool:
        """Replace the match chain in one transaction; False when nothing changed."""
        if rules == self.applied:
            return False
        self._restore([f":{CHAIN} - [0:0]", *rules.lines()])
        self.applied = rules
        return True

    def remove(self) -> None:
        """Take out the jumps and our chains, whatever of them exists (referring chains
        before the ones they refer to)."""
        jumps, local_jumps, chains = self._existing()
        body = [f"-D PREROUTING -j {CHAIN}"] * jumps
        body += [LOCAL_JUMP.replace("-A ", "-D ", 1)] * local_jumps
        for chain in OUR_CHAINS:
            if chain in chains:
                body += [f"-F {chain}", f"-X {chain}"]
        if body:
            self._restore(body)
        self.applied = None

    def counters(self) -> dict[str, int]:
        """Packets sent to the queue and SYNs shed by the kernel guard, since install or
        the last `clear counters`."""
        saved = self._run(["iptables-save", "-c", "-t", "raw"], "")
        found = {name: pattern.search(saved) for name, pattern in _COUNTERS.items()}
        return {name: int(match[1]) - self._bases[name] if match else 0
                for name, match in found.items()}

    def clear_counters(self) -> None:
        """`clear counters`: the kernel's counters run on; remember where we started."""
        for name, value in self.counters().items():
            self._bases[name] += value


class RuleSync(threading.Thread):
    """Follows the model: a change only marks the rules dirty (cheap, and safe under the
    model lock, where the model calls its listeners); this thread snapshots the rules
    under the lock, then runs iptables without it, so neither the shell nor the packet
    path ever waits for a subprocess."""

    def __init__(self, director: Director, manager: RuleManager) -> None:
        super().__init__(name=f"rules-q{manager.queue_num}", daemon=True)
        self.director = director
        self.manager = manager
        self.synced_generation = -1
        self.errors = 0
        self._cond = threading.Condition()
        self._dirty = False
        self._stopping = False
        director.subscribe(self._on_change)

    def _on_change(self) -> None:
        with self._cond:
            self._dirty = True
            self._cond.notify()

    def install(self) -> None:
        """Synchronous first install, so start-up fails loudly if iptables refuses."""
        with self.director.lock:
            generation = self.director.generation
            rules = desired_rules(self.director)
        self.manager.install(rules)
        self.synced_generation = generation

    def run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._dirty or self._stopping)
                # Let a burst of changes settle into one transaction.
                self._cond.wait_for(lambda: self._stopping, SETTLE_SECONDS)
                if self._stopping:
                    return
                self._dirty = False
            self.sync_once()

    def sync_once(self) -> None:
        """Bring the kernel up to the model's current generation."""
        with self.director.lock:
            generation = self.director.generation
            rules = desired_rules(self.director)
        try:
            self.manager.update(rules)
        except RulesError as exc:
            self.errors += 1
            log.error("netfilter rules not updated: %s", exc)
            return
        self.synced_generation = generation

    def adopt(self, director: Director) -> None:
        """`reload`: follow the new model from now on, and bring the rules up to it."""
        director.subscribe(self._on_change)
        self.director = director
        self._on_change()

    def stop(self) -> None:
        """Stop following; the rules stay until RuleManager.remove()."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self.is_alive():
            self.join()
