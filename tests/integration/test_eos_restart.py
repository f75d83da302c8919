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
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from services.bus.eos import Output, PartitionState, TransactionalRunner
from tests.integration.buskit import WorkerThread, eos_topics, produce, read_committed

pytestmark = pytest.mark.integration

LEFT_OPEN_FOR_S = 120  # the crashed worker's transaction timeout: far past the test's deadline
DEADLINE_S = 45
SESSION_TIMEOUT_MS = 60_000  # how long the group would wait for a dead member: far past DEADLINE_S
REPO = Path(__file__).resolve().parents[2]


def _copier(bootstrap: str, topics: tuple[str, str, str], worker_id: str) -> TransactionalRunner:
    """Worker ``worker_id`` of the group of ``topics``'s source, copying it to the output topic, as
    :mod:`tests.integration.eos_worker` does in a process of its own."""
    source, state, out = topics

    async def copy(record: Any, _state: PartitionState) -> list[Output]:
        return [Output(out, record.value, record.key)]

    return TransactionalRunner(
        bootstrap=bootstrap,
        group_id=f"{source}.group",
        source=source,
        state_topic=state,
        handler=copy,
        worker_id=worker_id,
        session_timeout_ms=SESSION_TIMEOUT_MS,
    )


def test_a_worker_started_again_under_its_name_aborts_the_transaction_it_left_open(
    kafka_bootstrap: str,
) -> None:
    topics = source, _, out = eos_topics(kafka_bootstrap, "restart")
    produce(kafka_bootstrap, source, [b"after the crash"])
    # The worker's previous process, under the same name, crashed with a record in an open transaction.
    crashed = asyncio.run(_crash_mid_transaction(kafka_bootstrap, f"{source}.group.worker-w1", out))
    worker = WorkerThread(_copier(kafka_bootstrap, topics, "w1")).start()
    try:
        read = read_committed(kafka_bootstrap, out, until=[b"after the crash"], timeout_s=DEADLINE_S)
    finally:
        worker.stop()
        asyncio.run(_stop(crashed))
    assert not worker.failures, worker.failures
    assert read == [b"after the crash"], "the crashed worker's record is not committed"


def test_a_worker_killed_and_started_again_under_its_name_takes_its_partitions_back_at_once(
    kafka_bootstrap: str,
) -> None:
    topics = source, state, out = eos_topics(kafka_bootstrap, "static")
    produce(kafka_bootstrap, source, [b"before the kill"])
    first = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.eos_worker", kafka_bootstrap, f"{source}.group", source,
         state, out, "w1", str(SESSION_TIMEOUT_MS)],
        cwd=REPO,
        env=os.environ | {"PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        read_committed(kafka_bootstrap, out, until=[b"before the kill"], timeout_s=DEADLINE_S)
    finally:
        first.send_signal(signal.SIGKILL)  # no LeaveGroup, no abort: the group still counts it
        first.wait(30)
    produce(kafka_bootstrap, source, [b"after the kill"])
    worker = WorkerThread(_copier(kafka_bootstrap, topics, "w1")).start()
    try:
        read = read_committed(
            kafka_bootstrap, out, until=[b"before the kill", b"after the kill"], timeout_s=DEADLINE_S
        )
    finally:
        worker.stop()
    assert not worker.failures, worker.failures
    assert read == [b"before the kill", b"after the kill"]


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
