"""The hub (``lianfang serve hub``): a faust-streaming app for joint-meeting alerts and supervision.

It reads ``lianfang.inbox.hub.v1`` (the router delivers it everything the policy shares with the hub:
the ``triage`` section only), keeps per-victim state in a RocksDB table (with a changelog) keyed by
the subject pseudonym, and applies the pure rules of :mod:`services.hub.rules`. Alerts and breaches are
ordinary signed events by ``hub``, sealed per the policy and published on ``lianfang.events.v1`` for the
router to deliver.

- Serial suspects: leads are repartitioned by suspect pseudonym (``lianfang.hub.suspects.v1``); a
  suspect seen against two or more victims sends a trigger back to each victim's partition
  (``lianfang.hub.serial.v1``).
- Supervision: a tick (a time) on ``lianfang.hub.clock.v1`` makes each partition check its deadlines.
  The hub's own timer sends wall-clock ticks; tests send ticks with the time they need.
- No loss, no duplicate: an alert or breach is sent and acknowledged before the state that records it
  is written. A crash in between re-emits it under the same deterministic event id; the router
  delivers the first and refuses the second (reason ``replay``), so coordinators see it once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from kafka.partitioner.default import murmur2
from prometheus_client import start_http_server
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.envelope import EnvelopeHeader, SectionName
from services import trust
from services.bus.cluster import cluster_id
from services.bus.security import (
    KafkaSecuritySettings,
    aiokafka_kwargs,
    faust_credentials,
    load_security,
)
from services.hub import rules, serial, supervision
from services.hub.alerts import AlertEmission
from services.hub.config import HubConfig
from services.hub.ids import deterministic_id
from services.hub.metrics import HubMetrics
from services.hub.state import Observation, SuspectState, VictimState
from services.kernel import audit, envelope, topics
from services.kernel.errors import UntrustedInputError, UsageError
from services.kernel.registry import Registry

log = logging.getLogger("lianfang.hub")


class HubSettings(BaseSettings):
    """Settings of one hub worker. Environment: ``LIANFANG_HUB_<NAME>``, plus ``LIANFANG_BOOTSTRAP``,
    ``LIANFANG_HOME`` (the hub's keystore and the registry; passphrase as for every keystore) and the
    Kafka login ``LIANFANG_KAFKA_*`` (:mod:`services.bus.security`)."""

    model_config = SettingsConfigDict(env_prefix="LIANFANG_HUB_", frozen=True, extra="ignore")

    bootstrap: str = Field(default="", validation_alias=AliasChoices("LIANFANG_BOOTSTRAP", "bootstrap"))
    home: Path = Field(default=Path(".lianfang"), validation_alias=AliasChoices("LIANFANG_HOME", "home"))
    app_id: str = Field(default="lianfang-hub", description="faust app id: consumer group and table names")
    topic_prefix: str = Field(default="", description="prefix of every bus topic (tests use one per run)")
    data_dir: Path = Field(default=Path(".run/hub"), description="RocksDB tables of this worker")
    worker_name: str = Field(default="hub-1")
    partitions: int = Field(default=3, ge=1, description="partitions of the hub's inbox (and its tables)")
    replication: int = Field(default=1, ge=1, description="replication of the hub's changelog topics")
    tick_interval_s: float = Field(default=60.0, ge=0, description="wall-clock ticks; 0: only external ticks")
    report_every_s: float = Field(default=24 * 3600.0, gt=0, description="supervision.report period")
    metrics_port: int = Field(default=9103, ge=0, description="/metrics on 127.0.0.1; 0 turns it off")
    lag_interval_s: float = Field(default=15.0, ge=0, description="consumer-lag sampling period; 0: off")
    log_level: str = Field(default="warning", description="faust worker log level")
    kafka_security: KafkaSecuritySettings = Field(
        default_factory=load_security, description="TLS and SASL login, from LIANFANG_KAFKA_*"
    )


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a key (murmur2, as the SDK's producers use)."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


class Hub:
    """The per-record work of the agents, free of faust where it can be."""

    def __init__(self, settings: HubSettings, metrics: HubMetrics, config: HubConfig) -> None:
        self.settings = settings
        self.metrics = metrics
        self.config = config
        self.names = topics.TopicNames(settings.topic_prefix)
        domain = trust.open_domain(settings.home)
        self.keys = domain.keystore("hub")
        self.registry: Registry = domain.registry(datetime.now(UTC))
        # Each opened inbox event and each published alert or report: one chain per worker.
        sink = audit.KafkaSink(settings.bootstrap, self.names.audit, settings.kafka_security)
        self.trail = audit.participant_trail(
            settings.data_dir / "audit", self.keys, self.registry, "hub", ship=sink
        )

    def open(self, value: bytes) -> tuple[Observation, envelope.Opened]:
        opened = envelope.verify_and_open(
            value, registry=self.registry, now=datetime.now(UTC), keystore=self.keys
        )
        recipients = set().union(*opened.verified.recipients().values())
        self.trail.append(
            "open_section",
            subject=opened.header.subject,
            object=audit.opened_object(opened),
        )
        obs = Observation.from_header(opened.header, frozenset(recipients), opened.sections.get("triage", {}))
        return obs, opened

    def seal(
        self,
        *,
        event_type: str,
        event_id: str,
        subject: str,
        urgency: str,
        audience: list[str],
        refs: list[str],
        case: VictimState | None,
        payload: dict[str, Any],
    ) -> envelope.SealedRecord:
        """Seal a hub event: triage and details both carry the payload (it holds no personal data)."""
        last = case.last_lead_facts() if case is not None else {}
        fields = {
            "v": 1,
            "specversion": "1.0",
            "id": event_id,
            "source": "urn:lianfang:hub",
            "type": event_type,
            "time": datetime.now(UTC).isoformat(),
            "subject": subject,
            "schema": f"{event_type}/1",
            "category": last.get("category"),
            "minor": last.get("minor"),
            "town": last.get("town"),
            "urgency": urgency,
            "audience": sorted(set(audience) - {"coordinators", "plc", "hub"}),
            "policy": self.registry.policy_version,
            "registry": self.registry.version,
            "refs": refs[-20:],
        }
        header = EnvelopeHeader.model_validate_json(json.dumps(fields, default=str))
        body = json.loads(json.dumps(payload, default=str))
        content: dict[SectionName, dict[str, Any]] = {"triage": body, "details": body}
        return envelope.seal(header, content, registry=self.registry, signer=self.keys)


class HubWorker:
    """The hub's topics, tables and per-message work; the faust agents only loop and call these."""

    def __init__(self, app: faust.App, hub: Hub) -> None:
        self.app = app
        self.hub = hub
        self.metrics = hub.metrics
        n = hub.settings.partitions
        names = hub.names
        self.inbox = self._topic(names.inbox("hub"), n)
        self.clock = self._topic(names.hub_clock, n)
        self.suspects = self._topic(names.hub_suspects, n)
        self.serial = self._topic(names.hub_serial, n)
        self.events = self._topic(names.events)
        # Keys and values are bytes (the app's serializers are "raw"): VictimState / SuspectState JSON.
        app_id = hub.settings.app_id
        self.victims = app.Table(
            f"{app_id}-victims", default=None, partitions=n, key_type=bytes, value_type=bytes
        )
        self.suspect_table = app.Table(
            f"{app_id}-suspects", default=None, partitions=n, key_type=bytes, value_type=bytes
        )
        self.reported: dict[int, datetime] = {}  # per partition: when the current report period began

    def _topic(self, name: str, partitions: int | None = None) -> faust.TopicT:
        return self.app.topic(name, partitions=partitions, key_serializer="raw", value_serializer="raw")

    def _victim(self, key: bytes) -> VictimState | None:
        raw = self.victims.get(key)
        return VictimState.from_json(raw) if raw else None

    @staticmethod
    async def send_and_wait(topic: faust.TopicT, key: bytes, value: bytes, headers: Any = None) -> None:
        """Send, then wait for Kafka's acknowledgement (before the state that records it is written)."""
        pending = await topic.send(key=key, value=value, headers=headers)
        await pending

    async def publish(self, record: envelope.SealedRecord) -> None:
        await self.send_and_wait(self.events, record.key, record.value, record.headers)
        self.hub.trail.append("publish", subject=record.header.subject, object=record.header.id)

    async def emit_alerts(self, state: VictimState, emissions: list[AlertEmission]) -> None:
        for alert in emissions:
            record = self.hub.seal(
                event_type="joint_meeting.alert",
                event_id=alert.event_id,
                subject=alert.subject,
                urgency=alert.urgency,
                audience=list(alert.agencies_involved),
                refs=list(alert.related_events),
                case=state,
                payload=alert.payload(),
            )
            await self.publish(record)
            for reason in alert.reasons:
                self.metrics.alerts.labels(reason["code"]).inc()
            self.metrics.latency.observe(max(0.0, (datetime.now(UTC) - alert.updated_at).total_seconds()))

    async def on_inbox(self, message: Any) -> None:
        try:
            obs, _opened = self.hub.open(message.value)
        except UntrustedInputError as e:
            self.metrics.rejected.labels(e.reason).inc()
            log.warning("inbox record at offset %d refused: %s", message.offset, e.reason)
            return
        self.metrics.observed.labels(obs.event_type).inc()
        key = obs.subject.encode()
        before = self._victim(key)
        state, emissions = rules.observe(before, obs, self.hub.config)
        await self.emit_alerts(state, emissions)
        if state is not before:  # a re-processed event changes nothing
            self.victims[key] = state.to_json()
        for suspect in serial.suspects_of(obs):
            note = {
                "suspect": suspect,
                "victim": obs.subject,
                "lead_id": obs.event_id,
                "time": obs.time.isoformat(),
            }
            await self.send_and_wait(self.suspects, suspect.encode(), json.dumps(note).encode())

    async def on_suspect(self, message: Any) -> None:
        note = json.loads(message.value)
        key = note["suspect"].encode()
        raw = self.suspect_table.get(key)
        before = SuspectState.from_json(raw) if raw else None
        time = datetime.fromisoformat(note["time"])
        state, triggers = serial.observe_suspect(
            before, note["suspect"], note["victim"], note["lead_id"], time, self.hub.config
        )
        for trigger in triggers:
            await self.send_and_wait(self.serial, trigger.victim.encode(), trigger.to_json())
        self.suspect_table[key] = state.to_json()

    async def on_serial(self, message: Any) -> None:
        trigger = serial.SerialTrigger.from_json(message.value)
        key = trigger.victim.encode()
        before = self._victim(key)
        state, emissions = serial.observe_serial(before, trigger, self.hub.config)
        await self.emit_alerts(state, emissions)
        if state is not before:
            self.victims[key] = state.to_json()

    async def on_tick(self, message: Any) -> None:
        """Check this partition's deadlines at the tick's time; refresh the rates; maybe report."""
        now = datetime.fromisoformat(message.value.decode())
        partition = message.partition
        states = []
        for key, raw_state in list(self.victims.items()):
            if raw_state is None or partition_for(key, self.hub.settings.partitions) != partition:
                continue
            state, breaches = supervision.due(VictimState.from_json(raw_state), now, self.hub.config)
            for breach in breaches:
                record = self.hub.seal(
                    event_type="supervision.breach",
                    event_id=breach.event_id,
                    subject=breach.subject,
                    urgency=breach.urgency,
                    audience=[breach.agency],
                    refs=[breach.lead_id],
                    case=state,
                    payload=breach.payload(),
                )
                await self.publish(record)
                self.metrics.breaches.labels(breach.deadline_kind).inc()
            if breaches:
                self.victims[key] = state.to_json()
            states.append(state)
        rates = supervision.agency_rates(states, now, self.hub.config)
        self.metrics.set_rates(rates, partition)
        self.metrics.open_alerts.labels(str(partition)).set(sum(1 for s in states if s.has_open_alert()))
        await self.maybe_report(partition, now, rates)

    async def maybe_report(self, partition: int, now: datetime, rates: dict[str, Any]) -> None:
        """A signed ``supervision.report`` per partition and period (rates of this partition's cases)."""
        start = self.reported.get(partition)
        if start is None:
            self.reported[partition] = now
            return
        if (now - start).total_seconds() < self.hub.settings.report_every_s or not rates:
            return
        event_id = deterministic_id("report", str(partition), start.isoformat(), now.isoformat())
        record = self.hub.seal(
            event_type="supervision.report",
            event_id=event_id,
            subject=REPORT_SUBJECT,
            urgency="routine",
            audience=[],
            refs=[],
            case=None,
            payload=supervision.report_payload(rates, start, now),
        )
        await self.publish(record)
        self.reported[partition] = now


async def sample_group_lag(settings: HubSettings, topic: str, metrics: HubMetrics) -> None:
    """Every ``lag_interval_s``: end offset minus the hub group's committed offset, per inbox partition.

    It reads the group's commits without joining the group, so every worker reports the whole topic.
    """
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
                    lag = max(0, int(ends.get(tp, 0)) - int(committed))
                    metrics.lag.labels(settings.app_id, topic, str(tp.partition)).set(lag)
            except KafkaError as e:  # a slow or restarting broker: the next period tries again
                log.debug("hub consumer lag not sampled: %r", e)
    finally:
        await reader.stop()


REPORT_SUBJECT = "p0." + "A" * 43
"""A report is about no victim; its Kafka key is this fixed, well-formed pseudonym."""


def create_app(settings: HubSettings, *, metrics: HubMetrics | None = None) -> faust.App:
    """Build the hub app for one worker."""
    if not settings.bootstrap:
        raise UsageError("no Kafka bootstrap: set LIANFANG_BOOTSTRAP")
    hub = Hub(settings, metrics or HubMetrics(), HubConfig())
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.bootstrap}",
        broker_credentials=faust_credentials(settings.kafka_security),
        store="rocksdb://",
        datadir=str(settings.data_dir / settings.worker_name),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication,
        web_enabled=False,
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
        broker_commit_interval=1.0,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        key_serializer="raw",
        value_serializer="raw",
        logging_config=None,
    )
    worker = HubWorker(app, hub)

    @app.on_before_shutdown.connect
    async def close_audit_trail(_app: Any, /, *_args: Any, signal: Any, **_kwargs: Any) -> None:
        hub.trail.close()  # signs the head; ships what is left

    @app.agent(worker.inbox)
    async def observe(stream: faust.StreamT[Any]) -> AsyncIterator[None]:
        async for event in stream.events():
            await worker.on_inbox(event.message)
            yield None

    @app.agent(worker.suspects)
    async def by_suspect(stream: faust.StreamT[Any]) -> AsyncIterator[None]:
        async for event in stream.events():
            await worker.on_suspect(event.message)
            yield None

    @app.agent(worker.serial)
    async def serial_trigger(stream: faust.StreamT[Any]) -> AsyncIterator[None]:
        async for event in stream.events():
            await worker.on_serial(event.message)
            yield None

    @app.agent(worker.clock)
    async def tick(stream: faust.StreamT[Any]) -> AsyncIterator[None]:
        async for event in stream.events():
            await worker.on_tick(event.message)
            yield None

    if settings.tick_interval_s:

        @app.timer(interval=settings.tick_interval_s)  # type: ignore[untyped-decorator]
        async def wall_clock() -> None:
            now = datetime.now(UTC).isoformat().encode()
            for partition in range(settings.partitions):
                await worker.clock.send(key=b"tick", value=now, partition=partition)

    if settings.metrics_port:

        @app.task  # type: ignore[untyped-decorator]
        async def serve_metrics() -> None:
            start_http_server(settings.metrics_port, addr="127.0.0.1")

    if settings.lag_interval_s:

        @app.task  # type: ignore[untyped-decorator]
        async def sample_lag() -> None:
            await sample_group_lag(settings, hub.names.inbox("hub"), hub.metrics)

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


def run_worker(settings: HubSettings) -> None:
    """Run one hub worker in the foreground until SIGTERM/SIGINT."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    forget_tables_of_another_cluster(settings, cluster_id(settings.bootstrap, settings.kafka_security))
    app = create_app(settings)
    worker = faust.Worker(app, loglevel=settings.log_level, redirect_stdouts=False)
    worker.execute_from_commandline()
