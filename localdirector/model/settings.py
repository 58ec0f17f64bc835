"""Appliance-wide settings that are configuration but not part of the patent's objects:
the name, who may log in and for how long (docs/design.rst, "Operator access"), the
size of the connection table, where the log goes (docs/design.rst, "Monitoring") and
the failover pair ("Failover") and BGP ("Scale-out"), with the changes of the first
ones (`ApplianceSettings`, mixed into Director; those of the pair and of BGP are in
failover.py and bgp.py). Changed only through Director's methods."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .addr import IPV4, family_of, format_ip, format_mask, format_prefix, is_unicast
from .bgp import BgpConfig
from .errors import ModelError
from .failover import FailoverConfig
from .passwords import is_hash, is_localdirector_hash
from .snmp import SnmpConfig

DEFAULT_HOSTNAME = "localdirector"
DEFAULT_SESSION_TIMEOUT = 15   # minutes
DEFAULT_MAX_CONNS = 500000
ACCESS_KINDS = ("telnet", "ssh", "metrics")
# IOS severity names, index = syslog severity (RFC 5424): `logging trap LEVEL`.
LOG_LEVELS = ("emergencies", "alerts", "critical", "errors", "warnings", "notifications",
              "informational", "debugging")
DEFAULT_LOG_TRAP = LOG_LEVELS.index("informational")
# `logging facility localN`: the facility of every message sent (RFC 5424 codes 16-23,
# local0-local7; LocalDirector's `syslog output 16.7` names them by number).
LOG_FACILITIES = tuple(f"local{n}" for n in range(8))
FIRST_LOCAL_FACILITY = 16
DEFAULT_LOG_FACILITY = FIRST_LOCAL_FACILITY + 7   # local7, IOS's default
# `username NAME privilege LEVEL`: IOS's levels that mean something here, user mode (1)
# and privileged mode (15), where the session starts.
USER_LEVELS = (1, 15)
# `logging host ADDR transport T` without `port N`: the IANA ports of syslog over each.
LOG_TRANSPORTS = {"udp": 514, "tcp": 601}


@dataclass
class AccessEntry:
    """One `telnet ADDR MASK` / `ssh ADDR MASK` line (`ssh 2001:db8:c::/48` for IPv6):
    who may log in remotely; or one `metrics ...` line: who may scrape the metrics
    endpoint. An entry admits addresses of its own family only."""

    addr: int
    prefixlen: int

    def admits(self, addr: int) -> bool:
        family = family_of(self.addr)
        return (addr & family.mask(self.prefixlen)) | family.tag == self.addr \
            and family_of(addr) is family

    def __str__(self) -> str:
        """As the command writes it: IPv4's `ADDR MASK`, IPv6's `ADDR/LEN`."""
        if family_of(self.addr) is IPV4:
            return f"{format_ip(self.addr)} {format_mask(self.prefixlen)}"
        return format_prefix(self.addr, self.prefixlen)


@dataclass(frozen=True)
class LogHost:
    """One `logging host ADDR [transport udp|tcp [port N]]` line: a remote syslog
    collector. A host may be listed once per transport and port."""

    addr: int
    transport: str = "udp"
    port: int = LOG_TRANSPORTS["udp"]


@dataclass(frozen=True)
class User:
    """One `username NAME privilege LEVEL password HASH encrypted` line: an SSH login
    with its own password that starts at LEVEL (15: privileged, for `ssh box "show
    running-config"`)."""

    level: int
    secret: str       # hashed; never empty


@dataclass
class Settings:
    hostname: str = DEFAULT_HOSTNAME
    enable_secret: str = ""      # hashed; empty = no enable password
    login_secret: str = ""       # hashed `password`; empty = remote login refused
    users: dict[str, User] = field(default_factory=dict)   # `username`, by name
    telnet_access: list[AccessEntry] = field(default_factory=list)
    ssh_access: list[AccessEntry] = field(default_factory=list)
    metrics_access: list[AccessEntry] = field(default_factory=list)
    # Minutes an idle remote session lives (`exec-timeout M S`; fractional when seconds
    # are given, so a lab or a test can use short values); 0 = never closed.
    session_timeout: float = DEFAULT_SESSION_TIMEOUT
    max_conns: int = DEFAULT_MAX_CONNS   # global connection-table limit
    log_hosts: list[LogHost] = field(default_factory=list)
    log_trap: int = DEFAULT_LOG_TRAP     # most verbose severity sent to log_hosts
    log_facility: int = DEFAULT_LOG_FACILITY   # RFC 5424 code, 16-23
    # The appliance's own network lines it applied (`ip address`, `alias ip address`,
    # `route`, `arp`; only with --host-network): by command, the arguments of each line,
    # in the order typed, so the running config writes them back.
    host_lines: dict[str, list[tuple[str, ...]]] = field(default_factory=dict)
    # `static REAL VIP` (model/statics.py): the address a real's own connections leave
    # with, by the real's address.
    statics: dict[int, int] = field(default_factory=dict)
    failover: FailoverConfig = field(default_factory=FailoverConfig)
    bgp: BgpConfig = field(default_factory=BgpConfig)   # docs/design.rst, "Scale-out"
    snmp: SnmpConfig = field(default_factory=SnmpConfig)   # "Monitoring"

    def access(self, kind: str) -> list[AccessEntry]:
        """The access list of `kind` (one of ACCESS_KINDS); empty = anyone may connect."""
        return {"ssh": self.ssh_access, "telnet": self.telnet_access,
                "metrics": self.metrics_access}[kind]

    @property
    def idle_seconds(self) -> float:
        """Seconds of silence after which a session is closed; 0 = never."""
        return float(self.session_timeout) * 60.0


class ApplianceSettings:
    """The name, logins, session timeout, connection table size and logging."""

    settings: Settings

    if TYPE_CHECKING:
        def changed(self) -> None: ...

    def set_hostname(self, name: str = DEFAULT_HOSTNAME) -> None:
        self.settings.hostname = name
        self.changed()

    def set_enable_secret(self, stored: str) -> None:
        """`enable password`: a hash from passwords.hash_password; "" = none."""
        self.settings.enable_secret = _checked_secret(stored)
        self.changed()

    def set_login_secret(self, stored: str) -> None:
        """`password` (remote logins): a hash from passwords.hash_password; "" = none."""
        self.settings.login_secret = _checked_secret(stored)
        self.changed()

    def set_user(self, name: str, level: int, stored: str) -> None:
        """`username NAME privilege LEVEL password ...`: created or replaced."""
        if level not in USER_LEVELS:
            raise ModelError(f"privilege {level} means nothing here: 1 (user mode) or 15 "
                             "(privileged mode)")
        if not stored:
            raise ModelError("a user needs a password")
        self.settings.users[name] = User(level, _checked_secret(stored))
        self.changed()

    def remove_user(self, name: str) -> None:
        if self.settings.users.pop(name, None) is None:
            raise ModelError(f"no user {name}")
        self.changed()

    def add_access(self, kind: str, addr: int, prefixlen: int) -> None:
        """`telnet|ssh|metrics ADDR MASK` (or an IPv6 `ADDR/LEN`): let that network
        connect; listed once."""
        listed, network = self._access(kind, addr, prefixlen)
        if not any(e.addr == network and e.prefixlen == prefixlen for e in listed):
            listed.append(AccessEntry(network, prefixlen))
        self.changed()

    def remove_access(self, kind: str, addr: int, prefixlen: int) -> None:
        listed, network = self._access(kind, addr, prefixlen)
        match = [e for e in listed if e.addr == network and e.prefixlen == prefixlen]
        if not match:
            raise ModelError(f"no {kind} entry {AccessEntry(network, prefixlen)}")
        listed.remove(match[0])
        self.changed()

    def _access(self, kind: str, addr: int, prefixlen: int) -> tuple[list[AccessEntry], int]:
        if kind not in ACCESS_KINDS:
            raise ModelError(f"no access list '{kind}'")
        family = family_of(addr)
        if not 0 <= prefixlen <= family.width:
            raise ModelError(f"prefix length {prefixlen} out of range for {family.name} "
                             f"(0-{family.width})")
        return self.settings.access(kind), addr & family.mask(prefixlen) | family.tag

    def client_matches(self, entries: list[AccessEntry], addr: int) -> bool:
        return any(e.admits(addr) for e in entries)

    def set_session_timeout(self, minutes: int = DEFAULT_SESSION_TIMEOUT,
                            seconds: int = 0) -> None:
        """`exec-timeout MINUTES [SECONDS]`; 0 0 = never."""
        if minutes < 0 or seconds < 0:
            raise ModelError("exec-timeout cannot be negative")
        self.settings.session_timeout = (minutes * 60 + seconds) / 60 if seconds else minutes
        self.changed()

    def set_conn_limit(self, limit: int = DEFAULT_MAX_CONNS) -> None:
        """`conn-limit N`: the connection table's size; SYNs beyond it are dropped."""
        if limit < 1:
            raise ModelError("conn-limit must be at least 1")
        self.settings.max_conns = limit
        self.changed()

    # remote syslog (docs/design.rst, "Monitoring")
    def add_log_host(self, addr: int, transport: str = "udp", port: int | None = None) -> None:
        """`logging host ADDR [transport udp|tcp [port N]]`: send the log there too; the
        port defaults to the transport's (514/udp, 601/tcp). Listed once."""
        if transport not in LOG_TRANSPORTS:
            raise ModelError(f"unknown logging transport '{transport}' (udp or tcp)")
        port = LOG_TRANSPORTS[transport] if port is None else port
        if not 1 <= port <= 65535:
            raise ModelError(f"logging port {port} out of range (1-65535)")
        if not is_unicast(addr):
            raise ModelError(f"{format_ip(addr)} is not a host address a log can go to")
        entry = LogHost(addr, transport, port)
        if entry not in self.settings.log_hosts:
            self.settings.log_hosts.append(entry)
            self.changed()

    def remove_log_host(self, addr: int, transport: str | None = None,
                        port: int | None = None) -> None:
        """`no logging host ADDR [transport T [port N]]`: every entry for the address,
        or only the one of that transport (and port)."""
        if transport is not None and port is None:
            port = LOG_TRANSPORTS.get(transport)
        match = [h for h in self.settings.log_hosts if h.addr == addr
                 and transport in (None, h.transport) and port in (None, h.port)]
        if not match:
            raise ModelError(f"{format_ip(addr)}"
                             + (f" {transport} port {port}" if transport else "")
                             + " is not a logging host")
        self.settings.log_hosts = [h for h in self.settings.log_hosts if h not in match]
        self.changed()

    def set_log_trap(self, level: int | str = DEFAULT_LOG_TRAP) -> None:
        """`logging trap LEVEL`: an IOS severity name or its number 0-7; records of
        that severity and more severe go to the logging hosts."""
        if isinstance(level, str):
            if level not in LOG_LEVELS:
                raise ModelError(f"unknown logging level '{level}' "
                                 f"({', '.join(LOG_LEVELS)} or 0-7)")
            level = LOG_LEVELS.index(level)
        if not 0 <= level < len(LOG_LEVELS):
            raise ModelError(f"logging level {level} out of range (0-7)")
        self.settings.log_trap = level
        self.changed()


    def set_log_facility(self, code: int = DEFAULT_LOG_FACILITY) -> None:
        """`logging facility localN` (LocalDirector: `syslog output CODE.LEVEL`): the
        facility code 16-23 every message to the logging hosts carries."""
        if not FIRST_LOCAL_FACILITY <= code < FIRST_LOCAL_FACILITY + len(LOG_FACILITIES):
            raise ModelError(f"syslog facility {code} out of range: 16-23 (local0-local7)")
        self.settings.log_facility = code
        self.changed()


    def set_static(self, real: int, vip: int | None) -> None:
        """`static REAL VIP` (checked by model/statics.py); None forgets the real's."""
        if vip is None:
            self.settings.statics.pop(real, None)
        else:
            self.settings.statics[real] = vip
        self.changed()

    def keep_host_line(self, kind: str, words: tuple[str, ...], keep: bool = True,
                       key: int = 1) -> None:
        """Record (`keep`) or forget a host network line the appliance applied; a line
        whose first `key` words equal an earlier one's replaces it (`ip address` has
        one: key 0)."""
        lines = self.settings.host_lines.setdefault(kind, [])
        lines[:] = [w for w in lines if w[:key] != words[:key]]
        if keep:
            lines.append(words)
        self.changed()


def _checked_secret(stored: str) -> str:
    if stored and not is_hash(stored):
        if is_localdirector_hash(stored):
            raise ModelError("a LocalDirector encrypted password: its algorithm is not "
                             "documented, so it cannot be verified here; set a new one by "
                             "typing the password itself (it is stored hashed)")
        raise ModelError("not a password hash written by this appliance")
    return stored
