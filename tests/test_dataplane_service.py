"""The data plane's control parts without a kernel: netfilter rule text and
transactions (iptables is a fake that records what it is fed and plays back an
`iptables-save` listing), the worker's per-packet verdicts (a fake packet and engine),
the host's readings of /proc, and a data plane that is not running. The kernel side is
tests/test_dataplane_netns.py."""

from __future__ import annotations

import logging
import struct
import time
from pathlib import Path

import pytest

from localdirector.model.connection import Connection
from localdirector.model.director import Director
from localdirector.model.serverid import ServerId
from localdirector.dataplane.engine import ACCEPT_MODIFIED, ACCEPT_UNCHANGED, DROP
from localdirector.dataplane.host import forwarding_problems, read_queue_counters
from localdirector.dataplane.floodrules import flood_rules, known_set
from localdirector.dataplane.iptables import names, raw_rules
from localdirector.dataplane.nfqueue import SKB_CSUM_NOT_READY, SKB_GSO
from localdirector.dataplane.packet import (checksum, reset_reply, rewrite,
                                            tcp_checksum_full, tcp_checksum_valid)
from localdirector.dataplane.plane import DataPlane
from localdirector.dataplane.ruleset import RulesError, desired_rules
from localdirector.dataplane.rulesync import RuleSync
from localdirector.dataplane.transactions import RuleManager
from localdirector.dataplane.worker import QueueWorker

Q7 = names(7)   # the chains of the appliance on queue 7, as these tests install


def sid(text: str) -> ServerId:
    return ServerId.parse(text)


class FakeIptables:
    """Records iptables-restore input. iptables-save lists the raw table as the restores
    so far made it, from empty built-in chains; or, for the whole listing, `saved` when
    given (leftovers, counters)."""

    def __init__(self, saved: str | None = None) -> None:
        self.saved = saved
        self.restored: list[str] = []
        self.ipset: list[list[str]] = []     # the ipset commands run, in order
        self.fail = False
        self.raw: dict[str, list[str]] = {"PREROUTING": [], "OUTPUT": []}

    def __call__(self, argv: list[str], stdin: str) -> str:
        if argv[0] == "ipset":
            self.ipset.append(argv)
            return ""
        if argv[0] == "iptables-save":
            if self.saved is not None and argv != ["iptables-save", "-t", "raw"]:
                return self.saved
            return "".join(["*raw\n", *(f":{chain} - [0:0]\n" for chain in self.raw),
                            *(rule + "\n" for rules in self.raw.values() for rule in rules),
                            "COMMIT\n"])
        assert argv == ["iptables-restore", "--noflush"]
        if self.fail:
            raise RulesError("iptables-restore --noflush failed: line 3 failed")
        self.restored.append(stdin)
        self._apply(stdin)
        return ""

    def _apply(self, text: str) -> None:
        table = ""
        for line in text.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif table == "raw" and line.startswith(":"):
                self.raw[line[1:].split()[0]] = []
            elif table == "raw" and line != "COMMIT":
                word, chain, rest = (line + " ").split(" ", 2)
                rules = self.raw.setdefault(chain, [])
                if word == "-A":
                    rules.append(line)
                elif word == "-I":
                    rules.insert(0, f"-A {chain} {rest.split(' ', 1)[1].strip()}")
                elif word == "-D" and f"-A {chain} {rest.strip()}" in rules:
                    rules.remove(f"-A {chain} {rest.strip()}")
                elif word == "-F":
                    rules.clear()
                elif word == "-X":
                    del self.raw[chain]


def director() -> Director:
    d = Director()
    with d.lock:
        for v in ("192.0.2.10:80:0", "192.0.2.10:80:1", "192.0.2.10:443", "192.0.2.20:0"):
            d.add_virtual(sid(v))
        for r in ("203.0.113.11:8001", "203.0.113.12", "203.0.113.13"):
            d.add_real(sid(r))
        d.bind(sid("192.0.2.10:80:0"), sid("203.0.113.12"))
        d.bind(sid("192.0.2.10:80:1"), sid("203.0.113.11:8001"))
        d.bind(sid("192.0.2.10:443"), sid("203.0.113.12"))
        d.bind(sid("192.0.2.20:0"), sid("203.0.113.13"))
    return d


