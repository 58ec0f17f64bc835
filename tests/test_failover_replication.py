"""Replication of the engine's connections between the units of a failover pair, in
process (docs/design.rst, "Failover"): what the active's engine opens, answers, moves,
remaps and closes reaches the standby's engine through the stream's JSON messages, and
the standby's engine then translates the connection's packets exactly as the active's
did. The real stream, keepalived and TCP: test_failover_traffic_netns.py."""

from __future__ import annotations

import json
from typing import Any

from scapy.layers.inet import TCP

from localdirector.dataplane.engine import ACCEPT_MODIFIED
from localdirector.failover.replication import Replicator
from localdirector.model.addr import format_ip, parse_ip
from localdirector.model.connection import ESTABLISHED, SYN_RCVD
from localdirector.model.director import Director
from tests.test_engine import CLIENT, VIP, A, Lab, fig1, pool, sid


class Pair:
    """Two engines over equal models; the active's replicator writes to the standby's
    through a JSON round trip, as the stream would."""

    def __init__(self, build: Any = fig1) -> None:
        self.active, self.standby = Lab(build()), Lab(build())
        self.standby.clock.t = 50_000.0        # the units' clocks need not agree
        self.messages: list[dict[str, Any]] = []
        self.sender = Replicator(self.active.engine, lambda: self.active.d, self._send,
                                 lambda: 0.2)
        self.receiver = Replicator(self.standby.engine, lambda: self.standby.d,
                                   lambda message: False, lambda: 0.2)
        self.active.engine.observe(self.sender._note)
        self.sender.sending = True

    def _send(self, message: dict[str, Any]) -> bool:
        message = json.loads(json.dumps(message))
        self.messages.append(message)
        self.receiver.receive(message)
        return True

    def flush(self) -> None:
        self.sender._turn()


def _same(a: Any, b: Any) -> None:
    assert (a.in_key, a.reply_key(), a.remap, a.real.sid, a.virtual.sid, a.tcp_state,
            a.answered, a.ack_in, a.ack_out) == \
        (b.in_key, b.reply_key(), b.remap, b.real.sid, b.virtual.sid, b.tcp_state,
         b.answered, b.ack_in, b.ack_out)


def test_opened_answered_and_closed_connections_reach_the_standby() -> None:
    pair = Pair()
    pair.flush()                      # the first turn sends everything: nothing yet
    conn = pair.active.syn(client="198.51.100.7")
    pair.flush()
    copy = pair.standby.conn(client="198.51.100.7")
    _same(conn, copy)
    pair.active.real(conn, "SA")
    pair.flush()
    copy = pair.standby.conn(client="198.51.100.7")
    assert copy.tcp_state is SYN_RCVD and copy.answered
    # No traffic reached the standby, yet its engine translates the next packets.
    pair.active.client("A", client="198.51.100.7")
    verdict, out = pair.standby.client("A", client="198.51.100.7", load=b"x")
    assert verdict == ACCEPT_MODIFIED
    assert (out.dst, out[TCP].dport, out[TCP].sport) == \
        (format_ip(conn.real_ip), conn.real_port, conn.nat_port)
    assert pair.standby.conn(client="198.51.100.7").tcp_state is ESTABLISHED
    verdict, out = pair.standby.real(copy, "A", load=b"reply")
    assert verdict == ACCEPT_MODIFIED and (out.src, out[TCP].sport) == (VIP, 80)
    # Counts on the standby: carried over, not opened there.
    v = pair.standby.d.virtuals[sid(f"{VIP}:80:1")]
    assert (v.conns_current, v.conns_total) == (1, 0)
    pair.active.close(conn)
    pair.flush()
    assert pair.standby.conn(client="198.51.100.7") is None
    assert v.conns_current == 0


def test_port_remap_and_sticky_entry_travel() -> None:
    def sticky_pool() -> Director:
        d, v, _ = pool((A, "203.0.113.2"))
        v.sticky = 5
        return d

    pair = Pair(sticky_pool)
    pair.active.close(pair.active.open())
    pair.active.advance(5)
    conn = pair.active.syn()          # the real still holds TIME_WAIT: remapped
    assert conn.remap
    pair.flush()
    copy = pair.standby.conn()
    _same(conn, copy)
    out = pair.standby.real(copy, "SA")[1]
    assert (out.src, out[TCP].sport, out.dst, out[TCP].dport) == (VIP, 80, CLIENT, 40000)
    entry = pair.standby.d.virtuals[sid(f"{VIP}:80")].sticky_table[parse_ip(CLIENT)]
    assert entry[0].sid == conn.real.sid


def test_a_reconnected_standby_gets_everything_again_and_forgets_the_rest() -> None:
    pair = Pair()
    kept = pair.active.open(41000)
    gone = pair.active.open(41001)
    pair.flush()
    pair.active.engine.observe(None)   # the stream is down: these go unseen
    pair.active.close(gone)
    later = pair.active.open(41002)
    pair.active.engine.observe(pair.sender._note)
    pair.sender.resend()
    pair.flush()
    assert pair.messages[-2]["reset"] is True
    assert pair.standby.conn(41001) is None
    for conn in (kept, later):
        _same(conn, pair.standby.conn(conn.foreign_port))
    assert len(pair.standby.d.conns) == 2


def test_a_moved_connection_follows_its_new_real() -> None:
    pair = Pair(lambda: pool((A, "203.0.113.2"))[0])
    conn = pair.active.syn()
    first = conn.real.sid
    for _ in range(conn.real.reassign):
        pair.active.client("S")
    assert conn.real.sid != first
    pair.flush()
    _same(conn, pair.standby.conn())


def test_a_standby_that_does_not_send_notes_nothing() -> None:
    pair = Pair()
    pair.sender.sending = False
    pair.active.open()
    pair.flush()
    assert not pair.messages and not pair.sender._noted
