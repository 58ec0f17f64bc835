"""Our nfnetlink_queue binding's messages against netlink bytes built by hand here, field
by field as the kernel lays them out (include/uapi/linux/netfilter/nfnetlink_queue.h):
packet messages parsed, configuration and verdicts built. The binding against the kernel
is exercised by every userspace data-plane test (tests/test_dataplane_netns.py)."""

from __future__ import annotations

import socket
import struct

from localdirector.dataplane import nfqueue
from localdirector.dataplane.nfqueue import (COPY_RANGE, SKB_CSUM_NOT_READY, SKB_GSO,
                                             LentBuffers, VerdictBatch, config_attrs,
                                             parse_packet)

NLMSG = struct.Struct("=IHHII")


def nlattr(kind: int, payload: bytes) -> bytes:
    data = struct.pack("=HH", 4 + len(payload), kind) + payload
    return data + bytes(-len(data) % 4)


def packet_message(attrs: bytes, queue: int = 7) -> bytes:
    """An NFQNL_MSG_PACKET as the kernel sends it: nlmsghdr, nfgenmsg, attributes; the
    length leaves out the padding after the last attribute."""
    body = struct.pack("!BBH", socket.AF_INET, 0, queue) + attrs
    return NLMSG.pack(16 + len(body), (3 << 8) | 0, 0, 0, 0) + body


PACKET_HDR = nlattr(1, struct.pack("!IHB", 0x01020304, 0x0800, 0))   # id, hw proto, hook
PAYLOAD = bytes(range(45))   # odd length: the message ends unpadded


def test_parses_what_the_kernel_sends_for_a_forwarded_packet() -> None:
    msg = packet_message(PACKET_HDR
                         + nlattr(5, struct.pack("!I", 2))                  # IFINDEX_INDEV
                         + nlattr(3, struct.pack("!I", 0x00A1_00FF))        # MARK
                         + nlattr(9, struct.pack("!HxxBBBBBBxx", 6, *range(6)))  # HWADDR
                         + nlattr(14, struct.pack("!I", SKB_CSUM_NOT_READY | SKB_GSO))
                         + nlattr(10, PAYLOAD)[:4 + len(PAYLOAD)])
    raw_id, mark, info, start, end = parse_packet(msg, 0, len(msg))
    # The id stays in network byte order, for the verdict to echo it unchanged.
    assert struct.pack("=I", raw_id) == bytes((1, 2, 3, 4))
    assert (mark, info) == (0x00A1_00FF, SKB_CSUM_NOT_READY | SKB_GSO)
    assert msg[start:end] == PAYLOAD


def test_absent_attributes_read_as_zero() -> None:
    msg = packet_message(PACKET_HDR + nlattr(10, PAYLOAD))
    raw_id, mark, info, start, end = parse_packet(msg, 0, len(msg))
    assert (mark, info, msg[start:end]) == (0, 0, PAYLOAD)


def test_a_message_without_payload_or_header() -> None:
    no_payload = packet_message(PACKET_HDR + nlattr(3, struct.pack("!I", 5)))
    *_, start, end = parse_packet(no_payload, 0, len(no_payload))
    assert start == end == len(no_payload)
    no_header = packet_message(nlattr(10, PAYLOAD))
    assert parse_packet(no_header, 0, len(no_header)) is None
    broken = packet_message(PACKET_HDR + struct.pack("=HH", 2, 10))  # length below 4
    assert parse_packet(broken, 0, len(broken)) is not None


def test_a_payload_cut_by_the_datagram_ends_with_it() -> None:
    msg = packet_message(PACKET_HDR + nlattr(10, PAYLOAD)[:4 + len(PAYLOAD)])
    *_, start, end = parse_packet(msg, 0, len(msg) - 5)
    assert msg[start:end] == PAYLOAD[:-5]


