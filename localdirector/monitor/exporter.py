"""`--metrics [ADDR:]PORT`: the Prometheus text exposition format over HTTP, served by
the official client library in a thread of its own (docs/design.rst, "Monitoring").

The registry holds only ApplianceCollector (metrics.py): no process or Python runtime
series, so what an operator sees is the appliance. The library also answers in the
OpenMetrics format to a scraper that asks for it."""

from __future__ import annotations

import argparse
import threading
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

from localdirector.services import ServiceError

from .metrics import ApplianceCollector

if TYPE_CHECKING:
    from localdirector.appliance import Appliance


class Exporter:
    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self.server = server
        self.thread = thread

    @property
    def port(self) -> int:
        return self.server.server_port

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def serve(appliance: "Appliance", host: str, port: int) -> Exporter:
    """Listen on host:port (host "" = every address); OSError when it cannot."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ApplianceCollector(appliance))
    return Exporter(*start_http_server(port, host or "0.0.0.0", registry=registry))


def start(appliance: "Appliance", args: argparse.Namespace) -> Exporter | None:
    """SERVICES entry: None without `--metrics`; a port in use is a one-line error."""
    if args.metrics is None:
        return None
    host, port = args.metrics
    try:
        return serve(appliance, host, port)
    except OSError as err:
        raise ServiceError(f"metrics: cannot listen on {host or '*'}:{port}: "
                           f"{err.strerror or err}") from err
