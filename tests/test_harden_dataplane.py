"""Hardening of the engine against off-path attackers and floods (issue 15): crafted
packets through the engine with a fake clock. The same behaviours with real kernels and
real packets: tests/test_harden_netns.py."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP
from test_engine import CLIENT, VIP, Lab, lab

from localdirector.dataplane.engine import ACCEPT_MODIFIED, DROP
from localdirector.dataplane.tcp import SEQ_WINDOW
from localdirector.model.connection import CLOSED, ESTABLISHED, FIN_WAIT
from localdirector.model.addr import format_ip


def client_packet(flags: str, seq: int, cport: int = 40000) -> IP:
    return IP(src=CLIENT, dst=VIP) / TCP(sport=cport, dport=80, flags=flags,
                                        seq=seq & 0xFFFFFFFF, ack=5001)


def real_packet(lab_: Lab, flags: str, seq: int) -> IP:
    conn = lab_.conn()
    return IP(src=format_ip(conn.real_ip), dst=CLIENT) / TCP(
        sport=conn.real_port, dport=conn.nat_port, flags=flags, seq=seq, ack=1001)


# -- 1. blind resets ---------------------------------------------------------------------
# Lab's handshake leaves the real expecting the client's sequence 1001 and the client
# expecting the real's 5001.

@pytest.mark.parametrize("flags", ["R", "RA"])
def test_a_blind_client_rst_sweep_leaves_the_connection_alone(flags: str) -> None:
    lab_, _v, _rs = lab()
    conn = lab_.open()
    for seq in (0, 1000, 1002, 1001 + SEQ_WINDOW - 1, 1001 + SEQ_WINDOW, 0x80000000,
                1001 - 1):
        verdict, _ = lab_.send(client_packet(flags, seq))
        assert verdict == DROP, seq
    assert conn.tcp_state is ESTABLISHED
    assert lab_.drops("rst-in-window") == 2 and lab_.drops("out-of-window") == 5
    verdict, out = lab_.send(client_packet(flags, 1001))
    assert verdict == ACCEPT_MODIFIED and out[TCP].flags.R
    assert conn.tcp_state is CLOSED


def test_a_blind_rst_from_the_real_side_is_dropped_an_exact_one_closes() -> None:
    lab_, _v, _rs = lab()
    conn = lab_.open()
    assert lab_.send(real_packet(lab_, "R", 4000))[0] == DROP
    assert lab_.send(real_packet(lab_, "R", 5002))[0] == DROP
    assert conn.tcp_state is ESTABLISHED
    assert (lab_.drops("out-of-window"), lab_.drops("rst-in-window")) == (1, 1)
    assert lab_.send(real_packet(lab_, "RA", 5001))[0] == ACCEPT_MODIFIED
    assert conn.tcp_state is CLOSED


def test_the_expected_sequence_follows_the_acknowledgments() -> None:
    """The real acknowledges 100 more bytes: the client's exact RST moves with it."""
    lab_, _v, _rs = lab()
    conn = lab_.open()
    moved = real_packet(lab_, "A", 5001)
    moved[TCP].ack = 1101
    assert lab_.send(moved)[0] == ACCEPT_MODIFIED
    assert conn.ack_out == 1101
    assert lab_.send(client_packet("R", 1001))[0] == DROP
    assert lab_.send(client_packet("R", 1101))[0] == ACCEPT_MODIFIED
    assert conn.tcp_state is CLOSED


def test_a_fin_is_taken_in_window_either_side_and_dropped_outside() -> None:
    lab_, _v, _rs = lab()
    conn = lab_.open()
    assert lab_.send(client_packet("FA", 1001 + SEQ_WINDOW))[0] == DROP
    assert lab_.send(client_packet("FA", 1001 - SEQ_WINDOW - 1))[0] == DROP
    assert conn.tcp_state is ESTABLISHED and lab_.drops("out-of-window") == 2
    assert lab_.send(client_packet("FA", 1001 + 1448))[0] == ACCEPT_MODIFIED
    assert conn.tcp_state is FIN_WAIT
    assert lab_.send(client_packet("FA", 1001 + 1448))[0] == ACCEPT_MODIFIED  # resent


def test_rst_to_a_syn_is_not_sequence_checked() -> None:
    """Before the real answered there is nothing to check against: its RST refuses the
    SYN and moves the connection to the other real (absorbed)."""
    lab_, _v, _rs = lab()
    conn = lab_.syn()
    first = conn.real
    refusal = IP(src=format_ip(conn.real_ip), dst=CLIENT) / TCP(
        sport=conn.real_port, dport=conn.nat_port, flags="RA", seq=0, ack=1001)
    assert lab_.send(refusal)[0] == DROP
    assert lab_.drops("reset-absorbed") == 1 and conn.real is not first


# -- 3. the sticky table ---------------------------------------------------------------

