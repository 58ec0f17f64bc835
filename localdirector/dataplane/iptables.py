"""Our netfilter chains as iptables-save text, and the one function that runs the iptables
tools: a RuleSet rendered per table, the texts of install and removal, and the parsing of
iptables-save (which of our chains and jumps exist, packet counters).

Everything lives in chains of our own (``LOCALDIRECTOR<queue>*``) in the raw, mangle and
nat tables, reached by jumps from the built-in chains, and in one ipset
(``ldknown<queue>``, the flood defence's known clients), so the appliance replaces or
removes its rules without touching anybody else's, another appliance's on another queue
included; a restarted appliance finds what a killed one on its queue left behind. Why
each hook and match: docs/design.rst, "Netfilter rules" and "Fast path".
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from ..model.addr import IPV4, IPV6, Family, bracketed, format_ip
from . import nflog
from .packet import ICMP_ERROR_TYPES, ICMPV6_ERROR_TYPES
from .markrules import (dispatch_rules, nat_rules, port_match, proto_port, static_rules,
                        stray_rules)
from .floodrules import (answer_notes, datagram_budgets, flood_rules, guards_of,
                         known_rules, note_rules)
from .ruleset import ALL_PORTS, DISPATCH_PORT, MARK_MASK, RuleSet, RulesError
from .saved import Existing

# Packets for the director itself: the reals' replies to its own connections (probes).
TO_DIRECTOR = "-m addrtype --dst-type LOCAL"
# The bits of a fast-path connection whose client, or real, sent a FIN (beside
# floodrules.KNOWN_CTMARK): a FIN is copied to the engine only once the other side's bit
# is set, so one copy says both ends closed (end_rules).
CLIENT_FIN_CTMARK, REAL_FIN_CTMARK = 0x40000000, 0x20000000


@dataclass(frozen=True)
class Names:
    """The chain names of the appliance on one queue (`names`), so that appliances on
    different queues in one namespace never touch each other's rules, and a restarted
    one finds what a killed one on its queue left behind."""

    queue_num: int
    chain: str           # the match chain, in raw, mangle and nat
    queue: str           # NOTRACK + NFQUEUE --queue-bypass: traffic toward VIPs
    # The reals' replies to others than the director, queued without --queue-bypass:
    # with no engine bound (killed), the kernel drops them rather than forward them to
    # clients with the real's own address.
    real_queue: str
    local: str           # the director's own ICMP errors (raw OUTPUT)
    shed: str            # SYNs the guard sheds: one counted DROP
    flood: str           # SYNs of new sources over NEW_SOURCE_SYNS: one counted DROP
    datagram_flood: str  # datagrams of new sources over NEW_SOURCE_DATAGRAMS: the same
    syn: str             # raw: SYNs toward tracked VIPs, to their guards and budget
    defrag: str          # nothing jumps to it: it makes the kernel reassemble
    reply: str           # mangle FORWARD: fast-path replies
    stray: str           # mangle: tracked reals' packets conntrack does not know
    log: str             # mangle: fast-path copies (NFLOG)
    client_end: str      # mangle: a fast-path client's FIN or RST (end_rules)
    real_end: str        # mangle: a fast-path real's FIN or RST
    note: str            # mangle: notes a tracked connection's client as known, once
    acks: str            # mangle: an unnoted tracked connection's ACK, to its VIP's note
    known: str           # the ipset of addresses that sent an ACK lately
    # The jumps from the built-in chains, as iptables-save prints them.
    jump: str            # raw and mangle PREROUTING
    local_jump: str      # raw OUTPUT
    nat_jump: str        # nat PREROUTING, marked packets only
    # --queue-bypass on `queue`: a single director lets VIP traffic through while no
    # engine is bound; a unit of a failover pair drops it (docs/design.rst, "Netfilter
    # rules"), since its clients' retransmissions belong to the other unit.
    bypass: bool = True
    # nat POSTROUTING: `static REAL VIP`, the reals' own connections' source NAT
    # (docs/design.rst, "Static"), and the jump to it.
    static: str = ""
    static_jump: str = ""
    # Which family's tables (iptables or ip6tables, the same nftables backend): the
    # chains keep their names in both, the set and the hashlimit buckets do not.
    family: Family = IPV4

    def host(self, addr: int) -> str:
        """One address as a match or target takes it: ``ADDR/32``, ``ADDR/128``."""
        return f"{format_ip(addr)}/{self.family.width}"

    def to(self, addr: int, port: int) -> str:
        """A DNAT destination: the address, with a port after it (IPv6 bracketed)."""
        return format_ip(addr) if port == ALL_PORTS else f"{bracketed(addr)}:{port}"

    @property
    def tool(self) -> str:
        """iptables or ip6tables (and their -restore and -save)."""
        return "ip6tables" if self.family is IPV6 else "iptables"

    def icmp(self, errors: bool = False) -> list[str]:
        """The family's ICMP as matches: IPv4's whole (or, `errors`, per error type
        queued); IPv6's always per error type, so neighbour discovery and router
        advertisements are never queued (docs/design.rst, "IPv6 packets")."""
        if self.family is IPV6:
            return [f"-p ipv6-icmp -m icmp6 --icmpv6-type {kind}"
                    for kind in sorted(ICMPV6_ERROR_TYPES)]
        if errors:
            return [f"-p icmp -m icmp --icmp-type {kind}" for kind in sorted(ICMP_ERROR_TYPES)]
        return ["-p icmp"]

    @property
    def tables(self) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
        """Per table, in the order a transaction writes them: our chains (referrers
        first) and the jumps into them from the built-in chains, exactly as
        iptables-save prints them."""
        return {
            "raw": ((self.chain, self.syn, self.local, self.queue, self.real_queue,
                     self.shed, self.flood, self.datagram_flood, self.defrag),
                    (self.jump, self.local_jump)),
            "mangle": ((self.chain, self.acks, self.reply, self.stray, self.queue,
                        self.client_end, self.real_end, self.log, self.note),
                       (self.jump, f"-A FORWARD -j {self.reply}")),
            "nat": ((self.chain, self.static), (self.nat_jump, self.static_jump)),
        }

    @property
    def defrag_tables(self) -> dict[str, list[str]]:
        """The kernel reassembles fragments ahead of the raw table once any rule needs
        its defragmenter, as one using the socket match does: this chain."""
        return {"raw": [f":{self.defrag} - [0:0]", f"-A {self.defrag} -m socket -j RETURN"]}

    @property
    def counters(self) -> dict[str, re.Pattern[str]]:
        """The packet counters of the rules every packet we take ends at: the queue (its
        rules in raw and in mangle), the guard's drop and the fast path's copy. `show
        statistics` adds them up against the engine's and the queue's."""
        queues = f"(?:{self.queue}|{self.real_queue})"
        return {"queued": re.compile(rf"^\[(\d+):\d+\] -A {queues} (?:{TO_DIRECTOR} )?"
                                     r"-j NFQUEUE ", re.M),
                "shed": re.compile(rf"^\[(\d+):\d+\] -A {self.shed} -j DROP$", re.M),
                "flood": re.compile(rf"^\[(\d+):\d+\] -A {self.flood} -j DROP$", re.M),
                "datagram_flood": re.compile(
                    rf"^\[(\d+):\d+\] -A {self.datagram_flood} -j DROP$", re.M),
                "logged": re.compile(rf"^\[(\d+):\d+\] -A {self.log} -j NFLOG ", re.M),
                "stray": re.compile(rf"^\[(\d+):\d+\] -A {self.stray} -s .* -j DROP$", re.M)}


def names(queue_num: int, bypass: bool = True, family: Family = IPV4) -> Names:
    """Our chains on queue N: LOCALDIRECTOR<N> and LOCALDIRECTOR<N>-<ROLE> (at most 25
    characters: iptables allows 28), the same in ip6tables' tables; IPv6's set of known
    clients is ``ldknown<N>v6``."""
    base = f"LOCALDIRECTOR{queue_num}"
    icmp = "ipv6-icmp" if family is IPV6 else "icmp"
    return Names(queue_num, base, f"{base}-QUEUE", f"{base}-REALQ", f"{base}-LOCAL",
                 f"{base}-SHED", f"{base}-FLOOD", f"{base}-UFLOOD", f"{base}-SYN",
                 f"{base}-DEFRAG", f"{base}-REPLY", f"{base}-STRAY", f"{base}-LOG",
                 f"{base}-CEND", f"{base}-REND", f"{base}-KNOWN", f"{base}-ACK",
                 f"ldknown{queue_num}" + ("v6" if family is IPV6 else ""),
                 f"-A PREROUTING -j {base}",
                 f"-A OUTPUT -p {icmp} -j {base}-LOCAL",
                 f"-A PREROUTING -m mark ! --mark 0x0/0x{MARK_MASK:x} -j {base}", bypass,
                 f"{base}-STATIC", f"-A POSTROUTING -j {base}-STATIC", family)


Runner = Callable[[list[str], str], str]


def run_iptables(argv: list[str], stdin: str = "") -> str:
    """Run one iptables tool; a failure raises RulesError with iptables' own message."""
    return run_tool(argv, stdin, line=-1)


