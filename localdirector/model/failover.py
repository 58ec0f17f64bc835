"""A failover pair's configuration and what a running unit reports about it
(docs/design.rst, "Failover").

The configuration is the same on both units (the active copies its running-config to
the standby), except `failover ip address`, which names the *other* unit. Which unit
is primary and which interface is the failover link are facts of the box, given on
the command line, never in the configuration."""

from __future__ import annotations

from dataclasses import dataclass, field

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
