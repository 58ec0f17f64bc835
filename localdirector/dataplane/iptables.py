"""Our netfilter chains as iptables-save text, and the one function that runs the iptables
tools: a RuleSet rendered per table, the texts of install and removal, and the parsing of
iptables-save (which of our chains and jumps exist, packet counters).

Everything lives in chains of our own (``LOCALDIRECTOR*``) in the raw, mangle and nat
tables, reached by jumps from the built-in chains, so the appliance replaces or removes
its rules without touching anybody else's; the names are fixed (one appliance per network
namespace), so a restarted appliance finds what a killed one left behind. Why each hook
and match: docs/design.rst, "Netfilter rules" and "Fast path".
"""

from __future__ import annotations

import re
import subprocess
import zlib
from collections.abc import Callable

from ..model.addr import format_ip
from . import nflog
from .ruleset import ALL_PORTS, MARK_MASK, RuleSet, RulesError

CHAIN = "LOCALDIRECTOR"
QUEUE_CHAIN = "LOCALDIRECTOR-QUEUE"
# The reals' replies to others than the director are queued without --queue-bypass:
# with no engine bound (killed), the kernel drops them rather than forward them to
# clients with the real's own address.
REAL_QUEUE_CHAIN = "LOCALDIRECTOR-REALQ"
TO_DIRECTOR = "-m addrtype --dst-type LOCAL"
LOCAL_CHAIN = "LOCALDIRECTOR-LOCAL"
SHED_CHAIN = "LOCALDIRECTOR-SHED"
DEFRAG_CHAIN = "LOCALDIRECTOR-DEFRAG"
REPLY_CHAIN = "LOCALDIRECTOR-REPLY"
LOG_CHAIN = "LOCALDIRECTOR-LOG"
OUR_CHAINS = (CHAIN, LOCAL_CHAIN, QUEUE_CHAIN, REAL_QUEUE_CHAIN, SHED_CHAIN,
              DEFRAG_CHAIN)  # referrers first
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
# The kernel reassembles fragments ahead of the raw table once any rule needs its
# defragmenter, as one using the socket match does: this chain, which nothing jumps to.
DEFRAG_TABLES = {"raw": [f":{DEFRAG_CHAIN} - [0:0]", f"-A {DEFRAG_CHAIN} -m socket -j RETURN"]}
# The packet counters of the rules every packet we take ends at: the queue (its rule in
# raw and in mangle), the guard's drop and the fast path's copy. `show statistics` adds
# them up against the engine's and the queue's.
COUNTERS = {"queued": re.compile(rf"^\[(\d+):\d+\] -A (?:{QUEUE_CHAIN}|{REAL_QUEUE_CHAIN}) "
                                 rf"(?:{TO_DIRECTOR} )?-j NFQUEUE ", re.M),
            "shed": re.compile(rf"^\[(\d+):\d+\] -A {SHED_CHAIN} -j DROP$", re.M),
            "logged": re.compile(rf"^\[(\d+):\d+\] -A {LOG_CHAIN} -j NFLOG ", re.M)}

Runner = Callable[[list[str], str], str]
# Per table: (how often each of our jumps is there, which of our chains exist).
Existing = dict[str, tuple[dict[str, int], set[str]]]


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


def raw_rules(rules: RuleSet) -> list[str]:
    """The raw LOCALDIRECTOR chain's rules, in a fixed order: per address, the SYN guards
    ahead of the queue rules they protect."""
    out: list[str] = []
    for direction, option, table, queue in (("-d", "--dport", rules.vips, QUEUE_CHAIN),
                                            ("-s", "--sport", rules.reals, REAL_QUEUE_CHAIN)):
        for addr, ports in table:
            host = f"{direction} {format_ip(addr)}/32"
            if direction == "-d":
                out += _guards(rules, addr)
            for port in ports:
                match = "" if port == ALL_PORTS else f" -m tcp {option} {port}"
                out.append(f"-A {CHAIN} {host} -p tcp{match} -j {queue}")
            out.append(f"-A {CHAIN} {host} -p icmp -j {queue}")
    # Fast-path SYNs are shed in raw too: before conntrack spends an entry on them.
    userspace = {addr for addr, _ in rules.vips}
    for addr, _ports in rules.fastpath:
        if addr not in userspace:
            out += _guards(rules, addr)
    return out


def _guards(rules: RuleSet, addr: int) -> list[str]:
    return [guard_rule(addr, port, rate) for vip, port, rate in rules.guards if vip == addr]


def guard_rule(addr: int, port: int, rate: int) -> str:
    """The kernel SYN-rate guard of one VIP:port. The table name changes with the rate
    because the kernel keeps the settings of the first rule that created a table of a
    given name."""
    name = f"ldsg{zlib.crc32(f'{addr}:{port}:{rate}'.encode()):08x}"
    ports = f" --dport {port}" if port != ALL_PORTS else ""
    return (f"-A {CHAIN} -d {format_ip(addr)}/32 -p tcp -m tcp{ports} "
            f"--tcp-flags FIN,SYN,RST,ACK SYN -m hashlimit --hashlimit-above {rate}/sec "
            f"--hashlimit-burst {rate} --hashlimit-mode srcip --hashlimit-name {name} "
            f"--hashlimit-htable-max {GUARD_SOURCES} "
            f"--hashlimit-htable-expire {GUARD_EXPIRE_MS} -j {SHED_CHAIN}")