def test_rules_cover_vips_and_the_reply_ports_of_bound_reals() -> None:
    assert raw_rules(desired_rules(director()), Q7) == [
        # Ahead of each VIP's queue rules, the SYN budget of new sources.
        *flood_rules(0xC000020A, Q7),
        "-A LOCALDIRECTOR7 -d 192.0.2.10/32 -p tcp -m tcp --dport 80 -j LOCALDIRECTOR7-QUEUE",
        "-A LOCALDIRECTOR7 -d 192.0.2.10/32 -p tcp -m tcp --dport 443 -j LOCALDIRECTOR7-QUEUE",
        "-A LOCALDIRECTOR7 -d 192.0.2.10/32 -p icmp -j LOCALDIRECTOR7-QUEUE",
        # Port 0 virtual: every TCP port.
        *flood_rules(0xC0000214, Q7),
        "-A LOCALDIRECTOR7 -d 192.0.2.20/32 -p tcp -j LOCALDIRECTOR7-QUEUE",
        "-A LOCALDIRECTOR7 -d 192.0.2.20/32 -p icmp -j LOCALDIRECTOR7-QUEUE",
        # Port-translating real: replies come from its own port.
        "-A LOCALDIRECTOR7 -s 203.0.113.11/32 -p tcp -m tcp --sport 8001 -j LOCALDIRECTOR7-REALQ",
        "-A LOCALDIRECTOR7 -s 203.0.113.11/32 -p icmp -j LOCALDIRECTOR7-REALQ",
        # Port 0 real answers on the port of each virtual it serves.
        "-A LOCALDIRECTOR7 -s 203.0.113.12/32 -p tcp -m tcp --sport 80 -j LOCALDIRECTOR7-REALQ",
        "-A LOCALDIRECTOR7 -s 203.0.113.12/32 -p tcp -m tcp --sport 443 -j LOCALDIRECTOR7-REALQ",
        "-A LOCALDIRECTOR7 -s 203.0.113.12/32 -p icmp -j LOCALDIRECTOR7-REALQ",
        "-A LOCALDIRECTOR7 -s 203.0.113.13/32 -p tcp -j LOCALDIRECTOR7-REALQ",
        "-A LOCALDIRECTOR7 -s 203.0.113.13/32 -p icmp -j LOCALDIRECTOR7-REALQ",
    ]


def test_an_unbound_backup_real_has_its_replies_queued() -> None:
    """`backup 203.0.113.12 203.0.113.14`: .14 is bound to nothing, yet takes .12's
    connections when .12 cannot, so its answers must reach the engine to be translated."""
    d = director()
    with d.lock:
        d.add_real(sid("203.0.113.14"))
        d.real(sid("203.0.113.12")).backup = sid("203.0.113.14")
        d.real(sid("203.0.113.14")).backup = sid("203.0.113.12")  # a loop ends the walk
    lines = raw_rules(desired_rules(d), Q7)
    assert "-A LOCALDIRECTOR7 -s 203.0.113.14/32 -p tcp -m tcp --sport 80 -j LOCALDIRECTOR7-REALQ" in lines
    assert "-A LOCALDIRECTOR7 -s 203.0.113.14/32 -p tcp -m tcp --sport 443 -j LOCALDIRECTOR7-REALQ" in lines


def test_live_connections_stay_queued_after_their_real_is_unbound() -> None:
    d = director()
    v, r = d.virtuals[sid("192.0.2.10:80:1")], d.reals[sid("203.0.113.11:8001")]
    with d.lock:
        d.conns.add(Connection(0xC6336402, 40000, v.addr, 80, v, r, time.monotonic()))
        d.remove_real(r.sid)
        d.remove_virtual(sid("192.0.2.10:443"))
    lines = raw_rules(desired_rules(d), Q7)
    assert any("-s 203.0.113.11/32 -p tcp -m tcp --sport 8001" in line for line in lines)
    assert not any("--dport 443" in line for line in lines)


