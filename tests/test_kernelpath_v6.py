"""The kernel-decided fast path and the fast path's conntrack requests for IPv6, without
a kernel: the ``ip6`` table's text rendered from a dual-stack model (the IPv4 table's
unchanged beside it), the source partition by IPv6 prefix, the transactions and
listings of both tables, an IPv6 virtual configured in the shell, and the ctnetlink
messages of an IPv6 tuple (docs/design.rst, "Decided in the kernel", "Fast path").
tests/test_kernelpath_v6_netns.py loads the same text into a kernel."""

from __future__ import annotations

import random
import socket
import struct

import pytest
from test_kernelpath import FakeNft
from test_shell_commands import Shell

from localdirector.dataplane import netlink
from localdirector.dataplane.conntrack import request_body
from localdirector.dataplane.kernelrules import desired_kernel
from localdirector.dataplane.kerneltable import KernelTable
from localdirector.dataplane.nftables import (definition, expected_shape, install_text,
                                             update_text)
from localdirector.model import kernelpath, maglev
from localdirector.model.addr import IPV4, IPV6, V6, parse_ip
from localdirector.model.director import Director
from localdirector.model.serverid import ServerId

VIP4, VIP6, VIP6_MAGLEV, VIP6_DISPATCHED = "192.0.2.10", "2001:db8::10", "2001:db8::20", \
    "2001:db8::30"
R1, R2, R3 = "2001:db8:1::11", "2001:db8:1::12", "2001:db8:1::13"


def sid(addr: str, port: int = 0, bind: int = 0, proto: str = "tcp") -> ServerId:
    return ServerId(parse_ip(addr), port, bind, proto)


def _virtual(d: Director, vsid: ServerId, predictor: str, *reals: ServerId) -> None:
    d.add_virtual(vsid)
    for r in reals:
        if r not in d.reals:
            d.add_real(r)
    d.bind(vsid, *reals)
    d.set_option(vsid, "predictor", predictor)


def dual_stack(ipv6: bool = True) -> Director:
    """An IPv4 kernel-decided virtual and, unless `ipv6` is False, IPv6 ones:
    roundrobin over a real on the client's port and one on 8001, sticky; maglev; a
    dispatched maglev on every port; a udp roundrobin."""
    d = Director()
    _virtual(d, sid(VIP4, 80), "roundrobin", sid("203.0.113.11"), sid("203.0.113.12"))
    if ipv6:
        _virtual(d, sid(VIP6, 80), "roundrobin", sid(R1), sid(R2, 8001))
        d.set_option(sid(VIP6, 80), "sticky", 10)
        _virtual(d, sid(VIP6_MAGLEV, 443), "maglev", sid(R1), sid(R2), sid(R3))
        _virtual(d, sid(VIP6_DISPATCHED), "maglev", sid(R1), sid(R3))
        d.set_dispatched(sid(VIP6_DISPATCHED), True)
        _virtual(d, sid(VIP6, 53, proto="udp"), "roundrobin", sid(R1, proto="udp"),
                 sid(R2, proto="udp"))
    for v in list(d.iter_virtuals()):
        d.set_fastpath(v.sid, True, kernel=True)
    return d


