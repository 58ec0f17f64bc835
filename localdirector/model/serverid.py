"""Server ids `ADDR[:PORT[:BIND[:PROTO]]]`: how operators name virtuals and reals."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .addr import format_ip, parse_ip

PROTOCOLS = ("tcp",)
# Port 0: a virtual takes every port, a real answers on the port the client asked for.
ALL_PORTS = 0


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
        """Parse operator input; ValueError carries the one-line message the shell prints."""
        fields = text.split(":")
        if len(fields) > 4 or not fields[0]:
            raise ValueError(f"invalid server id '{text}'")
        addr_text = fields[0]
        if names is not None and addr_text in names:
            addr = names[addr_text]
        else:
            try:
                addr = parse_ip(addr_text)
            except ValueError:
                raise ValueError(f"invalid address or unknown name '{addr_text}'") from None
        port = _number(fields, 1, "port", 65535)
        bind = _number(fields, 2, "bind id", 65535)
        if bind and not allow_bind:
            raise ValueError("a real server id takes no bind id")
        proto = fields[3].lower() if len(fields) > 3 and fields[3] else "tcp"
        if proto not in PROTOCOLS:
            raise ValueError(f"unsupported protocol '{proto}' (only tcp)")
        return cls(addr, port, bind, proto)

    def format(self, names: Mapping[int, str] | None = None) -> str:
        """Always the full form, so every listing reads the same way."""
        addr = names.get(self.addr) if names else None
        return f"{addr or format_ip(self.addr)}:{self.port}:{self.bind}:{self.proto}"

    def __str__(self) -> str:
        return self.format()


def _number(fields: list[str], index: int, what: str, maximum: int) -> int:
    if len(fields) <= index or fields[index] == "":
        return 0
    text = fields[index]
    if not text.isdigit() or int(text) > maximum:
        raise ValueError(f"invalid {what} '{text}' (0-{maximum})")
    return int(text)
