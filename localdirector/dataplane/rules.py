"""Netfilter rules that hand the appliance exactly its own traffic (DESIGN §3 "Netfilter").

Only packets toward configured VIP:ports and the replies of bound reals are queued; the
rest of the host's traffic never leaves the kernel. Everything lives in chains of the
appliance's own (``LOCALDIRECTOR*``) in the ``raw`` table (and, for the fast path below,
in ``mangle`` and ``nat``), so the appliance can replace or remove its rules without
touching anybody else's:

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

Fast path (`fastpath VIRTUAL`). Its VIP:ports get no raw rule: their packets must stay
tracked, because conntrack NAT translates them. The engine decides each new connection
and answers with a mark standing for the chosen real; a mark map in the ``nat`` table
turns the mark into the DNAT, and conntrack translates the rest of the connection both
ways in the kernel. The engine sees only what FIG. 5's bookkeeping needs, from chains of
ours in the ``mangle`` table: queued (NFQUEUE) where it must give a verdict, the SYNs
and a real's RST that may answer a SYN; copied (NFLOG group N, see nflog.py) where it
only takes note, the real's SYN-ACK and the FINs and RSTs of an established connection::

    mangle:
    -A PREROUTING -j LOCALDIRECTOR
    -A FORWARD -j LOCALDIRECTOR-REPLY
    -A LOCALDIRECTOR -d VIP/32 -p tcp -m tcp --dport P -m conntrack --ctstate NEW
       -j LOCALDIRECTOR-QUEUE
    -A LOCALDIRECTOR -d VIP/32 -p tcp -m tcp --dport P ! --tcp-flags FIN,RST NONE
       -m conntrack --ctstate ESTABLISHED -j LOCALDIRECTOR-LOG
    -A LOCALDIRECTOR-REPLY -p tcp -m tcp --tcp-flags RST RST -m conntrack --ctdir REPLY
       ! --ctstatus ASSURED --ctorigdst VIP --ctorigdstport P -j LOCALDIRECTOR-QUEUE
    -A LOCALDIRECTOR-REPLY -p tcp -m tcp ! --tcp-flags FIN,SYN,RST NONE
       -m conntrack --ctdir REPLY --ctorigdst VIP --ctorigdstport P -j LOCALDIRECTOR-LOG
    -A LOCALDIRECTOR-QUEUE -j NFQUEUE --queue-num N --queue-bypass
    -A LOCALDIRECTOR-LOG -j NFLOG --nflog-group N --nflog-size 128
    nat:
    -A PREROUTING -m mark ! --mark 0x0/0xffff0000 -j LOCALDIRECTOR
    -A LOCALDIRECTOR -p tcp -m mark --mark 0x10000/0xffff0000
       -j DNAT --to-destination REAL[:PORT]

Why these hooks (each verified on this kernel): mangle PREROUTING runs after conntrack
and before nat PREROUTING, so a client's packet still has the VIP as destination (the
engine's inbound key) and the mark is set before the DNAT rule looks. ``--ctstate NEW``
takes the SYN and, because conntrack calls every packet of an unanswered connection
NEW, the client's SYN retransmissions (`reassign` counts them); a packet that conntrack
picks up without a SYN (it lost the entry) is NEW too and gets its mark again. A RST
from the real before conntrack saw the handshake complete (not ASSURED) may be the
refusal of the SYN, which the engine absorbs to reassign: it is queued; NFLOG continues
to the next rule, so a queued RST is not also copied. The real's packets are taken in
FORWARD, after nat PREROUTING has undone any client-port remapping of the kernel's NAT,
so their destination is the client's own port (the engine's reply key) while the source
is still the real's. A real port 0 DNATs to the address alone: the client's port is
kept. ICMP errors about fast-path connections are conntrack's (RELATED) unless the VIP
or real address also serves userspace traffic, whose ICMP rule then hands them to the
engine, which translates them from its table all the same. Marks use the high 16 bits only
(MARK_MASK; the worker keeps the others), one per DNAT target, stable while the target
is configured, so a mark in flight never changes meaning.

One appliance per network namespace: the chain names are fixed, so that a restarted
appliance finds and replaces what a killed one left behind.

Every change is one ``iptables-restore --noflush`` run (declaring a chain flushes it),
one table after the other: iptables-nft commits each table on its own (verified: a
failure in the nat part left the mangle part applied), so the kernel never sees a
half-written chain but may briefly see the raw part of a change before the rest. That
is harmless because the engine takes new marks only once the whole run succeeded, and a
VIP:port changes mode only without open connections (`fastpath`). This kernel's
nftables has no native queue expression; iptables-nft emits the xtables NFQUEUE target,
which works.
"""

