"""What each probe type may be told, and the values of the UDP and DNS ones
(docs/design.rst, "Probes"): the settings each type owns, payload escapes, DNS names,
query types and response codes.

The model parses these (not the runner) so a bad value is a one-line refusal that
changes nothing, and the running config keeps the text the operator typed, which
replays to the same definition."""

from __future__ import annotations

import re

KINDS = ("tcp", "http", "udp", "dns")

# The settings of one type only, in `probeconfig` order (shared ones: every type).
SETTINGS = {"method": ("http",), "path": ("http",), "status": ("http",), "host": ("http",),
            "send": ("udp",), "query": ("dns",), "type": ("dns",), "rcode": ("dns",),
            "recurse": ("dns",), "expect": ("http", "udp")}

MAX_PAYLOAD = 1400        # bytes of a UDP probe's datagram: one unfragmented packet

# Query types by name (RFC 1035 and later); `show probeconfig` and Tab offer these.
QTYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15, "TXT": 16,
          "AAAA": 28, "SRV": 33, "NAPTR": 35, "DS": 43, "DNSKEY": 48, "CAA": 257,
          "ANY": 255}
# Response codes of the 4-bit header field (RFC 1035, 2136).
RCODES = {"NOERROR": 0, "FORMERR": 1, "SERVFAIL": 2, "NXDOMAIN": 3, "NOTIMP": 4,
          "REFUSED": 5, "YXDOMAIN": 6, "YXRRSET": 7, "NXRRSET": 8, "NOTAUTH": 9,
          "NOTZONE": 10}
RCODE_NAMES = {code: name for name, code in RCODES.items()}

_ESCAPE = re.compile(r"\\(x[0-9A-Fa-f]{2}|[\\nrt0])")
_SIMPLE = {"\\": 0x5C, "n": 0x0A, "r": 0x0D, "t": 0x09, "0": 0x00}
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\Z")


class KindError(ValueError):
    """A refused value; model/probes.py passes the message on."""


def misplaced(kind: str, given: list[str]) -> str | None:
    """The refusal for settings given to a type that has none of them, or None."""
    wrong = [word for word in given if kind not in SETTINGS[word]]
    if not wrong:
        return None
    owners = sorted({k for word in wrong for k in SETTINGS[word]}, key=KINDS.index)
    return f"{', '.join(wrong)}: settings of {' or '.join(owners)} probes only"


def unescape(text: str) -> bytes:
    """`\\xHH`, `\\n`, `\\r`, `\\t`, `\\0` and `\\\\` in printable ASCII text: bytes.
    Any other backslash, or a character outside ASCII 0x20-0x7e, is refused."""
    if any(not 0x20 <= ord(c) <= 0x7E for c in text):
        raise KindError(f"bad payload '{text}': printable ASCII, other bytes as \\xHH")
    out = bytearray()
    at = 0
    for match in _ESCAPE.finditer(text):
        out += _plain(text, at, match.start())
        code = match[1]
        out.append(int(code[1:], 16) if code[0] == "x" else _SIMPLE[code])
        at = match.end()
    out += _plain(text, at, len(text))
    if len(out) > MAX_PAYLOAD:
        raise KindError(f"payload of {len(out)} bytes: at most {MAX_PAYLOAD}")
    return bytes(out)


def _plain(text: str, start: int, end: int) -> bytes:
    part = text[start:end]
    if "\\" in part:
        raise KindError(f"bad escape in '{text}': \\xHH, \\n, \\r, \\t, \\0 or \\\\")
    return part.encode("ascii")


def query_name(text: str) -> str:
    """A DNS name to ask for: `.` (the root) or labels of letters, digits, `-` and `_`
    (1-63 characters each, 253 in all), an ending dot optional. Returns it without
    the ending dot (the root: "")."""
    name = text.removesuffix(".")
    if name and (len(name) > 253 or not all(_LABEL.match(l) for l in name.split("."))):
        raise KindError(f"bad query name '{text}': labels of letters, digits, '-' and "
                        "'_' (1-63 characters), or '.'")
    return name


def qtype(text: str) -> int:
    try:
        return QTYPES[text.upper()]
    except KeyError:
        raise KindError(f"unknown query type '{text}': {', '.join(QTYPES)}") from None


def rcodes(text: str) -> frozenset[int]:
    """`noerror`, `noerror,nxdomain` (names, any case): the codes an answer may carry."""
    try:
        return frozenset(RCODES[item.upper()] for item in text.split(","))
    except KeyError:
        raise KindError(f"bad rcode list '{text}': names from {', '.join(RCODES)}, "
                        "such as noerror,nxdomain") from None
