"""Addresses as ints, both families: what an address is, said once (docs/design.rst,
"Addresses").

The packet path compares ints, never strings. An IPv4 address is its 32-bit value
(0xC000020A is 192.0.2.10), exactly as before IPv6; an IPv6 address is its 128-bit value
with `V6` (bit 128) set above it, so no IPv6 address equals an IPv4 one (not even
::c000:20a), `addr >> 128` says the family, and the IPv4 hot path computes nothing new.
The tag costs the checksum arithmetic nothing: 0x10000 = 1 (mod 0xFFFF), so bit 128
counts as 1 in a one's-complement sum, and a rewrite's old and new addresses carry it
alike (packet.py adds their difference).

`Family` holds what differs: width, the text forms, the packed bytes. Code asks
`family_of(addr)` rather than looking for ':' in text.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

_PACK = struct.Struct("!I")
V6 = 1 << 128            # the tag of an IPv6 address int
_V6_MASK = V6 - 1


@dataclass(frozen=True, slots=True)
class Family:
    """One address family: `width` bits, `tag` above them (0 for IPv4), the socket
    module's constant, and the word iptables/nft/ip use for it."""

    name: str            # "ipv4" / "ipv6"
    width: int           # 32 / 128
    tag: int             # 0 / V6
    af: int              # socket.AF_INET / AF_INET6
    version: int         # the IP header's version nibble: 4 / 6

    @property
    def all_ones(self) -> int:
        return (1 << self.width) - 1

    def mask(self, prefixlen: int) -> int:
        """The prefix's mask over this family's bits (no tag)."""
        return (self.all_ones << (self.width - prefixlen)) & self.all_ones

    def packed(self, addr: int) -> bytes:
        """The address as it appears in a packet (4 or 16 bytes)."""
        return (addr & self.all_ones).to_bytes(self.width // 8, "big")

    def unpacked(self, data: bytes) -> int:
        """Bytes of a packet (4 or 16) to the address int, tag included."""
        return int.from_bytes(data, "big") | self.tag


IPV4 = Family("ipv4", 32, 0, socket.AF_INET, 4)
IPV6 = Family("ipv6", 128, V6, socket.AF_INET6, 6)
FAMILIES = (IPV4, IPV6)


def family_of(addr: int) -> Family:
    return IPV6 if addr >> 128 else IPV4


def is_v6(addr: int) -> bool:
    return addr >= V6


def is_unicast(addr: int) -> bool:
    """Whether something may be sent to `addr` as to one host (a log, a trap): not
    unspecified or multicast in either family, nor IPv4's broadcast, class E or 0/8."""
    if addr >> 128:
        bits = addr & _V6_MASK
        return bits != 0 and bits >> 120 != 0xFF
    return 0 < addr >> 24 < 224


def parse_ip(text: str) -> int:
    """Either family's text to its int; IPv4 strict (no shorthand like '10.1') so typos
    are caught, IPv6 as inet_pton reads it (no zone, no brackets: a server id strips
    those, serverid.py)."""
    if ":" in text:
        try:
            return int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big") | V6
        except (OSError, ValueError):
            raise ValueError(f"invalid IP address '{text}'") from None
    return parse_ipv4(text)


def parse_ipv4(text: str) -> int:
    """Dotted quad to int; strict."""
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
    """Either family's canonical text (RFC 5952 for IPv6: inet_ntop's)."""
    if value >> 128:
        return socket.inet_ntop(socket.AF_INET6, (value & _V6_MASK).to_bytes(16, "big"))
    return socket.inet_ntoa(_PACK.pack(value))


def bracketed(value: int) -> str:
    """The address as it stands before a `:port`: IPv6 in brackets (RFC 3986)."""
    text = format_ip(value)
    return f"[{text}]" if value >> 128 else text


def parse_prefix(text: str) -> tuple[int, int]:
    """`ADDR/LEN` of either family to (network address, prefix length); host bits set
    are an error, as a typo would set them."""
    addr_text, slash, length = text.partition("/")
    addr = parse_ip(addr_text)
    family = family_of(addr)
    if not slash or not length.isdigit() or int(length) > family.width:
        raise ValueError(f"invalid prefix '{text}' (ADDR/0-{family.width})")
    prefixlen = int(length)
    if addr & ~family.mask(prefixlen) & family.all_ones:
        raise ValueError(f"prefix '{text}' has host bits set")
    return addr, prefixlen


def format_prefix(addr: int, prefixlen: int) -> str:
    return f"{format_ip(addr)}/{prefixlen}"


def parse_mask(text: str) -> int:
    """IPv4 netmask (dotted quad, contiguous) to prefix length."""
    value = parse_ipv4(text)
    inverted = ~value & 0xFFFFFFFF
    if inverted & (inverted + 1):
        raise ValueError(f"invalid subnet mask '{text}'")
    return 32 - inverted.bit_length()


def prefix_mask(prefixlen: int) -> int:
    """IPv4's mask of a prefix length (the family's own: Family.mask)."""
    return IPV4.mask(prefixlen)


def format_mask(prefixlen: int) -> str:
    return format_ip(prefix_mask(prefixlen))
