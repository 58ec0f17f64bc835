"""The units' stream (failover/channel.py, failover/peer.py; docs/design.rst,
"Failover", "The peer channel's threat model"): every message authenticated and
numbered, replays, reflections, forgeries and garbage refused, lines and connections
bounded. Framing over socketpairs in process; the listener for real in a network
namespace of its own (`unshare --net`), on its loopback."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from localdirector.failover import channel, peer
from localdirector.failover.configs import Unit
from localdirector.model.addr import parse_ip
from localdirector.model.connection import ESTABLISHED, Connection
from localdirector.failover.replication import encode
from tests.conftest import require_netns
from tests.test_failover import shell

# Loopback traffic only, in a network namespace of the module's own.
pytestmark = pytest.mark.usefixtures("private_loopback")

KEY = bytes(range(32))
NONCE = bytes(16)
ROOT = Path(__file__).resolve().parent.parent


def test_a_sealed_message_opens_once_in_order() -> None:
    sealer = channel.Sealer(KEY, "primary", NONCE)
    opener = channel.Opener(KEY, "primary", NONCE)
    first, second = sealer.seal({"t": "status"}), sealer.seal({"t": "config", "lines": []})
    assert first.endswith(b"\n") and first.count(b"\n") == 1
    assert opener.open(first[:-1]) == {"t": "status"}
    assert opener.open(second[:-1]) == {"t": "config", "lines": []}
    with pytest.raises(channel.ChannelError, match="replayed"):
        opener.open(second[:-1])
    with pytest.raises(channel.ChannelError, match="replayed"):
        opener.open(first[:-1])


@pytest.mark.parametrize(("what", "key", "sender", "nonce"), [
    ("another key", bytes(32), "primary", NONCE),
    ("no key (failover key none) against a key", b"", "primary", NONCE),
    ("reflected: written by this unit itself", KEY, "secondary", NONCE),
    ("replayed from another connection", KEY, "primary", bytes([1] * 16))])
def test_a_message_not_for_this_connection_is_refused(what: str, key: bytes, sender: str,
                                                       nonce: bytes) -> None:
    line = channel.Sealer(key, sender, nonce).seal({"t": "step-down"})[:-1]
    with pytest.raises(channel.ChannelError, match="bad MAC"):
        channel.Opener(KEY, "primary", NONCE).open(line)


@pytest.mark.parametrize("line", [
    b'{"t":"step-down"}',                           # the old stream's message
    b'{"t":"config","lines":["do write memory"]}',
    b"1 " + b"0" * 64 + b' {"t":"step-down"}',      # framed, with a made-up MAC
    b"", b"garbage", b"-1 " + b"0" * 64 + b" {}", b"1" * 30 + b" " + b"0" * 64 + b" {}"])
def test_garbage_and_forgeries_are_refused(line: bytes) -> None:
    with pytest.raises(channel.ChannelError):
        channel.Opener(KEY, "primary", NONCE).open(line)


def test_an_altered_message_is_refused() -> None:
    line = channel.Sealer(KEY, "primary", NONCE).seal({"t": "config", "lines": ["hostname a"]})
    with pytest.raises(channel.ChannelError, match="bad MAC"):
        channel.Opener(KEY, "primary", NONCE).open(line[:-1].replace(b"hostname a",
                                                                     b"hostname b"))


def test_the_banner_carries_the_nonce() -> None:
    nonce = channel.new_nonce()
    assert channel.parse_banner(channel.banner(nonce)[:-1]) == nonce
    for bad in (b"LDPEER1 00", b"HELLO " + b"00" * 16, b"LDPEER1 " + b"zz" * 16):
        with pytest.raises(channel.ChannelError):
            channel.parse_banner(bad)


def _feed(data: bytes, close: bool = True) -> socket.socket:
    """The read end of a socketpair whose other end a thread fills with `data`."""
    ours, theirs = socket.socketpair()

    def write() -> None:
        try:
            theirs.sendall(data)
        except OSError:
            pass                # the reader gave up: as a refused peer sees it
        if close:
            theirs.close()
    threading.Thread(target=write, daemon=True).start()
    ours.settimeout(10)
    return ours


def test_a_truncated_line_is_never_delivered() -> None:
    line = channel.Sealer(KEY, "primary", NONCE).seal({"t": "status"})
    reader = channel.LineReader(_feed(line + line[:20]))
    assert channel.Opener(KEY, "primary", NONCE).open(reader.readline()) == {"t": "status"}
    with pytest.raises(EOFError):
        reader.readline()


def test_a_line_without_end_is_dropped_at_the_cap_not_buffered() -> None:
    """The field's 200 MB line without a newline: the reader holds at most the cap."""
    sock = _feed(b"x" * (channel.MAX_LINE + 5 * 1024 * 1024))
    reader = channel.LineReader(sock)
    with pytest.raises(channel.ChannelError, match="longer than"):
        reader.readline()
    assert len(reader._buffer) <= channel.MAX_LINE + 1
    sock.close()


