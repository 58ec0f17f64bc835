"""Issue 27: a LocalDirector administrator's configuration loads. Three LocalDirector-style
configurations (examples/localdirector/) are replayed by `localdirector --check` and typed
into a session; every line is accepted (and then shows in `write terminal`), accepted
with a note saying what it became, or refused with a specific reason. No line is
silently ignored: an accepted line without a note must leave its mark in the running
config (or be listed here as a default the running config leaves out)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from localdirector.appliance import Appliance
from localdirector.shell.registry import Mode
from localdirector.shell.session import Session

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "examples" / "localdirector"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

# Per line, in file order (comments `:`/`!` and blank lines skipped):
#   ("config", TEXT)  accepted silently; TEXT is a line of the running config after it
#   ("default", "")   accepted silently; it asks for the default, which is not written
#   ("note", TEXT)    accepted with a note containing TEXT
#   ("refused", TEXT) refused; the reason contains TEXT (never the bare caret)
#   ("exec", TEXT)    an exec command: refused from a file with TEXT, run in a session
#   ("terminal", TEXT) a terminal setting: noted (TEXT) from a file, set in a session
HOST = "the host's network is managed by the operating system"
EXEC_REFUSED = "is an exec command: not run from a configuration file"
UNDOCUMENTED = "LocalDirector encrypted password: its algorithm is not documented"
PAYLOAD = "before the real is chosen, which the engine does not read yet"

EXPECTED: dict[str, list[tuple[str, str]]] = {
    "ld416-printout.cfg": [
        ("note", "kept as logging facility local4 and logging trap debugging"),
        ("note", "not kept: the log always goes to standard error"),
        ("config", "logging host 198.19.255.43"),
        ("refused", UNDOCUMENTED),
        ("config", "hostname LocalDir416"),
        ("note", f"{HOST}: not applied (equivalent: ip link set IFACE up)"),
        ("note", f"{HOST}: not applied (equivalent: ip link set IFACE up)"),
        ("note", "ethtool -s IFACE speed/duplex, or autoneg for auto"),
        ("note", "ethtool -s IFACE speed/duplex, or autoneg for 100full"),
        ("note", "ip link set IFACE mtu 1500"),
        ("note", "ip link set IFACE mtu 1500"),
        ("note", "Token Ring source routing does not exist on Ethernet"),
        ("note", "the host firewall (nft); the director only handles its VIPs"),
        ("note", "the host firewall (nft); the director only handles its VIPs"),
        ("note", "the host firewall (nft) decides who may ping it"),
        ("note", "the host firewall (nft) decides who may ping it"),
        ("note", "ip addr replace 198.19.255.5/24 dev IFACE; or start the director with "
                 "--host-network IFACE"),
        ("note", "ip route replace 0.0.0.0/0 via 198.19.255.1"),
        ("note", "a routing daemon on the host (bird2)"),
        ("note", "a routing daemon on the host (bird2) speaking RIP 1"),
        ("config", "failover ip address 198.19.255.199"),
        ("default", ""),
        ("note", "kept as failover poll 30000 holdtime 150000 (milliseconds)"),
        ("config", "password scrypt$"),
        ("config", "telnet 198.19.255.0 255.255.255.0"),
        ("config", "virtual 192.0.2.10:80"),
        ("config", "real 203.0.113.12:80"),
        ("config", "real 203.0.113.13:80"),
        ("config", "bind 192.0.2.10:80 203.0.113.12:80 203.0.113.13:80"),
        ("config", "snmp-server host 198.19.255.43"), ("config", "snmp-server enable traps"),
        ("config", "snmp-server community public"),
        ("config", "snmp-server contact PITester1"),
        ("config", "snmp-server location DallasTexas"),
        ("note", "not kept: no TFTP: write memory saves the startup-config file"),
    ],
    "ld31-features.cfg": [
        ("config", "hostname ld31"),
        ("note", "names are always used here"),
        ("config", "name 192.0.2.20 www"),
        ("config", "name 203.0.113.12 web1"),
        ("config", "name 203.0.113.13 web2"),
        ("config", "name 203.0.113.14 web3"),
        ("note", "ip addr replace 198.19.255.6/24 dev IFACE"),
        ("note", "ip addr add 198.19.254.6/24 dev IFACE"),
        ("note", "ip neigh replace 198.19.255.9 lladdr 00:00:0c:12:34:56 dev IFACE"),
        ("config", "virtual 192.0.2.20:80"),
        ("config", "virtual 192.0.2.20:443"),
        ("config", "virtual 192.0.2.20:80:1"),
        ("config", "real 203.0.113.12:80"),
        ("config", "real 203.0.113.13:80"),
        ("config", "real 203.0.113.14:80"),
        ("config", "real 203.0.113.12:443"),
        ("config", "real 203.0.113.13:443"),
        ("config", "bind 192.0.2.20:80 203.0.113.12:80 203.0.113.13:80"),
        ("config", "bind 192.0.2.20:80:1 203.0.113.14:80"),
        ("config", "bind 192.0.2.20:443 203.0.113.12:443 203.0.113.13:443"),
        ("config", "predictor 192.0.2.20:80 roundrobin"),
        ("default", ""),
        ("config", "weight 203.0.113.12:80 2"),
        ("config", "sticky 192.0.2.20:443 30"),
        ("config", "timeout 192.0.2.20:80 20"),
        ("config", "timeout 203.0.113.14:80 5"),   # LocalDirector's: a real's own
        # A virtual id in a real's command: every bound real.
        ("config", "retry 203.0.113.13:80 45"),
        ("config", "threshold 203.0.113.12:80 4"),
        ("config", "reassign 203.0.113.13:443 2"),
        ("config", "maxconns 192.0.2.20:80 5000"),
        ("config", "maxconns 203.0.113.14:80 100"),
        ("config", "backup 203.0.113.13:80 203.0.113.14:80"),
        ("config", "assign 192.0.2.20:80:1 198.51.100.0 255.255.255.0"),
        ("default", ""),
        ("config", "synguard 192.0.2.20:80 100"),
        ("config", "virtual 192.0.2.20:443"),   # out, then back in service: `is`
        ("config", "real 203.0.113.12:443"),
        ("config", "failover ip address 198.19.255.199"),
        ("note", "addresses that move to the active unit are failover virtual ADDR MASK"),
        ("note", "kept as replicate: connections go to the standby over the failover link"),
        ("note", "kept as failover poll 5000 holdtime 25000 (milliseconds)"),
        ("terminal", "not kept: the page length is each terminal's (terminal length)"),
        ("exec", f"'show virtual' {EXEC_REFUSED}"),
        ("config", "static 203.0.113.12 192.0.2.20"),
    ],
    "ld42-unbuilt.cfg": [
        ("config", "hostname ld42"),
        ("refused", UNDOCUMENTED),
        ("note", "kept as logging facility local7 and logging trap notifications"),
        ("config", "logging host 198.19.255.43"),
        ("config", "virtual 192.0.2.30:80"),
        ("config", "virtual 192.0.2.30:443"),
        ("config", "virtual 192.0.2.31"),
        ("config", "real 203.0.113.21:80"),
        ("config", "real 203.0.113.22:80"),
        ("config", "real 203.0.113.21:443"),
        ("config", "real 203.0.113.22"),
        ("config", "bind 192.0.2.30:80 203.0.113.21:80 203.0.113.22:80"),
        ("config", "bind 192.0.2.30:443 203.0.113.21:443"),
        ("config", "bind 192.0.2.31 203.0.113.22"),
        ("config", "dispatched 192.0.2.31"),
        ("config", "predictor 192.0.2.30:80 weighted"),
        ("config", "weight 203.0.113.22:80 3"),     # a wildcard: every real matched
        ("refused", f"sticky ssl needs the TLS session id {PAYLOAD}"),
        ("refused", f"sticky cookie needs the HTTP request's cookie {PAYLOAD}"),
        ("refused", f"sticky cookie needs the HTTP request's cookie {PAYLOAD}"),
        ("config", "buddy 192.0.2.30:80 shop"),
        ("config", "buddy 192.0.2.30:443 shop"),
        ("config", "delay 203.0.113.21:80 60"),
        ("refused", "data: data checking is not built"),
        ("refused", "dynamic-feedback: Dynamic Feedback Protocol is not built"),
        ("note", "autounfail is off here, as this line asks"),
        ("note", "data is off here, as this line asks"),
        ("refused", "autounfail: not built as a switch"),
        ("refused", "boot: this appliance boots from its startup-config file"),
        ("note", "ip route replace 198.18.0.0/15 via 198.19.255.1"),
        ("note", "ip neigh replace 198.19.255.10 lladdr 00:00:0c:12:34:57 dev IFACE"),
        ("note", "ip link set IFACE up"),
        ("note", "ip link set IFACE mtu 9000"),
        ("note", "the host firewall (nft) decides who may ping it"),
        ("note", "the host firewall (nft); the director only handles its VIPs"),
        ("exec", f"'write memory' {EXEC_REFUSED}"),
        ("exec", f"'clear conns' {EXEC_REFUSED}"),
        ("exec", f"'failover active' {EXEC_REFUSED}"),
    ],
}


def config_lines(name: str) -> list[tuple[int, str]]:
    lines = (CONFIGS / name).read_text().splitlines()
    return [(n, line) for n, line in enumerate(lines, 1)
            if line.strip() and line.strip()[0] not in ":!"]


def check_outcomes(name: str) -> tuple[int, dict[int, list[str]]]:
    """`localdirector --check`'s status and what it said about each line number."""
    result = subprocess.run([sys.executable, "-m", "localdirector", "--check",
                             str(CONFIGS / name)], capture_output=True, text=True, env=ENV)
    said: dict[int, list[str]] = {}
    for line in result.stdout.splitlines():
        match = re.match(r"line (\d+): (.*)", line)
        if match:
            said.setdefault(int(match[1]), []).append(match[2])
    return result.returncode, said