def test_ipv6_virtuals_render_in_an_ip6_table_with_its_words() -> None:
    rules = desired_kernel(dual_stack())
    text = "\n".join(definition(rules.of(IPV6), "t", IPV6))
    assert text.startswith("table ip6 t {")
    base = ("    ct state new ip6 daddr . tcp dport vmap { 2001:db8::10 . 80 : goto "
            "d_2001-db8--10_80, 2001:db8::20 . 443 : goto d_2001-db8--20_443 }\n"
            "    ct state new ip6 daddr . udp dport vmap { 2001:db8::10 . 53 : goto "
            "d_2001-db8--10_53_udp }\n")
    assert base in text
    assert ("    type filter hook prerouting priority raw + 1; policy accept;\n"
            "    meta l4proto tcp ip6 daddr vmap { 2001:db8::30 : goto d_2001-db8--30_0 }"
            in text)
    # Every client address of the family, as one range of the source map.
    assert ("  map s_2001-db8--10_80 {\n    type ipv6_addr : verdict\n    flags interval\n"
            "    elements = { ::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff : goto "
            "i_2001-db8--10_80_0 }\n  }") in text
    assert "    ip6 saddr vmap @s_2001-db8--10_80\n" in text
    # Sticky: sets of IPv6 addresses; DNAT to a real on the client's port and on 8001.
    memory = "k_2001-db8--10_80_0__2001-db8-1--11_0_0_10"
    assert f"  set {memory} {{\n    type ipv6_addr\n" in text
    assert (f"    update @{memory} {{ ip6 saddr }}\n    counter name "
            '"c_2001-db8--10_80_0__2001-db8-1--11_0_0" meta l4proto tcp dnat to '
            "2001:db8:1::11\n") in text
    assert "meta l4proto tcp dnat to [2001:db8:1::12]:8001\n" in text
    assert f"    ip6 saddr @{memory} goto r_2001-db8--10_80_0__2001-db8-1--11_0_0\n" in text
    assert "meta l4proto udp dnat to 2001:db8:1::11\n" in text
    # Maglev: the IPv6 flow hashed into the model's own table.
    seed = kernelpath.seed(dual_stack().virtuals[sid(VIP6_MAGLEV, 443)])
    assert (f"jhash ip6 saddr . tcp sport . ip6 daddr . tcp dport mod 4099 seed 0x{seed:08x}"
            " vmap { 0") in text
    # Dispatched: the packet copied unchanged to the IPv6 real's neighbour, the flow
    # remembered in the ip6 table's flow memory by hashes of its IPv6 5-tuple.
    key = " . ".join(f"jhash ip6 saddr . tcp sport . ip6 daddr . tcp dport mod 4294967295 "
                     f"seed 0x6c646d3{n}" for n in (1, 2))
    assert ("    tcp flags & (fin | syn | rst | ack) == syn counter name "
            f'"c_2001-db8--30_0_0__2001-db8-1--11_0_0" update @flows_tcp {{ {key} timeout '
            "900s : 2001:db8:1::11 }\n    dup to 2001:db8:1::11 drop\n" in text)
    assert ("  map flows_tcp {\n    typeof numgen inc mod 4294967295 . numgen inc mod "
            "4294967295 : ip6 daddr\n    flags dynamic,timeout\n    size 16384\n  }") in text
    assert (f"dup to {key} map @flows_tcp update @flows_tcp {{ {key} timeout 900s : :: }} "
            "drop\n") in text
    assert " ip " not in text and "ipv4_addr" not in text


def test_maglev_slots_are_the_models_table_of_the_ipv6_reals() -> None:
    rules = desired_kernel(dual_stack())
    instance = next(i for i in rules.instances if i.chain == "i_2001-db8--20_443_0")
    members = sorted((parse_ip(r), 0, 1) for r in (R1, R2, R3))
    table = maglev.MaglevTable.build(members, kernelpath.KERNEL_MAGLEV_SIZE)
    slots = {s: chain for first, last, chain in instance.slots
             for s in range(first, last + 1)}
    assert len(slots) == 4099
    want = [f"r_2001-db8--20_443_0__{maglev.identity(*m[:2])}" for m in table.members]
    assert want[0] == "r_2001-db8--20_443_0__[2001:db8:1::11]:0"   # the hashed identity
    assert all(slots[s].endswith("2001-db8-1--1" + "123"[table.table[s]] + "_0_0")
               for s in range(4099))


def test_the_ipv4_table_is_what_it_was_without_ipv6() -> None:
    both, alone = desired_kernel(dual_stack()), desired_kernel(dual_stack(ipv6=False))
    assert both.of(IPV4) == alone
    assert install_text(alone, "t") == (
        "\n".join(["table ip t", "delete table ip t", *definition(alone, "t"),
                   "table ip6 t", "delete table ip6 t", ""]))
    assert alone.families == (IPV4,) and both.families == (IPV4, IPV6)
    assert update_text(alone, alone, "t").count("table ip6") == 0


def test_the_ip6_table_appears_and_goes_with_its_virtuals_in_one_transaction() -> None:
    d = dual_stack()
    nft = FakeNft()
    table = KernelTable(9, nft)
    table.install(desired_kernel(d))
    assert "table ip localdirector9 {" in nft.texts[-1]
    assert "table ip6 localdirector9 {" in nft.texts[-1]
    for v in [v for v in d.iter_virtuals() if v.addr >= V6]:
        d.remove_virtual(v.sid)
    d.unbind(sid(VIP4, 80), sid("203.0.113.12"))
    assert table.update(desired_kernel(d), d)
    text = nft.texts[-1]
    assert text.startswith("flush table ip localdirector9\n")
    assert "table ip6 localdirector9\ndelete table ip6 localdirector9\n" in text
    assert "table ip6 localdirector9 {" not in text
    assert nft.listings == 2   # the fold before the update listed both tables
    table.fold(d)
    assert nft.listings == 3   # only the ip table is left to list


