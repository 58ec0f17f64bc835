"""UDP virtuals on the fast paths without a kernel (issue 25 items 4 and 6): the engine's
verdicts for a `fastpath` udp virtual's datagrams (the first one decided and marked,
unanswered resends marked or moved, a reply's copy noting the answer, the flow held
while conntrack holds it), the iptables text per protocol (queue rule, mark map's
DNAT, reply copies, untracked-reply drops), the nft text of kernel-decided and
kernel-dispatched udp virtuals, dispatched and maglev decided by the engine, and the
refusals that remain (docs/design.rst, "Fast path" and "Decided in the kernel")."""

from __future__ import annotations

from pathlib import Path

from scapy.layers.inet import IP, UDP
from scapy.packet import Raw
from test_engine import CLIENT, VIP, A, B, Lab, sid
from test_fastpath import FastLab, Q7, marks_for
from test_shell_commands import Shell
from test_udp_engine import UA, UB, flow, query, udp_lab

from localdirector.dataplane.engine import ACCEPT_MARK, ACCEPT_UNCHANGED, DROP
from localdirector.dataplane.floodrules import known_rules, note_rules
from localdirector.dataplane.iptables import end_rules, mangle_rules, nat_rules
from localdirector.dataplane.kernelrules import desired_kernel
from localdirector.dataplane.nftables import definition, expected_shape, flow_key as memory_key
from localdirector.dataplane.ruleset import DISPATCH_PORT, MarkMap, desired_rules
from localdirector.dataplane.stats import MARK_PENDING, REASSIGNED
from localdirector.model import maglev
from localdirector.model.addr import IPV4, parse_ip
from localdirector.model.connection import REPLIED, UDP_KEY, UNREPLIED, flow_key
from localdirector.model.serverid import UDP_SERVICE

UDP_A, UDP_B = parse_ip(A), parse_ip(B)


def fast_udp(reals: tuple[str, ...] = (UA, UB), predictor: str = "roundrobin") -> FastLab:
    return FastLab(udp_lab(reals, predictor).d)


def reply(lab: Lab, conn, load: bytes = b"a") -> tuple:
    """The real's answer as conntrack's NFLOG copy shows it: from the real, to the
    client's own port (the kernel's NAT rewrites it after the copy)."""
    return lab.send(IP(src=conn.real.sid.format().split(":")[0], dst=CLIENT)
                    / UDP(sport=conn.real_port, dport=conn.foreign_port) / Raw(load))


def test_first_datagram_is_decided_and_marked_the_kernel_translates_the_rest() -> None:
    lab = fast_udp()
    verdict, _ = query(lab)
    conn = flow(lab)
    assert verdict == ACCEPT_MARK and conn is not None and conn.fastpath
    # The udp real's own mark: a DNAT naming udp (the service port's protocol bit).
    assert lab.engine.verdict_mark == lab.engine.marks[(conn.real.addr, UDP_SERVICE)]
    assert conn.tcp_state is UNREPLIED and conn.virtual.conns_current == 1
    assert reply(lab, conn)[0] == ACCEPT_UNCHANGED            # a copy: noted only
    assert conn.answered and conn.tcp_state is REPLIED and conn.syn_resends == 0
    assert lab.engine.stats.fastpath_conns == 1 and lab.engine.stats.fastpath_copies == 1
    # A second flow goes to the other real (roundrobin), as in userspace.
    assert query(lab, 40001)[0] == ACCEPT_MARK
    assert flow(lab, 40001).real is not conn.real


