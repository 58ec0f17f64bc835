"""SNMP without a lab: the `snmp-server` commands and their running-config, the AgentX
subset against PDUs as snmpd sends them, the tables a snapshot serves (servers of both
families, indexed by InetAddressType and InetAddress), which health changes become
traps, snmpd's configuration, and the MIB as net-snmp parses it."""

from __future__ import annotations

import io
import struct
import subprocess
from pathlib import Path

from localdirector.appliance import Appliance
from localdirector.model.addr import parse_ip
from localdirector.model.serverid import ServerId
from localdirector.model.state import State
from localdirector.monitor import agentx, snmp_mib
from localdirector.monitor.snmp import SnmpAgent, snmpd_conf
from localdirector.shell import config_file, running_config

ROOT = Path(__file__).resolve().parents[1]
MIBS = f"+{ROOT / 'mibs'}:{ROOT / 'tests' / 'mibs'}"
VIRTUAL, REAL, OTHER = "192.0.2.10:80", "203.0.113.12", "203.0.113.13"
VIRTUAL6, REAL6 = "[2001:db8::10]:80", "[2001:db8:1::11]:8001"
# The indexes as RFC 4001 encodes an InetAddressType, InetAddress pair: ipv4(1) or
# ipv6(2), the octets' count, the octets (written out here, not computed by the code).
V4_VIP, V4_REAL, V4_OTHER = (1, 4, 192, 0, 2, 10), (1, 4, 203, 0, 113, 12), \
    (1, 4, 203, 0, 113, 13)
V6_VIP = (2, 16, 0x20, 0x01, 0x0d, 0xb8, *bytes(11), 0x10)
V6_REAL = (2, 16, 0x20, 0x01, 0x0d, 0xb8, 0, 1, *bytes(9), 0x11)


def run(appliance: Appliance, *lines: str, mode: tuple[str, ...] = ("configure terminal",)
        ) -> str:
    out = io.StringIO()
    session = appliance.open_session("test", write=out.write, interactive=False)
    for line in ("enable", *mode, *lines, "end"):
        session.execute(line)
    return out.getvalue()


def configured(tmp_path: Path, *extra: str) -> Appliance:
    appliance = Appliance(tmp_path / "startup-config")
    out = run(appliance, f"real {REAL}", f"real {OTHER}", f"virtual {VIRTUAL}",
              f"bind {VIRTUAL} {REAL} {OTHER}", f"weight {OTHER} 3", *extra)
    assert "%" not in out, out
    return appliance


def test_commands_round_trip_mask_the_community_and_refuse_bad_input(tmp_path: Path) -> None:
    appliance = configured(tmp_path, "snmp-server community s3cret ro",
                           "snmp-server contact NOC <noc@example.com> ext. 12",
                           "snmp-server location Rack 4, row B", "snmp-server enable traps",
                           "snmp-server host 198.19.255.2",
                           "snmp-server host 198.19.255.3 trapcomm")
    saved = running_config.render(appliance.director, appliance.registry)
    assert [line for line in saved if line.startswith("snmp-server")] == [
        "snmp-server community s3cret",
        "snmp-server contact NOC <noc@example.com> ext. 12",
        "snmp-server location Rack 4, row B",
        "snmp-server enable traps",
        "snmp-server host 198.19.255.2", "snmp-server host 198.19.255.3 trapcomm"]
    replayed = Appliance(tmp_path / "startup-config")
    assert config_file.replay(replayed, replayed.director, saved, print) == 0
    assert running_config.render(replayed.director, replayed.registry) == saved

    shown = run(appliance, "show snmp", mode=())
    assert "s3cret" not in shown and "trapcomm" not in shown, shown
    assert "Community: set (********)" in shown and "Traps: enabled" in shown
    assert "SNMP agent not running (no --snmp)" in shown

    before = running_config.render(appliance.director, appliance.registry)
    for line, error in [
            ("snmp-server community two words", "% "),
            ("snmp-server community " + "x" * 33, "% a community is 1-32 printable"),
            ("snmp-server community bad#hash", "% a community is 1-32 printable"),
            ("snmp-server host 224.0.0.9", "% 224.0.0.9 is not a host address traps"),
            ("no snmp-server host 198.19.255.9", "% 198.19.255.9 is not an snmp-server host")]:
        out = run(appliance, line)
        assert error in out, (line, out)
    assert running_config.render(appliance.director, appliance.registry) == before

    out = run(appliance, "no snmp-server community", "no snmp-server contact",
              "no snmp-server location", "no snmp-server enable traps",
              "no snmp-server host 198.19.255.2", "no snmp-server host 198.19.255.3")
    assert "%" not in out, out
    assert not [line for line in running_config.render(appliance.director,
                                                        appliance.registry)
                if line.startswith("snmp-server")]


