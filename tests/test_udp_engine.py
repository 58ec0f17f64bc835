"""UDP flows through the engine with crafted datagrams (issue 25; docs/design.rst, "UDP
flows"): a flow opens by the FIG. 5 decision, is translated both ways and expires when
idle; TCP and UDP of one tuple never meet; malformed datagrams are dropped and counted;
unanswered datagrams and a real's ICMP unreachables fail the real and move the flow;
per-datagram balancing; the bound on flows; ICMP errors and 4 KB datagrams; the flow's
replication record; the NFQUEUE rules."""

from __future__ import annotations

import json
import random

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, UDPerror
from scapy.packet import Raw

from localdirector.dataplane import packet as P
from localdirector.dataplane.engine import ACCEPT_MODIFIED, ACCEPT_UNCHANGED, DROP
from localdirector.dataplane.floodrules import NEW_SOURCE_DATAGRAMS
from localdirector.dataplane.iptables import names, raw_rules
from localdirector.dataplane.ruleset import desired_rules
from localdirector.failover.replication import decode, encode
from localdirector.model.addr import parse_ip
from localdirector.model.connection import REPLIED, UDP_KEY, UNREPLIED, UdpFlow, flow_key
from localdirector.model.director import Director
from localdirector.model.state import State
from test_engine import CLIENT, VIP, A, B, Lab, sid

UVIP = f"{VIP}:53:0:udp"
UA, UB = f"{A}:0:0:udp", f"{B}:0:0:udp"


def udp_lab(reals: tuple[str, ...] = (UA, UB), predictor: str = "roundrobin",
            virtual: str = UVIP) -> Lab:
    d = Director()
    v = d.add_virtual(sid(virtual))
    v.predictor = predictor
    for r in reals:
        d.add_real(sid(r))
        d.bind(sid(virtual), sid(r))
    return Lab(d)


def query(lab: Lab, cport: int = 40000, client: str = CLIENT, load: bytes = b"q") -> tuple:
    return lab.send(IP(src=client, dst=VIP) / UDP(sport=cport, dport=53) / Raw(load))


def flow(lab: Lab, cport: int = 40000, client: str = CLIENT) -> UdpFlow | None:
    return lab.d.conns.inbound.get(UDP_KEY | flow_key(parse_ip(client), cport, parse_ip(VIP), 53))


def answer(lab: Lab, conn: UdpFlow, load: bytes = b"a") -> tuple:
    return lab.send(IP(src=conn.real.sid.format().split(":")[0], dst=CLIENT)
                    / UDP(sport=conn.real_port, dport=conn.nat_port) / Raw(load))


def test_a_flow_opens_is_translated_both_ways_and_ends_when_idle() -> None:
    lab = udp_lab()
    verdict, out = query(lab)
    assert verdict == ACCEPT_MODIFIED and (out.dst, out[UDP].dport) == (A, 53)
    conn = flow(lab)
    assert conn is not None and conn.tcp_state is UNREPLIED and conn.virtual.proto == "udp"
    verdict, out = answer(lab, conn, b"answer")
    assert verdict == ACCEPT_MODIFIED
    assert (out.src, out[UDP].sport, out.dst, out[UDP].dport) == (VIP, 53, CLIENT, 40000)
    assert bytes(out[Raw]) == b"answer"
    assert conn.answered and conn.tcp_state is REPLIED and conn.syn_resends == 0
    assert query(lab)[1].dst == A                      # the flow, not the predictor
    lab.advance(59)
    assert flow(lab) is conn                           # 60 s idle, udp's default
    lab.advance(2)
    assert flow(lab) is None and lab.engine.stats.conns_timed_out == 1
    assert conn.virtual.conns_current == 0


def test_tcp_and_udp_of_one_tuple_are_two_connections() -> None:
    d = Director()
    for text in (UVIP, f"{VIP}:53"):
        d.add_virtual(sid(text))
    d.add_real(sid(UA))
    d.add_real(sid(B))
    d.bind(sid(UVIP), sid(UA))
    d.bind(sid(f"{VIP}:53"), sid(B))
    lab = Lab(d)
    assert query(lab)[1].dst == A
    verdict, out = lab.client("S", vport=53)
    assert verdict == ACCEPT_MODIFIED and out.dst == B
    assert len(d.conns) == 2 and len(d.conns.reply) == 2
    tcp = lab.conn(vport=53)
    assert tcp is not None and tcp is not flow(lab)
    assert answer(lab, flow(lab))[1][UDP].sport == 53
    assert lab.real(tcp, "SA")[1][TCP].sport == 53


