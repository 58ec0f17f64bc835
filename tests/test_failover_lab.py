"""`localdirector lab --failover` as a person runs it (README, the man page): both units
up, the secondary's shell on the terminal standing by, FIG. 1 answering through the
primary; the primary killed as the banner says, the secondary takes over and answers;
everything gone again on `exit`."""

from __future__ import annotations

import re
import subprocess
import time

import pexpect
import pytest
from conftest import require_netns
from test_docs import LabSession, answers, clean, lab_namespaces

pytestmark = pytest.mark.netns


def _until(session: LabSession, line: str, pattern: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while not re.search(pattern, shown := session.run(line)):
        assert time.monotonic() < deadline, f"{line}: no {pattern!r} in {shown}"
        time.sleep(0.3)
    return shown


def test_failover_lab_session() -> None:
    require_netns()
    session = LabSession("--failover")
    try:
        assert "a failover pair" in session.banner
        assert len(lab_namespaces(session.name)) == 9   # clients, segment, 2 + 5 reals
        _until(session, "show failover", r"This host: Secondary - Standby[\s\S]*"
                                         r"Other host: Primary - Active")
        assert answers(session.run("lab curl unwelcome 2")) == ["real-203.0.113.15:80"] * 2
        command = re.search(r"ip netns pids (\S+) \| xargs kill -9", session.banner)
        pids = subprocess.run(["ip", "netns", "pids", command[1]], capture_output=True,
                              text=True, check=True).stdout.split()
        subprocess.run(["kill", "-9", *pids], check=True)
        _until(session, "show failover", r"This host: Secondary - Active")
        deadline = time.monotonic() + 60
        while answers(session.run("lab curl unwelcome 2")) != ["real-203.0.113.15:80"] * 2:
            assert time.monotonic() < deadline, "FIG. 1 does not answer through the secondary"
            time.sleep(0.3)
        session.child.sendline("exit")
        session.child.expect(pexpect.EOF, timeout=30)
        session.child.close()
        assert f"Lab removed: 9 namespaces deleted ({session.name}-*)." in clean(
            session.child.before)
        assert lab_namespaces(session.name) == []
    finally:
        session.close()
