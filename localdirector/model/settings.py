"""Appliance-wide settings that are configuration but not part of the patent's objects:
the name, who may log in and for how long (docs/design.rst, "Operator access"), the
size of the connection table, where the log goes (docs/design.rst, "Monitoring") and
the failover pair ("Failover") and BGP ("Scale-out").
Changed only through Director's methods."""

from __future__ import annotations

from dataclasses import dataclass, field

from .addr import prefix_mask
from .bgp import BgpConfig
from .failover import FailoverConfig

DEFAULT_HOSTNAME = "localdirector"
DEFAULT_SESSION_TIMEOUT = 15   # minutes
DEFAULT_MAX_CONNS = 500000
ACCESS_KINDS = ("telnet", "ssh")
# IOS severity names, index = syslog severity (RFC 5424): `logging trap LEVEL`.
LOG_LEVELS = ("emergencies", "alerts", "critical", "errors", "warnings", "notifications",
              "informational", "debugging")
DEFAULT_LOG_TRAP = LOG_LEVELS.index("informational")
# `logging host ADDR transport T` without `port N`: the IANA ports of syslog over each.
LOG_TRANSPORTS = {"udp": 514, "tcp": 601}


@dataclass
class AccessEntry:
    """One `telnet ADDR MASK` / `ssh ADDR MASK` line: who may log in remotely."""

    addr: int
    prefixlen: int

    def admits(self, addr: int) -> bool:
        return (addr & prefix_mask(self.prefixlen)) == self.addr


@dataclass(frozen=True)
class LogHost:
    """One `logging host ADDR [transport udp|tcp [port N]]` line: a remote syslog
    collector. A host may be listed once per transport and port."""

    addr: int
    transport: str = "udp"
    port: int = LOG_TRANSPORTS["udp"]


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
    log_hosts: list[LogHost] = field(default_factory=list)
    log_trap: int = DEFAULT_LOG_TRAP     # most verbose severity sent to log_hosts
    failover: FailoverConfig = field(default_factory=FailoverConfig)
    bgp: BgpConfig = field(default_factory=BgpConfig)   # docs/design.rst, "Scale-out"

    def access(self, kind: str) -> list[AccessEntry]:
        """The access list of `kind` (one of ACCESS_KINDS); empty = anyone may log in."""
        return self.ssh_access if kind == "ssh" else self.telnet_access

    @property
    def idle_seconds(self) -> float:
        """Seconds of silence after which a session is closed; 0 = never."""
        return float(self.session_timeout) * 60.0
