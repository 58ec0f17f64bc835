"""`lab curl -6` refuses what it cannot send, with the reason, before any traffic (issue
26 item 6): a shell with a lab described in its environment (no namespaces needed: every
command here stops before it would run curl). What it sends through a real lab is in
tests/test_docs.py (the dual-stack example's `Try it:` commands)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from localdirector.lab.topology import client_addresses, client_addresses6

ROOT = Path(__file__).resolve().parents[1]


def lab_env(six: bool) -> dict[str, str]:
    clients = {g: list(a) for g, a in client_addresses().items()}
    info = {"name": "ldlab0000", "client_ns": "ldlab0000-cli", "director_ns": "ldlab0000-dir",
            "real_ns": {}, "ports": [80], "config": "x", "director_side": {},
            "clients": clients}
    if six:
        info["clients6"] = {g: list(a) for g, a in client_addresses6().items()}
    return {**os.environ, "PYTHONPATH": str(ROOT), "LOCALDIRECTOR_LAB": json.dumps(info)}


def typed(example: str, line: str, six: bool = True) -> str:
    """What `line` printed in a lab shell booted from examples/`example`."""
    proc = subprocess.run([sys.executable, "-m", "localdirector", "--no-dataplane",
                           "--config", str(ROOT / "examples" / example)],
                          input=f"{line}\n", capture_output=True, text=True, timeout=60,
                          env=lab_env(six), cwd=ROOT)
    return proc.stdout.split(f"{line}\n", 1)[1].strip()


@pytest.mark.parametrize("example, line, six, said", [
    ("dual-stack.cfg", "lab curl -6 preferred vip 192.0.2.10", True,
     "% 192.0.2.10 is an IPv4 address, and these clients send IPv6"),
    ("dual-stack.cfg", "lab curl preferred vip [2001:db8::10]", True,
     "% [2001:db8::10] is an IPv6 address, and these clients send IPv4 (lab curl -6: "
     "IPv6 clients)"),
    ("dual-stack.cfg", "lab curl -6 general 2 vip [2001:db8:5::10]:80", True,
     "% the lab's clients reach only 2001:db8::/64 through the director, not "
     "[2001:db8:5::10]"),
    ("fig1.cfg", "lab curl -6 unwelcome", True,
     "% no tcp virtual server with an IPv6 address is configured: nothing to send to"),
    ("dual-stack.cfg", "lab curl -6 preferred", False, "% this lab has no IPv6 clients"),
])
def test_lab_curl_6_refuses_with_the_reason(example: str, line: str, six: bool,
                                            said: str) -> None:
    assert typed(example, line, six).splitlines()[0] == said
