"""The failover pair without a network: its commands (validation, `no` forms, the
running-config round trip, `show failover`) and the keepalived and conntrackd files
written from the model (docs/design.rst, "Failover")."""

from __future__ import annotations

from pathlib import Path

import pytest

from localdirector.appliance import Appliance
from localdirector.commands.failover import render
from localdirector.failover import configs, presence
from localdirector.model.addr import parse_ip
from localdirector.model.failover import DaemonStatus, FailoverConfig, FailoverStatus
from localdirector.shell import running_config
from localdirector.shell.registry import Mode

# Loopback traffic only, in a network namespace of the module's own.
pytestmark = pytest.mark.usefixtures("private_loopback")

KEY = "failover key hashed CHTaq02iBnFKYFt2PfwXw8KlcOb0eRB4AK1UCG3eECo"   # correcthorse
PAIR = ["failover ip address 198.19.255.2", KEY, "failover poll 100 holdtime 500",
        "failover virtual 198.51.100.1 255.255.255.0",
        "failover virtual 203.0.113.1 255.255.255.0", "replicate", "failover"]


def shell(tmp_path: Path) -> tuple[Appliance, list[str], object]:
    appliance = Appliance(tmp_path / "startup-config")
    out: list[str] = []
    session = appliance.open_session("test", write=out.append, interactive=False)
    session.mode = Mode.CONFIG
    return appliance, out, session


def saved(appliance: Appliance) -> list[str]:
    return [line for line in running_config.render(appliance.director, appliance.registry)
            if line.startswith(("failover", "replicate"))]


def replayed(tmp_path: Path, lines: list[str]) -> tuple[Appliance, object]:
    """A shell that took `lines`, whose running-config shows them as typed and replays
    to the same in another shell."""
    appliance, _out, session = shell(tmp_path)
    for line in lines:
        assert session.execute(line), line
    assert saved(appliance) == lines
    again, _, other = shell(tmp_path)
    for line in saved(appliance):
        assert other.execute(line), line
    assert saved(again) == lines
    return appliance, session


def test_commands_round_trip(tmp_path: Path) -> None:
    appliance, session = replayed(tmp_path, PAIR)
    for line in ("no failover", "no replicate", "no failover poll",
                 "no failover virtual 203.0.113.1", "no failover ip address",
                 "no failover key"):
        assert session.execute(line), line
    assert saved(appliance) == ["failover virtual 198.51.100.1 255.255.255.0"]


@pytest.mark.parametrize("line", ["failover poll 105", "failover poll 100 holdtime 300",
                                  "failover virtual 198.51.100.0 255.255.255.0",
                                  "failover ip address 127.0.0.1",
                                  "failover key short", "failover key correct horse",
                                  "failover key hashed CHTaq02iBnFKYFt2PfwXw8Kl",
                                  "failover key hashed CHTaq02iBnFKYFt2PfwXw8KlcOb0eRB4AK1"
                                  "UCG3eECp", "failover key hashed CHTaq02iBnFKYFt2PfwX"
                                  "w8KlcOb0eRB4AK1UCG3eEC=",
                                  "no failover virtual 192.0.2.1"])
def test_bad_input_changes_nothing(tmp_path: Path, line: str) -> None:
    appliance, out, session = shell(tmp_path)
    for good in PAIR:
        session.execute(good)
    before = saved(appliance)
    assert not session.execute(line)
    assert saved(appliance) == before
    assert out[-1].rstrip("\n").split("\n")[-1].startswith("% ")


def test_key_from_a_passphrase_is_stored_hashed_and_the_same_on_both_units(
        tmp_path: Path) -> None:
    """Both units derive the same key from the same passphrase (a fixed salt); the
    running-config holds the key's stored form, never the passphrase, and that form
    replays to the same key."""
    primary, _, one = shell(tmp_path)
    secondary, _, other = shell(tmp_path)
    assert one.execute("failover key correcthorse")
    assert other.execute("failover key correcthorse")
    assert saved(primary) == saved(secondary) == [KEY]
    assert "correcthorse" not in "\n".join(running_config.render(primary.director,
                                                                 primary.registry))
    assert other.execute("failover key none")
    assert saved(secondary) == ["failover key none"]
    assert secondary.director.settings.failover.key == b""
    assert other.execute(KEY)
    assert secondary.director.settings.failover.key == primary.director.settings.failover.key
    assert len(primary.director.settings.failover.key) == 32


