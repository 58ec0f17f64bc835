"""A DNS probe's query and the judgement of its answer (docs/design.rst, "Probes").

About forty lines of struct instead of a DNS library: the probe asks one question and
reads one header, so a dependency would bring far more than it is asked for. The answer
is read strictly and never raises: anything short, not an answer to this query (ID,
QR bit, opcode, the question echoed) is `bad-response`; otherwise its rcode decides."""

from __future__ import annotations

import struct

from localdirector.model.probe_kinds import RCODE_NAMES
from localdirector.model.probes import Probe

HEADER = struct.Struct("!HHHHHH")   # ID, flags, QDCOUNT, ANCOUNT, NSCOUNT, ARCOUNT
QTAIL = struct.Struct("!HH")        # QTYPE, QCLASS
CLASS_IN = 1
QR = 0x8000
RD = 0x0100
OPCODE = 0x7800
RCODE = 0x000F


def question(probe: Probe) -> bytes:
    """QNAME as length-prefixed labels ending in the root's empty one, QTYPE, QCLASS IN."""
    labels = b"".join(bytes((len(label),)) + label.encode("ascii")
                      for label in probe.qname.split(".") if label)
    return labels + b"\0" + QTAIL.pack(probe.qtype_code, CLASS_IN)


def query(probe: Probe, ident: int, asked: bytes) -> bytes:
    """A standard query (opcode 0), one question, RD only with `recurse`."""
    return HEADER.pack(ident, RD if probe.recurse else 0, 1, 0, 0, 0) + asked


def verdict(probe: Probe, ident: int, asked: bytes, answer: bytes) -> tuple[bool, str]:
    """(good, result): good when the answer is this query's and its rcode is expected."""
    if len(answer) < HEADER.size:
        return False, "bad-response"
    got_id, flags, qdcount = HEADER.unpack_from(answer)[:3]
    if got_id != ident or not flags & QR or flags & OPCODE:
        return False, "bad-response"
    rcode = flags & RCODE
    if qdcount == 1:
        echoed = answer[HEADER.size:HEADER.size + len(asked)]
        name = len(asked) - QTAIL.size     # names compare case-insensitively
        if echoed[:name].lower() != asked[:name].lower() or echoed[name:] != asked[name:]:
            return False, "bad-response"
    elif qdcount or not rcode:             # only an error may leave the question out
        return False, "bad-response"
    return rcode in probe.rcodes, RCODE_NAMES.get(rcode, f"RCODE-{rcode}")