def test_the_examples_are_the_ones_expected() -> None:
    assert sorted(p.name for p in CONFIGS.glob("*.cfg")) == sorted(EXPECTED)
    for name, expected in EXPECTED.items():
        assert len(config_lines(name)) == len(expected), name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_check_accepts_notes_or_refuses_every_line(name: str) -> None:
    status, said = check_outcomes(name)
    lines = config_lines(name)
    refusals = 0
    for (number, line), (kind, text) in zip(lines, EXPECTED[name]):
        messages = said.get(number, [])
        where = f"{name} line {number}: {line!r}: {messages}"
        if kind in ("config", "default"):
            assert messages == [], where
        elif kind in ("note", "terminal"):
            assert len(messages) == 1 and messages[0].startswith("% Note: "), where
            assert text in messages[0], where
        else:
            refusals += 1
            assert messages and messages[0] == line.rstrip(), where   # the line, echoed
            reason = messages[-1].strip()
            assert "^" not in "".join(messages), where   # never a bare caret
            assert reason.startswith("% ") and text in reason, where
    assert status == (1 if refusals else 0)


def replayed(name: str) -> list[str]:
    """The running config after --check's replay, to see accepted lines took effect."""
    appliance = Appliance(CONFIGS / name)
    appliance.boot(lambda _message: None)
    return appliance.running_config()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_accepted_lines_leave_their_mark_in_the_running_config(name: str) -> None:
    running = replayed(name)
    for (number, line), (kind, text) in zip(config_lines(name), EXPECTED[name]):
        if kind == "config":
            assert any(r == text or (text.endswith("$") and r.startswith(text))
                       for r in running), f"{name} line {number}: {line!r}: {running}"
    # What the running config holds replays with no note and no error.
    appliance = Appliance(CONFIGS / name)
    from localdirector.shell import config_file
    said: list[str] = []
    assert config_file.replay(appliance, appliance.director, running, said.append) == 0
    assert said == [] and appliance.running_config() == running


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_typed_in_a_session_the_same_lines_do_the_same(name: str, tmp_path: Path) -> None:
    """Pasted at the configuration prompt: the same notes and refusals; exec commands
    run (here without a data plane or a failover pair, which they then say)."""
    appliance = Appliance(tmp_path / "startup-config")
    out: list[str] = []
    session = appliance.open_session("test", write=out.append, interactive=False)
    session.mode = Mode.CONFIG
    for (number, line), (kind, text) in zip(config_lines(name), EXPECTED[name]):
        out.clear()
        ok = session.execute(line)
        shown = "".join(out)
        where = f"{name} line {number}: {line!r}: {shown!r}"
        session.mode = Mode.CONFIG
        if kind in ("config", "default"):
            assert ok and shown == "", where
        elif kind == "note":
            assert ok and shown.startswith("% Note: ") and text in shown, where
        elif kind == "exec":
            assert EXEC_REFUSED not in shown, where
        elif kind == "terminal":
            assert ok and shown == "" and session.terminal_length == 30, where
        else:
            assert not ok, where
            if kind == "refused":
                assert text in shown, where
    if name == "ld42-unbuilt.cfg":   # `write memory` was run by the session
        assert (tmp_path / "startup-config").read_text().startswith(
            "! localdirector configuration")


