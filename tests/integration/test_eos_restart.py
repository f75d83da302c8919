"""A router worker that crashed with a transaction open and is started again under its name
(``worker_id``: the same transactional id) aborts that transaction as it starts, so the readers of the
partitions it wrote wait for its restart, not for the broker's transaction timeout."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from services.bus.eos import Output, PartitionState, TransactionalRunner
from tests.integration.buskit import run_worker_until

pytestmark = pytest.mark.integration

LEFT_OPEN_FOR_S = 120  # the crashed worker's transaction timeout: far past the test's deadline
DEADLINE_S = 45


def test_a_worker_started_again_under_its_name_aborts_the_transaction_it_left_open(
    kafka_bootstrap: str,
) -> None:
    suffix = uuid.uuid4().hex[:8]
    source, state, out = f"t-restart-in-{suffix}", f"t-restart-state-{suffix}", f"t-restart-out-{suffix}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(name, 1, 1) for name in (source, state, out)])
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    producer.send(source, key=b"k", value=b"after the crash").get(30)
    producer.close()
    group = f"t-restart-group-{suffix}"

    async def copy(record: Any, _state: PartitionState) -> list[Output]:
        return [Output(out, record.value, record.key)]

    runner = TransactionalRunner(
        bootstrap=kafka_bootstrap,
        group_id=group,
        source=source,
        state_topic=state,
        handler=copy,
        worker_id="w1",
    )
    # The worker's previous process, under the same name.
    crashed = asyncio.run(_crash_mid_transaction(kafka_bootstrap, f"{group}.worker-w1", out))
    finished = threading.Event()
    failures: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(run_worker_until(runner, finished.is_set, "the test's end", DEADLINE_S + 60))
        except BaseException as e:  # reported by the test's thread
            failures.append(e)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    try:
        read = _read_committed_until(kafka_bootstrap, out, [b"after the crash"], failures)
    finally:
        finished.set()
        worker.join(90)
        asyncio.run(_stop(crashed))
    assert not failures, failures
    assert read == [b"after the crash"], "the crashed worker's record is not committed"


async def _crash_mid_transaction(bootstrap: str, transactional_id: str, topic: str) -> AIOKafkaProducer:
    """A worker's producer that wrote a record in a transaction and was never heard of again."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        transactional_id=transactional_id,
        transaction_timeout_ms=LEFT_OPEN_FOR_S * 1000,
    )
    await producer.start()
    await producer.begin_transaction()
    await producer.send_and_wait(topic, b"left open by the crash", key=b"k", partition=0)
    return producer


async def _stop(producer: AIOKafkaProducer) -> None:
    try:
        await asyncio.wait_for(producer.stop(), 10)
    except Exception:  # fenced by the restarted worker, as it should be
        return


def _read_committed_until(
    bootstrap: str, topic: str, expected: list[bytes], failures: list[BaseException]
) -> list[bytes]:
    """What a read_committed reader of partition 0 of ``topic`` reads, once it has read ``expected``
    or the deadline passed (a reader held back by the open transaction reads nothing)."""
    reader = KafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", auto_offset_reset="earliest"
    )
    try:
        reader.assign([TopicPartition(topic, 0)])
        read: list[bytes] = []
        deadline = time.monotonic() + DEADLINE_S
        while read != expected:
            assert not failures, failures
            assert time.monotonic() < deadline, f"a read_committed reader read {read} within {DEADLINE_S} s"
            for records in reader.poll(timeout_ms=200).values():
                read.extend(r.value for r in records)
        return read
    finally:
        reader.close()
