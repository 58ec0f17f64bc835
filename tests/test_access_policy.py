"""Operator-access policy without sockets: access lists, passwords and the three tries,
`exec-timeout`, the telnet option parser, listen addresses and the kept host key."""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from localdirector.access import login
from localdirector.access.hostkey import load_or_create_host_key
from localdirector.access.service import listen_address
from localdirector.access.telnet import (DO, IAC, IP, NAWS, SB, SE, TTYPE, WILL,
                                         TelnetParser)
from localdirector.appliance import Appliance
from localdirector.model.passwords import FAILED_PASSWORDS
from localdirector.shell import running_config
from localdirector.shell.registry import Mode

# Loopback traffic only, in a network namespace of the module's own.
pytestmark = pytest.mark.usefixtures("private_loopback")


@pytest.fixture
def appliance(tmp_path: Path) -> Appliance:
    return Appliance(tmp_path / "startup-config")


def configure(appliance: Appliance, *lines: str) -> None:
    session = appliance.open_session("test", interactive=False)
    session.mode = Mode.CONFIG
    for line in lines:
        assert session.execute(line), line
    session.close()


# -- access lists ----------------------------------------------------------------------

def test_empty_access_list_allows_any_peer(appliance: Appliance) -> None:
    for kind in ("ssh", "telnet"):
        assert login.peer_allowed(appliance.director, kind, "198.51.100.7")
        assert login.peer_allowed(appliance.director, kind, "::1")


def test_access_list_admits_only_listed_networks(appliance: Appliance) -> None:
    configure(appliance, "ssh 198.51.100.0 255.255.255.0", "telnet 198.51.100.7 255.255.255.255")
    director = appliance.director
    assert login.peer_allowed(director, "ssh", "198.51.100.200")
    assert login.peer_allowed(director, "ssh", "::ffff:198.51.100.9")   # IPv4-mapped
    assert not login.peer_allowed(director, "ssh", "198.51.101.1")
    assert not login.peer_allowed(director, "ssh", "::1")               # no IPv6 entries
    assert login.peer_allowed(director, "telnet", "198.51.100.7")
    assert not login.peer_allowed(director, "telnet", "198.51.100.8")   # lists are separate


def test_access_lists_take_ipv6_prefixes_matched_by_family(appliance: Appliance) -> None:
    configure(appliance, "ssh 2001:db8:c::/48", "ssh 198.51.100.0 255.255.255.0",
              "telnet 198.51.101.0/24", "metrics ::1/128")
    director = appliance.director
    assert login.peer_allowed(director, "ssh", "2001:db8:c:ffff::9")
    assert login.peer_allowed(director, "ssh", "2001:db8:c::5%eth0")      # a zone is no part
    assert not login.peer_allowed(director, "ssh", "2001:db8:d::5")
    assert login.peer_allowed(director, "ssh", "198.51.100.9")
    # An IPv6 entry never admits IPv4, nor an IPv4 entry IPv6, even with equal low bits:
    # 2001:db8:c:: ends in the bits of 198.51.100.0's /24 neither.
    assert not login.peer_allowed(director, "ssh", "::c633:6409")
    assert not login.peer_allowed(director, "ssh", "198.51.102.1")
    assert login.peer_allowed(director, "telnet", "::ffff:198.51.101.7")  # IPv4-mapped
    assert not login.peer_allowed(director, "telnet", "2001:db8:c::5")
    assert login.peer_allowed(director, "metrics", "::1")
    assert not login.peer_allowed(director, "metrics", "127.0.0.1")
    saved = [line for line in running_config.render(director, appliance.registry)
             if line.split()[0] in ("ssh", "telnet", "metrics")]
    assert saved == ["telnet 198.51.101.0 255.255.255.0", "ssh 2001:db8:c::/48",
                     "ssh 198.51.100.0 255.255.255.0", "metrics ::1/128"]
    configure(appliance, "no ssh 2001:db8:c::/48")
    assert not login.peer_allowed(director, "ssh", "2001:db8:c::5")


def test_peers_are_labelled_with_ipv6_in_brackets() -> None:
    assert login.peer_label("2001:db8:c::5", 50022) == "[2001:db8:c::5]:50022"
    assert login.peer_label("::ffff:198.51.100.9", 50022) == "198.51.100.9:50022"
    assert login.peer_label("198.51.100.9", 50022) == "198.51.100.9:50022"