def config_session() -> tuple[Session, list[str]]:
    """A scripted session at the configuration prompt and what it printed."""
    appliance = Appliance(Path("/nonexistent"))
    out: list[str] = []
    session = appliance.open_session("test", write=out.append, interactive=False)
    session.mode = Mode.CONFIG
    return session, out


def test_route_is_not_router_bgp() -> None:
    """A pasted `route` line met `router bgp` by abbreviation, with a misleading caret."""
    session, out = config_session()
    assert session.execute("route 0.0.0.0 0.0.0.0 198.19.255.1 1")
    assert "router" not in "".join(out) and "% Note: " in "".join(out)


def test_timeout_with_a_wildcard_sets_every_matched_reals_own() -> None:
    """LocalDirector's wildcards section names timeout among the real commands a
    pattern may stand for: `timeout all:443 120`."""
    session, out = config_session()
    for line in ("real 203.0.113.12:443", "real 203.0.113.13:443", "real 203.0.113.12:80",
                 "timeout all:443 120"):
        assert session.execute(line), out
    assert {str(r.sid): r.timeout for r in session.director.iter_reals()} == {
        "203.0.113.12:443:0:tcp": 120, "203.0.113.13:443:0:tcp": 120,
        "203.0.113.12:80:0:tcp": 0}