def test_snmpd_conf_is_read_only_bound_and_viewed_to_our_subtree(tmp_path: Path) -> None:
    appliance = configured(tmp_path, "snmp-server community s3cret",
                           "snmp-server contact NOC", "snmp-server host 198.19.255.2",
                           "snmp-server host 198.19.255.3 other")
    snmp = appliance.director.settings.snmp
    text = snmpd_conf(snmp, "lb1", "127.0.0.1", 1161, tmp_path / "agentx")
    lines = text.splitlines()
    assert "agentaddress 127.0.0.1:1161" in lines
    assert "rocommunity s3cret default -V localdirector" in lines
    assert not [line for line in lines if line.startswith(("rwcommunity", "rwuser"))]
    assert {line for line in lines if line.startswith("view ")} == {
        "view localdirector included .1.3.6.1.2.1.1",
        "view localdirector included .1.3.6.1.2.1.11",
        "view localdirector included .1.3.6.1.4.1.32473.6324"}
    assert "sysContact NOC" in lines and "sysName lb1" in lines
    assert not [line for line in lines if line.startswith("trap2sink")]   # traps off
    run(appliance, "snmp-server enable traps")
    traps = [line for line in snmpd_conf(snmp, "lb1", "127.0.0.1", 1161, tmp_path / "a")
             .splitlines() if line.startswith("trap2sink")]
    assert traps == ["trap2sink 198.19.255.2 s3cret", "trap2sink 198.19.255.3 other"]
    run(appliance, "no snmp-server community")
    bare = snmpd_conf(snmp, "lb1", "127.0.0.1", 1161, tmp_path / "a").splitlines()
    assert not [line for line in bare if "community" in line]   # no request answered
    assert [line for line in bare if line.startswith("trap2sink")] == [
        "trap2sink 198.19.255.3 other"]


def test_snmpd_conf_for_an_ipv6_agent_address_and_receivers(tmp_path: Path) -> None:
    """snmpd reads a bare IPv6 address as a host name and answers IPv6 sources only
    under rocommunity6 (both checked against snmpd 5.9.3 by hand)."""
    appliance = configured(tmp_path, "snmp-server community s3cret",
                           "snmp-server host 2001:db8:ff::2", "snmp-server enable traps")
    lines = snmpd_conf(appliance.director.settings.snmp, "lb1", "2001:db8:ff::1", 161,
                       tmp_path / "agentx").splitlines()
    assert "agentaddress udp6:[2001:db8:ff::1]:161" in lines
    assert "rocommunity6 s3cret default -V localdirector" in lines
    assert "trap2sink udp6:[2001:db8:ff::2] s3cret" in lines
    assert "% ff02::1 is not a host address" in run(appliance, "snmp-server host ff02::1")


def test_an_address_in_an_index_is_its_type_its_length_and_its_octets() -> None:
    assert snmp_mib.address_index(parse_ip("192.0.2.10")) == V4_VIP
    assert snmp_mib.address_index(parse_ip("2001:db8::10")) == V6_VIP
    assert snmp_mib.real_index(parse_ip("2001:db8:1::11"), 8001, "udp") == (
        *V6_REAL, 8001, 17)
    assert snmp_mib.virtual_index(parse_ip("192.0.2.10"), 80, 2, "tcp") == (
        *V4_VIP, 80, 2, 6)
    # ::c000:20a is not 192.0.2.10: another type, another length.
    assert snmp_mib.address_index(parse_ip("::c000:20a")) == (2, 16, *bytes(12), 192, 0, 2,
                                                               10)


