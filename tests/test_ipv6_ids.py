"""IPv6 in the model and the shell (issue 26 items 1-2): bracketed server ids, carets,
`?` and Tab inside them, no NAT64, Bind IDs by IPv6 prefix (longest prefix per family),
every id-taking command, `| json`, and the running config's replay."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from test_shell_commands import Shell

from localdirector.model.addr import parse_ip
from localdirector.model.bindid import BindIdObject, BindIdTable
from localdirector.model.director import Director
from localdirector.model.errors import ModelError
from localdirector.model.serverid import ServerId, ServerIdError, ServerPattern
from localdirector.model.virtual import VirtualMachine
from localdirector.shell import config_file, running_config
from localdirector.shell.registry import Mode

IPV4_ONLY = "% IPv6 is not supported here: this takes an IPv4 address"

V6 = """\
real [2001:db8:1::11]:8001
real 2001:db8:1::12
real 203.0.113.12
virtual [2001:db8::10]:80
virtual [2001:db8::10]:80:1
virtual 192.0.2.10:80
bind [2001:db8::10]:80 2001:db8:1::12
bind [2001:db8::10]:80:1 [2001:db8:1::11]:8001
bind 192.0.2.10:80 203.0.113.12
assign [2001:db8::10]:80:1 2001:db8:c::/48
"""


@pytest.fixture
def sh(tmp_path: Path) -> Shell:
    return Shell.configured(tmp_path, V6)


@pytest.mark.parametrize("text, addr, port, bind, proto", [
    ("[2001:db8::10]:80:1:tcp", "2001:db8::10", 80, 1, "tcp"),
    ("[2001:db8::10]:53:0:udp", "2001:db8::10", 53, 0, "udp"),
    ("[2001:db8::10]:80", "2001:db8::10", 80, 0, "tcp"),
    ("[2001:db8::10]", "2001:db8::10", 0, 0, "tcp"),
    ("2001:db8::10", "2001:db8::10", 0, 0, "tcp"),               # bare: no port
    ("[2001:0db8:0:0::10]:80", "2001:db8::10", 80, 0, "tcp"),
    ("192.0.2.10::1", "192.0.2.10", 0, 1, "tcp"),                # IPv4 unchanged
])
def test_ipv6_server_ids_parse(text, addr, port, bind, proto):
    assert ServerId.parse(text) == ServerId(parse_ip(addr), port, bind, proto)


def test_ipv6_ids_are_bracketed_in_every_form():
    sid = ServerId.parse("2001:db8::10:80")          # bare: all of it is the address
    assert str(sid) == "[2001:db8::10:80]:0:0:tcp" and sid.short() == "[2001:db8::10:80]"
    sid = ServerId.parse("[2001:DB8::10]:80:1")
    assert str(sid) == "[2001:db8::10]:80:1:tcp"
    assert sid.short() == "[2001:db8::10]:80:1"
    assert ServerId.parse(sid.short()) == ServerId.parse(str(sid)) == sid
    assert sid.format({sid.addr: "web6"}) == "web6:80:1:tcp"


@pytest.mark.parametrize("text, field", [
    ("[2001:db8::10]:70000", 1),
    ("[2001:db8::10]:80:70000", 2),
    ("[2001:db8::10]:80:1:sctp", 3),
    ("[2001:db8::10", 0),
    ("[2001:db8::10]80", 0),
    ("[192.0.2.10]:80", 0),
    ("2001:db8::zz", 0),
])
def test_bad_ipv6_ids_name_the_field(text, field):
    with pytest.raises(ServerIdError) as err:
        ServerId.parse(text)
    assert err.value.field == field and "\n" not in str(err.value)


def test_a_name_wins_over_a_bare_ipv6_reading():
    names = {"abc": parse_ip("203.0.113.12")}
    assert ServerId.parse("abc::1", names) == ServerId(parse_ip("203.0.113.12"), 0, 1)
    assert ServerId.parse("abc::1") == ServerId(parse_ip("abc::1"))


def test_patterns_select_within_one_family():
    v6 = ServerId.parse("[2001:db8::10]:443")
    v6_other = ServerId.parse("[2001:db8:1::10]:80")
    v4 = ServerId.parse("192.0.2.10:443")
    low = ServerId.parse("0.0.0.16")                 # the low 32 bits of [::10]
    assert ServerPattern.parse("[2001:db8::10]:*").matches(v6)
    assert not ServerPattern.parse("[2001:db8::10]:80").matches(v6)
    assert ServerPattern.parse(":443").matches(v6) and ServerPattern.parse(":443").matches(v4)
    assert ServerPattern.parse("[2001:db8::/64]").matches(v6)
    assert not ServerPattern.parse("[2001:db8::/64]").matches(v6_other)
    assert not ServerPattern.parse("0.0.0.*").matches(ServerId.parse("[::10]"))
    assert not ServerPattern.parse("0.0.0.16").matches(ServerId.parse("[::10]"))
    assert not ServerPattern.parse("[::10]").matches(low)
    assert not ServerPattern.parse("0.0.0.0/0").matches(v6)
    assert ServerPattern.parse("0.0.0.0/24").matches(low)


# -- no NAT64 --------------------------------------------------------------------------------

@pytest.mark.parametrize("line, reason", [
    ("bind [2001:db8::10]:80 203.0.113.12",
     "% NAT64 is not supported: cannot bind ipv6 [2001:db8::10]:80:0:tcp to ipv4 "
     "203.0.113.12:0:0:tcp"),
    ("bind 192.0.2.10:80 2001:db8:1::12",
     "% NAT64 is not supported: cannot bind ipv4 192.0.2.10:80:0:tcp to ipv6 "
     "[2001:db8:1::12]:0:0:tcp"),
    ("backup [2001:db8::10]:80 192.0.2.10:80",
     "% NAT64 is not supported: cannot backup ipv6 [2001:db8::10]:80:0:tcp to ipv4 "
     "192.0.2.10:80:0:tcp"),
    ("backup 203.0.113.12 2001:db8:1::12",
     "% NAT64 is not supported: cannot backup ipv4 203.0.113.12:0:0:tcp to ipv6 "
     "[2001:db8:1::12]:0:0:tcp"),
    ("assign [2001:db8::10]:80:1 198.51.100.0 255.255.255.0",
     "% NAT64 is not supported: an ipv4 client network cannot be assigned to ipv6 "
     "virtual [2001:db8::10]:80:1:tcp"),
    ("assign [2001:db8::10]:80:1 2001:db8:c:: 255.255.0.0",
     "% a mask follows an IPv4 address only: write ADDR/LEN"),
    ("real [2001:db8::10]:80", "% [2001:db8::10]:80:0:tcp is already a virtual"),
    # What is IPv4 by nature refuses an IPv6 address in one line.
    ("static 2001:db8:1::12 2001:db8::10", IPV4_ONLY),
    ("ip address 2001:db8:ff::1 255.255.255.0", IPV4_ONLY),
    ("failover ip address 2001:db8:ff::1 255.255.255.0", IPV4_ONLY),
    ("do ping 2001:db8::1", IPV4_ONLY),
])
def test_what_mixes_families_is_refused_in_one_line_and_changes_nothing(sh, line, reason):
    before, generation = sh.config(), sh.director.generation
    assert not sh(line)
    lines = sh.take().splitlines()
    assert lines[-1] == reason and len(lines) in (2, 4)
    assert sh.config() == before and sh.director.generation == generation


def test_buddy_groups_are_one_family(sh):
    assert sh("sticky [2001:db8::10]:80 5", "sticky 192.0.2.10:80 5",
              "buddy [2001:db8::10]:80 shop")
    assert not sh("buddy 192.0.2.10:80 shop")
    assert sh.take().splitlines()[-1] == (
        "% NAT64 is not supported: buddy group shop holds ipv6 virtuals; a client shares "
        "its real only within its own family")
    assert sh.director.virtuals[ServerId.parse("192.0.2.10:80")].buddy == ""


# -- carets, ? and Tab inside brackets -------------------------------------------------------

@pytest.mark.parametrize("line, column", [
    ("virtual [2001:db8::10]:70000", len("virtual [2001:db8::10]:")),
    ("virtual [2001:db8::10]:80:70000", len("virtual [2001:db8::10]:80:")),
    ("virtual [2001:db8::10]:80:1:sctp", len("virtual [2001:db8::10]:80:1:")),
    ("virtual [2001:db8::zz]:80", len("virtual ")),
    ("real [2001:db8:1::11]:80:1", len("real [2001:db8:1::11]:80:")),
    ("test assign [2001:db8:c::5] [2001:db8::10]:99999", len("test assign [2001:db8:c::5] "
                                                            "[2001:db8::10]:")),
])
def test_caret_points_into_the_bracketed_id(sh, line, column):
    sh.session.mode = Mode.PRIV if line.startswith("test") else Mode.CONFIG
    prompt = sh.session.prompt
    assert not sh(line)
    lines = sh.take().splitlines()
    assert lines[1] == " " * (len(prompt) + column) + "^", lines
    assert lines[2].startswith("% ") and len(lines) == 4


def test_help_and_tab_inside_bracketed_ids(sh):
    session = sh.session
    assert [w for w, _ in session.completions("bind [2001:db8::10]:80:")] == [
        "[2001:db8::10]:80:0:tcp", "[2001:db8::10]:80:1:tcp"]
    assert [w for w, _ in session.completions("bind [2001:db8::10]:80 [2001:db8:1::1")] == [
        "[2001:db8:1::11]:8001:0:tcp", "[2001:db8:1::12]:0:0:tcp"]
    assert session.help_lines("virtual [2001:db8::10]:80:1 ") == [
        "  is    In service", "  os    Out of service", "  <cr>"]
    assert any("ADDR[/LEN]" in line
               for line in session.help_lines("assign [2001:db8::10]:80:1 "))


# -- Bind IDs by prefix (FIG. 4) -------------------------------------------------------------

def test_longest_prefix_per_family():
    table = BindIdTable()
    vip6, vip4 = ServerId.parse("[2001:db8::10]:80:1"), ServerId.parse("192.0.2.10:80:1")
    v48, v64 = VirtualMachine(vip6), VirtualMachine(ServerId.parse("[2001:db8::10]:80:2"))
    v4 = VirtualMachine(vip4)
    table.add(BindIdObject(parse_ip("2001:db8:c::"), 48, v48))
    table.add(BindIdObject(parse_ip("2001:db8:c:1::"), 64, v64))
    table.add(BindIdObject(0, 0, v4))                 # every IPv4 client
    find = lambda src, dst: table.lookup(parse_ip(src), dst.addr, 80)
    assert find("2001:db8:c:1::5", vip6).virtual is v64
    assert find("2001:db8:c:2::5", vip6).virtual is v48
    assert find("2001:db8:d::5", vip6) is None
    assert find("198.51.100.7", vip4).virtual is v4
    # A client of the other family never matches, even where its low bits would.
    assert find("::c633:6407", vip4) is None
    assert find("0.0.0.0", vip6) is None


def test_assign_forms_show_and_running_config(sh):
    assert sh("assign [2001:db8::10]:80:1 2001:db8:d::5",
              "virtual 192.0.2.10:80:1", "bind 192.0.2.10:80:1 203.0.113.12",
              "assign 192.0.2.10:80:1 198.51.100.0/24",
              "assign 192.0.2.10:80:1 198.18.0.0 255.254.0.0")
    assigns = [line for line in sh.config() if line.startswith("assign")]
    assert assigns == ["assign [2001:db8::10]:80:1 2001:db8:c::/48",
                       "assign [2001:db8::10]:80:1 2001:db8:d::5",
                       "assign 192.0.2.10:80:1 198.51.100.0 255.255.255.0",
                       "assign 192.0.2.10:80:1 198.18.0.0 255.254.0.0"]
    assert not sh("assign 192.0.2.10:80:1 198.51.100.1/24")        # host bits: a typo
    sh.take()
    assert sh("no assign [2001:db8::10]:80:1 2001:db8:d::5/128")
    assert sh("do show assign | json")
    rows = json.loads(sh.take())
    assert [r["client"] for r in rows][:1] == ["2001:db8:c::"]
    assert rows[0]["mask"] == "/48" and rows[1]["mask"] == "255.255.255.0"


def test_test_assign_decides_for_ipv6_clients(sh):
    sh.session.mode = Mode.PRIV
    assert sh("test assign [2001:db8:c::5] [2001:db8::10]:80")
    row = sh.take().splitlines()[-1].split()
    assert row[:4] == ["2001:db8:c::5", "[2001:db8::10]:80", "[2001:db8::10]:80:1:tcp",
                       "[2001:db8:1::11]:8001:0:tcp"]
    assert " ".join(row[5:]) == "assign 2001:db8:c::/48"
    assert sh("test assign 2001:db8:d::5 [2001:db8::10]:80")
    assert sh.take().splitlines()[-1].split()[2] == "[2001:db8::10]:80:0:tcp"
    assert not sh("test assign 198.51.100.7 [2001:db8::10]:80")
    assert sh.take().splitlines()[-1].startswith("% NAT64 is not supported")


def test_every_id_command_takes_ipv6_ids_and_the_config_replays(sh, tmp_path):
    lines = ["predictor [2001:db8::10]:80 roundrobin", "weight [2001:db8:1::11]:8001 3",
             "maxconns 2001:db8:1::12 40", "sticky [2001:db8::10]:80 5",
             "timeout [2001:db8::10]:80:1 30", "out-of-service 2001:db8:1::12",
             "in-service 2001:db8:1::12", "virtual [2001:db8::10]:80:2 os",
             "backup [2001:db8::10]:80:1 [2001:db8::10]:80", "name 2001:db8:1::12 web6",
             "backup [2001:db8:1::11]:8001 web6", "synguard [2001:db8::10]:80 50",
             "virtual [2001:db8::53]:53:0:udp", "real [2001:db8:1::53]:53:0:udp",
             "bind [2001:db8::53]:53:0:udp [2001:db8:1::53]:53:0:udp"]
    assert sh(*lines), sh.take()
    d = sh.director
    real = d.reals[ServerId.parse("[2001:db8:1::11]:8001")]
    assert real.weight == 3 and real.backup == ServerId.parse("2001:db8:1::12")
    assert d.virtuals[ServerId.parse("[2001:db8::10]:80")].predictor == "roundrobin"
    sh.session.mode = Mode.PRIV
    for show in ("show virtual", "show real", "show bind", "show weight", "show maxconns",
                 "show virtual [2001:db8::10]:*", "show real web6", "show conns",
                 "show conns [2001:db8::10]:80", "show sticky", "show predictor"):
        assert sh(show), (show, sh.take())
    sh.take()
    assert sh("show real | json")
    reals = {r["real"] for r in json.loads(sh.take())}
    assert {"[2001:db8:1::11]:8001:0:tcp", "web6:0:0:tcp"} <= reals
    assert sh("show virtual [2001:db8::10]:80:1")
    assert "[2001:db8::10]:80:1:tcp" in sh.take()
    text = sh.config()
    assert "real [2001:db8:1::11]:8001" in text and "name 2001:db8:1::12 web6" in text
    assert "virtual [2001:db8::53]:53:0:udp" in text
    replica = Shell(tmp_path / "replica")
    errors: list[str] = []
    assert config_file.replay(replica.appliance, replica.director, text,
                              errors.append) == 0, errors
    assert replica.config() == text
    # write memory and a boot from it (`--config FILE` boots the same way)
    assert sh("write memory")
    booted = Shell(tmp_path / "booted")
    booted.appliance.config_path = sh.appliance.config_path
    errors = []
    booted.appliance.boot(errors.append)
    assert errors == [] and booted.config() == text


def test_wildcards_and_virtual_ids_stand_for_ipv6_reals(sh):
    """LocalDirector's action wildcards (`os ID:*`) and a virtual id in a real's
    command (`retry VIRTUAL N`) reach IPv6 reals as they reach IPv4 ones."""
    assert sh("out-of-service [2001:db8:1::11]:*", "retry [2001:db8::10]:80 30")
    reals = sh.director.reals
    assert reals[ServerId.parse("[2001:db8:1::11]:8001")].admin_state.value == "OOS"
    assert reals[ServerId.parse("2001:db8:1::12")].retry == 30
    assert reals[ServerId.parse("203.0.113.12")].admin_state.value == "IS"


def test_decide_for_an_ipv6_syn():
    d = Director()
    vip = ServerId.parse("[2001:db8::10]:80")
    d.add_virtual(vip)
    d.add_real(ServerId.parse("[2001:db8:1::11]:8001"))
    d.bind(vip, ServerId.parse("[2001:db8:1::11]:8001"))
    decision = d.decide(parse_ip("2001:db8:c::5"), vip.addr, 80, time.monotonic())
    assert decision.real is not None and decision.real.sid.port == 8001
    assert d.decide(parse_ip("198.51.100.7"), vip.addr & 0xFFFFFFFF, 80,
                    time.monotonic()).virtual is None
    with pytest.raises(ModelError):
        d.assign(ServerId.parse("[2001:db8::10]:80"), parse_ip("2001:db8:c::"), 48)


def test_running_config_round_trip_includes_ipv6(tmp_path):
    shell = Shell(tmp_path)
    assert shell(*V6.splitlines())
    text = running_config.render(shell.director, shell.session.registry)
    assert "assign [2001:db8::10]:80:1 2001:db8:c::/48" in text
    assert "bind [2001:db8::10]:80:1 [2001:db8:1::11]:8001" in text
