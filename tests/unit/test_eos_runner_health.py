"""What the exactly-once runner tells its service's /metrics about its own health, without Kafka: each
restart after a Kafka failure calls the restart hook (the router's ``lianfang_router_worker_restarts_total``),
and the progress time moves only when the loop comes back from Kafka."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from services.bus.eos import PartitionState, TransactionalRunner, restart_backoff
from services.kernel.errors import TransportError
from services.router.metrics import RouterMetrics
from tests.kit import offline_runner

pytestmark = pytest.mark.unit


async def _nothing(_record: Any, _state: PartitionState) -> list[Any]:
    return []


def _runner(metrics: RouterMetrics) -> TransactionalRunner:
    runner = offline_runner(_nothing, source="s", on_restart=metrics.worker_restarts.inc)
    runner.RESTART_BACKOFF_S = 0.0
    return runner


def test_every_restart_after_a_kafka_failure_is_counted_in_the_worker_restarts_metric() -> None:
    registry = CollectorRegistry()
    metrics = RouterMetrics(registry)
    runner = _runner(metrics)
    failures = 3

    async def fail_then_finish() -> None:
        if runner.restarts < failures:
            raise TransportError("the broker went away")

    runner._run_once = fail_then_finish  # type: ignore[method-assign]
    asyncio.run(runner.run())
    assert runner.restarts == failures
    assert registry.get_sample_value("lianfang_router_worker_restarts_total") == failures


def test_the_progress_time_stays_put_while_the_worker_only_restarts() -> None:
    registry = CollectorRegistry()
    metrics = RouterMetrics(registry)
    runner = _runner(metrics)
    metrics.worker_progress.set_function(lambda: runner.progressed_at)
    runner.progressed_at = 1000.0

    async def fail_twice() -> None:
        if runner.restarts < 2:
            raise TransportError("the broker went away")

    runner._run_once = fail_twice  # type: ignore[method-assign]
    asyncio.run(runner.run())
    assert registry.get_sample_value("lianfang_router_worker_progress_timestamp_seconds") == 1000.0


def test_the_restart_pause_doubles_while_a_fault_lasts_and_starts_again_after_a_run_that_worked() -> None:
    pauses = []
    pause = None
    for worked in (False, False, False, False, False, False, True, False):
        pause = restart_backoff(pause, worked=worked, first=1.0, most=30.0)
        pauses.append(pause)
    assert pauses == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 1.0, 2.0]
