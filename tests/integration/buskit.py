"""Helpers for tests that run Lianfang services on the real broker: topics, publishing sealed events,
reading inboxes back, and router, hub and pseudonymizer processes (their process handling is
:class:`tests.workers.Worker`)."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from schemas.freshness import TIMESTAMP_RECORD_KEY
from schemas.registry import RegistryDocument
from services import trust
from services.bus import cluster
from services.bus.cluster import DURABLE_PRODUCER
from services.bus.eos import TransactionalRunner
from services.bus.security import KafkaSecuritySettings, kafka_python_kwargs
from services.kernel import envelope, freshness, topics
from services.kernel.keystore import Keystore
from services.kernel.registry import Registry, sign_document
from services.trust import admin
from tests.kit import CONTENT, DemoDomain, header, sections_for
from tests.workers import Worker, free_port

TEST_STATEMENT_LIFETIME = timedelta(hours=2)
"""How long the statement a test bus starts with is valid: longer than any test using it."""


def _acknowledged(futures: list[Any]) -> None:
    """Raise unless Kafka acknowledged every send (kafka-python reports failures only on its futures)."""
    failed = [f.exception for f in futures if f.failed()]
    if failed:
        raise AssertionError(f"{len(failed)} of {len(futures)} test records were not produced: {failed[0]!r}")


async def run_worker_until(runner: TransactionalRunner, done: Any, what: str, timeout_s: float = 120) -> None:
    """Run an exactly-once worker until ``done()``, then stop it; fail if the worker ends first or the
    deadline passes."""
    task = asyncio.create_task(runner.run())
    deadline = asyncio.get_running_loop().time() + timeout_s
    try:
        while not done():
            if task.done():
                task.result()  # raises what ended the worker
                raise AssertionError(f"the worker ended before {what}")
            assert asyncio.get_running_loop().time() < deadline, f"no {what} within {timeout_s} s"
            await asyncio.sleep(0.1)  # poll interval inside a deadline loop
    finally:
        runner.stop()
        await asyncio.wait_for(task, timeout=60)


def eos_topics(bootstrap: str, kind: str) -> tuple[str, str, str]:
    """A new source, state and output topic of one partition each for an exactly-once worker, named
    after ``kind``."""
    name = f"t-{kind}-{uuid.uuid4().hex[:8]}"
    names = (f"{name}.in", f"{name}.state", f"{name}.out")
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, 1, 1) for topic in names])
    finally:
        admin.close()
    return names


def produce(bootstrap: str, topic: str, values: Iterable[bytes], key: bytes = b"k") -> None:
    """Each of ``values`` under ``key``, acknowledged by every replica."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for value in values:
            producer.send(topic, key=key, value=value).get(30)
    finally:
        producer.close()


class WorkerThread:
    """An exactly-once worker in a thread of its own (its own event loop), as if in a process of its
    own, until :meth:`stop`; what ended it early is in ``failures``."""

    def __init__(self, runner: TransactionalRunner, timeout_s: float = 180) -> None:
        self.runner = runner
        self.finished = threading.Event()
        self.failures: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, args=(timeout_s,), daemon=True)

    def start(self) -> WorkerThread:
        self._thread.start()
        return self

    def _run(self, timeout_s: float) -> None:
        try:
            asyncio.run(run_worker_until(self.runner, self.finished.is_set, "the test's end", timeout_s))
        except BaseException as e:  # reported by the test's thread
            self.failures.append(e)

    def stop(self) -> None:
        self.finished.set()
        self._thread.join(90)