def test_ipv6_servers_have_rows_beside_the_ipv4_ones_in_oid_order(tmp_path: Path) -> None:
    """Every table serves both families; a walk (GetNext after GetNext) meets each
    column's IPv4 rows, then its IPv6 ones: type 1 sorts before type 2 whatever the
    addresses, and the IPv4 rows are as they were."""
    appliance = configured(tmp_path)
    director = appliance.director
    before = snmp_mib.snapshot(director, "Off").rows
    out = run(appliance, f"virtual {VIRTUAL6}", f"real {REAL6}", f"bind {VIRTUAL6} {REAL6}",
              f"weight {REAL6} 5")
    assert "%" not in out, out
    table = snmp_mib.snapshot(director, "Off")
    assert before.items() <= table.rows.items()
    v6_virtual, v6_real = (*V6_VIP, 80, 0, 6), (*V6_REAL, 8001, 6)
    assert table.get((*snmp_mib.VIRTUAL_ENTRY, 5, *v6_virtual))[1:] == (
        agentx.OCTET_STRING, b"[2001:db8::10]:80:0:tcp")
    assert table.get((*snmp_mib.VIRTUAL_ENTRY, 6, *v6_virtual))[2] == 1   # inService
    assert table.get((*snmp_mib.REAL_ENTRY, 5, *v6_real))[2] == 1
    assert table.get((*snmp_mib.BIND_ENTRY, 1, *v6_virtual, *v6_real))[1:] == (
        agentx.GAUGE32, 5)

    def walk(column: tuple[int, ...]) -> list[tuple[int, ...]]:
        names, at = [], column
        while True:
            name, _, _ = table.next(at, False, ())
            if name[:len(column)] != column:
                return names
            names.append(name[len(column):])
            at = name
    assert walk((*snmp_mib.REAL_ENTRY, 4)) == [(*V4_REAL, 0, 6), (*V4_OTHER, 0, 6), v6_real]
    assert walk((*snmp_mib.VIRTUAL_ENTRY, 8)) == [(*V4_VIP, 80, 0, 6), v6_virtual]
    assert walk((*snmp_mib.BIND_ENTRY, 1)) == [
        (*V4_VIP, 80, 0, 6, *V4_REAL, 0, 6), (*V4_VIP, 80, 0, 6, *V4_OTHER, 0, 6),
        (*v6_virtual, *v6_real)]


# -- AgentX ----------------------------------------------------------------------------

def _request(kind: int, payload: bytes, order: str = "!") -> tuple[agentx.Header, bytes]:
    flags = agentx.NETWORK_BYTE_ORDER if order == "!" else 0
    data = struct.pack(order.replace("!", ">") + "BBBBIIII", 1, kind, flags, 0, 7, 8, 9,
                       len(payload)) + payload
    head = agentx.header(data)
    return head, data[agentx.HEADER:]


def _oid(name: tuple[int, ...], include: bool = False, order: str = "!") -> bytes:
    return struct.pack(f"{order}BBBB{len(name)}I", len(name), 0, int(include), 0, *name)


def _search(start: tuple[int, ...], end: tuple[int, ...] = (), include: bool = False,
            order: str = "!") -> bytes:
    return _oid(start, include, order) + _oid(end, order=order)


def _decode(data: bytes) -> list[tuple[tuple[int, ...], int, object]]:
    """The varbinds of a Response this side encoded."""
    head = agentx.header(data)
    reader = agentx._Reader(data[agentx.HEADER:], "!")
    reader.take("IHH")
    found = []
    while not reader.done:
        kind, _ = reader.take("HH")
        name, _ = reader.oid()
        if kind in (agentx.INTEGER, agentx.GAUGE32, agentx.COUNTER32):
            value: object = reader.take("I")[0]
        elif kind == agentx.COUNTER64:
            value = reader.take("Q")[0]
        elif kind == agentx.OCTET_STRING:
            value = reader.octets().decode()
        else:
            value = None
        found.append((name, kind, value))
    assert (head.session, head.transaction, head.packet) == (7, 8, 9)
    return found


