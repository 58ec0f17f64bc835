"""Hardening of operator access, tried as an attacker would (issue 15) with real clients
(OpenSSH, telnet, raw sockets) against a real appliance on loopback: each test here
failed before its fix."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from test_access_remote import ENABLE, MAIN_CONFIG, Appliance


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


# -- 12: what a file or the configuration holds never harms a terminal ----------------

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
