"""The hub (``lianfang serve hub``): a faust-streaming app for joint-meeting alerts and supervision.

It reads ``lianfang.inbox.hub.v1`` (the router delivers it everything the policy shares with the hub:
the ``triage`` section only), keeps per-victim state in a RocksDB table (with a changelog) keyed by
the subject pseudonym, and hands each record to a :class:`~services.hub.worker.RecordWorker`, which
applies the pure rules of :mod:`services.hub.rules`: this module only wires faust's topics, tables and
agents to it. Alerts and breaches are ordinary signed events by ``hub``, sealed per the policy and
published on ``lianfang.events.v1`` for the router to deliver.

- Serial suspects: leads are repartitioned by suspect pseudonym (``lianfang.hub.suspects.v1``); a
  suspect seen against two or more victims sends a trigger back to each victim's partition
  (``lianfang.hub.serial.v1``).
- Linked subjects: a lead's ``links`` (the victim's other identifiers) go to the linked pseudonym's
  partition, which forwards its leads to the canonical subject's state (``lianfang.hub.links.v1``,
  :mod:`services.hub.links`).
- Supervision: a tick (a time) on ``lianfang.hub.clock.v1`` makes each partition check its deadlines.
  The hub's own timer sends wall-clock ticks; tests send ticks with the time they need.
- The registry in force follows ``lianfang.registry.v1`` (:mod:`services.bus.registry_follower`): a
  rotated key or a new member is known within seconds, without a restart.
- Freshness: every agent waits before its next record while the worker holds no fresh timestamp
  statement (:mod:`services.bus.freshness`); nothing is acknowledged meanwhile, so nothing is
  committed past it, and work resumes when a fresh statement arrives.
- No loss, no duplicate: an alert or breach is sent and acknowledged before the state that records it
  is written (:mod:`services.hub.worker` says how).
- A failed batch: an agent whose batch (or record) fails (only Kafka's failures propagate from the
  worker) handles the same one again in place, after a pause that doubles from 1 s to 30 s, until
  Kafka takes it (:func:`until_handled`); never faust's restart of the agent, which would leave it
  unapplied.
- Health: each such failure is counted in ``lianfang_hub_agent_restarts_total``; an agent stuck on a
  record stops ``lianfang_hub_worker_progress_timestamp_seconds`` (:mod:`services.hub.progress`).
- Memory: every ``rocksdb_memory_interval_s`` the worker reads what its RocksDB stores hold
  (:mod:`services.hub.rocksdb_memory`) into ``lianfang_hub_rocksdb_memory_bytes``, beside their bound.
- Topics: before faust starts, the worker creates its tables' changelog topics and waits until every
  broker lists them and the topics it reads, all with its partitions (:mod:`services.hub.prepare`
  says why).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import shutil
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any, cast

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from faust.streams import _current_event
from prometheus_client import Gauge
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services import trust
from services.audit.kafka import KafkaSink
from services.audit.trail import LocalTrail, participant_trail
from services.bus import metrics_endpoint, offsetfetch
from services.bus.cluster import cluster_id
from services.bus.freshness import FreshnessInForce
from services.bus.registry_follower import NewerRegistry, RegistryFollower, RegistryInForce
from services.bus.security import (
    KafkaSecuritySettings,
    aiokafka_kwargs,
    faust_credentials,
    load_security,
)
from services.bus.settings import ServiceSettings
from services.hub import store as hub_store
from services.hub import take
from services.hub.commitwatch import CommitWatch
from services.hub.config import HubConfig
from services.hub.consumer import GapSafeConsumer, HubApp
from services.hub.metrics import HubMetrics
from services.hub.prepare import prepare_topics
from services.hub.progress import AgentProgress
from services.hub.rocksdb_memory import memory_of
from services.hub.worker import InboxRecord, RecordWorker
from services.kernel import ids, topics
from services.kernel.allocator import Allocator
from services.kernel.clock import utcnow
from services.kernel.errors import TransportError, UsageError
from services.kernel.keystore import Keystore
from services.kernel.registry import Registry

log = logging.getLogger("lianfang.hub")


class HubSettings(ServiceSettings):
    """Settings of one hub worker. Environment: ``LIANFANG_HUB_<NAME>``, plus ``LIANFANG_BOOTSTRAP``,
    ``LIANFANG_HOME`` (the hub's keystore and the registry; passphrase as for every keystore) and the
    Kafka login ``LIANFANG_KAFKA_*`` (:mod:`services.bus.security`)."""

    model_config = SettingsConfigDict(env_prefix="LIANFANG_HUB_")

    app_id: str = Field(default="lianfang-hub", description="faust app id: consumer group and table names")
    topic_prefix: str = Field(default="", description="prefix of every bus topic (tests use one per run)")
    data_dir: Path = Field(default=Path(".run/hub"), description="RocksDB tables of this worker")
    worker_name: str = Field(
        default="hub-1", description="this worker's folder under the data dir: one name a worker of the group"
    )
    partitions: int = Field(default=3, ge=1, description="partitions of the hub's inbox (and its tables)")
    replication: int = Field(default=1, ge=1, description="replication of the hub's changelog topics")
    topics_timeout_s: float = Field(
        default=60.0, gt=0, description="how long to wait at start for the hub's topics to be listed"
    )
    tick_interval_s: float = Field(default=60.0, ge=0, description="wall-clock ticks; 0: only external ticks")
    report_every_s: float = Field(default=24 * 3600.0, gt=0, description="supervision.report period")
    time_scale: float = Field(
        default=1.0,
        gt=0,
        description="the district's clock runs this many times faster (the demo): supervision deadlines "
        "are divided by it (HubConfig.at_time_scale); 1 in production",
    )
    metrics_port: int = Field(default=9103, ge=0, description="port of /metrics; 0 turns it off")
    metrics_address: str = Field(default=metrics_endpoint.LOOPBACK, description=metrics_endpoint.ADDRESS_HELP)
    lag_interval_s: float = Field(default=15.0, ge=0, description="consumer-lag sampling period; 0: off")
    batch_max: int = Field(
        default=200, ge=1, description="most inbox records handled together: one audit fsync a batch"
    )
    batch_within_s: float = Field(
        default=0.005,
        gt=0,
        description="how long a batch waits for more records after its first before it is handled "
        "(added latency)",
    )
    rocksdb_write_buffer_mb: int = Field(
        default=1,
        ge=1,
        description="RocksDB memtable size of each table partition (two are kept; faust's default is 64 MiB, "
        "three kept); rocksdb_memory_bound says what the stores take together",
    )
    rocksdb_block_cache_mb: float = Field(
        default=0.25,
        gt=0,
        description="RocksDB block cache of each table partition, in MiB (faust's default is 2 GiB each)",
    )
    table_key_index: int = Field(
        default=1_000,
        ge=1,
        description="keys each table remembers the partition of (faust's table_key_index_size, 10,000 by "
        "default: some 150 B a key, up to 4.5 MB for the three tables, filled over a worker's first hours); "
        "a key not remembered is looked up in each partition's store through its bloom filter",
    )
    rocksdb_memory_interval_s: float = Field(
        default=5.0,
        ge=0,
        description="how often the memory of the worker's RocksDB stores is read for /metrics "
        "(lianfang_hub_rocksdb_memory_bytes); 0: never",
    )
    log_level: str = Field(default="warning", description="faust worker log level")
    require_freshness: bool = Field(
        default=True,
        description="wait without a fresh timestamp statement; false (logged as a warning) only where "
        "no timestamp service runs",
    )
    kafka_security: KafkaSecuritySettings = Field(
        default_factory=load_security, description="TLS and SASL login, from LIANFANG_KAFKA_*"
    )


TABLES = ("victims", "suspects", "links")
"""The hub's tables (each a RocksDB store per partition): victims' and suspects' states, and links."""


def rocksdb_options(settings: HubSettings) -> dict[str, int]:
    """The RocksDB options of each hub table: bounded memory per table partition (two memtables and a
    block cache), so a worker's RSS stays flat as its tables grow. faust's defaults (three 64 MiB
    memtables and a 2 GiB block cache per partition of every table) would let nine such stores take
    gigabytes. A new dict each time: faust's store pops keys from the one it is given."""
    mib = 1024 * 1024
    return {
        "write_buffer_size": settings.rocksdb_write_buffer_mb * mib,
        "max_write_buffer_number": 2,
        "block_cache_size": int(settings.rocksdb_block_cache_mb * mib),
        "block_cache_compressed_size": int(settings.rocksdb_block_cache_mb * mib),
    }


def rocksdb_memory_bound(settings: HubSettings) -> int:
    """The most memory a worker's RocksDB stores hold in their memtables and block caches, in bytes: a
    store per partition of each of :data:`TABLES`, each with the memtables and caches of
    :func:`rocksdb_options` (the compressed block cache counted, though rocksdict, the driver faust uses
    here, keeps none). What grows with the state beyond it is RocksDB's index and filter blocks, a few
    bytes a key."""
    options = rocksdb_options(settings)
    memtables = options["write_buffer_size"] * options["max_write_buffer_number"]
    per_store = memtables + options["block_cache_size"] + options["block_cache_compressed_size"]
    return len(TABLES) * settings.partitions * per_store


class TableReads(MutableMapping[bytes, bytes]):
    """A faust table whose reads ask its store once. faust's own ``table[key]`` (and so
    ``table.get(key)``) asks the store whether the key is there, then for its value: two RocksDB reads
    a lookup, and with the victims' partitioner a bloom-filter probe of every partition's database for
    each. Writes, deletes and iteration are the table's (its changelog)."""

    def __init__(self, table: Any) -> None:
        self.table = table

    def __getitem__(self, key: bytes) -> bytes:
        value: bytes = self.table.data[key]  # the store: KeyError when absent
        return value

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.table[key] = value

    def __delitem__(self, key: bytes) -> None:
        del self.table[key]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.table)

    def __len__(self) -> int:
        return len(self.table)


