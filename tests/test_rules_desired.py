"""What the model asks netfilter for, without iptables: the desired RuleSet of a Director
(userspace and fast-path virtuals, backup reals, synguard, live connections), how each
kind of model change moves it, and the fast path's mark map."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from localdirector.dataplane.ruleset import (ALL_PORTS, MARK_MASK, MAX_MARKS, MarkMap, RuleSet,
                                             RulesError, desired_rules)
from localdirector.model.addr import parse_ip
from localdirector.model.connection import Connection
from localdirector.model.director import Director
from localdirector.model.serverid import ServerId

VIP1, VIP2 = parse_ip("192.0.2.10"), parse_ip("192.0.2.20")
R11, R12, R13, R14 = (parse_ip(f"203.0.113.{n}") for n in (11, 12, 13, 14))
CLIENT = parse_ip("198.51.100.2")


def sid(text: str) -> ServerId:
    return ServerId.parse(text)


def lab() -> Director:
    """Userspace 192.0.2.10:80 and :443 on .11:8001 and .12 (port 0); fast-path
    192.0.2.20:80 under synguard on .13, whose backup is .14 (both port 0)."""
    d = Director()
    with d.lock:
        for v in ("192.0.2.10:80", "192.0.2.10:443", "192.0.2.20:80"):
            d.add_virtual(sid(v))
        for r in ("203.0.113.11:8001", "203.0.113.12", "203.0.113.13", "203.0.113.14"):
            d.add_real(sid(r))
        d.bind(sid("192.0.2.10:80"), sid("203.0.113.11:8001"))
        d.bind(sid("192.0.2.10:80"), sid("203.0.113.12"))
        d.bind(sid("192.0.2.10:443"), sid("203.0.113.12"))
        d.bind(sid("192.0.2.20:80"), sid("203.0.113.13"))
        d.reals[sid("203.0.113.13")].backup = sid("203.0.113.14")
        fast = d.virtuals[sid("192.0.2.20:80")]
        fast.fastpath = True
        fast.synguard = 50
    return d


LAB = RuleSet(vips=((VIP1, (80, 443)),),
              # .11 answers from its own port; port-0 .12 on each virtual's port.
              reals=((R11, (8001,)), (R12, (80, 443))),
              guards=((VIP2, 80, 50),),
              fastpath=((VIP2, (80,)),),
              # The fast path's DNAT targets: the bound real and its backup, client's port.
              targets=((R13, 0), (R14, 0)),
              # Their packets conntrack does not know are dropped (on the VIP's port).
              stray=((R13, 80), (R14, 80)))


def test_the_desired_rule_set_is_exactly_what_the_model_asks_for() -> None:
    assert desired_rules(lab()) == LAB


def test_a_change_that_asks_nothing_new_gives_an_equal_rule_set() -> None:
    d = lab()
    with d.lock:
        d.virtuals[sid("192.0.2.10:443")].predictor = "roundrobin"
        d.changed()
    assert desired_rules(d) == LAB


def test_binding_a_real_adds_its_reply_port_only() -> None:
    d = lab()
    with d.lock:
        d.bind(sid("192.0.2.10:443"), sid("203.0.113.11:8001"))
    assert desired_rules(d) == LAB   # .11:8001 was already queued for :80
    with d.lock:
        d.add_real(sid("203.0.113.15:8443"))
        d.bind(sid("192.0.2.10:443"), sid("203.0.113.15:8443"))
    assert desired_rules(d) == replace(LAB, reals=(*LAB.reals, (parse_ip("203.0.113.15"),
                                                                (8443,))))


def test_a_port_zero_virtual_covers_every_port_of_its_address() -> None:
    d = lab()
    with d.lock:
        d.add_virtual(sid("192.0.2.10:0"))
    assert desired_rules(d) == replace(LAB, vips=((VIP1, (ALL_PORTS,)),))


def test_leaving_the_fast_path_moves_a_virtual_and_its_reals_to_the_queue() -> None:
    d = lab()
    with d.lock:
        d.virtuals[sid("192.0.2.20:80")].fastpath = False
    assert desired_rules(d) == replace(
        LAB, vips=((VIP1, (80, 443)), (VIP2, (80,))),
        reals=(*LAB.reals, (R13, (80,)), (R14, (80,))),   # the backup's replies too
        fastpath=(), targets=(), stray=())


def test_synguard_keeps_the_largest_rate_of_a_vip_ports_instances() -> None:
    d = lab()
    with d.lock:
        d.add_virtual(sid("192.0.2.10:80:1")).synguard = 200
        d.virtuals[sid("192.0.2.10:80")].synguard = 64
        d.virtuals[sid("192.0.2.20:80")].synguard = 0
    assert desired_rules(d) == replace(LAB, guards=((VIP1, 80, 200),))


def test_a_live_fast_path_connection_keeps_its_vip_and_target_after_removal() -> None:
    d = lab()
    with d.lock:
        v, r = d.virtuals[sid("192.0.2.20:80")], d.reals[sid("203.0.113.13")]
        conn = Connection(CLIENT, 40000, VIP2, 80, v, r, time.monotonic())
        conn.fastpath = True
        d.conns.add(conn)
        d.remove_virtual(v.sid)
    # The backup's target and the guard go with the virtual; the connection's stay.
    assert desired_rules(d) == replace(LAB, guards=(), targets=((R13, 0),),
                                       stray=((R13, 80),))


def test_marks_are_ours_stable_and_not_reused_within_a_transaction() -> None:
    marks = MarkMap()
    first = marks.assign([(R11, 0), (R12, 0)])
    second = marks.assign([(R12, 0), (R13, 0)])
    assert second[(R12, 0)] == first[(R12, 0)]
    assert second[(R13, 0)] not in first.values()
    assert all(m and m & ~MARK_MASK == 0 for m in second.values())
    # Let go in an earlier transaction: free again.
    third = marks.assign([(R12, 0), (R13, 0), (R14, 0)])
    assert third[(R14, 0)] == first[(R11, 0)]


def test_the_mark_space_running_out_is_refused() -> None:
    marks = MarkMap()
    assert len(marks.assign((n, 0) for n in range(MAX_MARKS))) == MAX_MARKS
    with pytest.raises(RulesError, match=f"more than {MAX_MARKS} fast-path real servers"):
        MarkMap().assign((n, 0) for n in range(MAX_MARKS + 1))
