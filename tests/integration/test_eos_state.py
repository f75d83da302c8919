"""The transactional runner's partition state on a real broker: a worker taking over a partition
reads every committed state record of it, however the client library's offset reset races."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic

from services.kernel.eos import PartitionState, TransactionalRunner

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