def test_show_and_write_at_the_configuration_prompt_and_all_in_patterns() -> None:
    session, out = config_session()
    assert session.execute("virtual 192.0.2.10:443")
    assert session.execute("virtual 192.0.2.11:80")
    out.clear()
    assert session.execute("show virtual all:443")
    shown = "".join(out)
    assert "192.0.2.10:443:0:tcp" in shown and "192.0.2.11" not in shown
    out.clear()
    assert session.execute("write terminal")
    assert "virtual 192.0.2.10:443" in "".join(out)
    out.clear()
    assert session.execute("show virtual ld")
    assert "".join(out).startswith("Virtual Machines:\nMachine")


def test_syslog_output_sets_the_facility_the_messages_carry(monkeypatch) -> None:
    """`syslog output 20.7`: facility local4 (20) and level debugging (7) on the wire."""
    import logging

    from localdirector.monitor.logging_hosts import LoggingHosts
    from localdirector.syslog import remote
    session, _out = config_session()
    assert session.execute("syslog host 198.19.255.43")
    assert session.execute("syslog output 20.7")
    settings = session.director.settings
    assert (settings.log_facility, settings.log_trap) == (20, 7)
    configured: list[tuple] = []
    monkeypatch.setattr(remote.HANDLER, "configure", lambda *a: configured.append(a))
    LoggingHosts(session.appliance).apply(session.director)
    assert configured[-1][1] == 7 and configured[-1][3] == 20
    record = logging.LogRecord("localdirector", logging.WARNING, "", 0, "x", None, None)
    assert remote.rfc5424(record, "ld", 20).startswith(b"<164>1 ")   # 20 * 8 + 4
    assert session.execute("logging facility local7")
    assert "logging facility" not in "\n".join(session.appliance.running_config())