def test_unanswered_resends_are_marked_then_move_the_flow_and_its_kernel_entry() -> None:
    """conntrack calls a flow NEW until the real answers, so the engine sees exactly the
    unanswered datagrams: `reassign` (3) of them move the flow; the datagram that moved
    it is dropped (it carries the old entry), the next one is marked for the new real."""
    lab = fast_udp()
    query(lab)
    conn = flow(lab)
    first = conn.real
    for _ in range(2):
        assert query(lab)[0] == ACCEPT_MARK and conn.real is first
    assert query(lab)[0] == DROP and conn.real is not first
    assert lab.engine.stats.drops[REASSIGNED] == 1
    assert lab.kernel.deleted == [(parse_ip(CLIENT), 40000, parse_ip(VIP), 53, "udp")]
    assert query(lab)[0] == ACCEPT_MARK
    assert lab.engine.verdict_mark == lab.engine.marks[(conn.real.addr, UDP_SERVICE)]


def test_a_flow_lives_while_conntrack_holds_it_then_ends_counted() -> None:
    """No end is copied for UDP: the flow's record outlives its virtual's timeout while
    conntrack still has the entry (its own UDP timeout), then goes."""
    lab = fast_udp()
    query(lab)
    conn = flow(lab)
    reply(lab, conn)
    tuple_ = (parse_ip(CLIENT), 40000, parse_ip(VIP), 53, "udp")
    lab.kernel.live.add(tuple_)
    lab.advance(61)
    assert flow(lab) is conn and conn.virtual.conns_current == 1
    lab.kernel.live.discard(tuple_)
    lab.advance(61)
    assert flow(lab) is None and conn.virtual.conns_current == 0
    assert lab.engine.stats.conns_timed_out == 1


def test_a_real_without_its_udp_mark_gets_no_flow_yet() -> None:
    lab = fast_udp()
    lab.engine.marks = {}
    assert query(lab)[0] == DROP and lab.engine.stats.drops[MARK_PENDING] == 1
    assert flow(lab) is None


def test_an_evicted_fast_path_flow_is_forgotten_by_the_kernel_too() -> None:
    lab = fast_udp()
    lab.d.virtuals[next(iter(lab.d.virtuals))].flows = 2
    for port in (40000, 40001, 40002):
        assert query(lab, port)[0] == ACCEPT_MARK
    assert flow(lab, 40000) is None
    assert lab.kernel.deleted == [(parse_ip(CLIENT), 40000, parse_ip(VIP), 53, "udp")]


def test_maglev_decides_udp_flows_and_keeps_tcp_keys_hashing_as_before() -> None:
    """A UDP flow key carries its protocol bit above the 96 bits of the 4-tuple: hashed
    as 13 bytes (it did not fit the 12 a TCP key is hashed as)."""
    key = flow_key(parse_ip(CLIENT), 40000, parse_ip(VIP), 53)
    assert maglev.flow_hash(UDP_KEY | key) != maglev.flow_hash(key)
    lab = fast_udp(predictor="maglev")
    reals = set()
    for port in range(40000, 40040):
        assert query(lab, port)[0] == ACCEPT_MARK
        reals.add(flow(lab, port).real.addr)
        # The model's own table names the real: every director picks the same.
        table = maglev.table_for(flow(lab, port).virtual)
        assert table.members[table.lookup(UDP_KEY | flow_key(
            parse_ip(CLIENT), port, parse_ip(VIP), 53))][0] == flow(lab, port).real.addr
    assert reals == {UDP_A, UDP_B}


def test_engine_dispatched_udp_datagrams_go_unchanged_to_the_reals_mark() -> None:
    d = udp_lab(predictor="maglev").d
    for v in d.virtuals.values():
        v.dispatched = True
    lab = Lab(d)
    marks = MarkMap().assign(desired_rules(d).targets)
    lab.engine.marks = marks
    original = bytes(IP(src=CLIENT, dst=VIP) / UDP(sport=40000, dport=53) / Raw(b"q"))
    buf = bytearray(original)
    assert lab.engine.handle(buf) == ACCEPT_MARK and bytes(buf) == original
    conn = flow(lab)
    assert lab.engine.verdict_mark == marks[(conn.real.addr, DISPATCH_PORT)]


# -- iptables ---------------------------------------------------------------------------


