"""Outbound webhooks: a participant's inbox pushed to its own system, one signed POST per event.

For each participant with a webhook URL, a task reads the inbox topic in the consumer group
``lianfang-inbox-<participant>.webhook`` (read_committed; within the participant's ACLs), verifies and
opens each event with the participant's keystore and POSTs it as JSON (the same object
``GET /v1/inbox`` returns per event).
The offset is committed only after the receiver answered 2xx; until then the same event is retried
with exponential back-off (capped, with jitter), so events arrive in order and none is skipped, but
for one the receiver refuses for good: an answer of :data:`REFUSED_FOR_GOOD` (400, 409, 413, 415,
422) :attr:`WebhookSender.MAX_REFUSALS` times in a row. That one is reported by a problem record on the
dead-letter topic (``receiver_refused``: the operators and the sender learn of it) and passed, so that
one event the receiver cannot take does not hold back every later one for that participant.
After the 2xx the event id is remembered on disk (:class:`~services.store.handed.HandedOut`) before
the commit, so neither a crash before the commit nor a second copy of the event in the inbox sends it
again (such copies are skipped and counted). Only a crash between the POST and the 2xx sends it
again, with the same ``Idempotency-Key`` (the event id), which receivers use to ignore the copy.
An event the participant cannot open is never POSTed: it is counted, logged without content and
reported by a problem record on the dead-letter topic before its offset is committed.

**How a webhook is signed.** With RFC 9421, exactly as agencies sign their requests to the gateway
(see :mod:`services.gateway.httpsig`), but with ``tag="lianfang-webhook"``, covering
``"@method" "@target-uri" "content-digest" "content-type" "idempotency-key"``, and made with the
*receiving participant's own* Ed25519 signing key, which the gateway holds to open the participant's
inbox anyway. The receiver checks it against its own public key in the registry: it proves the POST
came from a holder of that participant's key (its gateway), not from someone who only knows the URL.
A separate gateway key in the registry would let a receiver tell its gateway from its other systems;
this first version does not have one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from services.audit.chain import opened_object
from services.audit.trail import LocalTrail
from services.bus import offsetfetch, registry_follower
from services.bus.deadletter import ProblemWriter, bug_on_record
from services.bus.registry_follower import NewerRegistry, RegistryInForce, in_force, no_newer_registry
from services.bus.security import KafkaSecuritySettings, aiokafka_kwargs, load_security
from services.gateway import httpsig
from services.gateway.inbox import render
from services.gateway.metrics import GatewayMetrics
from services.kernel import envelope
from services.kernel.clock import Clock
from services.kernel.errors import RegistryExpiredError, TransportError, frames
from services.kernel.keystore import Keystore
from services.kernel.registry import Registry
from services.store.handed import HandedOut

log = logging.getLogger("lianfang.gateway.webhooks")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential back-off with "equal jitter": half the step fixed, half random, capped."""

    first_s: float = 0.5
    cap_s: float = 60.0

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        step = min(self.cap_s, self.first_s * 2.0 ** min(attempt, 30))
        return step / 2 + float(rand()) * step / 2


REFUSED_FOR_GOOD = frozenset({400, 409, 413, 415, 422})
"""A receiver's answers that refuse the event itself (its content, its size, its type), which asking
again will not change. Every other 4xx is taken as "later": 401, 403, 404 and 405 say the receiver or
its address is wrong (a key it has not taken yet, a URL mistyped), which is true of every event until
it is put right, and 408, 425 and 429 say so in as many words."""

signing_kid = envelope.choose_signing_kid
"""The newest of the participant's signing keys that the registry accepts at ``at``."""