def test_realistic_messages_fit_the_cap(tmp_path: Path) -> None:
    """A configuration with 20,000 assigns and a chunk of 2,000 connection records
    (worst-case numbers in every field) as the stream frames them."""
    appliance, _out, session = shell(tmp_path)
    for line in ("real 203.0.113.11:8001", "virtual 192.0.2.10:443:1",
                 "bind 192.0.2.10:443:1 203.0.113.11:8001"):
        assert session.execute(line)
    for i in range(20000):
        assert session.run(f"assign 192.0.2.10:443:1 10.{i // 256}.{i % 256}.0 "
                           "255.255.255.0") is None
    lines = [line for line in appliance.running_config() if line.startswith("assign")]
    assert len(lines) == 20000
    config = channel.Sealer(KEY, "primary", NONCE).seal({"t": "config", "lines": lines})
    virtual = next(iter(appliance.director.virtuals.values()))
    real = next(iter(appliance.director.reals.values()))
    conn = Connection(parse_ip("198.51.100.254"), 65535, virtual.addr, 443, virtual, real,
                      0.0)
    conn.tcp_state, conn.ack_in, conn.ack_out, conn.remap = ESTABLISHED, 2**32 - 1, \
        2**32 - 1, 65535
    chunk = channel.Sealer(KEY, "primary", NONCE).seal(
        {"t": "conns", "up": [encode(conn, 86400.123)] * 2000, "down": []})
    assert len(config) < channel.MAX_LINE / 8 and len(chunk) < channel.MAX_LINE / 40