def run_tool(argv: list[str], stdin: str = "", line: int = -1) -> str:
    """Run a netfilter tool; a failure raises RulesError with line `line` of what it
    said (iptables puts the reason last, nft first)."""
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RulesError(f"{argv[0]}: {exc}") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise RulesError(f"{' '.join(argv)} failed: {detail[line] if detail else done.returncode}")
    return done.stdout


def raw_rules(rules: RuleSet, n: Names) -> list[str]:
    """The raw match chain's rules, in a fixed order: per address, the SYN guards ahead
    of the queue rules they protect (synguard's per source, then the budget of new
    sources, so that one flooding address is shed, and counted, as synguard's)."""
    out: list[str] = []
    for direction, option, table, queue in (("-d", "--dport", rules.vips, n.queue),
                                            ("-s", "--sport", rules.reals, n.real_queue)):
        for addr, ports in table:
            host = f"{direction} {n.host(addr)}"
            if direction == "-d":
                out += guards_of(rules, addr, n) + flood_rules(
                    addr, n, budgeted=rules.budgeted)
            else:
                out += answer_notes(addr, ports, n)
            for service in ports:
                proto = proto_port(service)[0]
                out.append(f"-A {n.chain} {host} -p {proto}{port_match(service, option)} "
                           f"-j {queue}")
            out += [f"-A {n.chain} {host} {icmp} -j {queue}" for icmp in n.icmp()]
    # Fast-path SYNs (decided by the engine or by the kernel) are shed in raw too:
    # before conntrack spends an entry on them. Their rules are in a chain only SYNs
    # enter, so the other packets pass one rule, not one per tracked VIP.
    syn = []
    for addr in tracked_vips(rules):
        syn += guards_of(rules, addr, n, n.syn) + flood_rules(addr, n, tracked=True,
                                                             chain=n.syn)
        out += datagram_budgets(addr, n, rules.budgeted)
    if syn:
        out += [f"-A {n.chain} -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -j {n.syn}",
                *syn]
    # The fast path's udp reals answer through conntrack: noted here, before it.
    for addr, service in rules.targets:
        if service != DISPATCH_PORT:   # (whose -1 has every bit, the udp one's too)
            out += answer_notes(addr, (service,), n)
    # Dispatched VIPs the kernel forwards: never tracked, so noted here like userspace.
    for addr in rules.forwarded:
        out += guards_of(rules, addr, n) + flood_rules(addr, n)
    return out


