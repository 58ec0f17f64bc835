"""The framing of the units' stream: bounded lines, each message authenticated
(docs/design.rst, "Failover", "The peer channel").

A connection carries messages one way, from the unit that connected to the one that
accepted. The acceptor first sends a banner with a fresh random nonce; every message
after it is one line, `SEQ MAC PAYLOAD`: a sequence number that rises by at least one
each message, the HMAC-SHA256 (hex) of the sender's unit, the nonce, the sequence
number and the payload under the pair's shared key, and the payload, compact JSON
(which escapes every newline). A captured message cannot be replayed (another
connection has another nonce; on its own connection its number is spent), reflected
to the unit that sent it (the MAC names the sender) or altered, and a reader never
holds more than `MAX_LINE` bytes of a line that does not end."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
from typing import Any

BANNER = b"LDPEER1 "
NONCE_BYTES = 16
# A message is at most a configuration (20,000 assigns: about 1.1 MB as JSON) or a
# chunk of 2,000 connection records (about 0.3 MB); the sticky tables of a reset go in
# one message too (about 80 bytes an entry). 16 MiB leaves room for those (and some
# 200,000 sticky entries) and bounds what one peer can make a unit hold.
MAX_LINE = 16 * 1024 * 1024
_CONTEXT = b"localdirector failover stream v1\0"
_READ = 64 * 1024
_MAC_HEX = 64
_SEQ_DIGITS = 19     # below 2 ** 64: eight bytes in the MAC


class ChannelError(Exception):
    """A connection that must be dropped; the message says why, in a few words."""


def mac(key: bytes, sender: str, nonce: bytes, seq: int, payload: bytes) -> bytes:
    """What authenticates one message: the sender's unit (so a message cannot be sent
    back to the unit that wrote it), the acceptor's nonce (so it cannot be replayed on
    another connection), its number (nor on its own) and the payload."""
    data = b"".join((_CONTEXT, sender.encode("ascii"), b"\0", nonce,
                     seq.to_bytes(8, "big"), payload))
    return hmac.new(key, data, hashlib.sha256).digest()


def banner(nonce: bytes) -> bytes:
    return BANNER + nonce.hex().encode("ascii") + b"\n"


def new_nonce() -> bytes:
    return os.urandom(NONCE_BYTES)


def parse_banner(line: bytes) -> bytes:
    """The acceptor's nonce."""
    if not line.startswith(BANNER):
        raise ChannelError("not a failover banner")
    try:
        nonce = bytes.fromhex(line[len(BANNER):].decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ChannelError("not a failover banner") from None
    if len(nonce) != NONCE_BYTES:
        raise ChannelError("not a failover banner")
    return nonce


class Sealer:
    """The connecting unit's end: numbers and authenticates each message."""

    def __init__(self, key: bytes, sender: str, nonce: bytes) -> None:
        self.key, self.sender, self.nonce = key, sender, nonce
        self.seq = 0

    def seal(self, message: dict[str, Any]) -> bytes:
        payload = json.dumps(message, separators=(",", ":")).encode("ascii")
        self.seq += 1
        tag = mac(self.key, self.sender, self.nonce, self.seq, payload).hex()
        return b"%d %s %s\n" % (self.seq, tag.encode("ascii"), payload)


class Opener:
    """The accepting unit's end: a message is taken only when its MAC is right for the
    other unit and this connection's nonce, and its number is above the last one's."""

    def __init__(self, key: bytes, sender: str, nonce: bytes) -> None:
        self.key, self.sender, self.nonce = key, sender, nonce
        self.last = 0

    def open(self, line: bytes) -> dict[str, Any]:
        parts = line.split(b" ", 2)
        if (len(parts) != 3 or not parts[0].isdigit() or len(parts[0]) > _SEQ_DIGITS
                or len(parts[1]) != _MAC_HEX):
            raise ChannelError("not a failover message")
        seq, tag, payload = int(parts[0]), parts[1], parts[2]
        expected = mac(self.key, self.sender, self.nonce, seq, payload)
        if not hmac.compare_digest(expected.hex().encode("ascii"), tag):
            raise ChannelError("bad MAC (wrong key, altered or replayed)")
        if seq <= self.last:
            raise ChannelError("replayed message (sequence number not increasing)")
        self.last = seq
        try:
            message = json.loads(payload)
        except ValueError:
            raise ChannelError("authenticated but not JSON") from None
        if not isinstance(message, dict):
            raise ChannelError("authenticated but not a message")
        return message


class LineReader:
    """Lines of a socket, never holding more than `limit` bytes of one: a longer line
    is an error, not a buffer that grows. The socket's timeout applies to each read."""

    def __init__(self, sock: socket.socket, limit: int = MAX_LINE) -> None:
        self.sock = sock
        self.limit = limit
        self._buffer = bytearray()
        self._scanned = 0      # bytes of the buffer known to hold no newline

    def readline(self) -> bytes:
        """The next line without its newline; EOFError at the end of the stream."""
        buffer = self._buffer
        while True:
            end = buffer.find(b"\n", self._scanned)
            if end >= 0:
                line = bytes(buffer[:end])
                del buffer[:end + 1]
                self._scanned = 0
                return line
            self._scanned = len(buffer)
            room = self.limit + 1 - len(buffer)
            if room <= 0:
                raise ChannelError(f"a line longer than {self.limit} bytes")
            data = self.sock.recv(min(_READ, room))
            if not data:
                raise EOFError("closed by the other end")
            buffer += data
