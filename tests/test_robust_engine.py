"""The engine's answers to misbehaving clients, servers and operators, one case at a time.

Malformed or nonsensical TCP never creates or changes state and is counted by name; a SYN
nothing can take is refused with a RST the client understands; `reload` keeps every
connection. Packets are built by scapy and every checksum the engine leaves is recomputed
by scapy (the FIG. 5 Lab of test_engine.py)."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP, IPOption_NOP
from scapy.packet import Raw
from test_engine import CLIENT, VIP, A, B, Lab, fig1, lab, sid

from localdirector.dataplane import packet as P
from localdirector.dataplane.engine import ACCEPT_MODIFIED, DROP
from localdirector.dataplane.expiry import LINGER
from localdirector.model.addr import format_ip, parse_ip
from localdirector.model.connection import ESTABLISHED, SYN_SENT, flow_key
from localdirector.model.director import Director
from localdirector.model.state import State

# name: (flags, dropped on an established connection too). Segments with no control
# flag ride the established fast path untested (the receiving TCP drops them): that
# path pays for no check. Everywhere else (no connection, a handshake or close in
# progress, any SYN/FIN/RST) they are dropped before they can change state.
BAD_COMBINATIONS = {"SYN+FIN": ("SF", True), "SYN+RST": ("SR", True),
                    "SYN+FIN+RST+ACK": ("SFRA", True), "FIN without ACK": ("F", True),
                    "no flags": ("", False), "PSH+URG only": ("PU", False)}


@pytest.mark.parametrize("flags, on_established", BAD_COMBINATIONS.values(),
                         ids=BAD_COMBINATIONS.keys())
def test_impossible_flag_combinations_are_dropped_by_name(flags: str,
                                                          on_established: bool) -> None:
    """Toward a VIP with no connection, during a handshake, and on a live connection from
    either side: a SYN+RST must not close a connection, a SYN+FIN must not open or
    half-close one."""
    lab_, _, _ = lab((A, B))
    assert lab_.client(flags, 41000)[0] == DROP
    assert lab_.drops("bad-flags") == 1 and len(lab_.d.conns) == 0
    half_open = lab_.syn(43000)
    assert lab_.client(flags, 43000)[0] == DROP and lab_.real(half_open, flags)[0] == DROP
    assert lab_.drops("bad-flags") == 3 and half_open.tcp_state is SYN_SENT
    conn = lab_.open(42000)
    verdicts = (lab_.client(flags, 42000)[0], lab_.real(conn, flags)[0])
    assert verdicts == ((DROP, DROP) if on_established else (ACCEPT_MODIFIED,) * 2)
    assert lab_.drops("bad-flags") == (5 if on_established else 3)
    assert conn.tcp_state is ESTABLISHED and not conn.bits
    assert lab_.client("PA", 42000, load=b"still here")[0] == ACCEPT_MODIFIED


def test_syn_with_a_bad_checksum_creates_nothing() -> None:
    lab_, v, _ = lab((A,))
    corrupt = bytearray(bytes(IP(src=CLIENT, dst=VIP) / TCP(sport=41000, dport=80,
                                                           flags="S", chksum=0x1234)))
    assert lab_.engine.handle(corrupt) == DROP
    assert lab_.drops("bad-checksum") == 1 and len(lab_.d.conns) == 0 and v.conns_total == 0
    conn = lab_.syn(41000)  # a retransmission with the checksum right opens it
    resend = bytearray(bytes(IP(src=CLIENT, dst=VIP) / TCP(sport=41000, dport=80, flags="S",
                                                          chksum=0x1234)))
    assert lab_.engine.handle(resend) == DROP and conn.syn_resends == 0
    assert lab_.drops("bad-checksum") == 2


def test_bad_checksums_on_established_traffic_travel_on_uncorrected() -> None:
    """Checking every segment would cost the fast path; the receiver discards it as it
    would have without us, so the error must survive translation exactly."""
    lab_, _, _ = lab((A,))
    lab_.open()
    pkt = IP(src=CLIENT, dst=VIP) / TCP(sport=40000, dport=80, flags="PA") / Raw(b"data")
    buf = bytearray(bytes(pkt))
    buf[-1] ^= 0xFF  # corrupted in flight, after the sender summed it
    assert lab_.engine.handle(buf) == ACCEPT_MODIFIED
    fields = P.parse_tcp(buf)
    assert fields[3] == parse_ip(A) and not P.tcp_checksum_valid(buf, fields[0])
    buf[-1] ^= 0xFF
    assert P.tcp_checksum_valid(buf, fields[0])  # exactly the sender's error, nothing more


def test_ip_options_and_first_fragments_are_translated_non_first_dropped() -> None:
    lab_, _, _ = lab((A,))
    options = IP(src=CLIENT, dst=VIP, options=[IPOption_NOP()] * 4)
    verdict, out = lab_.send(options / TCP(sport=41000, dport=80, flags="S"))
    assert verdict == ACCEPT_MODIFIED and out.ihl == 6 and out.dst == A
    first = IP(src=CLIENT, dst=VIP, flags="MF") / TCP(sport=41000, dport=80, flags="A")
    assert lab_.send(first / Raw(b"x" * 16))[1].dst == A
    # A first fragment cannot be checksummed (the rest of the segment is elsewhere):
    # not called `bad-checksum`, even when it opens the connection.
    whole = bytes(IP(src=CLIENT, dst=VIP) / TCP(sport=41001, dport=80, flags="S")
                  / Raw(b"y" * 40))
    fragment = bytearray(whole[:20 + 24])
    fragment[2:4], fragment[6] = (44).to_bytes(2, "big"), 0x20
    fragment[10:12] = b"\0\0"
    fragment[10:12] = P.checksum(fragment[:20]).to_bytes(2, "big")
    assert lab_.engine.handle(fragment) == ACCEPT_MODIFIED and lab_.drops("bad-checksum") == 0
    later = IP(src=CLIENT, dst=VIP, frag=3) / Raw(b"y" * 16)
    assert lab_.send(later)[0] == DROP and lab_.drops("fragment") == 1


def test_whole_pool_down_refuses_with_a_rst_at_once() -> None:
    """No real and no backup: the SYN comes back as the RST a closed port sends, from
    VIP:port, acknowledging the SYN and its data; counted as refused and as no-real."""
    lab_, v, (ra, rb) = lab((A, B))
    for real in (ra, rb):
        lab_.d.set_state(real.sid, State.OUT_OF_SERVICE)
    syn = (IP(src=CLIENT, dst=VIP, options=[IPOption_NOP()] * 4)
           / TCP(sport=41000, dport=80, flags="S", seq=7777, options=[("MSS", 1460)])
           / Raw(b"fastopen"))
    verdict, rst = lab_.send(syn)
    assert verdict == ACCEPT_MODIFIED
    assert (rst.src, rst.dst, rst.ihl, rst.len) == (VIP, CLIENT, 5, 40)
    assert (rst[TCP].sport, rst[TCP].dport, rst[TCP].flags) == (80, 41000, "RA")
    assert (rst[TCP].seq, rst[TCP].ack, rst[TCP].options) == (0, 7777 + 1 + 8, [])
    assert lab_.engine.stats.refused == 1 and lab_.drops("no-real") == 1
    assert v.no_real_drops == 1 and len(lab_.d.conns) == 0


def test_backup_virtual_takes_the_overflow_instead_of_a_refusal() -> None:
    lab_ = Lab(fig1())
    lab_.d.virtual(sid(f"{VIP}:80:1")).backup = sid(f"{VIP}:80:0")
    for real in ("203.0.113.14", "203.0.113.11:8001"):
        lab_.d.set_state(sid(real), State.FAILED)
    conn = lab_.syn(client="198.51.100.7")
    assert conn.virtual.sid == sid(f"{VIP}:80:0") and lab_.engine.stats.refused == 0
    # The unwelcome instance has no backup: refused.
    lab_.d.set_state(sid("203.0.113.15"), State.FAILED)
    verdict, rst = lab_.client("S", client="198.18.0.7")
    assert verdict == ACCEPT_MODIFIED and rst[TCP].flags == "RA"
    assert lab_.engine.stats.refused == 1


def test_unanswered_syns_with_nowhere_else_to_go_are_refused() -> None:
    """A lone real that never answers: after `reassign` retransmissions the client is
    refused instead of retransmitting for two minutes; the real's failure is counted."""
    lab_, v, (ra,) = lab((A,))
    conn = lab_.syn()
    for _ in range(ra.reassign - 1):
        assert lab_.client("S")[1].dst == A
    verdict, rst = lab_.client("S")
    assert verdict == ACCEPT_MODIFIED and (rst.src, rst[TCP].flags) == (VIP, "RA")
    assert ra.consecutive_fails == 1 and lab_.engine.stats.refused == 1
    lab_.advance(LINGER + 0.5)
    lab_.assert_idle()
    assert conn.real is ra


