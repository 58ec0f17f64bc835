"""`localdirector lab --cluster N` as a person runs it (README, the man page): the
router, N directors announcing the VIP, the first director's shell on the terminal, the
flows spread and answered, and everything gone again on `exit`."""

from __future__ import annotations

import re
import time

import pexpect
import pytest
from conftest import require_netns
from test_docs import LabSession, answers, clean, lab_namespaces

pytestmark = pytest.mark.netns


@pytest.mark.parametrize("args", [("--cluster", "2"),
                                  ("--config", "examples/cluster.cfg", "--cluster", "2")])
def test_cluster_lab_session(args: tuple[str, ...]) -> None:
    require_netns()
    session = LabSession(*args)
    try:
        assert "2 directors behind a BGP/ECMP router" in session.banner
        assert len(lab_namespaces(session.name)) == 9   # clients, router, 2 + 5 reals
        deadline = time.monotonic() + 60
        session_up = re.compile(r"198\.19\.255\.1\s+65000\s+3\s+up")
        while not session_up.search(shown := session.run("show bgp")):
            assert time.monotonic() < deadline, f"no BGP session came up: {shown}"
            time.sleep(0.5)
        assert "192.0.2.10/32  192.0.2.10:80:0:tcp  announced" in session.run("show bgp")
        general = answers(session.run("lab curl general 6"))
        assert len(general) == 6 and set(general) <= {
            "real-203.0.113.12:80", "real-203.0.113.13:80", "real-203.0.113.14:80"}
        assert answers(session.run("lab curl preferred 2")) == ["real-203.0.113.15:80"] * 2
        session.child.sendline("exit")
        session.child.expect(pexpect.EOF, timeout=30)
        session.child.close()
        assert session.child.exitstatus == 0
        assert f"Lab removed: 9 namespaces deleted ({session.name}-*)." in clean(
            session.child.before)
        assert lab_namespaces(session.name) == []
    finally:
        session.close()
