"""Each long-running service serves /metrics on the address its settings name: loopback unless
LIANFANG_<SERVICE>_METRICS_ADDRESS says otherwise (a container sets 0.0.0.0 so that Prometheus in
another container or pod can scrape it)."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Callable, Iterator
from wsgiref.simple_server import WSGIServer

import pytest
from pydantic import ValidationError

from services.bus import metrics_endpoint
from services.console.settings import ConsoleSettings
from services.hub.app import HubSettings
from services.router.app import RouterSettings
from services.timestamp.app import TimestampSettings
from tests.workers import free_port

pytestmark = pytest.mark.unit

SERVICES: dict[str, Callable[[], metrics_endpoint.MetricsSettings]] = {
    "ROUTER": RouterSettings,
    "HUB": HubSettings,
    "CONSOLE": ConsoleSettings,
    "TIMESTAMP": TimestampSettings,
}
# Any address of the loopback network other than 127.0.0.1: a server bound there is not on 127.0.0.1.
OTHER_LOOPBACK = "127.0.0.2"


@pytest.fixture
def servers() -> Iterator[list[WSGIServer]]:
    started: list[WSGIServer] = []
    yield started
    for server in started:
        server.shutdown()
        server.server_close()


def _refused(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex((host, port)) != 0


@pytest.mark.parametrize("service", SERVICES, ids=str.lower)
def test_the_service_serves_metrics_on_the_address_its_environment_names(
    service: str, monkeypatch: pytest.MonkeyPatch, servers: list[WSGIServer]
) -> None:
    port = free_port()
    monkeypatch.setenv(f"LIANFANG_{service}_METRICS_ADDRESS", OTHER_LOOPBACK)
    monkeypatch.setenv(f"LIANFANG_{service}_METRICS_PORT", str(port))
    settings = SERVICES[service]()

    server = metrics_endpoint.start(settings)
    assert server is not None
    servers.append(server)

    assert server.server_address[:2] == (OTHER_LOOPBACK, port)
    with urllib.request.urlopen(f"http://{OTHER_LOOPBACK}:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        assert b"# TYPE " in response.read()
    assert _refused("127.0.0.1", port)


@pytest.mark.parametrize("service", SERVICES, ids=str.lower)
def test_the_service_serves_metrics_on_loopback_only_unless_told(
    service: str, monkeypatch: pytest.MonkeyPatch, servers: list[WSGIServer]
) -> None:
    port = free_port()
    monkeypatch.delenv(f"LIANFANG_{service}_METRICS_ADDRESS", raising=False)
    monkeypatch.setenv(f"LIANFANG_{service}_METRICS_PORT", str(port))
    settings = SERVICES[service]()

    server = metrics_endpoint.start(settings)
    assert server is not None
    servers.append(server)

    assert settings.metrics_address == "127.0.0.1"
    assert server.server_address[:2] == ("127.0.0.1", port)
    assert _refused(OTHER_LOOPBACK, port)


@pytest.mark.parametrize("service", SERVICES, ids=str.lower)
def test_the_metrics_address_cannot_be_changed_after_the_settings_are_made(service: str) -> None:
    settings = SERVICES[service]()
    with pytest.raises(ValidationError, match="frozen"):
        settings.metrics_address = "0.0.0.0"  # type: ignore[misc]


def test_port_zero_serves_no_metrics_at_all() -> None:
    assert metrics_endpoint.start(RouterSettings(metrics_port=0, metrics_address="127.0.0.1")) is None