class BatchWrites(TableReads):
    """The victims table as the worker writes it at the end of an inbox batch, after the records'
    stream iteration: faust files a write under the partition of the event being handled, so each
    write runs as the batch's event of the key's partition (the victim's inbox partition). Outside a
    batch (the other agents, in their event's iteration) writes go straight to the table."""

    def __init__(self, table: Any, partitions: int) -> None:
        super().__init__(table)
        self.partitions = partitions
        self.events: dict[int, Any] = {}  # the batch in hand's last event of each partition

    def __setitem__(self, key: bytes, value: bytes) -> None:
        event = self.events.get(topics.partition_for(key, self.partitions))
        if event is None:
            self.table[key] = value
            return
        token = _current_event.set(weakref.ref(event))
        try:
            self.table[key] = value
        finally:
            _current_event.reset(token)


class HubWorker:
    """The hub's faust topics and tables, wired to a :class:`~services.hub.worker.RecordWorker` that does
    all the per-record work; the agents only loop and call it."""

    def __init__(
        self,
        app: faust.App,
        settings: HubSettings,
        *,
        config: HubConfig,
        metrics: HubMetrics,
        registry: Registry | RegistryInForce,
        keys: Keystore,
        trail: LocalTrail,
        newer_registry: NewerRegistry,
    ) -> None:
        self.app = app
        n = settings.partitions
        names = topics.TopicNames(settings.topic_prefix)
        self.inbox = self._topic(names.inbox(ids.HUB), n)
        self.clock = self._topic(names.hub_clock, n)
        self.suspects = self._topic(names.hub_suspects, n)
        self.serial = self._topic(names.hub_serial, n)
        self.links = self._topic(names.hub_links, n)
        self.events = self._topic(names.events)
        self._sends_to = {
            names.events: self.events,
            names.hub_suspects: self.suspects,
            names.hub_serial: self.serial,
            names.hub_links: self.links,
            names.deadletter: self._topic(names.deadletter),
        }
        # Keys and values are bytes (the app's serializers are "raw"): VictimState / SuspectState JSON.
        app_id = settings.app_id
        # A batch writes its states after its records' stream iteration: the changelog partition is
        # the producer's partitioner's for the key, which is the partition of the victim's inbox records.
        options = rocksdb_options(settings)

        def table(name: str, *, use_partitioner: bool = False) -> Any:
            return app.Table(
                f"{app_id}-{name}",
                default=None,
                partitions=n,
                key_type=bytes,
                value_type=bytes,
                options=dict(options),  # faust's store pops keys from the dict it is given
                use_partitioner=use_partitioner,
            )

        victims, suspects, links = TABLES
        self.victims = table(victims, use_partitioner=True)
        self.suspect_table = table(suspects)
        self.link_table = table(links)
        self.victim_writes = BatchWrites(self.victims, n)
        self.work = RecordWorker(
            config=config,
            names=names,
            partitions=n,
            report_every_s=settings.report_every_s,
            registry=registry,
            keys=keys,
            trail=trail,
            metrics=metrics,
            victims=self.victim_writes,
            suspects=TableReads(self.suspect_table),
            links=TableReads(self.link_table),
            send=self.send,
            clock=utcnow,
            newer_registry=newer_registry,
        )

    async def on_inbox_batch(self, stream: faust.StreamT[Any], events: list[Any]) -> None:
        """A batch of inbox events to the worker, then acknowledged by hand (their audit entries on
        disk, their states written); a batch that fails is not acknowledged, and is handled again
        (:func:`until_handled`)."""
        self.victim_writes.events = {event.message.partition: event for event in events}
        try:
            await self.work.on_inbox_batch([_inbox_record(event.message) for event in events])
        finally:
            self.victim_writes.events = {}
        for event in events:
            await stream.ack(event)

    def open_stores(self) -> list[Any]:
        """The RocksDB databases (rocksdict ``Rdict``) the worker holds open, of every table. faust's
        store keeps one a partition, active or standby, in ``_dbs``, its only record of them: opened
        when assigned, popped (and let go, not closed) when revoked, cleared when the worker stops.
        Listed on the event loop, between two of faust's steps, so none is a store a rebalance has
        revoked; one closed some other way raises when read, and counts nothing
        (:func:`services.hub.rocksdb_memory.memory_of`)."""
        tables = (self.victims, self.suspect_table, self.link_table)
        return [db for table in tables for db in list(getattr(table.data, "_dbs", {}).values())]

    def _topic(self, name: str, partitions: int | None = None) -> faust.TopicT:
        return self.app.topic(name, partitions=partitions, key_serializer="raw", value_serializer="raw")

    async def send(
        self, topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]] | None
    ) -> Awaitable[object]:
        """Hand a record to the producer; returns Kafka's acknowledgement, which the worker awaits before
        it writes the state that records the record."""
        pending: Awaitable[object] = await self._sends_to[topic].send(key=key, value=value, headers=headers)
        return pending


