"""Shared fixtures: a real Kafka broker for the session and unique names for each test."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, settings

from deploy.kafka.local import running
from tests.workers import unstopped

# CPython 3.11 shares one AST state per interpreter: an ast.parse that the garbage collector interrupts
# to run a finalizer that formats a traceback (asyncio's "Future exception was never retrieved", say),
# whose carets parse the failing line, fails with "SystemError: AST constructor recursion depth
# mismatch". pytest parses a module when a test first imports one it rewrites (a plugin's submodule
# imported lazily: a full run failed so in the gateway fuzz test). Without column positions a traceback
# draws no carets and parses nothing. The Makefile starts pytest so; xdist's workers and the services
# the tests start inherit it from here (tests/unit/test_suite_runtime.py checks it).
os.environ.setdefault("PYTHONNODEBUGRANGES", "1")

# Property tests check what an example does, never how fast: Hypothesis's default 200 ms deadline per
# example (and its "too slow" health check) failed a signing property on a loaded 2-CPU machine.
settings.register_profile("lianfang", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("lianfang")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failing test's report ends with the last lines of each service it had running (their logs
    hold no personal data): a failure in CI, where the logs are gone afterwards, can still be read."""
    report = yield
    if report.failed:
        for worker in unstopped():
            state = "running" if worker.alive() else f"exited with code {worker.proc.returncode}"
            report.sections.append((f"{worker.what} ({state}), the end of {worker.log}", worker.tail(60)))
    return report


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The broker named by LIANFANG_BOOTSTRAP, else a single-node Kafka started for this session."""
    external = os.environ.get("LIANFANG_BOOTSTRAP")
    if external:
        yield external
        return
    data = Path(tmp_path_factory.mktemp("kafka"))
    with running(data, discard=True) as cluster:
        yield cluster.bootstrap


@pytest.fixture
def unique(request: pytest.FixtureRequest) -> Unique:
    """Topic and group names no other test (or earlier run against the same broker) uses."""
    return Unique(request.node.name)


class Unique:
    def __init__(self, test_name: str) -> None:
        slug = re.sub(r"[^a-zA-Z0-9]+", "-", test_name).strip("-")[:60]
        self.prefix = f"t-{slug}-{uuid.uuid4().hex[:8]}"

    def __call__(self, name: str) -> str:
        return f"{self.prefix}.{name}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test carries exactly one of the unit / integration / e2e markers."""
    for item in items:
        kinds = {m.name for m in item.iter_markers()} & {"unit", "integration", "e2e"}
        if len(kinds) != 1:
            raise pytest.UsageError(f"{item.nodeid} must be marked with one of unit, integration, e2e")


# --------------------------------------------------------------------------- trust domain


@pytest.fixture(scope="session")
def domain(tmp_path_factory: pytest.TempPathFactory) -> DemoDomain:
    """The default district's demo trust domain, built once (cheap KDF) with the clock at ``kit.NOW``."""
    from tests.kit import DemoDomain

    return DemoDomain.create(Path(tmp_path_factory.mktemp("domain")) / ".lianfang")


@pytest.fixture(scope="session")
def live_domain(tmp_path_factory: pytest.TempPathFactory) -> DemoDomain:
    """A demo domain issued at the real current time, for services that run on the wall clock."""
    from datetime import UTC, datetime

    from tests.kit import DemoDomain

    return DemoDomain.create(
        Path(tmp_path_factory.mktemp("live-domain")) / ".lianfang", now=datetime.now(UTC)
    )


if TYPE_CHECKING:
    from tests.kit import DemoDomain
