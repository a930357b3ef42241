"""Serving a service's Prometheus registry over HTTP.

Each service builds its own ``CollectorRegistry`` in bootstrap and passes it to everything that
records metrics; the process-global default registry is never used, so tests can run several
services in one process without metric name clashes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server


@dataclass
class MetricsServer:
    """A running ``/metrics`` endpoint."""

    port: int
    _server: WSGIServer
    _thread: threading.Thread

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def start_metrics_server(
    registry: CollectorRegistry, *, host: str = "127.0.0.1", port: int = 0
) -> MetricsServer:
    """Serve ``registry`` on ``host:port`` (0: any free port) from a daemon thread."""
    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(port=server.server_port, _server=server, _thread=thread)
