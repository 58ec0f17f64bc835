"""IPv4 addresses as host-order ints: the packet path compares ints, never strings."""

from __future__ import annotations

import socket
import struct

_PACK = struct.Struct("!I")


def parse_ip(text: str) -> int:
    """Dotted quad to int; strict (no shorthand like '10.1') so typos are caught."""
    parts = text.split(".")
    if len(parts) != 4 or not all(p.isdigit() and len(p) <= 3 for p in parts):
        raise ValueError(f"invalid IP address '{text}'")
    value = 0
    for part in parts:
        octet = int(part)
        if octet > 255:
            raise ValueError(f"invalid IP address '{text}'")
        value = (value << 8) | octet
    return value


def format_ip(value: int) -> str:
    return socket.inet_ntoa(_PACK.pack(value))


def parse_mask(text: str) -> int:
    """Netmask (dotted quad, contiguous) to prefix length."""
    value = parse_ip(text)
    inverted = ~value & 0xFFFFFFFF
    if inverted & (inverted + 1):
        raise ValueError(f"invalid subnet mask '{text}'")
    return 32 - inverted.bit_length()


def prefix_mask(prefixlen: int) -> int:
    return (0xFFFFFFFF << (32 - prefixlen)) & 0xFFFFFFFF


def format_mask(prefixlen: int) -> str:
    return format_ip(prefix_mask(prefixlen))