def test_counters_of_both_families_fold_and_retire_in_their_own_tables() -> None:
    d = dual_stack()
    nft = FakeNft()
    table = KernelTable(9, nft)
    table.install(desired_kernel(d))
    v6_counter = "c_2001-db8--20_443_0__2001-db8-1--12_0_0"
    v4_counter = "c_192_0_2_10_80_0__203_0_113_11_0_0"
    nft.packets = {v6_counter: 4, v4_counter: 3}
    table.fold(d)   # each table's listing reports both here: folded once each, not twice
    real = d.reals[sid(R2)]
    assert (real.total_conns, d.virtuals[sid(VIP6_MAGLEV, 443)].conns_total) == (4, 4)
    assert d.reals[sid("203.0.113.11")].total_conns == 3
    d.unbind(sid(VIP6_MAGLEV, 443), sid(R2))
    assert table.update(desired_kernel(d), d)
    d.set_option(sid(R1), "weight", 2)
    d.set_option(sid(VIP6_MAGLEV, 443), "predictor", "weighted")
    nft.packets[v6_counter] = 5
    assert table.update(desired_kernel(d), d)
    assert f"delete counter ip6 localdirector9 {v6_counter}\n" in nft.texts[-1]
    assert "delete counter ip localdirector9" not in nft.texts[-1]
    assert real.total_conns == 5


def test_both_listings_verify_their_own_tables() -> None:
    d = dual_stack()
    rules = desired_kernel(d)

    class TwoTables(FakeNft):
        """Lists each family's table as installed, or the ip table's for both."""

        mixed_up = False

        def __call__(self, argv: list[str], stdin: str) -> str:
            if argv[:2] != ["-f", "-"]:
                family = IPV4 if argv[argv.index("table") + 1] == "ip" or self.mixed_up \
                    else IPV6
                self.shape = expected_shape(rules.of(family))
            return super().__call__(argv, stdin)

    nft = TwoTables()
    table = KernelTable(9, nft)
    table.install(rules)
    nft.packets = dict.fromkeys(rules.counters, 0)
    assert not table.repair(d) and nft.listings == 2
    nft.mixed_up = True   # the ip6 table is not as installed: both are reinstalled
    assert table.repair(d) and nft.texts[-1] == install_text(rules, "localdirector9")


def _attrs(data: bytes, start: int, end: int) -> dict[int, bytes]:
    found = {}
    while start < end:
        length, kind = netlink.ATTR.unpack_from(data, start)
        found[kind & netlink.NLA_TYPE_MASK] = data[start + 4:start + length]
        start += (length + 3) & ~3
    return found


def test_conntrack_asks_about_an_ipv6_tuple_in_its_family() -> None:
    src, dst = parse_ip("2001:db8:c::5"), parse_ip(VIP6)
    body = request_body(src, 40000, dst, 80, False)
    assert netlink.NFGEN.unpack_from(body)[0] == socket.AF_INET6
    orig = _attrs(body, netlink.NFGEN.size, len(body))[1]       # CTA_TUPLE_ORIG
    tuple_ = _attrs(orig, 0, len(orig))
    ip, proto = _attrs(tuple_[1], 0, len(tuple_[1])), _attrs(tuple_[2], 0, len(tuple_[2]))
    assert ip == {3: socket.inet_pton(socket.AF_INET6, "2001:db8:c::5"),    # CTA_IP_V6_SRC
                  4: socket.inet_pton(socket.AF_INET6, VIP6)}               # CTA_IP_V6_DST
    assert proto == {1: bytes((socket.IPPROTO_TCP,)), 2: struct.pack("!H", 40000),
                     3: struct.pack("!H", 80)}
    # IPv4 as before: AF_INET, CTA_IP_V4_SRC/DST of four bytes.
    body = request_body(parse_ip("198.51.100.5"), 40000, parse_ip(VIP4), 80, True)
    assert netlink.NFGEN.unpack_from(body)[0] == socket.AF_INET
    orig = _attrs(body, netlink.NFGEN.size, len(body))[1]
    assert _attrs(_attrs(orig, 0, len(orig))[1], 0, 12) == {
        1: socket.inet_aton("198.51.100.5"), 2: socket.inet_aton(VIP4)}


