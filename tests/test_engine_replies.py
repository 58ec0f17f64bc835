"""A real's packets that belong to no connection (docs/design.rst, "Packet flow", step
3): from a userspace virtual's real on the port it serves, a reply the engine cannot
translate is dropped (`unknown-reply`) and the real told with a RST, never leaked to the
client with the real's address; the real's other traffic, and the replies of reals
netfilter never queues (fast path, dispatched), pass unchanged."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP
from test_engine import CLIENT, VIP, A, B, C, Lab, lab, pool, sid

from localdirector.dataplane.engine import (
    ACCEPT_MODIFIED,
    ACCEPT_UNCHANGED,
    DROP,
    RESETS_PER_TICK,
)
from localdirector.dataplane.ruleset import desired_rules, translated_reals
from localdirector.model.addr import parse_ip


def reply(real: str, sport: int, flags: str, dport: int = 40000, client: str = CLIENT):
    return IP(src=real, dst=client) / TCP(sport=sport, dport=dport, flags=flags,
                                          seq=5000, ack=1001)


def test_a_reply_of_no_connection_is_dropped_and_the_real_reset() -> None:
    lab_, _, _ = lab((A, "203.0.113.2:8080"))
    for real, port in ((A, 80), (B, 8080)):
        verdict, out = lab_.send(reply(real, port, "SA"))   # a SYN-ACK another unit caused
        assert verdict == ACCEPT_MODIFIED
        # The RST the client's closed port would send, toward the real, not the client.
        assert (out.src, out.dst, out[TCP].sport, out[TCP].dport) == (CLIENT, real, 40000, port)
        assert (out[TCP].flags, out[TCP].seq) == ("R", 1001)
    assert lab_.send(reply(A, 80, "A"))[1][TCP].flags == "R"   # established data too
    assert lab_.send(reply(A, 80, "RA"))[0] == DROP            # never a RST for a RST
    assert lab_.drops("unknown-reply") == 4
    assert lab_.engine.stats.reply_resets == 3 and lab_.engine.stats.unchanged == 0


def test_its_resets_share_the_ticks_budget() -> None:
    lab_, _, _ = lab((A,))
    for port in range(RESETS_PER_TICK):
        assert lab_.send(reply(A, 80, "SA", dport=1024 + port))[0] == ACCEPT_MODIFIED
    assert lab_.send(reply(A, 80, "SA"))[0] == DROP
    assert lab_.drops("unknown-reply") == RESETS_PER_TICK + 1
    lab_.advance(0.5)
    assert lab_.send(reply(A, 80, "SA"))[0] == ACCEPT_MODIFIED


def test_port_zero_and_backup_reals() -> None:
    d, _, (ra,) = pool((A,))
    ra.backup = d.add_real(sid(C)).sid       # C answers A's connections on port 80 too
    d.add_virtual(sid("192.0.2.20:0"))
    d.add_real(sid(B))
    d.bind(sid("192.0.2.20:0"), sid(B))      # B serves every port of 192.0.2.20
    lab_ = Lab(d)
    assert set(translated_reals(d)) == {(parse_ip(A), 80), (parse_ip(C), 80),
                                        (parse_ip(B), 0)}
    assert lab_.send(reply(C, 80, "SA"))[0] == ACCEPT_MODIFIED
    # Bound on every port: its SYN-ACKs from any port are replies, but its other
    # packets may be connections it opened itself.
    assert lab_.send(reply(B, 5555, "SA"))[0] == ACCEPT_MODIFIED
    assert lab_.send(reply(B, 5555, "A"))[0] == ACCEPT_UNCHANGED
    assert lab_.send(IP(src=B, dst="198.18.3.3") / TCP(sport=5555, flags="S"))[0] \
        == ACCEPT_UNCHANGED
    assert lab_.drops("unknown-reply") == 2
    # What the engine drops is what netfilter queues from the reals.
    assert dict(desired_rules(d).reals) == {parse_ip(A): (80,), parse_ip(B): (0,),
                                            parse_ip(C): (80,)}


@pytest.mark.parametrize("mode", ["fastpath", "dispatched"])
def test_reals_whose_replies_are_not_queued_are_left_alone(mode: str) -> None:
    d, v, _ = pool((A,))
    setattr(v, mode, True)
    lab_ = Lab(d)
    assert list(translated_reals(d)) == []
    assert lab_.send(reply(A, 80, "SA"))[0] == ACCEPT_UNCHANGED


def test_the_rule_follows_the_model() -> None:
    d, _, _ = pool((A,))
    lab_ = Lab(d)
    assert lab_.send(reply(B, 80, "RA"))[0] == ACCEPT_UNCHANGED
    d.add_real(sid(B))
    d.bind(sid(f"{VIP}:80"), sid(B))
    assert lab_.send(reply(B, 80, "RA"))[0] == DROP