def wait_for(condition: Any, what: str, timeout_s: float = 90, workers: Iterable[WorkerThread] = ()) -> None:
    """Poll ``condition()`` until it holds; fail after ``timeout_s`` or once a worker failed."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        for worker in workers:
            assert not worker.failures, worker.failures
        assert time.monotonic() < deadline, f"no {what} within {timeout_s} s"
        time.sleep(0.1)  # poll interval inside a deadline loop


def committed_offset(bootstrap: str, group: str, topic: str) -> int | None:
    """The offset ``group`` committed on partition 0 of ``topic``."""
    reader = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        offset: int | None = reader.committed(TopicPartition(topic, 0))
        return offset
    finally:
        reader.close()


def read_committed(
    bootstrap: str, topic: str, until: list[bytes] | None = None, timeout_s: float = 30
) -> list[bytes]:
    """The values a ``read_committed`` reader reads of partition 0 of ``topic``: to its end, or (with
    ``until``) until it has read those values; fails after ``timeout_s`` (a reader held back by an open
    transaction reads nothing past it)."""
    reader = KafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", auto_offset_reset="earliest"
    )
    try:
        tp = TopicPartition(topic, 0)
        reader.assign([tp])
        end = reader.end_offsets([tp])[tp]
        read: list[bytes] = []

        def more() -> bool:
            return read != until if until is not None else reader.position(tp) < end

        deadline = time.monotonic() + timeout_s
        while more():
            assert time.monotonic() < deadline, (
                f"a read_committed reader of {topic} read {read} within {timeout_s} s"
            )
            for records in reader.poll(timeout_ms=200).values():
                read.extend(r.value for r in records)
        return read
    finally:
        reader.close()


@dataclass
class Bus:
    """One namespace of topics on the test broker (every topic of deploy/topics.toml, prefixed)."""

    bootstrap: str
    prefix: str
    domain: DemoDomain

    @classmethod
    def create(cls, bootstrap: str, prefix: str, domain: DemoDomain, *, stamp: bool = True) -> Bus:
        """The topics, and (unless ``stamp`` is False) a timestamp statement valid for the whole test,
        so services that require freshness run as they would beside a timestamp service."""
        cluster.apply_topics(bootstrap, domain.registry.participant_ids(), prefix=prefix)
        bus = cls(bootstrap, prefix, domain)
        if stamp:
            bus.stamp()
        return bus

    @property
    def names(self) -> topics.TopicNames:
        return topics.TopicNames(self.prefix)

    def stamp(
        self,
        *,
        registry: Registry | None = None,
        valid_for: timedelta = TEST_STATEMENT_LIFETIME,
        issued: datetime | None = None,
        keys: dict[str, Any] | None = None,
        security: KafkaSecuritySettings | None = None,
    ) -> bytes:
        """Publish a timestamp statement naming ``registry`` (default: the domain's), as the timestamp
        service does, signed with the domain's timestamp key (or ``keys``); returns its bytes."""
        data = freshness.sign_statement(
            registry or self.domain.registry,
            keys if keys is not None else dict(self.domain.trust.timestamp_keystore().signing),
            now=issued or datetime.now(UTC),
            valid_for=valid_for,
        )
        producer = KafkaProducer(
            bootstrap_servers=self.bootstrap,
            **DURABLE_PRODUCER,
            **kafka_python_kwargs(security or KafkaSecuritySettings()),
        )
        future = producer.send(self.names.registry, key=TIMESTAMP_RECORD_KEY, value=data)
        producer.flush()
        producer.close()
        _acknowledged([future])
        return data

    def seal(
        self,
        sender: str = "police",
        *,
        phone: str = "13800000000",
        content: dict[str, dict[str, Any]] | None = None,
        **fields: Any,
    ) -> envelope.SealedRecord:
        """A sealed event at the current time about the subject with ``phone`` (``content``: its
        sections, :data:`tests.kit.CONTENT` unless given)."""
        fields.setdefault("source", f"urn:lianfang:{sender}")
        fields.setdefault("time", datetime.now(UTC))
        fields.setdefault("id", envelope.new_event_id())
        fields.setdefault("subject", self.domain.subject(phone))
        h = header(**fields)
        sections = sections_for(h, CONTENT if content is None else content)
        return envelope.seal(h, sections, registry=self.domain.registry, signer=self.domain.keys(sender))

    def produce(
        self,
        records: Iterable[tuple[bytes | None, bytes]],
        topic: str | None = None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Produce raw records; ``partition`` overrides the default partitioner, as a hostile producer may,
        and ``headers`` are Kafka headers it plants on each."""
        producer = KafkaProducer(
            bootstrap_servers=self.bootstrap, max_request_size=2_000_000, **DURABLE_PRODUCER
        )
        futures = [
            producer.send(
                topic or self.names.events, key=key, value=value, partition=partition, headers=headers
            )
            for key, value in records
        ]
        producer.flush()
        producer.close()
        _acknowledged(futures)

    def publish(self, sealed: Iterable[envelope.SealedRecord], topic: str | None = None) -> list[str]:
        """Produce sealed events (with their CloudEvents headers) to the events topic, or to ``topic``
        (an inbox, as if routed); returns their ids once Kafka has acknowledged every one (a send that
        failed raises: a lost test input is not a lost event)."""
        producer = KafkaProducer(bootstrap_servers=self.bootstrap, **DURABLE_PRODUCER)
        ids = []
        futures = []
        for record in sealed:
            futures.append(
                producer.send(
                    topic or self.names.events, key=record.key, value=record.value, headers=record.headers
                )
            )
            ids.append(record.header.id)
        producer.flush()
        producer.close()
        _acknowledged(futures)
        return ids

    def partitions(self, topic: str) -> int:
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap)
        try:
            return len(consumer.partitions_for_topic(topic) or ())
        finally:
            consumer.close()

    def group_members(self, group: str) -> int:
        """How many members consumer group ``group`` has once it is stable (0 while it rebalances, or
        before anyone joined)."""
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        try:
            info = admin.describe_groups([group]).get(group) or {}
        except KafkaError:  # no coordinator for the group yet: nobody has joined
            return 0
        finally:
            admin.close()
        if info.get("group_state", info.get("state")) != "Stable":
            return 0
        return len(info.get("members") or [])

    def read_all(self, topic_names: Iterable[str]) -> dict[str, list[Any]]:
        """Every committed record of these topics, up to their current end (read_committed)."""
        names = list(topic_names)
        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            isolation_level="read_committed",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        tps = [TopicPartition(t, p) for t in names for p in sorted(consumer.partitions_for_topic(t) or [])]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        out: dict[str, list[Any]] = {t: [] for t in names}
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {names} to their end")
            for tp, records in consumer.poll(timeout_ms=200).items():
                out[tp.topic].extend(records)
        consumer.close()
        return out

    def inbox_commits(self, group: str, participant: str) -> dict[int, int]:
        """The offsets ``group`` has committed on the inbox of ``participant``, per partition (read
        without joining the group)."""
        topic = self.names.inbox(participant)
        reader = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=group, enable_auto_commit=False)
        try:
            partitions = sorted(reader.partitions_for_topic(topic) or ())
            committed = {p: reader.committed(TopicPartition(topic, p)) for p in partitions}
            return {p: offset for p, offset in committed.items() if offset is not None}
        finally:
            reader.close()

    def inbox_ids(self) -> dict[str, Counter[str]]:
        """For every participant, how many times each event id reached its inbox."""
        inboxes = {self.names.inbox(p): p for p in self.domain.registry.participant_ids()}
        result: dict[str, Counter[str]] = {}
        for topic, records in self.read_all(inboxes).items():
            result[inboxes[topic]] = Counter(dict(r.headers).get("ce_id", b"?").decode() for r in records)
        return result

    def deadletters(self) -> list[Any]:
        return self.read_all([self.names.deadletter])[self.names.deadletter]

    def letters_of(self, values: Iterable[bytes]) -> list[Any]:
        """The dead letters of these refused records: by their bytes, or by the SHA-256 a letter gives
        of bytes it leaves out (``too_large``, ``malformed``)."""
        wanted = set(values)
        digests = {hashlib.sha256(v).hexdigest().encode() for v in wanted}
        return [
            r
            for r in self.deadletters()
            if r.value in wanted or dict(r.headers).get("lianfang_value_sha256") in digests
        ]

    def wait_for(self, condition: Any, timeout: float = 90, what: str = "condition") -> Any:
        """Poll ``condition()`` until it returns something truthy, or fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            time.sleep(0.3)  # poll interval inside a deadline loop
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass(frozen=True)
class RegistryChange:
    """A newer registry as the root holders publish it: its file's bytes, and verified."""

    data: bytes
    registry: Registry

    @classmethod
    def sign(cls, domain: DemoDomain, document: RegistryDocument) -> RegistryChange:
        keys: dict[str, Any] = {}
        for store in domain.trust.root_keystores()[:2]:  # the demo domain's threshold
            keys.update(store.signing)
        data = sign_document(document, keys)
        registry = Registry.from_bytes(data, trusted_roots=domain.trust.trusted_roots(), now=document.issued)
        return cls(data, registry)

    @classmethod
    def rotation(cls, domain: DemoDomain, participant: str) -> tuple[RegistryChange, Keystore]:
        """As `lianfang keys rotate`: new keys for ``participant`` (its old ones retired now), in a
        copy of its keystore; the domain's files stay as they are."""
        now = datetime.now(UTC)
        document = domain.registry.document
        store = domain.trust.keystore(participant)  # a copy, not the domain's cached keystore
        kids = {store.add_signing_key(), store.add_encryption_key()}
        keys = [k for k in trust.public_keys(store, valid_from=now) if k.kid in kids]
        change = admin.rotate(document, participant, keys, now=now, lifetime=admin.lifetime_of(document))
        return cls.sign(domain, change.document), store

    @classmethod
    def revocation(cls, domain: DemoDomain, participant: str, kid: str) -> RegistryChange:
        """As `lianfang keys revoke`: key ``kid`` of ``participant`` revoked from now on."""
        now = datetime.now(UTC)
        document = domain.registry.document
        change = admin.revoke(
            document, participant, kid, at=now, now=now, lifetime=admin.lifetime_of(document)
        )
        return cls.sign(domain, change.document)


class RouterProcess(Worker):
    """A router worker process on a bus, with its /metrics on a free port."""

    def __init__(self, bus: Bus, home: Path, log: Path, group: str, **env: str) -> None:
        port = free_port()
        super().__init__(
            "services.router",
            {
                "LIANFANG_BOOTSTRAP": bus.bootstrap,
                "LIANFANG_HOME": str(home),
                "LIANFANG_ROUTER_TOPIC_PREFIX": bus.prefix,
                "LIANFANG_ROUTER_GROUP_ID": group,
                "LIANFANG_ROUTER_METRICS_PORT": str(port),
                **env,
            },
            log,
            port=port,
            what="the router",
        )

    @classmethod
    def started(cls, bus: Bus, log: Path, **env: str) -> RouterProcess:
        """A router on ``bus`` (HOME: the bus's domain, group ``<prefix>router``), returned once its
        /metrics reports the version of the registry it read at start."""
        worker = cls(bus, bus.domain.home, log, group=f"{bus.prefix}router", **env)
        bus.wait_for(lambda: worker.metric("lianfang_registry_version", service="router"), 60, "router start")
        return worker


class HubProcess(Worker):
    """A hub worker process on a bus (HOME: the bus's domain): app id ``<prefix>hub``, its tables in
    ``data``, /metrics on a free port, consumer lag sampled every second and no wall-clock ticks (a test
    sends the ticks it needs); ``env`` adds or overrides its settings."""

    def __init__(self, bus: Bus, log: Path, data: Path, **env: str) -> None:
        port = free_port()
        self.data_dir = data
        super().__init__(
            "services.hub",
            {
                "LIANFANG_BOOTSTRAP": bus.bootstrap,
                "LIANFANG_HOME": str(bus.domain.home),
                "LIANFANG_HUB_TOPIC_PREFIX": bus.prefix,
                "LIANFANG_HUB_APP_ID": f"{bus.prefix}hub",
                "LIANFANG_HUB_DATA_DIR": str(data),
                "LIANFANG_HUB_TICK_INTERVAL_S": "0",
                "LIANFANG_HUB_METRICS_PORT": str(port),
                "LIANFANG_HUB_LAG_INTERVAL_S": "1",
                **env,
            },
            log,
            port=port,
            what="the hub",
        )


class PseudonymizerProcess(Worker):
    """The pseudonymizer service on a bus (HOME: the bus's domain), serving on ``port`` (the one the
    domain's registry names), its audit spool in ``folder``."""

    @classmethod
    def started(cls, bus: Bus, folder: Path, port: int, **env: str) -> PseudonymizerProcess:
        """The service, returned once it serves /metrics."""
        worker = cls.spawned(bus, folder, port, **env)
        bus.wait_for(lambda: worker.metrics() is not None, 60, "the pseudonymizer to serve")
        return worker

    @classmethod
    def spawned(cls, bus: Bus, folder: Path, port: int, **env: str) -> PseudonymizerProcess:
        """The service, just started."""
        return cls(
            "services.pseudonymizer",
            {
                "LIANFANG_BOOTSTRAP": bus.bootstrap,
                "LIANFANG_HOME": str(bus.domain.home),
                "LIANFANG_PSEUDONYMIZER_PORT": str(port),
                "LIANFANG_PSEUDONYMIZER_TOPIC_PREFIX": bus.prefix,
                "LIANFANG_PSEUDONYMIZER_SPOOL_DIR": str(folder / "spool"),
                **env,
            },
            folder / "pseudonymizer.log",
            port=port,
            what="the pseudonymizer",
        )
