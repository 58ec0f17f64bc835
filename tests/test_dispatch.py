"""Dispatched forwarding without a kernel (docs/design.rst, "Scale-out"): the engine's
verdicts for a dispatched virtual's packets (never rewritten, marked for the real), the
client's ACK as the real's answer, unanswered SYNs still reassigning, flows it does not
know forwarded by the Maglev table, and the netfilter rules that carry the marks."""

from __future__ import annotations

from scapy.layers.inet import IP, TCP
from test_engine import CLIENT, VIP, A, B, C, Lab, pool, sid

from localdirector.dataplane.engine import ACCEPT_MARK, ACCEPT_MODIFIED, DROP
from localdirector.dataplane.iptables import dispatch_rules, names, nat_rules, raw_rules
from localdirector.dataplane.ruleset import DISPATCH_PORT, MarkMap, desired_rules
from localdirector.model import maglev
from localdirector.model.addr import parse_ip
from localdirector.model.connection import ESTABLISHED, flow_key
from localdirector.model.director import Director
from localdirector.model.state import State


class DispatchLab(Lab):
    def __init__(self, director: Director) -> None:
        for v in director.virtuals.values():
            v.dispatched = True
        super().__init__(director)
        self.marks = MarkMap().assign(desired_rules(director).targets)
        self.engine.marks = self.marks

    def send(self, pkt) -> tuple[int, IP | None]:
        buf = bytearray(bytes(pkt))
        original = bytes(buf)
        verdict = self.engine.handle(buf)
        if verdict == ACCEPT_MARK:
            assert bytes(buf) == original   # dispatched: never rewritten
        return verdict, IP(bytes(buf))

    def real_of_mark(self) -> str:
        mark = self.engine.verdict_mark
        return next(f"{addr >> 24}.{addr >> 16 & 255}.{addr >> 8 & 255}.{addr & 255}"
                    for (addr, port), m in self.marks.items()
                    if m == mark and port == DISPATCH_PORT)


def _pkt(flags: str, sport: int = 40000, client: str = CLIENT) -> IP:
    return IP(src=client, dst=VIP) / TCP(sport=sport, dport=80, flags=flags, seq=1, ack=1)


def test_packets_go_to_the_real_unchanged_and_the_client_ack_answers() -> None:
    d, v, rs = pool((A, B), predictor="maglev")
    lab = DispatchLab(d)
    verdict, _ = lab.send(_pkt("S"))
    assert verdict == ACCEPT_MARK
    real = lab.real_of_mark()
    conn = next(iter(d.conns))
    assert conn.real.sid == sid(real) and conn.remap == 0
    assert v.half_open == 1
    verdict, _ = lab.send(_pkt("A"))
    assert verdict == ACCEPT_MARK and lab.real_of_mark() == real
    assert conn.tcp_state is ESTABLISHED and conn.answered and v.half_open == 0
    assert lab.send(_pkt("PA"))[0] == ACCEPT_MARK and lab.real_of_mark() == real
    assert lab.send(_pkt("FA"))[0] == ACCEPT_MARK
    lab.advance(5)   # the client's FIN ends it (the real's is never seen)
    assert len(d.conns) == 0 and v.conns_current == 0
    # Its last ACK, after the linger, goes where the table says: the same real.
    assert lab.send(_pkt("A"))[0] == ACCEPT_MARK and lab.real_of_mark() == real


def test_unknown_flow_is_forwarded_by_the_table() -> None:
    d, v, rs = pool((A, B, C), predictor="maglev")
    lab = DispatchLab(d)
    table = maglev.table_for(v)
    for sport in range(41000, 41050):
        assert lab.send(_pkt("A", sport))[0] == ACCEPT_MARK
        flow = flow_key(parse_ip(CLIENT), sport, parse_ip(VIP), 80)
        expected = table.members[table.lookup(flow)][0]
        assert sid(lab.real_of_mark()).addr == expected
        # ...and a SYN of that flow on this director picks that real too.
    assert len(d.conns) == 0 and lab.engine.stats.maglev_forwarded == 50
    for sport in range(41000, 41010):
        lab.send(_pkt("S", sport))
        flow = flow_key(parse_ip(CLIENT), sport, parse_ip(VIP), 80)
        assert sid(lab.real_of_mark()).addr == table.members[table.lookup(flow)][0]


def test_unanswered_syns_still_reassign() -> None:
    d, v, rs = pool((A, B), predictor="maglev")
    lab = DispatchLab(d)
    lab.send(_pkt("S"))
    first = lab.real_of_mark()
    for _ in range(3):
        lab.advance(1)
        verdict, _ = lab.send(_pkt("S"))
    assert verdict == ACCEPT_MARK and lab.real_of_mark() != first
    assert sum(r.noanswer_reassigns for r in rs) == 1


def test_mark_not_installed_drops_and_nothing_refused_gets_a_reset() -> None:
    d, v, rs = pool((A,), predictor="maglev")
    lab = DispatchLab(d)
    lab.engine.marks = {}
    assert lab.send(_pkt("S"))[0] == DROP
    lab.engine.marks = lab.marks
    d.set_state(sid(A), State.OUT_OF_SERVICE)
    verdict, out = lab.send(_pkt("S", 40001))
    assert verdict == ACCEPT_MODIFIED and out[TCP].flags == "RA"


def test_rules_clone_marked_packets_to_the_real_and_queue_no_replies() -> None:
    d, v, rs = pool((A, B), predictor="maglev")
    v.dispatched = True
    rules = desired_rules(d)
    assert rules.reals == ()           # replies do not pass through the director
    assert {t for t in rules.targets} == {(parse_ip(A), DISPATCH_PORT),
                                          (parse_ip(B), DISPATCH_PORT)}
    marks = MarkMap().assign(rules.targets)
    q7 = names(7)
    text = dispatch_rules(rules, marks, q7)
    assert f"-A {q7.chain} -m mark --mark 0x{marks[(parse_ip(A), -1)]:x}/0xffff0000 " \
           f"-j TEE --gateway {A}" in text
    assert len(text) == 4 and text[1].endswith("-j DROP")
    assert nat_rules(rules, marks, q7) == []
    assert any(f"-d {VIP}/32" in line for line in raw_rules(rules, q7))
