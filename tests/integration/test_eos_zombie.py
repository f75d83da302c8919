"""A worker the consumer group dropped while it was in the middle of a batch (its host paused it: no
heartbeat for longer than the session timeout), whose partition another worker took over and
committed, cannot commit that batch when it wakes up: the group coordinator refuses its offsets
(KIP-447: they carry its old generation and member id), so its transaction aborts with its outputs,
and every record is delivered once. The two workers share no transactional id, so only the group's
fence stands between the zombie and a second delivery."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from services.bus.eos import Output, PartitionState, TransactionalRunner
from tests.integration.buskit import (
    WorkerThread,
    committed_offset,
    eos_topics,
    produce,
    read_committed,
    wait_for,
)

pytestmark = pytest.mark.integration

VALUES = [f"r{i}".encode() for i in range(5)]
STALLED_AT = b"r2"
SESSION_TIMEOUT_MS = 6_000  # the broker's least (group.min.session.timeout.ms)


def test_a_worker_the_group_dropped_mid_batch_cannot_commit_what_the_partitions_next_owner_committed(
    kafka_bootstrap: str,
) -> None:
    source, state, out = eos_topics(kafka_bootstrap, "zombie")
    produce(kafka_bootstrap, source, VALUES)
    group = f"{source}.group"
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

    def worker(handler: Any) -> WorkerThread:
        runner = TransactionalRunner(
            bootstrap=kafka_bootstrap,
            group_id=group,
            source=source,
            state_topic=state,
            handler=handler,
            session_timeout_ms=SESSION_TIMEOUT_MS,
        )
        runner.RESTART_BACKOFF_S = 0.2
        return WorkerThread(runner)

    zombie, owner = worker(stall_then_copy), worker(copy)
    workers = (zombie, owner)
    zombie.start()
    try:
        wait_for(stalled.is_set, "the first worker stalled in its batch", workers=workers)
        owner.start()  # joins the group; the stalled worker is dropped after its session timeout
        wait_for(
            lambda: committed_offset(kafka_bootstrap, group, source) == len(VALUES),
            "the next owner's commit",
            workers=workers,
        )
        released.set()

        def zombie_done() -> bool:  # refused (it restarts), or committed: more records than sent
            return zombie.runner.restarts >= 1 or len(read_committed(kafka_bootstrap, out)) > len(VALUES)

        wait_for(zombie_done, "the first worker's batch ended", workers=workers)
    finally:
        released.set()
        for w in workers:
            w.stop()
    assert not zombie.failures, zombie.failures
    assert not owner.failures, owner.failures
    assert zombie_handled[-1] == VALUES[-1], "the first worker finished its batch and tried to commit it"
    assert read_committed(kafka_bootstrap, out) == VALUES
    assert zombie.runner.restarts >= 1
