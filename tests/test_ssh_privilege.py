"""Privileged SSH exec (issue 24, item 4): `username NAME privilege 15 password ...`, as
IOS has it, lets a script run `ssh NAME@box "show running-config"` with that user's own
password. Nothing else gets easier: other names still log in unprivileged with the
login password, the user's name never takes the login password (nor the enable
password), a key login is never privileged, and wrong passwords count as before."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pexpect
import pytest
from test_access_remote import ENABLE, MAIN_CONFIG, PASSWORD, Appliance

from localdirector.model.passwords import hash_password

# Loopback traffic only, in a network namespace of the module's own.
pytestmark = pytest.mark.usefixtures("private_loopback")

OPS = "0ps-s3cret"
VIEWER = "v1ewer"
USERS = (f"username ops privilege 15 password {hash_password(OPS)} encrypted\n"
         f"username viewer privilege 1 password {hash_password(VIEWER)} encrypted\n")


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory):
    with Appliance(tmp_path_factory.mktemp("privilege"), MAIN_CONFIG + USERS) as appliance:
        yield appliance


def ssh(box: Appliance, user: str, password: str, *command: str
        ) -> subprocess.CompletedProcess[str]:
    """OpenSSH with a password, as a script runs it."""
    return subprocess.run(["sshpass", "-p", password, *box.ssh_argv(
        "-T", "-o", "PubkeyAuthentication=no", f"{user}@127.0.0.1", *command)],
        capture_output=True, text=True, timeout=20)


def test_a_privilege_15_user_runs_privileged_commands_over_exec(box):
    shown = ssh(box, "ops", OPS, "show running-config")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "username ops privilege 15 password scrypt$" in shown.stdout
    assert ssh(box, "ops", OPS, "show privilege").stdout == "Current privilege level is 15\n"


def test_the_default_stays_unprivileged(box):
    refused = ssh(box, "admin", PASSWORD, "show running-config")
    assert refused.returncode == 1 and "% Invalid input" in refused.stdout
    assert ssh(box, "admin", PASSWORD, "show privilege").stdout == \
        "Current privilege level is 1\n"
    viewer = ssh(box, "viewer", VIEWER, "show privilege")
    assert viewer.stdout == "Current privilege level is 1\n", viewer.stderr


def test_a_user_name_takes_only_its_own_password(box):
    for password in (PASSWORD, ENABLE, VIEWER, "wrong"):
        result = ssh(box, "ops", password, "show privilege")
        assert result.returncode != 0 and "privilege level" not in result.stdout, password
    assert ssh(box, "viewer", OPS, "show privilege").returncode != 0
    assert box.logged("ssh login from 127.0.0.1")
    assert "wrong password (1 of 3)" in box.log()


def test_an_interactive_privilege_15_login_starts_at_the_privileged_prompt(box):
    child = pexpect.spawn("sshpass", ["-p", OPS, *box.ssh_argv(
        "-tt", "-o", "PubkeyAuthentication=no", "ops@127.0.0.1")], encoding="utf-8",
        timeout=15, env={"TERM": "dumb", "PATH": "/usr/bin:/bin"})
    child.expect_exact("lab#")
    child.send("disable\r")
    child.expect_exact("lab>")                      # and `enable` asks again
    child.send("enable\r")
    child.expect_exact("Password: ")
    child.send(ENABLE + "\r")
    child.expect_exact("lab#")
    child.send("exit\r")
    child.expect(pexpect.EOF)


def test_a_key_login_is_never_privileged(box, tmp_path: Path):
    key = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                   check=True)
    box.authorized_keys.write_text((tmp_path / "id.pub").read_text())
    try:
        result = subprocess.run(box.ssh_argv(
            "-T", "-i", str(key), "-o", "PasswordAuthentication=no", "-o",
            "IdentitiesOnly=yes", "ops@127.0.0.1", "show privilege"),
            capture_output=True, text=True, timeout=20)
    finally:
        box.authorized_keys.write_text("")
    assert result.stdout == "Current privilege level is 1\n", result.stderr


def test_bad_username_lines_change_nothing(tmp_path: Path):
    from test_shell_commands import Shell

    sh = Shell(tmp_path)
    assert not sh("username ops privilege 7 password x")
    assert sh.take().splitlines()[-1] == ("% privilege 7 means nothing here: 1 (user mode) "
                                          "or 15 (privileged mode)")
    assert not sh("username ops privilege 15 password plain encrypted")
    assert not sh("no username ops")
    assert sh.director.settings.users == {}
    assert sh("username ops privilege 15 password pw", "no username ops")
    assert sh.director.settings.users == {}
