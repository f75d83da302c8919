"""The router service (``lianfang serve router``): one worker of the ``lianfang-router`` group.

For each record of ``lianfang.events.v1`` it calls the pure :func:`~services.router.core.decide`: a
verified event is copied (value and key unchanged, CloudEvents headers derived from the verified
header, never the producer's) into ``lianfang.inbox.<participant>.v1`` of every recipient; anything
else goes to ``lianfang.deadletter.v1`` with its reason code, a bug met on one record included
(``internal``): no record stops the router, only a Kafka failure restarts the worker. Deliveries,
the replay window's state and the consumed offsets of a poll commit in one Kafka transaction
(:mod:`services.bus.eos`; a worker the group dropped cannot commit), so a router killed mid-batch and
restarted delivers nothing twice and loses nothing. Several workers of one group share the partitions.

Registry updates arrive on ``lianfang.registry.v1`` (:mod:`services.bus.registry_follower`) and take
effect without a restart. While the registry in force has expired, or the worker holds no fresh
timestamp statement for it (:mod:`services.bus.freshness`), routing pauses: events wait in Kafka,
nothing is committed or dropped, and routing resumes when a fresh statement arrives.

Every ``lag_interval_s`` the worker samples its consumer lag (:class:`LagMonitor`) for ``/metrics``.
It also measures how late its event loop runs (:mod:`services.bus.looplag`): the Kafka consumer's
heartbeats wait as long.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import time
from collections.abc import Callable, Iterator, MutableMapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiokafka.errors import ConsumerStoppedError, KafkaError
from prometheus_client import Counter
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services import trust
from services.audit.chain import Action, AuditEntry, Checkpoint, Signer, next_entry, parse_line
from services.bus import looplag, metrics_endpoint
from services.bus.eos import Output, PartitionState, TransactionalRunner
from services.bus.freshness import FreshnessInForce
from services.bus.registry_follower import RegistryInForce, follow
from services.bus.security import KafkaSecuritySettings, load_security
from services.bus.settings import ServiceSettings
from services.kernel import ids, topics
from services.kernel.clock import Clock, utcnow
from services.kernel.deadletter import deadletter_headers
from services.kernel.envelope import DuplicateError, ReplayWindow, Seen
from services.kernel.errors import ReasonCode, TransportError, UntrustedInputError, UsageError, frames
from services.kernel.registry import Registry
from services.router import core
from services.router.metrics import RouterMetrics
from services.router.seen import SeenStore
from services.trust import TrustDomain

UNREAD_REASONS: frozenset[ReasonCode] = frozenset({"too_large", "malformed"})
"""Refusals whose record's bytes a dead letter does not carry, only their size and SHA-256. Such a
record did not read as a well-formed envelope (or, for ``malformed``, its Kafka key is not its signed
subject), so it may be anything: plain text a careless or hostile
sender put on the bus (kept six times as long on the dead-letter topic as on the events topic), or a
record that unpacks from a compressed batch to many megabytes, which no dead letter could hold (its send
would fail, the transaction with it, and the partition would stop on that record). The letter's source
offset points at the bytes for as long as the events topic keeps them."""

MAX_KEPT_KEY_BYTES = 256
"""The longest Kafka key a dead letter carries (a subject pseudonym is 46 bytes); a longer one, or any
key of an :data:`UNREAD_REASONS` record, is named by its size and SHA-256 instead."""

log = logging.getLogger("lianfang.router")

LOG_APPEND_TIME = 1
"""A Kafka record's ``timestamp_type`` when the broker stamped it (0 is the producer's ``CreateTime``)."""


class RouterSettings(ServiceSettings):
    """Settings of one router worker. Environment variables: ``LIANFANG_ROUTER_<NAME>``, except the
    broker (``LIANFANG_BOOTSTRAP``), the trust domain (``LIANFANG_HOME``) and the Kafka login
    (``LIANFANG_KAFKA_*``, :mod:`services.bus.security`)."""

    model_config = SettingsConfigDict(env_prefix="LIANFANG_ROUTER_")

    group_id: str = Field(default="lianfang-router", description="consumer group and transactional-id prefix")
    topic_prefix: str = Field(default="", description="prefix of every topic name (tests use one per run)")
    replay_window_s: float = Field(default=7 * 24 * 3600, gt=0, description="ids are remembered this long")
    max_skew_s: float = Field(default=300, ge=0, description="how far in the future an event may be dated")
    time_skew_s: float = Field(
        default=300,
        ge=0,
        description="how far the signed time may lie from the broker's append time, either way (time_skew)",
    )
    max_batch: int = Field(default=500, ge=1, description="records per transaction, at most")
    worker_id: str = Field(
        default="",
        pattern=r"^[A-Za-z0-9._-]{0,64}$",
        description="this worker's name, distinct for each worker of the group and kept across its "
        "restarts (e.g. router-1): its transactional id is <group>.worker-<name> and its static membership "
        "of the group, so a worker restarted after a crash takes its partitions back and aborts the "
        "transaction it left open at once (a stopped one keeps its partitions for the session timeout, "
        "10 s); empty: a random name each start, and a crash stops its partitions until the group drops "
        "it and holds the inboxes' readers back until the broker aborts its transaction (about 11 s)",
    )
    metrics_port: int = Field(default=9102, ge=0, description="port of /metrics; 0 turns it off")
    metrics_address: str = Field(default=metrics_endpoint.LOOPBACK, description=metrics_endpoint.ADDRESS_HELP)
    lag_interval_s: float = Field(
        default=15.0, ge=0, description="how often consumer lag is sampled for /metrics; 0 turns it off"
    )
    require_freshness: bool = Field(
        default=True,
        description="pause without a fresh timestamp statement; false (logged as a warning) only where "
        "no timestamp service runs",
    )
    kafka_security: KafkaSecuritySettings = Field(
        default_factory=load_security, description="TLS and SASL login, from LIANFANG_KAFKA_*"
    )


class SeenIds(MutableMapping[str, Seen]):
    """The replay window's memory of one partition, kept in that partition's transactional state."""

    def __init__(self, state: PartitionState) -> None:
        self.state = state

    def __getitem__(self, key: str) -> Seen:
        value = self.state.get(key)
        if value is None:
            raise KeyError(key)
        return Seen.decode(value)

    def get(self, key: str, default: Seen | None = None) -> Seen | None:  # type: ignore[override]
        """The replay window asks this for every event's id, new ones above all: no ``KeyError``
        raised and caught, as the mixin's ``get`` would."""
        value = self.state.get(key)
        return default if value is None else Seen.decode(value)

    def __setitem__(self, key: str, value: Seen) -> None:
        self.state.put(key, value.encode())

    def __delitem__(self, key: str) -> None:
        self.state.put(key, None)

    def __iter__(self) -> Iterator[str]:
        every = self.state.keys()
        return iter([k for k in every if not k.startswith(RouterAudit.STATE_PREFIX)])

    def __len__(self) -> int:
        return len(list(iter(self)))

    def older_than(self, cutoff: float) -> list[str]:
        """The remembered ids whose time is before ``cutoff`` (seconds), the batch's changes included:
        from the compact store in one pass, instead of decoding every id (:meth:`ReplayWindow.prune`)."""
        data, pending = self.state.data, self.state.pending
        if not isinstance(data, SeenStore):
            return [k for k, seen in self.items() if seen.time < cutoff]
        old = [k for k in data.older_than(cutoff) if k not in pending]
        return old + [
            k
            for k, v in pending.items()
            if v is not None and not k.startswith(RouterAudit.STATE_PREFIX) and Seen.decode(v).time < cutoff
        ]