def test_sticky_lasts_the_minutes_after_the_last_connection_closed() -> None:
    """A client with a connection open longer than `sticky` keeps its real when it
    connects again right after; the entry goes `sticky` minutes after that close."""
    lab_, v, _rs = lab(predictor="roundrobin")
    v.sticky = 1
    conn = lab_.open(41000)
    first = conn.real
    lab_.advance(120)                 # open twice the sticky minutes
    lab_.close(conn)
    assert lab_.open(41001).real is first   # the close renewed it
    lab_.close(lab_.conn(41001))
    lab_.advance(59)
    assert v.sticky_table
    lab_.advance(2)
    assert not v.sticky_table         # a minute after the last close


def test_the_sticky_table_is_bounded_counted_and_logged(monkeypatch, caplog) -> None:
    from localdirector.dataplane import engine as engine_module
    from localdirector.model import predictors
    monkeypatch.setattr(predictors, "STICKY_LIMIT", 10)
    monkeypatch.setattr(engine_module, "STICKY_LIMIT", 10)
    lab_, v, _rs = lab()
    v.sticky = 5
    for host in range(1, 26):
        lab_.syn(client=f"198.18.0.{host}")
    assert len(v.sticky_table) == 10 and v.sticky_full == 15
    assert len(lab_.d.conns) == 25          # balanced all the same
    with caplog.at_level("WARNING", logger="localdirector"):
        lab_.advance(1)
        lab_.syn(client="198.18.1.1")
        lab_.advance(1)                     # within the minute: not logged again
    assert [r.getMessage() for r in caplog.records] == [
        "sticky table full (10 clients per virtual): 15 new clients balanced without "
        "being remembered"]


def test_no_sticky_frees_the_table() -> None:
    lab_, v, _rs = lab()
    v.sticky = 5
    for host in range(1, 6):
        lab_.syn(client=f"198.18.0.{host}")
    assert len(v.sticky_table) == 5
    lab_.d.set_option(v.sid, "sticky", 0)
    assert v.sticky_table == {}
    lab_.d.set_option(v.sid, "sticky", 5)
    assert lab_.syn(client="198.18.0.9") and len(v.sticky_table) == 1


# -- 10. lost netfilter rules --------------------------------------------------------------

def test_rules_lost_from_the_raw_table_are_found_and_reinstalled() -> None:
    from test_dataplane_service import FakeIptables, director

    from localdirector.dataplane.ruleset import desired_rules
    from localdirector.dataplane.transactions import RuleManager
    fake = FakeIptables()
    manager = RuleManager(7, fake)
    manager.install(desired_rules(director()))
    assert manager.intact() and not manager.repair()
    installed = {chain: list(rules) for chain, rules in fake.raw.items()}
    fake.raw["LOCALDIRECTOR7"].clear()                   # `iptables -t raw -F ...`
    assert not manager.intact()
    assert manager.repair() and manager.repairs == 1
    assert fake.raw == installed and manager.intact()
    fake.raw["PREROUTING"].clear()                       # the jump alone
    assert manager.repair() and manager.repairs == 2 and fake.raw == installed
    other = RuleManager(8, fake)                         # another appliance's chains
    other.install(desired_rules(director()))
    assert manager.intact() and other.intact()
    assert all(chain.startswith("LOCALDIRECTOR8") for chain in set(fake.raw) - set(installed)
               if chain not in ("PREROUTING", "OUTPUT"))


# -- 9. a full table -------------------------------------------------------------------------

def test_a_full_table_gives_up_its_oldest_half_open_connections_never_established() -> None:
    lab_, _v, _rs = lab()
    lab_.d.set_conn_limit(10)
    established = [lab_.open(41000 + i) for i in range(4)]
    lab_.advance(1)
    flood = [lab_.syn(client=f"198.18.0.{host}") for host in range(1, 7)]   # full now
    lab_.advance(1)
    newcomer = lab_.syn(client="198.51.100.99")   # room made: the oldest half-open went
    evicted = lab_.engine.stats.half_open_evicted
    assert 1 <= evicted <= 6 and len(lab_.d.conns) == 10 - evicted + 1
    assert all(lab_.conn(41000 + i) is conn for i, conn in enumerate(established))
    assert lab_.conn(client="198.51.100.99") is newcomer
    gone = [conn for conn in flood if lab_.conn(client=format_ip(conn.foreign_ip)) is None]
    assert gone == flood[:evicted]                 # oldest first
    assert lab_.drops("conn-limit") == 0
    # Only established connections left: the table refuses (and counts) new SYNs.
    lab_.d.set_conn_limit(len(lab_.d.conns))
    for conn in flood[evicted:] + [newcomer]:
        assert lab_.real(conn, "SA")[0] == ACCEPT_MODIFIED
        lab_.send(IP(src=format_ip(conn.foreign_ip), dst=VIP) / TCP(
            sport=conn.foreign_port, dport=80, flags="A", seq=1001, ack=5001))
    assert lab_.client("S", client="198.51.100.100")[0] == DROP
    assert lab_.drops("conn-limit") == 1
    assert lab_.engine.stats.half_open_evicted == evicted
    assert not any(c.tcp_state is CLOSED for c in lab_.d.conns)
