"""Stock network-automation clients against the real appliance (issue 24, item 5), each
in a network namespace the test builds (loopback only), pinned in setup.cfg's `test`
extra: NAPALM 5.2's `ios` driver (over Netmiko), classic scrapli's `IOSXEDriver` on
the system (OpenSSH) transport, and Ansible's `cisco.ios` collection over `network_cli`
with `become: enable`. Netmiko alone and expect scripts are in tests/test_automation.py.

Each client runs in a child process under `unshare --net`, with the appliance beside it
on the namespace's loopback; the child prints what the client returned as JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
NAMESPACE = 'ip link set lo up && exec "$@"'

# The appliance, started in the child, around the client code.
PROLOGUE = """
import json, sys
from pathlib import Path
from test_access_remote import ENABLE, MAIN_CONFIG, PASSWORD, Appliance
from test_automation import MODEL
box = Appliance(Path(sys.argv[1]), MAIN_CONFIG + MODEL).start()
try:
    out = {}
"""
EPILOGUE = """
finally:
    box.stop()
print(json.dumps(out, default=str))
"""


def in_namespace(tmp_path: Path, client: str, *args: str) -> dict:
    """`client` (indented under the prologue's `try:`) run beside a fresh appliance in
    a new network namespace, with `args` after the appliance's directory in its
    sys.argv; the `out` dict it fills."""
    code = PROLOGUE + client + EPILOGUE
    result = subprocess.run(
        ["unshare", "--net", "sh", "-c", NAMESPACE, "sh", sys.executable, "-c", code,
         str(tmp_path / "box"), *args],
        capture_output=True, text=True, timeout=180, cwd=TESTS,
        env={**os.environ, "PYTHONPATH": f"{ROOT}:{TESTS}"})
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.splitlines()[-1])


NAPALM = """
    from napalm import get_network_driver
    device = get_network_driver("ios")(
        "127.0.0.1", "admin", PASSWORD, timeout=30,
        optional_args={"port": box.ssh_port, "secret": ENABLE, "use_keys": False,
                       "allow_agent": False})
    device.open()
    try:
        out["facts"] = device.get_facts()
        out["config"] = device.get_config(retrieve="all")
        out["cli"] = device.cli(["show virtual", "show privilege"])
    finally:
        device.close()
    out["startup"] = box.config.read_text()
"""


@pytest.mark.netns
def test_napalm_ios_facts_config_and_cli(netns: None, tmp_path: Path) -> None:
    got = in_namespace(tmp_path, NAPALM)
    facts = got["facts"]
    assert facts["hostname"] == "lab" and facts["uptime"] >= 0
    assert facts["interface_list"] == ["lo"]          # the namespace's one interface
    assert facts["serial_number"] == Path("/etc/machine-id").read_text().strip()
    assert facts["os_version"] == "Unknown"           # NAPALM looks for "Cisco IOS"
    assert "hostname lab" in got["config"]["running"]
    assert "virtual 192.0.2.10:80" in got["config"]["running"].splitlines()
    assert got["config"]["startup"] == got["startup"].strip()
    assert "192.0.2.11:443:0:tcp" in got["cli"]["show virtual"]
    assert got["cli"]["show privilege"].strip() == "Current privilege level is 15"


SCRAPLI = """
    from scrapli.driver.core import IOSXEDriver
    with IOSXEDriver(host="127.0.0.1", port=box.ssh_port, auth_username="admin",
                     auth_password=PASSWORD, auth_secondary=ENABLE,
                     auth_strict_key=False, transport="system",
                     transport_options={"open_cmd": ["-o", "UserKnownHostsFile=/dev/null",
                                                     "-o", "PubkeyAuthentication=no"]},
                     timeout_ops=30) as device:
        out["prompt"] = device.get_prompt()
        out["version"] = device.send_command("show version").result
        out["config"] = device.send_configs(["real 203.0.113.40",
                                             "bind 192.0.2.11:443 203.0.113.40"]).failed
        out["bind"] = device.send_command("show running-config | include ^bind").result
        out["bad"] = device.send_command("show nonsense").failed
"""


@pytest.mark.netns
def test_scrapli_iosxe_driver_on_openssh(netns: None, tmp_path: Path) -> None:
    got = in_namespace(tmp_path, SCRAPLI)
    assert got["prompt"] == "lab#"                    # scrapli enters enable itself
    assert "lab uptime is" in got["version"]
    assert got["config"] is False
    assert "bind 192.0.2.11:443 203.0.113.13 203.0.113.40" in got["bind"].splitlines()
    assert got["bad"] is True                         # an error is reported as one


PLAYBOOK = """\
- hosts: box
  gather_facts: false
  tasks:
    - cisco.ios.ios_command:
        commands: [show privilege, show virtual]
      register: shown
    - cisco.ios.ios_config:
        lines: [real 203.0.113.40, virtual 192.0.2.12:80, bind 192.0.2.12:80 203.0.113.40]
        save_when: modified
      register: first
    - cisco.ios.ios_config:
        lines: [real 203.0.113.40, virtual 192.0.2.12:80, bind 192.0.2.12:80 203.0.113.40]
        save_when: modified
      register: second
    - cisco.ios.ios_facts:
    - ansible.builtin.copy:
        dest: "{{ result_file }}"
        content: "{{ {'shown': shown.stdout, 'first': first.changed,
                      'second': second.changed, 'hostname': ansible_net_hostname,
                      'version': ansible_net_version} | to_json }}"
      delegate_to: localhost
