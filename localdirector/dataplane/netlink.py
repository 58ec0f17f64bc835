"""Netlink framing shared by the conntrack requests and the NFLOG copies: the netfilter
family's socket, message headers and attribute walks, built with ``struct`` (no library)."""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator

NETLINK_NETFILTER = 12
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_ERROR = 2
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF         # an attribute's type without the nested/byte-order flags

HEADER = struct.Struct("=IHHII")   # nlmsghdr: length, type, flags, sequence, port id
ATTR = struct.Struct("=HH")        # nlattr: length, type
NFGEN = struct.Struct("!BBH")      # nfgenmsg: family, version, resource id (big-endian)
_ERRNO = struct.Struct("=i")


def open_socket() -> socket.socket:
    """An unbound netfilter-family netlink socket of the caller's network namespace."""
    return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                         NETLINK_NETFILTER)


def message(mtype: int, flags: int, seq: int, body: bytes) -> bytes:
    """One netlink message: header, then `body` (nfgenmsg and attributes)."""
    return HEADER.pack(HEADER.size + len(body), mtype, flags, seq, 0) + body


def attr(kind: int, payload: bytes) -> bytes:
    """One attribute, padded to the 4-byte alignment netlink requires."""
    data = ATTR.pack(ATTR.size + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def messages(data: bytes) -> Iterator[tuple[int, int, int, int]]:
    """(start, end, type, sequence) of each message in one datagram; a malformed length
    ends the walk."""
    offset = 0
    while offset + HEADER.size <= len(data):
        length, mtype, _flags, seq, _pid = HEADER.unpack_from(data, offset)
        if length < HEADER.size:
            return
        yield offset, offset + length, mtype, seq
        offset += (length + 3) & ~3


def error_code(data: bytes, start: int) -> int:
    """The errno an NLMSG_ERROR message at `start` reports; 0 for an acknowledgement."""
    return -_ERRNO.unpack_from(data, start + HEADER.size)[0]


def find_attr(data: bytes, offset: int, end: int, kind: int) -> tuple[int, int] | None:
    """(payload start, payload end) of the first attribute of type `kind` (flags
    stripped) between `offset` and `end`; None if there is none."""
    while offset + ATTR.size <= end:
        length, found = ATTR.unpack_from(data, offset)
        if length < ATTR.size:
            return None
        if found & NLA_TYPE_MASK == kind:
            return offset + ATTR.size, offset + length
        offset += (length + 3) & ~3
    return None


def configure(sock: socket.socket, mtype: int, body: bytes, what: str) -> None:
    """One configuration request, answered by the kernel's acknowledgement; its refusal
    raises OSError naming `what` (the queue or group). `sock` must block (a timeout)."""
    sock.send(message(mtype, NLM_F_REQUEST | NLM_F_ACK, 0, body))
    while True:
        data = sock.recv(65536)
        for start, _end, kind, _seq in messages(data):
            if kind == NLMSG_ERROR:
                code = error_code(data, start)
                if code:
                    raise OSError(code, f"{what}: {os.strerror(code)}")
                return
