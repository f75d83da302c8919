"""KIP-447's two requests, as :mod:`services.bus.groupfence` sends them to a real broker: offsets
committed in a transaction as a member the group no longer has are refused, and a stable read of
committed offsets waits for a transaction that holds offsets open."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from kafka import KafkaAdminClient
from kafka.admin import NewTopic

from services.bus import groupfence

pytestmark = pytest.mark.integration


@dataclass
class Member:
    """A consumer that is a member of a new group (both partitions of a new topic assigned to it), and
    a transactional producer committing offsets for that group."""

    consumer: AIOKafkaConsumer
    producer: AIOKafkaProducer
    group: str
    tps: list[TopicPartition]


@asynccontextmanager
async def _member_of_a_group(bootstrap: str) -> AsyncIterator[Member]:
    suffix = uuid.uuid4().hex[:8]
    topic, group = f"t-fence-{suffix}", f"t-fence-group-{suffix}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, 2, 1)])
    finally:
        admin.close()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"{group}.worker-test")
    await consumer.start()
    try:
        await producer.start()
        consumer.subscribe([topic])
        tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
        deadline = asyncio.get_running_loop().time() + 60
        while consumer.assignment() != set(tps):
            assert asyncio.get_running_loop().time() < deadline, "the consumer was assigned no partitions"
            await consumer.getmany(timeout_ms=200)
        yield Member(consumer, producer, group, tps)
    finally:
        await producer.stop()
        await consumer.stop()


def test_offsets_from_a_generation_the_group_has_left_or_an_unknown_member_are_refused(
    kafka_bootstrap: str,
) -> None:
    async def scenario() -> None:
        async with _member_of_a_group(kafka_bootstrap) as m:
            consumer, producer, group, tps = m.consumer, m.producer, m.group, m.tps
            now = groupfence.Member.of(consumer)
            for member, code in (
                (groupfence.Member(now.generation_id - 1, now.member_id), "error 22"),  # ILLEGAL_GENERATION
                (groupfence.Member(now.generation_id, "someone-else"), "error 25"),  # UNKNOWN_MEMBER_ID
            ):
                await producer.begin_transaction()
                await producer.send_and_wait(tps[0].topic, b"x", partition=0)
                with pytest.raises(groupfence.NotAGroupMemberError, match=code):
                    await groupfence.send_offsets(producer, {tps[0]: 7}, group, member)
                await producer.abort_transaction()
            await producer.begin_transaction()
            await groupfence.send_offsets(producer, {tps[0]: 3}, group, now)
            await producer.commit_transaction()
            assert await groupfence.stable_committed(consumer, group, tps, timeout_s=30) == {
                tps[0]: 3,
                tps[1]: None,
            }

    asyncio.run(scenario())


def test_a_stable_read_of_committed_offsets_waits_for_the_transaction_that_holds_them_open(
    kafka_bootstrap: str,
) -> None:
    async def scenario() -> None:
        async with _member_of_a_group(kafka_bootstrap) as m:
            consumer, producer, group, tps = m.consumer, m.producer, m.group, m.tps
            await producer.begin_transaction()
            await groupfence.send_offsets(producer, {tps[1]: 5}, group, groupfence.Member.of(consumer))
            reading = asyncio.ensure_future(groupfence.stable_committed(consumer, group, tps, timeout_s=30))
            # Still waiting after many of its retries (every STABLE_RETRY_S), while the transaction is open.
            done, _ = await asyncio.wait([reading], timeout=40 * groupfence.STABLE_RETRY_S)
            assert not done, "read around an open transaction's offsets"
            await producer.commit_transaction()
            assert await reading == {tps[0]: None, tps[1]: 5}

    asyncio.run(scenario())
