"""Replication of the engine's connections between the units of a failover pair, in
process (docs/design.rst, "Failover"): what the active's engine opens, answers, moves,
remaps and closes reaches the standby's engine through the stream's JSON messages, and
the standby's engine then translates the connection's packets exactly as the active's
did. The real stream, keepalived and TCP: test_failover_traffic_netns.py."""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from scapy.layers.inet import TCP

from localdirector.dataplane.engine import ACCEPT_MODIFIED
from localdirector.dataplane.nfqueue import VerdictBatch
from localdirector.failover.replication import Replicator, encode
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
                                   lambda message, wait=True: False, lambda: 0.2)
        self.active.engine.observe(self.sender._note)
        self.sender.sending = True

    def _send(self, message: dict[str, Any], wait: bool = True) -> bool:
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


def test_records_read_after_the_takeover_add_only_what_the_new_active_lacks() -> None:
    """The dead unit's last records, read after this unit became active (a dead box on
    a direct cable is replaced in about 100 ms): a connection this unit does not know
    is taken, so its client's next segment is translated rather than reset; nothing
    this unit's engine did since is undone (no reset, no close, no older state)."""
    pair = Pair()
    pair.active.open(41000)
    pair.flush()                                    # the standby has it
    known = pair.standby.conn(41000)
    pair.receiver.receive = lambda message: None    # the standby reads no more
    lost = pair.active.syn(41001)
    pair.sender.resend()
    pair.flush()                                    # reset, then everything
    last = pair.messages[-2:]
    assert last[0]["reset"] is True
    pair.standby.client("FA", 41000)                # its engine moved on: a FIN
    state = known.tcp_state
    assert state is not ESTABLISHED
    late = Replicator(pair.standby.engine, lambda: pair.standby.d,
                      lambda message, wait=True: False, lambda: 0.2)
    for message in last:
        late.receive(message, late=True)
    assert pair.standby.conn(41000) is known and known.tcp_state is state
    _same(lost, pair.standby.conn(41001))
    late.receive({"t": "conns", "down": [lost.in_key], "up": []}, late=True)
    assert pair.standby.conn(41001) is not None


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


def test_a_new_connection_reaches_the_standby_within_milliseconds() -> None:
    """The sender's own thread, a poll of a second: an open wakes it (issue 22 B: the
    connections of the last poll before a crash were lost)."""
    lab_ = Lab(fig1())
    sent: list[tuple[float, dict[str, Any]]] = []
    sender = Replicator(lab_.engine, lambda: lab_.d,
                        lambda message, wait=True:
                        sent.append((time.monotonic(), message)) is None,
                        lambda: 1.0)
    sender.start()
    try:
        sender.set_sending(True)
        _wait(lambda: sent)                      # the whole resend, at once
        windows = []
        for port in range(41000, 41005):
            count = len(sent)
            opened = time.monotonic()
            lab_.syn(port)
            _wait(lambda count=count: len(sent) > count)
            at, message = sent[-1]
            assert message["up"][0][0] == lab_.conn(port).in_key
            windows.append(at - opened)
        assert max(windows) < 0.1, windows
        # Established segments wake nothing: their path pays nothing for replication.
        conn = lab_.conn(41000)
        lab_.real(conn, "SA")
        lab_.client("A", 41000)
        _wait(lambda: not sender._wake.is_set() and not sender._noted)
        for _ in range(3):
            lab_.client("A", 41000, load=b"x")
            lab_.real(conn, "A", load=b"y")
        assert not sender._wake.is_set() and not sender._noted
    finally:
        sender.stop()


