"""Our own binding of nfnetlink_queue, over the netfilter netlink socket (netlink.py).

Why not the NetfilterQueue package (libnetfilter_queue): it cannot take GSO packets (it
receives into a 4096-byte buffer and copies at most 4016 bytes), so the kernel must cut
every 64 KB super-packet into 1448-byte segments before queueing them and bulk data pays
one queue round trip per segment. This binding asks for ``NFQA_CFG_F_GSO`` and a copy
range of 64 KB, so one round trip carries up to 64 KB, and gives verdicts with one
scatter-gather ``sendmsg`` for a whole batch (the payload goes out from the buffer the
engine rewrote, never copied in Python) instead of one syscall per packet.

The catch of GSO: the kernel no longer finishes checksums left to the hardware
(``CHECKSUM_PARTIAL``, flagged ``SKB_CSUM_NOT_READY``: the TCP checksum field holds only
the pseudo-header sum); the worker deals with that (worker.py). Fail-open is not asked
for: a full queue drops packets, which TCP retransmits, rather than accepting them
untranslated (docs/design.rst, "Data-plane service").

One request-response exchange binds the queue at start; after that the socket is
non-blocking and read in the worker's poll loop, and verdicts are sent without asking
for acknowledgements (a refused one comes back as an error message, counted).
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable

from . import netlink
from .netlink import NLM_F_REQUEST, NLMSG_ERROR, attr

_QUEUE = 3 << 8                # NFNL_SUBSYS_QUEUE in the message type's high byte
MSG_PACKET, MSG_VERDICT, MSG_CONFIG = _QUEUE | 0, _QUEUE | 1, _QUEUE | 2
# Attributes of packet and verdict messages (enum nfqnl_attr_type).
ATTR_PACKET_HDR, ATTR_VERDICT_HDR, ATTR_MARK, ATTR_PAYLOAD = 1, 2, 3, 10
ATTR_CAP_LEN, ATTR_SKB_INFO = 13, 14
# Attributes of configuration messages (enum nfqnl_attr_config).
_CFG_CMD, _CFG_PARAMS, _CFG_QUEUE_MAXLEN, _CFG_MASK, _CFG_FLAGS = 1, 2, 3, 4, 5
_CMD_BIND, _CMD_UNBIND = 1, 2
_COPY_PACKET = 2
CFG_F_GSO = 0x4
# NFQA_SKB_INFO bits: the checksum is left to the hardware; a GSO super-packet.
SKB_CSUM_NOT_READY, SKB_GSO = 0x1, 0x2
NF_DROP, NF_ACCEPT = 0, 1
# The kernel's cap: a payload attribute's 16-bit length includes its 4-byte header.
COPY_RANGE = 0xFFFF - netlink.ATTR.size
# One datagram is one packet message: the payload, its attribute and the metadata ahead
# of it (interfaces, hardware address, timestamp...) always fit.
_RECEIVE_SIZE = 1 << 17
# A packet at least this long is not copied out of the buffer it was received into: it
# is handed out as a view of that buffer, which waits aside until the packet's verdict
# has gone (bulk data's 64 KB super-packets: one copy of three, the kernel making the
# other two; docs/benchmarks.rst). Shorter packets are cheaper to copy than a view is
# to keep. At most `_MAX_LENT` buffers wait at a time (128 KB each); beyond that
# packets are copied.
_LEND_FROM = 4096
_MAX_LENT = 16
# A batch of verdicts goes out in one sendmsg while it stays below these: the kernel
# refuses a datagram larger than the socket's send buffer, and sendmsg at most IOV_MAX
# (1024) pieces, three a verdict. Bytes: a verdict held back holds its packet back, so
# a batch goes as soon as one super-packet's worth waits (half the send buffer made one
# bulk connection about 4 % slower; docs/benchmarks.rst).
_SEND_BUFFER = 1 << 20
_FLUSH_BYTES = 1 << 16
_FLUSH_PIECES = 900
_RCVBUFFORCE, _SNDBUFFORCE = 33, 32
_ATTRS = netlink.HEADER.size + netlink.NFGEN.size   # where a message's attributes begin
_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")              # by payload length % 4

# Verdict messages are built in one struct call. nlmsghdr and nlattr headers are in host
# order, the rest big-endian: the big-endian fields are given pre-swapped (the packet id
# as read in host order from the packet message, so it goes back byte for byte).
_VERDICT = "=IHHIIBBHHHII"   # nlmsghdr, nfgenmsg, NFQA_VERDICT_HDR (verdict, id)
_PLAIN = struct.Struct(_VERDICT)
_WITH_PAYLOAD = struct.Struct(_VERDICT + "HH")     # + NFQA_PAYLOAD's header
_WITH_MARK = struct.Struct(_VERDICT + "HHI")       # + NFQA_MARK
_ATTR_HEAD = struct.Struct("=HH")
_LEN_TYPE = struct.Struct("=IH")                   # of a received message's header
_RAW_U32 = struct.Struct("=I")
_BE32 = struct.Struct("!I")
_unpack_attr_head, _unpack_raw_u32 = _ATTR_HEAD.unpack_from, _RAW_U32.unpack_from
_unpack_be32 = _BE32.unpack_from
_ACCEPT_SWAPPED, _DROP_SWAPPED = socket.htonl(NF_ACCEPT), socket.htonl(NF_DROP)
_UNSPEC = socket.AF_UNSPEC

PacketFields = tuple[int, int, int, int, int]


def parse_packet(data: bytes | bytearray, start: int, end: int) -> PacketFields | None:
    """``(raw id, mark, skb info, payload start, payload end)`` of the NFQNL_MSG_PACKET
    message at ``start``; None unless it begins with the packet header, as the kernel
    always writes it. The id stays in the byte order it came in (read in host order)
    for the verdict; a packet without a payload has an empty one (start == end).

    Per packet, so it walks the few attributes ahead of the payload (interfaces,
    hardware address, mark, skb info) with one struct call each; the kernel sets no
    flag bits on the ones it reads (only nested ones such as NFQA_CT have them)."""
    offset = start + _ATTRS
    if end < offset + 12 or _unpack_attr_head(data, offset)[1] != ATTR_PACKET_HDR:
        return None
    raw_id = _unpack_raw_u32(data, offset + 4)[0]
    mark = info = 0
    offset += 12
    while offset + 4 <= end:
        length, kind = _unpack_attr_head(data, offset)
        if kind == ATTR_PAYLOAD:
            return raw_id, mark, info, offset + 4, min(offset + length, end)
        if kind == ATTR_MARK:
            mark = _unpack_be32(data, offset + 4)[0]
        elif kind == ATTR_SKB_INFO:
            info = _unpack_be32(data, offset + 4)[0]
        elif length < 4:
            break
        offset += (length + 3) & ~3
    return raw_id, mark, info, end, end


def config_attrs(max_len: int, copy_range: int = COPY_RANGE, flags: int = CFG_F_GSO) -> bytes:
    """Bind, copy whole packets up to `copy_range` bytes, hold at most `max_len`, and
    set exactly `flags` of the configurable ones: one configuration message."""
    return (attr(_CFG_CMD, struct.pack("!BxH", _CMD_BIND, socket.AF_INET))
            + attr(_CFG_PARAMS, struct.pack("!IB", copy_range, _COPY_PACKET))
            + attr(_CFG_QUEUE_MAXLEN, struct.pack("!I", max_len))
            + attr(_CFG_MASK, struct.pack("!I", 0x1F))
            + attr(_CFG_FLAGS, struct.pack("!I", flags)))


class VerdictBatch:
    """Verdicts for packets of NFQUEUE `queue_num`, gathered and sent as one datagram by
    ``flush`` (netlink takes several messages in one): a header per verdict and the
    payload buffer itself, as ``sendmsg`` pieces."""

    # Called before each datagram of verdicts leaves (QueueWorker sets it): what must
    # be written before the packets go on, the failover stream's records of the
    # connections they open (docs/design.rst, "Failover").
    before_send: Callable[[], object] | None = None

    def __init__(self, queue_num: int,
                 send: Callable[[list[bytes | bytearray | memoryview]], object]) -> None:
        self._res_id = socket.htons(queue_num)
        self._sendmsg = send
        self._pieces: list[bytes | bytearray | memoryview] = []
        self._pending = 0

    def accept(self, raw_id: int, payload: bytearray | memoryview | None = None,
               mark: int | None = None) -> None:
        """Queue an ACCEPT for the packet: unchanged, with `payload` replacing it, or
        with its mark set to `mark` (one or the other)."""
        if payload is not None:
            size = len(payload)
            self._pieces += (_WITH_PAYLOAD.pack(
                _WITH_PAYLOAD.size + size, MSG_VERDICT, NLM_F_REQUEST, 0, 0,
                _UNSPEC, 0, self._res_id, 12, ATTR_VERDICT_HDR,
                _ACCEPT_SWAPPED, raw_id, 4 + size, ATTR_PAYLOAD), payload, _PAD[size & 3])
            self._pending += _WITH_PAYLOAD.size + size
        elif mark is not None:
            self._pieces.append(_WITH_MARK.pack(
                _WITH_MARK.size, MSG_VERDICT, NLM_F_REQUEST, 0, 0, _UNSPEC, 0,
                self._res_id, 12, ATTR_VERDICT_HDR, _ACCEPT_SWAPPED, raw_id, 8, ATTR_MARK,
                socket.htonl(mark)))
            self._pending += _WITH_MARK.size
        else:
            self._verdict(raw_id, _ACCEPT_SWAPPED)
        if self._pending >= _FLUSH_BYTES or len(self._pieces) >= _FLUSH_PIECES:
            self.flush()

    def drop(self, raw_id: int) -> None:
        """Queue a DROP for the packet."""
        self._verdict(raw_id, _DROP_SWAPPED)

    def _verdict(self, raw_id: int, swapped: int) -> None:
        """A verdict without attributes; `swapped` is NF_ACCEPT or NF_DROP, big-endian."""
        self._pieces.append(_PLAIN.pack(_PLAIN.size, MSG_VERDICT, NLM_F_REQUEST, 0, 0,
                                        _UNSPEC, 0, self._res_id, 12, ATTR_VERDICT_HDR,
                                        swapped, raw_id))
        self._pending += _PLAIN.size

    def flush(self) -> None:
        """Send the queued verdicts, one datagram, after `before_send`."""
        if self._pieces:
            if self.before_send is not None:
                self.before_send()
            pieces = self._pieces
            self._pieces = []
            self._pending = 0
            self._sendmsg(pieces)


class LentBuffers:
    """Receive buffers lent out with the long packets in them, until their verdicts
    have gone: a packet's view stays valid while the next ones are received into other
    buffers, and a buffer returns to use only after ``release``."""

    def __init__(self, size: int, limit: int) -> None:
        self._size = size
        self._limit = limit
        self._out: list[bytearray] = []
        self._free: list[bytearray] = []

    def lend(self, rx: bytearray, start: int, end: int) -> tuple[memoryview, bytearray] | None:
        """A writable view of ``rx[start:end]`` and the buffer to receive into next;
        None when `limit` buffers are out already (the caller copies instead)."""
        if len(self._out) >= self._limit:
            return None
        self._out.append(rx)
        return memoryview(rx)[start:end], self._free.pop() if self._free else bytearray(self._size)

    def release(self) -> None:
        """The verdicts of every packet lent so far are sent: their buffers are free."""
        if self._out:
            self._free += self._out
            self._out.clear()


class PacketQueue(VerdictBatch):
    """NFQUEUE `queue_num` of the caller's network namespace, bound to one socket.

    ``receive`` hands out one waiting packet at a time, writable: a fresh ``bytearray``
    (the one copy out of the receive buffer) or, for a long one, a ``memoryview`` of the
    receive buffer itself, valid until the next ``flush``; ``accept``/``drop`` queue its
    verdict and ``flush`` sends the queued verdicts. Not thread-safe: one worker thread
    owns it."""

    def __init__(self, queue_num: int, *, max_len: int, receive_buffer: int,
                 flags: int = CFG_F_GSO) -> None:
        self.queue_num = queue_num
        self.enobufs = 0          # times the kernel reported packets lost to a full socket
        self.verdict_errors = 0   # verdicts the kernel refused (error messages received)
        self._rx = bytearray(_RECEIVE_SIZE)
        self._lent = LentBuffers(_RECEIVE_SIZE, _MAX_LENT)
        self._sock = netlink.open_socket()
        try:
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, _RCVBUFFORCE, receive_buffer)
            except OSError:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, _SNDBUFFORCE, _SEND_BUFFER)
            except OSError:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SEND_BUFFER)
            self._sock.bind((0, 0))
            self._sock.settimeout(1.0)
            self._config(config_attrs(max_len, flags=flags))
            self._sock.setblocking(False)
        except BaseException:
            self._sock.close()
            raise
        self._recv_into = self._sock.recv_into
        super().__init__(queue_num, self._sock.sendmsg)

    def _config(self, attrs: bytes) -> None:
        netlink.configure(self._sock, MSG_CONFIG,
                          netlink.NFGEN.pack(socket.AF_UNSPEC, 0, self.queue_num) + attrs,
                          f"NFQUEUE {self.queue_num}")

    def fileno(self) -> int:
        return self._sock.fileno()

    def receive(self) -> tuple[int, bytearray | memoryview, int, int] | None:
        """``(raw id, payload, mark, skb info)`` of the next waiting packet, None when
        none waits. Error messages on the way (refused verdicts) and lost packets
        (ENOBUFS) are counted and skipped."""
        rx = self._rx
        while True:
            try:
                size = self._recv_into(rx)
            except BlockingIOError:
                return None
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self.enobufs += 1   # the kernel dropped packets for want of room
                continue
            length, mtype = _LEN_TYPE.unpack_from(rx, 0)
            if mtype == MSG_PACKET:
                fields = parse_packet(rx, 0, min(length, size))
                if fields is not None:
                    raw_id, mark, info, start, end = fields
                    if end - start >= _LEND_FROM:
                        lent = self._lent.lend(rx, start, end)
                        if lent is not None:
                            view, self._rx = lent
                            return raw_id, view, mark, info
                    return raw_id, rx[start:end], mark, info
            elif mtype == NLMSG_ERROR and netlink.error_code(rx, 0):
                self.verdict_errors += 1

    def flush(self) -> None:
        """Send the queued verdicts; the buffers lent to their packets are free again
        (sendmsg copied them into the kernel)."""
        super().flush()
        self._lent.release()

    def close(self) -> None:
        """Unbind: packets still waiting for a verdict are dropped by the kernel."""
        try:
            self.flush()
            self._sock.settimeout(1.0)
            body = netlink.NFGEN.pack(socket.AF_UNSPEC, 0, self.queue_num) + attr(
                _CFG_CMD, struct.pack("!BxH", _CMD_UNBIND, socket.AF_INET))
            self._sock.send(netlink.message(MSG_CONFIG, NLM_F_REQUEST, 0, body))
        except OSError:
            pass  # the socket's end unbinds it anyway
        self._sock.close()
