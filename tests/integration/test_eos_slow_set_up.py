"""A worker whose partitions take longer to set up than the group's session timeout keeps its place in
the group. aiokafka sends no heartbeat from a rejoin until the assignment callback returns; the runner
used to start the partitions' transactional producers and load their states in that callback, so a
set-up slower than the session timeout (12 partitions on a loaded machine) got the worker dropped as
soon as it had joined, and it set them all up again on every rejoin."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic

from services.bus.eos import Output, PartitionState, TransactionalRunner

pytestmark = pytest.mark.integration

PARTITIONS = 2
RECORDS = 40

SESSION_TIMEOUT_MS = 6_000
"""The worker's session here: Kafka's smallest (``group.min.session.timeout.ms``), for a shorter test
than the router's 10 s (:data:`services.bus.eos.SESSION_TIMEOUT_MS`) would make; the mechanism is the same."""

SLOW_SET_UP_S = SESSION_TIMEOUT_MS / 1000 + 5
"""How long each partition's state takes to load here: past the session timeout, as a slow broker or
a loaded machine makes a whole assignment's set-up."""


class SlowRunner(TransactionalRunner):
    """A runner whose partitions' states load slowly; it counts the loads."""

    loads: Counter[int]

    async def _load_state(self, partition: int) -> PartitionState:
        self.loads[partition] += 1
        await asyncio.sleep(SLOW_SET_UP_S)  # a slow set-up, not a wait for a condition
        return await super()._load_state(partition)


def _stable_members(bootstrap: str, group: str) -> list[str] | None:
    """The member ids of ``group`` while it is stable (None while it rebalances or is empty)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        info = admin.describe_groups([group]).get(group) or {}
    finally:
        admin.close()
    if info.get("group_state", info.get("state")) != "Stable":
        return None
    return sorted(m["member_id"] for m in info.get("members") or [])


def test_a_partition_set_up_slower_than_the_session_timeout_does_not_get_the_worker_dropped(
    kafka_bootstrap: str,
) -> None:
    name = f"t-eos-slow-{uuid.uuid4().hex[:8]}"
    source, state_topic, out = f"{name}.in", f"{name}.state", f"{name}.out"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in (source, state_topic, out)])
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    try:
        for i in range(RECORDS):
            producer.send(source, value=f"{i}".encode(), partition=i % PARTITIONS)
        producer.flush()
    finally:
        producer.close()

    handled: set[tuple[int, int]] = set()

    async def handle(record: Any, _state: PartitionState) -> list[Output]:
        handled.add((record.partition, record.offset))
        return [Output(out, record.value)]

    runner = SlowRunner(
        bootstrap=kafka_bootstrap,
        group_id=name,
        source=source,
        state_topic=state_topic,
        handler=handle,
        session_timeout_ms=SESSION_TIMEOUT_MS,
    )
    runner.loads = Counter()

    async def work_until_settled() -> list[str]:
        """Run the worker until it has handled every record and the group, looked at twice a
        heartbeat apart, is stable with the same one member; return that member."""
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(runner.run())
        deadline = loop.time() + 180
        last: list[str] | None = None
        try:
            while True:
                if task.done():
                    task.result()  # raises what ended the worker
                    raise AssertionError("the worker ended by itself")
                assert loop.time() < deadline, f"not settled within 180 s: {len(handled)} handled, {last}"
                if len(handled) == RECORDS:
                    members = await asyncio.to_thread(_stable_members, kafka_bootstrap, name)
                    if members is not None and len(members) == 1 and members == last:
                        return members
                    last = members
                await asyncio.sleep(1.0)  # poll interval inside a deadline loop (a heartbeat's)
        finally:
            runner.stop()
            await asyncio.wait_for(task, timeout=60)

    asyncio.run(work_until_settled())
    assert runner.restarts == 0
    assert runner.loads == Counter(range(PARTITIONS)), (
        "a partition was set up again: the group dropped the worker"
    )
