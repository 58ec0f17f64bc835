"""Health of reals: passive, from what client connections show (docs/design.rst,
"Connection lifecycle and health"), beside the active probes' verdict (`probe_down`,
docs/design.rst, "Probes").

A real that leaves `threshold` connections in a row unanswered is FAILED; `retry`
seconds later it is TESTING and takes exactly one connection as its test; an answer
puts it back IN_SERVICE, another failure back to FAILED, and so does a passing active
probe at once. Every transition is here. A real a probe took out is out whatever its
passive state: no new connection, open ones keep flowing."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from .state import State

if TYPE_CHECKING:
    from .link import Link
    from .real import PhysicalMachine
    from .serverid import ServerId
    from .virtual import VirtualMachine

log = logging.getLogger("localdirector")
# For the tests every SYN makes: an Enum member costs a class attribute lookup each time.
_IN_SERVICE = State.IN_SERVICE
_TESTING = State.TESTING

Names = Callable[["ServerId"], str]  # how the log names a real (Director.fmt)
# Told (real, state before, state after) under the model lock: must not block.
Watcher = Callable[["PhysicalMachine", State, State], None]


def available(real: "PhysicalMachine") -> bool:
    """May take a new connection now (a TESTING real takes exactly one, its test); a
    real whose first probe result is awaited may not (`candidates` falls back to it)."""
    return not real.probe_pending and _could_take(real)


def _could_take(real: "PhysicalMachine") -> bool:
    """`available` as far as passive health, probe results and limits tell."""
    if real.probe_down:
        return False
    if real.state is _IN_SERVICE:
        return real.maxconns == 0 or real.current_conns < real.maxconns
    return real.state is _TESTING and not real.testing


def candidates(links: Iterable["Link"], exclude: "PhysicalMachine | None"
               ) -> tuple[list["Link"], "Link | None", list["Link"]]:
    """Those of a virtual's `links` whose real may take the connection, the first
    TESTING one among them (it takes the connection as its probe), and those that could
    but whose first probe result is awaited (the fallback when no other real is known
    good: a real dead at boot must not get the first clients, nor a stalled probe keep
    every real out): one walk, as it runs for every SYN. A real plainly in service (no
    probe holding it out or awaited, no connection limit) is taken without the call to
    `_could_take`, which would say the same."""
    eligible: list[Link] = []
    testing: Link | None = None
    pending: list[Link] = []
    for link in links:
        real = link.real
        if real is exclude:
            continue
        if real.state is _IN_SERVICE and not real.maxconns and not real.probe_down \
                and not real.probe_pending:
            eligible.append(link)
        elif not _could_take(real):
            continue
        elif real.probe_pending:
            pending.append(link)
        else:
            eligible.append(link)
            if testing is None and real.state is _TESTING:
                testing = link
    return eligible, testing, pending


def start_probe(real: "PhysicalMachine") -> bool:
    """A connection was given to `real`: True when it is the TESTING real's probe."""
    if real.state is State.TESTING:
        real.testing = True
        return True
    return False


def end_probe(real: "PhysicalMachine") -> None:
    """The probe is over (answered, ditched or gone): the real may be tested again."""
    if real.state is State.TESTING:
        real.testing = False


def set_admin_state(real: "PhysicalMachine", state: State) -> None:
    """The operator's `in-service`/`out-of-service`: health starts afresh."""
    real.admin_state = state
    real.state = state
    real.testing = False
    real.consecutive_fails = 0


def note_failure(real: "PhysicalMachine", now: float, names: Names) -> None:
    """A ditched connection; `threshold` in a row, or a failed probe, fail the real."""
    real.consecutive_fails += 1
    if real.state is State.TESTING:
        real.testing = False
        _fail(real, now, names)
    elif real.state is State.IN_SERVICE and real.consecutive_fails >= real.threshold:
        _fail(real, now, names)


def note_answer(real: "PhysicalMachine", names: Names) -> None:
    real.consecutive_fails = 0
    if real.state is State.TESTING:
        real.testing = False
        real.state = State.IN_SERVICE
        log.warning("real %s answered its test connection: back in service",
                    names(real.sid))


def _fail(real: "PhysicalMachine", now: float, names: Names) -> None:
    real.state = State.FAILED
    real.failed_at = now
    log.warning("real %s FAILED after %d unanswered connections",
                names(real.sid), real.consecutive_fails)


def probe_passed(real: "PhysicalMachine", probe: str, names: Names) -> None:
    """An active probe attached to the real passed (its check UP) and no probe holds it
    out: a passive failure ends now rather than at `retry` (docs/design.rst, "Probes").
    LocalDirector's retry ends a failure once one test connection is answered, and its
    `autounfail` once the real shows life; a probe is that evidence asked for on
    purpose, of the service itself, so waiting out `retry` would only keep a healthy
    real idle. A real whose clients still go unanswered fails again after `threshold`
    of them (reassigned, so no client is lost), at most once per probe interval."""
    if real.state in (State.FAILED, State.TESTING):
        real.state = State.IN_SERVICE
        real.testing = False
        real.consecutive_fails = 0
        log.warning("real %s passed probe %s: back in service (passive failure ended)",
                    names(real.sid), probe)


def retry_due(reals: Iterable["PhysicalMachine"], now: float, names: Names) -> None:
    """FAILED reals whose retry time has passed go TESTING: the next connection tests them."""
    for real in reals:
        if real.state is State.FAILED and now - real.failed_at >= real.retry:
            real.state = State.TESTING
            real.testing = False
            log.warning("real %s retry: TESTING", names(real.sid))


def state(real: "PhysicalMachine") -> State:
    """The state a client finds: FAILED while a probe holds an in-service real out."""
    if real.probe_down and real.state in (State.IN_SERVICE, State.TESTING):
        return State.FAILED
    return real.state


def cause(real: "PhysicalMachine") -> str:
    """Why a real is out, for `show real`: probe, passive, both, or '-'."""
    passive = real.state in (State.FAILED, State.TESTING)
    probe = bool(real.probe_down) and real.state is not State.OUT_OF_SERVICE
    return {(True, True): "probe+passive", (True, False): "probe",
            (False, True): "passive"}.get((probe, passive), "-")


def virtual_state(virtual: "VirtualMachine", reachable: Iterable["PhysicalMachine"]) -> str:
    """FIG. 3A 310 as a client finds it: FAILED when no real it could be sent to (its
    own, their backup reals, its backup virtuals' in service) can serve, and failure,
    not the operator, is why. Reals merely full or taken out of service leave it IS."""
    if virtual.state is not State.IN_SERVICE:
        return virtual.state.value
    states = {state(real) for real in reachable}
    if State.FAILED in states and not states & {State.IN_SERVICE, State.TESTING}:
        return State.FAILED.value
    return virtual.state.value


class HealthWatch:
    """Mixed into Director: who hears that a real's state as clients find it (`state`)
    changed by health, passive or a probe's, never by the operator's command: the SNMP
    traps (monitor/snmp.py). Called where the model logs those changes, so nothing is
    polled and no packet pays for it."""

    health_watchers: list[Watcher]

    def health_moved(self, real: "PhysicalMachine", before: State) -> None:
        after = state(real)
        if after is not before:
            for watcher in self.health_watchers:
                watcher(real, before, after)
