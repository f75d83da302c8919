"""The transactional runner's partition state on a real broker: a worker taking over a partition
reads every committed state record of it, however the client library's offset reset races."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from services.bus.eos import Output, PartitionState, TransactionalRunner

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
