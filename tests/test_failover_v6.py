"""The failover pair with IPv6 virtuals, without a network (docs/design.rst, "Failover"):
`failover virtual ADDR/LEN`, the keepalived instances carrying IPv6 beside IPv4 over the
IPv4 failover link, conntrackd's filter, the link watch's questions, and the
replication records of IPv6 connections."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from localdirector.failover import configs, presence, replication
from localdirector.model.addr import parse_ip
from localdirector.model.connection import Connection, UdpFlow
from localdirector.model.director import Director
from localdirector.model.failover import FailoverConfig
from localdirector.model.serverid import ServerId
from tests.test_failover import KEY, replayed, saved, shell

pytestmark = pytest.mark.usefixtures("private_loopback")

DUAL = ["failover ip address 198.19.255.2", KEY,
        "failover virtual 198.51.100.1 255.255.255.0", "failover virtual 2001:db8:c::1/64",
        "failover virtual 2001:db8:1::1/64", "failover virtual 203.0.113.1 255.255.255.0",
        "failover virtual 192.0.2.1", "failover"]
ADDRESSES = [("cli0", "198.51.100.253", 24), ("cli0", "2001:db8:c::fd", 64),
             ("real0", "203.0.113.253", 24), ("real0", "2001:db8:1::fd", 64),
             ("v6only", "2001:db8:d::fd", 64), ("fo0", "198.19.255.1", 24)]


def test_dual_stack_commands_round_trip(tmp_path: Path) -> None:
    appliance, session = replayed(tmp_path, DUAL)
    assert session.execute("no failover virtual 2001:db8:c::1")
    assert "failover virtual 2001:db8:c::1/64" not in saved(appliance)
    assert session.execute("failover virtual 2001:db8:c::5")        # a host: /128
    assert "failover virtual 2001:db8:c::5" in saved(appliance)
    assert (parse_ip("2001:db8:c::5"), 128) in appliance.director.settings.failover.virtuals


@pytest.mark.parametrize(("line", "reason"), [
    ("failover virtual 2001:db8:c::/64", "% 2001:db8:c:: is not a host address of "
                                         "2001:db8:c::/64"),
    ("failover virtual fe80::1/64", "% fe80::1 is link-local: a failover virtual is a "
                                    "global address"),
    ("failover virtual 2001:db8:c::1/129", "% invalid prefix length '129' (0-128)"),
    ("failover virtual 2001:db8:c::1 255.255.255.0",
     "% a mask follows an IPv4 address only: write ADDR/LEN"),
    ("failover virtual 198.51.100.7/24 255.255.255.0",
     "% a mask follows an IPv4 address only: write ADDR/LEN"),
    ("failover virtual 198.51.100.0/24", "% 198.51.100.0 is not a host address of "
                                         "198.51.100.0/24"),
    ("no failover virtual 2001:db8:c::9", "% 2001:db8:c::9 is not a failover virtual "
                                          "address"),
])
def test_bad_ipv6_input_changes_nothing(tmp_path: Path, line: str, reason: str) -> None:
    appliance, out, session = shell(tmp_path)
    for good in DUAL:
        assert session.execute(good)
    before = saved(appliance)
    assert not session.execute(line)
    assert saved(appliance) == before
    assert out[-1].rstrip("\n").split("\n")[-1] == reason


def test_the_failover_link_stays_ipv4(tmp_path: Path) -> None:
    appliance, out, _session = shell(tmp_path)
    with pytest.raises(Exception, match="the failover link is IPv4"):
        appliance.director.set_failover_peer(parse_ip("2001:db8:ff::2"))
    assert appliance.director.settings.failover.peer == 0


def dual_config() -> FailoverConfig:
    return FailoverConfig(True, parse_ip("198.19.255.2"), 100, 500, True,
                          [(parse_ip("2001:db8:1::1"), 64), (parse_ip("198.51.100.1"), 24),
                           (parse_ip("2001:db8:c::1"), 64), (parse_ip("2001:db8:d::1"), 64),
                           (parse_ip("203.0.113.1"), 24)])


def block(text: str, name: str) -> str:
    """One `vrrp_instance NAME { ... }` of keepalived's file."""
    start = text.index(f"vrrp_instance {name} {{")
    return text[start:text.index("\n}\n", start) + 2]