def test_bad_access_entries_are_refused_in_one_line(appliance: Appliance) -> None:
    out = io.StringIO()
    session = appliance.open_session("test", write=out.write, interactive=False)
    session.mode = Mode.CONFIG
    for line, error in [
            ("ssh 2001:db8:c::", "an IPv6 network is written ADDR/LEN"),
            ("ssh 2001:db8:c::1/48", "has host bits set"),
            ("ssh 2001:db8:c::/129", "ADDR/0-128"),
            ("ssh 198.51.100.0/33", "ADDR/0-32"),
            ("ssh 198.51.100.0", "A.B.C.D needs its MASK"),
            ("ssh 2001:db8:c::/48 255.255.0.0", "ADDR/LEN takes no MASK"),
            ("no ssh 2001:db8:d::/48", "no ssh entry 2001:db8:d::/48")]:
        out.truncate(0)
        out.seek(0)
        assert not session.execute(line), line
        assert error in out.getvalue(), (line, out.getvalue())
    assert appliance.director.settings.access("ssh") == []


def test_gate_limits_open_connections_per_door(appliance: Appliance) -> None:
    configure(appliance, "telnet 198.51.100.0 255.255.255.0")
    gate = login.Gate("telnet", limit=2)
    first = gate.admit(appliance.director, "198.51.100.1")
    assert first is not None
    assert not gate.admit(appliance.director, "203.0.113.1")   # not listed: takes no place
    assert gate.admit(appliance.director, "198.51.100.2")
    assert not gate.admit(appliance.director, "198.51.100.3")  # full
    first.release()
    first.release()                                            # once only
    assert gate.admit(appliance.director, "198.51.100.3")
    assert not gate.admit(appliance.director, "198.51.100.4")


def test_gate_limits_connections_not_logged_in_per_address(appliance: Appliance) -> None:
    gate = login.Gate("telnet", limit=10, pending_limit=2)
    places = [gate.admit(appliance.director, "198.51.100.1") for _ in range(2)]
    assert all(places)
    assert not gate.admit(appliance.director, "198.51.100.1")  # two not logged in yet
    assert gate.admit(appliance.director, "198.51.100.2")      # another address
    places[0].logged_in()
    assert gate.admit(appliance.director, "198.51.100.1")


# -- passwords and the three tries -----------------------------------------------------