def test_install_replaces_stale_chains_and_leaves_exactly_one_jump() -> None:
    fake = FakeIptables("*raw\n:PREROUTING ACCEPT [0:0]\n:LOCALDIRECTOR7 - [0:0]\n"
                        ":LOCALDIRECTOR7-QUEUE - [0:0]\n-A PREROUTING -j LOCALDIRECTOR7\n"
                        "-A PREROUTING -j LOCALDIRECTOR7\nCOMMIT\n")
    manager = RuleManager(7, fake)
    manager.install(desired_rules(director()))
    text = fake.restored[0].splitlines()
    assert text[:7] == [
        "*raw",
        ":LOCALDIRECTOR7 - [0:0]",
        ":LOCALDIRECTOR7-QUEUE - [0:0]",
        "-D PREROUTING -j LOCALDIRECTOR7",
        "-D PREROUTING -j LOCALDIRECTOR7",
        "-I PREROUTING 1 -j LOCALDIRECTOR7",
        "-A LOCALDIRECTOR7-QUEUE -j NOTRACK",
    ]
    assert text[7] == "-A LOCALDIRECTOR7-QUEUE -j NFQUEUE --queue-num 7 --queue-bypass"
    assert text[-1] == "COMMIT"


def test_a_failover_unit_queues_vip_traffic_without_bypass() -> None:
    """A unit of a pair fails closed: with its engine gone, its clients' packets are
    dropped, and their retransmissions reach the other unit (docs/design.rst)."""
    fake = FakeIptables()
    RuleManager(7, fake, bypass=False).install(desired_rules(director()))
    queue = [line for line in fake.restored[0].splitlines() if "-j NFQUEUE" in line]
    assert queue and not any("--queue-bypass" in line for line in queue)


def test_update_is_one_transaction_and_skipped_when_nothing_changed() -> None:
    fake = FakeIptables()
    manager = RuleManager(7, fake)
    d = director()
    manager.install(desired_rules(d))
    installed = len(fake.restored)  # the rules, then the defragmenter's own chain
    with d.lock:
        d.set_state(sid("192.0.2.10:443"), d.virtuals[sid("192.0.2.10:443")].state)
    assert manager.update(desired_rules(d)) is False
    with d.lock:
        d.remove_virtual(sid("192.0.2.20:0"))
    assert manager.update(desired_rules(d)) is True
    update = fake.restored[-1].splitlines()
    assert update[:2] == ["*raw", ":LOCALDIRECTOR7 - [0:0]"]
    assert not any("192.0.2.20" in line or "PREROUTING" in line for line in update)
    assert len(fake.restored) == installed + 1


def test_remove_takes_out_what_exists() -> None:
    fake = FakeIptables("*raw\n:LOCALDIRECTOR7 - [0:0]\n-A PREROUTING -j LOCALDIRECTOR7\n"
                        "COMMIT\n")
    RuleManager(7, fake).remove()
    assert fake.restored == ["*raw\n-D PREROUTING -j LOCALDIRECTOR7\n-F LOCALDIRECTOR7\n"
                             "-X LOCALDIRECTOR7\nCOMMIT\n"]
    clean = FakeIptables()
    RuleManager(7, clean).remove()
    assert clean.restored == []


def test_the_set_of_known_clients_is_there_before_the_rules_and_goes_after_them() -> None:
    """The flood rules match the ipset by name: iptables refuses a rule naming a set
    that does not exist, and ipset a set that a rule still uses."""
    fake, tools = FakeIptables(), []

    def runner(argv: list[str], stdin: str) -> str:
        if argv[0] != "iptables-save":
            tools.append(argv[0])
        return fake(argv, stdin)

    manager = RuleManager(7, runner)
    manager.install(desired_rules(director()))
    manager.remove()
    assert tools == ["ipset", "iptables-restore", "iptables-restore", "iptables-restore",
                     "ipset"]   # create; the rules, the defragmenter's chain; out; destroy
    create, destroy = known_set(names(7))
    assert fake.ipset == [create, destroy]
    assert create == ["ipset", "create", "ldknown7", "hash:ip", "family", "inet", "timeout",
                      "600", "maxelem", "262144", "-exist"]