def test_get_getnext_and_getbulk_from_a_snapshot_in_either_byte_order(tmp_path: Path) -> None:
    appliance = configured(tmp_path)
    table = snmp_mib.snapshot(appliance.director, "Off")
    state = (*snmp_mib.REAL_ENTRY, 5, *V4_REAL, 0, 6)
    weight = (*snmp_mib.BIND_ENTRY, 1, *V4_VIP, 80, 0, 6, *V4_OTHER, 0, 6)
    absent = (*snmp_mib.REAL_ENTRY, 5, 1, 4, 1, 2, 3, 4, 0, 6)
    for order in ("!", "<"):
        head, payload = _request(agentx.GET, _search(state, order=order) + _search(
            weight, order=order) + _search(absent, order=order), order)
        got = _decode(agentx.response(head, table.answer(head, payload)))
        assert got == [(state, agentx.INTEGER, 1), (weight, agentx.GAUGE32, 3),
                       (absent, agentx.NO_SUCH_INSTANCE, None)]
    # GetNext from the real table's start: the first real's name; past the end of the
    # range given: endOfMibView.
    head, payload = _request(agentx.GETNEXT, _search(snmp_mib.REAL_ENTRY))
    assert _decode(agentx.response(head, table.answer(head, payload))) == [
        ((*snmp_mib.REAL_ENTRY, 4, *V4_REAL, 0, 6), agentx.OCTET_STRING,
         "203.0.113.12:0:0:tcp")]
    head, payload = _request(agentx.GETNEXT, _search(weight, snmp_mib.FAILOVER_ROLE))
    assert _decode(agentx.response(head, table.answer(head, payload)))[0][1] == \
        agentx.END_OF_MIB_VIEW
    # GetBulk: one non-repeater, then the real names column four times over.
    head, payload = _request(agentx.GETBULK, struct.pack("!HH", 1, 4) + _search(
        snmp_mib.FAILOVER_ROLE) + _search((*snmp_mib.REAL_ENTRY, 4)))
    got = _decode(agentx.response(head, table.answer(head, payload)))
    assert got[0] == ((*snmp_mib.FAILOVER_ROLE, 0), agentx.INTEGER, snmp_mib.ROLES["Off"])
    assert [value for _, _, value in got[1:3]] == ["203.0.113.12:0:0:tcp",
                                                     "203.0.113.13:0:0:tcp"]
    assert len(got) == 5
    # A Set never gets past the test phase.
    head, payload = _request(agentx.TESTSET, b"")
    error = struct.unpack_from("!IHH", agentx.response(head, error=agentx.NOT_WRITABLE,
                                                       index=1), agentx.HEADER)[1]
    assert error == agentx.NOT_WRITABLE


def test_a_truncated_pdu_is_an_error_not_a_crash() -> None:
    head, payload = _request(agentx.GET, _search((1, 3, 6, 1, 4, 1, 32473)))
    try:
        agentx.ranges(head, payload[:-6])
    except agentx.AgentXError:
        pass
    else:
        raise AssertionError("a truncated PDU was read")


def test_fast_path_virtuals_have_no_packet_counts(tmp_path: Path) -> None:
    appliance = configured(tmp_path, f"fastpath {VIRTUAL}")
    index = (*V4_VIP, 80, 0, 6)
    table = snmp_mib.snapshot(appliance.director, "Active")
    assert table.get((*snmp_mib.VIRTUAL_ENTRY, 13, *index))[1:] == (agentx.INTEGER, 1)
    assert table.get((*snmp_mib.VIRTUAL_ENTRY, 9, *index))[1] == agentx.NO_SUCH_INSTANCE
    assert table.get((*snmp_mib.FAILOVER_ROLE, 0))[2] == snmp_mib.ROLES["Active"]


