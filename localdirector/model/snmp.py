"""The SNMP agent's configuration (`snmp-server ...`, docs/design.rst, "Monitoring"):
the read-only community, the system contact and location, the trap receivers and
whether traps are sent, with its changes (`SnmpSettings`, mixed into Director).

The community is a password that SNMP v2c sends in clear on every request, and snmpd
must compare it as typed, so it cannot be stored hashed like a login password: it is
kept as typed, in configuration files written 0600 (config_file.save) and shown only
by `show running-config` (privileged), never by `show snmp` or in the log."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .addr import format_ip, is_unicast
from .errors import ModelError

if TYPE_CHECKING:
    from .settings import Settings

MAX_TEXT = 255          # sysContact and sysLocation are DisplayString (SIZE (0..255))
MAX_COMMUNITY = 32      # IOS's limit


@dataclass(frozen=True)
class TrapHost:
    """One `snmp-server host ADDR [COMMUNITY]` line: a trap receiver; without its own
    community, traps carry the agent's."""

    addr: int
    community: str = ""


@dataclass
class SnmpConfig:
    community: str = ""          # read-only; "" = the agent answers no request
    contact: str = ""
    location: str = ""
    hosts: list[TrapHost] = field(default_factory=list)
    traps: bool = False          # `snmp-server enable traps`


def check_community(text: str) -> str:
    """A community snmpd's configuration can hold as one word (no directive can follow
    it on its line)."""
    if not 1 <= len(text) <= MAX_COMMUNITY or not text.isprintable() \
            or any(c in text for c in " \t\"'#\\"):
        raise ModelError(f"a community is 1-{MAX_COMMUNITY} printable characters without "
                         "spaces, quotes, '#' or '\\'")
    return text


def _check_text(what: str, text: str) -> str:
    """Printable, so one line of snmpd.conf: no text can add a directive to it."""
    if len(text) > MAX_TEXT or not text.isprintable() or "\\" in text:
        raise ModelError(f"snmp-server {what}: at most {MAX_TEXT} printable characters "
                         "without '\\'")
    return text


class SnmpSettings:
    """The changes of `snmp-server` settings."""

    settings: "Settings"

    if TYPE_CHECKING:
        def changed(self) -> None: ...

    def set_snmp_community(self, community: str = "") -> None:
        """`snmp-server community STRING [ro]`; "" (`no ...`) = no request answered."""
        self.settings.snmp.community = check_community(community) if community else ""
        self.changed()

    def set_snmp_text(self, what: str, text: str = "") -> None:
        """`snmp-server contact|location TEXT`."""
        setattr(self.settings.snmp, what, _check_text(what, text))
        self.changed()

    def add_trap_host(self, addr: int, community: str = "") -> None:
        """`snmp-server host ADDR [COMMUNITY]`: one entry per address, replaced."""
        if not is_unicast(addr):
            raise ModelError(f"{format_ip(addr)} is not a host address traps can go to")
        entry = TrapHost(addr, check_community(community) if community else "")
        snmp = self.settings.snmp
        snmp.hosts = [h for h in snmp.hosts if h.addr != addr] + [entry]
        self.changed()

    def remove_trap_host(self, addr: int) -> None:
        snmp = self.settings.snmp
        if not any(h.addr == addr for h in snmp.hosts):
            raise ModelError(f"{format_ip(addr)} is not an snmp-server host")
        snmp.hosts = [h for h in snmp.hosts if h.addr != addr]
        self.changed()

    def set_snmp_traps(self, on: bool) -> None:
        """`snmp-server enable traps` / its `no` form."""
        self.settings.snmp.traps = on
        self.changed()