class RouterAudit:
    """The router's audit trail: one hash chain per events partition, written in the partition's
    transaction, so an entry is on ``lianfang.audit.v1`` exactly when the delivery it records committed.

    The chain's head lives in the partition's transactional state (key ``audit:head``), so it moves with
    the partition to whichever worker takes it over. Each transaction's entries are hashed into the
    chain as they are made and end with a checkpoint of the head signed with the router's key
    (:meth:`seal`), written in the same transaction: through the chain's hashes that one signature
    vouches for every entry of the batch, so no committed entry is ever unattributable, and an entry
    another participant appends under the router's name is set aside by ``audit verify`` (nothing signed
    commits to it) instead of breaking the chain. One signature a batch instead of one an entry: see
    ``docs/decisions.md``.
    """

    STATE_PREFIX = "audit:"
    HEAD = "audit:head"
    SIGNED = "audit:signed"

    def __init__(self, topic: str, group_id: str, signer: Signer | None) -> None:
        self.topic = topic
        self.chain = re.sub(r"[^a-z0-9_.-]", "-", group_id.lower()).strip("-.") or ids.ROUTER
        self.signer = signer
        self._heads: dict[int, tuple[bytes, AuditEntry]] = {}  # per partition, as last written

    def actor(self, partition: int) -> str:
        return f"{ids.ROUTER}/{self.chain}.p{partition}"

    def head(self, state: PartitionState) -> AuditEntry | None:
        line = state.get(self.HEAD)
        if line is None:
            return None
        cached = self._heads.get(state.partition)
        if cached is not None and cached[0] is line:  # the line this worker wrote: no need to parse it
            return cached[1]
        entry = parse_line(line)
        assert isinstance(entry, AuditEntry)
        return entry

    def record(
        self,
        state: PartitionState,
        action: Action,
        now: datetime,
        *,
        subject: str | None = None,
        object: str | None = None,
        to: tuple[str, ...] | None = None,
    ) -> Output:
        entry = next_entry(
            self.head(state),
            actor=self.actor(state.partition),
            action=action,
            at=now,
            subject=subject,
            object=object,
            to=to,
        )
        line = entry.to_line()
        state.put(self.HEAD, line)
        self._heads[state.partition] = (line, entry)
        return Output(self.topic, line, entry.actor.encode(), [])

    def seal(self, state: PartitionState, now: datetime) -> list[Output]:
        """A signed checkpoint of the partition's head, if the batch moved it, for the batch's
        transaction: the batch's entries count once it commits with them."""
        if self.signer is None:
            return []
        head = self.head(state)
        if head is None or state.get(self.SIGNED) == str(head.seq).encode():
            return []
        state.put(self.SIGNED, str(head.seq).encode())
        checkpoint = Checkpoint.sign(head, self.signer.key, self.signer.kid, at=now)
        return [Output(self.topic, checkpoint.to_line(), head.actor.encode(), [])]


