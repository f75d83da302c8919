"""Unit tests' trust domains. The default one names the oblivious pseudonymizer, as `lianfang init` makes
them, and the session serves it on loopback (no Kafka, no network beyond 127.0.0.1): adapters under test
ask it as they would in production. ``sealed_domain`` is the older kind, for the tests of that path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest


@pytest.fixture(scope="session")
def domain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoDomain]:
    """The default district's demo trust domain, built once (cheap KDF) with the clock at ``kit.NOW``;
    its registry names the pseudonymizer this fixture serves for the session."""
    from tests.kit import DemoDomain, serve_pseudonymizer
    from tests.workers import free_port

    port = free_port()
    home = Path(tmp_path_factory.mktemp("domain")) / ".lianfang"
    demo = DemoDomain.create(home, pseudonymizer_url=f"http://127.0.0.1:{port}")
    served = serve_pseudonymizer(demo, port)
    yield demo
    served.close()


@pytest.fixture(scope="session")
def sealed_domain(tmp_path_factory: pytest.TempPathFactory) -> DemoDomain:
    """An older kind of domain, whose registry seals a pseudonym key to every participant."""
    from tests.kit import DemoDomain

    return DemoDomain.create(Path(tmp_path_factory.mktemp("sealed")) / ".lianfang")


if TYPE_CHECKING:
    from tests.kit import DemoDomain
