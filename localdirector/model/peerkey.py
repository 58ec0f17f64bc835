"""The failover pair's shared key (`failover key`), which authenticates every message of
the units' own stream (docs/design.rst, "Failover", "The peer channel's threat model").

Both units must derive the same key from the same passphrase without exchanging
anything, so the salt is fixed (`SALT`), unlike a login password's: the stretching
(scrypt) only slows a guesser who captured a message on the link. The running-config
holds the derived key, never the passphrase (`failover key hashed BASE64`), which
replays to the very same key; that stored form is key-equivalent, so configuration
files stay 0600 like the ones holding password hashes."""

from __future__ import annotations

import base64
import hashlib
import re

from .errors import ModelError

SALT = b"localdirector failover key v1"   # fixed: both units derive the same key
_N, _R, _P = 2 ** 14, 8, 1
KEY_BYTES = 32
MIN_PASSPHRASE = 8       # also keeps a passphrase from reading as `none` or `hashed`
NONE = b""               # `failover key none`: the stream runs unauthenticated
_STORED = re.compile(r"[A-Za-z0-9_-]{43}", re.ASCII)   # 32 bytes, unpadded URL-safe


def derive(passphrase: str) -> bytes:
    """The 32-byte key of `failover key PASSPHRASE` (slow on purpose: about 50 ms)."""
    if len(passphrase) < MIN_PASSPHRASE:
        raise ModelError(f"a failover key needs at least {MIN_PASSPHRASE} characters")
    return hashlib.scrypt(passphrase.encode("utf-8"), salt=SALT, n=_N, r=_R, p=_P,
                          maxmem=64 * 1024 * 1024, dklen=KEY_BYTES)


def stored(key: bytes) -> str:
    """The running-config's form of a key: unpadded URL-safe base64."""
    return base64.urlsafe_b64encode(key).decode("ascii").rstrip("=")


def parse_stored(text: str) -> bytes:
    """The key `failover key hashed TEXT` names; ModelError unless `stored` could have
    written TEXT (the decoder alone would skip stray bytes)."""
    key = base64.urlsafe_b64decode(text + "=") if _STORED.fullmatch(text) else b""
    if not key or stored(key) != text:   # the last character's spare bits must be zero
        raise ModelError("a hashed failover key is 43 characters of URL-safe base64")
    return key