def _wait(done: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline
        time.sleep(0.001)


def test_a_step_down_hands_over_what_is_noted_and_stops_sending() -> None:
    pair = Pair()
    pair.flush()
    conn = pair.active.syn()
    pair.sender.hand_over()
    _same(conn, pair.standby.conn())
    assert not pair.sender.sending
    pair.active.syn(41000)               # the other unit's now: this one sends no more
    pair.flush()
    assert pair.standby.conn(41000) is None


def test_a_reply_the_standby_cannot_translate_never_reaches_the_client() -> None:
    """The active crashed before sending this connection: at the takeover, the real's
    SYN-ACK must not go to the client with the real's address."""
    pair = Pair()
    pair.flush()
    pair.sender.sending = False          # the crash: nothing more is sent
    conn = pair.active.syn()
    verdict, out = pair.standby.real(conn, "SA")
    assert verdict == ACCEPT_MODIFIED and out[TCP].flags == "R" and out.dst != CLIENT
    assert pair.standby.drops("unknown-reply") == 1


def _record(pair: Pair, port: int) -> list[Any]:
    conn = pair.active.syn(port)
    return encode(conn, pair.active.clock())


def test_malformed_records_are_dropped_counted_and_logged_once(caplog: Any) -> None:
    pair = Pair()
    good = _record(pair, 41000)
    bad = [good[:-1], good + [0], "x", None, {"0": 1}]
    for field, value in ((0, "1"), (0, -1), (0, 1 << 96), (1, 1 << 32), (2, 70000),
                         (2, True), (4, 6), (9, 1.5), (11, "LISTEN"), (11, ["ESTAB"]),
                         (12, 1), (13, 256), (14, -1), (16, None), (17, -1.0),
                         (18, float("nan")), (18, "1")):
        record = list(good)
        record[field] = value
        bad.append(record)
    elsewhere = list(good)
    elsewhere[0] = good[0] ^ (1 << 16)   # its client tuple is not toward its VIP
    bad.append(elsewhere)
    message = {"t": "conns", "up": bad + [good], "down": ["k", -5, [1]],
               "sticky": [[1, 2, 3]]}
    caplog.set_level(logging.WARNING, "localdirector.failover")
    pair.receiver.receive(json.loads(json.dumps(message)))
    assert pair.receiver.malformed == len(bad) + 3 + 1
    assert pair.receiver.applied == 1 and pair.standby.conn(41000) is not None
    logged = (f"failover: {len(bad) + 4} malformed connection records from the other "
              "unit dropped")
    assert [r.message for r in caplog.records if "malformed" in r.message] == [logged]
    for message in ({"t": "conns", "up": "x"}, {"t": "conns", "down": 5},
                    {"t": "conns", "sticky": {}}):
        pair.receiver.receive(message)
    assert pair.receiver.malformed == len(bad) + 4 + 3
    assert f"{len(bad) + 7} malformed" in pair.receiver.counts()


def test_the_standby_installs_at_most_conn_limit_connections(caplog: Any) -> None:
    pair = Pair()
    pair.standby.d.settings.max_conns = 2
    for port in (41000, 41001, 41002):
        pair.active.syn(port)
    pair.flush()
    assert len(pair.standby.d.conns) == 2
    assert (pair.receiver.applied, pair.receiver.over_limit) == (2, 1)
    assert "1 replicated connections refused: this unit's table is full (conn-limit 2)" \
        in caplog.text
    for port in (41000, 41001, 41002):   # updates of the ones it holds still apply
        pair.active.real(pair.active.conn(port), "SA")
    pair.flush()
    assert (pair.receiver.applied, pair.receiver.over_limit) == (4, 2)
    assert all(c.answered for c in pair.standby.d.conns)


def test_a_step_down_goes_on_whatever_the_hand_over_meets(caplog: Any) -> None:
    pair = Pair()
    pair.flush()
    pair.active.syn()
    pair.sender.director = lambda: 1 / 0        # a bug in the turn
    pair.sender.hand_over()                     # logged, not raised
    assert not pair.sender.sending and "cannot send the connections" in caplog.text
    pair.sender.hand_over()                     # not sending (`no replicate`): nothing


def test_a_syn_verdict_leaves_only_after_its_record_is_written() -> None:
    """The worker's batch of verdicts waits for the records of the connections it opens
    (issue 22: a unit that let a SYN through and died before the sender's turn left a
    connection the new active reset), waiting at most TURN_WAIT for a sender's turn in
    progress."""
    lab_ = Lab(fig1())
    wire: list[tuple[str, Any]] = []

    def send(message: dict[str, Any], wait: bool = True) -> bool:
        wire.append(("record", (wait, [r[0] for r in message["up"]])))
        return True

    sender = Replicator(lab_.engine, lambda: lab_.d, send, lambda: 1.0)
    lab_.engine.observe(sender._note)
    sender.sending = True
    batch = VerdictBatch(0, lambda pieces: wire.append(("verdicts", len(pieces))))
    batch.before_send = sender.write_before_verdicts
    conn = lab_.syn(41000)
    batch.accept(1)                      # the SYN's verdict, queued
    assert wire == []
    batch.flush()
    assert wire == [("record", (False, [conn.in_key])), ("verdicts", 1)]
    # Nothing noted: a batch of established segments writes nothing first.
    wire.clear()
    batch.accept(2)
    batch.flush()
    assert wire == [("verdicts", 1)]
    # The sender is in a turn that ends soon (another thread): the verdicts wait for it
    # and the worker writes the record first (without the wait, 1 of 3,000 lost in one
    # crash of ten on a loaded machine).
    wire.clear()
    sender._turning.acquire()
    threading.Timer(0.001, sender._turning.release).start()
    other = lab_.syn(41001)
    batch.accept(3)
    batch.flush()
    assert wire == [("record", (False, [other.in_key])), ("verdicts", 1)]
    # A turn that goes on (a whole resend to a unit that does not read) is not waited
    # for beyond TURN_WAIT: the verdicts go and the next turn sends the record.
    wire.clear()
    with sender._turning:
        late = lab_.syn(41002)
        batch.accept(4)
        batch.flush()
    assert wire == [("verdicts", 1)]
    sender._next_refresh = float("inf")  # this turn: what was noted, not a whole resend
    sender._turn()
    assert wire[-1] == ("record", (True, [late.in_key]))


def test_a_record_the_socket_cannot_take_at_once_goes_in_the_senders_next_turn() -> None:
    """The worker's write to a full (or busy) stream: the record stays noted for the
    sender's next turn, which may wait for room; no whole resend, which would only add
    to what a slow standby has not read yet (issue 22: window 0, then resends)."""
    lab_ = Lab(fig1())
    wire: list[tuple[bool, list[int]]] = []

    def send(message: dict[str, Any], wait: bool = True) -> bool:
        if wait:
            wire.append((wait, [r[0] for r in message["up"]]))
        return wait

    sender = Replicator(lab_.engine, lambda: lab_.d, send, lambda: 1.0)
    lab_.engine.observe(sender._note)
    sender.sending = True
    conn = lab_.syn(41000)
    sender.write_before_verdicts()
    assert not sender._whole.is_set() and sender.sent == 0 and wire == []
    sender._next_refresh = float("inf")  # this turn: what was noted, not a whole resend
    sender._turn()
    assert wire == [(True, [conn.in_key])] and sender.sent == 1


def test_a_turn_stuck_on_the_socket_costs_the_worker_one_wait_not_one_per_batch() -> None:
    """The new active's sender blocked toward a dead unit (its socket full, up to the
    stream's timeout): the worker waits TURN_WAIT once, then lets its verdicts go at
    once until the sender ends that turn (issue 22: 20 ms per batch piled the SYNs of 3 s
    up, and they were refused as unanswered)."""
    from localdirector.failover.replication import TURN_WAIT

    class Recorded:
        """The turn lock, saying how long each acquire may wait."""

        def __init__(self) -> None:
            self.lock, self.timeouts = threading.Lock(), []

        def acquire(self, timeout: float = -1) -> bool:
            self.timeouts.append(timeout)
            return self.lock.acquire(timeout=timeout)

        def release(self) -> None:
            self.lock.release()

        def __enter__(self) -> None:
            self.lock.acquire()

        def __exit__(self, *exc: object) -> None:
            self.lock.release()

    lab_ = Lab(fig1())
    sender = Replicator(lab_.engine, lambda: lab_.d, lambda message, wait=True: True,
                        lambda: 1.0)
    lab_.engine.observe(sender._note)
    sender.sending = True
    turning = sender._turning = Recorded()
    with turning:                        # the sender's turn, stuck
        for port in range(41000, 41010):
            lab_.syn(port)
            sender.write_before_verdicts()
    assert turning.timeouts == [TURN_WAIT] + [0] * 9
    sender._next_refresh = float("inf")
    sender._turn()                       # the turn ends: the next batch may wait again
    lab_.syn(41010)
    sender.write_before_verdicts()
    assert turning.timeouts[-1] == TURN_WAIT and sender.sent == 11
