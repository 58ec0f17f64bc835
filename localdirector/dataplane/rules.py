"""Netfilter rules that hand the appliance exactly its own traffic (DESIGN §3 "Netfilter").

Only packets toward configured VIP:ports and the replies of bound reals are queued; the
rest of the host's traffic never leaves the kernel. Everything lives in two chains of the
appliance's own in the ``raw`` table, so the appliance can replace or remove its rules
without touching anybody else's:

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

One appliance per network namespace: the chain names are fixed, so that a restarted
appliance finds and replaces what a killed one left behind.

Every change is one ``iptables-restore --noflush`` transaction (declaring a chain flushes
it), so the kernel never sees a half-written chain. This kernel's nftables has no native
queue expression; iptables-nft emits the xtables NFQUEUE target, which works.
"""

from __future__ import annotations

import logging
import subprocess
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..model.addr import format_ip
from ..model.director import Director

log = logging.getLogger("localdirector")

CHAIN = "LOCALDIRECTOR"
QUEUE_CHAIN = "LOCALDIRECTOR-QUEUE"
JUMP = f"-A PREROUTING -j {CHAIN}"
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

    def lines(self) -> list[str]:
        """The LOCALDIRECTOR chain's rules in iptables-save syntax, in a fixed order."""
        out: list[str] = []
        for direction, option, table in (("-d", "--dport", self.vips),
                                         ("-s", "--sport", self.reals)):
            for addr, ports in table:
                host = f"{direction} {format_ip(addr)}/32"
                for port in ports:
                    match = "" if port == ALL_PORTS else f" -m tcp {option} {port}"
                    out.append(f"-A {CHAIN} {host} -p tcp{match} -j {QUEUE_CHAIN}")
                out.append(f"-A {CHAIN} {host} -p icmp -j {QUEUE_CHAIN}")
        return out


def desired_rules(director: Director) -> RuleSet:
    """Snapshot of what the model needs queued; call with ``director.lock`` held.

    Live connections count too: a virtual removed or a real unbound keeps its existing
    connections flowing (DESIGN §3), so their traffic must stay queued until they end."""
    vips: dict[int, set[int]] = {}
    reals: dict[int, set[int]] = {}
    for v in director.iter_virtuals():
        vips.setdefault(v.addr, set()).add(v.port)
        for link in v.iter_links():
            # Real port 0 answers on whatever port the client asked for: the virtual's.
            reals.setdefault(link.real.addr, set()).add(link.real.port or v.port)
    for conn in director.conns:
        vips.setdefault(conn.virtual_ip, set()).add(conn.virtual_port)
        reals.setdefault(conn.real_ip, set()).add(conn.real_port)
    return RuleSet(_freeze(vips), _freeze(reals))


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

    def _restore(self, body: Iterable[str]) -> None:
        text = "\n".join(["*raw", *body, "COMMIT", ""])
        self._run(["iptables-restore", "--noflush"], text)
        self.transactions += 1

    def _existing(self) -> tuple[int, bool, bool]:
        """(jumps from PREROUTING, our chain exists, queue chain exists) as left by us
        or by an earlier run that was killed before it could clean up."""
        saved = self._run(["iptables-save", "-t", "raw"], "").splitlines()
        return (sum(1 for line in saved if line.strip() == JUMP),
                any(line.startswith(f":{CHAIN} ") for line in saved),
                any(line.startswith(f":{QUEUE_CHAIN} ") for line in saved))

    def install(self, rules: RuleSet) -> None:
        """First transaction: replace whatever a previous run left (both chains are
        redeclared, hence flushed) and end with exactly one jump from PREROUTING."""
        jumps, _, _ = self._existing()
        self._restore([
            f":{CHAIN} - [0:0]",
            f":{QUEUE_CHAIN} - [0:0]",
            *[f"-D PREROUTING -j {CHAIN}"] * jumps,
            f"-I PREROUTING 1 -j {CHAIN}",
            f"-A {QUEUE_CHAIN} -j NOTRACK",
            f"-A {QUEUE_CHAIN} -j NFQUEUE --queue-num {self.queue_num} --queue-bypass",
            *rules.lines(),
        ])
        self.applied = rules

    def update(self, rules: RuleSet) -> bool:
        """Replace the match chain in one transaction; False when nothing changed."""
        if rules == self.applied:
            return False
        self._restore([f":{CHAIN} - [0:0]", *rules.lines()])
        self.applied = rules
        return True

    def remove(self) -> None:
        """Take out the jump and both chains, whatever of them exists."""
        jumps, have_chain, have_queue = self._existing()
        body = [f"-D PREROUTING -j {CHAIN}"] * jumps
        if have_chain:
            body += [f"-F {CHAIN}", f"-X {CHAIN}"]
        if have_queue:
            body += [f"-F {QUEUE_CHAIN}", f"-X {QUEUE_CHAIN}"]
        if body:
            self._restore(body)
        self.applied = None


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

    def stop(self) -> None:
        """Stop following; the rules stay until RuleManager.remove()."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self.is_alive():
            self.join()
