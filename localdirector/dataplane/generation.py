"""The nf_tables ruleset generation of this network namespace: a number the kernel
bumps at every committed change to any table (ours, iptables-nft's, anyone's), asked
with one netlink request. While it stands where it stood at a check that found our
table intact, nothing can have changed the table, so the next check need not list it
(docs/design.rst, "Decided in the kernel")."""

from __future__ import annotations

import socket
import struct

from .netlink import (HEADER, NFGEN, NLM_F_REQUEST, NLMSG_ERROR, error_code, find_attr,
                      message, messages, open_socket)

NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWGEN, NFT_MSG_GETGEN = 15, 16
NFTA_GEN_ID = 1


def ruleset_generation() -> int:
    """The current generation; OSError when the kernel does not answer with one."""
    with open_socket() as sock:
        sock.settimeout(1.0)
        sock.send(message(NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETGEN, NLM_F_REQUEST, 1,
                          NFGEN.pack(socket.AF_UNSPEC, 0, 0)))
        data = sock.recv(65536)
    for start, end, kind, _seq in messages(data):
        if kind == NLMSG_ERROR and error_code(data, start):
            raise OSError(error_code(data, start), "nf_tables generation refused")
        if kind == NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWGEN:
            found = find_attr(data, start + HEADER.size + NFGEN.size, end, NFTA_GEN_ID)
            if found is not None:
                return int(struct.unpack_from("!I", data, found[0])[0])
    raise OSError("no nf_tables generation in the kernel's answer")
