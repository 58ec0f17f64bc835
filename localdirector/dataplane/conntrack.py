"""The kernel's connection-tracking table, as far as the fast path needs it: conntrack
NAT translates a fast-path connection, so moving an unanswered one (its entry must go)
and expiring one (does the entry still exist?) ask the kernel (docs/design.rst, "Fast
path"). Each is one ctnetlink request answered synchronously, a few microseconds: cheap
enough under the model lock, and never per packet. Either address family: the tuple's
family (model/addr.py) picks the request's nfgenmsg family and its address attributes
(CTA_IP_V4_* or CTA_IP_V6_*, 4 or 16 bytes).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
import threading
from typing import Protocol

from ..model.addr import IPV4, IPV6, family_of
from . import netlink
from .netlink import NLA_F_NESTED, NLM_F_ACK, NLM_F_REQUEST, NLMSG_ERROR, attr, find_attr

log = logging.getLogger("localdirector")

_CTNETLINK = 1 << 8          # NFNL_SUBSYS_CTNETLINK in the message type's high byte
_MSG_NEW, _MSG_GET, _MSG_DELETE = 0, 1, 2
_CTA_TUPLE_ORIG, _CTA_PROTOINFO = 1, 4
_CTA_TUPLE_IP, _CTA_TUPLE_PROTO = 1, 2
# (source, destination) address attributes per family.
_CTA_IP = {IPV4: (1, 2), IPV6: (3, 4)}     # CTA_IP_V4_SRC/DST, CTA_IP_V6_SRC/DST
_CTA_PROTO_NUM, _CTA_PROTO_SRC_PORT, _CTA_PROTO_DST_PORT = 1, 2, 3
_CTA_PROTOINFO_TCP, _CTA_PROTOINFO_TCP_STATE = 1, 1
# TCP conntrack states from TIME_WAIT on: the connection is over as far as NAT goes.
_TCP_TIME_WAIT, _TCP_CLOSE = 7, 8


class KernelTable(Protocol):
    """What the engine asks of conntrack, by a connection's original (client -> VIP)
    tuple; addresses and ports as host-order ints."""

    def delete(self, src: int, sport: int, dst: int, dport: int, udp: bool = False
               ) -> bool: ...

    def alive(self, src: int, sport: int, dst: int, dport: int, udp: bool = False
              ) -> bool: ...


class NoKernel:
    """No conntrack to talk to (unit tests, `--no-dataplane`): nothing to delete, and a
    connection the engine stopped seeing is taken to be gone, so it expires on its idle
    timer like a userspace one."""

    def delete(self, src: int, sport: int, dst: int, dport: int, udp: bool = False
               ) -> bool:
        return False

    def alive(self, src: int, sport: int, dst: int, dport: int, udp: bool = False
              ) -> bool:
        return False


def request_body(src: int, sport: int, dst: int, dport: int, udp: bool) -> bytes:
    """nfgenmsg and the original tuple of a request about one connection, in its
    addresses' family."""
    return (netlink.NFGEN.pack(family_of(src).af, 0, 0)
            + _orig_tuple(src, sport, dst, dport, udp))


def _orig_tuple(src: int, sport: int, dst: int, dport: int, udp: bool) -> bytes:
    family = family_of(src)
    src_type, dst_type = _CTA_IP[family]
    ip = attr(src_type, family.packed(src)) + attr(dst_type, family.packed(dst))
    proto = (attr(_CTA_PROTO_NUM, bytes((socket.IPPROTO_UDP if udp else socket.IPPROTO_TCP,)))
             + attr(_CTA_PROTO_SRC_PORT, struct.pack("!H", sport))
             + attr(_CTA_PROTO_DST_PORT, struct.pack("!H", dport)))
    return attr(_CTA_TUPLE_ORIG | NLA_F_NESTED, attr(_CTA_TUPLE_IP | NLA_F_NESTED, ip)
                + attr(_CTA_TUPLE_PROTO | NLA_F_NESTED, proto))


def tcp_state(message: bytes) -> int | None:
    """The conntrack TCP state in one IPCTNL_MSG_CT_NEW message, None if it has none."""
    start = netlink.HEADER.size + netlink.NFGEN.size
    info = find_attr(message, start, len(message), _CTA_PROTOINFO)
    tcp = find_attr(message, *info, _CTA_PROTOINFO_TCP) if info is not None else None
    state = find_attr(message, *tcp, _CTA_PROTOINFO_TCP_STATE) if tcp is not None else None
    return message[state[0]] if state is not None else None


class Conntrack:
    """ctnetlink requests on one socket of the caller's network namespace. Thread-safe
    (a lock per request), though the engine calls it under the model lock anyway."""

    def __init__(self) -> None:
        self._sock = netlink.open_socket()
        self._sock.settimeout(1.0)   # the kernel answers at once; this only bounds a bug
        self._sock.bind((0, 0))
        self._lock = threading.Lock()
        self._seq = 0
        self.errors = 0

    def close(self) -> None:
        self._sock.close()

    def _request(self, kind: int, src: int, sport: int, dst: int, dport: int, udp: bool
                 ) -> tuple[int, list[bytes]]:
        """Send one request; (errno of the kernel's answer, 0 = success; the messages
        that came before it)."""
        body = request_body(src, sport, dst, dport, udp)
        with self._lock:
            self._seq = (self._seq + 1) & 0xFFFFFFFF
            seq = self._seq
            self._sock.send(netlink.message(_CTNETLINK | kind, NLM_F_REQUEST | NLM_F_ACK,
                                            seq, body))
            answers: list[bytes] = []
            while True:
                data = self._sock.recv(65536)
                for start, end, mtype, mseq in netlink.messages(data):
                    if mseq != seq:
                        continue  # an answer to an earlier request that timed out
                    if mtype == NLMSG_ERROR:
                        return netlink.error_code(data, start), answers
                    answers.append(data[start:end])

    def delete(self, src: int, sport: int, dst: int, dport: int, udp: bool = False
               ) -> bool:
        """Remove the entry of that original tuple (`udp`: a UDP flow's); False if there
        was none."""
        try:
            code, _ = self._request(_MSG_DELETE, src, sport, dst, dport, udp)
        except OSError as exc:
            self._failed(exc)
            return False
        if code not in (0, errno.ENOENT):
            self._failed(OSError(code, os.strerror(code)))
        return code == 0

    def alive(self, src: int, sport: int, dst: int, dport: int, udp: bool = False
              ) -> bool:
        """The kernel still translates this connection: its entry exists and has not
        reached TIME_WAIT or CLOSE (a UDP entry has no state: it exists until conntrack's
        UDP timeout). A failed request answers True: keeping an object a
        little longer is better than losing count of a live connection."""
        try:
            code, messages = self._request(_MSG_GET, src, sport, dst, dport, udp)
        except OSError as exc:
            self._failed(exc)
            return True
        if code == errno.ENOENT:
            return False
        if code != 0:
            self._failed(OSError(code, os.strerror(code)))
            return True
        states = [tcp_state(m) for m in messages
                  if netlink.HEADER.unpack_from(m)[1] == _CTNETLINK | _MSG_NEW]
        return any(s is None or s < _TCP_TIME_WAIT or s > _TCP_CLOSE for s in states)

    def _failed(self, exc: OSError) -> None:
        self.errors += 1
        if self.errors == 1:
            log.error("data plane: conntrack request failed (further failures only "
                      "counted): %s", exc)
