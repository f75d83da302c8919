"""What the hub tells /metrics about its own health, without Kafka or faust: an agent that fails on what
it took (Kafka) handles it again in place, each failure counted in ``lianfang_hub_agent_restarts_total``,
and the progress time stops while an agent hangs on a record or fails on it, and follows the clock while
the agents wait for records."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from prometheus_client import CollectorRegistry

from services.hub.app import (
    HubSettings,
    TableReads,
    _HubWorker,
    agent_loop,
    faust_options,
    retry_pauses,
    rocksdb_memory_bound,
    rocksdb_options,
)
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


def test_an_agent_that_fails_on_kafka_handles_the_same_record_again_counted_and_stuck_until_it_succeeds() -> (
    None
):
    registry = CollectorRegistry()
    metrics = HubMetrics(registry)
    clock = Clock()
    progress = AgentProgress(clock)
    handled: list[int] = []
    failures = {2: 3}  # record 2 fails three times, as long as Kafka refuses its alert
    pauses: list[float] = []
    stuck_while_paused: list[list[str]] = []

    async def handle(message: Any) -> None:
        if failures.get(message.offset, 0) > 0:
            failures[message.offset] -= 1
            raise TransportError("lianfang.events.v1 did not take a record")
        handled.append(message.offset)

    async def pause(seconds: float) -> None:
        pauses.append(seconds)
        stuck_while_paused.append(progress.stuck())

    async def run() -> None:
        loop = agent_loop(
            "inbox",
            _events(5),
            handle,
            freshness=Fresh(),
            metrics=metrics,
            progress=progress,
            pause=pause,
        )
        async for _ in loop:
            pass

    asyncio.run(run())
    assert handled == [0, 1, 2, 3, 4], "nothing skipped, in order"
    assert pauses == [1.0, 2.0, 4.0]
    assert stuck_while_paused == [["inbox"]] * 3
    assert registry.get_sample_value("lianfang_hub_agent_restarts_total", {"agent": "inbox"}) == 3
    assert registry.get_sample_value("lianfang_hub_agent_restarts_total", {"agent": "clock"}) == 0
    assert progress.stuck() == []


def test_the_pauses_between_attempts_at_one_batch_double_from_one_second_up_to_thirty() -> None:
    assert list(itertools.islice(retry_pauses(), 8)) == [1, 2, 4, 8, 16, 30, 30, 30]


def test_an_agent_stopped_while_it_pauses_before_another_attempt_stops() -> None:
    metrics = HubMetrics(CollectorRegistry())
    progress = AgentProgress(Clock())

    async def handle(message: Any) -> None:
        raise TransportError("lianfang.events.v1 did not take a record")

    async def stop_it() -> None:
        paused = asyncio.Event()

        async def pause(seconds: float) -> None:
            paused.set()
            await asyncio.Event().wait()  # Kafka stays away

        async def run() -> None:
            loop = agent_loop(
                "clock",
                _events(1),
                handle,
                freshness=Fresh(),
                metrics=metrics,
                progress=progress,
                pause=pause,
            )
            async for _ in loop:
                pass

        task = asyncio.create_task(run())
        await paused.wait()
        task.cancel()  # faust stops its agents so, on SIGTERM
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(asyncio.wait_for(stop_it(), 5))


class Stale:
    """A worker that holds no fresh statement until it is given one."""

    def __init__(self) -> None:
        self.fresh = asyncio.Event()

    def ok(self) -> bool:
        return self.fresh.is_set()

    async def wait_until_ok(self) -> None:
        await self.fresh.wait()


def test_a_failed_batch_is_handled_again_only_once_the_worker_is_fresh() -> None:
    metrics = HubMetrics(CollectorRegistry())
    progress = AgentProgress(Clock())
    attempts: list[bool] = []

    async def run() -> None:
        freshness = Stale()
        freshness.fresh.set()

        async def handle(message: Any) -> None:
            attempts.append(freshness.ok())
            if len(attempts) == 1:
                freshness.fresh.clear()  # the statement expired during the failed attempt
                raise TransportError("lianfang.events.v1 did not take a record")

        async def pause(seconds: float) -> None:
            asyncio.get_running_loop().call_later(0.01, freshness.fresh.set)

        loop = agent_loop(
            "inbox",
            _events(1),
            handle,
            freshness=freshness,
            metrics=metrics,
            progress=progress,
            pause=pause,
        )
        async for _ in loop:
            pass

    asyncio.run(asyncio.wait_for(run(), 5))
    assert attempts == [True, True]


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


def test_each_hub_table_remembers_the_partition_of_a_thousand_keys_not_faust_s_ten_thousand() -> None:
    app = faust.App("t-hub", store="memory://", **faust_options(HubSettings(bootstrap="127.0.0.1:9")))
    assert app.conf.table_key_index_size == 1_000
    wider = HubSettings(bootstrap="127.0.0.1:9", table_key_index=5_000)
    assert faust.App("t-hub", **faust_options(wider)).conf.table_key_index_size == 5_000


def test_the_hubs_rocksdb_stores_together_hold_at_most_22_and_a_half_mib_with_the_default_settings() -> None:
    mib = 1024 * 1024
    defaults = HubSettings()
    # 3 tables x 3 partitions, each two 1 MiB memtables, a 256 KiB block cache and a 256 KiB compressed
    # one: with the worker's ~100 MiB at start, room under 150 MiB for the working size it reaches.
    assert rocksdb_memory_bound(defaults) == 3 * 3 * (2 * mib + 2 * 256 * 1024)
    assert rocksdb_options(defaults)["block_cache_size"] == 256 * 1024
    # The bound follows the settings: every store of every partition counts.
    wider = HubSettings(partitions=6, rocksdb_write_buffer_mb=2, rocksdb_block_cache_mb=4)
    assert rocksdb_memory_bound(wider) == 3 * 6 * (2 * 2 + 4 + 4) * mib


def _root_logger_after_setup(worker_class: type[faust.Worker]) -> tuple[int, bool]:
    """The root logger's level once ``worker_class`` set up logging at level warning, and whether a
    debug line of aiokafka would then become a log record; the process's logging is put back."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    app = faust.App("t-hub-logging", broker="kafka://127.0.0.1:9", store="memory://", web_enabled=False)
    worker = worker_class(app, loglevel="warning", redirect_stdouts=False, loop=asyncio.new_event_loop())
    try:
        worker._setup_logging()
        return root.level, logging.getLogger("aiokafka").isEnabledFor(logging.DEBUG)
    finally:
        worker.loop.close()
        root.handlers[:] = handlers
        root.setLevel(level)


