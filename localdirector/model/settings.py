"""Appliance-wide settings that are configuration but not part of the patent's objects."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_HOSTNAME = "localdirector"


@dataclass
class AccessEntry:
    """One `telnet ADDR MASK` / `ssh ADDR MASK` line: who may log in remotely."""

    addr: int
    prefixlen: int


@dataclass
class Settings:
    hostname: str = DEFAULT_HOSTNAME
    enable_secret: str = ""      # hashed; empty = no enable password
    login_secret: str = ""       # hashed `password`; empty = remote login refused
    telnet_access: list[AccessEntry] = field(default_factory=list)
    ssh_access: list[AccessEntry] = field(default_factory=list)
    session_timeout: float = 15  # minutes an idle remote session lives (`exec-timeout M S`)
    max_conns: int = 500000      # global connection-table limit