def test_health_changes_queue_traps_only_for_failure_and_recovery(tmp_path: Path) -> None:
    """Two unanswered connections (threshold 2) fail the real: one trap; its test
    connection going unanswered fails it again: none; its answer: a recovery; an
    operator's out-of-service: none; traps off: none."""
    appliance = configured(tmp_path, f"threshold {REAL} 2", "snmp-server community c",
                           "snmp-server host 198.19.255.2", "snmp-server enable traps")
    agent = SnmpAgent(appliance, "127.0.0.1", 1161, tmp_path)
    agent.follow(appliance.director)
    director = appliance.director
    real = director.reals[ServerId.parse(REAL)]
    director.note_failure(real, 1.0)
    assert not agent._queue
    director.note_failure(real, 1.0)
    director.tick(100.0)          # retry passed: TESTING
    assert real.state is State.TESTING
    director.note_failure(real, 101.0)
    director.tick(200.0)
    director.note_answer(real)
    run(appliance, f"out-of-service {REAL}")
    trap_oids = [binds[0][2] for binds in agent._queue]
    assert trap_oids == [snmp_mib.REAL_FAILED, snmp_mib.REAL_RECOVERED]
    failed = agent._queue[0]
    assert failed[1] == ((*snmp_mib.REAL_ENTRY, 4, *V4_REAL, 0, 6),
                         agentx.OCTET_STRING, b"203.0.113.12:0:0:tcp")
    assert failed[2][2] == snmp_mib.STATES["FAILED"]
    agent.role_changed("Standby", "Active")
    assert agent._queue[-1][0][2] == snmp_mib.ROLE_CHANGED
    assert agent._queue[-1][1][2] == snmp_mib.ROLES["Active"]
    agent._queue.clear()
    run(appliance, f"in-service {REAL}", "no snmp-server enable traps")
    director.note_failure(real, 300.0)
    director.note_failure(real, 300.0)
    assert real.state is State.FAILED and not agent._queue
    agent.stop()


def test_an_ipv6_real_failing_and_recovering_is_trapped_with_its_index(tmp_path: Path
                                                                      ) -> None:
    appliance = configured(tmp_path, f"real {REAL6}", f"threshold {REAL6} 1",
                           "snmp-server community c", "snmp-server host 2001:db8:ff::2",
                           "snmp-server enable traps")
    agent = SnmpAgent(appliance, "127.0.0.1", 1161, tmp_path)
    agent.follow(appliance.director)
    director = appliance.director
    real = director.reals[ServerId.parse(REAL6)]
    director.note_failure(real, 1.0)
    director.tick(100.0)
    director.note_answer(real)
    assert [binds[0][2] for binds in agent._queue] == [snmp_mib.REAL_FAILED,
                                                       snmp_mib.REAL_RECOVERED]
    failed, recovered = agent._queue
    assert failed[1:] == [
        ((*snmp_mib.REAL_ENTRY, 4, *V6_REAL, 8001, 6), agentx.OCTET_STRING,
         b"[2001:db8:1::11]:8001:0:tcp"),
        ((*snmp_mib.REAL_ENTRY, 5, *V6_REAL, 8001, 6), agentx.INTEGER,
         snmp_mib.STATES["FAILED"])]
    assert recovered[2] == ((*snmp_mib.REAL_ENTRY, 5, *V6_REAL, 8001, 6), agentx.INTEGER,
                            snmp_mib.STATES["IS"])
    agent.stop()


def _translate(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["snmptranslate", "-m", "LOCALDIRECTOR-MIB", "-M", MIBS, *argv],
                          capture_output=True, text=True, timeout=30)


def test_the_mib_parses_with_net_snmp_and_names_what_the_agent_serves() -> None:
    """Every OID the agent serves or sends is the MIB's, by name; the parse is clean."""
    names = {"ldVirtualName": (*snmp_mib.VIRTUAL_ENTRY, 5),
             "ldVirtualFastpath": (*snmp_mib.VIRTUAL_ENTRY, 13),
             "ldRealName": (*snmp_mib.REAL_ENTRY, 4),
             "ldRealResets": (*snmp_mib.REAL_ENTRY, 9),
             "ldBindWeight": (*snmp_mib.BIND_ENTRY, 1),
             "ldFailoverRole": snmp_mib.FAILOVER_ROLE,
             "ldRealFailed": snmp_mib.REAL_FAILED, "ldRealRecovered": snmp_mib.REAL_RECOVERED,
             "ldFailoverRoleChanged": snmp_mib.ROLE_CHANGED,
             "ldVirtualAddressType": (*snmp_mib.VIRTUAL_ENTRY, 14),
             "ldVirtualAddress": (*snmp_mib.VIRTUAL_ENTRY, 1),
             "ldRealAddressType": (*snmp_mib.REAL_ENTRY, 10),
             "ldRealAddress": (*snmp_mib.REAL_ENTRY, 1)}
    for name, oid in names.items():
        result = _translate("-On", f"LOCALDIRECTOR-MIB::{name}")
        assert result.returncode == 0 and result.stderr == "", (name, result.stderr)
        assert result.stdout.strip() == "." + ".".join(map(str, oid)), name
    states = _translate("-Td", "LOCALDIRECTOR-MIB::ldRealState").stdout
    assert all(f"{name}({number})" in states for name, number in [
        ("inService", 1), ("outOfService", 2), ("failed", 3), ("testing", 4)])
    roles = _translate("-Td", "LOCALDIRECTOR-MIB::ldFailoverRole").stdout
    assert all(f"{name.lower()}({number})" in roles
               for name, number in snmp_mib.ROLES.items())


