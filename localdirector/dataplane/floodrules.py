"""The kernel's defences against floods, as iptables-save lines for the raw and mangle
match chains (docs/design.rst, "Netfilter rules", "UDP flows"): synguard's per-source
SYN rate, and the budgets of new sources (SYNs, datagrams) beside the set of known
clients (an ACK, or a real's answer, makes an address known). Split from iptables.py,
which puts them in its transactions."""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

from ..model.addr import IPV6
from ..model.serverid import UDP_SERVICE
from .markrules import port_match
from .ruleset import ALL_PORTS, RuleSet

if TYPE_CHECKING:
    from .iptables import Names

GUARD_SOURCES = 65536      # client addresses the per-source SYN rate table holds
GUARD_EXPIRE_MS = 10000    # an address idle this long is forgotten
# SYNs a second (all VIPs together) from client addresses that have not completed a
# handshake lately: above it the kernel sheds them, so a spoofed flood cannot fill the
# queue that established traffic and known clients share (docs/design.rst, "Netfilter
# rules"). A few thousand new client addresses a second is far more than a Python
# director gets legitimately, far less than its queue's capacity.
NEW_SOURCE_SYNS = 5000
# Datagrams a second (all udp VIPs together) from addresses no real has answered and
# that sent no ACK lately: a spoofed UDP flood has no handshake to tell it by, so a
# client is known once a real's datagram went to it. Far below the worker's rate (it
# kept up with 30,000 datagrams a second of a flood in the lab), so a flood cannot fill
# the queue that known clients' queries share; far above the new resolvers a director
# meets in a second (docs/design.rst, "UDP flows").
NEW_SOURCE_DATAGRAMS = 1000
# The known addresses are an ipset (hash:ip with timeouts), looked up without a lock:
# xt_recent's list took one lock for the whole host on every SYN and held 100
# addresses by default, so a site with more active clients lost known ones to its
# newest (docs/design.rst, "Netfilter rules").
KNOWN_SECONDS = 600        # an address stays known this long after it was last noted
KNOWN_ADDRESSES = 262144   # at most this many (ipset maxelem): a full set adds no more
# The connection mark bit we own: a tracked connection (fast path, kernel-decided) whose
# client address was already noted as known, so each connection updates the set once
# instead of with every ACK.
KNOWN_CTMARK = 0x80000000


def known_set(n: Names) -> tuple[list[str], list[str]]:
    """The `ipset` commands that create the set of known addresses (idempotent: a set
    of the same settings may be left by a killed appliance) and destroy it once no rule
    refers to it. IPv6 sources are known by their /64, a host's usual share (one
    client's privacy addresses are one entry; a flood of one /64's addresses is one)."""
    family = ["family", "inet6", "netmask", "64"] if n.family is IPV6 else ["family", "inet"]
    return (["ipset", "create", n.known, "hash:ip", *family, "timeout",
             str(KNOWN_SECONDS), "maxelem", str(KNOWN_ADDRESSES), "-exist"],
            ["ipset", "destroy", n.known])


def _note_known(n: Names, who: str = "src") -> str:
    return f"-j SET --add-set {n.known} {who} --exist"


def answer_notes(addr: int, services: tuple[int, ...], n: Names) -> list[str]:
    """A udp real's datagram makes its destination, the client, known: answered
    clients pass the datagram budget of new sources (flood_rules)."""
    return [f"-A {n.chain} -s {n.host(addr)} -p udp{port_match(service, '--sport')} "
            f"{_note_known(n, 'dst')}" for service in services if service & UDP_SERVICE]


def _budget(rate: int, bucket: str, n: Names) -> str:
    return (f"-m set ! --match-set {n.known} src -m hashlimit --hashlimit-above "
            f"{rate}/sec --hashlimit-burst {rate} --hashlimit-name "
            f"{n.known.replace('known', bucket)}")


