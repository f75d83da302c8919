"""Integration tests' shared trust domains name the oblivious pseudonymizer, as `lianfang init` makes
them, and the session serves it on loopback, so adapters in the test process and in the services it
starts ask it as in production. Tests of the sealed-key path make their own domain."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest


@pytest.fixture(scope="session")
def domain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoDomain]:
    """The default district's demo trust domain, built once with the clock at ``kit.NOW``."""
    from tests.kit import DemoDomain, serve_pseudonymizer
    from tests.workers import free_port

    port = free_port()
    home = Path(tmp_path_factory.mktemp("domain")) / ".lianfang"
    demo = DemoDomain.create(home, pseudonymizer_url=f"http://127.0.0.1:{port}")
    served = serve_pseudonymizer(demo, port)
    yield demo
    served.close()


@pytest.fixture(scope="session")
def live_domain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoDomain]:
    """A demo domain issued at the real current time, for services that run on the wall clock."""
    from tests.kit import DemoDomain, serve_pseudonymizer
    from tests.workers import free_port

    port = free_port()
    home = Path(tmp_path_factory.mktemp("live-domain")) / ".lianfang"
    demo = DemoDomain.create(home, now=datetime.now(UTC), pseudonymizer_url=f"http://127.0.0.1:{port}")
    served = serve_pseudonymizer(demo, port, clock=lambda: datetime.now(UTC))
    yield demo
    served.close()


if TYPE_CHECKING:
    from tests.kit import DemoDomain