def test_the_hub_s_worker_leaves_the_root_logger_at_warning_so_a_library_s_debug_line_makes_no_record() -> (
    None
):
    assert _root_logger_after_setup(_HubWorker) == (logging.WARNING, False)
    assert _root_logger_after_setup(faust.Worker) == (logging.DEBUG, True), (
        "faust's own, for its spinner: if it changes, look again"
    )


class CountingDict(dict[bytes, bytes]):
    """A memory store's dict that counts the lookups made of it (a RocksDB read each, on disk)."""

    lookups = 0

    def __getitem__(self, key: bytes) -> bytes:
        self.lookups += 1
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.lookups += 1
        return super().__contains__(key)


def test_a_hub_table_read_asks_the_store_once_where_faust_s_own_asks_twice() -> None:
    app = faust.App("t-hub-reads", broker="kafka://127.0.0.1:9", store="memory://", web_enabled=False)
    table = app.Table("t-hub-reads-victims", default=None, key_type=bytes, value_type=bytes)
    store = CountingDict({b"victim": b"{}"})
    table.data.data = store
    reads = TableReads(table)

    assert reads.get(b"victim") == b"{}"
    assert reads.get(b"nobody") is None
    assert store.lookups == 2
    assert table.get(b"victim") == b"{}"
    assert store.lookups == 4, "faust's own: if it reads once now, TableReads is not needed"
