"""Show commands, `test assign` on the patent's FIG. 1 configuration, and output that
stays linear in the size of the model."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from localdirector.appliance import Appliance
from localdirector.model.serverid import ServerId
from localdirector.model.state import State
from localdirector.shell.registry import Mode
from localdirector.shell.session import Session

FIG1 = Path(__file__).resolve().parent.parent / "examples" / "fig1.cfg"


def booted_fig1(*extra: str) -> tuple[Appliance, Session, list[str]]:
    """FIG. 1's example booted, `extra` configuration lines added, a privileged session
    and what it printed."""
    appliance = Appliance(FIG1)
    errors: list[str] = []
    appliance.boot(errors.append)
    assert errors == []
    output: list[str] = []
    session = appliance.open_session("test", write=output.append, interactive=False)
    session.mode = Mode.CONFIG
    for line in extra:
        assert session.execute(line), "".join(output)
    session.mode = Mode.PRIV
    return appliance, session, output


@pytest.fixture
def fig1(tmp_path: Path):
    appliance, session, output = booted_fig1()

    def run(line: str) -> list[str]:
        output.clear()
        assert session.execute(line), "".join(output)
        return "".join(output).splitlines()
    run.appliance = appliance
    return run


def rows(lines: list[str]) -> list[list[str]]:
    """Table body cells (after the header and its dashes)."""
    assert set(lines[1].replace(" ", "")) == {"-"}
    return [line.split() for line in lines[2:]]


@pytest.mark.parametrize("client, instance, real", [
    ("198.51.100.7", "192.0.2.10:80:1:tcp", "203.0.113.14:0:0:tcp"),
    ("198.18.0.9", "192.0.2.10:80:2:tcp", "203.0.113.15:0:0:tcp"),
    ("198.19.0.5", "192.0.2.10:80:0:tcp", "203.0.113.12:0:0:tcp"),
])
def test_fig1_test_assign_names_the_instance_and_real(fig1, client, instance, real):
    [row] = rows(fig1(f"test assign {client} 192.0.2.10:80"))
    assert row[:4] == [client, "192.0.2.10:80", instance, real]


def test_test_assign_uses_the_predictor_without_moving_it(fig1):
    director = fig1.appliance.director
    director.reals[ServerId.parse("203.0.113.14")].current_conns = 5
    [row] = rows(fig1("test assign 198.51.100.7 192.0.2.10:80"))
    assert row[3] == "203.0.113.11:8001:0:tcp"     # leastconns picks the idle one
    fig1("configure terminal")
    fig1("predictor 192.0.2.10:80:0 roundrobin")
    for _ in range(3):                            # commit=False: the cursor stays put
        [row] = rows(fig1("do test assign 198.19.0.5 192.0.2.10"))
        assert row[3] == "203.0.113.12:0:0:tcp"
    assert all(o.hits == 0 for o in director.bindids)


def test_test_assign_reports_backup_overflow_and_drops(fig1):
    director = fig1.appliance.director
    for real in ("203.0.113.14", "203.0.113.11:8001"):
        director.set_state(ServerId.parse(real), State.OUT_OF_SERVICE)
    [row] = rows(fig1("test assign 198.51.100.7 192.0.2.10:80"))
    assert row[2:4] == ["192.0.2.10:80:1:tcp", "203.0.113.12:0:0:tcp"]
    assert "overflow to backup 192.0.2.10:80:0:tcp" in " ".join(row)
    director.set_state(ServerId.parse("203.0.113.15"), State.OUT_OF_SERVICE)
    [row] = rows(fig1("test assign 198.18.0.9 192.0.2.10:80"))
    # What the data plane does: userspace answers with a RST, the fast path drops.
    assert row[3] == "-" and " ".join(row).endswith("SYN refused with a RST")
    director.virtuals[ServerId.parse("192.0.2.10:80:2")].fastpath = True
    [row] = rows(fig1("test assign 198.18.0.9 192.0.2.10:80"))
    assert " ".join(row).endswith("no real available: SYN dropped (fast path)")
    [row] = rows(fig1("test assign 198.18.0.9 192.0.2.10:443"))
    assert row[2] == "-" and "no virtual" in " ".join(row)


def test_test_assign_takes_names_and_the_all_ports_rows_it_prints(fig1):
    """Every row it prints without a port can be asked for alone (port 0 included),
    and names work as in server ids."""
    fig1("configure terminal")
    fig1("virtual 192.0.2.10:0:0")
    fig1("bind 192.0.2.10:0:0 203.0.113.13")
    fig1("name 192.0.2.10 www")
    fig1("name 198.19.0.5 office")
    fig1("end")
    listed = rows(fig1("test assign office www"))
    assert [r[1] for r in listed] == ["192.0.2.10:0", "192.0.2.10:80"]
    for row in listed:
        assert rows(fig1(f"test assign 198.19.0.5 {row[1]}")) == [row]
    assert listed[0][2:4] == ["www:0:0:tcp", "203.0.113.13:0:0:tcp"]


def test_show_tables(fig1):
    virtuals = rows(fig1("show virtual"))
    assert [r[0] for r in virtuals] == ["192.0.2.10:80:0:tcp", "192.0.2.10:80:1:tcp",
                                       "192.0.2.10:80:2:tcp"]
    assert virtuals[1][1:] == ["IS", "0", "0", "0", "leastconns", "2", "192.0.2.10:80:0:tcp",
                              "userspace"]
    reals = rows(fig1("show real"))
    assert reals[3][:2] == ["203.0.113.11:8001:0:tcp", "IS"]
    binds = rows(fig1("show bind"))
    assert ["192.0.2.10:80:1:tcp", "IS", "203.0.113.11:8001:0:tcp", "IS"] in binds
    assert rows(fig1("show assign")) == [
        ["192.0.2.10:80:1:tcp", "198.51.100.0", "255.255.255.0", "0"],
        ["192.0.2.10:80:2:tcp", "198.18.0.0", "255.255.255.0", "0"]]
    assert rows(fig1("show predictor"))[0] == ["192.0.2.10:80:0:tcp", "leastconns", "0"]
    assert rows(fig1("show weight"))[0] == ["203.0.113.12:0:0:tcp", "1", "0"]
    assert rows(fig1("show maxconns"))[0] == ["203.0.113.12:0:0:tcp", "unlimited", "0"]
    assert rows(fig1("show sticky"))[0] == ["192.0.2.10:80:0:tcp", "off", "0"]
    version = fig1("show version")
    assert version[0].startswith("localdirector ")
    assert f"Startup config:  {FIG1}" in version
    assert "Virtuals 3, reals 5, links 5, assign entries 2" in version[-1]
    # Columns line up: every row of a table is as wide as its header allows.
    lines = fig1("show real")
    starts = [lines[0].index(h) for h in ("State", "Conns", "Weight")]
    assert all(line[s - 2:s] == "  " for line in lines[2:] for s in starts)


@pytest.mark.parametrize("command, shown", [
    ("show virtual 192.0.2.10:80:1", ["192.0.2.10:80:1:tcp"]),
    ("show virtual 192.0.2.10:80:1:tcp", ["192.0.2.10:80:1:tcp"]),
    ("show virtual 192.0.2.10:*:2", ["192.0.2.10:80:2:tcp"]),
    ("show virtual :80", ["192.0.2.10:80:0:tcp", "192.0.2.10:80:1:tcp",
                          "192.0.2.10:80:2:tcp"]),
    ("show virtual 192.0.2.*:80:0", ["192.0.2.10:80:0:tcp"]),
    ("show real 203.0.113.11", ["203.0.113.11:8001:0:tcp"]),
    ("show real 203.0.113.1*", None),                      # `*` is a whole octet only
    ("show real 203.0.113.*:8001", ["203.0.113.11:8001:0:tcp"]),
    ("show real *:0", ["203.0.113.12:0:0:tcp", "203.0.113.13:0:0:tcp",
                       "203.0.113.14:0:0:tcp", "203.0.113.15:0:0:tcp"]),
    ("show bind 192.0.2.10:80:2", ["192.0.2.10:80:2:tcp"]),
])
def test_show_one_server_or_a_pattern(fig1, command, shown):
    """LocalDirector's `show virtual ID` / `show real ID`, with `*` fields and octets."""
    if shown is None:
        with pytest.raises(AssertionError, match="Invalid input"):
            fig1(command)
        return
    assert sorted({row[0] for row in rows(fig1(command))}) == shown