class WebhookSender:
    """Pushes one participant's inbox to its webhook URL.

    ``security``: the Kafka login (``None``: the ``LIANFANG_KAFKA_*`` environment).
    """

    MAX_REFUSALS = 5
    """An answer of :data:`REFUSED_FOR_GOOD` for one event this many times in a row is the receiver's
    word that it will never take it: the event is reported and passed."""

    def __init__(
        self,
        *,
        url: str,
        bootstrap: str,
        topic: str,
        group_id: str,
        keystore: Keystore,
        registry: Registry | RegistryInForce,
        metrics: GatewayMetrics,
        clock: Clock,
        backoff: Backoff = Backoff(),
        timeout_s: float = 10.0,
        handed: HandedOut,
        problems: ProblemWriter | None,
        security: KafkaSecuritySettings | None = None,
        trail: LocalTrail | None = None,
        newer_registry: NewerRegistry = no_newer_registry,
    ) -> None:
        self.url = url
        self.handed = handed
        self.problems = problems
        self.trail = trail
        self.bootstrap = bootstrap
        self.security = security if security is not None else load_security()
        self.topic = topic
        self.group_id = group_id
        self.keys = keystore
        self.participant = keystore.participant
        self.in_force = in_force(registry)
        self.newer_registry = newer_registry
        self.metrics = metrics
        self.clock = clock
        self.backoff = backoff
        self.timeout_s = timeout_s
        self.delivered = 0

    @property
    def registry(self) -> Registry:
        return self.in_force.current

    async def run(self) -> None:
        """Deliver until cancelled. Kafka being away is waited out with the same back-off."""
        attempt = bugs = 0  # bugs: its back-off is not reset by a reconnection, which the bug follows
        offsetfetch.install()  # committed offsets as the group's coordinator holds them
        while True:
            consumer = AIOKafkaConsumer(
                self.topic,
                bootstrap_servers=self.bootstrap,
                group_id=self.group_id,
                client_id=f"lianfang-gateway-webhook-{self.participant}",
                isolation_level="read_committed",
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                **aiokafka_kwargs(self.security),
            )
            try:
                await consumer.start()
                attempt = 0
                timeout = aiohttp.ClientTimeout(total=self.timeout_s)
                async with aiohttp.ClientSession(timeout=timeout) as session:
                    await self._consume(consumer, session)
            except (KafkaError, TransportError) as e:  # Kafka, or a problem record it did not take
                delay = self.backoff.delay(attempt)
                attempt += 1
                log.warning(
                    "webhook %s: Kafka: %s; retrying in %.1f s", self.participant, type(e).__name__, delay
                )
                await asyncio.sleep(delay)  # back-off before reconnecting
            except Exception as e:  # a bug: the sender must not end silently; what it took is read again
                delay = self.backoff.delay(bugs)
                bugs += 1
                self.metrics.webhook_failures.labels(self.participant, "internal").inc()
                # Only the type and the frames: an exception's message could quote an opened event.
                log.error(
                    "webhook %s: a bug (%s); reading again from the committed offset in %.1f s\n%s",
                    self.participant, type(e).__name__, delay, frames(e),
                )  # fmt: skip
                await asyncio.sleep(delay)
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()

    async def _consume(self, consumer: AIOKafkaConsumer, session: aiohttp.ClientSession) -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=1000, max_records=100)
            for tp, records in batch.items():
                for record in records:
                    try:
                        await self._deliver_one(session, record)
                    except (KafkaError, TransportError):
                        raise
                    except (
                        Exception
                    ) as e:  # a bug met on this record: reported and passed, as the router does
                        await self._bug_on(record, e)
                    await self._commit(consumer, tp, record.offset + 1)

    async def _bug_on(self, record: Any, error: Exception) -> None:
        """Count and log (type and frames only: a message could quote the event) a bug met while
        delivering ``record``, and report the record as ``internal`` on the dead-letter topic."""
        self.metrics.webhook_failures.labels(self.participant, "internal").inc()
        problem = bug_on_record(log, f"webhook {self.participant}", "delivering", record, error)
        await asyncio.to_thread(self._report, problem, record)

    async def _commit(self, consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> None:
        try:
            await consumer.commit({tp: offset})
        except KafkaError as e:
            # The group moved on (a long retry outlasted the poll interval): the event may be sent again.
            log.warning(
                "webhook %s: commit failed (%s); delivery is at least once",
                self.participant,
                type(e).__name__,
            )

    async def _deliver_one(self, session: aiohttp.ClientSession, record: Any) -> None:
        while True:
            await self._wait_for_current_registry()
            try:
                # Catching up with the registry topic blocks: in a thread.
                opened = await asyncio.to_thread(
                    registry_follower.open_or_unreadable,
                    record.value,
                    in_force=self.in_force,
                    newer_registry=self.newer_registry,
                    now=self.clock,
                    keystore=self.keys,
                    headers=record.headers,
                )
                break
            except RegistryExpiredError:  # it expired since the wait: wait again, skip nothing
                continue
        if isinstance(opened, envelope.Unreadable):
            await asyncio.to_thread(self._report, opened, record)
            return
        if self.handed.first(opened.header.id) is not None:
            self.metrics.duplicates_skipped.labels("webhook").inc()
            log.info("webhook %s: event %s was delivered before: skipped", self.participant, opened.header.id)
            return
        if self.trail is not None:
            self.trail.append("open_section", subject=opened.header.subject, object=opened_object(opened))
        body = json.dumps(render(opened), ensure_ascii=False).encode("utf-8")
        event_id = opened.header.id
        attempt = refusals = 0
        while True:
            outcome = await self._post(session, body, event_id)
            if outcome is None:
                await asyncio.to_thread(self.handed.remember, event_id, record.partition, record.offset)
                self.metrics.webhook_delivered.labels(self.participant).inc()
                self.metrics.webhook_backoff.labels(self.participant).set(0)
                self.delivered += 1
                return
            self.metrics.webhook_failures.labels(self.participant, outcome).inc()
            refusals = refusals + 1 if outcome == "refused" else 0
            if refusals >= self.MAX_REFUSALS:
                detail = f"the receiver refused this {opened.header.type} {refusals} times in a row"
                await asyncio.to_thread(
                    self._report, envelope.Unreadable("receiver_refused", detail, opened.header), record
                )
                await asyncio.to_thread(self.handed.remember, event_id, record.partition, record.offset)
                self.metrics.webhook_backoff.labels(self.participant).set(0)
                return
            delay = self.backoff.delay(attempt)
            attempt += 1
            self.metrics.webhook_backoff.labels(self.participant).set(delay)
            log.warning(
                "webhook %s: event %s not taken (%s, attempt %d); retrying in %.1f s",
                self.participant, event_id, outcome, attempt, delay,
            )  # fmt: skip
            await asyncio.sleep(delay)  # back-off between attempts

    def _report(self, problem: envelope.Unreadable, record: Any) -> None:
        """Count, log without content and write the problem record (once per record); a failed write
        raises :class:`TransportError`: nothing is committed and the consumer starts again."""
        if self.handed.reported(record.partition, record.offset):
            return
        self.metrics.inbox_rejected.labels(problem.reason).inc()
        log.warning(
            "webhook %s: the record at %s[%d]@%d is not delivered (%s; event %s from %s); "
            "reported on the dead-letter topic",
            self.participant, record.topic, record.partition, record.offset, problem.reason,
            problem.header.id if problem.header else "-", problem.header.sender if problem.header else "-",
        )  # fmt: skip
        if self.problems is not None:
            self.problems.write(problem, record)
        self.handed.remember_reported(record.partition, record.offset)

    async def _wait_for_current_registry(self) -> None:
        """An expired registry would fail every record: wait (as the router does) rather than skip them."""
        attempt = 0
        while True:
            try:
                self.registry.check_current(self.clock())
                return
            except RegistryExpiredError:
                delay = self.backoff.delay(attempt)
                attempt += 1
                if attempt == 1:
                    log.warning(
                        "webhook %s: the registry has expired; deliveries wait for a newer one",
                        self.participant,
                    )
                self.metrics.webhook_backoff.labels(self.participant).set(delay)
                await asyncio.sleep(delay)  # back-off while the registry is expired

    async def _post(self, session: aiohttp.ClientSession, body: bytes, event_id: str) -> str | None:
        """One attempt: None when the receiver answered 2xx, else a bounded outcome label."""
        now = self.clock()
        headers = {"Content-Type": "application/json", "Idempotency-Key": event_id}
        kid = signing_kid(self.keys, self.registry, now)
        headers.update(
            httpsig.sign_request(
                "POST",
                self.url,
                headers=headers,
                body=body,
                key=self.keys.signing_key(kid),
                keyid=kid,
                created=int(now.timestamp()),
                tag=httpsig.WEBHOOK_TAG,
            )
        )
        try:
            async with session.post(self.url, data=body, headers=headers) as response:
                await response.read()
                if 200 <= response.status < 300:
                    return None
                if response.status in REFUSED_FOR_GOOD:
                    return "refused"
                return "status_4xx" if response.status < 500 else "status_5xx"
        except TimeoutError:
            return "timeout"
        except aiohttp.ClientError:
            return "network"