class Router:
    """Decides each record and turns the decision into transactional outputs."""

    PRUNE_EVERY_S = 60.0

    def __init__(
        self,
        settings: RouterSettings,
        holder: RegistryInForce,
        metrics: RouterMetrics,
        clock: Clock,
        signer: Signer | None = None,
        *,
        freshness: FreshnessInForce | None = None,
    ) -> None:
        self.settings = settings
        # None: freshness is not checked (unit tests of the routing itself).
        self.freshness = freshness
        self.names = topics.TopicNames(settings.topic_prefix)
        self.audit = RouterAudit(self.names.audit, settings.group_id, signer)
        self.holder = holder
        self.metrics = metrics
        self.clock = clock
        self.window = timedelta(seconds=settings.replay_window_s)
        self.skew = timedelta(seconds=settings.max_skew_s)
        self.time_skew = timedelta(seconds=settings.time_skew_s)
        self._warned_create_time = False
        self._series: dict[tuple[Counter, str], Counter] = {}
        self._last_prune: dict[int, float] = {}
        self._paused = False
        # How many partitions the events topic has; serve() reads it from the runner's consumer.
        self.partitions: Callable[[], int] = _no_partition_count

    def _replay(self, state: PartitionState) -> ReplayWindow:
        return ReplayWindow(window=self.window, max_skew=self.skew, seen=SeenIds(state))

    async def handle(self, record: Any, state: PartitionState) -> list[Output]:
        """Route one record, or dead-letter it with a reason code. No record stops the router: a bug
        met while handling one (in the decision or the audit step) dead-letters it as ``internal``,
        forgetting what its handling had written to the partition's state. Only a Kafka failure
        propagates, to restart the worker (:class:`~services.bus.eos.TransactionalRunner`)."""
        now = self.clock()
        partitions = self.partitions()  # outside the try: a failure here is Kafka's, not the record's
        before = state.savepoint()  # to forget what a refused record's handling wrote to the state
        try:
            return self._route(record, state, now, partitions)
        except DuplicateError:
            self.metrics.duplicates.inc()  # a producer's retry: the first copy was delivered
            return []
        except (TransportError, KafkaError):
            raise
        except UntrustedInputError as e:
            state.rollback(before)
            return self._deadletter(record, state, now, e.reason, str(e))
        except Exception as e:
            state.rollback(before)  # the replay window must not remember an event it did not deliver
            _log_bug(e, f"while routing {_where(record)}: dead-lettered as internal")
            return self._deadletter(
                record, state, now, "internal", f"[internal] {type(e).__name__} while routing this record"
            )

    def _route(self, record: Any, state: PartitionState, now: datetime, partitions: int) -> list[Output]:
        decision = core.decide(
            record.value,
            record.key,
            partition=record.partition,
            partitions=partitions,
            registry=self.holder.current,
            now=now,
            replay=self._replay(state),
            appended_at=self.appended_at(record),
            max_skew=self.time_skew,
        )
        entry = self.audit.record(
            state, "route", now, subject=decision.subject, object=decision.event_id, to=decision.recipients
        )
        self._counter(self.metrics.routed, decision.event_type).inc()
        self.metrics.latency.observe(max(0.0, (self.clock() - decision.event_time).total_seconds()))
        for participant in decision.recipients:
            self._counter(self.metrics.delivered, participant).inc()
        headers = list(decision.headers)
        copies = [Output(self.names.inbox(p), record.value, record.key, headers) for p in decision.recipients]
        return [*copies, entry]

    def _counter(self, counter: Counter, label: str) -> Counter:
        """``counter.labels(label)``, remembered: looking a series up costs more than counting in it."""
        series = self._series.get((counter, label))
        if series is None:
            series = self._series[counter, label] = counter.labels(label)
        return series

    def appended_at(self, record: Any) -> datetime | None:
        """When the broker took ``record``: its timestamp if the events topic stamps ``LogAppendTime``,
        else ``None`` (a ``CreateTime`` stamp is the producer's to choose; the key is then judged at
        the router's clock, see :func:`services.router.core.decide`)."""
        if getattr(record, "timestamp_type", None) == LOG_APPEND_TIME:
            return datetime.fromtimestamp(record.timestamp / 1000, tz=UTC)
        if not self._warned_create_time:
            self._warned_create_time = True
            log.warning(
                "%s does not stamp LogAppendTime: keys are judged at the router's clock; set "
                "message.timestamp.type=LogAppendTime on it (deploy/topics.toml)",
                record.topic,
            )
        return None

    def _deadletter(
        self, record: Any, state: PartitionState, now: datetime, reason: ReasonCode, detail: str
    ) -> list[Output]:
        self.metrics.deadlettered.labels(reason).inc()
        unread = reason in UNREAD_REASONS
        # The key is the sender's to choose, and is checked against the signed subject only late: one
        # longer than any subject is left out as the bytes are (a name, or megabytes, in the key).
        key_kept = not unread and (record.key is None or len(record.key) <= MAX_KEPT_KEY_BYTES)
        headers = deadletter_headers(
            reason,
            detail,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            now=now,
            left_out=record.value if unread else None,
            left_out_key=None if key_kept else record.key,
        )
        value = b"" if unread else record.value
        letter = Output(self.names.deadletter, value, record.key if key_kept else None, headers)
        before = state.savepoint()
        try:
            return [letter, self.audit.record(state, "deadletter", now, object=_where(record))]
        except (TransportError, KafkaError):
            raise
        except Exception as e:
            # A bug in the audit step must not stop the router either: the record is still
            # dead-lettered (and counted), and the log says its audit entry is missing.
            state.rollback(before)
            _log_bug(e, f"while auditing the dead letter of {_where(record)}: it has no audit entry")
            return [letter]

    def after_batch(self, state: PartitionState) -> list[Output]:
        """After each batch: forget old ids now and then, and sign the batch's audit entries (a
        checkpoint of the head). A bug in the signing step does not stop the router: it is logged, and
        the batch's entries stay unproven until a later batch's checkpoint covers them."""
        self.prune(state)
        before = state.savepoint()
        try:
            return self.audit.seal(state, self.clock())
        except (TransportError, KafkaError):
            raise
        except Exception as e:
            state.rollback(before)
            _log_bug(e, f"while signing partition {state.partition}'s audit head: no checkpoint")
            return []

    def prune(self, state: PartitionState) -> None:
        """Now and then, forget ids older than the window (their time alone refuses them)."""
        last = self._last_prune.get(state.partition, 0.0)
        if time.monotonic() - last >= self.PRUNE_EVERY_S:
            self._last_prune[state.partition] = time.monotonic()
            removed = self._replay(state).prune(self.clock())
            if removed:
                log.info("partition %d: forgot %d ids older than the replay window", state.partition, removed)

    def paused(self) -> bool:
        """Routing waits while the registry in force has expired, or is not known to be fresh (events
        stay in Kafka); the freshness holder logs why."""
        stale = self.freshness is not None and not self.freshness.ok()
        expired = self.holder.expired()
        if expired != self._paused:
            self._paused = expired
            log.warning(
                "registry v%d %s",
                self.holder.current.version,
                "has expired: routing paused until a newer one arrives"
                if expired
                else "in force: routing resumes",
            )
        self.metrics.paused.set(1 if expired or stale else 0)
        return expired or stale


