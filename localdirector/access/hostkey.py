"""The SSH host key: generated on first start, then kept.

Operators pin the appliance's fingerprint in their known_hosts; a key that changed on
every restart would train them to ignore the man-in-the-middle warning, so the key is
created once, written atomically with owner-only permissions and reused afterwards."""

from __future__ import annotations

import logging
import os
import stat

from .sshlib import asyncssh

log = logging.getLogger("localdirector.access")

HOST_KEY_NAME = "ssh_host_ed25519_key"


def default_host_key_path(config_path: str) -> str:
    """Beside the startup-config: the two belong to the same appliance and move together."""
    return os.path.join(os.path.dirname(os.path.abspath(config_path)), HOST_KEY_NAME)


def load_or_create_host_key(path: str) -> asyncssh.SSHKey:
    """Read the key at `path`, creating it first if there is none."""
    if not os.path.exists(path):
        _create(path)
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        # A private key others can read is a key others can impersonate us with.
        log.warning("host key %s had mode %o; tightened to 600", path, mode)
        os.chmod(path, 0o600)
    return asyncssh.read_private_key(path)


def _create(path: str) -> None:
    """Write a fresh Ed25519 key so that a crash never leaves a half-written key behind."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    key = asyncssh.generate_private_key("ssh-ed25519")
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(key.export_private_key())
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    with open(f"{path}.pub", "wb") as f:
        f.write(key.export_public_key())
    log.info("generated SSH host key %s (%s)", path, key.get_fingerprint())