@pytest.mark.parametrize("build, reason", [
    (lambda: IP(src=CLIENT, dst=VIP) / UDP(sport=1, dport=53, chksum=0x1234) / Raw(b"q"),
     "bad-checksum"),
    (lambda: IP(src=CLIENT, dst=VIP) / UDP(sport=1, dport=53, chksum=0) / Raw(b"q"),
     "udp-no-checksum"),
    (lambda: IP(src=CLIENT, dst=VIP) / UDP(sport=1, dport=53, len=30) / Raw(b"q"),
     "bad-udp-length"),
    (lambda: IP(src=CLIENT, dst=VIP) / UDP(sport=1, dport=53, len=7) / Raw(b"q"),
     "bad-udp-length"),
    (lambda: IP(src=CLIENT, dst=VIP) / UDP(sport=1, dport=53, len=9) / Raw(b"qq"),
     "bad-udp-length"),
    (lambda: IP(src=CLIENT, dst=VIP, len=26, proto=17) / Raw(b"\0" * 6), "bad-length"),
    (lambda: IP(src=CLIENT, dst=VIP, frag=10, proto=17) / Raw(b"\0" * 16), "fragment"),
])
def test_malformed_datagrams_are_dropped_and_counted_and_create_nothing(build, reason) -> None:
    lab = udp_lab()
    assert query(lab, 1)[0] == ACCEPT_MODIFIED            # a flow of the same tuple...
    lab.d.conns.inbound.clear()                            # ...gone: the next one would open
    lab.d.conns.reply.clear()
    assert lab.send(build())[0] == DROP
    assert lab.drops(reason) == 1 and not lab.d.conns.inbound
    # Never raises, whatever the buffer holds after the IP header.
    whole = bytes(build())
    for cut in range(20, len(whole)):
        assert lab.engine.handle(bytearray(whole[:cut])) in (DROP, ACCEPT_MODIFIED)