class LagMonitor:
    """Samples the consumer lag of the partitions this worker holds into ``lianfang_consumer_lag``.

    Lag is the end offset minus the worker's position. The end offsets come from one ListOffsets
    request per sample (the read_committed consumer gets last stable offsets), so the gauge keeps
    growing while routing is paused and nothing is fetched; positions are the consumer's own. The
    position runs ahead of the committed offset by at most the batch in flight. A partition that
    moves to another worker loses its series here: that worker reports it.
    """

    def __init__(self, runner: TransactionalRunner, metrics: RouterMetrics, interval_s: float) -> None:
        self.runner = runner
        self.metrics = metrics
        self.interval_s = interval_s
        self._reported: set[int] = set()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)  # a sampling period, not a wait for a condition
            try:
                await self.sample()
            except (KafkaError, ConsumerStoppedError, TimeoutError) as e:
                # A rebalance, a slow broker or the worker stopping: the next period tries again.
                log.debug("consumer lag not sampled: %r", e)

    async def sample(self) -> None:
        consumer = self.runner.consumer
        if consumer is None:
            return
        source = self.runner.source
        held = sorted((tp for tp in consumer.assignment() if tp.topic == source), key=lambda tp: tp.partition)
        ends = await consumer.end_offsets(held) if held else {}
        lags: dict[int, int] = {}
        for tp in held:
            if tp not in ends:
                continue
            position = await asyncio.wait_for(consumer.position(tp), timeout=max(self.interval_s, 1.0))
            lags[tp.partition] = max(0, int(ends[tp]) - int(position))
        group, topic = self.runner.group_id, self.runner.source
        for partition in self._reported - lags.keys():
            self.metrics.lag.remove(group, topic, str(partition))
        for partition, lag in lags.items():
            self.metrics.lag.labels(group, topic, str(partition)).set(lag)
        self._reported = set(lags)


