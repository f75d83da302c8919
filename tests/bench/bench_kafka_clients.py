"""Produce and consume throughput of the raw Kafka clients: the baselines Lianfang is measured against.

For each client (kafka-python, aiokafka, and confluent-kafka when it is installed) the same workload:
a fresh topic of 3 partitions (replication factor 1), 1 KiB values, ``acks=all`` with idempotence,
records spread over the partitions round-robin by the caller so that no client's partitioner changes
the batching. Produce is timed from the first send until flush returns; consume, by a new consumer
group per run from the earliest offset, from the first poll until the N-th record arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import importlib.util
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from tests.bench.harness import BenchContext, BenchError, Result, per_second

RECORDS_FULL = 20_000
RECORDS_QUICK = 2_000
VALUE_BYTES = 1024
PARTITIONS = 3
LINGER_MS = 5
BATCH_BYTES = 256 * 1024
MAX_POLL_RECORDS = 500
POLL_TIMEOUT_S = 0.5
CONSUME_DEADLINE_S = 60.0
FLUSH_TIMEOUT_S = 60.0
MB = 1_000_000
CLIENT_ID = "lianfang-bench"

# Producer settings, spelled as each client spells them; the same intent everywhere: durable writes
# (acks=all, idempotence), a short linger and batches large enough not to be the limit.
KAFKA_PYTHON_PRODUCER: dict[str, object] = {
    "acks": "all",
    "enable_idempotence": True,
    "linger_ms": LINGER_MS,
    "batch_size": BATCH_BYTES,
}
AIOKAFKA_PRODUCER: dict[str, object] = {
    "acks": "all",
    "enable_idempotence": True,
    "linger_ms": LINGER_MS,
    "max_batch_size": BATCH_BYTES,
}
CONFLUENT_PRODUCER: dict[str, object] = {
    "acks": "all",
    "enable.idempotence": True,
    "linger.ms": LINGER_MS,
    "batch.size": BATCH_BYTES,
}
# Consumers: a new group reads from the start; nothing is committed (a benchmark has no use for it).
KAFKA_PYTHON_CONSUMER: dict[str, object] = {
    "auto_offset_reset": "earliest",
    "enable_auto_commit": False,
    "max_poll_records": MAX_POLL_RECORDS,
}
AIOKAFKA_CONSUMER: dict[str, object] = {"auto_offset_reset": "earliest", "enable_auto_commit": False}
CONFLUENT_CONSUMER: dict[str, object] = {"auto.offset.reset": "earliest", "enable.auto.commit": False}


def _settings(settings: dict[str, object]) -> str:
    return " ".join(f"{k}={v}" for k, v in settings.items())


@dataclass(frozen=True, slots=True)
class Workload:
    """What every client sends and reads: ``records`` values of ``value`` on ``topic``."""

    topic: str
    records: int
    value: bytes


@dataclass(frozen=True, slots=True)
class ConsumeTiming:
    first_record_s: float
    total_s: float


ProducerSession = Callable[[str, Workload], contextlib.AbstractContextManager[Callable[[], float]]]
ConsumeOnce = Callable[[str, Workload, str], ConsumeTiming]


@dataclass(frozen=True, slots=True)
class Client:
    """One Kafka client under test: a producer session (one producer, many timed sends) and a consume."""

    name: str
    producer: ProducerSession
    consume: ConsumeOnce
    produce_notes: str = ""
    consume_notes: str = ""


class _Reader:
    """Counts what a consumer has seen and when, against a deadline; shared by every client."""

    def __init__(self, work: Workload) -> None:
        self.work = work
        self.seen = 0
        self.start = time.perf_counter()
        self.first: float | None = None

    def add(self, values: Iterator[bytes | None]) -> None:
        for value in values:
            if value is None or len(value) != VALUE_BYTES:
                raise BenchError(f"{self.work.topic}: a value is not {VALUE_BYTES} bytes")
            self.seen += 1
        if self.seen and self.first is None:
            self.first = time.perf_counter() - self.start

    @property
    def done(self) -> bool:
        if self.seen >= self.work.records:
            return True
        if time.perf_counter() - self.start > CONSUME_DEADLINE_S:
            raise BenchError(
                f"{self.work.topic}: read {self.seen} of {self.work.records} records "
                f"within {CONSUME_DEADLINE_S:.0f} s"
            )
        return False

    def timing(self) -> ConsumeTiming:
        assert self.first is not None
        return ConsumeTiming(self.first, time.perf_counter() - self.start)


# --------------------------------------------------------------------------- kafka-python


@contextlib.contextmanager
def _kafka_python_producer(bootstrap: str, work: Workload) -> Iterator[Callable[[], float]]:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, client_id=CLIENT_ID, **KAFKA_PYTHON_PRODUCER)

    def send_all() -> float:
        start = time.perf_counter()
        for i in range(work.records):
            producer.send(work.topic, value=work.value, partition=i % PARTITIONS)
        producer.flush(timeout=FLUSH_TIMEOUT_S)
        return time.perf_counter() - start

    try:
        yield send_all
    finally:
        producer.close()


def _kafka_python_consume(bootstrap: str, work: Workload, group: str) -> ConsumeTiming:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        work.topic, bootstrap_servers=bootstrap, client_id=CLIENT_ID, group_id=group, **KAFKA_PYTHON_CONSUMER
    )
    try:
        reader = _Reader(work)
        while not reader.done:
            batches = consumer.poll(timeout_ms=int(POLL_TIMEOUT_S * 1000))
            for records in batches.values():
                reader.add(r.value for r in records)
        return reader.timing()
    finally:
        consumer.close()


# --------------------------------------------------------------------------- aiokafka


@contextlib.contextmanager
def _aiokafka_producer(bootstrap: str, work: Workload) -> Iterator[Callable[[], float]]:
    from aiokafka import AIOKafkaProducer

    async def start() -> AIOKafkaProducer:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, client_id=CLIENT_ID, **AIOKAFKA_PRODUCER)
        await producer.start()
        return producer

    async def send_all(producer: AIOKafkaProducer) -> float:
        start = time.perf_counter()
        for i in range(work.records):
            await producer.send(work.topic, value=work.value, partition=i % PARTITIONS)
        await producer.flush()
        return time.perf_counter() - start

    # One event loop for the whole session, so one started producer serves every run and only the
    # send/flush loop is timed (asyncio.run per call would need a new producer each time).
    with asyncio.Runner() as runner:
        producer = runner.run(start())
        try:
            yield lambda: runner.run(send_all(producer))
        finally:
            runner.run(producer.stop())


def _aiokafka_consume(bootstrap: str, work: Workload, group: str) -> ConsumeTiming:
    from aiokafka import AIOKafkaConsumer

    async def consume() -> ConsumeTiming:
        consumer = AIOKafkaConsumer(
            work.topic, bootstrap_servers=bootstrap, client_id=CLIENT_ID, group_id=group, **AIOKAFKA_CONSUMER
        )
        await consumer.start()
        try:
            reader = _Reader(work)
            while not reader.done:
                batches = await consumer.getmany(
                    timeout_ms=int(POLL_TIMEOUT_S * 1000), max_records=MAX_POLL_RECORDS
                )
                for records in batches.values():
                    reader.add(r.value for r in records)
            return reader.timing()
        finally:
            await consumer.stop()

    return asyncio.run(consume())


# --------------------------------------------------------------------------- confluent-kafka


@contextlib.contextmanager
def _confluent_producer(bootstrap: str, work: Workload) -> Iterator[Callable[[], float]]:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "client.id": CLIENT_ID, **CONFLUENT_PRODUCER})

    def send_all() -> float:
        start = time.perf_counter()
        for i in range(work.records):
            while True:
                try:
                    producer.produce(work.topic, value=work.value, partition=i % PARTITIONS)
                    break
                except BufferError:  # local queue full: serve delivery events, then try again
                    producer.poll(0.01)
        left = producer.flush(FLUSH_TIMEOUT_S)
        if left:
            raise BenchError(f"{work.topic}: {left} records undelivered after {FLUSH_TIMEOUT_S:.0f} s")
        return time.perf_counter() - start

    try:
        yield send_all
    finally:
        producer.flush(FLUSH_TIMEOUT_S)


def _confluent_consume(bootstrap: str, work: Workload, group: str) -> ConsumeTiming:
    from confluent_kafka import Consumer

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "client.id": CLIENT_ID, "group.id": group, **CONFLUENT_CONSUMER}
    )
    consumer.subscribe([work.topic])
    try:
        reader = _Reader(work)
        while not reader.done:
            messages = consumer.consume(num_messages=MAX_POLL_RECORDS, timeout=POLL_TIMEOUT_S)
            for m in messages:
                if m.error() is not None:
                    raise BenchError(f"{work.topic}: consumer error {m.error()}")
            reader.add(m.value() for m in messages)
        return reader.timing()
    finally:
        consumer.close()


# --------------------------------------------------------------------------- the benchmark


def _kafka_python_crc(ctx: BenchContext) -> str:
    """Which CRC-32C kafka-python uses: it checksums every batch, in pure Python without ``crc32c``."""
    if importlib.util.find_spec("crc32c") is None:
        ctx.note(
            "kafka-python is checksumming in pure Python (the `crc32c` package is not installed), which "
            "makes it several times slower at both ends; `pip install crc32c` gives the usual figures"
        )
        return "CRC-32C in pure Python (no `crc32c` package)"
    return f"CRC-32C by the `crc32c` package {importlib.metadata.version('crc32c')}"


def _clients(ctx: BenchContext) -> list[Client]:
    crc = _kafka_python_crc(ctx)
    clients = [
        Client(
            "kafka-python",
            _kafka_python_producer,
            _kafka_python_consume,
            produce_notes=_join(_settings(KAFKA_PYTHON_PRODUCER), crc),
            consume_notes=_join(_settings(KAFKA_PYTHON_CONSUMER), crc),
        ),
        Client(
            "aiokafka",
            _aiokafka_producer,
            _aiokafka_consume,
            produce_notes=_join(
                _settings(AIOKAFKA_PRODUCER),
                "one event loop (asyncio.Runner) for every run, only the send/flush loop timed",
            ),
            consume_notes=_join(
                _settings(AIOKAFKA_CONSUMER),
                f"getmany(max_records={MAX_POLL_RECORDS}), asyncio.run per run, start/stop not timed",
            ),
        ),
    ]
    try:
        import confluent_kafka
    except ImportError:
        ctx.note("confluent-kafka not installed: left out")
    else:
        librdkafka = f"librdkafka {confluent_kafka.libversion()[0]}"
        clients.append(
            Client(
                "confluent-kafka",
                _confluent_producer,
                _confluent_consume,
                produce_notes=_join(_settings(CONFLUENT_PRODUCER), librdkafka),
                consume_notes=_join(
                    _settings(CONFLUENT_CONSUMER), f"consume(num_messages={MAX_POLL_RECORDS})", librdkafka
                ),
            )
        )
    return clients


def _records_in(bootstrap: str, topic: str) -> int:
    """How many records the topic holds (end minus beginning offsets over its partitions)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id=CLIENT_ID)
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        begin = consumer.beginning_offsets(partitions)
        end = consumer.end_offsets(partitions)
        return sum(end[tp] - begin[tp] for tp in partitions)
    finally:
        consumer.close()


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def _bench_client(ctx: BenchContext, client: Client, records: int, value: bytes) -> list[Result]:
    work = Workload(ctx.create_topic(client.name, partitions=PARTITIONS), records, value)
    megabytes = records * VALUE_BYTES / MB
    case = f"{client.name} produce"
    with client.producer(ctx.bootstrap, work) as send_all:
        seconds = ctx.measure(case, send_all)
    expected = (ctx.warmup + ctx.runs) * records
    held = _records_in(ctx.bootstrap, work.topic)
    if held != expected:
        raise BenchError(f"{case}: sent {expected} records but {work.topic} holds {held}")
    notes = client.produce_notes
    results = [
        ctx.result(case, "records/s", per_second(seconds, records), baseline=True, notes=notes),
        ctx.result(case, "MB/s", per_second(seconds, megabytes), baseline=True, notes=notes),
    ]

    case = f"{client.name} consume"
    first_record: list[float] = []

    def consume_once() -> float:
        timing = client.consume(ctx.bootstrap, work, ctx.unique(f"{client.name}-group"))
        first_record.append(timing.first_record_s)
        return timing.total_s

    seconds = ctx.measure(case, consume_once)
    first_ms = [s * 1000 for s in first_record[ctx.warmup :]]
    notes = client.consume_notes
    results += [
        ctx.result(case, "records/s", per_second(seconds, records), baseline=True, notes=notes),
        ctx.result(case, "MB/s", per_second(seconds, megabytes), baseline=True, notes=notes),
        ctx.result(case, "ms to 1st record", first_ms, baseline=True, notes=notes),
    ]
    return results


def run(ctx: BenchContext) -> list[Result]:
    records = ctx.scale(RECORDS_FULL, RECORDS_QUICK)
    value = os.urandom(VALUE_BYTES)
    ctx.note(
        f"{records:,} values of {VALUE_BYTES} B per run, {ctx.warmup} warm-up + {ctx.runs} timed runs; "
        f"a new topic per client ({PARTITIONS} partitions, replication 1); null keys, partition i % "
        f"{PARTITIONS} chosen by the caller; no compression; MB = {MB:,} bytes of values"
    )
    ctx.note(
        "produce: one producer per client for the warm-up and every run (it connects in the warm-up); "
        "timed from the first send until flush returns; the topic's offsets are checked afterwards"
    )
    ctx.note(
        "consume: a new consumer group per run, from the earliest offset, auto-commit off, every value's "
        "length checked; timed from the first poll until the N-th record, so group join and offset "
        "lookup are in the figure (their share: 'ms to 1st record')"
    )
    results: list[Result] = []
    for client in _clients(ctx):
        results += _bench_client(ctx, client, records, value)
    return results
