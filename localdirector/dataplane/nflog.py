"""Copies of fast-path packets the engine must see but need not decide (nfnetlink_log).

Why not NFQUEUE for these: a queued packet waits for our verdict, and the verdict call
then carries the packet on through the kernel (forwarding, the receiver's TCP stack,
whatever that sends back) inside the worker's own system call. Measured in the
benchmark lab, each such verdict cost the single worker thread about 30 microseconds,
and four per connection (SYN, SYN-ACK, two FINs) held new connections to a third of
kernel NAT's rate. The real's SYN-ACK and the FINs and RSTs of an established
connection only update the engine's state, so netfilter's NFLOG target sends a copy of
their headers here and forwards the packet itself at once; only the SYN (which needs
its mark) and a real's RST that may answer the SYN (which the engine may absorb) are
queued.

A copy is lost when the socket buffer overflows (``overruns`` counts the kernel's
reports). The engine's state then lags, and heals: a connection whose FIN was lost
leaves the table when its idle timer finds conntrack no longer holds it (engine.py).

One request-response exchange binds the group at start; after that the socket only
receives, non-blocking, in the worker's poll loop. Messages are parsed with ``struct``.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Callable

NETLINK_NETFILTER = 12
_ULOG = 4 << 8                 # NFNL_SUBSYS_ULOG in the message type's high byte
_MSG_PACKET, _MSG_CONFIG = 0, 1
_NLM_F_REQUEST, _NLM_F_ACK = 0x1, 0x4
_NLMSG_ERROR = 2
_CFG_CMD, _CFG_MODE, _CFG_QTHRESH = 1, 2, 4
_CMD_BIND, _CMD_UNBIND = 1, 2
_COPY_PACKET = 2
_PAYLOAD = 9                   # NFULA_PAYLOAD: the packet, from its IP header on
# Enough for any IPv4 + TCP header (60 + 60 bytes): the engine reads headers only.
COPY_RANGE = 128
RECEIVE_BUFFER = 4 << 20

_HEADER = struct.Struct("=IHHII")
_ATTR = struct.Struct("=HH")
_NFGEN = struct.Struct("!BBH")  # family, version, resource id (the group), big-endian


def _attr(kind: int, payload: bytes) -> bytes:
    data = _ATTR.pack(_ATTR.size + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def payloads(data: bytes) -> list[bytearray]:
    """The packets of the NFULNL_MSG_PACKET messages in one datagram."""
    found = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, mtype = _HEADER.unpack_from(data, offset)[:2]
        if length < _HEADER.size:
            break
        end = offset + length
        if mtype == _ULOG | _MSG_PACKET:
            at = offset + _HEADER.size + _NFGEN.size
            while at + _ATTR.size <= end:
                alen, kind = _ATTR.unpack_from(data, at)
                if alen < _ATTR.size:
                    break
                if kind & 0x3FFF == _PAYLOAD:
                    found.append(bytearray(data[at + _ATTR.size:at + alen]))
                    break
                at += (alen + 3) & ~3
        offset += (length + 3) & ~3
    return found


class PacketLog:
    """The NFLOG group `group` of the caller's network namespace, bound to one socket."""

    def __init__(self, group: int) -> None:
        self.group = group
        self.overruns = 0
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                   NETLINK_NETFILTER)
        try:
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, 33, RECEIVE_BUFFER)  # RCVBUFFORCE
            except OSError:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            self._sock.bind((0, 0))
            self._sock.settimeout(1.0)
            self._config(_attr(_CFG_CMD, bytes((_CMD_BIND,))))
            self._config(_attr(_CFG_MODE, struct.pack("!IBB", COPY_RANGE, _COPY_PACKET, 0)))
            self._config(_attr(_CFG_QTHRESH, struct.pack("!I", 1)))  # each copy at once
            self._sock.setblocking(False)
        except BaseException:
            self._sock.close()
            raise

    def _config(self, attrs: bytes) -> None:
        """One configuration request; raises OSError with the kernel's refusal."""
        body = _NFGEN.pack(socket.AF_UNSPEC, 0, self.group) + attrs
        self._sock.send(_HEADER.pack(_HEADER.size + len(body), _ULOG | _MSG_CONFIG,
                                     _NLM_F_REQUEST | _NLM_F_ACK, 0, 0) + body)
        while True:
            data = self._sock.recv(65536)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, mtype = _HEADER.unpack_from(data, offset)[:2]
                if mtype == _NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", data, offset + _HEADER.size)
                    if code:
                        raise OSError(-code, f"NFLOG group {self.group}: {os.strerror(-code)}")
                    return
                offset += max((length + 3) & ~3, _HEADER.size)

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self, handle: Callable[[bytearray], object], budget: int) -> int:
        """Hand up to about `budget` waiting copies to `handle`; how many were handed."""
        handled = 0
        while handled < budget:
            try:
                data = self._sock.recv(65536)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self.overruns += 1   # the kernel dropped copies for want of room
                continue
            for buf in payloads(data):
                handle(buf)
                handled += 1
        return handled

    def close(self) -> None:
        try:
            self._sock.settimeout(1.0)
            self._config(_attr(_CFG_CMD, bytes((_CMD_UNBIND,))))
        except OSError:
            pass  # the socket's end unbinds it anyway
        self._sock.close()
