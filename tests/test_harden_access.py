"""Hardening of operator access, tried as an attacker would (issue 15) with real clients
(OpenSSH, telnet, raw sockets) against a real appliance on loopback: each test here
failed before its fix."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from test_access_remote import ENABLE, MAIN_CONFIG, PASSWORD, Appliance

from localdirector.model.passwords import hash_password


@pytest.fixture
def appliance(tmp_path: Path) -> Iterator[Appliance]:
    running = Appliance(tmp_path, MAIN_CONFIG).start()
    try:
        yield running
    finally:
        running.stop()


def privileged(appliance: Appliance, *lines: str) -> str:
    """A script over SSH after `enable`: what it printed (stdout and stderr)."""
    result = appliance.ssh(stdin="\n".join(["enable", ENABLE, *lines]) + "\n")
    return result.stdout + result.stderr


# -- 12, 13: what a file or the configuration holds never harms a terminal ----------------

def test_show_config_with_bytes_that_are_not_text(tmp_path: Path) -> None:
    running = Appliance(tmp_path, "")
    running.config.write_bytes(MAIN_CONFIG.encode() + b"! caf\xe9 \xff\n"
                               b"! \x1b]0;owned\x07\x1b[2J\n")
    running.start()
    try:
        shown = privileged(running, "show config", "show version")
        assert "! caf\ufffd \ufffd" in shown, shown
        assert "! ?]0;owned??[2J" in shown and "\x1b" not in shown
        assert "Hostname:" in shown          # the session survived the bad bytes
    finally:
        running.stop()


def test_stored_hash_with_control_characters_is_refused(appliance: Appliance) -> None:
    good = hash_password("x")
    head, key = good.rsplit("$", 1)
    for bad in (f"{head}${key[:4]}\x1b[2J{key[4:]}", good.replace("$16384$", "$ 16384$"),
                f"{head}${key[:4]}\x07{key[4:]}"):
        shown = privileged(appliance, "configure terminal", f"enable password {bad} encrypted",
                           "end", "show running-config")
        assert "% Invalid input" in shown or "not a password hash" in shown, shown
        assert "\x1b" not in shown and "\x07" not in shown
    assert "password scrypt$" in privileged(appliance, "show running-config")  # unchanged
