"""IPv6's NFQUEUE rules (docs/design.rst, "Netfilter rules", IPv6): the same chains in
ip6tables' tables for the IPv6 part of the model, the director's own ICMPv6 errors
queued, SYN guards and the known-clients set per /64; IPv4's rules as they were. No
kernel: the tools are a fake that records what each was given."""

from __future__ import annotations

import pytest

from localdirector.dataplane.iptables import names, raw_rules
from localdirector.dataplane.ruleset import RuleSet, RulesError, desired_rules, for_family
from localdirector.dataplane.transactions import DualStack
from localdirector.model.addr import IPV4, IPV6, parse_ip
from localdirector.model.director import Director
from localdirector.model.serverid import ServerId


def sid(addr: str, port: int = 0, proto: str = "tcp") -> ServerId:
    return ServerId(parse_ip(addr), port, 0, proto)


def dual_stack() -> Director:
    d = Director()
    with d.lock:
        for vip, real in (("192.0.2.10", "203.0.113.11"), ("2001:db8::10", "2001:db8:1::11")):
            for proto, port in (("tcp", 80), ("udp", 53)):
                d.add_virtual(sid(vip, port, proto))
                d.add_real(sid(real, 8001 if proto == "tcp" else 0, proto))
                d.bind(sid(vip, port, proto), sid(real, 8001 if proto == "tcp" else 0, proto))
        d.virtuals[sid("2001:db8::10", 80)].synguard = 20
    return d


class Tools:
    """iptables, ip6tables and ipset, recorded: each -restore's input by tool."""

    def __init__(self) -> None:
        self.restored: dict[str, list[str]] = {"iptables": [], "ip6tables": []}
        self.ipset: list[list[str]] = []

    def __call__(self, argv: list[str], stdin: str) -> str:
        if argv[0] == "ipset":
            self.ipset.append(argv)
        elif argv[0].endswith("-restore"):
            self.restored[argv[0].removesuffix("-restore")].append(stdin)
        return ""


def test_the_ruleset_splits_by_family() -> None:
    rules = desired_rules(dual_stack())
    v4, v6 = for_family(rules, IPV4), for_family(rules, IPV6)
    assert [addr for addr, _ in v4.vips] == [parse_ip("192.0.2.10")]
    assert [addr for addr, _ in v6.vips] == [parse_ip("2001:db8::10")]
    assert [g[0] for g in v6.guards] == [parse_ip("2001:db8::10")] and not v4.guards


def test_ipv6_rules_go_to_ip6tables_and_ipv4_ones_stay_as_they_were() -> None:
    tools = Tools()
    rules = desired_rules(dual_stack())
    DualStack(7, tools).install(rules)
    v4 = "".join(tools.restored["iptables"])
    v6 = "".join(tools.restored["ip6tables"]).splitlines()
    assert "2001:db8" not in v4 and "-d 192.0.2.10/32 -p tcp -m tcp --dport 80" in v4
    assert raw_rules(for_family(rules, IPV4), names(7))[-1] in v4
    for line in (
        "-A LOCALDIRECTOR7 -d 2001:db8::10/128 -p tcp -m tcp --dport 80 -j LOCALDIRECTOR7-QUEUE",
        "-A LOCALDIRECTOR7 -d 2001:db8::10/128 -p udp -m udp --dport 53 -j LOCALDIRECTOR7-QUEUE",
        "-A LOCALDIRECTOR7 -d 2001:db8::10/128 -p ipv6-icmp -m icmp6 --icmpv6-type 2 "
        "-j LOCALDIRECTOR7-QUEUE",
        "-A LOCALDIRECTOR7 -s 2001:db8:1::11/128 -p ipv6-icmp -m icmp6 --icmpv6-type 1 "
        "-j LOCALDIRECTOR7-REALQ",
        "-A LOCALDIRECTOR7 -s 2001:db8:1::11/128 -p tcp -m tcp --sport 8001 "
        "-j LOCALDIRECTOR7-REALQ",
        "-A LOCALDIRECTOR7 -s 2001:db8:1::11/128 -p udp -m udp --sport 53 "
        "-j LOCALDIRECTOR7-REALQ",
        "-I OUTPUT 1 -p ipv6-icmp -j LOCALDIRECTOR7-LOCAL",
        "-A LOCALDIRECTOR7-QUEUE -j NFQUEUE --queue-num 7 --queue-bypass",
    ):
        assert line in v6, line
    for kind in (1, 2, 3, 4):   # Packet Too Big (2) above all: path-MTU discovery
        assert (f"-A LOCALDIRECTOR7-LOCAL -p ipv6-icmp -m icmp6 --icmpv6-type {kind} "
                "-j LOCALDIRECTOR7-QUEUE") in v6
    # Neighbour discovery and router advertisements are never queued: no rule takes
    # ICMPv6 whole, or any type but the errors.
    assert not any("--icmpv6-type 13" in line or line.endswith("-p ipv6-icmp -j "
                                                               "LOCALDIRECTOR7-QUEUE")
                   for line in v6)
    guard = next(line for line in v6 if "--hashlimit-mode srcip" in line)
    assert "--hashlimit-mode srcip --hashlimit-srcmask 64 " in guard
    flood = next(line for line in v6 if "--match-set" in line)
    assert "--match-set ldknown7v6 src" in flood and "--hashlimit-name ldnew7v6" in flood
    assert ["ipset", "create", "ldknown7v6", "hash:ip", "family", "inet6", "netmask",
            "64"] == tools.ipset[1][:8]
    assert tools.ipset[0][:6] == ["ipset", "create", "ldknown7", "hash:ip", "family", "inet"]


def test_ipv4_alone_runs_where_ip6tables_fails_and_ipv6_needs_it() -> None:
    class NoIp6(Tools):
        def __call__(self, argv: list[str], stdin: str) -> str:
            if argv[0].startswith("ip6tables"):
                raise RulesError("ip6tables-restore failed: no IPv6")
            return super().__call__(argv, stdin)

    v4_only = RuleSet(((parse_ip("192.0.2.10"), (80,)),), ())
    rules = DualStack(7, NoIp6())
    rules.install(v4_only)
    assert rules.transactions >= 1
    with pytest.raises(RulesError):
        DualStack(7, NoIp6()).install(desired_rules(dual_stack()))