def flood_rules(addr: int, n: Names, tracked: bool = False,
                budgeted: tuple[tuple[int, int], ...] = (), chain: str = "") -> list[str]:
    """The budgets of new sources toward one VIP address. A client's ACK makes its
    address known (a spoofed SYN flood sends none), and SYNs of addresses not known
    share NEW_SOURCE_SYNS a second with every VIP (one hashlimit bucket, by name). For
    a `tracked` VIP the ACK is noted in mangle, once per connection (known_rules). The
    `budgeted` (VIP, udp service) of this address: datagram_budgets. `chain`: where the
    SYN rule goes (our match chain unless said: iptables.raw_rules gives tracked VIPs'
    a chain of their own)."""
    host = f"-A {n.chain} -d {n.host(addr)} -p tcp -m tcp"
    noting = [] if tracked else [f"{host} --tcp-flags SYN,RST,ACK ACK {_note_known(n)}"]
    return [*noting,
            f"-A {chain or n.chain} -d {n.host(addr)} -p tcp -m tcp --tcp-flags "
            f"FIN,SYN,RST,ACK SYN {_budget(NEW_SOURCE_SYNS, 'new', n)} -j {n.flood}",
            *datagram_budgets(addr, n, budgeted)]


def datagram_budgets(addr: int, n: Names, budgeted: tuple[tuple[int, int], ...]) -> list[str]:
    """Datagrams toward the `budgeted` (VIP, udp service) of one address from addresses
    not known (no ACK, no real's answer: answer_notes) share NEW_SOURCE_DATAGRAMS a
    second, in a bucket of their own."""
    return [f"-A {n.chain} -d {n.host(addr)} -p udp{port_match(service, '--dport')} "
            f"{_budget(NEW_SOURCE_DATAGRAMS, 'newu', n)} -j {n.datagram_flood}"
            for vip, service in budgeted if vip == addr]


def known_rules(addrs: list[int], n: Names) -> list[str]:
    """Mangle, after conntrack: the first ACK of a tracked connection goes to the chain
    that notes its client's address as known and marks the connection, so its later
    packets fail the one gate rule, whatever the number of tracked VIP addresses (every
    packet the director forwards meets it; the mark is tested before the flags). The
    gate's chain then picks the VIPs' ACKs out of the others (the director's own
    connections, untracked VIPs' traffic: never marked, so tested each time)."""
    if not addrs:
        return []
    return [f"-A {n.chain} -p tcp -m connmark --mark 0x0/0x{KNOWN_CTMARK:x} -m tcp "
            f"--tcp-flags SYN,RST,ACK ACK -j {n.acks}",
            *(f"-A {n.acks} -d {n.host(addr)} -j {n.note}" for addr in addrs)]


def note_rules(n: Names) -> list[str]:
    """The chain known_rules' per-VIP rules jump to."""
    mark = f"0x{KNOWN_CTMARK:x}"
    return [f"-A {n.note} {_note_known(n)}", f"-A {n.note} -j CONNMARK --set-xmark {mark}/{mark}"]


def guards_of(rules: RuleSet, addr: int, n: Names, chain: str = "") -> list[str]:
    """synguard's rules for the VIP:ports of one address (in `chain`, as flood_rules)."""
    return [guard_rule(addr, port, rate, n, chain) for vip, port, rate in rules.guards
            if vip == addr]


def guard_rule(addr: int, port: int, rate: int, n: Names, chain: str = "") -> str:
    """The kernel SYN-rate guard of one VIP:port. The table name changes with the rate
    because the kernel keeps the settings of the first rule that created a table of a
    given name, and with the queue, because such tables are shared by the namespace.
    An IPv6 source is limited by its /64: one host's addresses share its rate."""
    name = f"ldsg{zlib.crc32(f'{addr}:{port}:{rate}:{n.queue_num}'.encode()):08x}"
    ports = f" --dport {port}" if port != ALL_PORTS else ""
    mask = " --hashlimit-srcmask 64" if n.family is IPV6 else ""
    return (f"-A {chain or n.chain} -d {n.host(addr)} -p tcp -m tcp{ports} "
            f"--tcp-flags FIN,SYN,RST,ACK SYN -m hashlimit --hashlimit-above {rate}/sec "
            f"--hashlimit-burst {rate} --hashlimit-mode srcip{mask} --hashlimit-name {name} "
            f"--hashlimit-htable-max {GUARD_SOURCES} "
            f"--hashlimit-htable-expire {GUARD_EXPIRE_MS} -j {n.shed}")
