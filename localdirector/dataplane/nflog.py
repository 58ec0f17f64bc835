"""Copies of fast-path packets the engine must see but need not decide (nfnetlink_log).

The real's SYN-ACK and the FINs and RSTs of an established fast-path connection only
update the engine's state, so netfilter's NFLOG target copies their headers here and
forwards the packet at once; a queued packet would cost the worker a verdict each
(docs/design.rst, "Fast path"). A copy is lost when the socket buffer overflows
(``overruns`` counts the kernel's reports); the engine's state then lags, and heals when
the idle timer finds conntrack no longer holds the connection.

The kernel gathers copies into one datagram (up to ``BATCH_COPIES`` or ``FLUSH_CS``
hundredths of a second after the first, whichever comes first), so a busy fast path wakes
the worker once per batch rather than once per packet; the engine's state lags by at most
that flush time, far below any timer it keeps (docs/design.rst, "Fast path").

One request-response exchange binds the group at start; after that the socket only
receives, non-blocking, in the worker's poll loop.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable

from . import netlink
from .netlink import attr

_ULOG = 4 << 8                 # NFNL_SUBSYS_ULOG in the message type's high byte
_MSG_PACKET, _MSG_CONFIG = 0, 1
_CFG_CMD, _CFG_MODE, _CFG_TIMEOUT, _CFG_QTHRESH, _CFG_NLBUFSIZ = 1, 2, 3, 4, 5
_CMD_BIND, _CMD_UNBIND = 1, 2
_COPY_PACKET = 2
_PAYLOAD = 9                   # NFULA_PAYLOAD: the packet, from its IP header on
# Enough for any IPv4 + TCP header (60 + 60 bytes), and IPv6's fixed header + TCP's
# (40 + 60): the engine reads headers only, with the parsers of every packet.
COPY_RANGE = 128
RECEIVE_BUFFER = 4 << 20
# A batch's datagram: room for BATCH_COPIES copies of ~200 bytes with their attributes.
BATCH_COPIES = 128
BATCH_BYTES = 64 << 10
FLUSH_CS = 1                   # hundredths of a second: a lone copy waits at most 10 ms
_ATTRS = netlink.HEADER.size + netlink.NFGEN.size   # where a message's attributes begin


def payloads(data: bytes) -> list[bytearray]:
    """The packets of the NFULNL_MSG_PACKET messages in one datagram of a batch.

    One loop over messages and their attributes with the unpackers held locally: a batch
    of 128 copies is parsed per wake-up, and the generic walk (netlink.messages,
    find_attr) cost twice as much per copy. A malformed length ends the walk."""
    found = []
    header, attr_header = netlink.HEADER.unpack_from, netlink.ATTR.unpack_from
    size, offset = len(data), 0
    while offset + _ATTRS <= size:
        length, mtype = header(data, offset)[:2]
        if length < _ATTRS or offset + length > size:
            break
        end = offset + length
        if mtype == _ULOG | _MSG_PACKET:
            at = offset + _ATTRS
            while at + 4 <= end:
                alen, kind = attr_header(data, at)
                if alen < 4:
                    break
                if kind & netlink.NLA_TYPE_MASK == _PAYLOAD:
                    found.append(bytearray(data[at + 4:at + alen]))
                    break
                at += (alen + 3) & ~3
        offset += (length + 3) & ~3
    return found


class PacketLog:
    """The NFLOG group `group` of the caller's network namespace, bound to one socket."""

    def __init__(self, group: int) -> None:
        self.group = group
        self.overruns = 0
        self._sock = netlink.open_socket()
        try:
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, 33, RECEIVE_BUFFER)  # RCVBUFFORCE
            except OSError:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            self._sock.bind((0, 0))
            self._sock.settimeout(1.0)
            self._config(attr(_CFG_CMD, bytes((_CMD_BIND,))))
            self._config(attr(_CFG_MODE, struct.pack("!IBB", COPY_RANGE, _COPY_PACKET, 0)))
            self._config(attr(_CFG_NLBUFSIZ, struct.pack("!I", BATCH_BYTES)))
            self._config(attr(_CFG_QTHRESH, struct.pack("!I", BATCH_COPIES)))
            self._config(attr(_CFG_TIMEOUT, struct.pack("!I", FLUSH_CS)))
            self._sock.setblocking(False)
        except BaseException:
            self._sock.close()
            raise

    def _config(self, attrs: bytes) -> None:
        netlink.configure(self._sock, _ULOG | _MSG_CONFIG,
                          netlink.NFGEN.pack(socket.AF_UNSPEC, 0, self.group) + attrs,
                          f"NFLOG group {self.group}")

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self, handle: Callable[[bytearray], object], budget: int) -> int:
        """Hand up to about `budget` waiting copies to `handle`; how many were handed."""
        handled = 0
        while handled < budget:
            try:
                data = self._sock.recv(BATCH_BYTES + 4096)
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
            self._config(attr(_CFG_CMD, bytes((_CMD_UNBIND,))))
        except OSError:
            pass  # the socket's end unbinds it anyway
        self._sock.close()
