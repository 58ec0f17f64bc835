"""Password hashing for `enable password`, `password` and remote logins.

One self-describing string (`scrypt$N$r$p$salt$hash`) is stored and written to the
running config, so a saved configuration never holds a clear-text password and the
access layer verifies logins with the same `verify_password`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re

_SCHEME = "scrypt"
_N, _R, _P = 2 ** 14, 8, 1
_SALT_BYTES = 16
_KEY_BYTES = 32


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# Exactly what `hash_password` writes: ASCII digits and unpadded URL-safe base64. The
# decoders alone are lenient (int() takes spaces and '_', b64decode skips any other
# byte), which let a "hash" carry escape sequences into `show running-config`.
_STORED = re.compile(r"([a-z0-9]+)\$([0-9]{1,8})\$([0-9]{1,3})\$([0-9]{1,3})"
                     r"\$([A-Za-z0-9_-]+)\$([A-Za-z0-9_-]+)", re.ASCII)


def _derive(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                          maxmem=256 * 1024 * 1024, dklen=_KEY_BYTES)


def hash_password(password: str) -> str:
    """A fresh random salt each time: equal passwords do not give equal strings."""
    salt = os.urandom(_SALT_BYTES)
    key = _derive(password, salt, _N, _R, _P)
    return f"{_SCHEME}${_N}${_R}${_P}${_b64(salt)}${_b64(key)}"


def _fields(stored: str) -> tuple[int, int, int, bytes, bytes] | None:
    parts = _STORED.fullmatch(stored)
    if parts is None or parts[1] != _SCHEME:
        return None
    try:
        n, r, p = int(parts[2]), int(parts[3]), int(parts[4])
        salt, key = _unb64(parts[5]), _unb64(parts[6])
    except ValueError:   # binascii.Error: a length base64 cannot have
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
