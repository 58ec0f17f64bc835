"""Server ids `ADDR[:PORT[:BIND[:PROTO]]]`: how operators name virtuals and reals.

An IPv6 ADDR stands in brackets before its fields (`[2001:db8::10]:80:1:tcp`, RFC 3986's
convention); a bare IPv6 address with no port may be written without them
(`2001:db8::10`). The brackets are field 0 with the address, so an error's field index
(the shell's caret) counts the same way in both families (docs/design.rst, "Addresses")."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from string import hexdigits

from .addr import V6, bracketed, family_of, parse_ip, parse_prefix

PROTOCOLS = ("tcp", "udp")
# Port 0: a virtual takes every port, a real answers on the port the client asked for.
ALL_PORTS = 0
# A *service port* is the port with the protocol above it: the port itself for tcp, and
# the port | UDP_SERVICE for udp. The model's indexes (Director.by_dest, BindIdTable)
# and the packet path key services by it, so a TCP and a UDP virtual on one VIP:port
# are different services and the TCP SYN path computes nothing new (docs/design.rst,
# "Object model").
UDP_SERVICE = 0x10000
_PROTO_BITS = {"tcp": 0, "udp": UDP_SERVICE}


def service_port(port: int, proto: str) -> int:
    """The service port of `port` for `proto` (see UDP_SERVICE)."""
    return port | _PROTO_BITS[proto]


class ServerIdError(ValueError):
    """What is wrong with a typed id, and which of its `:`-separated fields (0 = ADDR),
    so the shell's caret can point at that field."""

    def __init__(self, message: str, field: int = 0) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class ServerId:
    """Identity of a virtual instance or a real; hashable so it keys the model's dicts."""

    addr: int
    port: int = 0
    bind: int = 0
    proto: str = "tcp"

    @classmethod
    def parse(cls, text: str, names: Mapping[str, int] | None = None,
              allow_bind: bool = True) -> "ServerId":
        """Parse operator input; ServerIdError carries the one-line message the shell
        prints."""
        fields = split_id(text, names)
        if len(fields) > 4 or not fields[0]:
            raise ServerIdError(f"invalid server id '{text}'", min(len(fields) - 1, 4))
        addr_text = fields[0]
        if names is not None and addr_text in names:
            addr = names[addr_text]
        else:
            addr = _address(addr_text)
        port = _number(fields, 1, "port", 65535)
        bind = _number(fields, 2, "bind id", 65535)
        if bind and not allow_bind:
            raise ServerIdError("a real server id takes no bind id", 2)
        proto = fields[3].lower() if len(fields) > 3 and fields[3] else "tcp"
        if proto not in PROTOCOLS:
            raise ServerIdError(f"unsupported protocol '{proto}' (tcp or udp)", 3)
        return cls(addr, port, bind, proto)

    @property
    def service(self) -> int:
        """Port and protocol as one int (see UDP_SERVICE)."""
        return service_port(self.port, self.proto)

    def format(self, names: Mapping[int, str] | None = None) -> str:
        """Always the full form, so every listing reads the same way."""
        addr = names.get(self.addr) if names else None
        return f"{addr or bracketed(self.addr)}:{self.port}:{self.bind}:{self.proto}"

    def short(self) -> str:
        """The running-config's canonical form: the defaults at the end (protocol tcp,
        then bind id 0, then port 0) left off, as IOS omits defaults, so a line typed in
        this form is shown back exactly as typed and automation that compares lines
        (Ansible's `ios_config`) sees no change the second time. A udp id keeps every
        field (`192.0.2.53:53:0:udp`)."""
        fields = [bracketed(self.addr), str(self.port), str(self.bind)]
        if self.proto != "tcp":
            return ":".join((*fields, self.proto))
        while len(fields) > 1 and fields[-1] == "0":
            fields.pop()
        return ":".join(fields)

    def __str__(self) -> str:
        return self.format()