def test_sync_thread_follows_changes_and_survives_refusals() -> None:
    fake = FakeIptables()
    d = director()
    sync = RuleSync(d, RuleManager(7, fake))
    sync.install()
    sync.start()
    try:
        fake.fail = True
        with d.lock:
            d.remove_virtual(sid("192.0.2.20:0"))
        deadline = time.monotonic() + 5
        while sync.errors == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sync.errors == 1 and sync.synced_generation < d.generation
        fake.fail = False
        with d.lock:
            d.remove_virtual(sid("192.0.2.10:443"))
        while sync.synced_generation < d.generation and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sync.synced_generation == d.generation
        assert "192.0.2.20" not in fake.restored[-1] and "443" not in fake.restored[-1]
    finally:
        sync.stop()
    assert not sync.is_alive()


def test_forwarding_problems_name_ip_forward_and_strict_rp_filter(tmp_path: Path) -> None:
    (tmp_path / "ip_forward").write_text("0\n")
    for iface, value in (("all", 0), ("default", 1), ("cli0", 1), ("br0", 2), ("lo", 0)):
        (tmp_path / "conf" / iface).mkdir(parents=True)
        (tmp_path / "conf" / iface / "rp_filter").write_text(f"{value}\n")
    problems = forwarding_problems(tmp_path)
    assert len(problems) == 2
    assert "ip_forward is 0" in problems[0]
    assert "strict rp_filter on cli0:" in problems[1]
    (tmp_path / "ip_forward").write_text("1\n")
    (tmp_path / "conf" / "cli0" / "rp_filter").write_text("0\n")
    assert forwarding_problems(tmp_path) == []


def test_queue_counters_come_from_our_line_of_proc(tmp_path: Path) -> None:
    proc = tmp_path / "nfnetlink_queue"
    proc.write_text("    3   1675     0 2  4016     0     0    40585  1\n"
                    "  107   1688    12 2  4016     5     9     1234  1\n")
    counters = read_queue_counters(107, proc)
    assert (counters.waiting, counters.queue_dropped, counters.user_dropped) == (12, 5, 9)
    assert read_queue_counters(4, proc) is None
    assert read_queue_counters(4, tmp_path / "missing") is None


@pytest.mark.parametrize("value", ["0", "2"])
def test_all_rp_filter_applies_to_every_interface(tmp_path: Path, value: str) -> None:
    (tmp_path / "ip_forward").write_text("1\n")
    (tmp_path / "conf" / "all").mkdir(parents=True)
    (tmp_path / "conf" / "all" / "rp_filter").write_text("1\n")
    (tmp_path / "conf" / "eth0").mkdir()
    (tmp_path / "conf" / "eth0" / "rp_filter").write_text(f"{value}\n")
    # The kernel uses max(all, interface): all=1 makes eth0 strict unless eth0 is 2.
    assert bool(forwarding_problems(tmp_path)) is (value == "0")


def test_a_data_plane_that_is_not_running_reports_idle_and_ignores_reloads() -> None:
    plane = DataPlane(director(), 7, iptables=FakeIptables())
    plane.adopt(Director())
    stats = plane.statistics()
    assert set(stats) == {
        "queue", "engine", "connections", "worker_errors", "tick_errors", "oversize",
        "verdict_errors", "gso_packets", "largest_packet",
        "socket_overruns", "log_overruns", "kernel", "ip_errors", "rule_counters", "marks",
        "conntrack_errors", "rule_transactions", "rule_errors", "rule_repairs",
        "rules_synced", "uptime",
        "reloads", "sticky"}
    assert (stats["queue"], stats["connections"], stats["reloads"]) == (7, 0, 0)
    assert (stats["rule_counters"], stats["rules_synced"], stats["uptime"]) == (None, False, 0.0)
    assert plane.clear_conns() == 0
    plane.stop()   # nothing to undo


