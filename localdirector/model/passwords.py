"""Password hashing for `enable password`, `password` and remote logins.

One self-describing string (`scrypt$N$r$p$salt$hash`) is stored and written to the
running config, so a saved configuration never holds a clear-text password and the
access layer verifies logins with the same `verify_password`. `FAILED_PASSWORDS` throttles
guessing across every door and `enable`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import threading
import time
from collections import deque

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


# LocalDirector's `... encrypted` values: a hex digest (3.x printouts hold 30-32 hex
# digits) or PIX's 16 characters of base64. Their algorithm is not documented, so they
# cannot be verified: recognised, to say so, rather than called garbage.
_LOCALDIRECTOR_HASH = re.compile(r"[0-9a-f]{24,40}|[A-Za-z0-9./]{16}", re.ASCII)


def is_localdirector_hash(text: str) -> bool:
    return _LOCALDIRECTOR_HASH.fullmatch(text) is not None


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


class FailedPasswords:
    """Recent wrong passwords by source address and in all, shared by every door and by
    `enable`, so a guesser gains nothing by spreading tries over connections, sessions
    or doors: past PER_SOURCE failures in WINDOW seconds a source is refused without its
    password being checked, and past GLOBAL failures every source is, until the window
    has moved on (a stolen-password login then waits, an authorized key does not)."""

    WINDOW = 60.0
    PER_SOURCE = 10
    GLOBAL = 60

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._times: deque[tuple[float, str]] = deque()
        self._by_source: dict[str, int] = {}

    def _expire(self, now: float) -> None:
        while self._times and self._times[0][0] <= now - self.WINDOW:
            _, source = self._times.popleft()
            left = self._by_source[source] - 1
            if left:
                self._by_source[source] = left
            else:
                del self._by_source[source]

    def failed(self, source: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            if len(self._times) < 4 * self.GLOBAL:     # bounded, whatever the flood
                self._times.append((now, source))
                self._by_source[source] = self._by_source.get(source, 0) + 1

    def blocked(self, source: str) -> str | None:
        """Why `source` may not try a password now, or None."""
        with self._lock:
            self._expire(time.monotonic())
            if self._by_source.get(source, 0) >= self.PER_SOURCE:
                return f"{self.PER_SOURCE} failed passwords from {source} within a minute"
            if len(self._times) >= self.GLOBAL:
                return f"{self.GLOBAL} failed passwords within a minute"
        return None

    def clear(self) -> None:
        with self._lock:
            self._times.clear()
            self._by_source.clear()


# One appliance per process: one record of failures, whatever door they came through.
FAILED_PASSWORDS = FailedPasswords()