async def sample_group_lag(
    settings: HubSettings,
    topic: str,
    metrics: HubMetrics,
    describe: Callable[[int], str] | None = None,
    read_again: Callable[[int], Awaitable[bool]] | None = None,
) -> None:
    """Every ``lag_interval_s``: end offset minus the hub group's committed offset, per inbox partition.

    It reads the group's commits without joining the group, so every worker reports the whole topic.
    A partition whose committed offset stops moving while records arrive after it
    (:class:`~services.hub.commitwatch.CommitWatch`) is logged once, with ``describe(partition)``: what
    this worker's faust holds for it, where it holds the partition. Then ``read_again(partition)``:
    where this worker holds it with records at its head never acknowledged, the worker reads its inbox
    again from the committed offsets (counted), and the partition is watched afresh.
    """
    watch = CommitWatch()
    reader = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap,
        group_id=settings.app_id,
        enable_auto_commit=False,
        **aiokafka_kwargs(settings.kafka_security),
    )
    await reader.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(settings.partitions)]
        while True:
            await asyncio.sleep(settings.lag_interval_s)  # a sampling period, not a wait for a condition
            try:
                ends = await reader.end_offsets(partitions)
                for tp in partitions:
                    committed = await reader.committed(tp) or 0
                    end = int(ends.get(tp, 0))
                    lag = max(0, end - int(committed))
                    metrics.lag.labels(settings.app_id, topic, str(tp.partition)).set(lag)
                    now = time.monotonic()
                    if watch.observe(tp.partition, int(committed), end, now):
                        log.warning(
                            "hub: inbox partition %d not committed past offset %d for %.0f s while records "
                            "arrived after it (end %d); faust here: %s",
                            tp.partition,
                            committed,
                            watch.stalled_for(tp.partition, now),
                            end,
                            _described(describe, tp.partition),
                        )
                        if await _read_again(read_again, tp.partition):
                            metrics.inbox_read_again.inc()
                            watch.again(tp.partition, end, now)
                            log.warning(
                                "hub: inbox read again from the committed offsets: partition %d's records "
                                "at its head had been handed on and never acknowledged",
                                tp.partition,
                            )
            except KafkaError as e:  # a slow or restarting broker: the next period tries again
                log.debug("hub consumer lag not sampled: %r", e)
    finally:
        await reader.stop()