def tracked_vips(rules: RuleSet) -> list[int]:
    """VIP addresses conntrack tracks (fast path, kernel-decided) and the engine's
    untracked rules do not cover."""
    userspace = {addr for addr, _ in rules.vips}
    return [addr for addr in sorted({addr for addr, _ in rules.fastpath} | set(rules.kernel))
            if addr not in userspace]


def mangle_rules(rules: RuleSet, n: Names) -> list[str]:
    """The mangle chains' rules: tracked VIPs' known clients, and which fast-path packets
    the engine sees, queued where it gives a verdict (a SYN, a RST that may refuse it),
    copied where it only takes note.

    The noting chain is filled only while a VIP is tracked: a connection-tracking match
    or target anywhere in the namespace turns conntrack on, which then attaches a
    dropped packet's unconfirmed entry to the director's ICMP error about it, and the
    kernel refuses to queue such a packet (docs/design.rst, "Netfilter rules")."""
    client = known_rules(tracked_vips(rules), n)
    notes = note_rules(n) if client else []
    real: list[str] = []
    ends: list[str] = []   # filled only while a fast-path TCP connection can end here
    for addr, ports in rules.fastpath:
        vip = format_ip(addr)
        for service in ports:
            proto, port = proto_port(service)
            dport = "" if port == ALL_PORTS else f" --dport {port}"
            orig = f"--ctorigdst {vip}" + ("" if port == ALL_PORTS
                                            else f" --ctorigdstport {port}")
            client.append(f"-A {n.chain} -d {n.host(addr)} -p {proto}"
                          f"{f' -m {proto}' + dport if dport else ''} "
                          f"-m conntrack --ctstate NEW -j {n.queue}")
            if proto == "udp":
                # A flow's unanswered datagrams are NEW (queued above); it has no end to
                # copy, so only its first replies, until conntrack calls it a stream.
                real.append(f"-A {n.reply} -p udp -m conntrack --ctdir REPLY ! --ctstatus "
                            f"ASSURED {orig} -j {n.log}")
                continue
            ends = end_rules(n)
            client += [f"-A {n.chain} -d {n.host(addr)} -p tcp -m tcp{dport} "
                       f"! --tcp-flags FIN,RST NONE -m conntrack --ctstate ESTABLISHED "
                       f"-j {n.client_end}"]
            real += [f"-A {n.reply} -p tcp -m tcp --tcp-flags RST RST -m conntrack "
                     f"--ctdir REPLY ! --ctstatus ASSURED {orig} -j {n.queue}",
                     f"-A {n.reply} -p tcp -m tcp --tcp-flags SYN SYN "
                     f"-m conntrack --ctdir REPLY {orig} -j {n.log}",
                     f"-A {n.reply} -p tcp -m tcp ! --tcp-flags FIN,RST NONE "
                     f"-m conntrack --ctdir REPLY {orig} -j {n.real_end}"]
    return client + stray_rules(rules, n) + real + notes + ends