def mangle_rules(rules: RuleSet) -> list[str]:
    """The mangle chains' rules: which fast-path packets the engine sees, queued where
    it gives a verdict (a SYN, a RST that may refuse it), copied where it only takes note."""
    client: list[str] = []
    real: list[str] = []
    for addr, ports in rules.fastpath:
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


def nat_rules(rules: RuleSet, marks: dict[tuple[int, int], int]) -> list[str]:
    """The mark map: one DNAT per fast-path target (port 0: the client's port stays)."""
    out = []
    for addr, port in rules.targets:
        to = format_ip(addr) if port == ALL_PORTS else f"{format_ip(addr)}:{port}"
        out.append(f"-A {CHAIN} -p tcp -m mark --mark 0x{marks[(addr, port)]:x}"
                   f"/0x{MARK_MASK:x} -j DNAT --to-destination {to}")
    return out


def match_chains(rules: RuleSet, marks: dict[tuple[int, int], int]) -> dict[str, list[str]]:
    """The chains a RuleSet fills, per table, as a transaction declares (hence flushes)
    and refills them."""
    return {"raw": [f":{CHAIN} - [0:0]", *raw_rules(rules)],
            "mangle": [f":{CHAIN} - [0:0]", f":{REPLY_CHAIN} - [0:0]", *mangle_rules(rules)],
            "nat": [f":{CHAIN} - [0:0]", *nat_rules(rules, marks)]}


def install_tables(chains: dict[str, list[str]], queue_num: int,
                   existing: Existing) -> dict[str, list[str]]:
    """The first transaction: every chain of ours redeclared (flushed) and refilled, the
    match chains from `chains` (match_chains), and whatever jumps `existing` found
    replaced by exactly one of each, first in its built-in chain."""

    def delete(table: str, jump: str) -> list[str]:
        return [jump.replace("-A ", "-D ", 1)] * existing[table][0][jump]

    mangle_jump, reply_jump = TABLES["mangle"][1]
    queue = f"-A {QUEUE_CHAIN} -j NFQUEUE --queue-num {queue_num} --queue-bypass"
    raw = chains["raw"]
    return {
        "raw": [
            *raw[:1],
            f":{QUEUE_CHAIN} - [0:0]",
            *delete("raw", JUMP),
            f"-I PREROUTING 1 -j {CHAIN}",
            f"-A {QUEUE_CHAIN} -j NOTRACK",
            queue,
            f":{REAL_QUEUE_CHAIN} - [0:0]",
            f"-A {REAL_QUEUE_CHAIN} -j NOTRACK",
            f"-A {REAL_QUEUE_CHAIN} {TO_DIRECTOR} -j NFQUEUE --queue-num {queue_num} "
            "--queue-bypass",
            f"-A {REAL_QUEUE_CHAIN} -j NFQUEUE --queue-num {queue_num}",
            f":{LOCAL_CHAIN} - [0:0]",
            f":{SHED_CHAIN} - [0:0]",
            *delete("raw", LOCAL_JUMP),
            LOCAL_JUMP.replace("-A OUTPUT", "-I OUTPUT 1", 1),
            *(f"-A {LOCAL_CHAIN} -p icmp -m icmp --icmp-type {kind} -j {QUEUE_CHAIN}"
              for kind in ICMP_ERRORS),
            f"-A {SHED_CHAIN} -j DROP",
            *raw[1:],
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
            f"-A {LOG_CHAIN} -j NFLOG --nflog-group {queue_num} "
            f"--nflog-size {nflog.COPY_RANGE}",
            *chains["mangle"][2:],
        ],
        "nat": [
            *chains["nat"][:1],
            *delete("nat", NAT_JUMP),
            NAT_JUMP.replace("-A PREROUTING", "-I PREROUTING 1", 1),
            *chains["nat"][1:],
        ],
    }


def removal_tables(existing: Existing) -> dict[str, list[str]]:
    """Take out the jumps and our chains, whatever of them exists (referring chains
    before the ones they refer to)."""
    tables = {}
    for table, (counts, chains) in existing.items():
        body = [jump.replace("-A ", "-D ", 1) for jump in counts for _ in range(counts[jump])]
        for chain in TABLES[table][0]:
            if chain in chains:
                body += [f"-F {chain}", f"-X {chain}"]
        tables[table] = body
    return tables


def restore_text(tables: dict[str, list[str]]) -> str:
    """iptables-restore input for the tables that have something to do ("" if none)."""
    return "".join("\n".join([f"*{table}", *body, "COMMIT", ""])
                   for table, body in tables.items() if body)


def existing_chains(saved: str) -> Existing:
    """Our jumps and chains in an iptables-save listing, as left by us or by an earlier
    run that was killed before it could clean up."""
    sections = _sections(saved)
    found = {}
    for table, (chains, jumps) in TABLES.items():
        lines = sections.get(table, [])
        declared = {line[1:].split()[0] for line in lines if line.startswith(":")}
        found[table] = ({jump: lines.count(jump) for jump in jumps}, declared & set(chains))
    return found


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


def packet_counts(saved: str) -> dict[str, int]:
    """The COUNTERS rules' packet counts in an ``iptables-save -c`` listing."""
    return {name: sum(int(n) for n in pattern.findall(saved))
            for name, pattern in COUNTERS.items()}