from __future__ import annotations

import logging
import re
import subprocess
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from ..model.addr import format_ip
from ..model.director import Director
from ..model.fastpath import fast_targets
from ..model.real import PhysicalMachine
from . import nflog

log = logging.getLogger("localdirector")

CHAIN = "LOCALDIRECTOR"
QUEUE_CHAIN = "LOCALDIRECTOR-QUEUE"
LOCAL_CHAIN = "LOCALDIRECTOR-LOCAL"
SHED_CHAIN = "LOCALDIRECTOR-SHED"
DEFRAG_CHAIN = "LOCALDIRECTOR-DEFRAG"
REPLY_CHAIN = "LOCALDIRECTOR-REPLY"
LOG_CHAIN = "LOCALDIRECTOR-LOG"
MARK_SHIFT = 16
MARK_MASK = 0xFFFF0000        # the bits of the packet mark that are ours
MAX_MARKS = MARK_MASK >> MARK_SHIFT
OUR_CHAINS = (CHAIN, LOCAL_CHAIN, QUEUE_CHAIN, SHED_CHAIN, DEFRAG_CHAIN)  # referrers first
JUMP = f"-A PREROUTING -j {CHAIN}"
LOCAL_JUMP = f"-A OUTPUT -p icmp -j {LOCAL_CHAIN}"
NAT_JUMP = f"-A PREROUTING -m mark ! --mark 0x0/0x{MARK_MASK:x} -j {CHAIN}"
# Per table, in the order a transaction writes them: our chains (referrers first) and
# the jumps into them from the built-in chains, exactly as iptables-save prints them.
TABLES = {
    "raw": (OUR_CHAINS, (JUMP, LOCAL_JUMP)),
    "mangle": ((CHAIN, REPLY_CHAIN, QUEUE_CHAIN, LOG_CHAIN),
               (JUMP, f"-A FORWARD -j {REPLY_CHAIN}")),
    "nat": ((CHAIN,), (NAT_JUMP,)),
}
# Destination unreachable (fragmentation needed included), time exceeded, parameter
# problem: the errors that quote a packet, as the engine translates them.
ICMP_ERRORS = (3, 11, 12)
GUARD_SOURCES = 65536      # client addresses the per-source SYN rate table holds
GUARD_EXPIRE_MS = 10000    # an address idle this long is forgotten
# The packet counters of the rules every packet we take ends at: the queue (its rule in
# raw and in mangle), the guard's drop and the fast path's copy. `show statistics` adds
# them up against the engine's and the queue's.
_COUNTERS = {"queued": re.compile(rf"^\[(\d+):\d+\] -A {QUEUE_CHAIN} -j NFQUEUE ", re.M),
             "shed": re.compile(rf"^\[(\d+):\d+\] -A {SHED_CHAIN} -j DROP$", re.M),
             "logged": re.compile(rf"^\[(\d+):\d+\] -A {LOG_CHAIN} -j NFLOG ", re.M)}
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
    (ALL_PORTS = every port) of traffic to / from it through the engine, ``fast`` the
    VIP:ports on the fast path and ``targets`` the (address, port) of every real a
    fast-path connection may be given (port 0: the client's). Comparable, so an
    unchanged set costs no iptables call."""

    vips: tuple[tuple[int, tuple[int, ...]], ...]
    reals: tuple[tuple[int, tuple[int, ...]], ...]
    # (VIP, port, SYNs a second per client address) for VIP:ports under `synguard`.
    guards: tuple[tuple[int, int, int], ...] = ()
    fast: tuple[tuple[int, tuple[int, ...]], ...] = ()
    targets: tuple[tuple[int, int], ...] = ()

    def lines(self) -> list[str]:
        """The raw LOCALDIRECTOR chain's rules in iptables-save syntax, in a fixed order."""
        out: list[str] = []
        for direction, option, table in (("-d", "--dport", self.vips),
                                         ("-s", "--sport", self.reals)):
            for addr, ports in table:
                host = f"{direction} {format_ip(addr)}/32"
                if direction == "-d":
                    out += self._guards(addr)
                for port in ports:
                    match = "" if port == ALL_PORTS else f" -m tcp {option} {port}"
                    out.append(f"-A {CHAIN} {host} -p tcp{match} -j {QUEUE_CHAIN}")
                out.append(f"-A {CHAIN} {host} -p icmp -j {QUEUE_CHAIN}")
        # Fast-path SYNs are shed in raw too: before conntrack spends an entry on them.
        userspace = {addr for addr, _ in self.vips}
        for addr, _ports in self.fast:
            if addr not in userspace:
                out += self._guards(addr)
        return out

    def _guards(self, addr: int) -> list[str]:
        return [_guard_line(addr, port, rate) for vip, port, rate in self.guards
                if vip == addr]

    def mangle_lines(self) -> list[str]:
        """The mangle chains' rules: which fast-path packets the engine sees."""
        client: list[str] = []
        real: list[str] = []
        for addr, ports in self.fast:
            vip = format_ip(addr)
            for port in ports:
                dport = "" if port == ALL_PORTS else f" --dport {port}"
                orig = f"--ctorigdst {vip}" + ("" if port == ALL_PORTS
                                                else f" --ctorigdstport {port}")
                client += [f"-A {CHAIN} -d {vip}/32 -p tcp{' -m tcp' + dport if dport else ''} "
                           f"-m conntrack --ctstate NEW -j {QUEUE_CHAIN}",
                           f"-A {CHAIN} -d {vip}/32 -p tcp -m tcp{dport} "
                           f"! --tcp-flags FIN,RST NONE -m conntrack --ctstate ESTABLISHED "
                           f"-j {LOG_CHAIN}"]
                real += [f"-A {REPLY_CHAIN} -p tcp -m tcp --tcp-flags RST RST -m conntrack "
                         f"--ctdir REPLY ! --ctstatus ASSURED {orig} -j {QUEUE_CHAIN}",
                         f"-A {REPLY_CHAIN} -p tcp -m tcp ! --tcp-flags FIN,SYN,RST NONE "
                         f"-m conntrack --ctdir REPLY {orig} -j {LOG_CHAIN}"]
        return client + real

    def nat_lines(self, marks: dict[tuple[int, int], int]) -> list[str]:
        """The mark map: one DNAT per target."""
        out = []
        for addr, port in self.targets:
            to = format_ip(addr) if port == ALL_PORTS else f"{format_ip(addr)}:{port}"
            out.append(f"-A {CHAIN} -p tcp -m mark --mark 0x{marks[(addr, port)]:x}"
                       f"/0x{MARK_MASK:x} -j DNAT --to-destination {to}")
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
    fast: dict[int, set[int]] = {}
    guards: dict[tuple[int, int], int] = {}
    targets = fast_targets(director)
    for v in director.iter_virtuals():
        (fast if v.fastpath else vips).setdefault(v.addr, set()).add(v.port)
        if v.synguard:
            dest = (v.addr, v.port)
            guards[dest] = max(guards.get(dest, 0), v.synguard)
        if v.fastpath:
            continue  # the kernel translates the replies: they must stay tracked
        for link in v.iter_links():
            for real in _with_backups(director, link.real):
                # Real port 0 answers on whatever port the client asked for: the virtual's.
                reals.setdefault(real.addr, set()).add(real.port or v.port)
    for conn in director.conns:
        if conn.fastpath:
            fast.setdefault(conn.virtual_ip, set()).add(conn.virtual_port)
            targets.add((conn.real.addr, conn.real.port))
            continue
        vips.setdefault(conn.virtual_ip, set()).add(conn.virtual_port)
        reals.setdefault(conn.real_ip, set()).add(conn.real_port)
    return RuleSet(_freeze(vips), _freeze(reals),
                   tuple((addr, port, rate) for (addr, port), rate in sorted(guards.items())),
                   _freeze(fast), tuple(sorted(targets)))


def _with_backups(director: Director, real: PhysicalMachine) -> Iterator[PhysicalMachine]:
    """A bound real and its backup chain: a backup takes connections without being
    bound (FIG. 3B pointer 328), so its replies must be queued too."""
    seen: set[int] = set()
    current: PhysicalMachine | None = real
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = director.reals.get(current.backup) if current.backup is not None else None


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


class MarkMap:
    """Marks of DNAT targets: a target keeps its mark while it stays configured, and a
    mark let go is not handed out again in the same transaction, so a packet marked
    just before a change still means the real it was marked for."""

    def __init__(self) -> None:
        self.marks: dict[tuple[int, int], int] = {}

    def assign(self, targets: Iterable[tuple[int, int]]) -> dict[tuple[int, int], int]:
        """The marks for exactly `targets` (a new dict; the old one stays valid)."""
        wanted = list(targets)
        still = set(wanted)
        keep = {t: m for t, m in self.marks.items() if t in still}
        taken = set(self.marks.values())
        free = (i << MARK_SHIFT for i in range(1, MAX_MARKS + 1)
                if i << MARK_SHIFT not in taken)
        for target in wanted:
            if target not in keep:
                mark = next(free, None)
                if mark is None:
                    raise RulesError(f"more than {MAX_MARKS} fast-path real servers")
                keep[target] = mark
        self.marks = keep
        return dict(keep)


def _sections(saved: str) -> dict[str, list[str]]:
    """iptables-save output by table."""
    tables: dict[str, list[str]] = {}
    current: list[str] = []
    for line in saved.splitlines():
        line = line.strip()
        if line.startswith("*"):
            current = tables.setdefault(line[1:], [])
        else:
            current.append(line)
    return tables


class RuleManager:
    """Owns our chains in the current network namespace's raw, mangle and nat tables,
    and the fast path's mark map (`on_marks` hears of every map that was installed)."""

    def __init__(self, queue_num: int, runner: Runner = run_iptables,
                 on_marks: Callable[[dict[tuple[int, int], int]], None] | None = None
                 ) -> None:
        self.queue_num = queue_num
        self._run = runner
        self._on_marks = on_marks
        self.applied: RuleSet | None = None
        self.transactions = 0
        self._markmap = MarkMap()
        self._tables: dict[str, list[str]] = {}
        self._bases = dict.fromkeys(_COUNTERS, 0)

    def _restore(self, tables: dict[str, list[str]]) -> None:
        """One iptables-restore run over the tables that have something to do."""
        text = "".join("\n".join([f"*{table}", *body, "COMMIT", ""])
                       for table, body in tables.items() if body)
        if text:
            self._run(["iptables-restore", "--noflush"], text)
            self.transactions += 1

    def _existing(self) -> dict[str, tuple[dict[str, int], set[str]]]:
        """Per table: (how often each of our jumps is there, which of our chains exist),
        as left by us or by an earlier run that was killed before it could clean up."""
        saved = _sections(self._run(["iptables-save"], ""))
        found = {}
        for table, (chains, jumps) in TABLES.items():
            lines = saved.get(table, [])
            declared = {line[1:].split()[0] for line in lines if line.startswith(":")}
            found[table] = ({jump: lines.count(jump) for jump in jumps},
                            declared & set(chains))
        return found

    def _chains(self, rules: RuleSet
                ) -> tuple[dict[str, list[str]], dict[tuple[int, int], int]]:
        """The match chains of every table as a transaction declares them, and the marks
        they use."""
        marks = self._markmap.assign(rules.targets)
        return {"raw": [f":{CHAIN} - [0:0]", *rules.lines()],
                "mangle": [f":{CHAIN} - [0:0]", f":{REPLY_CHAIN} - [0:0]",
                           *rules.mangle_lines()],
                "nat": [f":{CHAIN} - [0:0]", *rules.nat_lines(marks)]}, marks

    def _applied(self, rules: RuleSet, tables: dict[str, list[str]],
                 marks: dict[tuple[int, int], int]) -> None:
        self.applied = rules
        self._tables = tables
        if self._on_marks is not None:
            self._on_marks(marks)

    def install(self, rules: RuleSet) -> None:
        """First transaction: replace whatever a previous run left (every chain is
        redeclared, hence flushed) and end with exactly one of each of our jumps."""
        existing = self._existing()

        def delete(table: str, jump: str) -> list[str]:
            return [jump.replace("-A ", "-D ", 1)] * existing[table][0][jump]

        chains, marks = self._chains(rules)
        mangle_jump, reply_jump = TABLES["mangle"][1]
        queue = f"-A {QUEUE_CHAIN} -j NFQUEUE --queue-num {self.queue_num} --queue-bypass"
        self._restore({
            "raw": [
                f":{CHAIN} - [0:0]",
                f":{QUEUE_CHAIN} - [0:0]",
                *delete("raw", JUMP),
                f"-I PREROUTING 1 -j {CHAIN}",
                f"-A {QUEUE_CHAIN} -j NOTRACK",
                queue,
                f":{LOCAL_CHAIN} - [0:0]",
                f":{SHED_CHAIN} - [0:0]",
                *delete("raw", LOCAL_JUMP),
                LOCAL_JUMP.replace("-A OUTPUT", "-I OUTPUT 1", 1),
                *(f"-A {LOCAL_CHAIN} -p icmp -m icmp --icmp-type {kind} -j {QUEUE_CHAIN}"
                  for kind in ICMP_ERRORS),
                f"-A {SHED_CHAIN} -j DROP",
                *rules.lines(),
            ],
            "mangle": [
                *chains["mangle"][:2],
                f":{QUEUE_CHAIN} - [0:0]",
                f":{LOG_CHAIN} - [0:0]",
                *delete("mangle", mangle_jump),
                *delete("mangle", reply_jump),
                f"-I PREROUTING 1 -j {CHAIN}",
                f"-I FORWARD 1 -j {REPLY_CHAIN}",
                queue,
                f"-A {LOG_CHAIN} -j NFLOG --nflog-group {self.queue_num} "
                f"--nflog-size {nflog.COPY_RANGE}",
                *chains["mangle"][2:],
            ],
            "nat": [
                *chains["nat"][:1],
                *delete("nat", NAT_JUMP),
                NAT_JUMP.replace("-A PREROUTING", "-I PREROUTING 1", 1),
                *chains["nat"][1:],
            ],
        })
        self._applied(rules, chains, marks)
        self._bases = dict.fromkeys(_COUNTERS, 0)
        try:
            self._restore({"raw": [f":{DEFRAG_CHAIN} - [0:0]",
                                   f"-A {DEFRAG_CHAIN} -m socket -j RETURN"]})
        except RulesError as exc:
            log.warning("fragments will not be reassembled before translation: %s", exc)

    def update(self, rules: RuleSet) -> bool:
        """Replace the match chains that changed, in one run; False when nothing did."""
        if rules == self.applied:
            return False
        chains, marks = self._chains(rules)
        self._restore({table: body for table, body in chains.items()
                       if body != self._tables.get(table)})
        self._applied(rules, chains, marks)
        return True

    def remove(self) -> None:
        """Take out the jumps and our chains, whatever of them exists (referring chains
        before the ones they refer to)."""
        tables = {}
        for table, (counts, chains) in self._existing().items():
            body = [jump.replace("-A ", "-D ", 1) for jump in counts
                    for _ in range(counts[jump])]
            for chain in TABLES[table][0]:
                if chain in chains:
                    body += [f"-F {chain}", f"-X {chain}"]
            tables[table] = body
        self._restore(tables)
        self.applied = None
        self._tables = {}

    def counters(self) -> dict[str, int]:
        """Packets sent to the queue (from raw and from mangle), fast-path packets
        copied to the engine (NFLOG) and SYNs shed by the kernel guard, since install or
        the last `clear counters`."""
        saved = self._run(["iptables-save", "-c"], "")
        found = {name: sum(int(n) for n in pattern.findall(saved))
                 for name, pattern in _COUNTERS.items()}
        return {name: found[name] - self._bases[name] for name in _COUNTERS}

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
