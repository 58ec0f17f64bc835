"""What the appliance reads of nf_tables over netlink, without starting nft: the ruleset
generation of this network namespace and the packet counts of a table's counters.

The generation is a number the kernel bumps at every committed change to any table
(ours, iptables-nft's, anyone's): while it stands where it stood at a check that found
our table intact, nothing can have changed the table, so the next check need not list
it, and the counters are read here instead. nft itself populates its cache with the
whole table even to list one counter: with 51 Maglev virtuals 0.25 s a check, against a
millisecond here (docs/design.rst, "Decided in the kernel")."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

from .netlink import (HEADER, NFGEN, NLM_F_REQUEST, NLMSG_ERROR, attr, error_code,
                      find_attr, message, messages, open_socket)

NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWGEN, NFT_MSG_GETGEN = 15, 16
NFT_MSG_NEWOBJ, NFT_MSG_GETOBJ = 18, 19
NFTA_GEN_ID = 1
NFTA_OBJ_TABLE, NFTA_OBJ_NAME, NFTA_OBJ_TYPE, NFTA_OBJ_DATA = 1, 2, 3, 4
NFT_OBJECT_COUNTER = 1
NFTA_COUNTER_PACKETS = 2
NLM_F_DUMP = 0x300
NLMSG_DONE = 3
_U32, _U64 = struct.Struct("!I"), struct.Struct("!Q")


def _ask(mtype: int, flags: int, body: bytes) -> list[bytes]:
    """The kernel's answer to one request, datagram by datagram, up to its end (one
    answer, or a dump's NLMSG_DONE); a refusal raises OSError."""
    out = []
    with open_socket() as sock:
        sock.settimeout(1.0)
        sock.send(message(NFNL_SUBSYS_NFTABLES << 8 | mtype, NLM_F_REQUEST | flags, 1, body))
        while True:
            data = sock.recv(1 << 20)
            out.append(data)
            for start, _end, kind, _seq in messages(data):
                if kind == NLMSG_ERROR and error_code(data, start):
                    raise OSError(error_code(data, start), "nf_tables refused the request")
                if kind == NLMSG_DONE or not flags & NLM_F_DUMP:
                    return out


def _payloads(answer: list[bytes], mtype: int) -> Iterator[tuple[bytes, int, int]]:
    """(datagram, attributes start, message end) of each message of type `mtype`."""
    for data in answer:
        for start, end, kind, _seq in messages(data):
            if kind == NFNL_SUBSYS_NFTABLES << 8 | mtype:
                yield data, start + HEADER.size + NFGEN.size, end


def ruleset_generation() -> int:
    """The current generation; OSError when the kernel does not answer with one."""
    answer = _ask(NFT_MSG_GETGEN, 0, NFGEN.pack(socket.AF_UNSPEC, 0, 0))
    for data, at, end in _payloads(answer, NFT_MSG_NEWGEN):
        found = find_attr(data, at, end, NFTA_GEN_ID)
        if found is not None:
            return int(_U32.unpack_from(data, found[0])[0])
    raise OSError("no nf_tables generation in the kernel's answer")


def counter_packets(family: int, table: str) -> dict[str, int]:
    """Packets per named counter of table `table` of `family` (socket.AF_INET,
    AF_INET6); none for a table that is not there (the kernel's dump is then empty: a
    table gone shows in the generation, which its deletion moved)."""
    body = (NFGEN.pack(family, 0, 0) + attr(NFTA_OBJ_TABLE, table.encode() + b"\0")
            + attr(NFTA_OBJ_TYPE, _U32.pack(NFT_OBJECT_COUNTER)))
    counts = {}
    for data, at, end in _payloads(_ask(NFT_MSG_GETOBJ, NLM_F_DUMP, body), NFT_MSG_NEWOBJ):
        name, nested = find_attr(data, at, end, NFTA_OBJ_NAME), find_attr(
            data, at, end, NFTA_OBJ_DATA)
        if name is None or nested is None:
            continue
        packets = find_attr(data, nested[0], nested[1], NFTA_COUNTER_PACKETS)
        if packets is not None and packets[1] - packets[0] >= _U64.size:
            counts[data[name[0]:name[1]].split(b"\0", 1)[0].decode()] = int(
                _U64.unpack_from(data, packets[0])[0])
    return counts