def test_iptables_rules_name_udp_for_a_udp_fast_virtual_beside_a_tcp_one() -> None:
    """A tcp and a udp fast virtual on one VIP:53: the first datagram queued from
    mangle (NEW), a flow's first replies copied until conntrack calls it a stream, the
    mark map's DNAT per protocol, and a udp real's untracked packets dropped by port;
    an all-ports udp real's cannot be told from its own queries, so none are."""
    d = udp_lab((UA, f"{B}:5353:0:udp")).d
    d.add_real(sid(A))
    tcp = d.add_virtual(sid(f"{VIP}:53"))
    d.bind(sid(f"{VIP}:53"), sid(A))
    for v in d.virtuals.values():
        v.fastpath = True
    rules = desired_rules(d)
    assert rules.targets == ((UDP_A, 0), (UDP_A, UDP_SERVICE), (UDP_B, 5353 | UDP_SERVICE))
    assert mangle_rules(rules, Q7) == [
        *known_rules([parse_ip(VIP)], Q7),
        "-A LOCALDIRECTOR7 -d 192.0.2.10/32 -p tcp -m tcp --dport 53 -m conntrack "
        "--ctstate NEW -j LOCALDIRECTOR7-QUEUE",
        "-A LOCALDIRECTOR7 -d 192.0.2.10/32 -p tcp -m tcp --dport 53 ! --tcp-flags FIN,RST "
        "NONE -m conntrack --ctstate ESTABLISHED -j LOCALDIRECTOR7-CEND",
        "-A LOCALDIRECTOR7 -d 192.0.2.10/32 -p udp -m udp --dport 53 -m conntrack "
        "--ctstate NEW -j LOCALDIRECTOR7-QUEUE",
        "-A LOCALDIRECTOR7-REPLY -m conntrack --ctstate INVALID,NEW -j LOCALDIRECTOR7-STRAY",
        "-A LOCALDIRECTOR7-STRAY -s 203.0.113.1/32 -p tcp -m tcp --sport 53 -j DROP",
        "-A LOCALDIRECTOR7-STRAY -s 203.0.113.1/32 -p udp -m udp --sport 53 -j DROP",
        "-A LOCALDIRECTOR7-STRAY -s 203.0.113.2/32 -p udp -m udp --sport 5353 -j DROP",
        "-A LOCALDIRECTOR7-REPLY -p tcp -m tcp --tcp-flags RST RST -m conntrack --ctdir "
        "REPLY ! --ctstatus ASSURED --ctorigdst 192.0.2.10 --ctorigdstport 53 "
        "-j LOCALDIRECTOR7-QUEUE",
        "-A LOCALDIRECTOR7-REPLY -p tcp -m tcp --tcp-flags SYN SYN -m conntrack "
        "--ctdir REPLY --ctorigdst 192.0.2.10 --ctorigdstport 53 -j LOCALDIRECTOR7-LOG",
        "-A LOCALDIRECTOR7-REPLY -p tcp -m tcp ! --tcp-flags FIN,RST NONE -m conntrack "
        "--ctdir REPLY --ctorigdst 192.0.2.10 --ctorigdstport 53 -j LOCALDIRECTOR7-REND",
        "-A LOCALDIRECTOR7-REPLY -p udp -m conntrack --ctdir REPLY ! --ctstatus ASSURED "
        "--ctorigdst 192.0.2.10 --ctorigdstport 53 -j LOCALDIRECTOR7-LOG",
        *note_rules(Q7),
        *end_rules(Q7),
    ]
    marks = marks_for(d)
    assert nat_rules(rules, marks, Q7) == [
        "-A LOCALDIRECTOR7 -p tcp -m mark --mark 0x10000/0xffff0000 "
        "-j DNAT --to-destination 203.0.113.1",
        "-A LOCALDIRECTOR7 -p udp -m mark --mark 0x20000/0xffff0000 "
        "-j DNAT --to-destination 203.0.113.1",
        "-A LOCALDIRECTOR7 -p udp -m mark --mark 0x30000/0xffff0000 "
        "-j DNAT --to-destination 203.0.113.2:5353",
    ]
    assert tcp.fastpath
    # A udp virtual on every port: its reals' untracked packets are not dropped.
    d.remove_virtual(sid(f"{VIP}:53"))
    d.add_real(sid(f"{B}:0:0:udp"))
    d.add_virtual(sid(f"{VIP}:0:0:udp")).fastpath = True
    d.bind(sid(f"{VIP}:0:0:udp"), sid(f"{B}:0:0:udp"))
    assert [line for line in mangle_rules(desired_rules(d), Q7) if "STRAY -s" in line] == [
        "-A LOCALDIRECTOR7-STRAY -s 203.0.113.1/32 -p udp -m udp --sport 53 -j DROP",
        "-A LOCALDIRECTOR7-STRAY -s 203.0.113.2/32 -p udp -m udp --sport 5353 -j DROP"]