def end_rules(n: Names) -> list[str]:
    """Where a fast-path connection's FINs and RSTs go, its client's to `client_end`, its
    real's to `real_end`: each FIN sets its side's connection-mark bit, then is copied
    only if the other side's bit is set, so the engine gets one copy when both ends have
    closed instead of one per FIN (a third of the copies of a short connection). A RST
    sets both bits and is always copied. Setting before testing means two FINs crossing
    on two CPUs are both copied, never neither; the engine takes a FIN copy of a
    fast-path connection as both FINs (tcp.py, docs/design.rst "Fast path")."""
    both = f"0x{CLIENT_FIN_CTMARK | REAL_FIN_CTMARK:x}"
    rules = []
    for chain, own, other in ((n.client_end, CLIENT_FIN_CTMARK, REAL_FIN_CTMARK),
                              (n.real_end, REAL_FIN_CTMARK, CLIENT_FIN_CTMARK)):
        rules += [f"-A {chain} -p tcp -m tcp --tcp-flags RST RST "
                  f"-j CONNMARK --set-xmark {both}/{both}",
                  f"-A {chain} -j CONNMARK --set-xmark 0x{own:x}/0x{own:x}",
                  f"-A {chain} -m connmark --mark 0x{other:x}/0x{other:x} -j {n.log}"]
    return rules


def match_chains(rules: RuleSet, marks: dict[tuple[int, int], int],
                 n: Names) -> dict[str, list[str]]:
    """The chains a RuleSet fills, per table, as a transaction declares (hence flushes)
    and refills them."""
    return {"raw": [f":{n.chain} - [0:0]", f":{n.syn} - [0:0]", *raw_rules(rules, n)],
            "mangle": [f":{n.chain} - [0:0]", f":{n.reply} - [0:0]", f":{n.acks} - [0:0]",
                       f":{n.stray} - [0:0]", f":{n.note} - [0:0]",
                       f":{n.client_end} - [0:0]", f":{n.real_end} - [0:0]",
                       *dispatch_rules(rules, marks, n), *mangle_rules(rules, n)],
            "nat": [f":{n.chain} - [0:0]", f":{n.static} - [0:0]",
                    *nat_rules(rules, marks, n), *static_rules(rules, n)]}


