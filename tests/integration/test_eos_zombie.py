"""A worker the consumer group dropped while it was in the middle of a batch (its host paused it: no
heartbeat for longer than the session timeout), whose partition another worker took over and
committed, cannot commit that batch when it wakes up: the group coordinator refuses its offsets
(KIP-447: they carry its old generation and member id), so its transaction aborts with its outputs,
and every record is delivered once. The two workers share no transactional id, so only the group's
fence stands between the zombie and a second delivery."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from services.bus.eos import Output, PartitionState, TransactionalRunner
from tests.integration.buskit import run_worker_until

pytestmark = pytest.mark.integration

VALUES = [f"r{i}".encode() for i in range(5)]
STALLED_AT = b"r2"
SESSION_TIMEOUT_MS = 6_000  # the broker's least (group.min.session.timeout.ms)


def test_a_worker_the_group_dropped_mid_batch_cannot_commit_what_the_partitions_next_owner_committed(
    kafka_bootstrap: str,
) -> None:
    suffix = uuid.uuid4().hex[:8]
    source, state, out = f"t-zombie-in-{suffix}", f"t-zombie-state-{suffix}", f"t-zombie-out-{suffix}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(name, 1, 1) for name in (source, state, out)])
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for value in VALUES:
        producer.send(source, key=b"k", value=value)
    producer.flush()
    producer.close()
    group = f"t-zombie-group-{suffix}"
    stalled, released = threading.Event(), threading.Event()
    zombie_handled: list[bytes] = []

    async def stall_then_copy(record: Any, _state: PartitionState) -> list[Output]:
        if record.value == STALLED_AT and not stalled.is_set():
            stalled.set()
            # The worker's whole event loop stops here, heartbeats too, as if its host had paused it,
            # until the test has seen the partition's next owner commit.
            released.wait(120)
        zombie_handled.append(record.value)
        return [Output(out, record.value, record.key)]

    async def copy(record: Any, _state: PartitionState) -> list[Output]:
        return [Output(out, record.value, record.key)]

    def worker(handler: Any) -> TransactionalRunner:
        runner = TransactionalRunner(
            bootstrap=kafka_bootstrap,
            group_id=group,
            source=source,
            state_topic=state,
            handler=handler,
            session_timeout_ms=SESSION_TIMEOUT_MS,
        )
        runner.RESTART_BACKOFF_S = 0.2
        return runner

    zombie, owner = worker(stall_then_copy), worker(copy)
    finished = threading.Event()
    failures: list[BaseException] = []
    threads = [
        threading.Thread(target=_run, args=(runner, finished, failures), daemon=True)
        for runner in (zombie, owner)
    ]
    threads[0].start()
    try:
        _wait(stalled.is_set, "the first worker stalled in its batch", failures)
        threads[1].start()  # joins the group; the stalled worker is dropped after its session timeout
        _wait(
            lambda: _committed(kafka_bootstrap, group, source) == len(VALUES),
            "the next owner's commit",
            failures,
        )
        released.set()

        def zombie_done() -> bool:  # refused (it restarts), or committed: more records than sent
            return zombie.restarts >= 1 or len(_read_committed(kafka_bootstrap, out)) > len(VALUES)

        _wait(zombie_done, "the first worker's batch ended", failures)
    finally:
        released.set()
        finished.set()
        for thread in threads:
            thread.join(90)
    assert not failures, failures
    assert zombie_handled[-1] == VALUES[-1], "the first worker finished its batch and tried to commit it"
    assert _read_committed(kafka_bootstrap, out) == VALUES
    assert zombie.restarts >= 1


def _run(runner: TransactionalRunner, finished: threading.Event, failures: list[BaseException]) -> None:
    try:
        asyncio.run(run_worker_until(runner, finished.is_set, "the test's end", 180))
    except BaseException as e:  # reported by the test's thread
        failures.append(e)


def _wait(
    condition: Callable[[], bool], what: str, failures: list[BaseException], timeout_s: float = 90
) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert not failures, failures
        assert time.monotonic() < deadline, f"no {what} within {timeout_s} s"
        time.sleep(0.1)  # poll interval inside a deadline loop


def _committed(bootstrap: str, group: str, topic: str) -> int | None:
    reader = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        offset: int | None = reader.committed(TopicPartition(topic, 0))
        return offset
    finally:
        reader.close()


def _read_committed(bootstrap: str, topic: str) -> list[bytes]:
    """The committed values of partition 0 of ``topic``, to its end."""
    reader = KafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", auto_offset_reset="earliest"
    )
    try:
        tp = TopicPartition(topic, 0)
        reader.assign([tp])
        end = reader.end_offsets([tp])[tp]
        read: list[bytes] = []
        deadline = time.monotonic() + 30
        while reader.position(tp) < end:
            assert time.monotonic() < deadline, f"could not read {topic} to its end"
            for records in reader.poll(timeout_ms=200).values():
                read.extend(r.value for r in records)
        return read
    finally:
        reader.close()
