"""The probes a director runs (docs/design.rst, "Probes"): the definitions, which
server each is attached to, the (real, probe, port) checks those add up to, and the
runner's reports. Mixed into Director (model/director.py), whose lock, `changed()` and
indexes it uses; model/probes.py holds what a probe and a check are."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from . import health, probes
from .errors import ModelError
from .probes import NO_PORT, UNKNOWN, Probe, ProbeCheck, ProbeCounters, ProbeError
from .serverid import ServerId
from .state import State

if TYPE_CHECKING:
    from .real import PhysicalMachine
    from .virtual import VirtualMachine

CheckKey = tuple[ServerId, str, int]   # (real, probe name, port)

log = logging.getLogger("localdirector")


class ProbeConfig:
    """`probeconfig`, `probe` and the results that follow."""

    reals: dict[ServerId, PhysicalMachine]
    virtuals: dict[ServerId, VirtualMachine]
    probes: dict[str, Probe]
    probe_attach: dict[ServerId, str]
    checks: dict[CheckKey, ProbeCheck]
    probe_counters: ProbeCounters

    if TYPE_CHECKING:
        def changed(self) -> None: ...

        def fmt(self, sid: ServerId) -> str: ...

    def define_probe(self, name: str, kind: str, **settings: Any) -> Probe:
        """`probeconfig NAME TYPE ...`: the whole definition, replacing one of that name
        (its checks keep what they learnt; the new settings apply from the next probe)."""
        try:
            probe = Probe(name, kind, **settings)
        except ProbeError as err:
            raise ModelError(str(err)) from None
        self.probes[name] = probe
        self.changed()
        return probe

    def remove_probe(self, name: str) -> list[ServerId]:
        """`no probeconfig NAME`: the definition and its attachments; returns the ids it
        was attached to."""
        self._probe(name)
        detached = [sid for sid, attached in self.probe_attach.items() if attached == name]
        for sid in detached:
            del self.probe_attach[sid]
        del self.probes[name]
        self.changed()
        return detached

    def attach_probe(self, sid: ServerId, name: str) -> None:
        """`probe ID NAME`: one probe per server, re-typing replaces it. On a virtual it
        probes every bound real (a port-0 real on the virtual's port)."""
        probe = self._probe(name)
        if sid in self.reals:
            if not probe.port and not sid.port:
                raise ModelError(f"real {self.fmt(sid)} has port 0: probe {name} must name "
                                 "a port (probeconfig ... port N)")
        elif sid not in self.virtuals:
            raise ModelError(f"no virtual or real {self.fmt(sid)}")
        self.probe_attach[sid] = name
        self.changed()

    def detach_probe(self, sid: ServerId, name: str | None = None) -> None:
        attached = self.probe_attach.get(sid)
        if attached is None or name not in (None, attached):
            raise ModelError(f"no probe {name + ' ' if name else ''}attached to "
                             f"{self.fmt(sid)}")
        del self.probe_attach[sid]
        self.changed()

    def _probe(self, name: str) -> Probe:
        try:
            return self.probes[name]
        except KeyError:
            raise ModelError(f"no probe named '{name}' (probeconfig {name} "
                             f"{'|'.join(probes.KINDS)} defines one)") from None

    def _sync_checks(self) -> None:
        """After any change: the checks the attachments add up to now. A check that
        still exists keeps its results; attachments to removed servers go with them."""
        for sid in [s for s in self.probe_attach
                    if s not in self.reals and s not in self.virtuals]:
            del self.probe_attach[sid]
        checks: dict[CheckKey, ProbeCheck] = {}
        for sid, name in self.probe_attach.items():
            probe = self.probes[name]
            if sid in self.reals:
                targets = [(self.reals[sid], sid.port)]
            else:
                virtual = self.virtuals[sid]
                targets = [(link.real, link.real.port or virtual.port)
                           for link in virtual.iter_links()]
            for real, port in targets:
                port = probe.port or port
                key = (real.sid, name, port)
                check = self.checks.get(key) or self._new_check(real, probe, port)
                check.probe = probe
                checks[key] = check
        self.checks = checks
        self._follow_checks(self.reals.values(), time.monotonic())

    @staticmethod
    def _new_check(real: PhysicalMachine, probe: Probe, port: int) -> ProbeCheck:
        """A check as attached: its first result awaited for one interval (the runner
        asks at once; a portless check is never run, so never awaited)."""
        check = ProbeCheck(real.sid, probe, real.addr, port, UNKNOWN if port else NO_PORT)
        if port:
            check.pending_until = time.monotonic() + probe.interval
        return check

    def _follow_checks(self, reals: Iterable[PhysicalMachine], now: float) -> None:
        """Each real's probe verdict from its checks: out by a DOWN one, or awaiting the
        first result of one at `now` (time.monotonic(); `probe_pending`, which
        model/health.py passes over)."""
        for real in reals:
            mine = [c for c in self.checks.values() if c.real_sid == real.sid]
            real.probe_down = next((c.probe.name for c in mine if c.state == probes.DOWN),
                                   "")
            real.probe_pending = any(probes.pending(c, now) for c in mine)

    def end_overdue_pending(self, now: float) -> None:
        """Reals whose first probe result is overdue (`now`: time.monotonic()) are no
        longer passed over: UNKNOWN counts as up again, as a probe that never reports
        must not keep a real out. Cheap when nothing is awaited (every tick calls it)."""
        waiting = [r for r in self.reals.values() if r.probe_pending]
        if waiting:
            self._follow_checks(waiting, now)

    def probe_result(self, check: ProbeCheck, good: bool, result: str, latency: float,
                     now: float) -> None:
        """The runner's report of one probe: counted, and the check's and its real's
        state follow (logged whenever they change). A report for a check removed while
        the probe ran (or of a model `reload` replaced) only counts."""
        counters = self.probe_counters
        counters.sent += 1
        if good:
            counters.ok += 1
        else:
            counters.failed += 1
        key = (check.real_sid, check.probe.name, check.port)
        if self.checks.get(key) is not check:
            return
        was = check.state
        new = probes.record(check, good, result, latency, now)
        real = self.reals[check.real_sid]
        if new is not None:
            out_before = real.probe_down
            self._follow_checks([real], time.monotonic())
            what = f"real {self.fmt(real.sid)} probe {check.probe.name} (port {check.port})"
            if new == probes.DOWN:
                log.warning("%s DOWN: %s%s", what, result,
                            "" if out_before else "; no new connections")
            elif was != UNKNOWN:
                log.warning("%s UP%s", what,
                            "; back in service" if out_before and not real.probe_down
                            and real.state is State.IN_SERVICE else "")
        if good and check.state == probes.UP and not real.probe_down:
            health.probe_passed(real, check.probe.name, self.fmt)
