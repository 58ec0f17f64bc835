"""A failover pair's configuration and what a running unit reports about it
(docs/design.rst, "Failover").

The configuration is the same on both units (the active copies its running-config to
the standby), except `failover ip address`, which names the *other* unit, and `failover
key`, which the stream must not carry (it is not encrypted). Which unit
is primary and which interface is the failover link are facts of the box, given on
the command line, never in the configuration."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .addr import IPV4, family_of, format_ip, format_prefix, is_v6
from .errors import ModelError
from .peerkey import KEY_BYTES

if TYPE_CHECKING:
    from .settings import Settings

DEFAULT_POLL_MS = 200       # VRRP hello (advertisement) interval
DEFAULT_HOLD_MS = 1000      # silence after which the peer counts as gone
POLL_STEP_MS = 10           # VRRPv3 counts its interval in centiseconds
POLL_RANGE_MS = (20, 40950)
HOLD_RANGE_MS = (100, 600000)
HOLD_POLLS = 4              # keepalived: 3 missed hellos plus its skew (< 1 hello)
HOLD_FACTOR = 5             # `failover poll MS` without holdtime: hold = 5 polls


@dataclass
class FailoverConfig:
    enabled: bool = False
    peer: int = 0                # the other unit's failover-link address; 0 = unset
    poll_ms: int = DEFAULT_POLL_MS
    hold_ms: int = DEFAULT_HOLD_MS
    replicate: bool = False      # stateful: connections survive a takeover
    # (address, prefix length): the addresses that move to the active unit.
    virtuals: list[tuple[int, int]] = field(default_factory=list)
    # The stream's shared key (model/peerkey.py): None unset (the stream does not run),
    # peerkey.NONE (b"") for `failover key none`, else 32 bytes.
    key: bytes | None = None


@dataclass(frozen=True)
class DaemonStatus:
    """One supervised helper (keepalived, conntrackd) as `show failover` reports it."""

    name: str
    pid: int | None          # None while it is down (being restarted)
    restarts: int


@dataclass(frozen=True)
class FailoverStatus:
    """A running unit's view of the pair, for `show failover`."""

    unit: str                  # "Primary" or "Secondary"
    role: str                  # "Active", "Standby", "Fault" or "Starting"
    active_seconds: float      # how long this unit has been active, in total
    link: str                  # failover link interface name
    own_address: str           # this unit's address on the failover link
    link_state: str            # "Normal" or "Down"
    peer_role: str             # what the peer last said it was ("Unknown" if never)
    peer_active_seconds: float
    replication: str           # one line: state of the replication stream
    daemons: tuple[DaemonStatus, ...]


class FailoverSettings:
    """The changes of the pair's configuration, mixed into Director."""

    settings: Settings

    if TYPE_CHECKING:
        def changed(self) -> None: ...

    def set_failover(self, on: bool) -> None:
        """`failover` / `no failover`: run as one unit of a pair."""
        self.settings.failover.enabled = on
        self.changed()

    def set_failover_peer(self, addr: int = 0) -> None:
        """`failover ip address IP`: the other unit's address on the failover link."""
        if is_v6(addr):
            raise ModelError(f"{format_ip(addr)}: the failover link is IPv4 (its VRRP, "
                             f"conntrackd and stream), whatever the virtuals' families")
        if addr and (addr >> 24 in (0, 127) or addr >> 28 >= 14):
            raise ModelError(f"{format_ip(addr)} cannot be a failover peer")
        self.settings.failover.peer = addr
        self.changed()

    def set_failover_timing(self, poll: int, hold: int) -> None:
        """`failover poll MS holdtime MS`. The hold time must cover keepalived's own
        verdict on a silent peer: 3 missed hellos plus its skew."""
        config = self.settings.failover
        low, high = POLL_RANGE_MS
        if not low <= poll <= high or poll % POLL_STEP_MS:
            raise ModelError(f"failover poll must be {low}-{high} ms in steps of "
                             f"{POLL_STEP_MS}")
        low, high = HOLD_RANGE_MS
        if not low <= hold <= high:
            raise ModelError(f"failover hold must be {low}-{high} ms")
        if hold < HOLD_POLLS * poll:
            raise ModelError(f"failover hold ({hold} ms) must be at least {HOLD_POLLS} "
                             f"polls ({HOLD_POLLS * poll} ms)")
        config.poll_ms, config.hold_ms = poll, hold
        self.changed()

    def set_failover_key(self, key: bytes | None) -> None:
        """`failover key`: None removes it, peerkey.NONE runs the stream unauthenticated."""
        if key is not None and len(key) not in (0, KEY_BYTES):
            raise ModelError(f"a failover key is {KEY_BYTES} bytes")
        self.settings.failover.key = key
        self.changed()

    def set_replicate(self, on: bool) -> None:
        """`replicate`: send connection state to the standby (stateful failover)."""
        self.settings.failover.replicate = on
        self.changed()

    def add_failover_virtual(self, addr: int, prefixlen: int) -> None:
        """`failover virtual IP MASK` / `failover virtual ADDR/LEN`: an address that moves
        with the active unit, either family. A network's own address is refused (and
        IPv4's broadcast; IPv6's host 0 is the subnet-router anycast), as is an IPv6
        link-local one: keepalived places each virtual by the network it shares with an
        interface's global address (docs/design.rst, "Failover")."""
        family = family_of(addr)
        if not 0 <= prefixlen <= family.width:
            raise ModelError(f"invalid prefix length {prefixlen} (0-{family.width})")
        hosts = ~family.mask(prefixlen) & family.all_ones
        host = addr & hosts
        if prefixlen < family.width - 1 and (host == 0 or family is IPV4 and host == hosts):
            raise ModelError(f"{format_ip(addr)} is not a host address of "
                             f"{format_prefix(addr & ~hosts, prefixlen)}")
        if is_v6(addr) and addr >> 118 & 0x3FF == 0x3FA:     # fe80::/10
            raise ModelError(f"{format_ip(addr)} is link-local: a failover virtual is "
                             f"a global address")
        listed = self.settings.failover.virtuals
        listed[:] = [(a, p) for a, p in listed if a != addr] + [(addr, prefixlen)]
        self.changed()

    def remove_failover_virtual(self, addr: int) -> None:
        listed = self.settings.failover.virtuals
        if not any(a == addr for a, _ in listed):
            raise ModelError(f"{format_ip(addr)} is not a failover virtual address")
        listed[:] = [(a, p) for a, p in listed if a != addr]
        self.changed()
