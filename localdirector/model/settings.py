"""Appliance-wide settings that are configuration but not part of the patent's objects:
the name, who may log in and for how long (docs/design.rst, "Operator access"), the
size of the connection table and the failover pair (docs/design.rst, "Failover").
Changed only through Director's methods."""

from __future__ import annotations

from dataclasses import dataclass, field

from .addr import prefix_mask
from .failover import FailoverConfig

DEFAULT_HOSTNAME = "localdirector"
DEFAULT_SESSION_TIMEOUT = 15   # minutes
DEFAULT_MAX_CONNS = 500000
ACCESS_KINDS = ("telnet", "ssh")


@dataclass
class AccessEntry:
    """One `telnet ADDR MASK` / `ssh ADDR MASK` line: who may log in remotely."""

    addr: int
    prefixlen: int

    def admits(self, addr: int) -> bool:
        return (addr & prefix_mask(self.prefixlen)) == self.addr


@dataclass
class Settings:
    hostname: str = DEFAULT_HOSTNAME
    enable_secret: str = ""      # hashed; empty = no enable password
    login_secret: str = ""       # hashed `password`; empty = remote login refused
    telnet_access: list[AccessEntry] = field(default_factory=list)
    ssh_access: list[AccessEntry] = field(default_factory=list)
    # Minutes an idle remote session lives (`exec-timeout M S`; fractional when seconds
    # are given, so a lab or a test can use short values); 0 = never closed.
    session_timeout: float = DEFAULT_SESSION_TIMEOUT
    max_conns: int = DEFAULT_MAX_CONNS   # global connection-table limit
    failover: FailoverConfig = field(default_factory=FailoverConfig)

    def access(self, kind: str) -> list[AccessEntry]:
        """The access list of `kind` (one of ACCESS_KINDS); empty = anyone may log in."""
        return self.ssh_access if kind == "ssh" else self.telnet_access

    @property
    def idle_seconds(self) -> float:
        """Seconds of silence after which a session is closed; 0 = never."""
        return float(self.session_timeout) * 60.0
