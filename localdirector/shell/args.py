"""Argument types of the command language: parsers that validate while the line is walked,
so a bad address or an out-of-range port is caught before any handler runs."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

import re2

from localdirector.model.addr import is_v6, parse_ip, parse_mask, parse_prefix
from localdirector.model.serverid import ServerId, ServerIdError, ServerPattern, split_id

from .grammar import Arg, ArgError

if TYPE_CHECKING:
    from .session import Session

IPV4_ONLY = "IPv6 is not supported here: this takes an IPv4 address"
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,62}\Z")


def _refused(text: str, err: ServerIdError, session: "Session") -> ArgError:
    """The caret goes under the field at fault: `192.0.2.70:80:70000` points at 70000,
    `[2001:db8::10]:80:70000` too (the bracketed address is field 0)."""
    try:
        fields = split_id(text, session.director.names)
    except ServerIdError:     # an unclosed bracket: the address is at fault
        fields = [text]
    offset = sum(len(f) + 1 for f in fields[:err.field]) if err.field < len(fields) else 0
    return ArgError(str(err), offset)


def _server_id(text: str, session: "Session", allow_bind: bool) -> ServerId:
    try:
        return ServerId.parse(text, session.director.names, allow_bind)
    except ServerIdError as err:
        raise _refused(text, err, session) from None


def _server_pattern(text: str, session: "Session") -> ServerPattern:
    try:
        return ServerPattern.parse(text, session.director.names)
    except ServerIdError as err:
        raise _refused(text, err, session) from None


def parse_server_id(text: str, session: "Session", allow_bind: bool) -> ServerId:
    """What a server id argument makes of `text`, or the ArgError it raises: for a
    second declaration that must refuse a bad id in the same words (commands/ldcompat)."""
    return _server_id(text, session, allow_bind)


def pattern(text: str, session: "Session") -> ServerPattern:
    return _server_pattern(text, session)


def _virtual_ids(session: "Session") -> Iterable[str]:
    return [str(v.sid) for v in session.director.iter_virtuals()]


def _real_ids(session: "Session") -> Iterable[str]:
    return [str(r.sid) for r in session.director.iter_reals()]


def _any_ids(session: "Session") -> Iterable[str]:
    return [*_virtual_ids(session), *_real_ids(session)]


def virtual_id(name: str = "virtual", help: str = "Virtual server id") -> Arg:
    return Arg(name, "ADDR[:PORT[:BIND[:PROTO]]]", help,
               lambda t, s: _server_id(t, s, True), _virtual_ids)


def real_id(name: str = "real", help: str = "Real server id") -> Arg:
    return Arg(name, "ADDR[:PORT[:0[:PROTO]]]", help,
               lambda t, s: _server_id(t, s, False), _real_ids)


def server_id(name: str = "id", help: str = "Virtual or real server id") -> Arg:
    return Arg(name, "ADDR[:PORT[:BIND[:PROTO]]]", help,
               lambda t, s: _server_id(t, s, True), _any_ids)


def server_pattern(name: str = "pattern",
                   help: str = "Only these: an id, `*` fields, `203.0.113.*`, `:443`") -> Arg:
    return Arg(name, "[ADDR][:PORT[:BIND]]", help, _server_pattern, _any_ids)


def _ip(text: str, _session: object) -> int:
    try:
        return parse_ip(text)
    except ValueError as err:
        raise ArgError(str(err)) from None


def _mask(text: str, _session: object) -> int:
    try:
        return parse_mask(text)
    except ValueError as err:
        raise ArgError(str(err)) from None


def _network(text: str, _session: object) -> tuple[int, int | None]:
    """`ADDR` (prefix length None: the caller's default) or `ADDR/LEN`, either family."""
    if "/" not in text:
        return _ip(text, _session), None
    try:
        return parse_prefix(text)
    except ValueError as err:
        raise ArgError(str(err)) from None


def network(name: str, help: str) -> Arg:
    return Arg(name, "ADDR[/LEN]", help, _network)


def ip(name: str, help: str) -> Arg:
    """An address of either family."""
    return Arg(name, "ADDR", help, _ip)


def _ipv4(text: str, session: object) -> int:
    addr = _ip(text, session)
    if is_v6(addr):
        raise ArgError(IPV4_ONLY)
    return addr


def ipv4(name: str, help: str) -> Arg:
    """An address where the subject is IPv4 by nature (the host's interfaces and routes,
    failover, BGP, SNMP, static NAT, ping): an IPv6 one is refused in one line rather
    than half-configured."""
    return Arg(name, "A.B.C.D", help, _ipv4)


def mask(name: str = "mask", help: str = "Subnet mask") -> Arg:
    return Arg(name, "A.B.C.D", help, _mask)


def number(name: str, low: int, high: int, help: str, placeholder: str | None = None) -> Arg:
    def parse(text: str, _session: object) -> int:
        if not text.isdigit() or not low <= int(text) <= high:
            raise ArgError(f"expected a number {low}-{high}, not '{text}'")
        return int(text)
    return Arg(name, placeholder or f"<{low}-{high}>", help, parse)


def _host(text: str, session: "Session") -> int:
    """An address, or a name given with `name` (as in server ids); IPv6 bare or in
    brackets (`[2001:db8:c::5]`), as a server id's address may be written."""
    names = session.director.names
    if text in names:
        return names[text]
    try:
        return parse_ip(text[1:-1] if text[:1] == "[" and text[-1:] == "]" else text)
    except ValueError:
        raise ArgError(f"invalid address or unknown name '{text}'") from None


def _host4(text: str, session: "Session") -> int:
    addr = _host(text, session)
    if is_v6(addr):
        raise ArgError(IPV4_ONLY)
    return addr


def host(name: str, help: str, ipv4_only: bool = False) -> Arg:
    """An address or name; `ipv4_only` as for `ipv4`."""
    if ipv4_only:
        return Arg(name, "A.B.C.D|NAME", help, _host4)
    return Arg(name, "ADDR|NAME", help, _host)


def _vip_port(text: str, session: "Session") -> tuple[int, int | None]:
    """`VIP[:PORT]` (`[IPV6]:PORT`); port 0 stands for the all-ports instances (any port
    no exact-port instance takes), as in server ids."""
    try:
        fields = split_id(text, session.director.names)
    except ServerIdError as err:
        raise ArgError(str(err)) from None
    addr = _host(fields[0], session)
    if len(fields) == 1:
        return addr, None
    port_text = ":".join(fields[1:])
    if not port_text.isdigit() or int(port_text) > 65535:
        raise ArgError(f"invalid port '{port_text}' (0-65535)", len(fields[0]) + 1)
    return addr, int(port_text)


def vip_port(name: str, help: str) -> Arg:
    return Arg(name, "ADDR[:PORT]", help, _vip_port)


def _name(text: str, _session: object) -> str:
    if not _NAME.match(text):
        raise ArgError("a name starts with a letter: letters, digits, '_', '.', '-'")
    return text


def name(arg_name: str, help: str) -> Arg:
    return Arg(arg_name, "WORD", help, _name)


def word(arg_name: str, help: str) -> Arg:
    return Arg(arg_name, "WORD", help, lambda text, _s: text)


# Typed patterns run on the appliance's own process, beside the data plane: RE2 matches in
# time linear in the text whatever the pattern (no backtracking, so `^(a+)+$` cannot hold
# the interpreter for seconds), and its compiled program is bounded in memory.
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False       # errors are the operator's, on the terminal


class Pattern(Protocol):
    """What the output filters use of a compiled pattern (RE2 exports no type of its own)."""

    def search(self, text: str) -> object: ...


def _regex(text: str, _session: object) -> Pattern:
    try:
        return re2.compile(text, options=_RE2_OPTIONS)
    except re2.error as err:
        reason = err.args[0] if err.args else err
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise ArgError(f"bad regular expression: {reason}") from None


def regex(arg_name: str = "pattern", help: str = "Regular expression") -> Arg:
    return Arg(arg_name, "LINE", help, _regex, rest=True)
