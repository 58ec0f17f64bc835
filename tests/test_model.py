"""Object model: Bind ID longest-prefix selection, predictors, backups, exact counts."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings, strategies as st

from localdirector.model import bindid
from localdirector.model.addr import format_ip, parse_ip, parse_mask, prefix_mask
from localdirector.model.connection import Connection
from localdirector.model.director import Director, ModelError
from localdirector.model.health import available
from localdirector.model.options import REAL_OPTIONS, VIRTUAL_OPTIONS
from localdirector.model.passwords import hash_password
from localdirector.model.predictors import PREDICTORS
from localdirector.model.real import PhysicalMachine
from localdirector.model.serverid import ServerId
from localdirector.model.settings import AccessEntry
from localdirector.model.state import State
from localdirector.model.virtual import VirtualMachine

VIP = parse_ip("192.0.2.10")


def sid(text: str) -> ServerId:
    return ServerId.parse(text)


def fig1() -> Director:
    d = Director()
    for v in ("192.0.2.10:80:0", "192.0.2.10:80:1", "192.0.2.10:80:2"):
        d.add_virtual(sid(v))
    for r in ("203.0.113.12", "203.0.113.13", "203.0.113.14", "203.0.113.11:8001",
              "203.0.113.15"):
        d.add_real(sid(r))
    for v, r in (("0", "203.0.113.12"), ("0", "203.0.113.13"), ("1", "203.0.113.14"),
                 ("1", "203.0.113.11:8001"), ("2", "203.0.113.15")):
        d.bind(sid(f"192.0.2.10:80:{v}"), sid(r))
    d.assign(sid("192.0.2.10:80:1"), parse_ip("198.51.100.0"), 24)
    d.assign(sid("192.0.2.10:80:2"), parse_ip("198.18.0.0"), 24)
    return d


def test_serverid_parse_and_format() -> None:
    assert str(sid("192.0.2.10")) == "192.0.2.10:0:0:tcp"
    assert str(sid("192.0.2.10:80:1:tcp")) == "192.0.2.10:80:1:tcp"
    assert sid("192.0.2.10:80").format({VIP: "web"}) == "web:80:0:tcp"
    assert ServerId.parse("web:80", {"web": VIP}).addr == VIP
    for bad in ("192.0.2.300", "192.0.2.10:70000", "192.0.2.10:80:x", "192.0.2.10:80:0:sctp",
                "1.2.3", ""):
        with pytest.raises(ValueError):
            sid(bad)


def test_mask_parsing() -> None:
    assert parse_mask("255.255.255.0") == 24
    assert parse_mask("0.0.0.0") == 0
    assert parse_mask("255.255.255.255") == 32
    with pytest.raises(ValueError):
        parse_mask("255.0.255.0")


def test_fig1_instances_by_client_address() -> None:
    d = fig1()
    for client, bind, reals in (("198.51.100.7", 1, {"203.0.113.14", "203.0.113.11"}),
                                ("198.18.0.9", 2, {"203.0.113.15"}),
                                ("198.19.0.5", 0, {"203.0.113.12", "203.0.113.13"})):
        decision = d.decide(parse_ip(client), VIP, 80, 0.0, commit=False)
        assert decision.virtual is not None and decision.real is not None
        assert decision.virtual.bind_id == bind
        assert format_ip(decision.real.addr) in reals


def test_assign_requires_existing_nonzero_bind_instance() -> None:
    d = fig1()
    before = len(d.bindids)
    with pytest.raises(ModelError, match="Bind ID 0"):
        d.assign(sid("192.0.2.10:80:0"), parse_ip("198.51.100.0"), 24)
    with pytest.raises(ModelError, match="does not exist"):
        d.assign(sid("192.0.2.10:80:7"), parse_ip("198.51.100.0"), 24)
    assert len(d.bindids) == before


def test_longest_prefix_wins_and_assigning_a_network_again_moves_it() -> None:
    d = fig1()
    d.add_virtual(sid("192.0.2.10:80:3"))
    d.bind(sid("192.0.2.10:80:3"), sid("203.0.113.13"))
    # A /32 inside the preferred /24 is more specific: it wins.
    assert d.assign(sid("192.0.2.10:80:3"), parse_ip("198.51.100.7"), 32) is None
    assert d.lookup_virtual(parse_ip("198.51.100.7"), VIP, 80).bind_id == 3
    assert d.lookup_virtual(parse_ip("198.51.100.8"), VIP, 80).bind_id == 1
    # The same network for the same VIP:port again: it moves (patent ¶8).
    moved = d.assign(sid("192.0.2.10:80:3"), parse_ip("198.18.0.0"), 24)
    assert moved is d.virtuals[sid("192.0.2.10:80:2")]
    assert d.lookup_virtual(parse_ip("198.18.0.9"), VIP, 80).bind_id == 3
    assert [(o.virtual.bind_id, o.prefixlen) for o in d.bindids
            if o.client_ip == parse_ip("198.18.0.0")] == [(3, 24)]


def test_remembered_bind_id_answers_follow_every_assign_change(monkeypatch) -> None:
    """lookup remembers each client's answer (bindid.MEMO_LIMIT); an assign, an unassign
    and the removal of an instance are all seen by the very next lookup, and a flood of
    clients never grows the memory past its limit."""
    d = fig1()
    client = parse_ip("198.51.100.7")
    assert d.lookup_virtual(client, VIP, 80).bind_id == 1          # remembered now
    d.add_virtual(sid("192.0.2.10:80:3"))
    d.assign(sid("192.0.2.10:80:3"), client, 32)
    assert d.lookup_virtual(client, VIP, 80).bind_id == 3
    d.unassign(sid("192.0.2.10:80:3"), client, 32)
    assert d.lookup_virtual(client, VIP, 80).bind_id == 1
    d.remove_virtual(sid("192.0.2.10:80:1"))
    assert d.lookup_virtual(client, VIP, 80).bind_id == 0
    stranger = parse_ip("198.19.0.5")                                # remembered: none
    assert d.lookup_virtual(stranger, VIP, 80).bind_id == 0
    d.assign(sid("192.0.2.10:80:2"), stranger, 32)
    assert d.lookup_virtual(stranger, VIP, 80).bind_id == 2
    monkeypatch.setattr(bindid, "MEMO_LIMIT", 8)
    for host in range(1, 40):
        expected = 2 if host < 8 else 0
        addr = parse_ip(f"198.18.0.{host}") if host < 8 else parse_ip(f"198.19.1.{host}")
        assert d.lookup_virtual(addr, VIP, 80).bind_id == expected
        assert len(d.bindids._memo) <= 8


def test_exact_port_instance_beats_all_ports_instance_for_equal_prefixes() -> None:
    """As for Bind ID 0: `:80:2` before `:0:1` for a client assigned to both, whatever
    the order they were configured in; a longer prefix still wins first."""
    d = fig1()
    d.add_virtual(sid("192.0.2.10:0:5"))
    d.bind(sid("192.0.2.10:0:5"), sid("203.0.113.13"))
    net = parse_ip("198.51.100.0")
    d.assign(sid("192.0.2.10:0:5"), net, 24)      # configured after the :80:1 one
    assert d.lookup_virtual(parse_ip("198.51.100.9"), VIP, 80).bind_id == 1
    assert d.lookup_virtual(parse_ip("198.51.100.9"), VIP, 443).bind_id == 5
    d.unassign(sid("192.0.2.10:80:1"), net, 24)
    d.assign(sid("192.0.2.10:80:1"), net, 24)     # now configured after the :0:5 one
    assert d.lookup_virtual(parse_ip("198.51.100.9"), VIP, 80).bind_id == 1
    assert d.assign(sid("192.0.2.10:0:5"), parse_ip("198.51.100.9"), 32) is None
    assert d.lookup_virtual(parse_ip("198.51.100.9"), VIP, 80).bind_id == 5


def test_retyping_a_server_without_a_state_changes_nothing() -> None:
    d = fig1()
    r13, v2 = sid("203.0.113.13"), sid("192.0.2.10:80:2")
    d.add_real(r13, State.OUT_OF_SERVICE)
    d.add_virtual(v2, State.OUT_OF_SERVICE)
    generation = d.generation
    d.add_real(r13)
    d.add_virtual(v2)
    assert d.reals[r13].state is State.OUT_OF_SERVICE
    assert d.virtuals[v2].state is State.OUT_OF_SERVICE
    assert d.generation == generation
    failed = d.reals[sid("203.0.113.12")]
    failed.state = State.FAILED                   # passive detection failed it
    d.add_real(failed.sid)
    assert failed.state is State.FAILED           # not back in service, no TESTING skipped
    d.add_real(failed.sid, State.IN_SERVICE)      # the operator's word does
    assert failed.state is State.IN_SERVICE


def test_virtual_state_is_what_a_client_would_get() -> None:
    """FAILED only when nothing it could send a client to serves: not while a backup
    real or a backup virtual does, nor when the operator drained the reals."""
    d = fig1()
    d.set_backup(sid("192.0.2.10:80:1"), sid("192.0.2.10:80:0"))
    v1 = d.virtuals[sid("192.0.2.10:80:1")]       # reals .14 and .11:8001, backup :80:0
    for r in ("203.0.113.14", "203.0.113.11:8001"):
        d.reals[sid(r)].state = State.FAILED
    assert d.virtual_state(v1) == "IS"            # the backup virtual serves
    for r in ("203.0.113.12", "203.0.113.13"):
        d.reals[sid(r)].state = State.FAILED
    assert d.virtual_state(v1) == "FAILED"
    d.set_backup(sid("203.0.113.14"), sid("203.0.113.15"))
    assert d.virtual_state(v1) == "IS"            # a backup real serves
    v2 = d.virtuals[sid("192.0.2.10:80:2")]
    d.set_state(sid("203.0.113.15"), State.OUT_OF_SERVICE)
    assert d.virtual_state(v2) == "IS"            # drained by the operator, not failed
    assert d.virtual_state(v1) == "FAILED"


def test_bind_instance_must_match_destination_port() -> None:
    d = fig1()
    d.add_virtual(sid("192.0.2.10:443:0"))
    # The preferred instance is for port 80; on 443 the client gets the general one.
    assert d.lookup_virtual(parse_ip("198.51.100.7"), VIP, 443).sid == sid("192.0.2.10:443:0")
    assert d.lookup_virtual(parse_ip("198.51.100.7"), VIP, 22) is None


def test_lpm_index_agrees_with_a_scan_on_100k_entries() -> None:
    d = Director()
    rng = random.Random(7)
    instances = [d.add_virtual(sid(f"192.0.2.10:80:{b}")) for b in range(1, 6)]
    entries: dict[tuple[int, int], object] = {}   # configuration order, as the table's
    for _ in range(100_000):
        plen = rng.choice((16, 20, 24, 28, 32))
        net = (0xC6120000 | rng.getrandbits(17)) & prefix_mask(plen)  # 198.18.0.0/15
        v = rng.choice(instances)
        if d.bindids.find(v, net, plen) is None:
            d.assign(v.sid, net, plen)   # moves the network from another instance
            entries.pop((net, plen), None)
            entries[net, plen] = v
    assert len(d.bindids) == len(entries)
    for _ in range(300):
        src = 0xC6120000 | rng.getrandbits(17)
        best = None
        for (net, plen), v in entries.items():  # reference: scan in configuration order
            if src & prefix_mask(plen) == net and (best is None or plen > best[1]):
                best = (net, plen, v)
        found = d.bindids.lookup(src, VIP, 80)
        assert (found.virtual if found else None) is (best[2] if best else None)


def test_roundrobin_exact_and_what_if_does_not_advance() -> None:
    d = fig1()
    v = d.virtual(sid("192.0.2.10:80:0"))
    v.predictor = "roundrobin"
    src = parse_ip("198.19.0.5")
    d.decide(src, VIP, 80, 0.0, commit=False)
    picks = [format_ip(d.decide(src, VIP, 80, 0.0).real.addr) for _ in range(6)]
    assert picks == ["203.0.113.12", "203.0.113.13"] * 3


def test_weighted_smooth_three_to_one() -> None:
    d = fig1()
    v = d.virtual(sid("192.0.2.10:80:0"))
    v.predictor = "weighted"
    d.real(sid("203.0.113.12")).weight = 3
    picks = [format_ip(d.decide(parse_ip("198.19.0.5"), VIP, 80, 0.0).real.addr)
             for _ in range(8)]
    assert picks.count("203.0.113.12") == 6 and picks.count("203.0.113.13") == 2
    assert picks[:4] != ["203.0.113.12"] * 3 + ["203.0.113.13"]  # interleaved, not bursts


def test_backup_virtual_overflow_and_backup_real() -> None:
    d = fig1()
    d.set_backup(sid("192.0.2.10:80:1"), sid("192.0.2.10:80:0"))
    for r in ("203.0.113.14", "203.0.113.11:8001"):
        d.set_state(sid(r), State.OUT_OF_SERVICE)
    decision = d.decide(parse_ip("198.51.100.7"), VIP, 80, 0.0, commit=False)
    assert decision.virtual.bind_id == 1 and decision.served_by.bind_id == 0
    # Unwelcome pool: its only real fails, its backup real takes over.
    d.set_backup(sid("203.0.113.15"), sid("203.0.113.13"))
    d.set_state(sid("203.0.113.15"), State.OUT_OF_SERVICE)
    decision = d.decide(parse_ip("198.18.0.9"), VIP, 80, 0.0, commit=False)
    assert format_ip(decision.real.addr) == "203.0.113.13"


def test_failure_threshold_retry_testing_and_recovery(caplog) -> None:
    d = fig1()
    r = d.real(sid("203.0.113.15"))
    d.set_option(r.sid, "threshold", 2)
    d.set_option(r.sid, "retry", 5)
    d.note_failure(r, 10.0)
    assert r.state is State.IN_SERVICE
    d.note_failure(r, 11.0)
    assert r.state is State.FAILED and "FAILED" in caplog.text
    assert d.decide(parse_ip("198.18.0.9"), VIP, 80, 12.0).real is None
    d.tick(15.0)
    assert r.state is State.FAILED
    d.tick(16.0)
    assert r.state is State.TESTING and available(r)
    r.testing = True  # the data plane sends it the probe connection
    assert not available(r)
    d.note_answer(r)
    assert r.state is State.IN_SERVICE


def test_backup_chain_visits_each_server_once() -> None:
    d = fig1()
    a, b, c = (sid(f"203.0.113.1{n}") for n in (2, 3, 4))
    d.set_backup(a, b)
    d.set_backup(b, c)
    d.set_backup(c, a)   # a loop ends the walk
    assert [r.sid for r in d.backup_chain(d.real(b))] == [b, c, a]
    d.remove_real(c)     # and so does an id naming nothing
    assert [r.sid for r in d.backup_chain(d.real(a))] == [a, b]
    for primary, backup, error in ((a, a, "its own backup"), (a, sid("192.0.2.10:80:0"),
                                   "does not exist"), (sid("192.0.2.99"), a, "no virtual")):
        with pytest.raises(ModelError, match=error):
            d.set_backup(primary, backup)


def test_options_are_declared_and_checked_by_the_model() -> None:
    d = fig1()
    v, r = sid("192.0.2.10:80:0"), sid("203.0.113.12")
    fresh_real, fresh_virtual = PhysicalMachine(r), VirtualMachine(v)
    for name, option in REAL_OPTIONS.items():
        assert getattr(fresh_real, name) == option.default
    for name, option in VIRTUAL_OPTIONS.items():
        assert getattr(fresh_virtual, name) == option.default
    assert VIRTUAL_OPTIONS["predictor"].choices == tuple(PREDICTORS) == (
        "leastconns", "roundrobin", "weighted", "fastest", "maglev")
    d.set_option(r, "weight", 3)
    d.set_option(v, "predictor", "weighted")
    assert d.changed_options("weight") == [(r, 3)]
    assert d.changed_options("predictor") == [(v, "weighted")]
    d.set_option(r, "weight", REAL_OPTIONS["weight"].default)
    assert d.changed_options("weight") == []
    d.set_option(r, "reassign", 0)                    # 0: no count of silence
    assert d.changed_options("reassign") == [(r, 0)]
    for target, name, value, error in ((r, "weight", 0, "weight out of range 1-1000"),
                                       (r, "reassign", 101, "reassign out of range 0-100"),
                                       (v, "predictor", "random", "unknown predictor"),
                                       (sid("203.0.113.99"), "weight", 2,
                                        "real .* does not exist"),
                                       (r, "colour", 2, "no server setting")):
        with pytest.raises(ModelError, match=error):
            d.set_option(target, name, value)


def test_a_virtual_id_stands_for_its_reals_in_real_settings() -> None:
    """LocalDirector's rule (issue 27 item 2): `retry VIRTUAL 30` sets every bound
    real's retry; `maxconns VIRTUAL N` is the virtual's own limit."""
    d = fig1()
    v = sid("192.0.2.10:80:0")
    bound = [link.real for link in d.virtuals[v].iter_links()]
    assert len(bound) > 1
    d.set_option(v, "retry", 30)
    assert [r.retry for r in bound] == [30] * len(bound)
    assert d.changed_options("retry") == [(r.sid, 30) for r in bound]
    d.set_option(v, "maxconns", 7)
    assert d.virtuals[v].maxconns == 7 and all(r.maxconns == 0 for r in bound)
    assert (v, 7) in d.changed_options("maxconns")
    virtual = d.virtuals[v]
    assert d.decide_for(virtual, 1, 0.0, commit=False).real is not None
    virtual.conns_current = 7            # at its limit: no real (no backup virtual)
    assert d.decide_for(virtual, 1, 0.0, commit=False).real is None


def test_the_model_keeps_fast_path_groups_unmixed() -> None:
    d = fig1()
    other, lone = d.add_virtual(sid("192.0.2.20:80")), sid("203.0.113.16")
    d.add_real(lone)
    d.bind(other.sid, lone)
    assert d.set_fastpath(sid("192.0.2.10:80:0"), True) == list(d.virtuals.values())[:3]
    with pytest.raises(ModelError, match="is on the fast path and 192.0.2.20"):
        d.bind(other.sid, lone, sid("203.0.113.12"))   # shares a fast real: refused whole
    assert [link.real.sid for link in other.iter_links()] == [lone]
    with pytest.raises(ModelError, match="is on the fast path"):
        d.set_backup(other.sid, sid("192.0.2.10:80:0"))
    assert other.backup is None
    joined = d.add_virtual(sid("192.0.2.10:80:3"))   # one more instance of the VIP:port
    assert joined.fastpath and d.fastpath_peers(joined)[0].sid == sid("192.0.2.10:80:0")
    d.conns.add(Connection(parse_ip("198.51.100.7"), 40000, VIP, 80, joined,
                           d.real(lone), 0.0))
    with pytest.raises(ModelError, match="1 open connection on 192.0.2.10:80:0:tcp and"):
        d.set_fastpath(sid("192.0.2.10:80:0"), False)
    assert joined.fastpath


def test_appliance_settings_through_the_director() -> None:
    d = Director()
    with pytest.raises(ModelError, match="not a password hash"):
        d.set_enable_secret("clear-text")
    d.set_login_secret(stored := hash_password("pw"))
    assert d.settings.login_secret == stored
    d.add_access("ssh", parse_ip("198.51.100.77"), 24)
    d.add_access("ssh", parse_ip("198.51.100.0"), 24)    # listed once
    assert d.settings.access("ssh") == [AccessEntry(parse_ip("198.51.100.0"), 24)]
    assert d.client_matches(d.settings.access("ssh"), parse_ip("198.51.100.9"))
    with pytest.raises(ModelError, match="no telnet entry 198.51.100.0 255.255.255.0"):
        d.remove_access("telnet", parse_ip("198.51.100.0"), 24)
    d.set_session_timeout(2, 30)
    assert d.settings.idle_seconds == 150
    with pytest.raises(ModelError, match="at least 1"):
        d.set_conn_limit(0)


def test_connection_table_counts_exact_through_move() -> None:
    d = fig1()
    v = d.virtual(sid("192.0.2.10:80:0"))
    a, b = d.real(sid("203.0.113.12")), d.real(sid("203.0.113.13"))
    conns = [Connection(parse_ip("198.19.0.5"), 40000 + i, VIP, 80, v, a, 0.0) for i in range(5)]
    for c in conns:
        d.conns.add(c)
    d.conns.move(conns[0], b)
    assert (a.current_conns, b.current_conns, v.conns_current, v.conns_total) == (4, 1, 5, 5)
    assert d.conns.reply[conns[0].reply_key()] is conns[0]
    for c in conns:
        d.conns.remove(c)
        d.conns.remove(c)  # idempotent: a double close never goes negative
    assert (a.current_conns, b.current_conns, v.conns_current) == (0, 0, 0)
    assert not d.conns.inbound and not d.conns.reply


def test_removing_a_virtual_drops_its_assigns_and_indexes() -> None:
    d = fig1()
    d.remove_virtual(sid("192.0.2.10:80:1"))
    assert len(d.bindids) == 1
    assert d.lookup_virtual(parse_ip("198.51.100.7"), VIP, 80).bind_id == 0
    d.remove_virtual(sid("192.0.2.10:80:0"))
    d.remove_virtual(sid("192.0.2.10:80:2"))
    assert d.by_dest == {} and len(d.bindids) == 0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 7), max_size=12))
def test_unassign_in_any_order_keeps_the_list_in_configured_order(removals: list[int]) -> None:
    """The Bind ID list is doubly linked so removal is O(1): head, middle and tail
    removals, repeated ones included, leave the others in configured order, linked both
    ways, and the lookups right."""
    d = Director()
    v = d.add_virtual(sid("192.0.2.10:80:1"))
    nets = [parse_ip(f"198.51.100.{8 * i}") for i in range(8)]
    for net in nets:
        d.assign(v.sid, net, 29)
    left = list(nets)
    for i in removals:
        if nets[i] in left:
            d.unassign(v.sid, nets[i], 29)
            left.remove(nets[i])
    objs = list(d.bindids)
    assert [o.client_ip for o in objs] == left and len(d.bindids) == len(left)
    assert [o.prev for o in objs] == [None, *objs[:-1]][:len(objs)]
    assert d.bindids.tail is (objs[-1] if objs else None)
    for net in nets:
        found = d.lookup_virtual(net + 1, VIP, 80)
        assert (found is v) == (net in left)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 32))
def test_prefix_mask_contains_network(addr: int, plen: int) -> None:
    mask = prefix_mask(plen)
    assert parse_mask(format_ip(mask)) == plen
    assert (addr & mask) & ~mask & 0xFFFFFFFF == 0
