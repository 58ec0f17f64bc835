"""`--metrics [ADDR:]PORT`: the Prometheus text exposition format over HTTP, safe by
default (docs/design.rst, "Monitoring").

The endpoint tells whoever reaches it the version, the hostname and every virtual and
real, so a port alone listens on the loopback only: reaching it from a network takes an
address given on purpose, and then the `metrics` access list says who may connect.
scrapes.py holds the connections (two threads, however many peers); the registry holds
ApplianceCollector (metrics.py) and the endpoint's own count of the connections it
closed, with no process or Python runtime series, so what an operator sees is the
appliance. The library renders the OpenMetrics format to a scraper that asks for it."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from localdirector.listeners import listen_address, peer_allowed
from localdirector.services import ServiceError

from .metrics import DETAIL_SOURCES, ApplianceCollector, counter
from .scrapes import ScrapeServer

if TYPE_CHECKING:
    from localdirector.appliance import Appliance

LOOPBACK = "127.0.0.1"   # where `--metrics PORT` listens
MIN_INTERVAL = 1.0       # seconds a built exposition is served again before a new build


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("monitoring")
    group.add_argument("--metrics", type=listen_address, metavar="[ADDR:]PORT",
                       help="serve Prometheus metrics over HTTP (off unless given; "
                            f"a PORT alone listens on {LOOPBACK} only)")
    group.add_argument("--metrics-detail", action="append", default=[],
                       choices=sorted(DETAIL_SOURCES), metavar="assign",
                       help="also one series per assign entry (off: counts per virtual)")


class _Closed(Collector):
    """The endpoint's own figures: connections it closed early, by reason."""

    def __init__(self, server: ScrapeServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        family = counter("metrics_closed_connections", "Connections to this endpoint "
                         "closed early: outside the access list, all busy, evicted by a "
                         "newcomer, idle too long", ["reason"])
        for reason, count in self.server.closed.items():
            family.add_metric([reason], count)
        yield family


class Exposition:
    """The registry rendered at most once per MIN_INTERVAL and format: four scrapers in
    a loop cost the data plane what one scrape a second does (docs/benchmarks.rst,
    "Metrics scrapes"), and no Prometheus scrapes that often. Called from the one
    builder thread only, so the last bodies need no lock."""

    def __init__(self, registry: CollectorRegistry,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = registry
        self.clock = clock
        self._last: dict[str, tuple[float, bytes]] = {}   # content type -> (built, body)

    def render(self, accept: str) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept)
        now = self.clock()
        last = self._last.get(content_type)
        if last is None or now - last[0] >= MIN_INTERVAL:
            last = self._last[content_type] = (now, encoder(self.registry))
        return last[1], content_type


def serve(appliance: "Appliance", host: str, port: int,
          detail: Iterable[str] = ()) -> ScrapeServer:
    """Listen on host:port; OSError when it cannot."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ApplianceCollector(appliance, detail))

    def admit(peer: str) -> bool:
        return peer_allowed(appliance.director, "metrics", peer)

    server = ScrapeServer(Exposition(registry).render, admit)
    registry.register(_Closed(server))
    server.start(host, port)
    return server


def start(appliance: "Appliance", args: argparse.Namespace) -> ScrapeServer | None:
    """SERVICES entry: None without `--metrics`; a port in use, or a detail asked for
    an endpoint not asked for, is a one-line error."""
    if args.metrics is None:
        if args.metrics_detail:
            raise ServiceError("metrics: --metrics-detail needs --metrics [ADDR:]PORT")
        return None
    host, port = args.metrics
    host = host or LOOPBACK
    try:
        return serve(appliance, host, port, args.metrics_detail)
    except OSError as err:
        raise ServiceError(f"metrics: cannot listen on {host}:{port}: "
                           f"{err.strerror or err}") from err
