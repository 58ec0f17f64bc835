"""BGP for IPv6 VIPs without a network (docs/design.rst, "Scale-out"): neighbours of
either family, each session carrying its own family's unicast routes; ExaBGP's
configuration and commands written from a dual-stack model; the router's BIRD
configuration with an IPv6 channel and ECMP."""

from __future__ import annotations

from pathlib import Path

import pytest

from localdirector.bgp import service as service_module
from localdirector.bgp.speaker import config_text
from localdirector.lab.cluster import bird_config, director_link, director_link6
from localdirector.model import bgp
from localdirector.model.addr import parse_ip
from tests.test_shell_commands import Shell

DUAL = """\
real [2001:db8:1::11]
virtual [2001:db8::10]:80
bind [2001:db8::10]:80 [2001:db8:1::11]
advertise [2001:db8::10]:80
real 203.0.113.12
virtual 192.0.2.10:80
bind 192.0.2.10:80 203.0.113.12
advertise 192.0.2.10:80
router bgp 65001
bgp neighbor 198.19.255.1 remote-as 65000 hold-time 3
"""
V6_NEIGHBOR = "bgp neighbor 2001:db8:ff::1 remote-as 65000 hold-time 3"


@pytest.fixture
def sh(tmp_path: Path) -> Shell:
    return Shell.configured(tmp_path, DUAL)


def prefixes(sh: Shell) -> dict[str, str]:
    sh.session.mode = sh.session.mode.__class__.PRIV
    assert sh("show bgp"), sh.take()
    rows = [line.split(None, 2) for line in sh.take().splitlines()
            if line.startswith(("192.0.2.", "2001:db8:")) and "/" in line.split()[0]]
    return {prefix: state.strip() for prefix, _virtual, state in rows}


def test_an_ipv6_vip_waits_for_an_ipv6_neighbor(sh: Shell) -> None:
    assert bgp.wanted(sh.director) == {parse_ip("192.0.2.10")}
    assert prefixes(sh) == {"192.0.2.10/32": "pending",
                            "2001:db8::10/128": "withdrawn (no ipv6 neighbor)"}
    sh.session.mode = sh.session.mode.__class__.CONFIG
    assert sh(V6_NEIGHBOR), sh.take()
    assert bgp.wanted(sh.director) == {parse_ip("192.0.2.10"), parse_ip("2001:db8::10")}
    assert prefixes(sh) == {"192.0.2.10/32": "pending", "2001:db8::10/128": "pending"}
    assert V6_NEIGHBOR in sh.config()


@pytest.mark.parametrize("addr", ["fe80::1", "::1", "::", "ff02::2"])
def test_unusable_ipv6_neighbors_are_refused(sh: Shell, addr: str) -> None:
    before = sh.config()
    assert not sh(f"bgp neighbor {addr} remote-as 65000")
    assert sh.take().splitlines()[-1] == f"% {addr} cannot be a BGP neighbor"
    assert sh.config() == before


def test_exabgp_sessions_carry_their_own_family(sh: Shell, tmp_path: Path) -> None:
    assert sh(V6_NEIGHBOR)
    config = sh.director.settings.bgp
    local = {parse_ip("198.19.255.1"): parse_ip("198.19.255.11"),
             parse_ip("2001:db8:ff::1"): parse_ip("2001:db8:ff::11")}
    text = config_text(config, local, tmp_path / "relay", tmp_path / "c", tmp_path / "e")
    four = text[text.index("neighbor 198.19.255.1 {"):text.index("neighbor 2001:db8:ff::1")]
    six = text[text.index("neighbor 2001:db8:ff::1 {"):]
    assert "family {\n        ipv4 unicast;\n    }" in four
    assert "family {\n        ipv6 unicast;\n    }" in six
    assert "local-address 2001:db8:ff::11;" in six
    # A BGP identifier is 32 bits: the IPv6 session borrows the IPv4 local address.
    assert "router-id 198.19.255.11;" in six and "router-id 198.19.255.11;" in four
    # IPv6 sessions alone need `bgp router-id`.
    assert sh("no bgp neighbor 198.19.255.1")
    with pytest.raises(ValueError, match="needs bgp router-id"):
        config_text(config, local, tmp_path / "relay", tmp_path / "c", tmp_path / "e")
    assert sh("bgp router-id 198.19.255.11")
    assert "router-id 198.19.255.11;" in config_text(config, local, tmp_path / "relay",
                                                     tmp_path / "c", tmp_path / "e")
    assert not sh("bgp router-id 2001:db8:ff::11")


class FakeSpeaker:
    proc = type("Process", (), {"pid": 1})

    def __init__(self) -> None:
        self.lines: list[str] = []

    def alive(self) -> bool:
        return True

    def send(self, line: str) -> None:
        self.lines.append(line)


def test_each_vip_goes_to_the_neighbors_of_its_family(sh: Shell) -> None:
    """What the service tells ExaBGP: /32 to IPv4 sessions, /128 to IPv6 ones, next hop
    this director's address on each; withdrawn the same way."""
    assert sh(V6_NEIGHBOR, "bgp neighbor 198.19.255.2 remote-as 65000")
    service = service_module.BgpService(sh.appliance)
    speaker = FakeSpeaker()
    config = sh.director.settings.bgp
    service._key = service_module._config_key(config)   # as if ExaBGP ran this config
    service._speaker = speaker
    service._neighbors = [n.addr for n in config.neighbors]
    service._step()
    assert sorted(speaker.lines) == [
        "neighbor 198.19.255.1 announce route 192.0.2.10/32 next-hop self",
        "neighbor 198.19.255.2 announce route 192.0.2.10/32 next-hop self",
        "neighbor 2001:db8:ff::1 announce route 2001:db8::10/128 next-hop self"]
    speaker.lines.clear()
    assert sh("no advertise [2001:db8::10]:80")
    service._step()
    assert speaker.lines == [
        "neighbor 2001:db8:ff::1 withdraw route 2001:db8::10/128 next-hop self"]
    assert service.status().announced == {parse_ip("192.0.2.10")}


def test_birds_ipv6_sessions_and_ecmp(tmp_path: Path) -> None:
    text = bird_config([("d1", director_link(1)), ("d1v6", director_link6(1)),
                        ("d2v6", director_link6(2))], 3, tmp_path / "bird.log")
    assert "protocol bgp d1 from director { local 198.19.255.1; neighbor 198.19.255.11" \
        in text
    assert ("protocol bgp d2v6 from director6 { local 2001:db8:ff::1; neighbor "
            "2001:db8:ff::12 as 65001; }") in text
    assert "ipv6 { import all; export none; };" in text
    assert ("protocol kernel {\n    ipv6 { import none; export all; };\n"
            "    merge paths on;\n}") in text