def test_random_corruption_of_datagrams_and_their_icmp_errors_never_raises() -> None:
    lab = udp_lab()
    query(lab)
    conn = flow(lab)
    samples = [bytes(IP(src=CLIENT, dst=VIP) / UDP(sport=40000, dport=53) / Raw(b"q" * 30)),
               bytes(IP(src=A, dst=CLIENT) / UDP(sport=53, dport=40000) / Raw(b"a" * 30)),
               bytes(IP(src=A, dst=CLIENT) / ICMP(type=3, code=3) / Raw(bytes(
                   IP(src=CLIENT, dst=A) / UDP(sport=conn.nat_port, dport=53) / Raw(b"q"))))]
    rng = random.Random(25)
    for _ in range(3000):
        buf = bytearray(rng.choice(samples))
        for _ in range(rng.randrange(1, 4)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        if rng.random() < 0.3:
            del buf[rng.randrange(len(buf)):]
        assert lab.engine.handle(buf) in (DROP, ACCEPT_MODIFIED, ACCEPT_UNCHANGED)
    lab.assert_accounted()


def test_a_translated_udp_checksum_that_comes_out_zero_is_sent_as_ffff() -> None:
    lab = udp_lab((UA,))
    # Two payload bytes chosen so that the datagram translated toward A sums to zero:
    # pseudo-header (addresses, protocol, length), ports, length, payload.
    header_and_zero_payload = parse_ip(CLIENT) + parse_ip(A) + 17 + 10 + 10 + 40000 + 53
    word = (-(header_and_zero_payload % 0xFFFF)) % 0xFFFF
    datagram = IP(src=CLIENT, dst=VIP) / UDP(sport=40000, dport=53) / Raw(word.to_bytes(2, "big"))
    verdict, out = lab.send(datagram)
    assert verdict == ACCEPT_MODIFIED
    assert out[UDP].chksum == 0xFFFF                       # never 0: that says "none"
    assert P.tcp_checksum_valid(bytearray(bytes(out)), 20, P.PROTO_UDP)


def test_unanswered_datagrams_fail_the_real_and_move_the_flow() -> None:
    lab = udp_lab()
    a = lab.d.reals[sid(UA)]
    a.threshold = 1
    for _ in range(a.reassign):                            # 3 datagrams, no answer
        assert query(lab)[1].dst == A
    verdict, out = query(lab)                              # the 4th: A failed, moved
    assert verdict == ACCEPT_MODIFIED and out.dst == B
    assert a.noanswer_reassigns == 1 and a.state is State.FAILED
    assert lab.engine.stats.conns_reassigned == 1
    conn = flow(lab)
    assert conn.real.sid == sid(UB) and conn.syn_resends == 1
    assert answer(lab, conn)[0] == ACCEPT_MODIFIED and conn.syn_resends == 0
    assert query(lab, 40001)[1].dst == B                  # a new flow avoids failed A


def test_a_lone_unanswering_real_fails_once_per_reassign_datagrams() -> None:
    lab = udp_lab((UA,))
    a = lab.d.reals[sid(UA)]
    for _ in range(3 * a.reassign + 1):                    # no other real: the flow stays
        assert query(lab)[1].dst == A
    assert a.consecutive_fails == 3 and a.noanswer_reassigns == 0


def test_reassign_0_never_fails_a_real_that_never_answers() -> None:
    """A one-way service (syslog, NetFlow): `reassign REAL 0` takes the unanswered count
    out, so a stream of any length stays on its real and fails nothing, where the
    default moves the flow after three datagrams."""
    lab = udp_lab()
    a, b = lab.d.reals[sid(UA)], lab.d.reals[sid(UB)]
    a.reassign = b.reassign = 0
    for _ in range(2000):
        assert query(lab)[1].dst == A
    assert (a.consecutive_fails, a.noanswer_reassigns) == (0, 0)
    assert a.state is State.IN_SERVICE and lab.engine.stats.conns_reassigned == 0
    conn = flow(lab)
    assert _unreachable(lab, conn, 3)[0] == DROP           # ICMP still fails it
    assert a.consecutive_fails == 1 and conn.real is b


def _unreachable(lab: Lab, conn: UdpFlow, code: int, src: str | None = None) -> tuple:
    """The real's (or a router's) ICMP error about the datagram the client sent it."""
    quoted = IP(src=CLIENT, dst=conn.real.sid.format().split(":")[0]) / UDP(
        sport=conn.nat_port, dport=conn.real_port) / Raw(b"q")
    return lab.send(IP(src=src or str(quoted.dst), dst=CLIENT) / ICMP(type=3, code=code)
                    / Raw(bytes(quoted)))


def test_a_port_unreachable_from_the_real_fails_it_and_moves_the_flow() -> None:
    lab = udp_lab()
    query(lab)
    conn = flow(lab)
    a = lab.d.reals[sid(UA)]
    assert _unreachable(lab, conn, 3)[0] == DROP
    assert lab.drops("unreachable-absorbed") == 1
    assert a.consecutive_fails == 1 and a.reset_reassigns == 1
    assert conn.real.sid == sid(UB)
    assert query(lab)[1].dst == B                          # the next datagram moved
    query(lab, 40001)
    assert _unreachable(lab, flow(lab, 40001), 1)[0] == DROP   # host unreachable too
    assert lab.drops("unreachable-absorbed") == 2


def test_with_no_other_real_the_unreachable_is_shown_to_the_client_as_the_vips() -> None:
    lab = udp_lab((UA,))
    query(lab)
    verdict, out = _unreachable(lab, flow(lab), 3)
    assert verdict == ACCEPT_MODIFIED                     # checksums checked by Lab.send
    assert (out.src, out[IPerror].dst, out[UDPerror].dport) == (VIP, VIP, 53)
    assert lab.d.reals[sid(UA)].consecutive_fails == 1


def test_other_icmp_errors_about_flows_are_translated_both_ways() -> None:
    lab = udp_lab((UA,))
    query(lab)
    conn = flow(lab)
    # Fragmentation needed from a router toward the real: not a failure, translated.
    verdict, out = _unreachable(lab, conn, 4, src="198.19.255.1")
    assert verdict == ACCEPT_MODIFIED and out[IPerror].dst == VIP
    assert lab.d.reals[sid(UA)].consecutive_fails == 0
    # The client's error about our VIP -> client datagram goes to the real.
    reply = IP(src=VIP, dst=CLIENT) / UDP(sport=53, dport=40000) / Raw(b"a")
    verdict, out = lab.send(IP(src=CLIENT, dst=VIP) / ICMP(type=3, code=3) / Raw(bytes(reply)))
    assert verdict == ACCEPT_MODIFIED
    assert (out.dst, out[IPerror].src, out[UDPerror].sport) == (A, A, 53)


def test_per_datagram_balances_every_datagram_and_translates_every_answer() -> None:
    lab = udp_lab()
    lab.d.set_per_datagram(sid(UVIP), True)
    reals = [query(lab)[1].dst for _ in range(4)]
    assert reals == [A, B, A, B]
    assert len(lab.d.conns) == 2                            # one flow per real used
    for conn in list(lab.d.conns):
        verdict, out = answer(lab, conn)
        assert verdict == ACCEPT_MODIFIED and (out.src, out[UDP].sport) == (VIP, 53)
    assert lab.d.virtuals[sid(UVIP)].conns_total == 2


def test_a_full_virtual_evicts_its_oldest_unanswered_flow_counted() -> None:
    lab = udp_lab((UA,))
    v = lab.d.virtuals[sid(UVIP)]
    v.flows = 4
    query(lab, 1000)
    answer(lab, flow(lab, 1000))                           # answered: kept
    for port in (1001, 1002, 1003):
        query(lab, port)
    assert query(lab, 1004)[0] == ACCEPT_MODIFIED
    assert v.conns_current == 4 and v.flows_evicted == 1 == lab.engine.stats.flows_evicted
    assert flow(lab, 1000) is not None and flow(lab, 1001) is None
    for port in range(2000, 2100):                         # a flood stays within the bound
        query(lab, port, client="198.18.0.1")
    assert v.conns_current == 4 and len(lab.d.conns) == 4
    assert v.flows_evicted == 101


def test_the_bound_holds_for_flows_carried_over_by_reload_and_replication() -> None:
    lab = udp_lab((UA,))
    for port in (1000, 1001):
        query(lab, port)
    fresh = udp_lab((UA,)).d                    # `reload`: the same config, new objects
    fresh.virtuals[sid(UVIP)].flows = 2
    with lab.d.lock:
        lab.engine.adopt(fresh)
    lab.d = fresh
    assert query(lab, 1002)[0] == ACCEPT_MODIFIED
    v = fresh.virtuals[sid(UVIP)]
    assert (v.conns_current, v.flows_evicted) == (2, 1) and flow(lab, 1000) is None
    standby = udp_lab((UA,))
    standby.d.virtuals[sid(UVIP)].flows = 2
    for conn in list(fresh.conns):              # replicated: filed on the standby too
        standby.engine.import_conn(decode(encode(conn, lab.clock()), standby.d,
                                          standby.clock()))
    assert query(standby, 1003)[0] == ACCEPT_MODIFIED
    assert standby.d.virtuals[sid(UVIP)].conns_current == 2


def test_a_4k_datagram_and_a_first_fragment_are_translated() -> None:
    lab = udp_lab((UA,))
    query(lab)
    conn = flow(lab)
    big = bytes(range(256)) * 16
    verdict, out = answer(lab, conn, big)
    assert verdict == ACCEPT_MODIFIED and bytes(out[Raw]) == big and out.len == 4124
    # Only the headers in the buffer (the queue copied less): translated incrementally.
    whole = bytearray(bytes(IP(src=A, dst=CLIENT, flags="MF") / UDP(sport=53, dport=40000)
                            / Raw(big))[:1500])
    whole[2:4] = (1500).to_bytes(2, "big")
    assert lab.engine.handle(whole) == ACCEPT_MODIFIED
    assert whole[12:16] == parse_ip(VIP).to_bytes(4, "big")


def test_a_flow_travels_in_the_replication_record() -> None:
    lab = udp_lab()
    query(lab)
    conn = flow(lab)
    answer(lab, conn)
    standby = udp_lab()
    record = json.loads(json.dumps(encode(conn, lab.clock())))
    copy = decode(record, standby.d, standby.clock())
    assert type(copy) is UdpFlow
    assert (copy.in_key, copy.reply_key(), copy.tcp_state, copy.answered) == \
        (conn.in_key, conn.reply_key(), REPLIED, True)
    standby.engine.import_conn(copy)
    assert answer(standby, copy)[1].src == VIP


def test_udp_virtuals_and_reals_are_queued_by_protocol() -> None:
    lab = udp_lab()
    lab.d.add_virtual(sid(f"{VIP}:53"))
    rules = desired_rules(lab.d)
    lines = raw_rules(rules, names(7))
    assert f"-A LOCALDIRECTOR7 -d {VIP}/32 -p udp -m udp --dport 53 -j LOCALDIRECTOR7-QUEUE" \
        in lines
    assert f"-A LOCALDIRECTOR7 -d {VIP}/32 -p tcp -m tcp --dport 53 -j LOCALDIRECTOR7-QUEUE" \
        in lines
    assert f"-A LOCALDIRECTOR7 -s {A}/32 -p udp -m udp --sport 53 -j LOCALDIRECTOR7-REALQ" \
        in lines
    assert not any(f"-s {A}/32 -p tcp" in line for line in lines)
    lab.d.add_virtual(sid(f"{VIP}:0:0:udp"))
    lines = raw_rules(desired_rules(lab.d), names(7))
    assert f"-A LOCALDIRECTOR7 -d {VIP}/32 -p udp -j LOCALDIRECTOR7-QUEUE" in lines
    assert not any("--dport 53 -j" in line and "-p udp" in line for line in lines)


def test_a_udp_vip_has_a_budget_of_new_sources_and_its_reals_answers_make_clients_known(
        ) -> None:
    """The kernel's defence against a spoofed UDP flood (docs/design.rst, "UDP flows"):
    a real's datagram puts its destination in the known set (before the real's queue
    rule, on the fast path before conntrack), and datagrams to a udp VIP from unknown
    sources share NEW_SOURCE_DATAGRAMS a second, ahead of the VIP's queue rule; a
    tcp-only VIP has no such budget, nor a service whose reals all have `reassign 0`."""
    lab = udp_lab()
    lab.d.add_virtual(sid("192.0.2.20:80"))
    lab.d.add_real(sid("203.0.113.30:80"))
    lab.d.bind(sid("192.0.2.20:80"), sid("203.0.113.30:80"))
    lines = raw_rules(desired_rules(lab.d), names(7))
    budget = (f"-A LOCALDIRECTOR7 -d {VIP}/32 -p udp -m udp --dport 53 -m set ! --match-set "
              "ldknown7 src "
              f"-m hashlimit --hashlimit-above {NEW_SOURCE_DATAGRAMS}/sec --hashlimit-burst "
              f"{NEW_SOURCE_DATAGRAMS} --hashlimit-name ldnewu7 -j LOCALDIRECTOR7-UFLOOD")
    queue = f"-A LOCALDIRECTOR7 -d {VIP}/32 -p udp -m udp --dport 53 -j LOCALDIRECTOR7-QUEUE"
    assert lines.index(budget) < lines.index(queue)
    note = (f"-A LOCALDIRECTOR7 -s {A}/32 -p udp -m udp --sport 53 "
            "-j SET --add-set ldknown7 dst --exist")
    assert lines.index(note) < lines.index(
        f"-A LOCALDIRECTOR7 -s {A}/32 -p udp -m udp --sport 53 -j LOCALDIRECTOR7-REALQ")
    assert not any("-d 192.0.2.20/32 -p udp" in line for line in lines)
    lab.d.set_fastpath(sid(UVIP), True)
    fast = raw_rules(desired_rules(lab.d), names(7))
    assert budget in fast and not any("LOCALDIRECTOR7-QUEUE" in line and "-p udp" in line
                                      for line in fast)
    assert f"-A LOCALDIRECTOR7 -s {A}/32 -p udp -j SET --add-set ldknown7 dst --exist" in fast
    for real in lab.d.reals.values():          # a service that never answers: no budget
        real.reassign = 0
    assert not any("UFLOOD" in line for line in raw_rules(desired_rules(lab.d), names(7)))
