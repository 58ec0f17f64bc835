"""The kernel's connection-tracking table, as far as the fast path needs it.

A fast-path connection is translated by conntrack NAT (see rules.py), so two of FIG. 5's
decisions need the kernel's entry, not just the engine's object:

* moving a connection that has not been answered (``reassign``, a RST to the SYN): the
  entry keeps its NAT binding to the old real for every later packet, so it must go;
  the client's next SYN then opens a fresh entry that takes the new real's mark;
* expiring: the engine sees no data packets of a fast-path connection, so when its idle
  timer fires it asks the kernel whether the connection still exists instead of guessing.

Both are one ctnetlink request answered synchronously (the kernel replies while the
request is being sent), a few microseconds: cheap enough under the model lock, and only
on those rare events, never per packet. Messages are built with ``struct``; no library.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
import threading
from typing import Protocol

log = logging.getLogger("localdirector")

NETLINK_NETFILTER = 12
_CTNETLINK = 1 << 8          # NFNL_SUBSYS_CTNETLINK in the message type's high byte
_MSG_NEW, _MSG_GET, _MSG_DELETE = 0, 1, 2
_NLM_F_REQUEST, _NLM_F_ACK = 0x1, 0x4
_NLMSG_ERROR = 2
_NESTED = 0x8000
_CTA_TUPLE_ORIG, _CTA_PROTOINFO = 1, 4
_CTA_TUPLE_IP, _CTA_TUPLE_PROTO = 1, 2
_CTA_IP_V4_SRC, _CTA_IP_V4_DST = 1, 2
_CTA_PROTO_NUM, _CTA_PROTO_SRC_PORT, _CTA_PROTO_DST_PORT = 1, 2, 3
_CTA_PROTOINFO_TCP, _CTA_PROTOINFO_TCP_STATE = 1, 1
# TCP conntrack states from TIME_WAIT on: the connection is over as far as NAT goes.
_TCP_TIME_WAIT, _TCP_CLOSE = 7, 8

_HEADER = struct.Struct("=IHHII")     # nlmsghdr
_ATTR = struct.Struct("=HH")          # nlattr
_NFGEN = struct.Struct("=BBH")        # nfgenmsg: family, version, resource id


class KernelTable(Protocol):
    """What the engine asks of conntrack, by a connection's original (client -> VIP)
    tuple; addresses and ports as host-order ints."""

    def delete(self, src: int, sport: int, dst: int, dport: int) -> bool: ...

    def alive(self, src: int, sport: int, dst: int, dport: int) -> bool: ...


class NoKernel:
    """No conntrack to talk to (unit tests, `--no-dataplane`): nothing to delete, and a
    connection the engine stopped seeing is taken to be gone, so it expires on its idle
    timer like a userspace one."""

    def delete(self, src: int, sport: int, dst: int, dport: int) -> bool:
        return False

    def alive(self, src: int, sport: int, dst: int, dport: int) -> bool:
        return False


def _attr(kind: int, payload: bytes) -> bytes:
    data = _ATTR.pack(_ATTR.size + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def _orig_tuple(src: int, sport: int, dst: int, dport: int) -> bytes:
    ip = (_attr(_CTA_IP_V4_SRC, struct.pack("!I", src))
          + _attr(_CTA_IP_V4_DST, struct.pack("!I", dst)))
    proto = (_attr(_CTA_PROTO_NUM, bytes((socket.IPPROTO_TCP,)))
             + _attr(_CTA_PROTO_SRC_PORT, struct.pack("!H", sport))
             + _attr(_CTA_PROTO_DST_PORT, struct.pack("!H", dport)))
    return _attr(_CTA_TUPLE_ORIG | _NESTED, _attr(_CTA_TUPLE_IP | _NESTED, ip)
                 + _attr(_CTA_TUPLE_PROTO | _NESTED, proto))


def _attrs(data: bytes, offset: int, end: int) -> dict[int, tuple[int, int]]:
    """Attribute type (flags stripped) -> (payload start, payload end) within data."""
    found = {}
    while offset + _ATTR.size <= end:
        length, kind = _ATTR.unpack_from(data, offset)
        if length < _ATTR.size:
            break
        found[kind & 0x3FFF] = (offset + _ATTR.size, offset + length)
        offset += (length + 3) & ~3
    return found


def tcp_state(message: bytes) -> int | None:
    """The conntrack TCP state in one IPCTNL_MSG_CT_NEW message, None if it has none."""
    start = _HEADER.size + _NFGEN.size
    info = _attrs(message, start, len(message)).get(_CTA_PROTOINFO)
    if info is None:
        return None
    tcp = _attrs(message, *info).get(_CTA_PROTOINFO_TCP)
    if tcp is None:
        return None
    state = _attrs(message, *tcp).get(_CTA_PROTOINFO_TCP_STATE)
    return message[state[0]] if state is not None else None


class Conntrack:
    """ctnetlink requests on one socket of the caller's network namespace. Thread-safe
    (a lock per request), though the engine calls it under the model lock anyway."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                   NETLINK_NETFILTER)
        self._sock.settimeout(1.0)   # the kernel answers at once; this only bounds a bug
        self._sock.bind((0, 0))
        self._lock = threading.Lock()
        self._seq = 0
        self.errors = 0

    def close(self) -> None:
        self._sock.close()

    def _request(self, kind: int, src: int, sport: int, dst: int, dport: int
                 ) -> tuple[int, list[bytes]]:
        """Send one request; (errno of the kernel's answer, 0 = success; the messages
        that came before it)."""
        body = _NFGEN.pack(socket.AF_INET, 0, 0) + _orig_tuple(src, sport, dst, dport)
        with self._lock:
            self._seq = (self._seq + 1) & 0xFFFFFFFF
            seq = self._seq
            self._sock.send(_HEADER.pack(_HEADER.size + len(body), _CTNETLINK | kind,
                                         _NLM_F_REQUEST | _NLM_F_ACK, seq, 0) + body)
            messages: list[bytes] = []
            while True:
                data = self._sock.recv(65536)
                offset = 0
                while offset + _HEADER.size <= len(data):
                    length, mtype, _flags, mseq, _pid = _HEADER.unpack_from(data, offset)
                    if length < _HEADER.size:
                        break
                    message = data[offset:offset + length]
                    offset += (length + 3) & ~3
                    if mseq != seq:
                        continue  # an answer to an earlier request that timed out
                    if mtype == _NLMSG_ERROR:
                        (code,) = struct.unpack_from("=i", message, _HEADER.size)
                        return -code, messages
                    messages.append(message)

    def delete(self, src: int, sport: int, dst: int, dport: int) -> bool:
        """Remove the entry of that original tuple; False if there was none."""
        try:
            code, _ = self._request(_MSG_DELETE, src, sport, dst, dport)
        except OSError as exc:
            self._failed(exc)
            return False
        if code not in (0, errno.ENOENT):
            self._failed(OSError(code, os.strerror(code)))
        return code == 0

    def alive(self, src: int, sport: int, dst: int, dport: int) -> bool:
        """The kernel still translates this connection: its entry exists and has not
        reached TIME_WAIT or CLOSE. A failed request answers True: keeping an object a
        little longer is better than losing count of a live connection."""
        try:
            code, messages = self._request(_MSG_GET, src, sport, dst, dport)
        except OSError as exc:
            self._failed(exc)
            return True
        if code == errno.ENOENT:
            return False
        if code != 0:
            self._failed(OSError(code, os.strerror(code)))
            return True
        states = [tcp_state(m) for m in messages
                  if _HEADER.unpack_from(m)[1] == _CTNETLINK | _MSG_NEW]
        return any(s is None or s < _TCP_TIME_WAIT or s > _TCP_CLOSE for s in states)

    def _failed(self, exc: OSError) -> None:
        self.errors += 1
        if self.errors == 1:
            log.error("data plane: conntrack request failed (further failures only "
                      "counted): %s", exc)
