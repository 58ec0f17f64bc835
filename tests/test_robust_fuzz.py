"""Fuzzing the FIG. 5 engine with a live connection table: nothing escapes, nothing leaks.

Malformed packets alone only reach the parser's early exits; the interesting failures are
odd packets that *belong to* a connection (a truncated ICMP error quoting one, a SYN+RST
on one, a retransmitted SYN after the pool died). So a :class:`World` keeps a FIG. 1
director busy with real connections while hypothesis (a state machine) and atheris
(coverage-guided, in a subprocess) feed it well-formed traffic, malformed variants of that
traffic and arbitrary bytes, interleaved with time passing, health changes and `reload`.

After every packet the invariants an operator relies on are checked:

* the engine returned a verdict (no exception), and ACCEPT_UNCHANGED left the bytes alone;
* every packet is in exactly one bucket: packets == translated + unchanged + dropped;
* a packet handed back (ACCEPT_MODIFIED) parses, and its IP and TCP checksums are right
  whenever the packet that came in had them right (translation never corrupts); a
  refusal is a well-formed RST|ACK from the address the SYN was for;
* the connection table is consistent both ways (inbound and reply keys), bounded by
  `conn-limit`, and every live gauge (virtual and real current connections, half-open
  counts) equals a recount of the table; created - closed == table size.

``python tests/test_robust_fuzz.py [libFuzzer options]`` runs the atheris harness.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule


def _instrumented() -> contextlib.AbstractContextManager[object]:
    """Run as the atheris harness, the code under test is imported with coverage
    instrumentation (only it: instrumenting everything loaded takes a minute)."""
    if __name__ != "__main__":
        return contextlib.nullcontext()
    import atheris
    return atheris.instrument_imports(include=["localdirector"])


with _instrumented():
    from localdirector.dataplane import packet as P
    from localdirector.dataplane import icmp as I
    from localdirector.dataplane.engine import ACCEPT_MODIFIED, ACCEPT_UNCHANGED, DROP, Engine
    from localdirector.dataplane.stats import REASON_NAMES
    from localdirector.model.addr import parse_ip
    from localdirector.model.connection import HALF_OPEN_STATES, Connection, flow_key
    from localdirector.model.director import Director
    from localdirector.model.serverid import ServerId
    from localdirector.model.state import State

VIP = parse_ip("192.0.2.10")
CLIENTS = tuple(parse_ip(a) for a in ("198.51.100.7", "198.51.100.8", "198.18.0.9",
                                       "198.19.0.4", "198.19.0.5"))
CLIENT_PORTS = (40000, 40001, 40002, 50000)
REALS = ("203.0.113.12", "203.0.113.13", "203.0.113.14", "203.0.113.11:8001",
         "203.0.113.15")
CONN_LIMIT = 10
OTHER = parse_ip("198.18.3.3")  # someone a real talks to on its own account


def sid(text: str) -> ServerId:
    return ServerId.parse(text)


# ----------------------------------------------------------------------- packets

def ipv4(src: int, dst: int, proto: int, payload: bytes, options: bytes = b"") -> bytearray:
    """An IPv4 packet with a correct header checksum (options padded to 32 bits)."""
    options += b"\0" * (-len(options) % 4)
    ihl = 20 + len(options)
    header = bytearray(struct.pack("!BBHHHBBHII", 0x40 | ihl // 4, 0, ihl + len(payload),
                                   0, 0x4000, 64, proto, 0, src, dst) + options)
    struct.pack_into("!H", header, 10, P.checksum(header))
    return header + payload


def tcp(src: int, dst: int, sport: int, dport: int, flags: int, data: bytes = b"",
        options: bytes = b"", ip_options: bytes = b"", seq: int = 1000) -> bytearray:
    """A TCP segment with correct checksums."""
    options += b"\1" * (-len(options) % 4)
    header = bytearray(struct.pack("!HHIIBBHHH", sport, dport, seq, 0,
                                   (5 + len(options) // 4) << 4, flags, 65535, 0, 0)
                       + options)
    segment = header + data
    pseudo = struct.pack("!IIxBH", src, dst, P.PROTO_TCP, len(segment))
    struct.pack_into("!H", segment, 16, P.checksum(pseudo + segment))
    return ipv4(src, dst, P.PROTO_TCP, bytes(segment), ip_options)


def icmp_error(src: int, dst: int, quoted: bytes, kind: int = 3, code: int = 4) -> bytearray:
    """An ICMP error (default: fragmentation needed, MTU 1400) quoting ``quoted``."""
    message = bytearray(struct.pack("!BBHHH", kind, code, 0, 0, 1400) + quoted)
    struct.pack_into("!H", message, 2, P.checksum(message))
    return ipv4(src, dst, P.PROTO_ICMP, bytes(message))


def ip_header_ok(buf: bytes | bytearray) -> bool:
    """RFC 1071 check: a correct header, checksum included, sums to -0."""
    return int.from_bytes(buf[:(buf[0] & 0x0F) * 4], "big") % 0xFFFF == 0


def tcp_ok(buf: bytes | bytearray) -> bool:
    """Whether a whole, unfragmented TCP packet's checksum is right, by the from-scratch
    computation test_packet.py proves against scapy (False for anything else)."""
    buf = bytearray(buf)
    fields = P.parse_tcp(buf)
    if not isinstance(fields, tuple) or buf[6] & 0x20 or len(buf) != (buf[2] << 8 | buf[3]):
        return False
    return P.tcp_checksum_full(buf, fields[0]) == int.from_bytes(buf[fields[0] + 16:
                                                                     fields[0] + 18], "big")


def _set_nibble(buf: bytearray, offset: int, high: bool, value: int) -> bytearray:
    if offset < len(buf):
        keep = buf[offset] & (0x0F if high else 0xF0)
        buf[offset] = keep | ((value & 0x0F) << 4 if high else value & 0x0F)
    return buf


def _ihl(buf: bytearray) -> int:
    return (buf[0] & 0x0F) * 4 if buf else 20


# Ways to damage a packet: name -> function(buf, a, b) returning the damaged copy.
MUTATIONS = {
    "truncate": lambda buf, a, b: buf[:a % (len(buf) + 1)],
    "ihl": lambda buf, a, b: _set_nibble(buf, 0, False, a),
    "version": lambda buf, a, b: _set_nibble(buf, 0, True, a),
    "total-length": lambda buf, a, b: buf[:2] + struct.pack("!H", (a << 8 | b) & 0xFFFF)
    + buf[4:],
    "fragment": lambda buf, a, b: buf[:6] + struct.pack("!H", (a & 0x20) << 8 | b) + buf[8:],
    "protocol": lambda buf, a, b: buf[:9] + bytes((a,)) + buf[10:],
    "tcp-offset": lambda buf, a, b: _set_nibble(buf, _ihl(buf) + 12, True, a),
    "tcp-flags": lambda buf, a, b: _poke(buf, _ihl(buf) + 13, a),
    "tcp-checksum": lambda buf, a, b: _poke(buf, _ihl(buf) + 16, buf[_ihl(buf) + 16] ^ (a | 1)
                                            if len(buf) > _ihl(buf) + 16 else a),
    "byte": lambda buf, a, b: _poke(buf, (a << 8 | b) % max(1, len(buf)), b),
}


def _poke(buf: bytearray, offset: int, value: int) -> bytearray:
    if offset < len(buf):
        buf[offset] = value & 0xFF
    return buf


# ------------------------------------------------------------------------- world

class World:
    """A FIG. 1 director (three Bind ID instances, a backup virtual, a port-translating
    real, `synguard` and a small `conn-limit`) with its engine and a fake clock."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.director = build_director()
        self.engine = Engine(self.director, lambda: self.t)
        self.verdicts: Counter[str] = Counter()
        self.reloads = 0

    # -- traffic --------------------------------------------------------------------
    def send(self, buf: bytearray) -> int:
        """Run one packet through the engine and check everything checkable about it."""
        before = bytes(buf)
        resets = self._resets()
        verdict = self.engine.handle(buf)
        assert verdict in (DROP, ACCEPT_UNCHANGED, ACCEPT_MODIFIED)
        self.verdicts[("drop", "unchanged", "modified")[verdict]] += 1
        if verdict == ACCEPT_UNCHANGED:
            assert bytes(buf) == before
        elif self._resets() != resets:
            # The segment became the RST a closed port sends (a refused SYN, a client's
            # or a real's segment of no connection): from where it was going, to where
            # it came from, at the sequence it acknowledged or acknowledging it, with
            # both checksums right.
            ihl = (before[0] & 0x0F) * 4
            acked = before[ihl + 13] & P.ACK
            assert verdict == ACCEPT_MODIFIED and len(buf) == 40 and tcp_ok(buf)
            assert ip_header_ok(buf) and buf[33] == (P.RST if acked else P.RST | P.ACK)
            assert (buf[12:16], buf[16:20]) == (before[16:20], before[12:16])
            assert (buf[20:22], buf[22:24]) == (before[ihl + 2:ihl + 4], before[ihl:ihl + 2])
        elif verdict == ACCEPT_MODIFIED:
            assert isinstance(P.parse_tcp(buf), tuple) or isinstance(
                I.parse_icmp_error(buf), tuple), before.hex()
            # Translation never corrupts (and, incremental, never repairs either: the
            # kernel has verified IP header checksums before queueing anyway).
            assert ip_header_ok(buf) == ip_header_ok(before), before.hex()
            if tcp_ok(before):
                assert tcp_ok(buf), before.hex()
        self.check()
        return verdict

    def _resets(self) -> int:
        stats = self.engine.stats
        return stats.refused + stats.unknown_resets + stats.reply_resets

    def client(self, client: int, port: int, flags: int, data: bytes = b"",
               ip_options: bytes = b"") -> int:
        return self.send(tcp(client, VIP, port, 80, flags, data, ip_options=ip_options))

    def conns(self) -> list[Connection]:
        return sorted(self.director.conns.inbound.values(), key=lambda c: c.in_key)

    def real(self, conn: Connection, flags: int, data: bytes = b"") -> int:
        return self.send(tcp(conn.real_ip, conn.foreign_ip, conn.real_port, conn.nat_port,
                             flags, data))

    def client_of(self, conn: Connection, flags: int, data: bytes = b"") -> int:
        return self.send(tcp(conn.foreign_ip, conn.virtual_ip, conn.foreign_port,
                             conn.virtual_port, flags, data))

    def icmp_about(self, conn: Connection, toward_client: bool, quote: int) -> int:
        """An ICMP error quoting the connection's packet as it was on the wire: a router
        behind the director about a client->real segment, or one in front of it about
        a VIP->client reply. ``quote`` cuts the quoted packet short."""
        if toward_client:
            quoted = tcp(conn.foreign_ip, conn.real_ip, conn.nat_port, conn.real_port,
                         P.ACK, b"x" * 30)
            outer = (parse_ip("203.0.113.254"), conn.foreign_ip)
        else:
            quoted = tcp(conn.virtual_ip, conn.foreign_ip, conn.virtual_port,
                         conn.foreign_port, P.ACK, b"y" * 30)
            outer = (parse_ip("198.51.100.254"), conn.virtual_ip)
        return self.send(icmp_error(*outer, bytes(quoted[:quote])))

    # -- time, health, configuration ------------------------------------------------
    def advance(self, seconds: float) -> None:
        self.t += seconds
        self.engine.tick()
        self.check()

    def set_real_state(self, index: int, state: State) -> None:
        with self.director.lock:
            real = self.director.reals[sid(REALS[index % len(REALS)])]
            if state is State.FAILED:
                real.state, real.failed_at = State.FAILED, self.t
            else:
                self.director.set_real_state(real, state)
        self.check()

    def reload(self) -> None:
        """`reload`: a fresh model from the same configuration, adopted live."""
        fresh = build_director()
        with self.director.lock, fresh.lock:
            fresh.lock = self.director.lock
            self.engine.adopt(fresh)
            self.director = fresh
        self.reloads += 1
        self.check()

    # -- invariants -----------------------------------------------------------------
    def check(self) -> None:
        stats = self.engine.stats
        assert stats.packets == (stats.translated_in + stats.translated_out
                                 + stats.icmp_translated + stats.unchanged + stats.dropped)
        table = self.director.conns
        assert len(table.reply) == len(table.inbound) <= self.director.settings.max_conns
        virtuals: Counter[int] = Counter()
        half_open: Counter[int] = Counter()
        reals: Counter[int] = Counter()
        objects = {}
        for key, conn in table.inbound.items():
            assert key == conn.in_key == flow_key(conn.foreign_ip, conn.foreign_port,
                                                  conn.virtual_ip, conn.virtual_port)
            assert table.reply[conn.reply_key()] is conn
            assert (conn.real_ip, conn.real_port) == (conn.real.addr,
                                                      conn.real.port or conn.virtual_port)
            virtuals[id(conn.virtual)] += 1
            half_open[id(conn.virtual)] += conn.tcp_state in HALF_OPEN_STATES
            reals[id(conn.real)] += 1
            objects[id(conn.virtual)] = conn.virtual
            objects[id(conn.real)] = conn.real
        for v in [*self.director.virtuals.values(), *objects.values()]:
            if hasattr(v, "conns_current"):
                assert v.conns_current == virtuals[id(v)], v.sid
                assert v.half_open == half_open[id(v)], v.sid
        for r in [*self.director.reals.values(), *objects.values()]:
            if hasattr(r, "current_conns"):
                assert r.current_conns == reals[id(r)], r.sid
        assert stats.conns_created - stats.conns_closed == len(table.inbound)
        assert stats.peak_conns >= len(table.inbound)

    def figures(self) -> dict[str, object]:
        drops = {name: n for name, n in zip(REASON_NAMES, self.engine.stats.drops) if n}
        return {"packets": self.engine.stats.packets, "verdicts": dict(self.verdicts),
                "drops": drops, "refused": self.engine.stats.refused,
                "created": self.engine.stats.conns_created, "reloads": self.reloads}


