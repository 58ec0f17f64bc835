"""Password hashing for `enable password`, `password` and remote logins.

One self-describing string (`scrypt$N$r$p$salt$hash`) is stored and written to the
running config, so a saved configuration never holds a clear-text password and the
access layer verifies logins with the same `verify_password`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

_SCHEME = "scrypt"
_N, _R, _P = 2 ** 14, 8, 1
_SALT_BYTES = 16
_KEY_BYTES = 32


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _derive(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                          maxmem=256 * 1024 * 1024, dklen=_KEY_BYTES)


def hash_password(password: str) -> str:
    """A fresh random salt each time: equal passwords do not give equal strings."""
    salt = os.urandom(_SALT_BYTES)
    key = _derive(password, salt, _N, _R, _P)
    return f"{_SCHEME}${_N}${_R}${_P}${_b64(salt)}${_b64(key)}"


def _fields(stored: str) -> tuple[int, int, int, bytes, bytes] | None:
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != _SCHEME:
        return None
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, key = _unb64(parts[4]), _unb64(parts[5])
    except ValueError:
        return None
    # Bounds keep a hostile config file from asking for gigabytes of scrypt memory.
    if not (2 <= n <= 2 ** 20 and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16
            and len(salt) >= 8 and len(key) == _KEY_BYTES):
        return None
    return n, r, p, salt, key


def is_hash(text: str) -> bool:
    """Whether `text` is a string `hash_password` could have written (for `... encrypted`)."""
    return _fields(text) is not None


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check of a typed password against a stored hash; False when unset."""
    fields = _fields(stored)
    if fields is None:
        return False
    n, r, p, salt, key = fields
    return hmac.compare_digest(_derive(password, salt, n, r, p), key)
