"""The hub's per-record work, free of faust: open an inbox event, apply the rules, seal and send what they
emit, count serial suspects, check deadlines at a tick, and send the periodic report.

:class:`RecordWorker` sees its tables as plain mappings (pseudonym bytes to state JSON), sends through a
function ``send(topic, key, value, headers)`` that returns once Kafka acknowledged the record, and reads
time from a clock; the faust app (:mod:`services.hub.app`) only wires its tables, topics and agents to
it, and unit tests drive it with dicts and a list.

- Tables: ``victims`` holds a :class:`~services.hub.state.VictimState` per victim pseudonym (the inbox's
  Kafka key), ``suspects`` a :class:`~services.hub.state.SuspectState` per suspect pseudonym, ``links``
  a :class:`~services.hub.state.LinkState` per pseudonym a lead linked (:mod:`services.hub.links`).
- No loss, no duplicate: an alert or breach is sent and acknowledged before the state that records it
  is written. A crash in between re-emits it under the same deterministic event id; the router
  delivers the first and refuses the second (reason ``replay``), so coordinators see it once.
- Inbox records come in batches (:meth:`RecordWorker.on_inbox_batch`, one record is a batch of one):
  each record is opened, its rules applied and what they emit sent, while the states they make are
  held; at the end of the batch Kafka's acknowledgement of every record sent is awaited (all were sent
  before the first is awaited: one round trip a batch, not one a record), one fsync puts every audit
  entry of the batch (each opening, each acknowledged publication) on disk, and only then are the held
  states written to the table and the records acknowledged. So a record is acknowledged by Kafka, and
  an entry is on disk, before the state or the offset that follows from it, as with a wait and an
  fsync per record, for one of each a batch. A record of the hub's own topics
  (suspect, serial trigger, link, tick) settles the same way, alone. One lock keeps the agents'
  handlers from interleaving: none sees, nor overwrites, a state while a batch holds a newer one.
- The registry in force may change while it runs (:mod:`services.bus.registry_follower`): a record
  refused for a reason a newer registry may lift (a rotated key, a new member) is opened again once
  after ``newer_registry`` caught up with the registry topic.
- The clock dates what the hub seals and checks signatures; the rules and supervision use event times
  and tick times only.
- No record stops the hub: a record that fails its checks (reason code of
  :mod:`services.kernel.errors`), unreadable stored state, or a bug met while handling one record
  (``internal``) is counted in ``lianfang_hub_events_rejected_total`` by source and reason, and an
  inbox record goes to the dead-letter topic with the router's headers
  (:mod:`services.kernel.deadletter`); the worker goes on with the next. Only a failed send (a
  :class:`~services.kernel.errors.TransportError`) or a Kafka error propagates: the agent then hands
  the same batch in again (:func:`services.hub.app.until_handled`), which nothing it did can make
  apply twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, Literal, TypeVar

from aiokafka.errors import KafkaError
from pydantic import ValidationError

from schemas.envelope import EnvelopeHeader, SectionName
from schemas.events import join_sections
from services.audit.chain import opened_object
from services.audit.trail import LocalTrail
from services.bus.registry_follower import NewerRegistry, RegistryInForce, in_force, no_newer_registry
from services.hub import links, rules, serial, supervision
from services.hub.alerts import AlertEmission
from services.hub.config import HubConfig
from services.hub.ids import as_time, deterministic_id
from services.hub.metrics import HubMetrics
from services.hub.state import LinkState, Observation, SuspectState, VictimState
from services.kernel import envelope, ids, topics
from services.kernel.clock import Clock
from services.kernel.deadletter import deadletter_headers
from services.kernel.errors import (
    MalformedError,
    ReasonCode,
    RegistryExpiredError,
    TransportError,
    UntrustedInputError,
    frames,
    validation_summary,
)
from services.kernel.keystore import Keystore
from services.kernel.registry import Registry

__all__ = ["REPORT_SUBJECT", "InboxRecord", "RecordWorker", "Send", "Source"]

log = logging.getLogger("lianfang.hub")

Send = Callable[[str, bytes, bytes, list[tuple[str, bytes]] | None], Awaitable[Awaitable[object]]]
"""``send(topic, key, value, headers)``: hands the record to the producer and returns its acknowledgement
to await (Kafka's, or its failure). The worker sends every record of a batch before it waits for the
first acknowledgement, and waits for them all before it settles the batch."""

REPORT_SUBJECT = "p0." + "A" * 43
"""A report is about no victim; its Kafka key is this fixed, well-formed pseudonym."""

Source = Literal["inbox", "suspects", "serial", "links", "clock"]
"""The topic a record came from, as the rejection metric labels it."""

Refusal = tuple[ReasonCode, str]
"""Why a record was refused: its reason code and a line for people (never content)."""

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class InboxRecord:
    """One record of the hub's inbox: its value, key, where it was read, and its Kafka headers (which
    say when the router accepted it)."""

    value: bytes
    key: bytes | None
    partition: int
    offset: int
    headers: Sequence[tuple[str, bytes | None]] | None = None


class RecordWorker:
    """Everything the hub does with one record of its inbox, suspect, serial or clock topic."""

    def __init__(
        self,
        *,
        config: HubConfig,
        names: topics.TopicNames,
        partitions: int,
        report_every_s: float,
        registry: Registry | RegistryInForce,
        keys: Keystore,
        trail: LocalTrail,
        metrics: HubMetrics,
        victims: MutableMapping[bytes, bytes],
        suspects: MutableMapping[bytes, bytes],
        send: Send,
        clock: Clock,
        newer_registry: NewerRegistry = no_newer_registry,
        links: MutableMapping[bytes, bytes] | None = None,
    ) -> None:
        self.config = config
        self.names = names
        self.partitions = partitions
        self.report_every_s = report_every_s
        self.in_force = in_force(registry)
        self.newer_registry = newer_registry
        self.keys = keys
        self.trail = trail  # each opened inbox event and each published alert or report
        self.metrics = metrics
        self.victims = victims
        self.suspects = suspects
        self.links: MutableMapping[bytes, bytes] = links if links is not None else {}
        self.send = send
        self.clock = clock
        self.reported: dict[int, datetime] = {}  # per partition: when the current report period began
        # States of the batch in hand, by table and key, not yet written: (self.victims, key) and so on.
        self._held: dict[tuple[int, bytes], tuple[MutableMapping[bytes, bytes], bytes]] = {}
        # Records the batch in hand sent, in order: topic, Kafka's acknowledgement, what follows it.
        self._unacked: list[tuple[str, asyncio.Future[object], Callable[[], None] | None]] = []
        self._one_at_a_time = asyncio.Lock()  # a batch, a suspect, a trigger or a tick: never two

    # -- opening and sealing

    @property
    def registry(self) -> Registry:
        """The registry in force now."""
        return self.in_force.current

    def open(self, value: bytes, keys_at: datetime | None = None) -> Observation:
        """Verify and open an inbox record (an ``UntrustedInputError`` when it fails); audit the opening.
        ``keys_at``: when the router accepted it (its header), the time the sender's key is judged at."""
        opened = envelope.verify_and_open(
            value, registry=self.registry, now=self.clock(), keystore=self.keys, keys_at=keys_at
        )
        recipients = set().union(*opened.verified.recipients().values())
        triage = _checked_triage(opened.header, opened.sections.get("triage", {}))
        self.trail.append(
            "open_section",
            subject=opened.header.subject,
            object=opened_object(opened),
            durable=False,  # on disk at the end of the batch, before its states and offsets
        )
        return Observation.from_header(opened.header, frozenset(recipients), triage)

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
        registry = self.registry  # one registry for the header and the sealing
        header = envelope.build_header(
            event_id=event_id,
            sender=ids.HUB,
            event_type=event_type,
            schema_version=1,
            at=self.clock(),
            subject=subject,
            category=last.get("category"),
            minor=last.get("minor"),
            town=last.get("town"),
            urgency=urgency,
            audience=sorted(set(audience) - {ids.COORDINATORS, ids.PLC, ids.HUB}),
            refs=refs[-20:],
            registry=registry,
        )
        body = json.loads(json.dumps(payload, default=str))
        content: dict[SectionName, dict[str, Any]] = {"triage": body, "details": body}
        return envelope.seal(header, content, registry=registry, signer=self.keys)

    async def _send(
        self,
        topic: str,
        key: bytes,
        value: bytes,
        headers: list[tuple[str, bytes]] | None,
        *,
        acked: Callable[[], None] | None = None,
    ) -> None:
        """Send; ``acked`` runs once Kafka acknowledged it (:meth:`_acknowledged`, at the end of the
        batch). Any failure is Kafka's (a :class:`TransportError`), never the record's."""
        try:
            ack = await self.send(topic, key, value, headers)
        except Exception as e:
            raise _not_taken(topic, e) from e
        self._unacked.append((topic, asyncio.ensure_future(ack), acked))

    async def _acknowledged(self) -> None:
        """Wait for Kafka's acknowledgement of every record the batch in hand sent, then run what follows
        each acknowledged one, in the order sent. One that failed is a :class:`TransportError` (the first
        such), raised once every acknowledgement is in."""
        unacked, self._unacked = self._unacked, []
        outcomes = await asyncio.gather(*(ack for _, ack, _ in unacked), return_exceptions=True)
        failed: tuple[str, BaseException] | None = None
        for (topic, _, acked), outcome in zip(unacked, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                failed = failed or (topic, outcome)
            elif acked is not None:
                acked()
        if failed is not None:
            raise _not_taken(*failed) from failed[1]

    def _forget_unacked(self) -> None:
        """A batch that failed: its records' acknowledgements are let go (a failure among them is
        retrieved when it comes, not left for asyncio to report); the batch is handled again."""
        for _, ack, _ in self._unacked:
            ack.add_done_callback(_retrieve)
        self._unacked = []

    async def publish(
        self, record: envelope.SealedRecord, *, acked: Callable[[], None] | None = None
    ) -> None:
        """Send a sealed hub event to the events topic; once Kafka acknowledged it, its audit entry is
        written (on disk with the batch's), then ``acked`` runs."""

        def published() -> None:
            self.trail.append(
                "publish", subject=record.header.subject, object=record.header.id, durable=False
            )
            if acked is not None:
                acked()

        await self._send(self.names.events, record.key, record.value, record.headers, acked=published)

    async def emit_alerts(self, state: VictimState, emissions: list[AlertEmission]) -> None:
        for alert in emissions:
            record = self.seal(
                event_type="joint_meeting.alert",
                event_id=alert.event_id,
                subject=alert.subject,
                urgency=alert.urgency,
                audience=list(alert.agencies_involved),
                refs=list(alert.related_events),
                case=state,
                payload=alert.payload(),
            )
            await self.publish(record, acked=partial(self._alert_acked, alert))

    def _alert_acked(self, alert: AlertEmission) -> None:
        for reason in alert.reasons:
            self.metrics.alerts.labels(reason["code"]).inc()
        self.metrics.latency.observe(max(0.0, (self.clock() - alert.updated_at).total_seconds()))

    # -- one record of each topic

    def _read(self, table: MutableMapping[bytes, bytes], key: bytes) -> bytes | None:
        """A table's value for ``key``: the one the batch in hand holds, else the table's."""
        held = self._held.get((id(table), key))
        return held[1] if held is not None else table.get(key)

    def _victim(self, key: bytes) -> VictimState | None:
        raw = self._read(self.victims, key)
        return VictimState.from_json(raw) if raw else None

    def _link(self, key: bytes) -> LinkState | None:
        raw = self._read(self.links, key)
        return LinkState.from_json(raw) if raw else None

    def _hold(self, key: bytes, state: VictimState | LinkState | SuspectState) -> None:
        """A victim's (a link's, a suspect's) new state, written to its table when the batch in hand is
        settled."""
        table = (
            self.links
            if isinstance(state, LinkState)
            else self.suspects
            if isinstance(state, SuspectState)
            else self.victims
        )
        self._held[(id(table), key)] = (table, state.to_json())

    @asynccontextmanager
    async def _batch(self) -> AsyncIterator[None]:
        """One handler's work at a time; at its end Kafka's acknowledgement of every record it sent is
        awaited (they were all sent first, so one round trip covers them), every audit entry it made is
        put on disk (one fsync, in a thread), then the states it held are written. When it fails
        (Kafka), nothing it held is written: its records are not acknowledged, and handled again they
        read the states this attempt read."""
        async with self._one_at_a_time:
            try:
                yield
                await self._acknowledged()
                await asyncio.to_thread(self.trail.sync)
                for (_, key), (table, raw) in self._held.items():
                    table[key] = raw
            finally:
                self._held.clear()
                self._forget_unacked()

    async def _handle(
        self, parse: Callable[[], _T], apply: Callable[[_T], Awaitable[None]]
    ) -> Refusal | None:
        """Parse a record, then apply it; why it was refused, or ``None``. A failed check while parsing
        is the record's reason; anything else but Kafka's failures is a bug met on it (``internal``),
        including stored state that is unreadable. An expired registry is no record's fault: see
        :func:`_registry_expired`."""
        try:
            item = parse()
        except RegistryExpiredError as e:
            raise _registry_expired(e) from e
        except UntrustedInputError as e:
            return e.reason, str(e)
        except (TransportError, KafkaError):
            raise
        except Exception as e:
            return self._bug(e)
        return await self._guard(lambda: apply(item))

    async def _guard(self, work: Callable[[], Awaitable[None]]) -> Refusal | None:
        """Run ``work``; ``internal`` when it meets anything but Kafka's failures, which propagate."""
        try:
            await work()
        except RegistryExpiredError as e:  # sealing an alert under it
            raise _registry_expired(e) from e
        except (TransportError, KafkaError):
            raise
        except Exception as e:
            return self._bug(e)
        return None

    @staticmethod
    def _bug(error: Exception) -> Refusal:
        # Only the type and the frames: an exception's message could quote what the record holds.
        log.error(
            "a bug (%s) while handling a record: refused as internal\n%s", type(error).__name__, frames(error)
        )
        return "internal", f"[internal] {type(error).__name__} while the hub handled this record"

    def _count(self, source: Source, refusal: Refusal, partition: int, offset: int) -> None:
        self.metrics.rejected.labels(source, refusal[0]).inc()
        log.warning("%s record %d@%d refused: %s", source, offset, partition, refusal[0])

    async def on_inbox(
        self,
        value: bytes,
        *,
        key: bytes | None,
        partition: int,
        offset: int,
        headers: Sequence[tuple[str, bytes | None]] | None = None,
    ) -> None:
        """One inbox record: :meth:`on_inbox_batch` of one."""
        await self.on_inbox_batch([InboxRecord(value, key, partition, offset, headers)])

    async def on_inbox_batch(self, records: Sequence[InboxRecord]) -> None:
        """Events routed to the hub, in order: apply each to its victim, publish the alerts, repartition
        suspects; then settle the batch (its audit entries on disk, then its states written). A record
        refused goes to the dead-letter topic with its reason and where it was read. The caller
        acknowledges the records once this returns, never when it raises."""
        async with self._batch():
            for record in records:
                await self._inbox_record(record)

    async def _inbox_record(self, record: InboxRecord) -> None:
        value, key, partition, offset = record.value, record.key, record.partition, record.offset
        keys_at = envelope.accepted_at(record.headers)
        refusal = await self._handle(lambda: self.open(value, keys_at), self._apply)
        if refusal is not None and await self._newer_registry_lifts(refusal):
            refusal = await self._handle(lambda: self.open(value, keys_at), self._apply)
        if refusal is None:
            return
        self._count("inbox", refusal, partition, offset)
        reason, detail = refusal
        headers = deadletter_headers(
            reason,
            detail,
            topic=self.names.inbox(ids.HUB),
            partition=partition,
            offset=offset,
            now=self.clock(),
        )
        await self._send(self.names.deadletter, key or b"", value, headers)

    async def _newer_registry_lifts(self, refusal: Refusal) -> bool:
        """Whether a newer registry came into force that may lift this refusal (a key or member the
        router already knew of): then the record is checked again, once. Catching up blocks: it runs
        in a thread."""
        return await asyncio.to_thread(self.newer_registry, refusal[0])

    async def _apply(self, obs: Observation) -> None:
        key = obs.subject.encode()
        before = self._victim(key)
        why = rules.ignored(before, obs)
        if why is not None:
            self.metrics.ignored.labels(why).inc()
            if why == "before_horizon":
                log.info("event %s happened before its victim's retained window: ignored", obs.event_id)
        state, emissions = rules.observe(before, obs, self.config)
        await self.emit_alerts(state, emissions)
        if state is not before:  # a re-processed event changes nothing
            self._hold(key, state)
        for suspect in serial.suspects_of(obs):
            note = serial.SuspectNote(
                suspect=suspect, victim=obs.subject, lead_id=obs.event_id, time=obs.time
            )
            await self._send(self.names.hub_suspects, suspect.encode(), note.to_json(), None)
        for link in links.notes_for(obs):
            await self._send_link(link)
        forwarded = links.forward(self._link(key), obs)
        if forwarded is not None:
            await self._send_link(forwarded)
        self.metrics.observed.labels(obs.event_type).inc()

    async def _send_link(self, record: links.LinkNote | links.Forwarded) -> None:
        key = record.alias if isinstance(record, links.LinkNote) else record.to
        await self._send(self.names.hub_links, key.encode(), record.to_json(), None)

    async def on_link(self, value: bytes, *, partition: int = 0, offset: int = 0) -> None:
        """A record of the links topic: a pseudonym that belongs with another, or an event forwarded to
        the state of the subject it is linked into (:mod:`services.hub.links`)."""
        async with self._batch():
            refusal = await self._handle(lambda: links.read(value), self._apply_link)
        if refusal is not None:
            self._count("links", refusal, partition, offset)

    async def _apply_link(self, record: links.LinkNote | links.Forwarded) -> None:
        state: LinkState | None
        if isinstance(record, links.LinkNote):
            key = record.alias.encode()
            before = self._link(key)
            state, sends, refused = links.observe_note(before, self._victim(key), record, self.config)
            for send in sends:
                await self._send_link(send)
        else:
            key = record.to.encode()
            before = self._link(key)
            routed, out, refused = links.route_forwarded(before, record, self.config)
            if isinstance(out, links.Forwarded):
                await self._send_link(out)
            elif isinstance(out, Observation):
                await self._apply_linked(out)
            state = routed if routed is not None else before
        if refused is not None:
            self.metrics.links_refused.labels(refused).inc()
            log.info("a link was not followed: %s", refused)
        if state is not None and state is not before:
            self._hold(key, state)

    async def _apply_linked(self, obs: Observation) -> None:
        """An event keyed by a linked pseudonym, applied to this subject's state as well."""
        key = obs.subject.encode()
        before = self._victim(key)
        state, emissions = rules.observe(before, obs, self.config)
        await self.emit_alerts(state, emissions)
        if state is not before:
            self._hold(key, state)
            self.metrics.linked.inc()

    async def on_suspect(self, value: bytes, *, partition: int = 0, offset: int = 0) -> None:
        """A suspect named against a victim: count the suspect's victims, trigger each when serial."""
        async with self._batch():
            refusal = await self._handle(lambda: serial.SuspectNote.from_json(value), self._apply_suspect)
        if refusal is not None:
            self._count("suspects", refusal, partition, offset)

    async def _apply_suspect(self, note: serial.SuspectNote) -> None:
        key = note.suspect.encode()
        raw = self._read(self.suspects, key)
        before = SuspectState.from_json(raw) if raw else None
        state, triggers = serial.observe_suspect(
            before, note.suspect, note.victim, note.lead_id, note.time, self.config
        )
        for trigger in triggers:
            await self._send(self.names.hub_serial, trigger.victim.encode(), trigger.to_json(), None)
        self._hold(key, state)

    async def on_serial(self, value: bytes, *, partition: int = 0, offset: int = 0) -> None:
        """A serial-suspect trigger for one victim: raise or update the victim's alert."""
        async with self._batch():
            refusal = await self._handle(lambda: serial.SerialTrigger.from_json(value), self._apply_serial)
        if refusal is not None:
            self._count("serial", refusal, partition, offset)

    async def _apply_serial(self, trigger: serial.SerialTrigger) -> None:
        key = trigger.victim.encode()
        before = self._victim(key)
        state, emissions = serial.observe_serial(before, trigger, self.config)
        await self.emit_alerts(state, emissions)
        if state is not before:
            self._hold(key, state)

    async def on_tick(self, value: bytes, partition: int, offset: int = 0) -> None:
        """Check this partition's deadlines at the tick's time; refresh the rates; maybe report. A
        victim whose deadlines cannot be checked is counted (``internal``); the others still are."""
        async with self._batch():
            refusal = await self._handle(
                lambda: _tick_time(value), lambda now: self._tick(now, partition, offset)
            )
        if refusal is not None:
            self._count("clock", refusal, partition, offset)

    async def _tick(self, now: datetime, partition: int, offset: int) -> None:
        # One victim's state at a time: the tick used to list every partition's states first and keep
        # each parsed one of its own for the rates, so its peak grew about 1.4 KB a victim (1.4 GB for
        # a million), and malloc kept that peak after it. Now it lists only this partition's keys
        # (read at once, so a rebalance while a breach is sent cannot change the table under an
        # iterator), then reads, checks and counts each state and lets it go.
        tally = supervision.RatesTally(now, self.config)
        open_alerts = 0
        keys = [key for key in self.victims if topics.partition_for(key, self.partitions) == partition]
        for key in keys:
            raw_state = self.victims.get(key)
            if raw_state is None:
                continue

            async def check(key: bytes = key, raw: bytes = raw_state) -> None:
                nonlocal open_alerts
                state = await self._due(key, VictimState.from_json(raw), now)
                tally.add(state)
                open_alerts += state.has_open_alert()

            refusal = await self._guard(check)
            if refusal is not None:
                self._count("clock", refusal, partition, offset)
        rates = tally.rows()
        self.metrics.set_rates(rates, partition)
        self.metrics.open_alerts.labels(str(partition)).set(open_alerts)
        await self.maybe_report(partition, now, rates)

    async def _due(self, key: bytes, state: VictimState, now: datetime) -> VictimState:
        """Publish the victim's breached deadlines; returns the state that records them."""
        state, breaches = supervision.due(state, now, self.config)
        for breach in breaches:
            record = self.seal(
                event_type="supervision.breach",
                event_id=breach.event_id,
                subject=breach.subject,
                urgency=breach.urgency,
                audience=[breach.agency],
                refs=[breach.lead_id],
                case=state,
                payload=breach.payload(),
            )
            await self.publish(record, acked=self.metrics.breaches.labels(breach.deadline_kind).inc)
        if breaches:
            self._hold(key, state)
        return state

    async def maybe_report(self, partition: int, now: datetime, rates: dict[str, Any]) -> None:
        """A signed ``supervision.report`` per partition and period (rates of this partition's cases)."""
        start = self.reported.get(partition)
        if start is None:
            self.reported[partition] = now
            return
        if (now - start).total_seconds() < self.report_every_s or not rates:
            return
        event_id = deterministic_id("report", str(partition), start.isoformat(), now.isoformat())
        record = self.seal(
            event_type="supervision.report",
            event_id=event_id,
            subject=REPORT_SUBJECT,
            urgency="routine",
            audience=[],
            refs=[],
            case=None,
            payload=supervision.report_payload(rates, start, now),
        )

        def period_reported() -> None:  # once Kafka has the report: a batch that fails reports again
            self.reported[partition] = now

        await self.publish(record, acked=period_reported)


def _not_taken(topic: str, error: BaseException) -> TransportError:
    return TransportError(f"{topic} did not take a record: {type(error).__name__}: {error}")


def _retrieve(ack: asyncio.Future[object]) -> None:
    if not ack.cancelled():
        ack.exception()


def _tick_time(value: bytes) -> datetime:
    """A tick's value: an aware ISO 8601 time."""
    try:
        at = as_time(value.decode())
    except UnicodeDecodeError as e:
        raise MalformedError("a tick is an ISO 8601 time in UTF-8") from e
    if at is None:
        raise MalformedError("a tick is an aware ISO 8601 time")
    return at


def _registry_expired(error: RegistryExpiredError) -> TransportError:
    """While the registry in force has expired every record fails to open (and every alert to seal):
    refused, each would be dead-lettered and lost to the hub. Raised as a transport failure instead, the
    agent keeps what it took and handles it again after a pause, until a newer registry is in force,
    as the router pauses routing."""
    return TransportError(f"the registry in force has expired ({error}); waiting for a newer one")


AGREEING: dict[str, str] = {
    "category": "category",
    "minor": "minor",
    "town": "town",
    "victim_pseudonym": "subject",
}
"""Triage fields and the clear-header facts they repeat: the SDK writes both from one event, so they
agree; a sender whose sealed triage says other than its signed header (routed as one category, judged
by the hub's rules as another; keyed by one subject, about another victim) is refused."""


def _checked_triage(header: EnvelopeHeader, triage: Mapping[str, Any]) -> dict[str, Any]:
    """The triage section as its event type's schema has it (:func:`schemas.events.join_sections`), and
    agreeing with the signed header (:data:`AGREEING`), or :class:`MalformedError`. It is the only part
    of an event the hub reads, and its sender wrote it: unchecked, a pseudonym field could carry a name
    onto the hub's own topics in the clear, and a category or town outside the schema would fail every
    alert sealed for that victim afterwards."""
    try:
        checked = join_sections(header.type, triage)
    except ValidationError as e:
        raise MalformedError(f"the triage section {validation_summary(e, whole='(triage)')}") from e
    except KeyError as e:  # a type the registry's policy lets through but the catalogue does not know
        raise MalformedError(f"no triage schema for event type {header.type!r}") from e
    for field, fact in AGREEING.items():
        said, signed = checked.get(field), getattr(header, fact)
        if said is not None and signed is not None and said != signed:
            raise MalformedError(f"the triage's {field} differs from the signed header's {fact}")
    return checked
