"""The transactional runner's partition state on a real broker: a worker taking over a partition
reads every committed state record of it, however the client library's offset reset races."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from services.bus.eos import Output, PartitionState, TransactionalRunner
from tests.integration.buskit import run_worker_until

pytestmark = pytest.mark.integration

PARTITIONS = 12


async def _no_outputs(_record: Any, _state: PartitionState) -> list[Any]:
    return []


def test_a_worker_loads_the_whole_state_of_every_partition_it_takes_over(kafka_bootstrap: str) -> None:
    topic = f"t-eos-state-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    try:
        for p in range(PARTITIONS):
            for i in range(20):
                producer.send(topic, key=f"id-{p}-{i}".encode(), value=b"seen", partition=p)
            producer.send(topic, key=f"id-{p}-0".encode(), value=None, partition=p)  # a deletion
        producer.flush()
    finally:
        producer.close()
    runner = TransactionalRunner(
        bootstrap=kafka_bootstrap,
        group_id="unused",
        source="unused",
        state_topic=topic,
        handler=_no_outputs,
    )

    async def load_all() -> list[PartitionState]:
        return [await runner._load_state(p) for p in range(PARTITIONS)]

    states = asyncio.run(load_all())
    assert [len(s.data) for s in states] == [19] * PARTITIONS
    assert all(f"id-{s.partition}-0" not in s.data for s in states)


def test_an_output_the_broker_refuses_aborts_the_batch_commits_no_offset_and_is_retried(
    kafka_bootstrap: str,
) -> None:
    """aiokafka would commit a transaction whose send failed: the input's offset without its output.
    The worker aborts instead, and starts afresh from the committed offset (after a back-off)."""
    suffix = uuid.uuid4().hex[:8]
    source, state, small = f"t-eos-in-{suffix}", f"t-eos-state-{suffix}", f"t-eos-small-{suffix}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_topics(
            [
                NewTopic(source, 1, 1),
                NewTopic(state, 1, 1),
                NewTopic(small, 1, 1, topic_configs={"max.message.bytes": "1024"}),
            ]
        )
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    producer.send(source, key=b"k", value=b"an event").get(timeout=30)
    producer.close()
    group = f"t-eos-group-{suffix}"

    async def too_large(_record: Any, _state: PartitionState) -> list[Output]:
        return [Output(small, b"x" * 4096, b"k")]  # the topic takes at most 1 KiB

    runner = TransactionalRunner(
        bootstrap=kafka_bootstrap, group_id=group, source=source, state_topic=state, handler=too_large
    )

    runner.RESTART_BACKOFF_S = 0.2

    async def run_until_it_restarted_twice() -> None:
        task = asyncio.create_task(runner.run())
        deadline = asyncio.get_running_loop().time() + 90
        while runner.restarts < 2:
            assert not task.done(), "the worker ended instead of retrying the batch"
            assert asyncio.get_running_loop().time() < deadline, "the worker never gave up the batch"
            await asyncio.sleep(0.1)  # poll interval inside a deadline loop
        runner.stop()
        await asyncio.wait_for(task, timeout=60)

    asyncio.run(run_until_it_restarted_twice())
    reader = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False)
    try:
        assert reader.committed(TopicPartition(source, 0)) is None, "the input's offset was committed"
    finally:
        reader.close()


def _topics(bootstrap: str, *names: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, 1, 1) for name in names])
    finally:
        admin.close()


def _copier(out: str, seen: list[bytes]) -> Any:
    async def copy(record: Any, _state: PartitionState) -> list[Output]:
        seen.append(record.value)
        return [Output(out, record.value, record.key)]

    return copy


def test_a_worker_started_while_the_broker_is_down_waits_and_works_once_it_is_back(
    tmp_path: Path,
) -> None:
    from deploy.kafka.local import running

    with running(tmp_path / "kafka", discard=True) as cluster:
        suffix = uuid.uuid4().hex[:8]
        source, state, out = f"t-eos-in-{suffix}", f"t-eos-state-{suffix}", f"t-eos-out-{suffix}"
        _topics(cluster.bootstrap, source, state, out)
        producer = KafkaProducer(bootstrap_servers=cluster.bootstrap, acks="all")
        producer.send(source, key=b"k", value=b"an event").get(timeout=30)
        producer.close()
        seen: list[bytes] = []
        runner = TransactionalRunner(
            bootstrap=cluster.bootstrap,
            group_id=f"t-eos-group-{suffix}",
            source=source,
            state_topic=state,
            handler=_copier(out, seen),
        )
        runner.RESTART_BACKOFF_S = 0.2
        runner.MAX_RESTART_BACKOFF_S = 1.0
        cluster.kill_node(1)

        def restart_once_the_worker_has_failed() -> None:
            deadline = time.monotonic() + 60
            while runner.restarts < 1 and time.monotonic() < deadline:
                time.sleep(0.1)  # poll interval inside a deadline loop
            cluster.restart_node(1)

        restarter = threading.Thread(target=restart_once_the_worker_has_failed)
        restarter.start()
        try:
            asyncio.run(run_worker_until(runner, lambda: seen, "record handled after the broker came back"))
        finally:
            restarter.join(timeout=120)
        assert set(seen) == {b"an event"}


def test_a_partition_whose_set_up_failed_restarts_the_worker_instead_of_being_held_unrouted(
    kafka_bootstrap: str,
) -> None:
    """aiokafka swallows an exception of the assignment callback: without a restart the worker would
    hold the partition with no producer and never handle its records."""
    suffix = uuid.uuid4().hex[:8]
    source, state, out = f"t-eos-in-{suffix}", f"t-eos-state-{suffix}", f"t-eos-out-{suffix}"
    _topics(kafka_bootstrap, source, state, out)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    producer.send(source, key=b"k", value=b"an event").get(timeout=30)
    producer.close()
    seen: list[bytes] = []
    runner = TransactionalRunner(
        bootstrap=kafka_bootstrap,
        group_id=f"t-eos-group-{suffix}",
        source=source,
        state_topic=state,
        handler=_copier(out, seen),
    )
    runner.RESTART_BACKOFF_S = 0.2
    load_state = runner._load_state
    failures = [KafkaConnectionError("the broker went away while the state loaded")]

    async def failing_once(partition: int) -> PartitionState:
        if failures:
            raise failures.pop()
        return await load_state(partition)

    runner._load_state = failing_once  # type: ignore[method-assign]
    asyncio.run(run_worker_until(runner, lambda: seen, "record handled after the failed set-up"))
    assert not failures, "the injected failure was never raised"
    assert runner.restarts >= 1
    assert set(seen) == {b"an event"}