def test_a_pattern_that_selects_nothing_says_so(fig1):
    with pytest.raises(AssertionError, match="% no real matches 198.51.100.\\*"):
        fig1("show real 198.51.100.*")


def test_detail_shows_every_counter_the_model_keeps(fig1):
    """Packets, bytes, half-open, drops by reason and the response time `fastest` uses."""
    director = fig1.appliance.director
    v = director.virtuals[ServerId.parse("192.0.2.10:80:1")]
    v.packets_in, v.packets_out, v.bytes_in, v.bytes_out = 11, 12, 1300, 1400
    v.half_open, v.synguard_drops, v.no_real_drops = 2, 5, 6
    r = director.reals[ServerId.parse("203.0.113.14")]
    r.packets_in, r.bytes_out, r.response_time = 21, 2400, 0.0042
    text = "\n".join(fig1("show virtual 192.0.2.10:80:1 detail"))
    assert "2 half-open" in text
    assert "11 packets in, 12 out; 1300 bytes in, 1400 out" in text
    assert "5 synguard, 6 no real" in text
    real = "\n".join(fig1("show real 203.0.113.14 detail"))
    assert "21 packets in" in real and "2400 out" in real and "4.2ms" in real
    assert "bound to 192.0.2.10:80:1:tcp" in real
    assert rows(fig1("show real 203.0.113.14"))[0][8] == "4.2ms"
    assert rows(fig1("show virtual 192.0.2.10:80:1"))[0][3] == "2"


def test_show_running_config_replays_to_itself(fig1, tmp_path):
    text = fig1("show running-config")
    assert text[0].startswith("!") and "hostname localdirector" in text
    again = Appliance(tmp_path / "none")
    output: list[str] = []
    session = again.open_session("test", write=output.append, interactive=False)
    session.mode = Mode.CONFIG
    assert all(session.execute(line) for line in text)
    session.mode = Mode.PRIV
    session.execute("write terminal")
    assert "".join(output).splitlines() == text


def test_show_over_100000_assigns_is_linear(tmp_path):
    appliance = Appliance(tmp_path / "none")
    director = appliance.director
    vip = ServerId.parse("192.0.2.10:80:1")
    director.add_virtual(vip)
    base = 198 << 24 | 18 << 16
    for i in range(100_000):
        director.assign(vip, base + i, 32)
    output: list[str] = []
    session = appliance.open_session("test", write=output.append, interactive=False)
    session.mode = Mode.PRIV
    started = time.process_time()      # CPU time: other work on the host does not count
    assert session.execute("show assign | count")
    assert session.execute("show running-config | include 198.19.134.159")
    elapsed = time.process_time() - started
    assert output == ["Number of lines which match regexp = 100002\n",
                      "assign 192.0.2.10:80:1 198.19.134.159\n"]
    assert elapsed < 10, elapsed   # ~1.5 s here; quadratic would take hours
