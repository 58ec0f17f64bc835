"""The per-server settings an operator may change (`weight ID N`, `predictor ID NAME`,
...): each one's default and the values it takes, declared once so that the model
checks them (Director.set_option) and the shell's help and running config agree."""

from __future__ import annotations

from dataclasses import dataclass

from . import real, virtual
from .predictors import PREDICTORS


@dataclass(frozen=True, slots=True)
class Option:
    """A number in [low, high], or one of `choices` when there are any. `udp`: the
    default of a udp virtual when it differs; `udp_only`: refused on a tcp one."""

    default: int | str
    low: int = 0
    high: int = 0
    choices: tuple[str, ...] = ()
    udp: int | None = None
    udp_only: bool = False

    def default_of(self, proto: str) -> int | str:
        """The default for a server of protocol `proto`."""
        return self.udp if proto == "udp" and self.udp is not None else self.default

    def refusal(self, name: str, value: object) -> str | None:
        """Why `value` may not be set, as the operator's one-line error; None if it may."""
        if self.choices:
            return None if value in self.choices else f"unknown {name} '{value}'"
        if type(value) is int and self.low <= value <= self.high:
            return None
        return f"{name} out of range {self.low}-{self.high}"


REAL_OPTIONS: dict[str, Option] = {
    "weight": Option(real.DEFAULT_WEIGHT, 1, 1000),
    "maxconns": Option(real.DEFAULT_MAXCONNS, 0, 4294967295),
    "threshold": Option(real.DEFAULT_THRESHOLD, 1, 1000),
    # 0: never for want of an answer (a service that never answers: syslog, NetFlow).
    "reassign": Option(real.DEFAULT_REASSIGN, 0, 100),
    "retry": Option(real.DEFAULT_RETRY, 1, 86400),
    "delay": Option(real.DEFAULT_DELAY, 0, 3600),
    # Also a virtual's option: a real's id gives the real's own, which overrides its
    # virtual's; its default (0, none) is outside the range, as no value means it.
    "timeout": Option(real.DEFAULT_TIMEOUT, 1, 86400),
}

VIRTUAL_OPTIONS: dict[str, Option] = {
    "predictor": Option(virtual.DEFAULT_PREDICTOR, choices=tuple(PREDICTORS)),
    "timeout": Option(virtual.DEFAULT_TIMEOUT, 1, 86400, udp=virtual.DEFAULT_UDP_TIMEOUT),
    "sticky": Option(virtual.DEFAULT_STICKY, 0, 10080),
    "synguard": Option(virtual.DEFAULT_SYNGUARD, 0, 65535),
    # Also a real's option: a virtual's id gives the virtual's own limit (LocalDirector).
    "maxconns": Option(virtual.DEFAULT_MAXCONNS, 0, 4294967295),
    "flows": Option(virtual.DEFAULT_FLOWS, 1, 1 << 24, udp_only=True),
}
