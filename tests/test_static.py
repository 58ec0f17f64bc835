"""`static REAL VIP` (issue 27 item 4): which address is which, the refusals, `no
static`, `show static`, the running config, and the rules it asks for (the SNAT in our
nat POSTROUTING chain, installed and removed with the other chains)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_dataplane_service import FakeIptables

from localdirector.appliance import Appliance
from localdirector.dataplane.iptables import (
    install_tables,
    match_chains,
    names,
    removal_tables,
)
from localdirector.dataplane.markrules import static_rules
from localdirector.dataplane.ruleset import RuleSet, desired_rules
from localdirector.dataplane.transactions import RuleManager
from localdirector.model.addr import format_ip, parse_ip
from localdirector.shell import running_config
from localdirector.shell.registry import Mode

BASE = ["real 203.0.113.12:80", "real 203.0.113.13:80", "real 203.0.113.14",
        "virtual 192.0.2.10:80", "virtual 192.0.2.20:443", "virtual 192.0.2.30:0",
        "bind 192.0.2.10:80 203.0.113.12:80 203.0.113.13:80",
        "bind 192.0.2.20:443 203.0.113.12:80", "name 203.0.113.13 web2"]
N = names(7)
SNAT = "-A LOCALDIRECTOR7-STATIC -s 203.0.113.12/32 -j SNAT --to-source 192.0.2.10"


class Shell:
    def __init__(self, tmp_path: Path) -> None:
        self.appliance = Appliance(tmp_path / "startup-config")
        self.out: list[str] = []
        self.session = self.appliance.open_session("test", write=self.out.append,
                                                   interactive=False)
        self.session.mode = Mode.CONFIG
        assert all(self.session.execute(line) for line in BASE), self.take()

    def __call__(self, line: str) -> bool:
        self.out.clear()
        return self.session.execute(line)

    def take(self) -> str:
        return "".join(self.out)

    def statics(self) -> dict[str, str]:
        return {format_ip(r): format_ip(v)
                for r, v in self.appliance.director.settings.statics.items()}

    def config(self) -> list[str]:
        return running_config.render(self.appliance.director, self.session.registry)


@pytest.fixture
def sh(tmp_path: Path) -> Shell:
    return Shell(tmp_path)


@pytest.mark.parametrize("line", ["static 203.0.113.12 192.0.2.10",
                                  "static 192.0.2.10 203.0.113.12"])
def test_either_order_is_saved_real_first(sh: Shell, line: str) -> None:
    assert sh(line), sh.take()
    assert sh.take() == "" and sh.statics() == {"203.0.113.12": "192.0.2.10"}
    assert "static 203.0.113.12 192.0.2.10" in sh.config()


def test_a_name_stands_for_its_address_and_a_new_line_replaces_the_real_s(sh: Shell) -> None:
    assert sh("static web2 192.0.2.10") and sh("static 203.0.113.13 192.0.2.20")
    assert sh.statics() == {"203.0.113.13": "192.0.2.20"}


@pytest.mark.parametrize("line, reason", [
    ("static 203.0.113.12 203.0.113.13", ("needs a configured real's address and a "
                                          "virtual's address (in either order)")),
    ("static 192.0.2.10 192.0.2.20", "needs a configured real's address"),
    ("static 203.0.113.99 192.0.2.10", "needs a configured real's address"),
    # Every port of 192.0.2.30 goes to the engine: the replies would too.
    ("static 203.0.113.13 192.0.2.30", ("192.0.2.30:0:0:tcp takes every port of 192.0.2.30 "
                                        "in the engine, replies included")),
    ("static 203.0.113.12 nosuchname", "invalid address or unknown name"),
])
def test_refusals_say_why_in_one_line_and_change_nothing(sh: Shell, line: str,
                                                         reason: str) -> None:
    assert not sh(line)
    said = sh.take().strip().splitlines()
    assert reason in said[-1] and said[-1].startswith("% "), said
    assert sh.statics() == {}


def test_a_real_on_every_port_of_a_userspace_virtual_is_refused(sh: Shell) -> None:
    assert sh("bind 192.0.2.30:0 203.0.113.14") and not sh("static 203.0.113.14 192.0.2.10")
    assert "answers 192.0.2.30:0:0:tcp on every port, so the engine takes all its packets" in sh.take()


def test_both_fit_is_refused(sh: Shell) -> None:
    assert sh("virtual 203.0.113.13:25") and sh("real 192.0.2.10:25")
    assert not sh("static 203.0.113.13 192.0.2.10")
    assert "each address is both a real's and a virtual's" in sh.take()


def test_no_static_in_either_order_and_show_static(sh: Shell) -> None:
    assert sh("static 203.0.113.12 192.0.2.10") and sh("static 203.0.113.13 192.0.2.20")
    sh.session.mode = Mode.PRIV
    assert sh("show static | json")
    rows = json.loads(sh.take())
    assert rows == [{"real": "203.0.113.12", "virtual": "192.0.2.10", "state": "active"},
                    {"real": "203.0.113.13", "virtual": "192.0.2.20", "state": "active"}]
    sh.session.mode = Mode.CONFIG
    assert sh("no static 192.0.2.10 203.0.113.12") and sh.statics() == {
        "203.0.113.13": "192.0.2.20"}
    assert not sh("no static 203.0.113.12 192.0.2.10")
    assert "no static 203.0.113.12 192.0.2.10" in sh.take()


def test_the_running_config_replays_to_itself(sh: Shell, tmp_path: Path) -> None:
    assert sh("static 192.0.2.20 203.0.113.13")
    saved = sh.config()
    other = Shell(tmp_path / "again")
    assert all(other(line) for line in saved if line[0] not in "!")
    assert other.config() == saved


def test_the_rules_ask_for_snat_in_our_postrouting_chain(sh: Shell) -> None:
    d = sh.appliance.director
    assert desired_rules(d).statics == ()
    assert sh("static 203.0.113.12 192.0.2.10")
    rules = desired_rules(d)
    assert rules.statics == ((parse_ip("203.0.113.12"), parse_ip("192.0.2.10")),)
    assert static_rules(rules, N) == [SNAT]
    chains = match_chains(rules, {}, N)
    assert chains["nat"] == [":LOCALDIRECTOR7 - [0:0]", ":LOCALDIRECTOR7-STATIC - [0:0]", SNAT]
    # A later bind of the real on every port of a userspace virtual: the line stays
    # (show static says why it does nothing) and the rule goes.
    assert sh("real 203.0.113.12") and sh("bind 192.0.2.30:0 203.0.113.12")
    assert desired_rules(d).statics == ()
    sh.session.mode = Mode.PRIV
    assert sh("show static") and "so the engine takes all its packets" in sh.take()


def test_install_jumps_from_postrouting_once_and_removal_takes_it_out() -> None:
    rules = RuleSet((), (), statics=((parse_ip("203.0.113.12"), parse_ip("192.0.2.10")),))
    existing = {"raw": ({}, set()), "mangle": ({}, set()),
                "nat": ({N.nat_jump: 0, N.static_jump: 2}, {"LOCALDIRECTOR7-STATIC"})}
    existing["raw"] = ({N.jump: 0, N.local_jump: 0}, set())
    existing["mangle"] = ({j: 0 for j in N.tables["mangle"][1]}, set())
    nat = install_tables(match_chains(rules, {}, N), N, existing)["nat"]
    assert nat.count("-D POSTROUTING -j LOCALDIRECTOR7-STATIC") == 2
    assert nat.index(":LOCALDIRECTOR7-STATIC - [0:0]") < nat.index(
        "-I POSTROUTING 1 -j LOCALDIRECTOR7-STATIC") < nat.index(SNAT)
    removal = removal_tables(existing, N)["nat"]
    assert removal == ["-D POSTROUTING -j LOCALDIRECTOR7-STATIC"] * 2 + [
        "-F LOCALDIRECTOR7-STATIC", "-X LOCALDIRECTOR7-STATIC"]


def test_a_static_change_rewrites_the_nat_table_only(sh: Shell) -> None:
    fake = FakeIptables()
    manager = RuleManager(7, fake)
    d = sh.appliance.director
    manager.install(desired_rules(d))
    assert sh("static 203.0.113.12 192.0.2.10")
    assert manager.update(desired_rules(d))
    assert fake.restored[-1] == ("*nat\n:LOCALDIRECTOR7 - [0:0]\n"
                                 f":LOCALDIRECTOR7-STATIC - [0:0]\n{SNAT}\nCOMMIT\n")
