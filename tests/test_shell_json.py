"""`show ... | json`: every table-printing show command answers JSON whose fields are the
documented ones and whose rows are the table's rows, typed."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from test_shell_show import booted_fig1

from localdirector import syslog
from localdirector.shell.registry import Mode

EXTRA = """
probeconfig web tcp
probe 203.0.113.11:8001 web
logging host 198.51.100.60
sticky 192.0.2.10:80 5
maxconns 203.0.113.12 40
timeout 203.0.113.12 45
router bgp 64512
bgp neighbor 198.19.255.1 remote-as 64500
advertise 192.0.2.10:80
"""


@pytest.fixture
def shell(tmp_path: Path):
    appliance, session, output = booted_fig1(*EXTRA.strip().splitlines())

    def run(line: str, ok: bool = True) -> str:
        output.clear()
        assert session.execute(line) is ok, "".join(output)
        return "".join(output)
    run.appliance = appliance
    return run


def table_rows(text: str) -> list[list[str]]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if set(line.replace(" ", "")) == {"-"})
    return [line.split() for line in lines[start + 1:]]


FIELDS = {
    "show virtual": {"virtual", "state", "conns", "half_open", "total", "predictor", "reals",
                     "backup", "path"},
    "show real": {"real", "state", "conns", "total", "weight", "maxconns", "reassigns",
                  "threshold", "response_ms", "backup", "out_by"},
    "show bind": {"virtual", "virtual_state", "real", "real_state"},
    "show assign": {"virtual", "client", "mask", "hits"},
    "show predictor": {"virtual", "predictor", "conns"},
    "show weight": {"real", "weight", "conns"},
    "show maxconns": {"real", "maxconns", "conns"},
    "show sticky": {"virtual", "sticky_minutes", "clients"},
    "show users": {"current", "id", "kind", "peer", "mode", "connected", "idle"},
    "who": {"current", "id", "kind", "peer", "mode", "connected", "idle"},
    "show probe": {"real", "probe", "type", "port", "state", "result", "changed", "ok",
                   "failed", "latency_ms"},
    "show history": {"command"},
    "show syslog": {"time", "level", "logger", "message"},
    "test assign 198.51.100.7 192.0.2.10:80": {"client", "destination", "virtual", "real",
                                               "predictor", "why"},
}


@pytest.mark.parametrize("command", sorted(FIELDS))
def test_tables_as_json_lists_of_objects(shell, command):
    syslog.BUFFER.handle(logging.makeLogRecord({
        "name": "localdirector", "levelno": logging.WARNING, "levelname": "WARNING",
        "msg": "a message: for show syslog"}))
    text = shell(command)
    data = json.loads(shell(f"{command} | json"))
    assert isinstance(data, list) and data
    assert all(set(row) == FIELDS[command] for row in data)
    if command not in ("show syslog", "show history"):   # tables: row for row
        assert len(data) == len(table_rows(text))
        first = list(data[0])[0]           # fields in column order: the key column
        if first != "current":             # (the star column of `who` is mostly blank)
            assert [str(row[first]) for row in data] == [c[0] for c in table_rows(text)]


def test_values_are_typed(shell):
    reals = {r["real"]: r for r in json.loads(shell("show real | json"))}
    real = reals["203.0.113.12:0:0:tcp"]
    assert real["maxconns"] == 40 and real["weight"] == 1 and real["conns"] == 0
    assert real["response_ms"] is None and real["backup"] is None
    assert reals["203.0.113.11:8001:0:tcp"]["maxconns"] == 0      # "-": unlimited
    sticky = {v["virtual"]: v for v in json.loads(shell("show sticky | json"))}
    assert sticky["192.0.2.10:80:0:tcp"]["sticky_minutes"] == 5
    [me] = [u for u in json.loads(shell("who | json")) if u["current"]]
    assert me["kind"] == "test" and isinstance(me["idle"], int)
    assert json.loads(shell("show conns | json")) == []


@pytest.mark.parametrize("command, keys", [
    ("show statistics", {"dataplane", "connections", "probes"}),
    ("show version", {"version", "hostname", "uptime", "startup_config", "virtuals", "reals",
                      "links", "assign_entries", "connections", "sessions"}),
    ("show logging", {"trap_level", "trap", "facility", "hosts"}),
    ("show bgp", {"asn", "router_id", "drain", "exabgp", "neighbors", "prefixes"}),
    ("show failover", {"enabled", "poll_ms", "hold_ms", "replicate", "status"}),
    ("show maglev 192.0.2.10:80", {"size", "digest", "balance", "predictor", "reals"}),
])
def test_key_value_outputs_as_json_objects(shell, command, keys):
    data = json.loads(shell(f"{command} | json"))
    assert isinstance(data, dict) and keys <= set(data)


def test_nested_tables_in_objects(shell):
    bgp = json.loads(shell("show bgp | json"))
    assert bgp["asn"] == 64512
    assert bgp["neighbors"] == [{"neighbor": "198.19.255.1", "remote_as": 64500,
                                 "hold": 90, "state": None}]
    assert bgp["prefixes"][0]["prefix"] == "192.0.2.10/32"
    [host] = json.loads(shell("show logging | json"))["hosts"]
    assert host["host"] == "198.51.100.60" and host["port"] == 514
    maglev = json.loads(shell("show maglev 192.0.2.10:80 | json"))
    assert sum(r["slots"] for r in maglev["reals"]) == maglev["size"]
    assert abs(sum(r["share_percent"] for r in maglev["reals"]) - 100) < 0.1


def test_commands_without_a_table_say_so_and_fail(shell):
    for command in ("show running-config | json", "show virtual detail | json"):
        assert shell(command, ok=False).endswith("\n% no JSON form for this command\n")


def test_json_is_offered_after_the_pipe(shell):
    session = shell.appliance.open_session("t2", interactive=False)
    session.mode = Mode.PRIV
    assert any(line.split()[0] == "json" for line in session.help_lines("show real | "))