def test_keepalived_carries_ipv6_virtuals_beside_ipv4_over_the_ipv4_link(
        tmp_path: Path) -> None:
    """Each interface's IPv4 instance holds its IPv6 virtuals as excluded addresses
    (moved with it, not in the adverts, which stay IPv4 unicast over the failover link);
    an interface with IPv6 virtuals only rides in the first instance, which tracks it
    (keepalived refuses an instance without a VIP of its adverts' family)."""
    unit = configs.Unit("primary", "fo0", "198.19.255.1", tmp_path)
    text = configs.keepalived(dual_config(), unit, ADDRESSES)
    assert [line.split()[1] for line in text.splitlines()
            if line.startswith("vrrp_instance")] == ["LD_cli0", "LD_real0"]
    cli = block(text, "LD_cli0")
    assert ("    track_interface {\n        cli0\n        v6only\n    }" in cli)
    assert ("    virtual_ipaddress {\n        198.51.100.1/24 dev cli0\n    }\n"
            "    virtual_ipaddress_excluded {\n"
            "        2001:db8:c::1/64 dev cli0 preferred_lft 0\n"
            "        2001:db8:d::1/64 dev v6only preferred_lft 0\n    }") in cli
    assert "unicast_src_ip 198.19.255.1" in cli and "unicast_peer {\n        198.19.255.2" in cli
    assert ("    virtual_ipaddress_excluded {\n"
            "        2001:db8:1::1/64 dev real0 preferred_lft 0\n    }") in block(text, "LD_real0")
    assert "group {\n        LD_cli0\n        LD_real0\n    }" in text
    # An IPv4-only pair's file is as before: no excluded block.
    v4 = FailoverConfig(True, parse_ip("198.19.255.2"),
                        virtuals=[(parse_ip("198.51.100.1"), 24)])
    assert "excluded" not in configs.keepalived(v4, unit, ADDRESSES)
    # A virtual is placed in its own family only: no IPv4 address holds an IPv6 one.
    with pytest.raises(ValueError, match="no interface holds an address of 2001:db8:d::1"):
        configs.instances(dual_config(), [a for a in ADDRESSES if a[0] != "v6only"])
    # IPv6 virtuals alone have no IPv4 instance to ride in.
    v6 = FailoverConfig(True, parse_ip("198.19.255.2"),
                        virtuals=[(parse_ip("2001:db8:c::1"), 64)])
    with pytest.raises(ValueError, match="add an IPv4 failover virtual"):
        configs.keepalived(v6, unit, ADDRESSES)


def test_conntrackd_replicates_ipv6_entries_and_ignores_ipv6_loopback(tmp_path: Path) -> None:
    unit = configs.Unit("primary", "fo0", "198.19.255.1", tmp_path)
    text = configs.conntrackd(dual_config(), unit)
    ignore = text[text.index("Address Ignore {"):]
    assert "IPv6_address ::1" in ignore and "IPv4_address 127.0.0.1" in ignore
    assert "IPv4_Destination_Address 198.19.255.2" in text   # the sync itself: IPv4


def test_the_link_watch_asks_ipv4_by_arp_and_ipv6_only_segments_by_solicitation() -> None:
    """A dual-stack segment is asked for its IPv4 virtual (ARP); a segment with IPv6
    virtuals alone for its IPv6 one (neighbour solicitation), from the unit's own
    address of that network, never a virtual it holds itself."""
    instances = configs.instances(dual_config(), ADDRESSES)
    held = [*ADDRESSES, ("v6only", "2001:db8:d::1", 64)]     # this unit is active there
    assert presence.asks(instances, held) == [
        ("cli0", "198.51.100.253", "198.51.100.1"), ("real0", "203.0.113.253", "203.0.113.1"),
        ("v6only", "2001:db8:d::fd", "2001:db8:d::1")]


def test_the_neighbour_solicitation_is_well_formed(monkeypatch) -> None:
    """Checked by scapy: to the target's solicited-node group (its MAC too), hop limit
    255, a valid ICMPv6 checksum, our link-layer address in the option."""
    from scapy.layers.inet6 import ICMPv6ND_NS, ICMPv6NDOptSrcLLAddr, IPv6
    from scapy.layers.l2 import Ether

    monkeypatch.setattr(presence, "_mac", lambda ifname: bytes.fromhex("020000000001"))
    want = parse_ip("2001:db8:d::1").to_bytes(17, "big")[1:]
    frame = Ether(presence._solicitation("v6only", "2001:db8:d::fd", want))
    assert frame.dst == "33:33:ff:00:00:01" and frame.src == "02:00:00:00:00:01"
    assert (frame[IPv6].src, frame[IPv6].dst, frame[IPv6].hlim) == (
        "2001:db8:d::fd", "ff02::1:ff00:1", 255)
    assert frame[ICMPv6ND_NS].tgt == "2001:db8:d::1"
    assert frame[ICMPv6NDOptSrcLLAddr].lladdr == "02:00:00:00:00:01"
    sent = frame[ICMPv6ND_NS].cksum
    del frame[ICMPv6ND_NS].cksum
    assert Ether(bytes(frame))[ICMPv6ND_NS].cksum == sent


VIP6, REAL6, CLIENT6 = "2001:db8::10", "2001:db8:1::11", "2001:db8:c::5"


def director6(proto: str = "tcp", per_datagram: bool = False) -> Director:
    d = Director()
    v = d.add_virtual(ServerId(parse_ip(VIP6), 80, 0, proto))
    v.per_datagram = per_datagram
    for addr in (REAL6, "2001:db8:1::12"):
        d.add_real(ServerId(parse_ip(addr), 8080, 0, proto))
        d.bind(v.sid, ServerId(parse_ip(addr), 8080, 0, proto))
    return d


def round_trip(conn: Connection, director: Director) -> Connection | str:
    record = json.loads(json.dumps(replication.encode(conn, 100.0)))
    return replication.decode(record, director, 500.0)


