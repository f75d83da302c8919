"""What the hub tells /metrics about its own health, without Kafka or faust: each agent crash is counted
in ``lianfang_hub_agent_restarts_total`` and goes on to faust, and the progress time stops while an
agent hangs on a record or crashes on it, and follows the clock while the agents wait for records."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from services.hub.app import HubSettings, agent_loop, rocksdb_options
from services.hub.metrics import HubMetrics
from services.hub.progress import AgentProgress
from services.kernel.errors import TransportError

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Fresh:
    """A worker that always holds a fresh statement."""

    def ok(self) -> bool:
        return True

    async def wait_until_ok(self) -> None:
        return None


async def _events(n: int) -> AsyncIterator[Any]:
    for i in range(n):
        yield SimpleNamespace(message=SimpleNamespace(offset=i))


def test_an_agent_waiting_for_records_makes_progress_with_the_clock() -> None:
    clock = Clock()
    progress = AgentProgress(clock)
    assert progress.at() == 1000.0
    clock.now = 1300.0
    assert progress.at() == 1300.0


def test_an_agent_holding_a_record_stops_the_progress_time_until_it_finishes_one() -> None:
    clock = Clock()
    progress = AgentProgress(clock)
    progress.taken("inbox")
    clock.now = 1300.0
    progress.taken("clock")
    assert progress.at() == 1000.0
    assert progress.stuck() == ["clock", "inbox"]
    progress.done("inbox")
    assert progress.at() == 1300.0
    progress.done("clock")
    clock.now = 1500.0
    assert progress.at() == 1500.0


def test_an_agent_that_crashes_on_kafka_is_counted_stays_stuck_and_the_crash_goes_on_to_faust() -> None:
    registry = CollectorRegistry()
    metrics = HubMetrics(registry)
    clock = Clock()
    progress = AgentProgress(clock)
    handled: list[int] = []

    async def handle(message: Any) -> None:
        if message.offset == 2:
            raise TransportError("lianfang.events.v1 did not take a record")
        handled.append(message.offset)

    async def run() -> None:
        loop = agent_loop(
            "inbox",
            _events(5),
            handle,
            freshness=Fresh(),
            metrics=metrics,
            progress=progress,  # type: ignore[arg-type]
        )
        async for _ in loop:
            pass

    with pytest.raises(TransportError):
        asyncio.run(run())
    assert handled == [0, 1]
    assert registry.get_sample_value("lianfang_hub_agent_restarts_total", {"agent": "inbox"}) == 1
    assert registry.get_sample_value("lianfang_hub_agent_restarts_total", {"agent": "clock"}) == 0
    clock.now = 2000.0
    assert progress.stuck() == ["inbox"]
    assert progress.at() == 1000.0, "a crashed agent is stuck until it finishes a record"


def test_the_progress_gauge_reads_the_agents_progress_when_scraped() -> None:
    registry = CollectorRegistry()
    metrics = HubMetrics(registry)
    clock = Clock()
    progress = AgentProgress(clock)
    metrics.worker_progress.set_function(progress.at)
    progress.taken("serial")
    clock.now = 1600.0
    assert registry.get_sample_value("lianfang_hub_worker_progress_timestamp_seconds") == 1000.0
    progress.done("serial")
    assert registry.get_sample_value("lianfang_hub_worker_progress_timestamp_seconds") == 1600.0


def test_each_hub_table_partition_gets_bounded_rocksdb_memory_in_a_dict_of_its_own() -> None:
    settings = HubSettings(rocksdb_write_buffer_mb=2, rocksdb_block_cache_mb=4)
    first, second = rocksdb_options(settings), rocksdb_options(settings)
    mib = 1024 * 1024
    assert first == {
        "write_buffer_size": 2 * mib,
        "max_write_buffer_number": 2,
        "block_cache_size": 4 * mib,
        "block_cache_compressed_size": 4 * mib,
    }
    first.pop("write_buffer_size")  # faust's store pops from the dict it is given
    assert second["write_buffer_size"] == 2 * mib
    # The bound of one table partition, far below faust's defaults (3 x 64 MiB + 2 GiB).
    assert 2 * second["write_buffer_size"] + second["block_cache_size"] <= 16 * mib
