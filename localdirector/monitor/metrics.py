"""What a Prometheus scrape reads: the model's virtuals, reals, Bind IDs and probes, the
data plane's counters and the failover role, as metric families (docs/design.rst,
"Monitoring").

Each scrape takes the model lock once, only to copy numbers; the families are built
after it is released, so a scrape never stalls a packet, and one copy means no series
disagrees with another (nothing counted twice, none half-updated). Series are labelled
by server id as the shell writes it without names (`192.0.2.10:80:0:tcp`), which stays
the same when a `name` changes.

What is copied is bounded by the virtuals, reals and probes, never by the assign
entries: those are reported per virtual (counts the model keeps), and one series per
entry only when the operator asks (`--metrics-detail assign`, DETAIL_SOURCES), since
100,000 entries would make every scrape megabytes long and hold the lock to copy them.

Extending it: a model source (under the lock, returns the builder it runs after) goes
in MODEL_SOURCES; anything that takes its own locks or none in APPLIANCE_SOURCES."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

import localdirector
from localdirector.model.addr import format_prefix
from localdirector.model.director import Director
from localdirector.model.probes import DOWN, NO_PORT, UNKNOWN, UP
from localdirector.model.state import State

if TYPE_CHECKING:
    from localdirector.appliance import Appliance

PREFIX = "localdirector_"
Families = Iterable[Metric]
ModelSource = Callable[[Director], Callable[[], Families]]
ApplianceSource = Callable[["Appliance"], Families]
STATES = [state.value for state in State]


def gauge(name: str, help: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, help, labels=list(labels))


def counter(name: str, help: str, labels: Iterable[str] = ()) -> CounterMetricFamily:
    """`name` without `_total`: the library adds it."""
    return CounterMetricFamily(PREFIX + name, help, labels=list(labels))


def _state_series(family: GaugeMetricFamily, ident: str, current: str) -> None:
    """One series per state value, 1 for the current: `...{state="FAILED"} == 1`."""
    for state in STATES:
        family.add_metric([ident, state], 1.0 if state == current else 0.0)


def _traffic(kind: str, rows: list[tuple[str, tuple[int, int, int, int] | None]]
             ) -> Families:
    """Packets and bytes in and out where userspace counts them; a server on the fast
    path has none (the kernel forwards its data), so it has no such series."""
    packets = counter(f"{kind}_packets", f"Packets of the {kind}'s connections the "
                      "engine translated (userspace path only)", [kind, "direction"])
    octets = counter(f"{kind}_bytes", f"Bytes of the {kind}'s connections the engine "
                     "translated (userspace path only)", [kind, "direction"])
    for ident, traffic in rows:
        if traffic is not None:
            packets_in, packets_out, bytes_in, bytes_out = traffic
            packets.add_metric([ident, "in"], packets_in)
            packets.add_metric([ident, "out"], packets_out)
            octets.add_metric([ident, "in"], bytes_in)
            octets.add_metric([ident, "out"], bytes_out)
    return packets, octets


def _counted(server: Any, fastpath: bool) -> tuple[int, int, int, int] | None:
    if fastpath:
        return None
    return server.packets_in, server.packets_out, server.bytes_in, server.bytes_out


def virtuals(director: Director) -> Callable[[], Families]:
    rows = [(str(v.sid), director.virtual_state(v), v.fastpath, v.conns_current,
             v.half_open, v.conns_total, v.synguard_drops, v.no_real_drops,
             v.assign_entries, v.assign_hits, v.pending_fallbacks, _counted(v, v.fastpath))
            for v in director.iter_virtuals()]

    def build() -> Families:
        labels = ["virtual"]
        open_ = gauge("virtual_open_connections", "Connections open now", labels)
        half = gauge("virtual_half_open_connections", "Connections waiting for the real's "
                     "SYN-ACK", labels)
        total = counter("virtual_connections", "Connections opened", labels)
        state = gauge("virtual_state", "State as show virtual gives it, one series per "
                      "value: 1 for the current", ["virtual", "state"])
        fastpath = gauge("virtual_fastpath", "1 when the kernel translates the "
                         "virtual's connections (no packet or byte counts)", labels)
        drops = counter("virtual_dropped_syns", "SYNs refused", ["virtual", "reason"])
        entries = gauge("virtual_assign_entries", "Assign entries sending clients to the "
                        "virtual", labels)
        hits = counter("virtual_assign_hits", "SYNs the virtual's assign entries sent it",
                       labels)
        fallbacks = counter("virtual_pending_fallbacks", "Connections sent to a real "
                            "awaiting its first probe result, none being known good",
                            labels)
        for (ident, current, on_fastpath, conns, half_open, opened, synguard, no_real,
             assigned, assign_hits, pending, _) in rows:
            fallbacks.add_metric([ident], pending)
            open_.add_metric([ident], conns)
            half.add_metric([ident], half_open)
            total.add_metric([ident], opened)
            _state_series(state, ident, current)
            fastpath.add_metric([ident], 1.0 if on_fastpath else 0.0)
            drops.add_metric([ident, "synguard"], synguard)
            drops.add_metric([ident, "no-real"], no_real)
            entries.add_metric([ident], assigned)
            hits.add_metric([ident], assign_hits)
        return [open_, half, total, state, fastpath, drops, entries, hits, fallbacks,
                *_traffic("virtual", [(row[0], row[-1]) for row in rows])]
    return build


def reals(director: Director) -> Callable[[], Families]:
    fastpath = {id(link.real): v.fastpath for v in director.iter_virtuals()
                for link in v.iter_links()}   # a real's virtuals share one path
    rows = [(str(r.sid), r.state.value, r.current_conns, r.total_conns,
             r.noanswer_reassigns, r.reset_reassigns, r.response_time,
             _counted(r, fastpath.get(id(r), False))) for r in director.iter_reals()]

    def build() -> Families:
        labels = ["real"]
        open_ = gauge("real_open_connections", "Connections open now", labels)
        total = counter("real_connections", "Connections sent to the real", labels)
        state = gauge("real_state", "State (FAILED and TESTING by passive health), one "
                      "series per value: 1 for the current", ["real", "state"])
        reassigns = counter("real_reassigns", "Connections moved to another real",
                            ["real", "reason"])
        response = gauge("real_response_seconds", "Smoothed SYN to SYN-ACK time (after "
                         "the first answer)", labels)
        for ident, current, conns, opened, unanswered, reset, seconds, _ in rows:
            open_.add_metric([ident], conns)
            total.add_metric([ident], opened)
            _state_series(state, ident, current)
            reassigns.add_metric([ident, "unanswered"], unanswered)
            reassigns.add_metric([ident, "reset"], reset)
            if seconds:
                response.add_metric([ident], seconds)
        return [open_, total, state, reassigns, response,
                *_traffic("real", [(row[0], row[-1]) for row in rows])]
    return build


def assigns(director: Director) -> Callable[[], Families]:
    """One series per entry, copied as `show assign` copies them: only with
    `--metrics-detail assign`: the lock is held for the copy, tens of milliseconds per
    100,000 (docs/design.rst, "Monitoring")."""
    rows = [(o.virtual.sid, o.client_ip, o.prefixlen, o.hits) for o in director.bindids]

    def build() -> Families:
        hits = counter("assign_hits", "SYNs an assign entry sent to its virtual",
                       ["virtual", "client"])
        for sid, client, prefixlen, count in rows:
            hits.add_metric([str(sid), format_prefix(client, prefixlen)], count)
        return [hits]
    return build


def identity(director: Director) -> Callable[[], Families]:
    hostname = director.settings.hostname

    def build() -> Families:
        info = gauge("info", "Always 1: the appliance's version and hostname",
                     ["version", "hostname"])
        info.add_metric([localdirector.__version__, hostname], 1.0)
        return [info]
    return build


def probes(director: Director) -> Callable[[], Families]:
    """One series set per check (real, probe, port), as `show probe` lists them."""
    rows = [(str(c.real_sid), c.probe.name, c.probe.kind, c.port, c.state, c.ok, c.failed,
             c.latency) for c in director.checks.values()]
    counters = director.probe_counters
    sent, ok, failed = counters.sent, counters.ok, counters.failed

    def build() -> Families:
        labels = ["real", "probe", "type", "port"]
        state = gauge("probe_state", "Probe state of a real, one series per value: 1 for "
                      "the current (DOWN takes the real out)", [*labels, "state"])
        results = counter("probe_results", "Probe results", [*labels, "result"])
        latency = gauge("probe_latency_seconds", "Time of the last good probe", labels)
        for real, name, kind, port, current, good, bad, seconds in rows:
            ident = [real, name, kind, str(port)]
            for value in (UNKNOWN, UP, DOWN, NO_PORT):
                state.add_metric([*ident, value], 1.0 if value == current else 0.0)
            results.add_metric([*ident, "ok"], good)
            results.add_metric([*ident, "failed"], bad)
            if seconds:
                latency.add_metric(ident, seconds)
        totals = counter("probes", "Probes sent since start or reload, by result",
                         ["result"])
        totals.add_metric(["sent"], sent)
        totals.add_metric(["ok"], ok)
        totals.add_metric(["failed"], failed)
        return [state, results, latency, totals]
    return build


def failover(appliance: "Appliance") -> Families:
    """The unit's role in a failover pair, when it runs as one."""
    handle = appliance.failover
    if handle is None:
        return
    status = handle.status()
    role = gauge("failover_role", "Role of this unit, one series per value: 1 for the "
                 "current", ["unit", "role"])
    for value in ("Active", "Standby", "Fault", "Starting"):
        role.add_metric([status.unit, value], 1.0 if value == status.role else 0.0)
    yield role
    yield _single(counter("failover_active_seconds", "Time this unit has been active"),
                  status.active_seconds)
    yield _single(gauge("failover_link_up", "1 while the failover link is up"),
                  1.0 if status.link_state == "Normal" else 0.0)


