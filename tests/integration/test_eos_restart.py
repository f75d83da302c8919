"""A router worker that crashed and is started again under its name (``worker_id``) carries on at
once: it aborts the transaction it left open as it starts (the same transactional id), so the readers
of the partitions it wrote wait for its restart, not for the broker's transaction timeout; and it takes
its partitions back as the same static member of its group, without waiting for the group to drop its
dead self (the session timeout)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
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
SESSION_TIMEOUT_MS = 60_000  # how long the group would wait for a dead member: far past DEADLINE_S
REPO = Path(__file__).resolve().parents[2]


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


def test_a_worker_killed_and_started_again_under_its_name_takes_its_partitions_back_at_once(
    kafka_bootstrap: str,
) -> None:
    suffix = uuid.uuid4().hex[:8]
    source, state, out = f"t-static-in-{suffix}", f"t-static-state-{suffix}", f"t-static-out-{suffix}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(name, 1, 1) for name in (source, state, out)])
    finally:
        admin.close()
    group = f"t-static-group-{suffix}"
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    producer.send(source, key=b"k", value=b"before the kill").get(30)
    failures: list[BaseException] = []
    first = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.eos_worker", kafka_bootstrap, group, source, state, out,
         "w1", str(SESSION_TIMEOUT_MS)],
        cwd=REPO,
        env=os.environ | {"PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _read_committed_until(kafka_bootstrap, out, [b"before the kill"], failures)
    finally:
        first.send_signal(signal.SIGKILL)  # no LeaveGroup, no abort: the group still counts it
        first.wait(30)
    producer.send(source, key=b"k", value=b"after the kill").get(30)
    producer.close()

    async def copy(record: Any, _state: PartitionState) -> list[Output]:
        return [Output(out, record.value, record.key)]

    again = TransactionalRunner(
        bootstrap=kafka_bootstrap,
        group_id=group,
        source=source,
        state_topic=state,
        handler=copy,
        worker_id="w1",
        session_timeout_ms=SESSION_TIMEOUT_MS,
    )
    finished = threading.Event()

    def run() -> None:
        try:
            asyncio.run(run_worker_until(again, finished.is_set, "the test's end", DEADLINE_S + 60))
        except BaseException as e:  # reported by the test's thread
            failures.append(e)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    try:
        read = _read_committed_until(kafka_bootstrap, out, [b"before the kill", b"after the kill"], failures)
    finally:
        finished.set()
        worker.join(90)
    assert not failures, failures
    assert read == [b"before the kill", b"after the kill"]