def test_net_snmp_reads_the_indexes_the_agent_builds_as_inet_addresses() -> None:
    """net-snmp decodes the rows' OIDs by the MIB's INDEX clauses: an index the agent
    built wrong (no length, another type) would not read back as these addresses."""
    entry = ".".join(map(str, (*snmp_mib.BIND_ENTRY, 1)))
    v6 = snmp_mib.virtual_index(parse_ip("2001:db8::10"), 80, 0, "tcp")
    v6_real = snmp_mib.real_index(parse_ip("2001:db8:1::11"), 8001, "tcp")
    v4 = snmp_mib.virtual_index(parse_ip("192.0.2.10"), 80, 3, "udp")
    v4_real = snmp_mib.real_index(parse_ip("203.0.113.12"), 0, "udp")
    result = _translate(*(f".{entry}." + ".".join(map(str, index))
                          for index in ((*v6, *v6_real), (*v4, *v4_real))))
    assert result.returncode == 0 and result.stderr == "", result.stderr
    hex6 = '"20:01:0d:b8:00:00:00:00:00:00:00:00:00:00:00:10"'
    real6 = '"20:01:0d:b8:00:01:00:00:00:00:00:00:00:00:00:11"'
    assert result.stdout.split() == [
        f"LOCALDIRECTOR-MIB::ldBindWeight.ipv6.{hex6}.80.0.tcp.ipv6.{real6}.8001.tcp",
        'LOCALDIRECTOR-MIB::ldBindWeight.ipv4."192.0.2.10".80.3.udp.ipv4."203.0.113.12".0.udp']
    typed = _translate("-Td", "LOCALDIRECTOR-MIB::ldRealEntry").stdout
    assert "INDEX\t\t{ ldRealAddressType, ldRealAddress, ldRealPort, ldRealProtocol }" in typed


def test_the_failover_service_tells_the_role_hooks_of_a_change_only(tmp_path: Path) -> None:
    """FailoverService._set_role, the one place the unit's role changes, calls
    Appliance.role_hooks with (before, now), and not when the role stays."""
    import threading
    import types

    from localdirector.failover.service import FailoverService
    appliance = Appliance(tmp_path / "startup-config")
    heard: list[tuple[str, str]] = []
    appliance.role_hooks.append(lambda before, now: heard.append((before, now)))
    unit = types.SimpleNamespace(appliance=appliance, role="Starting", _active_since=None,
                                 _active_total=0.0, _lock=threading.Lock(),
                                 _replicate=lambda: None)
    for role in ("Standby", "Standby", "Active"):
        FailoverService._set_role(unit, role)   # type: ignore[arg-type]
    assert heard == [("Starting", "Standby"), ("Standby", "Active")]


def test_a_probe_taking_a_real_out_and_back_is_a_failure_and_a_recovery(tmp_path: Path) -> None:
    appliance = configured(tmp_path, "probeconfig web http failures 1 successes 1",
                           f"probe {VIRTUAL} web", "snmp-server community c",
                           "snmp-server host 198.19.255.2", "snmp-server enable traps")
    agent = SnmpAgent(appliance, "127.0.0.1", 1161, tmp_path)
    agent.follow(appliance.director)
    director = appliance.director
    check = next(c for c in director.checks.values() if c.real_sid == ServerId.parse(REAL))
    director.probe_result(check, False, "refused", 0.0, 1.0)
    director.probe_result(check, False, "refused", 0.0, 2.0)
    director.probe_result(check, True, "HTTP-200", 0.0, 3.0)
    assert [binds[0][2] for binds in agent._queue] == [snmp_mib.REAL_FAILED,
                                                       snmp_mib.REAL_RECOVERED]
    agent.stop()