@pytest.mark.parametrize(("proto", "per_datagram"), [("tcp", False), ("udp", False),
                                                     ("udp", True)])
def test_records_of_ipv6_connections_validate_and_import(proto: str,
                                                         per_datagram: bool) -> None:
    active, standby = director6(proto, per_datagram), director6(proto, per_datagram)
    sid = ServerId(parse_ip(VIP6), 80, 0, proto)
    virtual = active.virtuals[sid]
    real = active.reals[ServerId(parse_ip(REAL6), 8080, 0, proto)]
    cls = UdpFlow if proto == "udp" else Connection
    conn = cls(parse_ip(CLIENT6), 40001, virtual.addr, 80, virtual, real, 90.0)
    conn.remap = 50001
    copy = round_trip(conn, standby)
    assert isinstance(copy, Connection), copy
    assert (copy.in_key, copy.reply_key(), copy.foreign_ip, copy.foreign_port, copy.remap) \
        == (conn.in_key, conn.reply_key(), parse_ip(CLIENT6), 40001, 50001)
    assert copy.virtual is standby.virtuals[sid] and copy.real.sid == real.sid
    # An IPv4 connection beside it decodes as before.
    four = Director()
    v4 = four.add_virtual(ServerId(parse_ip("192.0.2.10"), 80, 0, proto))
    r4 = four.add_real(ServerId(parse_ip("203.0.113.12"), 0, 0, proto))
    four.bind(v4.sid, r4.sid)
    old = cls(parse_ip("198.51.100.7"), 40000, v4.addr, 80, v4, r4, 90.0)
    assert round_trip(old, four).in_key == old.in_key


def test_malformed_ipv6_records_are_refused() -> None:
    d = director6()
    virtual = d.virtuals[ServerId(parse_ip(VIP6), 80)]
    real = d.reals[ServerId(parse_ip(REAL6), 8080)]
    record = replication.encode(Connection(parse_ip(CLIENT6), 40001, virtual.addr, 80,
                                           virtual, real, 90.0), 100.0)
    assert isinstance(replication.decode(list(record), d, 500.0), Connection)
    # An IPv4 client in an IPv6 virtual's key: the client is not of the VIP's family.
    ipv4_client = Connection(parse_ip("198.51.100.7"), 40001, virtual.addr, 80,
                             virtual, real, 90.0).in_key
    for field, value in ((0, ipv4_client), (0, record[0] + (1 << 700)), (1, 1 << 129),
                         (5, (1 << 128) - 1), (0, -1)):
        bad = list(record)
        bad[field] = value
        assert replication.decode(bad, d, 500.0) == replication.MALFORMED, (field, value)


def test_sticky_entries_of_ipv6_clients_travel_and_of_the_other_family_are_refused() -> None:
    active, standby = director6(), director6()
    for d in (active, standby):
        d.virtuals[ServerId(parse_ip(VIP6), 80)].sticky = 5
    real = active.reals[ServerId(parse_ip(REAL6), 8080)]
    active.virtuals[ServerId(parse_ip(VIP6), 80)].sticky_table[parse_ip(CLIENT6)] = (real, 95.0)
    entries = json.loads(json.dumps(replication.encode_sticky(active, 100.0)))
    wrong = [list(entries[0])]
    wrong[0][4] = parse_ip("198.51.100.7")          # an IPv4 client of an IPv6 virtual
    assert replication.apply_sticky(entries + wrong, standby, 500.0) == 1
    table = standby.virtuals[ServerId(parse_ip(VIP6), 80)].sticky_table
    assert list(table) == [parse_ip(CLIENT6)] and table[parse_ip(CLIENT6)][0].sid == real.sid


# Every key of a layout lies below its largest real tag: 2**145 for IPv4 (KEY_LIMIT),
# 2**436 for IPv6 (a 129-bit real and port above bit 291).
@pytest.mark.parametrize(("vip", "real", "client", "bound"), [
    ("192.0.2.53", "203.0.113.12", "198.51.100.7", 145), (VIP6, REAL6, CLIENT6, 436)])
def test_a_moved_flows_key_is_bounded_by_its_familys_layout(vip: str, real: str,
                                                            client: str, bound: int) -> None:
    """A per-datagram flow's key may carry another real's tag (it moved), but nothing
    above the largest tag of its family's layout."""
    d = Director()
    v = d.add_virtual(ServerId(parse_ip(vip), 53, 0, "udp"))
    v.per_datagram = True
    r = d.add_real(ServerId(parse_ip(real), 0, 0, "udp"))
    d.bind(v.sid, r.sid)
    record = replication.encode(UdpFlow(parse_ip(client), 40000, v.addr, 53, v, r, 90.0),
                                100.0)
    assert isinstance(replication.decode(list(record), d, 500.0), UdpFlow)
    assert isinstance(replication.decode([record[0] ^ 1 << (bound - 1), *record[1:]], d,
                                         500.0), UdpFlow)        # another real's tag
    for extra in (1 << bound, 1 << 599):
        assert replication.decode([record[0] | extra, *record[1:]], d, 500.0) \
            == replication.MALFORMED, extra