def dataplane(appliance: "Appliance") -> Families:
    """From `DataPlaneHandle.statistics()`, which takes the model lock itself."""
    handle = appliance.dataplane
    running = gauge("dataplane_running", "1 when the data plane runs (0: --no-dataplane)")
    running.add_metric([], 1.0 if handle is not None else 0.0)
    yield running
    if handle is None:
        return
    stats = handle.statistics()
    engine = stats["engine"]
    yield _single(counter("dataplane_packets", "Packets the engine handled: every one is "
                          "translated, passed unchanged, noted (fast path) or dropped"),
                  engine["packets"])
    dropped = counter("dataplane_dropped_packets", "Packets the engine dropped", ["reason"])
    for reason, count in engine["drops"].items():
        dropped.add_metric([reason], count)
    yield dropped
    translated = counter("dataplane_translated_packets", "Packets the engine translated",
                         ["direction"])
    for direction, key in (("in", "translated_in"), ("out", "translated_out"),
                           ("icmp", "icmp_translated")):
        translated.add_metric([direction], engine[key])
    yield translated
    yield _single(gauge("dataplane_connections", "Connections in the table"),
                  stats["connections"])
    yield _single(counter("dataplane_reassigned_connections", "Connections moved to "
                          "another real (no answer, or a reset)"), engine["conns_reassigned"])
    yield _single(counter("dataplane_refused_syns", "SYNs answered with a RST"),
                  engine["refused"])
    yield _single(counter("dataplane_maglev_forwarded_packets", "Packets of dispatched "
                          "virtuals forwarded by the Maglev table alone (flows ECMP moved "
                          "here, no connection)"), engine["maglev_forwarded"])
    kernel = stats["kernel"]
    if kernel is not None:   # None: the queue is not bound (yet)
        yield _single(gauge("dataplane_queue_waiting_packets", "Packets queued to the "
                            "engine, not yet given a verdict"), kernel.waiting)
        lost = counter("dataplane_queue_dropped_packets", "Packets the kernel dropped "
                       "before the engine saw them", ["reason"])
        lost.add_metric(["queue-full"], kernel.queue_dropped)
        lost.add_metric(["socket-full"], kernel.user_dropped)
        yield lost


def _single(family: GaugeMetricFamily | CounterMetricFamily, value: float) -> Metric:
    family.add_metric([], value)
    return family


MODEL_SOURCES: list[ModelSource] = [identity, virtuals, reals, probes]
# Series per configured item beyond the objects above, each on request only.
DETAIL_SOURCES: dict[str, ModelSource] = {"assign": assigns}
APPLIANCE_SOURCES: list[ApplianceSource] = [dataplane, failover]


class ApplianceCollector(Collector):
    """Registered in the exporter's own registry; `collect` runs for each scrape.
    `detail` names the DETAIL_SOURCES the operator asked for."""

    def __init__(self, appliance: "Appliance", detail: Iterable[str] = ()) -> None:
        self.appliance = appliance
        self.sources = [*MODEL_SOURCES, *(DETAIL_SOURCES[name] for name in detail)]

    def collect(self) -> Iterator[Metric]:
        director = self.appliance.director   # the live model, also after a `reload`
        with director.lock:
            builders = [source(director) for source in self.sources]
        for build in builders:
            yield from build()
        for source in APPLIANCE_SOURCES:
            yield from source(self.appliance)