class Peer:
    """Scripted answers to `Password:` and everything said back."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.asked = 0
        self.said: list[str] = []

    async def ask(self) -> str:
        self.asked += 1
        return self.answers.pop(0)

    def run(self, appliance: Appliance) -> bool:
        return asyncio.run(login.password_login(appliance.director, "telnet", "198.51.100.7",
                                                "198.51.100.7", self.ask, self.said.append))


@pytest.fixture(autouse=True)
def no_failures_yet() -> Iterator[None]:
    FAILED_PASSWORDS.clear()
    yield
    FAILED_PASSWORDS.clear()


@pytest.fixture
def no_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(login, "FAIL_DELAY", 0.0)


def test_failed_passwords_from_one_address_are_refused_unchecked(
        appliance: Appliance, no_delay: None) -> None:
    configure(appliance, "password s3cret")
    for _ in range(4):
        Peer("a", "b", "c").run(appliance)
    peer = Peer("s3cret")
    assert not peer.run(appliance)
    assert peer.said == [login.THROTTLED]


def test_no_password_configured_refuses_every_login(appliance: Appliance) -> None:
    peer = Peer("")
    assert not peer.run(appliance)
    assert peer.asked == 0 and peer.said == [login.NO_PASSWORD]


def test_right_password_after_a_wrong_one(appliance: Appliance, no_delay: None,
                                          caplog: pytest.LogCaptureFixture) -> None:
    configure(appliance, "password s3cret")
    peer = Peer("guess", "s3cret")
    assert peer.run(appliance)
    assert peer.said == [login.BAD_PASSWORD]
    assert "198.51.100.7" in caplog.text and "1 of 3" in caplog.text


def test_three_wrong_passwords_end_the_login(appliance: Appliance, no_delay: None,
                                            caplog: pytest.LogCaptureFixture) -> None:
    configure(appliance, "password s3cret")
    peer = Peer("a", "b", "c", "s3cret")
    assert not peer.run(appliance)
    assert peer.asked == 3                         # the fourth, right, one is never asked
    assert peer.said == [login.BAD_PASSWORD, login.BAD_PASSWORD, login.TOO_MANY]
    assert [r.getMessage().endswith(f"({n} of 3)") for n, r in enumerate(caplog.records, 1)] \
        == [True, True, True]


def test_enable_password_is_not_a_login_password(appliance: Appliance, no_delay: None) -> None:
    configure(appliance, "password s3cret", "enable password t0p")
    assert not Peer("t0p", "t0p", "t0p").run(appliance)


# -- exec-timeout ------------------------------------------------------------------------

def test_exec_timeout_default_seconds_and_no_form(appliance: Appliance) -> None:
    director = appliance.director
    assert director.settings.idle_seconds == 15 * 60

    def saved() -> list[str]:
        session = appliance.open_session("test")
        lines = running_config.render(director, session.registry)
        session.close()
        return [line for line in lines if line.startswith("exec-timeout")]

    assert saved() == []
    configure(appliance, "exec-timeout 0 5")
    assert director.settings.idle_seconds == 5 and saved() == ["exec-timeout 0 5"]
    configure(appliance, "exec-timeout 30")
    assert director.settings.idle_seconds == 1800 and saved() == ["exec-timeout 30"]
    configure(appliance, "exec-timeout 0 0")
    assert director.settings.idle_seconds == 0 and saved() == ["exec-timeout 0"]
    configure(appliance, "no exec-timeout")
    assert director.settings.idle_seconds == 15 * 60 and saved() == []


def test_exec_timeout_survives_write_and_replay(tmp_path: Path) -> None:
    first = Appliance(tmp_path / "startup-config")
    configure(first, "exec-timeout 2 30")
    session = first.open_session("test")
    text = "\n".join(running_config.render(first.director, session.registry)) + "\n"
    (tmp_path / "startup-config").write_text(text)
    second = Appliance(tmp_path / "startup-config")
    second.boot(lambda message: pytest.fail(message))
    assert second.director.settings.idle_seconds == 150


# -- telnet option parsing ----------------------------------------------------------------

class Recorder:
    def __init__(self) -> None:
        self.keys = b""
        self.options: list[tuple[int, int]] = []
        self.subs: list[tuple[int, bytes]] = []
        self.parser = TelnetParser(self._keys, lambda c, o: self.options.append((c, o)),
                                   lambda o, d: self.subs.append((o, d)))

    def _keys(self, data: bytes) -> None:
        self.keys += data


def test_telnet_parser_separates_keys_from_negotiation() -> None:
    r = Recorder()
    r.parser.feed(bytes([IAC, WILL, TTYPE]) + b"sh" + bytes([IAC, SB, NAWS, 0, 100, 0, 30,
                                                             IAC, SE]) + b" ver")
    r.parser.feed(bytes([IAC, SB, TTYPE, 0]) + b"XTERM" + bytes([IAC, SE, IAC, IAC, IAC, IP]))
    assert r.keys == b"sh ver\xff\x03"
    assert r.options == [(WILL, TTYPE)]
    assert r.subs == [(NAWS, bytes([0, 100, 0, 30])), (TTYPE, b"\x00XTERM")]


def test_telnet_enter_is_one_key_whatever_the_client_sends() -> None:
    r = Recorder()
    r.parser.feed(b"a\r\x00b\r\nc\r")
    r.parser.feed(b"\x00d")                # CR NUL split across two reads
    assert r.keys == b"a\rb\rc\rd"


def test_telnet_subnegotiation_is_bounded() -> None:
    r = Recorder()
    r.parser.feed(bytes([IAC, SB, TTYPE]) + b"x" * 100_000 + bytes([IAC, SE]) + b"k")
    assert len(r.subs[0][1]) < 100 and r.keys == b"k"


def test_telnet_unasked_options_are_parsed_not_typed() -> None:
    r = Recorder()
    r.parser.feed(bytes([IAC, DO, 39, IAC, WILL, 36]) + b"x")
    assert r.options == [(DO, 39), (WILL, 36)] and r.keys == b"x"


# -- command-line addresses and the host key ------------------------------------------------

def test_listen_address_forms() -> None:
    assert listen_address("2222") == ("", 2222)
    assert listen_address("127.0.0.1:23") == ("127.0.0.1", 23)
    assert listen_address("[::1]:2222") == ("::1", 2222)
    assert listen_address("[2001:DB8::0:1]:22") == ("2001:db8::1", 22)   # canonical
    # Unbracketed, `2001:db8::1:22` could be address ::1:22 on no port; a name would be
    # resolved to who knows which family: both refused.
    for bad in ("0", "65536", "ssh", "127.0.0.1:", "", "2001:db8::1:22", "[198.19.255.1]:22",
                "localhost:22", "[2001:db8::1]", "[2001:db8::1]:"):
        with pytest.raises(argparse.ArgumentTypeError):
            listen_address(bad)


def test_host_key_created_private_once_then_kept(tmp_path: Path) -> None:
    path = str(tmp_path / "keys" / "ssh_host_ed25519_key")
    first = load_or_create_host_key(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_or_create_host_key(path).get_fingerprint() == first.get_fingerprint()
    os.chmod(path, 0o644)                              # loosened by hand: tightened again
    assert load_or_create_host_key(path).get_fingerprint() == first.get_fingerprint()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_this_module_runs_in_a_network_namespace_of_its_own() -> None:
    """private_loopback: the listeners these modules open on 127.0.0.1 are not the
    host's."""
    host = os.stat(f"/proc/{os.getppid()}/ns/net").st_ino   # pytest's parent: the host's
    assert os.stat("/proc/thread-self/ns/net").st_ino != host
