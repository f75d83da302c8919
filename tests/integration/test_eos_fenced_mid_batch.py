"""A worker whose producer is fenced in the middle of a batch (another producer started with its
transactional id, as the worker's own restart does, or the broker aborted its transaction after the
transaction timeout) restarts instead of ending, and the batch is handled again and committed once:
whichever way aiokafka's producer reports its fencing (a batch's delivery failed, or, once its sender
has died, ``IllegalOperation`` from the next call, which is not a ``KafkaError``), the worker takes it
as Kafka's failure. (A worker the group dropped is fenced by the group: test_eos_zombie.py.)"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic

from services.bus.eos import Output, PartitionState, TransactionalRunner
from tests.integration.buskit import committed_offset, read_committed, run_worker_until

pytestmark = pytest.mark.integration


def test_a_worker_fenced_mid_batch_restarts_and_commits_the_batch_once(kafka_bootstrap: str) -> None:
    suffix = uuid.uuid4().hex[:8]
    source, state = f"t-eos-in-{suffix}", f"t-eos-state-{suffix}"
    out, other = f"t-eos-out-{suffix}", f"t-eos-other-{suffix}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(name, 1, 1) for name in (source, state, out, other)])
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for value in (b"first", b"second"):
        producer.send(source, key=b"k", value=value)
    producer.flush()
    producer.close()
    group = f"t-eos-group-{suffix}"
    fenced: list[str] = []
    handled: list[bytes] = []

    async def fence_then_copy(record: Any, _state: PartitionState) -> list[Output]:
        if not fenced and record.value == b"first":
            # A producer of the same transactional id starts (bumps the epoch).
            zombie_killer = AIOKafkaProducer(
                bootstrap_servers=kafka_bootstrap, transactional_id=runner.transactional_id
            )
            await zombie_killer.start()
            await zombie_killer.stop()
            fenced.append(runner.transactional_id)
        handled.append(record.value)
        return [Output(out, record.value, record.key), Output(other, record.value, record.key)]

    runner = TransactionalRunner(
        bootstrap=kafka_bootstrap, group_id=group, source=source, state_topic=state, handler=fence_then_copy
    )
    runner.RESTART_BACKOFF_S = 0.2

    def committed_again() -> bool:
        return (
            runner.restarts >= 1
            and handled.count(b"second") >= 2
            and committed_offset(kafka_bootstrap, group, source) == 2
        )

    asyncio.run(run_worker_until(runner, committed_again, "the batch handled again and committed", 90))
    assert len(fenced) == 1
    assert read_committed(kafka_bootstrap, out) == [b"first", b"second"]
    assert read_committed(kafka_bootstrap, other) == [b"first", b"second"]