"""
ANSIBLE = """
    import os, shutil, subprocess
    here = box.dir
    # Installed beside this interpreter (a virtualenv), or on the PATH.
    playbook = shutil.which("ansible-playbook",
                            path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    (here / "playbook.yml").write_text(sys.argv[2])
    (here / "hosts").write_text(
        f"[box]\\nlab ansible_host=127.0.0.1 ansible_port={box.ssh_port}\\n[box:vars]\\n"
        "ansible_connection=ansible.netcommon.network_cli\\n"
        "ansible_network_os=cisco.ios.ios\\nansible_user=admin\\n"
        f"ansible_password={PASSWORD}\\nansible_become=true\\n"
        f"ansible_become_method=enable\\nansible_become_password={ENABLE}\\n"
        "ansible_network_cli_ssh_type=paramiko\\n")
    run = subprocess.run(
        [playbook, "-i",
         str(here / "hosts"), "-e", f"result_file={here / 'result.json'}",
         str(here / "playbook.yml")],
        capture_output=True, text=True, timeout=240,
        env={**os.environ, "ANSIBLE_HOST_KEY_CHECKING": "False",
             "ANSIBLE_HOME": str(here / "ansible"), "ANSIBLE_LOCAL_TEMP": str(here / "tmp"),
             "ANSIBLE_PERSISTENT_COMMAND_TIMEOUT": "60"})
    out["rc"], out["log"] = run.returncode, run.stdout[-4000:] + run.stderr[-4000:]
    if run.returncode == 0:
        out.update(json.loads((here / "result.json").read_text()))
    out["startup"] = box.config.read_text()
"""


@pytest.mark.netns
def test_ansible_cisco_ios_command_config_twice_and_facts(netns: None,
                                                          tmp_path: Path) -> None:
    """`become: enable` (it asks `show privilege`), `ios_config` with `save_when:
    modified` (`show startup-config`, then `copy running-config startup-config` and its
    question): changed the first time, unchanged the second, saved; `ios_facts`."""
    got = in_namespace(tmp_path, ANSIBLE, PLAYBOOK)
    assert got["rc"] == 0, got["log"]
    assert got["shown"][0] == "Current privilege level is 15"
    assert "192.0.2.11:443:0:tcp" in got["shown"][1]
    assert (got["first"], got["second"]) == (True, False), got["log"]
    assert {"real 203.0.113.40", "virtual 192.0.2.12:80",
            "bind 192.0.2.12:80 203.0.113.40"} <= set(got["startup"].splitlines())
    assert (got["hostname"], got["version"]) == ("lab", "0.1.0")