def _described(describe: Callable[[int], str] | None, partition: int) -> str:
    """``describe(partition)``, or why not: a diagnostic never stops the lag sampler."""
    if describe is None:
        return "not asked"
    try:
        return describe(partition)
    except Exception as e:  # faust's private bookkeeping changed shape: say so, go on
        return f"unreadable ({type(e).__name__})"


async def _read_again(read_again: Callable[[int], Awaitable[bool]] | None, partition: int) -> bool:
    """``read_again(partition)``; False where there is none or it failed (logged): the lag sampler goes on."""
    if read_again is None:
        return False
    try:
        return await read_again(partition)
    except Exception:  # faust's private bookkeeping changed shape, or a seek failed: say so, go on
        log.exception("hub: inbox partition %d not read again", partition)
        return False


async def read_again_if_unacknowledged(app: faust.App, topic: str, partition: int) -> bool:
    """Read the inbox again from the committed offsets if this worker holds ``partition`` with records
    at its head handed on and never acknowledged (:meth:`GapSafeConsumer.unacknowledged_head`); whether
    it did."""
    consumer = app.consumer
    if not isinstance(consumer, GapSafeConsumer):
        return False
    if not consumer.unacknowledged_head(faust.types.TP(topic, partition)):
        return False
    return await consumer.read_again_from_committed()