def _bind_id_director() -> Director:
    """Overlapping IPv6 prefixes on one VIP, exact-port and all-ports instances, and an
    IPv4 VIP's networks beside them, which must not cut the IPv6 space."""
    d = Director()
    for vsid in (sid(VIP6, 80), sid(VIP6, 80, 1), sid(VIP6, 80, 2), sid(VIP6, 0, 3),
                 sid(VIP6), sid(VIP6, 443, 4), sid(VIP4, 80), sid(VIP4, 80, 1)):
        d.add_virtual(vsid)
    for vsid, net, length in ((sid(VIP6, 80, 1), "2001:db8:c::", 48),
                              (sid(VIP6, 80, 2), "2001:db8:c:8000::", 49),
                              (sid(VIP6, 0, 3), "2001:db8:c::", 48),       # ties with :80:1
                              (sid(VIP6, 0, 3), "2001:db8:c::", 47),
                              (sid(VIP6, 80, 2), "2001:db8:c::7", 128),
                              (sid(VIP6, 443, 4), "2001:db8:d::", 48),
                              (sid(VIP4, 80, 1), "198.51.100.0", 24)):
        d.assign(vsid, parse_ip(net), length)
    return d


@pytest.mark.parametrize("port", [80, 443, 0])
def test_the_ipv6_source_partition_agrees_with_the_engines_lookup(port: int) -> None:
    d = _bind_id_director()
    vip = parse_ip(VIP6)
    ranges = kernelpath.partition(d, vip, port)
    assert ranges[0][0] >= V6 and ranges[-1][1] < V6 << 1
    assert all(a[1] < b[0] for a, b in zip(ranges, ranges[1:]))   # disjoint, ascending
    dport = port or kernelpath.other_port(d, vip)
    probe = random.Random(port)
    nets = [parse_ip(n) for n in ("2001:db8:c::", "2001:db8:d::")]
    edges = [edge for first, last, _v in ranges for edge in (first - 1, first, last, last + 1)]
    for src in [*edges, *(V6 | probe.randrange(1 << 128) for _ in range(2000)),
                *(probe.choice(nets) + probe.randrange(1 << 80) for _ in range(2000)),
                *(parse_ip("2001:db8:c::7") + step for step in (-1, 0, 1))]:
        if not V6 <= src < V6 << 1:
            continue
        got = next((v for first, last, v in ranges if first <= src <= last), None)
        assert got is d.lookup_virtual(src, vip, dport), hex(src)


def test_the_ipv6_source_map_is_rendered_as_ranges_of_the_family() -> None:
    d = _bind_id_director()
    for v in d.iter_virtuals():
        v.fastpath = v.kernel = True
    text = "\n".join(definition(desired_kernel(d).of(IPV6), "t", IPV6))
    assert ("    elements = { ::-2001:db8:b:ffff:ffff:ffff:ffff:ffff : goto i_2001-db8--10_80_0, "
            "2001:db8:c::-2001:db8:c::6 : goto i_2001-db8--10_80_1, 2001:db8:c::7 : goto "
            "i_2001-db8--10_80_2, ") in text
    assert "198.51.100" not in text


def test_an_ipv6_virtual_configured_in_the_shell_is_decided_in_its_table(tmp_path) -> None:
    shell = Shell(tmp_path)
    assert shell(f"real [{R1}]", f"real [{R2}]", f"virtual [{VIP6_MAGLEV}]:80",
                 f"predictor [{VIP6_MAGLEV}]:80 maglev",
                 f"bind [{VIP6_MAGLEV}]:80 [{R1}] [{R2}]",
                 f"fastpath [{VIP6_MAGLEV}]:80 kernel"), shell.take()
    assert f"fastpath [{VIP6_MAGLEV}]:80 kernel" in shell.config()
    rules = desired_kernel(shell.director)
    assert rules.families == (IPV6,)
    text = "\n".join(definition(rules.of(IPV6), "t", IPV6))
    assert "ip6 daddr . tcp dport vmap { 2001:db8::20 . 80 : goto d_2001-db8--20_80 }" in text
    shell.take()
    assert not shell(f"predictor [{VIP6_MAGLEV}]:80 leastconns")
    assert shell.take().strip().splitlines()[-1] == (
        f"% [{VIP6_MAGLEV}]:80:0:tcp uses predictor leastconns: the kernel decides only "
        "roundrobin, weighted and maglev")