# -- nftables ---------------------------------------------------------------------------

DNS = "192.0.2.53"
KERNEL_UDP = [
    "real 203.0.113.11:0:0:udp", "real 203.0.113.12:0:0:udp", "real 203.0.113.13",
    f"virtual {DNS}:53:0:udp", f"predictor {DNS}:53:0:udp roundrobin",
    f"bind {DNS}:53:0:udp 203.0.113.11:0:0:udp 203.0.113.12:0:0:udp",
    f"virtual {DNS}:53", f"predictor {DNS}:53 roundrobin", f"bind {DNS}:53 203.0.113.13",
    f"fastpath {DNS}:53:0:udp kernel", f"fastpath {DNS}:53 kernel",
]
UDP_INSTANCE = "i_192_0_2_53_53_0_udp"
UDP_BRANCH = "r_192_0_2_53_53_0_udp__203_0_113_11_0_0_udp"


def chain(text: str, name: str) -> list[str]:
    lines = text.splitlines()
    at = lines.index(f"  chain {name} {{")
    return [line.strip() for line in lines[at + 1:lines.index("  }", at)]]


def test_kernel_decided_udp_beside_tcp_on_one_vip_port(tmp_path: Path) -> None:
    """A tcp and a udp virtual on 192.0.2.53:53, both decided in the kernel: one base
    vmap per protocol, a udp destination with no SYN-only rule (any datagram conntrack
    calls NEW opens a flow), a udp instance counting over its reals, and a branch that
    DNATs udp; names of udp objects carry _udp, so nothing of the two collides."""
    shell = Shell(tmp_path)
    assert shell(*KERNEL_UDP), shell.take()
    rules = desired_kernel(shell.director)
    text = "\n".join(definition(rules, "t"))
    assert chain(text, "prerouting")[1:] == [
        "ct state new ip daddr . tcp dport vmap { 192.0.2.53 . 53 : goto d_192_0_2_53_53 }",
        "ct state new ip daddr . udp dport vmap { 192.0.2.53 . 53 : goto d_192_0_2_53_53_udp }"]
    assert chain(text, "d_192_0_2_53_53_udp") == ["ip saddr vmap @s_192_0_2_53_53_udp", "drop"]
    assert chain(text, "d_192_0_2_53_53")[0] == "tcp flags & (fin | syn | rst | ack) != syn drop"
    assert chain(text, UDP_INSTANCE) == [
        f"numgen inc mod 2 vmap {{ 0 : goto {UDP_BRANCH}, "
        "1 : goto r_192_0_2_53_53_0_udp__203_0_113_12_0_0_udp }"]
    assert chain(text, UDP_BRANCH) == [
        'counter name "c_192_0_2_53_53_0_udp__203_0_113_11_0_0_udp" meta l4proto udp dnat '
        "to 203.0.113.11"]
    # What the sync verifies counts the same rules the text has.
    counts = dict(expected_shape(rules)[2])
    assert counts["d_192_0_2_53_53_udp"] == 2 and counts["d_192_0_2_53_53"] == 3
    assert counts["prerouting"] == 2
    # Nothing can take a flow: its first datagram counted and dropped, no ICMP error.
    assert shell("out-of-service 203.0.113.11:0:0:udp", "out-of-service 203.0.113.12:0:0:udp")
    text = "\n".join(definition(desired_kernel(shell.director), "t"))
    assert chain(text, UDP_INSTANCE) == ['counter name "x_192_0_2_53_53_0_udp" drop']