def faust_commit_view(app: faust.App, topic: str, partition: int) -> str:
    """What this worker's faust consumer holds for one partition's commits: the offset it last
    committed, the offset it last read, how many acknowledged offsets wait and the first of them, and
    the first gaps it recorded (offsets it will count as done). Offsets only. Reads faust's private
    bookkeeping (``_committed_offset``, ``_read_offset``, ``_acked``, ``_gap``; faust-streaming 0.15),
    so a name it no longer has reads as missing."""
    consumer = app.consumer
    tp = faust.types.TP(topic, partition)

    def held(name: str) -> Any:
        table = getattr(consumer, name, None)
        return table.get(tp) if isinstance(table, Mapping) else "missing"

    acked = held("_acked")
    gaps = held("_gap")
    first_acked = sorted(acked)[:5] if isinstance(acked, list) else acked
    first_gaps = (
        gaps if gaps is None or isinstance(gaps, str) else sorted((iv.begin, iv.end) for iv in gaps)[:3]
    )
    return (
        f"committed {held('_committed_offset')}, read {held('_read_offset')}, "
        f"{len(acked) if isinstance(acked, list) else 0} acknowledged from {first_acked}, gaps {first_gaps}"
    )


RETRY_FIRST_S = 1.0
"""The pause before an agent handles again the batch (or record) it failed on; it doubles each time,
as the router's runner's back-off does (:class:`services.bus.eos.TransactionalRunner`), so that their restart
counters and alerts read alike."""
RETRY_MAX_S = 30.0
"""The longest pause between two attempts at the same batch, however long Kafka stays away."""


def retry_pauses(first: float = RETRY_FIRST_S, most: float = RETRY_MAX_S) -> Iterator[float]:
    """The pauses before each new attempt at one batch: ``first``, doubling, at most ``most``."""
    pause = first
    while True:
        yield pause
        pause = min(pause * 2, most)