# --------------------------------------------------------------------- worker verdicts


class FakeQueue:
    """The part of nfqueue.PacketQueue the worker gives verdicts through: records them
    by packet id, and refuses a second verdict for the same packet."""

    def __init__(self) -> None:
        self.verdicts: dict[int, tuple[str, bytes | None, int | None]] = {}

    def _give(self, packet_id: int, verdict: tuple[str, bytes | None, int | None]) -> None:
        assert packet_id not in self.verdicts, "second verdict for one packet"
        self.verdicts[packet_id] = verdict

    def accept(self, packet_id: int, payload: bytearray | None = None,
               mark: int | None = None) -> None:
        self._give(packet_id, ("accept", None if payload is None else bytes(payload), mark))

    def drop(self, packet_id: int) -> None:
        self._give(packet_id, ("drop", None, None))


class FakeEngine:
    def __init__(self, verdict: int, error: Exception | None = None) -> None:
        self.verdict = verdict
        self.error = error
        self.seen: list[bytes] = []

    def handle(self, buf: bytearray) -> int:
        self.seen.append(bytes(buf))
        if self.error is not None:
            raise self.error
        buf[16:20] = bytes((203, 0, 113, 12))  # "translate" the destination
        return self.verdict

    def tick(self) -> None:
        pass


def ip_packet(total_length: int, copied: int) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total_length, 0, 0, 64, 6, 0,
                         bytes((198, 51, 100, 2)), bytes((192, 0, 2, 10)))
    return header + bytes(copied - len(header))


class RewritingEngine(FakeEngine):
    """Translates the destination as the engine does, checksums updated incrementally."""

    def __init__(self) -> None:
        super().__init__(ACCEPT_MODIFIED)

    def handle(self, buf: bytearray) -> int:
        self.seen.append(bytes(buf))
        rewrite(buf, 20, 0xCB00710C, 8080, True)   # 203.0.113.12:8080
        return ACCEPT_MODIFIED


def give(worker: QueueWorker, payload: bytes, *, mark: int = 0, info: int = 0,
         packet_id: int = 1) -> tuple[str, bytes | None, int | None]:
    """One packet through the worker's verdict path; the verdict it gave."""
    queue = FakeQueue()
    worker._on_packet(queue, packet_id, bytearray(payload), mark, info)  # type: ignore[arg-type]
    return queue.verdicts[packet_id]


@pytest.mark.parametrize("verdict, expected", [(ACCEPT_MODIFIED, "accept"),
                                               (ACCEPT_UNCHANGED, "accept"), (DROP, "drop")])
def test_worker_gives_the_engines_verdict(verdict: int, expected: str) -> None:
    given, payload, mark = give(QueueWorker(5, FakeEngine(verdict)), ip_packet(60, 60))
    assert (given, mark) == (expected, None)
    if verdict == ACCEPT_MODIFIED:
        assert payload is not None and payload[16:20] == bytes((203, 0, 113, 12))
    else:
        assert payload is None  # nothing copied back when nothing changed


def test_worker_contains_engine_failures(caplog: pytest.LogCaptureFixture) -> None:
    worker = QueueWorker(5, FakeEngine(ACCEPT_MODIFIED, KeyError("bug")))
    with caplog.at_level(logging.ERROR, "localdirector"):
        verdicts = [give(worker, ip_packet(60, 60), packet_id=n)[0] for n in range(3)]
    assert verdicts == ["drop"] * 3
    assert worker.stats.errors == 3
    assert len(caplog.records) == 1  # logged once, then only counted