def test_refusals_are_logged_once_a_period(caplog: pytest.LogCaptureFixture,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A flood of bad connections is one log line per reason and period, then the
    count of the ones not logged."""
    now = [1000.0]
    monkeypatch.setattr(peer.time, "monotonic", lambda: now[0])
    complain = peer.Complaints()
    with caplog.at_level(logging.WARNING, "localdirector.failover"):
        for _ in range(400):
            complain("bad MAC", "dropped: bad MAC")
        complain("idle", "dropped: silent")
        now[0] += peer.COMPLAINT_EVERY
        complain("bad MAC", "dropped: bad MAC")
    assert caplog.messages == ["failover: dropped: bad MAC", "failover: dropped: silent",
                               "failover: dropped: bad MAC (399 more not logged)"]


# -- the listener, in a namespace of its own ---------------------------------------------

def in_own_netns(scenario: str) -> None:
    """Run `scenario()` of this module in a fresh network namespace (loopback up)."""
    require_netns()
    code = f"import tests.test_failover_peer as t; t.{scenario}()"
    proc = subprocess.run(
        ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$0" -c "$1"',
         sys.executable, code], env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


class Received:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.event = threading.Event()

    def __call__(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        self.event.set()


def _unit(role: str, address: str) -> Unit:
    return Unit(role, "lo", address, Path("/nonexistent"))


def _listening(received: Received, key: bytes = KEY, hold: float = 1.0) -> peer.Peer:
    """The secondary at 127.0.0.2, expecting the primary at 127.0.0.1."""
    unit = peer.Peer(_unit("secondary", "127.0.0.2"), "127.0.0.1", key, received,
                     lambda: None, lambda: hold)
    unit.start()
    return unit


def _raw(source: str = "127.0.0.1") -> tuple[socket.socket, bytes]:
    """A plain connection to the listener and its banner's nonce ("" if refused)."""
    sock = socket.create_connection(("127.0.0.2", peer.PORT), timeout=5,
                                    source_address=(source, 0))
    try:
        return sock, channel.parse_banner(channel.LineReader(sock, 64).readline())
    except (EOFError, OSError):
        return sock, b""


def _talking(received: Received) -> tuple[peer.Peer, peer.Peer]:
    """The secondary listening, the primary connected to it and heard once."""
    secondary = _listening(received)
    primary = peer.Peer(_unit("primary", "127.0.0.1"), "127.0.0.2", KEY, lambda m: None,
                        lambda: None, lambda: 1.0)
    primary.start()
    deadline = time.monotonic() + 10
    while not primary.send({"t": "status", "role": "Active"}):
        assert time.monotonic() < deadline, "the primary never connected"
        time.sleep(0.05)
    assert received.event.wait(5) and received.messages[0]["role"] == "Active"
    return primary, secondary


def scenario_pair_talks_and_refuses_the_field_attacks() -> None:
    received = Received()
    primary, secondary = _talking(received)
    # The attacks: the old stream's messages, unauthenticated, from the peer's address.
    for line in (b'{"t":"step-down"}\n',
                 b'{"t":"config","lines":["hostname evil","do write memory"]}\n'):
        sock, nonce = _raw()
        assert nonce
        sock.sendall(line)
        assert sock.recv(10) == b""          # dropped at once
        sock.close()
    # A captured authentic message, replayed on a connection of its own.
    sock, nonce = _raw()
    sock.sendall(channel.Sealer(KEY, "primary", bytes(16)).seal({"t": "step-down"}))
    assert sock.recv(10) == b""
    sock.close()
    # From any other address: closed before a banner.
    assert _raw("127.0.0.3")[1] == b""
    time.sleep(0.2)
    assert [m["t"] for m in received.messages] == ["status"], received.messages
    primary.stop()
    secondary.stop()


def test_pair_talks_and_refuses_the_field_attacks() -> None:
    in_own_netns("scenario_pair_talks_and_refuses_the_field_attacks")


def scenario_connections_are_capped_and_idle_ones_dropped() -> None:
    """The field's 400 idle connections: at most MAX_INBOUND get a reader thread, the
    rest are closed at once, and the idle ones go after the idle timeout."""
    peer.IDLE_MIN = 0.5
    secondary = _listening(Received(), hold=0.1)
    threads = threading.active_count()
    opened = [_raw() for _ in range(40)]
    served = [sock for sock, nonce in opened if nonce]
    assert len(served) == peer.MAX_INBOUND, len(served)
    assert threading.active_count() <= threads + peer.MAX_INBOUND
    for sock in served:
        sock.settimeout(5)
        started = time.monotonic()
        assert sock.recv(10) == b""          # dropped: silent too long
        assert time.monotonic() - started < 4   # the idle timeout (0.5 s), not the 5 s recv
    time.sleep(0.2)
    assert _raw()[1], "a new connection is served once the idle ones are gone"
    for sock, _nonce in opened:
        sock.close()
    secondary.stop()


def test_connections_are_capped_and_idle_ones_dropped() -> None:
    in_own_netns("scenario_connections_are_capped_and_idle_ones_dropped")


def scenario_a_huge_line_costs_at_most_the_cap() -> None:
    """The field's 200 MB line: the connection is dropped at the cap; memory grows by
    at most about the cap."""
    import resource
    secondary = _listening(Received())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sock, nonce = _raw()
    assert nonce
    chunk = b"x" * (1024 * 1024)
    sent = 0
    try:
        for _ in range(200):
            sock.sendall(chunk)
            sent += len(chunk)
    except OSError:
        pass                                 # reset: the listener gave up
    assert sent < 64 * 1024 * 1024, sent
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kb < 2 * channel.MAX_LINE / 1024, grown_kb
    secondary.stop()


def test_a_huge_line_costs_at_most_the_cap() -> None:
    in_own_netns("scenario_a_huge_line_costs_at_most_the_cap")


def test_json_frames_carry_no_newline() -> None:
    line = channel.Sealer(KEY, "primary", NONCE).seal({"t": "config",
                                                      "lines": ["a\nb", "é\r"]})
    assert line.count(b"\n") == 1
    assert json.loads(line.split(b" ", 2)[2]) == {"t": "config", "lines": ["a\nb", "é\r"]}


def test_the_workers_send_returns_at_once_when_the_other_unit_stops_reading() -> None:
    """The data-plane worker's write (`wait=False`) toward a unit that takes nothing more
    (dead, its cable pulled) fails at once instead of holding the verdicts for the
    socket's timeout (issue 22: Python's send waited 5 s for room, MSG_DONTWAIT or not,
    and the SYNs of those 5 s were refused as unanswered), and the stream is given up
    only when part of a message went."""
    unit = peer.Peer(_unit("primary", "127.0.0.1"), "127.0.0.2", KEY, lambda m: None,
                     lambda: None, lambda: 1.0)
    server = socket.create_server(("127.0.0.2", 0))
    out = socket.create_connection(server.getsockname(), timeout=5.0)
    stalled, _ = server.accept()                 # never read: its buffers fill up
    out.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    unit._out = (out, channel.Sealer(KEY, "primary", NONCE))
    message = {"t": "conns", "up": [], "down": [], "pad": "x" * 1000}
    sent = 0
    started = time.monotonic()
    while unit.send(message, wait=False):
        sent += 1
    assert sent > 0 and time.monotonic() - started < 2.0   # the old send: 5 s here
    # Full: a message went in part (the stream is dropped) or not at all (kept).
    assert not unit.send(message, wait=False)
    assert time.monotonic() - started < 2.0
    for sock in (stalled, server, out):
        sock.close()
    unit._listener.close()


def test_the_other_units_stream_is_read_at_the_data_planes_priority() -> None:
    """A standby reading slower than the active writes closes its window and the
    active's records wait (issue 22): the reader runs at the worker's priority."""
    from localdirector.dataplane.worker import WORKER_NICE
    primary, secondary = _talking(Received())
    readers = [t for t in threading.enumerate() if t.name == "failover-read"]
    assert readers
    for thread in readers:
        stat = Path(f"/proc/self/task/{thread.native_id}/stat").read_text()
        assert int(stat.rsplit(")", 1)[1].split()[16]) == WORKER_NICE
    primary.stop()
    secondary.stop()