def test_kernel_maglev_hashes_the_udp_5_tuple(tmp_path: Path) -> None:
    shell = Shell(tmp_path)
    assert shell(*KERNEL_UDP[:6], f"predictor {DNS}:53:0:udp maglev",
                 f"fastpath {DNS}:53:0:udp kernel"), shell.take()
    text = "\n".join(definition(desired_kernel(shell.director), "t"))
    [picker] = chain(text, UDP_INSTANCE)
    assert picker.startswith("jhash ip saddr . udp sport . ip daddr . udp dport mod 4099 seed")


def test_kernel_dispatched_udp_is_forwarded_every_datagram_uncounted(tmp_path: Path) -> None:
    """Dispatched in the kernel: every datagram of a flow not remembered hashed and
    copied to its real unchanged, ahead of conntrack, which never sees one, so no first
    datagram is told and no flow counted; refused ones are dropped. A remembered flow's
    datagrams go to its real first (docs/design.rst, *Flow memory*)."""
    shell = Shell(tmp_path)
    assert shell("real 203.0.113.15:0:0:udp", "real 203.0.113.16:0:0:udp",
                 "virtual 192.0.2.30:0:0:udp", "predictor 192.0.2.30:0:0:udp maglev",
                 "dispatched 192.0.2.30:0:0:udp",
                 "bind 192.0.2.30:0:0:udp 203.0.113.15:0:0:udp 203.0.113.16:0:0:udp",
                 "fastpath 192.0.2.30:0:0:udp kernel"), shell.take()
    rules = desired_kernel(shell.director)
    text = "\n".join(definition(rules, "t"))
    key = memory_key("udp", IPV4)
    assert chain(text, "r_192_0_2_30_0_0_udp__203_0_113_15_0_0_udp") == [
        f"update @flows_udp {{ {key} timeout 60s : 203.0.113.15 }}",
        "dup to 203.0.113.15 drop"]
    assert chain(text, "dispatch")[1:] == [
        "meta l4proto udp ip daddr vmap { 192.0.2.30 : goto d_192_0_2_30_0_udp }"]
    assert chain(text, "d_192_0_2_30_0_udp") == [
        f"dup to {key} map @flows_udp update @flows_udp {{ {key} timeout 60s : 0.0.0.0 }} "
        "drop", "ip saddr vmap @s_192_0_2_30_0_udp", "drop"]
    assert dict(expected_shape(rules)[2])["r_192_0_2_30_0_0_udp__203_0_113_15_0_0_udp"] == 2
    assert shell("out-of-service 203.0.113.15:0:0:udp", "out-of-service 203.0.113.16:0:0:udp")
    text = "\n".join(definition(desired_kernel(shell.director), "t"))
    assert chain(text, "i_192_0_2_30_0_0_udp") == ["drop"]


def test_per_datagram_stays_off_the_kernels_paths(tmp_path: Path) -> None:
    shell = Shell(tmp_path)
    assert shell(*KERNEL_UDP[:6], f"per-datagram {DNS}:53:0:udp"), shell.take()
    shell.take()
    assert not shell(f"fastpath {DNS}:53:0:udp kernel")
    assert "192.0.2.53:53:0:udp is per-datagram" in shell.take()
    assert shell(f"no per-datagram {DNS}:53:0:udp", f"fastpath {DNS}:53:0:udp kernel")