def install_tables(chains: dict[str, list[str]], n: Names,
                   existing: Existing) -> dict[str, list[str]]:
    """The first transaction: every chain of ours redeclared (flushed) and refilled, the
    match chains from `chains` (match_chains), and whatever jumps `existing` found
    replaced by exactly one of each, first in its built-in chain."""

    def delete(table: str, jump: str) -> list[str]:
        return [jump.replace("-A ", "-D ", 1)] * existing[table][0][jump]

    mangle_jump, reply_jump = n.tables["mangle"][1]
    nfqueue = f"-j NFQUEUE --queue-num {n.queue_num}"
    queue = f"-A {n.queue} {nfqueue}" + (" --queue-bypass" if n.bypass else "")
    raw = chains["raw"]
    return {
        "raw": [
            *raw[:1],
            f":{n.queue} - [0:0]",
            *delete("raw", n.jump),
            f"-I PREROUTING 1 -j {n.chain}",
            f"-A {n.queue} -j NOTRACK",
            queue,
            f":{n.real_queue} - [0:0]",
            # Replies to the director's own connections (probes, an operator's curl)
            # are none of the engine's business: not queued, and tracked as usual.
            f"-A {n.real_queue} {TO_DIRECTOR} -j RETURN",
            f"-A {n.real_queue} -j NOTRACK",
            f"-A {n.real_queue} {nfqueue}",
            f":{n.local} - [0:0]",
            f":{n.shed} - [0:0]",
            f":{n.flood} - [0:0]",
            f":{n.datagram_flood} - [0:0]",
            *delete("raw", n.local_jump),
            n.local_jump.replace("-A OUTPUT", "-I OUTPUT 1", 1),
            *(f"-A {n.local} {icmp} -j {n.queue}" for icmp in n.icmp(errors=True)),
            f"-A {n.shed} -j DROP",
            f"-A {n.flood} -j DROP",
            f"-A {n.datagram_flood} -j DROP",
            *raw[1:],
        ],
        "mangle": [
            *chains["mangle"][:2],
            f":{n.queue} - [0:0]",
            f":{n.log} - [0:0]",
            *delete("mangle", mangle_jump),
            *delete("mangle", reply_jump),
            f"-I PREROUTING 1 -j {n.chain}",
            f"-I FORWARD 1 -j {n.reply}",
            queue,
            f"-A {n.log} -j NFLOG --nflog-group {n.queue_num} "
            f"--nflog-size {nflog.COPY_RANGE}",
            *chains["mangle"][2:],
        ],
        "nat": [
            *chains["nat"][:2],
            *delete("nat", n.nat_jump),
            n.nat_jump.replace("-A PREROUTING", "-I PREROUTING 1", 1),
            *delete("nat", n.static_jump),
            n.static_jump.replace("-A POSTROUTING", "-I POSTROUTING 1", 1),
            *chains["nat"][2:],
        ],
    }


def removal_tables(existing: Existing, n: Names) -> dict[str, list[str]]:
    """Take out the jumps and our chains, whatever of them exists (referring chains
    before the ones they refer to)."""
    tables = {}
    for table, (counts, chains) in existing.items():
        body = [jump.replace("-A ", "-D ", 1) for jump in counts for _ in range(counts[jump])]
        for chain in n.tables[table][0]:
            if chain in chains:
                body += [f"-F {chain}", f"-X {chain}"]
        tables[table] = body
    return tables


def restore_text(tables: dict[str, list[str]]) -> str:
    """iptables-restore input for the tables that have something to do ("" if none)."""
    return "".join("\n".join([f"*{table}", *body, "COMMIT", ""])
                   for table, body in tables.items() if body)