def test_reload_adopts_live_connections_with_exact_counts() -> None:
    """A connection whose virtual and real survive the reload moves onto the new
    objects; one whose virtual is gone keeps flowing on the old ones, and when it ends
    the rules are told (its VIP was kept queued for it alone)."""
    lab_ = Lab(fig1())
    kept = lab_.open(41000, client="198.19.0.4")
    orphan = lab_.open(41001, client="198.18.0.4")
    fresh = fig1()
    fresh.remove_virtual(sid(f"{VIP}:80:2"))
    generation = fresh.generation
    with lab_.d.lock, fresh.lock:
        fresh.lock = lab_.d.lock
        lab_.engine.adopt(fresh)
    old, lab_.d = lab_.d, fresh
    assert lab_.engine.director is fresh and len(fresh.conns) == 2 and len(old.conns) == 0
    new_virtual = fresh.virtual(sid(f"{VIP}:80:0"))
    assert kept.virtual is new_virtual and kept.real is fresh.real(kept.real.sid)
    assert (new_virtual.conns_current, new_virtual.conns_total) == (1, 0)
    assert kept.real.current_conns == 1 and orphan.virtual.conns_current == 1
    for conn in (kept, orphan):
        client = format_ip(conn.foreign_ip)
        verdict, out = lab_.client("PA", conn.foreign_port, client=client, load=b"later")
        assert verdict == ACCEPT_MODIFIED and out.dst == format_ip(conn.real_ip)
        lab_.close(conn)
    assert fresh.generation > generation  # the orphan's end asked for a rules resync
    lab_.assert_idle()
    assert orphan.virtual.conns_current == 0 and orphan.real.current_conns == 0


def test_conn_limit_bounds_the_table_and_counts() -> None:
    d = Director()
    v = d.add_virtual(sid(f"{VIP}:80"))
    d.add_real(sid(A))
    d.bind(v.sid, sid(A))
    d.settings.max_conns = 50
    lab_ = Lab(d)
    for port in range(1000, 1200):
        lab_.client("S", port)
    # A full table gives up its oldest half-open connections for new SYNs: bounded,
    # and every SYN got in (the evictions counted).
    assert len(d.conns) <= 50 and lab_.drops("conn-limit") == 0
    assert lab_.engine.stats.half_open_evicted == 200 - len(d.conns)
    assert all(c.tcp_state is SYN_SENT for c in d.conns)
    assert d.conns.inbound.get(flow_key(parse_ip(CLIENT), 1199, parse_ip(VIP), 80))
