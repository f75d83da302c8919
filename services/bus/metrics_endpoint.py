"""Where a long-running service serves ``/metrics`` (the router, hub, console and timestamp service).

Each takes ``LIANFANG_<SERVICE>_METRICS_PORT`` and ``LIANFANG_<SERVICE>_METRICS_ADDRESS``; the address
is 127.0.0.1 unless a deployment sets it (``0.0.0.0`` in a container, so that a Prometheus in another
container or pod can scrape it). Nothing personal is in the metrics.
"""

from __future__ import annotations

from typing import Final, Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server

LOOPBACK: Final = "127.0.0.1"
ADDRESS_HELP: Final = "address /metrics listens on; 0.0.0.0 where Prometheus runs in another container"


class MetricsSettings(Protocol):
    @property
    def metrics_port(self) -> int: ...

    @property
    def metrics_address(self) -> str: ...


def start(settings: MetricsSettings) -> WSGIServer | None:
    """Serve the default registry's ``/metrics`` on the settings' address and port (0: not at all)."""
    if not settings.metrics_port:
        return None
    server, _thread = start_http_server(settings.metrics_port, addr=settings.metrics_address)
    return server
