"""Outbound webhooks: a participant's inbox pushed to its own system, one signed POST per event.

For each participant with a webhook URL, a task reads the inbox topic in the consumer group
``lianfang-inbox-<participant>.webhook`` (read_committed; within the participant's ACLs), verifies and
opens each event with the participant's keystore and POSTs it as JSON (the same object
``GET /v1/inbox`` returns per event).
The offset is committed only after the receiver answered 2xx; until then the same event is retried
with exponential back-off (capped, with jitter), so events arrive in order and none is skipped.
Delivery is at least once: a crash between the 2xx and the commit sends the event again, with the
same ``Idempotency-Key`` (the event id), which receivers use to ignore the copy.

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

import aiohttp
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from services.audit.chain import opened_object
from services.audit.trail import LocalTrail
from services.bus.security import KafkaSecuritySettings, aiokafka_kwargs, load_security
from services.gateway import httpsig
from services.gateway.inbox import render
from services.gateway.metrics import GatewayMetrics
from services.kernel import envelope
from services.kernel.clock import Clock
from services.kernel.errors import RegistryExpiredError, UntrustedInputError
from services.kernel.keystore import Keystore
from services.kernel.registry import Registry

log = logging.getLogger("lianfang.gateway.webhooks")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential back-off with "equal jitter": half the step fixed, half random, capped."""

    first_s: float = 0.5
    cap_s: float = 60.0

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        step = min(self.cap_s, self.first_s * 2.0 ** min(attempt, 30))
        return step / 2 + float(rand()) * step / 2


signing_kid = envelope.choose_signing_kid
"""The newest of the participant's signing keys that the registry accepts at ``at``."""


class WebhookSender:
    """Pushes one participant's inbox to its webhook URL.

    ``security``: the Kafka login (``None``: the ``LIANFANG_KAFKA_*`` environment).
    """

    def __init__(
        self,
        *,
        url: str,
        bootstrap: str,
        topic: str,
        group_id: str,
        keystore: Keystore,
        registry: Registry,
        metrics: GatewayMetrics,
        clock: Clock,
        backoff: Backoff = Backoff(),
        timeout_s: float = 10.0,
        security: KafkaSecuritySettings | None = None,
        trail: LocalTrail | None = None,
    ) -> None:
        self.url = url
        self.trail = trail
        self.bootstrap = bootstrap
        self.security = security if security is not None else load_security()
        self.topic = topic
        self.group_id = group_id
        self.keys = keystore
        self.participant = keystore.participant
        self.registry = registry
        self.metrics = metrics
        self.clock = clock
        self.backoff = backoff
        self.timeout_s = timeout_s
        self.delivered = 0

    async def run(self) -> None:
        """Deliver until cancelled. Kafka being away is waited out with the same back-off."""
        attempt = 0
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
            except KafkaError as e:
                delay = self.backoff.delay(attempt)
                attempt += 1
                log.warning(
                    "webhook %s: Kafka: %s; retrying in %.1f s", self.participant, type(e).__name__, delay
                )
                await asyncio.sleep(delay)  # back-off before reconnecting
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()

    async def _consume(self, consumer: AIOKafkaConsumer, session: aiohttp.ClientSession) -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=1000, max_records=100)
            for tp, records in batch.items():
                for record in records:
                    await self._deliver_one(session, record.value, record.offset)
                    await self._commit(consumer, tp, record.offset + 1)

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

    async def _deliver_one(self, session: aiohttp.ClientSession, value: bytes, offset: int) -> None:
        await self._wait_for_current_registry()
        try:
            opened = envelope.verify_and_open(
                value, registry=self.registry, now=self.clock(), keystore=self.keys
            )
        except UntrustedInputError as e:
            self.metrics.inbox_rejected.labels(e.reason).inc()
            log.warning(
                "webhook %s: inbox record at offset %d refused: %s", self.participant, offset, e.reason
            )
            return
        if self.trail is not None:
            self.trail.append("open_section", subject=opened.header.subject, object=opened_object(opened))
        body = json.dumps(render(opened), ensure_ascii=False).encode("utf-8")
        event_id = opened.header.id
        attempt = 0
        while True:
            outcome = await self._post(session, body, event_id)
            if outcome is None:
                self.metrics.webhook_delivered.labels(self.participant).inc()
                self.metrics.webhook_backoff.labels(self.participant).set(0)
                self.delivered += 1
                return
            self.metrics.webhook_failures.labels(self.participant, outcome).inc()
            delay = self.backoff.delay(attempt)
            attempt += 1
            self.metrics.webhook_backoff.labels(self.participant).set(delay)
            log.warning(
                "webhook %s: event %s not taken (%s, attempt %d); retrying in %.1f s",
                self.participant, event_id, outcome, attempt, delay,
            )  # fmt: skip
            await asyncio.sleep(delay)  # back-off between attempts

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
                return "status_4xx" if response.status < 500 else "status_5xx"
        except TimeoutError:
            return "timeout"
        except aiohttp.ClientError:
            return "network"
