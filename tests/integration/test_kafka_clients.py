"""The broker is a real Kafka and both Python clients work on it with durable settings."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from kafka import KafkaConsumer, KafkaProducer

from services.bus.cluster import DURABLE_PRODUCER, TopicSpec, ensure_topics
from tests.conftest import Unique

pytestmark = pytest.mark.integration

N = 200


def _records(n: int) -> list[tuple[bytes, bytes]]:
    return [(f"subject-{i % 7}".encode(), f"value-{i:05d}".encode() * 40) for i in range(n)]


def test_kafka_python_produces_with_acks_all_and_idempotence_and_reads_back_through_a_group(
    kafka_bootstrap: str, unique: Unique
) -> None:
    topic, group = unique("records"), unique("group")
    ensure_topics(kafka_bootstrap, [TopicSpec(topic, partitions=3)])
    sent = _records(N)

    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, **DURABLE_PRODUCER)
    futures = [producer.send(topic, key=k, value=v) for k, v in sent]
    producer.flush()
    offsets = [f.get(timeout=30) for f in futures]
    producer.close()
    assert all(md.offset >= 0 for md in offsets)

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    got: list[tuple[bytes, bytes]] = []
    deadline = time.monotonic() + 60
    while len(got) < N and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            got.extend((r.key, r.value) for r in records)
    consumer.commit()
    committed = sum(consumer.committed(tp) or 0 for tp in consumer.assignment())
    consumer.close()

    assert sorted(got) == sorted(sent)
    assert committed == N


def test_aiokafka_produces_with_acks_all_and_idempotence_and_reads_back_through_a_group(
    kafka_bootstrap: str, unique: Unique
) -> None:
    topic, group = unique("records"), unique("group")
    ensure_topics(kafka_bootstrap, [TopicSpec(topic, partitions=3)])
    sent = _records(N)

    async def round_trip() -> list[tuple[bytes, bytes]]:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True)
        await producer.start()
        try:
            batch = [await producer.send(topic, key=k, value=v) for k, v in sent]
            metadata = await asyncio.gather(*batch)
        finally:
            await producer.stop()
        assert all(md.offset >= 0 for md in metadata)

        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka_bootstrap,
            group_id=group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        got: list[tuple[bytes, bytes]] = []
        try:
            deadline = time.monotonic() + 60
            while len(got) < N and time.monotonic() < deadline:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    got.extend((r.key or b"", r.value or b"") for r in records)
            await consumer.commit()
        finally:
            await consumer.stop()
        return got

    assert sorted(asyncio.run(round_trip())) == sorted(sent)


def test_records_with_one_key_arrive_in_the_order_they_were_sent(
    kafka_bootstrap: str, unique: Unique
) -> None:
    topic = unique("ordered")
    ensure_topics(kafka_bootstrap, [TopicSpec(topic, partitions=3)])
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, **DURABLE_PRODUCER)
    for i in range(100):
        producer.send(topic, key=b"one-subject", value=str(i).encode())
    producer.flush()
    producer.close()
    consumer = KafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest")
    got: list[int] = []
    deadline = time.monotonic() + 60
    while len(got) < 100 and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            got.extend(int(r.value) for r in records)
    consumer.close()
    assert got == list(range(100))


def test_the_broker_refuses_to_create_topics_on_first_use(kafka_bootstrap: str, unique: Unique) -> None:
    """Nothing may depend on auto-creation: topics come from a declarative list."""
    from kafka import KafkaAdminClient

    topic = unique("never-declared")
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, max_block_ms=2000)
    with pytest.raises(Exception, match=r"(?i)timeout|not present|unknown"):
        producer.send(topic, b"x").get(timeout=5)
    producer.close()
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    assert topic not in admin.list_topics()
    admin.close()