def build_director() -> Director:
    d = Director()
    with d.lock:
        for bind in (0, 1, 2):
            d.add_virtual(sid(f"192.0.2.10:80:{bind}"))
        for real in REALS:
            d.add_real(sid(real))
        for bind, reals in ((0, REALS[:2]), (1, REALS[2:4]), (2, REALS[4:])):
            for real in reals:
                d.bind(sid(f"192.0.2.10:80:{bind}"), sid(real))
        d.assign(sid("192.0.2.10:80:1"), parse_ip("198.51.100.0"), 24)
        d.assign(sid("192.0.2.10:80:2"), parse_ip("198.18.0.0"), 24)
        d.virtuals[sid("192.0.2.10:80:1")].backup = sid("192.0.2.10:80:0")
        d.virtuals[sid("192.0.2.10:80:2")].synguard = 2
        for real in d.reals.values():
            real.threshold, real.reassign, real.retry = 2, 2, 5
        d.settings.max_conns = CONN_LIMIT
    return d


# ------------------------------------------------------------------ hypothesis

@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=40), flags=st.integers(0, 255), flip=st.integers(0, 1 << 16),
       options=st.sampled_from([b"", b"\1\1\1\0", b"\2\4\5\xb4"]))
def test_syn_checksum_check_agrees_with_a_full_computation(data: bytes, flags: int,
                                                          flip: int, options: bytes) -> None:
    """tcp_checksum_valid (what decides `bad-checksum`) against the independent oracle,
    odd lengths, options and a corrupted byte included."""
    buf = tcp(CLIENTS[0], VIP, 40000, 80, flags, data, options)
    if flip & 1:
        buf[20 + (flip >> 1) % (len(buf) - 20)] ^= 1 + (flip >> 8) % 255
    assert P.tcp_checksum_valid(buf, 20) is tcp_ok(buf)


