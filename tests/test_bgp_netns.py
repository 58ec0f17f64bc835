"""The BGP service finds and runs ExaBGP where a deployment puts it (issue 23 item 3)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# systemd's PATH for a unit: no virtualenv's `bin` on it.
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

pytestmark = pytest.mark.netns

# In a network namespace of its own (a veth pair, the neighbour nobody at its far end):
# the BGP service as the appliance runs it, until ExaBGP runs; what ran, by its argv.
SCRIPT = """
import sys, time
from pathlib import Path
from localdirector import runtime
from localdirector.appliance import Appliance
from localdirector.bgp.service import BgpService
from localdirector.shell.registry import Mode

runtime.RUN = Path(sys.argv[1])
model = Appliance(runtime.RUN / "startup-config")
session = model.open_session("test", write=sys.stdout.write)
session.mode = Mode.CONFIG
for line in ("router bgp 64512", "bgp neighbor 198.51.100.2 remote-as 64513"):
    assert session.execute(line), line
service = BgpService(model)
service.start()
try:
    deadline = time.monotonic() + 10
    while not service.status().running.startswith("running"):
        assert time.monotonic() < deadline, service.status().running
        time.sleep(0.05)
    pid = int(service.status().running.split()[-1].rstrip(")"))
    print(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\\0"))
finally:
    service.stop()
"""
NAMESPACE = ("ip link set lo up && ip link add d0 type veth peer name d1 && "
             "ip addr add 198.51.100.1/24 dev d0 && ip link set d0 up && ip link set d1 up && exec \"$@\"")


def test_exabgp_beside_the_interpreter_runs_with_a_path_that_lacks_it(
        netns: None, tmp_path: Path) -> None:
    """An appliance started by its full path (examples/localdirector.service) with
    ExaBGP installed beside it (`pip install localdirector[bgp]` in a virtualenv) runs
    that ExaBGP, though PATH does not lead there."""
    beside = Path(sys.executable).parent / "exabgp"
    assert beside.exists(), "the test extra installs exabgp beside python"
    assert all(not (Path(d) / "exabgp").exists() for d in SYSTEM_PATH.split(":"))
    result = subprocess.run(
        ["unshare", "--net", "sh", "-c", NAMESPACE, "sh", sys.executable, "-c", SCRIPT,
         str(tmp_path)],
        env={**os.environ, "PATH": SYSTEM_PATH, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert repr(str(beside).encode()) in result.stdout, result.stdout