def _where(record: Any) -> str:
    """A record's coordinates as the audit trail and the log name them: ``topic.partition.offset``."""
    return f"{record.topic}.{record.partition}.{record.offset}"


def _no_partition_count() -> int:
    raise UsageError("the router's partition count is not wired: serve() sets Router.partitions")


def router_signer(home: Path, registry: Registry, now: datetime) -> Signer | None:
    """The key that signs the router's audit entries and checkpoints: ``router``'s keystore in HOME."""
    if not (home / "keys" / f"{ids.ROUTER}.key").exists():
        log.warning(
            "no keystore for %r in %s: the router's audit entries will not be signed", ids.ROUTER, home
        )
        return None
    return Signer.of(trust.open_domain(home).keystore(ids.ROUTER), registry, now)


async def serve(
    settings: RouterSettings, *, clock: Clock = utcnow, metrics: RouterMetrics | None = None
) -> None:
    """Run one router worker until SIGTERM or SIGINT."""
    if not settings.bootstrap:
        raise UsageError("no Kafka bootstrap: set LIANFANG_BOOTSTRAP or pass --bootstrap")
    metrics = metrics or RouterMetrics()
    # An expired registry is still loaded (its signatures must verify): routing pauses until a newer
    # one arrives on the registry topic, instead of refusing to start.
    holder = RegistryInForce.from_domain(
        TrustDomain(home=settings.home, passphrase=""),
        service="router",
        metrics=metrics.registry_in_force,
        clock=clock,
        allow_expired=True,
        registry_topic=topics.TopicNames(settings.topic_prefix).registry,
    )
    freshness = FreshnessInForce(
        holder, required=settings.require_freshness, clock=clock, metrics=metrics.freshness
    )
    router = Router(
        settings,
        holder,
        metrics,
        clock,
        router_signer(settings.home, holder.current, clock()),
        freshness=freshness,
    )
    runner = TransactionalRunner(
        bootstrap=settings.bootstrap,
        group_id=settings.group_id,
        source=router.names.events,
        state_topic=router.names.router_replay,
        handler=router.handle,
        after_batch=router.after_batch,
        store=SeenStore,
        max_batch=settings.max_batch,
        worker_id=settings.worker_id or None,
        paused=router.paused,
        client_id="lianfang-router",
        security=settings.kafka_security,
        on_restart=metrics.worker_restarts.inc,
        on_commit=metrics.transactions.observe,
    )
    metrics.worker_progress.set_function(lambda: runner.progressed_at)
    router.partitions = runner.source_partitions
    metrics_endpoint.start(settings)
    loop = asyncio.get_running_loop()
    stopped_by: list[str] = []

    def stop(sig: signal.Signals) -> None:
        stopped_by.append(sig.name)
        runner.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop, sig)
    follower = await asyncio.to_thread(
        follow,
        holder,
        bootstrap=settings.bootstrap,
        topic=router.names.registry,
        security=settings.kafka_security,
        on_statement=freshness.offer,
    )
    tasks: list[asyncio.Task[None]] = [asyncio.create_task(looplag.watch(metrics.loop_lag.observe))]
    if settings.lag_interval_s:
        tasks.append(asyncio.create_task(LagMonitor(runner, metrics, settings.lag_interval_s).run()))
    log.info(
        "router %s: registry v%d, reading %s", settings.group_id, holder.current.version, router.names.events
    )
    try:
        await runner.run()
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.to_thread(follower.stop)
    log.info("router %s: stopped on %s", settings.group_id, stopped_by[0] if stopped_by else "request")


def _log_bug(error: Exception, what: str) -> None:
    """Log a bug met on a record with its type and frames only, as the hub and the gateway do: its
    message could quote what the record's clear header or its sender's bytes hold."""
    log.error("a bug (%s) %s\n%s", type(error).__name__, what, frames(error))