@pytest.mark.parametrize(("line", "shown"), [
    (KEY, "Failover key ******** (shared key set)"),
    ("failover key none", "Failover key none: the stream to the other unit is "
                          "unauthenticated"),
    ("no failover key", "Failover key not set: no stream to the other unit")])
def test_show_failover_masks_the_key(tmp_path: Path, line: str, shown: str) -> None:
    appliance, out, session = shell(tmp_path)
    assert session.execute(KEY) and session.execute(line)
    session.mode = Mode.PRIV
    out.clear()
    assert session.execute("show failover")
    text = "".join(out)
    assert shown in text and "CHTaq02" not in text
    out.clear()
    assert session.execute("show failover | json")
    assert "CHTaq02" not in "".join(out)


def test_actions_need_the_running_service(tmp_path: Path) -> None:
    _appliance, out, session = shell(tmp_path)
    session.mode = Mode.PRIV
    for line in ("failover active", "failover reset", "write standby"):
        assert not session.execute(line)
        assert "--failover-link" in out[-1]
    assert session.execute("show failover")
    assert "Failover Off" in "".join(out)


def test_show_failover_layout() -> None:
    status = FailoverStatus("Primary", "Active", 12.7, "fo0", "198.19.255.1", "Normal",
                            "Standby", 0.0, "to 198.19.255.2, up",
                            (DaemonStatus("keepalived", 41, 0),
                             DaemonStatus("conntrackd", None, 2)))
    lines = render(True, 200, 1000, True, "set", status)
    assert lines[:4] == ["Failover On",
                         "Poll frequency 200 milliseconds, holdtime 1000 milliseconds",
                         "Replication On: to 198.19.255.2, up",
                         "Failover key ******** (shared key set)"]
    text = "\n".join(lines)
    assert "This host: Primary - Active" in text and "Active time: 12 (sec)" in text
    assert "keepalived: running (pid 41)" in text
    assert "conntrackd: DOWN, being restarted, restarted 2 times" in text
    assert "Other host: Secondary - Standby" in text


def test_keepalived_file_from_the_model(tmp_path: Path) -> None:
    config = FailoverConfig(True, parse_ip("198.19.255.2"), 100, 500, True,
                            [(parse_ip("203.0.113.1"), 24), (parse_ip("198.51.100.1"), 24),
                             (parse_ip("198.18.0.1"), 24)])
    unit = configs.Unit("secondary", "fo0", "198.19.255.1", tmp_path)
    addresses = [("cli0", "198.51.100.253", 24), ("cli0", "198.18.0.253", 24),
                 ("br0", "203.0.113.253", 24), ("fo0", "198.19.255.1", 24)]
    text = configs.keepalived(config, unit, addresses)
    assert "vrrp_instance LD_cli0" in text and "vrrp_instance LD_br0" in text
    assert text.index("LD_cli0 {") < text.index("LD_br0 {")   # lowest address first
    assert "198.18.0.1/24 dev cli0" in text and "203.0.113.1/24 dev br0" in text
    assert text.count("advert_int 0.1") == 2 and text.count("nopreempt") == 2
    assert "priority 100" in text and "unicast_peer {\n        198.19.255.2" in text
    assert "group {\n        LD_cli0\n        LD_br0\n    }" in text
    with pytest.raises(ValueError, match="no interface"):
        configs.keepalived(config, unit, addresses[:1])
    ct = configs.conntrackd(config, unit)
    assert "Mode FTFW" in ct and "IPv4_Destination_Address 198.19.255.2" in ct
    assert f"LockFile {tmp_path / 'conntrackd.lock'}" in ct
    # The fast paths' UDP flows are conntrack entries too: replicated like TCP's.
    assert "Protocol Accept {\n            TCP\n            UDP\n        }" in ct


def test_the_link_watch_asks_each_segment_from_the_units_own_address() -> None:
    instances = [("cli0", ["198.51.100.1/24", "198.18.0.1/24"]), ("real0", ["203.0.113.1/24"]),
                 ("br9", ["192.0.2.1/24"])]
    addresses = [("cli0", "198.51.100.1", 24),      # the virtual itself, when active
                 ("cli0", "198.51.100.252", 24), ("real0", "203.0.113.252", 24),
                 ("fo0", "198.19.255.1", 24)]
    assert presence.asks(instances, addresses) == [
        ("cli0", "198.51.100.252", "198.51.100.1"), ("real0", "203.0.113.252", "203.0.113.1")]