def test_worker_drops_what_it_cannot_hand_back_whole() -> None:
    """A packet longer than the copy range would be truncated by handing it back."""
    worker = QueueWorker(5, FakeEngine(ACCEPT_MODIFIED))
    assert give(worker, ip_packet(65535, 65531)) == ("drop", None, None)
    assert worker.stats.oversize == 1
    unchanged = QueueWorker(5, FakeEngine(ACCEPT_UNCHANGED))
    assert give(unchanged, ip_packet(65535, 65531))[0] == "accept"


def test_worker_hands_back_a_view_to_its_ip_total_length() -> None:
    """A long packet comes as a view of the receive buffer (nfqueue.LentBuffers), which
    cannot shrink: the RST the engine makes of it goes back as its first 40 bytes."""

    class Refusing(FakeEngine):
        def handle(self, buf: bytearray) -> int:
            reset_reply(buf, 20)
            return ACCEPT_MODIFIED

    received = bytearray(8) + tcp_segment(bytes(5000))
    queue = FakeQueue()
    QueueWorker(5, Refusing(ACCEPT_MODIFIED))._on_packet(
        queue, 1, memoryview(received)[8:], 0, 0)  # type: ignore[arg-type]
    given, payload, _ = queue.verdicts[1]
    assert given == "accept" and payload is not None and len(payload) == 40
    assert payload[33] == 0x04 and tcp_checksum_valid(bytearray(payload), 20)   # RST


def tcp_segment(data: bytes) -> bytearray:
    """198.51.100.2:40000 -> 192.0.2.10:80 carrying `data`, checksums complete."""
    total = 40 + len(data)
    buf = bytearray(struct.pack("!BBHHHBBH4s4sHHIIBBHHH", 0x45, 0, total, 0, 0x4000, 64, 6,
                                0, bytes((198, 51, 100, 2)), bytes((192, 0, 2, 10)), 40000,
                                80, 1, 1, 5 << 4, 0x18, 65535, 0, 0) + data)
    struct.pack_into("!H", buf, 10, checksum(buf[:20]))
    struct.pack_into("!H", buf, 36, tcp_checksum_full(buf, 20))
    return buf


def left_to_hardware(buf: bytearray) -> bytearray:
    """`buf` as a local stack queues it with CHECKSUM_PARTIAL: the TCP checksum field
    holds the folded pseudo-header sum (~tcp_v4_check(len, saddr, daddr, 0))."""
    partial = bytearray(buf)
    pseudo = buf[12:20] + struct.pack("!xBH", 6, len(buf) - 20)
    struct.pack_into("!H", partial, 36, 0xFFFF - checksum(pseudo))
    return partial


@pytest.mark.parametrize("length", [0, 1, 1448])
def test_worker_finishes_checksums_left_to_the_hardware(length: int) -> None:
    """The engine sees a complete checksum, so its SYN check and incremental updates
    hold, and the translated packet handed back carries a correct one."""
    whole = tcp_segment(bytes((7 + i) % 256 for i in range(length)))
    engine = RewritingEngine()
    _, payload, _ = give(QueueWorker(5, engine), left_to_hardware(whole),
                         info=SKB_CSUM_NOT_READY)
    assert engine.seen == [bytes(whole)]
    assert payload is not None and payload[16:20] == bytes((203, 0, 113, 12))
    assert tcp_checksum_valid(bytearray(payload), 20)


def test_worker_leaves_gso_checksums_to_the_kernel() -> None:
    """A GSO super-packet is not summed (the kernel recomputes its checksum when it
    segments it) and is counted, with the longest packet seen."""
    whole = tcp_segment(bytes(60000))
    partial = left_to_hardware(whole)
    engine = FakeEngine(ACCEPT_UNCHANGED)
    worker = QueueWorker(5, engine)
    give(worker, partial, info=SKB_CSUM_NOT_READY | SKB_GSO)
    give(worker, ip_packet(60, 60))
    assert engine.seen[0] == bytes(partial)
    assert (worker.stats.gso, worker.stats.largest) == (1, 60040)
