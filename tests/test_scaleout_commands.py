"""Scale-out commands through a Session: `dispatched`, `table-size`, `show maglev`, the
running-config round trip, and refusals that change nothing."""

from __future__ import annotations

from pathlib import Path

from localdirector.model.addr import parse_ip
from localdirector.model.serverid import ServerId

from test_shell_commands import Shell

BASE = """\
real 203.0.113.21
real 203.0.113.22
real 203.0.113.23:8080
virtual 192.0.2.20:80
bind 192.0.2.20:80 203.0.113.21 203.0.113.22
predictor 192.0.2.20:80 maglev
weight 203.0.113.21 3
"""
VIRTUAL = ServerId(parse_ip("192.0.2.20"), 80)


def _shell(tmp_path: Path) -> Shell:
    sh = Shell(tmp_path)
    assert sh(*BASE.splitlines()), sh.take()
    return sh


def test_dispatched_round_trips_and_shows_in_detail(tmp_path: Path) -> None:
    sh = _shell(tmp_path)
    assert sh("dispatched 192.0.2.20:80", "table-size 192.0.2.20:80 251"), sh.take()
    config = sh.config()
    assert "dispatched 192.0.2.20:80" in config
    assert "table-size 192.0.2.20:80 251" in config
    sh.take()
    assert sh("do show virtual 192.0.2.20:80 detail")
    assert "userspace, dispatched" in sh.take()
    again = Shell(tmp_path / "again")
    assert again(*[line for line in config if not line.startswith("!")]), again.take()
    assert again.config() == config
    assert sh("no dispatched 192.0.2.20:80", "no table-size 192.0.2.20:80")
    assert not sh.director.virtuals[VIRTUAL].dispatched
    assert sh.director.virtuals[VIRTUAL].maglev_size == 65537


def test_dispatched_refuses_a_real_with_a_port(tmp_path: Path) -> None:
    sh = _shell(tmp_path)
    assert sh("dispatched 192.0.2.20:80")
    sh.take()
    assert not sh("bind 192.0.2.20:80 203.0.113.23:8080")
    out = sh.take()
    assert "has a port: a dispatched virtual forwards without translation" in out
    assert len(list(sh.director.virtuals[VIRTUAL].iter_links())) == 2
    assert sh("no dispatched 192.0.2.20:80", "bind 192.0.2.20:80 203.0.113.23:8080")
    assert not sh("dispatched 192.0.2.20:80")
    assert "has a port" in sh.take()
    assert not sh.director.virtuals[VIRTUAL].dispatched


def test_dispatched_and_fastpath_exclude_each_other(tmp_path: Path) -> None:
    sh = _shell(tmp_path)
    assert sh("dispatched 192.0.2.20:80")
    sh.take()
    assert not sh("fastpath 192.0.2.20:80")
    assert "is dispatched" in sh.take()
    assert sh("no dispatched 192.0.2.20:80", "fastpath 192.0.2.20:80")
    assert not sh("dispatched 192.0.2.20:80")
    assert "fast path" in sh.take()


def test_table_size_must_be_prime(tmp_path: Path) -> None:
    sh = _shell(tmp_path)
    assert not sh("table-size 192.0.2.20:80 1000")
    assert "must be a prime" in sh.take()
    assert sh.director.virtuals[VIRTUAL].maglev_size == 65537


def test_show_maglev(tmp_path: Path) -> None:
    sh = _shell(tmp_path)
    assert sh("table-size 192.0.2.20:80 1009", "do show maglev 192.0.2.20:80")
    out = sh.take()
    assert "1009 slots, 2 reals, digest " in out
    lines = {line.split()[0]: line.split() for line in out.splitlines()
             if line.startswith("203.0.113.")}
    assert lines["203.0.113.21"][1] == "3" and abs(int(lines["203.0.113.21"][2]) - 757) < 10
    assert sh("out-of-service 203.0.113.21", "out-of-service 203.0.113.22")
    sh.take()
    assert not sh("do show maglev 192.0.2.20:80")
    assert "no real in service" in sh.take()