FLAGS = st.integers(0, 255)
# Flag values real TCPs send, weighted in so connections actually open and close.
COMMON_FLAGS = st.sampled_from([P.SYN, P.SYN | P.ACK, P.ACK, P.PSH | P.ACK, P.FIN | P.ACK,
                                P.RST, P.RST | P.ACK])
ANY_FLAGS = st.one_of(COMMON_FLAGS, FLAGS)
BYTE = st.integers(0, 255)


class EngineMachine(RuleBasedStateMachine):
    """Random interleavings of traffic, damage, time and configuration."""

    def __init__(self) -> None:
        super().__init__()
        self.world = World()

    @rule(client=st.sampled_from(CLIENTS), port=st.sampled_from(CLIENT_PORTS),
          flags=ANY_FLAGS, data=st.binary(max_size=12),
          ip_options=st.sampled_from([b"", b"\1\1\1\0", b"\x07\x07\x04" + bytes(4)]))
    def client_packet(self, client: int, port: int, flags: int, data: bytes,
                      ip_options: bytes) -> None:
        self.world.client(client, port, flags, data, ip_options)

    @precondition(lambda self: self.world.director.conns.inbound)
    @rule(pick=st.integers(0, 1 << 16), flags=ANY_FLAGS, data=st.binary(max_size=12),
          from_real=st.booleans())
    def connection_packet(self, pick: int, flags: int, data: bytes, from_real: bool) -> None:
        conns = self.world.conns()
        conn = conns[pick % len(conns)]
        if from_real:
            self.world.real(conn, flags, data)
        else:
            self.world.client_of(conn, flags, data)

    @precondition(lambda self: self.world.director.conns.inbound)
    @rule(pick=st.integers(0, 1 << 16), toward_client=st.booleans(),
          quote=st.integers(0, 90))
    def icmp_error(self, pick: int, toward_client: bool, quote: int) -> None:
        conns = self.world.conns()
        self.world.icmp_about(conns[pick % len(conns)], toward_client, quote)

    @rule(kind=st.sampled_from(sorted(MUTATIONS)), a=BYTE, b=BYTE,
          base=st.integers(0, 1 << 16), which=st.sampled_from(["syn", "real", "icmp"]))
    def damaged(self, kind: str, a: int, b: int, base: int, which: str) -> None:
        """A well-formed packet of the running traffic with one thing broken."""
        conns = self.world.conns()
        conn = conns[base % len(conns)] if conns else None
        if which == "syn" or conn is None:
            buf = tcp(CLIENTS[base % len(CLIENTS)], VIP, CLIENT_PORTS[base % 4], 80, P.SYN)
        elif which == "real":
            buf = tcp(conn.real_ip, conn.foreign_ip, conn.real_port, conn.nat_port,
                      P.ACK, b"data")
        else:
            buf = icmp_error(parse_ip("203.0.113.254"), conn.foreign_ip,
                             bytes(tcp(conn.foreign_ip, conn.real_ip, conn.nat_port,
                                       conn.real_port, P.ACK)))
        self.world.send(bytearray(MUTATIONS[kind](bytearray(buf), a, b)))

    @rule(data=st.binary(max_size=64))
    def arbitrary_bytes(self, data: bytes) -> None:
        self.world.send(bytearray(data))

    @rule(proto=st.sampled_from([P.PROTO_ICMP, 17, 47]), toward_vip=st.booleans(),
          data=st.binary(min_size=8, max_size=16))
    def other_protocol(self, proto: int, toward_vip: bool, data: bytes) -> None:
        src, dst = (CLIENTS[0], VIP) if toward_vip else (parse_ip(REALS[0]), OTHER)
        self.world.send(ipv4(src, dst, proto, data))

    @rule(seconds=st.sampled_from([0.3, 1.0, 2.5, 6.0, 80.0, 1000.0]))
    def time_passes(self, seconds: float) -> None:
        self.world.advance(seconds)

    @rule(client=st.sampled_from(CLIENTS), port=st.sampled_from(CLIENT_PORTS),
          steps=st.integers(1, 5))
    def connection_life(self, client: int, port: int, steps: int) -> None:
        """A well-behaved connection taken `steps` steps through its life (SYN,
        SYN-ACK, ACK, FIN, FIN), so the table holds every state."""
        if self.world.client(client, port, P.SYN) != ACCEPT_MODIFIED:
            return
        conn = self.world.director.conns.inbound.get(flow_key(client, port, VIP, 80))
        if conn is None:  # refused
            return
        for step in range(1, steps):
            if step == 1:
                self.world.real(conn, P.SYN | P.ACK)
            elif step == 2:
                self.world.client_of(conn, P.ACK, b"GET /")
            else:
                (self.world.client_of if step == 3 else self.world.real)(conn, P.FIN | P.ACK)

    @rule(index=st.integers(0, len(REALS) - 1),
          change=st.sampled_from([State.IN_SERVICE, State.OUT_OF_SERVICE, State.FAILED,
                                  "reload"]))
    def configuration(self, index: int, change: State | str) -> None:
        if change == "reload":
            self.world.reload()
        else:
            self.world.set_real_state(index, change)

    @invariant()
    def consistent(self) -> None:
        self.world.check()


EngineMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("ROBUST_FUZZ_EXAMPLES", "200")), stateful_step_count=80,
    deadline=None, suppress_health_check=[HealthCheck.too_slow])
TestEngineUnderFuzz = EngineMachine.TestCase


# ---------------------------------------------------------------------- atheris

def _atheris_input(world: World, data: bytes) -> None:
    """One libFuzzer input: a byte-coded script of operations on a fresh world."""
    import atheris

    fdp = atheris.FuzzedDataProvider(data)
    ops = 0
    while fdp.remaining_bytes() and ops < 40:
        ops += 1
        op = fdp.ConsumeIntInRange(0, 6)
        conns = world.conns()
        conn = conns[fdp.ConsumeIntInRange(0, len(conns) - 1)] if conns else None
        if op == 0:
            world.send(bytearray(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 80))))
        elif op == 1:
            world.client(CLIENTS[fdp.ConsumeIntInRange(0, len(CLIENTS) - 1)],
                         CLIENT_PORTS[fdp.ConsumeIntInRange(0, 3)], fdp.ConsumeIntInRange(0, 255),
                         fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 8)))
        elif op == 2 and conn is not None:
            flags = fdp.ConsumeIntInRange(0, 255)
            (world.real if fdp.ConsumeBool() else world.client_of)(conn, flags)
        elif op == 3 and conn is not None:
            world.icmp_about(conn, fdp.ConsumeBool(), fdp.ConsumeIntInRange(0, 90))
        elif op == 4:
            kind = sorted(MUTATIONS)[fdp.ConsumeIntInRange(0, len(MUTATIONS) - 1)]
            base = (tcp(conn.real_ip, conn.foreign_ip, conn.real_port, conn.nat_port, P.ACK,
                        b"data") if conn is not None and fdp.ConsumeBool()
                    else tcp(CLIENTS[0], VIP, 40000, 80, P.SYN))
            world.send(bytearray(MUTATIONS[kind](bytearray(base), fdp.ConsumeIntInRange(0, 255),
                                                 fdp.ConsumeIntInRange(0, 255))))
        elif op == 5:
            world.advance((0.5, 3.0, 80.0)[fdp.ConsumeIntInRange(0, 2)])
        elif op == 6:
            world.set_real_state(fdp.ConsumeIntInRange(0, len(REALS) - 1),
                                 (State.IN_SERVICE, State.FAILED)[fdp.ConsumeIntInRange(0, 1)])