async def agent_loop(
    agent: str,
    events: AsyncIterator[Any],
    handle: Callable[[Any], Awaitable[None]],
    *,
    freshness: FreshnessInForce,
    metrics: HubMetrics,
    progress: AgentProgress,
    size: Callable[[Any], int] = lambda _: 1,
    unwrap: Callable[[Any], Any] = lambda event: event.message,
    pause: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> AsyncIterator[None]:
    """The body of each agent: every event (or batch), once fresh (:func:`when_fresh`), to ``handle``,
    with its health on /metrics. One that fails is handled again in place (:func:`until_handled`)
    until it succeeds; the agent takes nothing else meanwhile and stays stuck in
    :class:`~services.hub.progress.AgentProgress`."""
    async for event in when_fresh(events, freshness, metrics.waiting.labels(agent), size=size):
        progress.taken(agent)
        item = unwrap(event)
        await until_handled(
            agent, functools.partial(handle, item), freshness=freshness, metrics=metrics, pause=pause
        )
        progress.done(agent)
        yield None


async def until_handled(
    agent: str,
    attempt: Callable[[], Awaitable[None]],
    *,
    freshness: FreshnessInForce,
    metrics: HubMetrics,
    pause: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Run ``attempt`` (one batch, or one record, to the worker) until it succeeds: each failure (only
    Kafka's, or the disk's, propagate from the worker) is counted in
    ``lianfang_hub_agent_restarts_total`` and logged, and the same batch is handled again after a pause
    (:func:`retry_pauses`), once the worker is fresh.

    Why in place, not by letting faust restart the agent: faust starts a new agent on the same stream,
    after the events the failed one took, and nobody handles or acknowledges those again. Their
    records stay unapplied until the process restarts; faust's commits stop before them, or pass over
    them for good when they are one record of a partition or the partition had no commit yet (its
    ``Consumer._new_offset``); a rebalance or a stop waits for their acknowledgement for ever. (A
    record agent's event may even be acknowledged unapplied, when the failed iterator is closed.)
    Handling the batch again is safe: a failed attempt wrote no state
    (:class:`~services.hub.worker.RecordWorker` holds it until the batch is settled), so the next one
    reads what the first read and sends the same alerts under the same deterministic ids (the router
    refuses any second copy as a replay), as a restarted process would."""
    pauses = retry_pauses()
    while True:
        try:
            await attempt()
            return
        except Exception as e:
            metrics.agent_restarts.labels(agent).inc()
            wait = next(pauses)
            log.warning(
                "hub agent %s failed (%s): handling what it took again in %.1f s", agent, _why(e), wait
            )
        await pause(wait)
        if not freshness.ok():
            await freshness.wait_until_ok()


def _why(error: Exception) -> str:
    """A failure for the log: Kafka's and the disk's say what went wrong; anything else only its type
    (its message could quote what a record holds)."""
    if isinstance(error, TransportError | KafkaError | OSError):
        return f"{type(error).__name__}: {error}"
    return f"{type(error).__name__}, a bug"


async def when_fresh(
    events: AsyncIterator[Any],
    freshness: FreshnessInForce,
    waiting: Gauge | None = None,
    *,
    size: Callable[[Any], int] = lambda _: 1,
) -> AsyncIterator[Any]:
    """Each event (or batch of events), once the worker is fresh: while it is not, the agent holds it
    unacknowledged, so faust commits nothing past it and a restart reads it again. ``waiting`` (the
    source's series of ``lianfang_hub_waiting_for_freshness``) counts the records held (``size`` of
    each item: 1 for an event)."""
    async for event in events:
        if not freshness.ok():  # the freshness log says why, once per change of state
            held = size(event)
            if waiting is not None:
                waiting.inc(held)
            try:
                await freshness.wait_until_ok()
            finally:
                if waiting is not None:
                    waiting.dec(held)
        yield event


def _follow_registry(
    settings: HubSettings, registry: RegistryInForce, metrics: HubMetrics, names: topics.TopicNames
) -> tuple[RegistryFollower, FreshnessInForce]:
    """The registry topic's follower (not started) and the freshness it keeps from its statements."""
    freshness = FreshnessInForce(registry, required=settings.require_freshness, metrics=metrics.freshness)
    follower = RegistryFollower(
        registry,
        bootstrap=settings.bootstrap,
        topic=names.registry,
        security=settings.kafka_security,
        on_statement=freshness.offer,
    )
    return follower, freshness


AgentLoop = Callable[[str, "faust.StreamT[Any]", Callable[[Any], Awaitable[None]]], AsyncIterator[None]]
"""An agent's body: its name, its stream and the handler of each message (:func:`agent_loop`)."""


BatchLoop = Callable[[str, "faust.StreamT[Any]"], AsyncIterator[None]]
"""The inbox agent's body: its stream in batches to :meth:`HubWorker.on_inbox_batch`."""


def _agents(app: faust.App, worker: HubWorker, loop: AgentLoop, batch_loop: BatchLoop) -> None:
    """One agent per topic the hub reads, each handing its records to the worker's per-record work."""
    work = worker.work

    async def on_suspect(m: Any) -> None:
        await work.on_suspect(m.value, partition=m.partition, offset=m.offset)

    async def on_serial(m: Any) -> None:
        await work.on_serial(m.value, partition=m.partition, offset=m.offset)

    async def on_link(m: Any) -> None:  # services.hub.links
        await work.on_link(m.value, partition=m.partition, offset=m.offset)

    async def on_tick(m: Any) -> None:
        await work.on_tick(m.value, m.partition, m.offset)

    @app.agent(worker.inbox)
    async def observe(stream: faust.StreamT[Any]) -> AsyncIterator[None]:
        async for _ in batch_loop("inbox", stream):
            yield None

    @app.agent(worker.suspects)
    async def by_suspect(stream: faust.StreamT[Any]) -> AsyncIterator[None]:
        async for _ in loop("suspects", stream, on_suspect):
            yield None

    @app.agent(worker.serial)
    async def serial_trigger(stream: faust.StreamT[Any]) -> AsyncIterator[None]:
        async for _ in loop("serial", stream, on_serial):
            yield None

    @app.agent(worker.links)
    async def linked(stream: faust.StreamT[Any]) -> AsyncIterator[None]:
        async for _ in loop("links", stream, on_link):
            yield None

    @app.agent(worker.clock)
    async def tick(stream: faust.StreamT[Any]) -> AsyncIterator[None]:
        async for _ in loop("clock", stream, on_tick):
            yield None


def faust_options(settings: HubSettings) -> dict[str, Any]:
    """The faust app's settings but its id and store: also those of the hub benchmark's baseline
    agent, which must read the inbox as the hub does."""
    return {
        "broker": f"kafka://{settings.bootstrap}",
        "broker_credentials": faust_credentials(settings.kafka_security),
        "datadir": str(settings.data_dir / settings.worker_name),
        "topic_partitions": settings.partitions,
        "topic_replication_factor": settings.replication,
        "topic_disable_leader": True,  # no leader-only timers: no leader topic to create while starting
        "web_enabled": False,
        "broker_session_timeout": 10.0,
        "broker_heartbeat_interval": 1.0,
        "broker_commit_interval": 1.0,
        "consumer_auto_offset_reset": "earliest",
        "producer_acks": -1,
        "table_key_index_size": settings.table_key_index,
        "key_serializer": "raw",
        "value_serializer": "raw",
        "logging_config": None,
    }


def create_app(settings: HubSettings, *, metrics: HubMetrics | None = None) -> faust.App:
    """Build the hub app for one worker."""
    if not settings.bootstrap:
        raise UsageError("no Kafka bootstrap: set LIANFANG_BOOTSTRAP")
    metrics = metrics or HubMetrics()
    offsetfetch.install()  # faust's consumer and the lag sampler read what the group's coordinator holds
    domain = trust.open_domain(settings.home)
    keys = domain.keystore(ids.HUB)
    names = topics.TopicNames(settings.topic_prefix)
    registry = RegistryInForce.from_domain(
        domain, service=ids.HUB, metrics=metrics.registry_in_force, registry_topic=names.registry
    )
    follower, freshness = _follow_registry(settings, registry, metrics, names)
    # Each opened inbox event and each published alert or report: one chain per worker.
    sink = KafkaSink(settings.bootstrap, names.audit, settings.kafka_security)
    trail = participant_trail(
        settings.data_dir / "audit", keys, registry.current, ids.HUB, ship=sink, metrics=metrics.audit
    )
    app = HubApp(settings.app_id, store=hub_store.register(), **faust_options(settings))
    worker = HubWorker(
        app,
        settings,
        config=HubConfig().at_time_scale(settings.time_scale),
        metrics=metrics,
        registry=registry,
        keys=keys,
        trail=trail,
        newer_registry=follower.newer_registry_for,
    )
    work = worker.work

    @app.on_before_shutdown.connect
    async def close_audit_trail(_app: Any, /, *_args: Any, signal: Any, **_kwargs: Any) -> None:
        trail.close()  # signs the head; ships what is left
        await asyncio.to_thread(follower.stop)

    @app.task  # type: ignore[untyped-decorator]
    async def follow_registry() -> None:
        """Follow the registry topic from the worker's start; read it to its end first (a few s)."""
        follower.start()
        await asyncio.to_thread(follower.catch_up, 10.0)

    progress = AgentProgress()
    metrics.worker_progress.set_function(progress.at)

    def loop(
        agent: str, stream: faust.StreamT[Any], handle: Callable[[Any], Awaitable[None]]
    ) -> AsyncIterator[None]:
        return agent_loop(
            agent, stream.events(), handle, freshness=freshness, metrics=metrics, progress=progress
        )

    def batch_loop(agent: str, stream: faust.StreamT[Any]) -> AsyncIterator[None]:
        # Acknowledged by hand once handled (HubWorker.on_inbox_batch); a batch that fails is handled
        # again in place (until_handled), never dropped.
        return agent_loop(
            agent,
            take.batches(cast(faust.Stream[Any], stream), settings.batch_max, settings.batch_within_s),
            lambda events: worker.on_inbox_batch(stream, events),
            freshness=freshness,
            metrics=metrics,
            progress=progress,
            size=len,
            unwrap=lambda events: events,
        )

    _agents(app, worker, loop, batch_loop)

    if settings.tick_interval_s:

        @app.timer(interval=settings.tick_interval_s)  # type: ignore[untyped-decorator]
        async def wall_clock() -> None:
            now = utcnow().isoformat().encode()
            for partition in range(settings.partitions):
                await worker.clock.send(key=b"tick", value=now, partition=partition)

    metrics.rocksdb_memory_bound.set(rocksdb_memory_bound(settings))
    if settings.rocksdb_memory_interval_s:

        @app.timer(interval=settings.rocksdb_memory_interval_s)  # type: ignore[untyped-decorator]
        async def sample_rocksdb_memory() -> None:
            # A few property reads a store, microseconds each: on the loop, where no rebalance runs.
            memory = memory_of(worker.open_stores())
            if memory.unread:
                log.debug("%d RocksDB stores closed while read: their memory not counted", memory.unread)
            metrics.set_rocksdb_memory(memory)

    if settings.metrics_port:

        @app.task  # type: ignore[untyped-decorator]
        async def serve_metrics() -> None:
            metrics_endpoint.start(settings)

    if settings.lag_interval_s:

        @app.task  # type: ignore[untyped-decorator]
        async def sample_lag() -> None:
            inbox = work.names.inbox(ids.HUB)
            await sample_group_lag(
                settings,
                inbox,
                metrics,
                describe=functools.partial(faust_commit_view, app, inbox),
                read_again=functools.partial(read_again_if_unacknowledged, app, inbox),
            )

    return app


def forget_tables_of_another_cluster(settings: HubSettings, cluster: str) -> bool:
    """The worker's RocksDB tables cache changelog topics of one Kafka cluster. Met with another (a
    local Kafka started afresh), faust would refuse them; drop them, to be rebuilt from the changelogs.
    Tables of a cluster not recorded are dropped too: they are only a cache. Returns whether they were
    dropped."""
    folder = settings.data_dir / settings.worker_name
    marker = settings.data_dir / f"{settings.worker_name}.cluster-id"
    known = marker.read_text().strip() if marker.exists() else "an unrecorded cluster"
    dropped = False
    if known != cluster and folder.exists() and any(folder.iterdir()):
        log.warning("tables in %s are of %s, not of Kafka cluster %s: dropping them", folder, known, cluster)
        shutil.rmtree(folder)
        dropped = True
    folder.mkdir(parents=True, exist_ok=True)
    marker.write_text(cluster + "\n")
    return dropped


def run_worker(settings: HubSettings, *, memory: Allocator | None = None) -> None:
    """Run one hub worker in the foreground until SIGTERM/SIGINT. ``memory``, the process's allocator
    (:func:`services.kernel.allocator.configure`), is trimmed each time a rebalance's table recovery is
    complete: restoring the tables from their changelogs is the hub's largest peak."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    forget_tables_of_another_cluster(settings, cluster_id(settings.bootstrap, settings.kafka_security))
    app = create_app(settings)
    if memory is not None:

        @app.on_rebalance_complete.connect
        async def trim_after_recovery(_app: Any, /, *_args: Any, **_kwargs: Any) -> None:
            memory.trim()

    prepare_topics(
        settings.bootstrap,
        names=topics.TopicNames(settings.topic_prefix),
        changelogs=[table.changelog_topic for table in app.tables.values()],
        partitions=settings.partitions,
        replication=settings.replication,
        security=settings.kafka_security,
        timeout_s=settings.topics_timeout_s,
    )
    worker = _HubWorker(app, loglevel=settings.log_level, redirect_stdouts=False)
    worker.execute_from_commandline()


STOP_DEADLINE_S = 20.0
"""How long the hub may take to stop after SIGTERM or SIGINT before it exits regardless. A healthy
broker lets faust commit and flush in well under a second; a lost one never answers, and faust's
consumer would retry its final commit for ever (an orchestrator's SIGKILL would follow)."""


class _HubWorker(faust.Worker):
    """faust's worker, whose stop on a signal is bounded by :data:`STOP_DEADLINE_S`: past it the process
    exits with status 0 as stopped on request. Nothing is lost: the state is in its changelogs and
    RocksDB, and records whose offsets were not committed are read again at the next start, as after a
    crash, which the hub survives without a lost state or a second alert (``test_hub.py``'s SIGKILL)."""

    _deadline: threading.Timer | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # faust's terminal spinner turns once per log record, for which faust sets the root logger to
        # DEBUG (its handlers keep their level): every debug line of aiokafka, kafka-python and faust
        # then became a record and was filtered out, about 7 % of the hub's CPU under load. A service
        # has no terminal to spin on; the root logger keeps the level asked for.
        self.spinner = None

    def _arm_deadline(self, name: str) -> None:
        if self._deadline is None:
            log.info("stopping on %s (at most %.0f s)", name, STOP_DEADLINE_S)
            self._deadline = threading.Timer(STOP_DEADLINE_S, _exit_past_deadline, args=(name,))
            self._deadline.daemon = True
            self._deadline.start()

    def _on_sigterm(self) -> None:
        self._arm_deadline("SIGTERM")
        super()._on_sigterm()

    def _on_sigint(self) -> None:
        self._arm_deadline("SIGINT")
        super()._on_sigint()


def _exit_past_deadline(name: str) -> None:
    log.warning(
        "stopped on %s after %.0f s without finishing the shutdown (Kafka unreachable?): offsets not "
        "committed are read again at the next start",
        name, STOP_DEADLINE_S,
    )  # fmt: skip
    logging.shutdown()
    os._exit(0)


def _inbox_record(message: Any) -> InboxRecord:
    m = message
    return InboxRecord(m.value, m.key, m.partition, m.offset, _header_pairs(m.headers))


def _header_pairs(headers: Any) -> list[tuple[str, bytes | None]]:
    """A faust message's Kafka headers as (name, value) pairs, whether faust gives a list or a mapping."""
    if headers is None:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(str(name), value) for name, value in items]