def test_configuration_binds_copies_64k_and_asks_for_gso_only() -> None:
    expected = (nlattr(1, bytes((1, 0, 0, socket.AF_INET)))         # CMD_BIND, pf
                + nlattr(2, struct.pack("!IB", 65531, 2))           # COPY_PACKET, range
                + nlattr(3, struct.pack("!I", 8192))                # QUEUE_MAXLEN
                + nlattr(4, struct.pack("!I", 0x1F))                # MASK: every flag
                + nlattr(5, struct.pack("!I", 0x4)))                # FLAGS: F_GSO only
    assert config_attrs(8192) == expected
    assert COPY_RANGE == 0xFFFF - 4


class Sent:
    def __init__(self) -> None:
        self.datagrams: list[bytes] = []

    def __call__(self, pieces: list[bytes | bytearray]) -> None:
        self.datagrams.append(b"".join(pieces))


def verdict_message(queue: int, raw_id: int, verdict: int, extra: bytes = b"") -> bytes:
    body = (struct.pack("!BBH", socket.AF_UNSPEC, 0, queue)
            + struct.pack("=HH", 12, 2) + struct.pack("!I", verdict)
            + struct.pack("=I", raw_id) + extra)
    return NLMSG.pack(16 + len(body), (3 << 8) | 1, 1, 0, 0) + body   # NLM_F_REQUEST


def test_verdicts_go_out_together_on_flush() -> None:
    sent = Sent()
    batch = VerdictBatch(7, sent)
    raw = struct.unpack("=I", bytes((1, 2, 3, 4)))[0]
    batch.accept(raw)
    batch.drop(raw + 1)
    batch.accept(raw + 2, mark=0x00A1_00FF)
    assert sent.datagrams == []
    batch.flush()
    batch.flush()   # nothing left: nothing sent
    assert sent.datagrams == [
        verdict_message(7, raw, 1)
        + verdict_message(7, raw + 1, 0)
        + verdict_message(7, raw + 2, 1, struct.pack("=HH", 8, 3) + struct.pack("!I", 0x00A1_00FF))]


def test_a_changed_payload_goes_out_from_its_buffer_padded_between_messages() -> None:
    sent = Sent()
    batch = VerdictBatch(300, sent)
    payload = bytearray(PAYLOAD)
    batch.accept(9, payload=payload)
    batch.accept(10)
    batch.flush()
    first = verdict_message(300, 9, 1, struct.pack("=HH", 4 + len(PAYLOAD), 10) + PAYLOAD)
    assert sent.datagrams == [first + bytes(-len(first) % 4) + verdict_message(300, 10, 1)]


def test_a_batch_is_sent_before_the_kernel_would_refuse_it() -> None:
    """A datagram beyond the send buffer is refused (EMSGSIZE): large payloads flush."""
    sent = Sent()
    batch = VerdictBatch(1, sent)
    for n in range(20):
        batch.accept(n, payload=bytearray(65000))
    batch.flush()
    assert sum(len(d) for d in sent.datagrams) == 20 * (36 + 65000)
    assert max(len(d) for d in sent.datagrams) <= nfqueue._SEND_BUFFER


def test_long_packets_are_lent_in_their_buffers_until_their_verdicts_go() -> None:
    """A view of the receive buffer instead of a copy: it stays valid while the next
    packets are received into other buffers, which come back only on release."""
    buffers = LentBuffers(64, limit=2)
    first = bytearray(range(64))
    lent = buffers.lend(first, 10, 30)
    assert lent is not None
    view, second = lent
    assert second is not first and len(second) == 64
    view[0] = 0xFF                                  # the engine rewrites in place
    assert first[10] == 0xFF and bytes(view[1:]) == bytes(range(11, 30))
    second[:] = bytes(64)                           # the next packet arrives
    assert bytes(view[1:]) == bytes(range(11, 30))
    lent = buffers.lend(second, 0, 8)
    assert lent is not None
    third = lent[1]
    assert third is not first and third is not second
    assert buffers.lend(third, 0, 8) is None        # at the limit: copy instead
    buffers.release()                               # the verdicts went
    lent = buffers.lend(third, 0, 8)
    assert lent is not None and lent[1] in (first, second)