def split_id(text: str, names: Mapping[str, int] | None = None) -> list[str]:
    """The `:`-separated fields of an id or pattern, field 0 the address as typed
    (brackets kept, so offsets add up for the caret). Unbracketed text that is one whole
    IPv6 address is a bare address, unless its first field is a name (`web::1`)."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or (close + 1 < len(text) and text[close + 1] != ":"):
            raise ServerIdError(f"invalid server id '{text}' ([IPV6]:PORT...)")
        rest = text[close + 2:].split(":") if close + 1 < len(text) else []
        return [text[:close + 1], *rest]
    fields = text.split(":")
    if len(fields) > 2 and not (names and fields[0] in names):
        # Meant as IPv6 when it reads as one, or starts as one: a bad address is then
        # named whole in the error rather than its first group.
        if fields[0] and not fields[0].strip(hexdigits):
            return [text]
        try:
            if parse_ip(text.partition("/")[0]) & V6:
                return [text]
        except ValueError:
            pass
    return fields


def _unbracketed(text: str) -> str:
    """Field 0 without its brackets; brackets hold an IPv6 address and nothing else."""
    inner = text[1:-1]
    try:
        if inner.startswith("[") or not parse_ip(inner.partition("/")[0]) & V6:
            raise ValueError
    except ValueError:
        raise ServerIdError(f"brackets hold an IPv6 address, not '{inner}'") from None
    return inner


def _address(text: str) -> int:
    inner = _unbracketed(text) if text.startswith("[") else text
    try:
        return parse_ip(inner)
    except ValueError:
        raise ServerIdError(f"invalid address or unknown name '{text}'") from None


def _number(fields: list[str], index: int, what: str, maximum: int) -> int:
    if len(fields) <= index or fields[index] == "":
        return 0
    text = fields[index]
    if not text.isdigit() or int(text) > maximum:
        raise ServerIdError(f"invalid {what} '{text}' (0-{maximum})", index)
    return int(text)


@dataclass(frozen=True, slots=True)
class ServerPattern:
    """What `show virtual|real|bind PATTERN` selects: a server id whose fields may be `*`,
    `all` (LocalDirector's word: `all:443`) or left out (any value), and whose address
    may have `*` octets (`203.0.113.*`), be a prefix of either family
    (`203.0.113.0/24`, `[2001:db8:1::/64]`) or be empty (`:443`, any address). A full id
    selects exactly that server. Masks keep the family's tag (addr.V6), so an IPv4
    pattern never selects an IPv6 server nor the reverse."""

    text: str
    addr: int | None = None          # None: any address (mask applies otherwise)
    addr_mask: int = -1              # every bit, the family tag included
    port: int | None = None
    bind: int | None = None
    proto: str | None = None

    @classmethod
    def parse(cls, text: str, names: Mapping[str, int] | None = None) -> "ServerPattern":
        fields = split_id(text, names)
        if len(fields) > 4 or text in ("", ":"):
            raise ServerIdError(f"invalid server id pattern '{text}'", min(len(fields) - 1, 4))
        addr, mask = cls._addr(fields[0], names)
        port = _pattern_number(fields, 1, "port", 65535)
        bind = _pattern_number(fields, 2, "bind id", 65535)
        proto = fields[3].lower() if len(fields) > 3 else ""
        if proto not in (*ANY, *PROTOCOLS):
            raise ServerIdError(f"unsupported protocol '{fields[3]}' (tcp or udp)", 3)
        return cls(text, addr, mask, port, bind, proto if proto in PROTOCOLS else None)

    @staticmethod
    def _addr(text: str, names: Mapping[str, int] | None) -> tuple[int | None, int]:
        if text.lower() in ANY:
            return None, 0
        if names is not None and text in names:
            return names[text], -1
        octets = text.split(".")
        if len(octets) == 4 and "*" in octets:
            try:
                addr = parse_ip(".".join("0" if o == "*" else o for o in octets))
            except ValueError:
                raise ServerIdError(f"invalid address pattern '{text}'") from None
            wild = 0
            for octet in octets:
                wild = (wild << 8) | (0xFF if octet == "*" else 0)
            return addr, ~wild
        inner = _unbracketed(text) if text.startswith("[") else text
        if "/" in inner:
            try:
                addr, prefixlen = parse_prefix(inner)
            except ValueError as err:
                raise ServerIdError(str(err)) from None
            family = family_of(addr)
            return addr, ~(family.all_ones ^ family.mask(prefixlen))
        return _address(text), -1

    def matches(self, sid: ServerId) -> bool:
        return ((self.addr is None or sid.addr & self.addr_mask == self.addr)
                and (self.port is None or sid.port == self.port)
                and (self.bind is None or sid.bind == self.bind)
                and (self.proto is None or sid.proto == self.proto))


# What a pattern's field may say for "any value": nothing, `*`, or LocalDirector's `all`.
ANY = ("", "*", "all")


def _pattern_number(fields: list[str], index: int, what: str, maximum: int) -> int | None:
    if len(fields) <= index or fields[index].lower() in ANY:
        return None
    return _number(fields, index, what, maximum)
