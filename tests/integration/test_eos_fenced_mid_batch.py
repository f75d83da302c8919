"""A worker fenced in the middle of a batch (another worker took its partition while the group had
dropped it: a network partition, a stalled broker) restarts instead of ending: aiokafka's producer,
once its sender has died of the fencing, refuses the next send with ``IllegalOperation``, which is
not a ``KafkaError``."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic

from services.bus.eos import Output, PartitionState, TransactionalRunner
from tests.integration.buskit import run_worker_until

pytestmark = pytest.mark.integration


def test_a_worker_fenced_between_two_sends_of_a_batch_restarts_and_handles_the_batch_again(
    kafka_bootstrap: str,
) -> None:
    suffix = uuid.uuid4().hex[:8]
    source, state, out = f"t-eos-in-{suffix}", f"t-eos-state-{suffix}", f"t-eos-out-{suffix}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(name, 1, 1) for name in (source, state, out)])
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
        producer = runner.producers[next(iter(runner.producers))]
        if not fenced and record.value == b"first":
            # What the partition's next owner does: a producer of the same transactional id starts.
            zombie_killer = AIOKafkaProducer(
                bootstrap_servers=kafka_bootstrap, transactional_id=producer._txn_manager.transactional_id
            )
            await zombie_killer.start()
            await zombie_killer.stop()
            fenced.append(producer._txn_manager.transactional_id)
        elif len(fenced) == 1 and record.value == b"second":
            # Let the first send reach the coordinator and the fencing kill the producer's sender.
            deadline = time.monotonic() + 30
            while not producer._txn_manager.is_fatal_error():
                assert time.monotonic() < deadline, "the fenced producer never failed"
                await asyncio.sleep(0.05)  # poll interval inside a deadline loop
            fenced.append("failed")
        handled.append(record.value)
        return [Output(out, record.value, record.key)]

    runner = TransactionalRunner(
        bootstrap=kafka_bootstrap, group_id=group, source=source, state_topic=state, handler=fence_then_copy
    )
    runner.RESTART_BACKOFF_S = 0.2

    def handled_again() -> bool:
        return runner.restarts >= 1 and handled.count(b"second") >= 2

    asyncio.run(run_worker_until(runner, handled_again, "the batch handled again after the fencing", 90))
    assert fenced[1:] == ["failed"]