def atheris_main(argv: list[str]) -> None:
    import atheris

    logging.getLogger("localdirector").setLevel(logging.ERROR)  # FAILED/TESTING notices
    totals: Counter[str] = Counter()

    def one_input(data: bytes) -> None:
        world = World()
        _atheris_input(world, data)
        totals["inputs"] += 1
        totals["packets"] += world.engine.stats.packets
        if totals["inputs"] % 1000 == 0:  # libFuzzer ends the process without unwinding
            print(f"figures: {dict(totals)}", flush=True)

    atheris.Setup([sys.argv[0], *argv], one_input)
    atheris.Fuzz()


def test_atheris_finds_nothing(tmp_path: Path) -> None:
    """Coverage-guided fuzzing for a fixed number of inputs; a failed invariant or an
    exception is a libFuzzer crash, i.e. a non-zero exit with the input saved."""
    import atheris  # noqa: F401  a test dependency (setup.cfg [test]): missing = failure
    runs = os.environ.get("ROBUST_ATHERIS_RUNS", "8000")
    proc = subprocess.run(
        [sys.executable, __file__, f"-runs={runs}", "-seed=6324177", "-len_control=0",
         f"-artifact_prefix={tmp_path}/", "-max_len=512"],
        capture_output=True, text=True, timeout=240,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert f"Done {runs} runs" in output, output[-2000:]
    figures = [line for line in output.splitlines() if line.startswith("figures:")]
    print(figures[-1])


if __name__ == "__main__":
    atheris_main(sys.argv[1:])
