"""The HTTP gateway (``lianfang serve gateway``): agency systems in any language publish and read their
inbox over HTTP, authenticated by HTTP Message Signatures made with their registered Ed25519 key.

- ``POST /v1/events``: validate (the same pydantic schemas as the SDK), seal, sign and write to the
  participant's durable outbox (one SDK :class:`~services.sdk.client.Client` per served participant),
  then answer ``202 {"event_id": ...}``. ``Idempotency-Key`` makes retries safe (:mod:`.idempotency`).
- ``GET /v1/inbox?cursor=&limit=``: the participant's opened inbox events after a cursor (:mod:`.inbox`).
- ``GET /v1/openapi.json``: the OpenAPI 3.1 document (:mod:`.openapi`); ``GET /metrics``: Prometheus.
- Outbound webhooks per participant (:mod:`.webhooks`).

Every refusal is RFC 9457 problem+json (:mod:`.problems`) and counted by reason. Checks run cheapest
first and before anything is parsed: declared size (413), signature over the headers (401/403), media
type (415), the body read up to the limit (413), its digest (401), the idempotency key (409), JSON
(400), schema (422), the right to publish the type (403). Request bodies are never logged.

The gateway holds the served participants' private keys (it seals and signs for them), so it runs on
infrastructure those participants trust, one process per spool folder.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import signal
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Annotated, Final, TextIO

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, MultiMapping
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict
from yarl import URL

from services import trust
from services.bus.deadletter import ProblemWriter
from services.bus.freshness import FreshnessInForce, FreshnessMetrics
from services.bus.registry_follower import (
    RegistryFollower,
    RegistryInForce,
    RegistryMetrics,
    follow,
    in_force,
)
from services.bus.security import KafkaSecuritySettings, load_security
from services.bus.settings import ServiceSettings
from services.gateway import httpsig, openapi, processes
from services.gateway.api import Submission, parse_submission, sealing_problem
from services.gateway.idempotency import IdempotencyStore, KeyedLocks
from services.gateway.inbox import InboxReader, decode_cursor, encode_cursor
from services.gateway.metrics import ROUTES, GatewayMetrics
from services.gateway.problems import MEDIA_TYPE, ProblemError
from services.gateway.webhooks import Backoff, WebhookSender
from services.kernel import acls, envelope, topics
from services.kernel.clock import Clock, utcnow
from services.kernel.errors import (
    BadSignatureError,
    KeyExpiredError,
    KeyRevokedError,
    MalformedError,
    ReasonCode,
    RegistryExpiredError,
    TransportError,
    UnknownKeyError,
    UntrustedInputError,
    UsageError,
    frames,
)
from services.kernel.keystore import Keystore
from services.kernel.registry import Registry
from services.pseudonymizer.client import PseudonymizerUnavailableError
from services.sdk import metrics as sdk_metrics
from services.sdk.client import Client
from services.sdk.deferred import StandIn
from services.sdk.outbox import ConflictError, Outbox
from services.store.handed import HandedOut

log = logging.getLogger("lianfang.gateway")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MAX_IDEMPOTENCY_KEY: Final = 255
STALE_RETRY_AFTER_S: Final = 30
"""Retry-After of a 503 for want of a fresh timestamp statement: half the renewal period."""
METHODS: Final = frozenset({"GET", "POST", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS"})
FORWARD_TIMEOUT_S: Final = 30.0
"""How long a slot waits for slot 0's answer to an inbox read it handed over."""
SLOT_METRICS_TIMEOUT_S: Final = 2.0
"""How long a scrape waits for another slot's metrics (Prometheus gives a whole scrape 10 s)."""
SPOOL_LOCK_WAIT_S: Final = 90.0
"""How long a supervised process waits for its slot's spool lock: the slot's earlier process may still
be stopping (its supervisor was killed, and a new one started)."""
_HOP_BY_HOP: Final = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}
)
_NOT_ADDED: Final = frozenset({"Accept", "Accept-Encoding", "User-Agent"})
"""Headers aiohttp's client would add to a forwarded request that the caller did not send."""
_ANSWER_HEADERS: Final = frozenset(
    {"content-type", "cache-control", "retry-after", "accept-signature", "allow"}
)


def _split(value: object) -> object:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


class GatewaySettings(ServiceSettings):
    """Settings of the gateway. Environment variables: ``LIANFANG_GATEWAY_<NAME>``, except the broker
    (``LIANFANG_BOOTSTRAP``), the trust domain (``LIANFANG_HOME``) and the Kafka login
    (``LIANFANG_KAFKA_*``, :mod:`services.bus.security`)."""

    model_config = SettingsConfigDict(env_prefix="LIANFANG_GATEWAY_")

    participants: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="comma-separated participants this gateway serves (holds the keys of); empty: every "
        "participant whose keystore is in LIANFANG_HOME/keys (a demo domain has them all)",
    )
    host: str = Field(default="127.0.0.1", description="address to listen on")
    port: int = Field(default=8080, ge=0, le=65535, description="port to listen on")
    spool_dir: Path = Field(
        default=Path(".run/gateway"), description="outboxes and the idempotency store (one gateway each)"
    )
    processes: int = Field(
        default=1,
        ge=1,
        le=64,
        description="gateway processes on the one port, each with its own interpreter (one process is "
        "bound by its interpreter lock): they share the idempotency store; the first also runs the "
        "webhooks and the inbox reads, which the others hand to it",
    )
    slot: int = Field(
        default=0,
        ge=0,
        description="which of the processes this one is: set by the gateway for the processes it starts",
    )
    supervisor: int = Field(
        default=0,
        ge=0,
        description="the pid of the gateway that started this process as one of several (it listens with "
        "SO_REUSEPORT, serves its slot and stops when that gateway does): set by it; 0 for a gateway",
    )
    topic_prefix: str = Field(default="", description="prefix of every topic name (tests use one per run)")
    public_url: str = Field(
        default="",
        description="the base URL clients use (behind a proxy), for @target-uri; empty: from the request",
    )
    max_body_bytes: int = Field(default=256 * 1024, ge=1024, description="larger bodies get 413")
    max_skew_s: int = Field(default=httpsig.MAX_SKEW_S, ge=1, description="signature `created` window")
    idempotency_ttl_s: float = Field(default=7 * 24 * 3600, gt=0, description="how long keys are kept")
    inbox_max_limit: int = Field(default=500, ge=1, description="most events one inbox page returns")
    workers: int = Field(
        default=64,
        ge=1,
        le=1024,
        description="threads for the blocking part of requests (pseudonyms, sealing, fsyncs): requests "
        "in flight at once share one pseudonymizer request and one fsync of each store only while each "
        "has a thread (Python's default pool has CPUs + 4)",
    )
    webhooks: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), description="comma-separated participant=url pairs: push that inbox to the url"
    )
    webhook_timeout_s: float = Field(default=10.0, gt=0, description="per attempt")
    webhook_max_backoff_s: float = Field(default=60.0, gt=0, description="cap of the retry delay")
    require_freshness: bool = Field(
        default=True,
        description="answer 503 without a fresh timestamp statement; false (logged as a warning) only "
        "where no timestamp service runs",
    )
    kafka_security: KafkaSecuritySettings = Field(
        default_factory=load_security, description="TLS and SASL login, from LIANFANG_KAFKA_*"
    )

    _split_lists = field_validator("participants", "webhooks", mode="before")(_split)

    @model_validator(mode="after")
    def _slot_is_one_of_the_processes(self) -> GatewaySettings:
        if self.slot >= self.processes:
            raise ValueError(f"LIANFANG_GATEWAY_SLOT is {self.slot}, not one of {self.processes} processes")
        if self.processes > 1:
            try:
                processes.check_settings(self.spool_dir, self.processes)
            except UsageError as e:
                raise ValueError(str(e)) from e
        return self

    @model_validator(mode="after")
    def _webhooks_are_served(self) -> GatewaySettings:
        for participant in self.webhook_urls:
            if self.participants and participant not in self.participants:
                raise ValueError(
                    f"a webhook is configured for {participant}, which the gateway does not serve"
                )
        return self

    @property
    def webhook_urls(self) -> dict[str, str]:
        out = {}
        for pair in self.webhooks:
            participant, sep, url = pair.partition("=")
            if not sep or not url.startswith(("http://", "https://")):
                raise ValueError("LIANFANG_GATEWAY_WEBHOOKS is participant=http(s)://url[,participant=url]")
            out[participant.strip()] = url.strip()
        return out


def _lock_spool(spool: Path, *, wait_s: float = 0.0) -> TextIO:
    """Hold an exclusive lock on the spool folder: two gateways draining one outbox would send twice.
    ``wait_s``: how long to keep asking while another process holds it."""
    spool.mkdir(parents=True, exist_ok=True, mode=0o700)
    handle = (spool / "gateway.lock").open("w")
    deadline = time.monotonic() + wait_s
    told = False
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if time.monotonic() < deadline:
                if not told:
                    log.info("waiting up to %.0f s for another process to release %s", wait_s, spool)
                    told = True
                time.sleep(0.2)  # polling a lock another process holds, with a deadline
                continue
            handle.close()
            raise UsageError(
                f"another gateway process is using {spool}; give each gateway its own "
                "LIANFANG_GATEWAY_SPOOL_DIR"
            ) from e
        return handle


class Gateway:
    """A running gateway's state: the registry, one SDK client per served participant, the stores."""

    def __init__(
        self,
        settings: GatewaySettings,
        *,
        registry: Registry | RegistryInForce,
        keystores: Mapping[str, Keystore],
        metrics_registry: CollectorRegistry = REGISTRY,
        clock: Clock = utcnow,
        drain: bool = True,
        freshness: FreshnessInForce | None = None,
    ) -> None:
        if not keystores:
            raise UsageError("the gateway serves no participant: set LIANFANG_GATEWAY_PARTICIPANTS")
        unserved = sorted(set(settings.webhook_urls) - set(keystores))
        if unserved:
            raise UsageError(f"webhooks are configured for {unserved}, whom this gateway does not serve")
        self.settings = settings
        # One registry in force for the gateway and every client it runs; :meth:`follow` keeps it
        # current from the registry topic.
        self.in_force = in_force(registry)
        # None: freshness is not checked (a gateway embedded over a fixed registry); Gateway.open
        # always checks it, unless LIANFANG_GATEWAY_REQUIRE_FRESHNESS=false.
        self.freshness = freshness
        self.follower: RegistryFollower | None = None
        self._key_owner: tuple[Registry, dict[str, str]] | None = None
        self.clock = clock
        self.names = topics.TopicNames(settings.topic_prefix)
        self.metrics = GatewayMetrics(metrics_registry)
        registry = self.in_force.current
        self.slot = settings.slot
        self.folder = processes.slot_dir(settings.spool_dir, settings.slot)
        self._spool_locks = [_lock_spool(self.folder, wait_s=SPOOL_LOCK_WAIT_S if settings.supervisor else 0)]
        try:  # one store of the requests for every slot
            self.idempotency = IdempotencyStore(settings.spool_dir / "idempotency.sqlite", slot=self.slot)
        except BaseException:
            self._spool_locks[0].close()
            raise
        adapter = (
            sdk_metrics.shared() if metrics_registry is REGISTRY else sdk_metrics.SdkMetrics(metrics_registry)
        )

        def client(participant: str, folder: Path) -> Client:
            return Client(
                keystore=keystores[participant],
                registry=self.in_force,
                bootstrap=settings.bootstrap,
                outbox_path=folder / f"{participant}.outbox.sqlite",
                topic_prefix=settings.topic_prefix,
                clock=clock,
                metrics=adapter,
                start=drain,
                security=settings.kafka_security,
            )  # the SDK's outbox gauges (one series per process) sum the clients' outboxes

        self.clients: dict[str, Client] = {}
        self.adopted: list[Client] = []  # slot 0: the clients draining the spools of slots not running
        self.readers: dict[str, InboxReader] = {}
        try:
            for participant in keystores:
                registry.participant(participant)  # refuses one the registry does not list
                self.clients[participant] = client(participant, self.folder)
            if self.slot == 0:
                self._adopt(client)
        except BaseException:
            self.close()
            raise
        self.metrics.watch_outboxes(
            {p: partial(_total_depth, self._outboxes(p)) for p in self.clients},
            {p: partial(_oldest_age, self._outboxes(p)) for p in self.clients},
        )
        self.prune()
        self.locks = KeyedLocks()
        # What reads a consumer group runs in slot 0 alone; the other slots hand inbox reads to it.
        self.readers = {
            p: InboxReader(
                bootstrap=settings.bootstrap,
                topic=self.names.inbox(p),
                keystore=keystores[p],
                registry=self.in_force,
                clock=clock,
                handed=HandedOut(settings.spool_dir / f"{p}.inbox.handed.sqlite"),
                problems=self._problem_writer(p, "gateway-inbox"),
                on_rejected=lambda reason: self.metrics.inbox_rejected.labels(reason).inc(),
                on_duplicate=lambda: self.metrics.duplicates_skipped.labels("inbox").inc(),
                security=settings.kafka_security,
                trail=self.clients[p].trail,
                newer_registry=self.newer_registry,
            )
            for p in (keystores if self.slot == 0 else ())
        }
        self.openapi = json.dumps(
            openapi.document(max_body_bytes=settings.max_body_bytes, server_url=settings.public_url or None),
            ensure_ascii=False,
        ).encode("utf-8")

    @classmethod
    def open(
        cls,
        settings: GatewaySettings,
        *,
        metrics_registry: CollectorRegistry = REGISTRY,
        clock: Clock = utcnow,
    ) -> Gateway:
        """A gateway from the trust-domain folder: the verified registry and each served keystore."""
        domain = trust.open_domain(settings.home)
        registry = RegistryInForce.from_domain(
            domain,
            service="gateway",
            metrics=RegistryMetrics.of(metrics_registry),  # GatewayMetrics.registry_in_force
            clock=clock,
            registry_topic=topics.TopicNames(settings.topic_prefix).registry,
        )
        served = settings.participants or tuple(
            p for p in registry.current.participant_ids() if (settings.home / "keys" / f"{p}.key").exists()
        )
        keystores = {p: domain.keystore(p) for p in served}
        freshness = FreshnessInForce(
            registry,
            required=settings.require_freshness,
            clock=clock,
            metrics=FreshnessMetrics.of(metrics_registry),  # GatewayMetrics.freshness
        )
        return cls(
            settings,
            registry=registry,
            keystores=keystores,
            metrics_registry=metrics_registry,
            clock=clock,
            freshness=freshness,
        )

    def _problem_writer(self, participant: str, reader: str) -> ProblemWriter:
        """Where one of a participant's readers reports inbox records it cannot open."""
        return ProblemWriter(
            bootstrap=self.settings.bootstrap,
            topic=self.names.deadletter,
            reader=f"{participant}/{reader}",
            security=self.settings.kafka_security,
            clock=self.clock,
        )

    @property
    def registry(self) -> Registry:
        """The registry in force now."""
        return self.in_force.current

    def key_owner(self, registry: Registry, kid: str) -> str | None:
        """The participant whose signing key ``kid`` is, in ``registry`` (the one in force)."""
        if self._key_owner is None or self._key_owner[0] is not registry:
            owners = {k.kid: p.id for p in registry.document.participants for k in p.keys if k.use == "sign"}
            self._key_owner = (registry, owners)
        return self._key_owner[1].get(kid)

    def follow(self) -> None:
        """Keep the registry in force current from the registry topic (blocks until caught up with
        it, at most a few seconds)."""
        if self.follower is None and self.in_force.follows:
            self.follower = follow(
                self.in_force,
                bootstrap=self.settings.bootstrap,
                topic=self.names.registry,
                security=self.settings.kafka_security,
                on_statement=None if self.freshness is None else self.freshness.offer,
            )

    def newer_registry(self, reason: ReasonCode) -> bool:
        """Whether a newer registry came into force that may lift a refusal for ``reason`` (see the
        follower)."""
        follower = self.follower
        return follower is not None and follower.newer_registry_for(reason)

    def prune(self) -> int:
        """Forget idempotency keys older than their TTL, and request signatures once they are stale."""
        return self.idempotency.prune(
            keys_older_than_s=self.settings.idempotency_ttl_s,
            signatures_older_than_s=2 * self.settings.max_skew_s,
        )

    def _adopt(self, client: Callable[[str, Path], Client]) -> None:
        """Slot 0: drain the spools of the slots this gateway no longer runs (it ran more processes
        before), and take over their reservations not yet accepted (:meth:`IdempotencyStore.adopt`)."""
        spool = self.settings.spool_dir
        outboxes: dict[tuple[int, str], Client] = {}
        for slot in processes.orphaned_slots(spool, self.settings.processes):
            folder = processes.slot_dir(spool, slot)
            self._spool_locks.append(_lock_spool(folder))  # a process of the bigger gateway still runs?
            for path in sorted(folder.glob("*.outbox.sqlite")):
                participant = path.name.removesuffix(".outbox.sqlite")
                if participant not in self.clients:
                    log.warning(
                        "%s holds an outbox of %s, whom this gateway does not serve: its events wait there",
                        folder, participant,
                    )  # fmt: skip
                    continue
                outboxes[slot, participant] = adopted = client(participant, folder)
                self.adopted.append(adopted)

        def sent(slot: int, participant: str, event_id: str) -> bool | None:
            if participant not in self.clients:  # its outbox stays where it is, unopened: not known
                return None
            adopted = outboxes.get((slot, participant))
            return adopted is not None and adopted.outbox.holds(event_id)

        done = self.idempotency.adopt(self.settings.processes, sent=sent)
        if self.adopted or done.accepted or done.moved:
            log.info(
                "slot 0 drains %d outboxes of slots no longer running; of their requests in progress, "
                "%d were in an outbox (accepted) and %d are slot 0's to complete",
                len(self.adopted), done.accepted, done.moved,
            )  # fmt: skip

    def _outboxes(self, participant: str) -> list[Outbox]:
        """A participant's outboxes: this slot's, and those it drains for slots no longer running."""
        return [c.outbox for c in (self.clients[participant], *self.adopted) if c.participant == participant]

    def close(self) -> None:
        if self.follower is not None:
            self.follower.stop()
            self.follower = None
        for reader in self.readers.values():
            reader.close()
        for client in (*self.clients.values(), *self.adopted):
            client.close()
        self.idempotency.close()
        for lock in self._spool_locks:
            lock.close()

    # -- authentication

    def target_uri(self, request: web.Request) -> str:
        if self.settings.public_url:
            return self.settings.public_url.rstrip("/") + request.raw_path
        return f"{request.scheme}://{request.host}{request.raw_path}"

    def authenticate(
        self, request: web.Request, *, has_body: bool, registry: Registry | None = None
    ) -> tuple[str, httpsig.SignatureInput]:
        """The participant whose registered key signed this request, in ``registry`` (default: the one
        in force); raises :class:`ProblemError`."""
        now = self.clock()
        registry = registry or self.registry
        message = httpsig.Message(request.method, self.target_uri(request), tuple(request.headers.items()))
        required = ["@method", "@target-uri"]
        if has_body:
            required += ["content-digest", "content-type"]
        if "Idempotency-Key" in request.headers:
            required.append("idempotency-key")
        try:
            signature = httpsig.parse_signature(message, tag=httpsig.REQUEST_TAG)
            participant = self.key_owner(registry, signature.keyid)
            if participant is None:
                raise ProblemError(
                    "unknown_key",
                    f"keyid {signature.keyid!r} is not a signing key in registry v{registry.version}",
                )
            public = registry.signing_key(participant, signature.keyid, at=now)
            httpsig.verify_signature(
                message,
                signature,
                public,
                now=now.timestamp(),
                required=required,
                max_skew_s=self.settings.max_skew_s,
            )
        except httpsig.HttpSignatureError as e:
            raise ProblemError(e.problem, e.args[0]) from e
        except KeyRevokedError as e:
            raise ProblemError("key_revoked", e.args[0]) from e
        except KeyExpiredError as e:
            raise ProblemError("key_expired", e.args[0]) from e
        except UnknownKeyError as e:
            raise ProblemError("unknown_key", e.args[0]) from e
        if participant not in self.clients:
            raise ProblemError(
                "not_served", f"this gateway does not serve {participant}; use that agency's gateway"
            )
        return participant, signature

    # -- handlers

    def _check_registry(self, registry: Registry | None = None) -> None:
        """An expired registry, or one not known to be fresh, stops the gateway from sealing and from
        opening (the router pauses too)."""
        try:
            (registry or self.registry).check_current(self.clock())
        except RegistryExpiredError as e:
            raise ProblemError("registry_expired", e.args[0], headers={"Retry-After": "60"}) from e
        if self.freshness is not None and not self.freshness.ok():
            status = self.freshness.status()
            raise ProblemError(
                "registry_stale",
                f"{status.detail}; a new timestamp statement is signed every minute",
                headers={"Retry-After": str(STALE_RETRY_AFTER_S)},
            )

    async def post_event(self, request: web.Request) -> web.Response:
        limit = self.settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise ProblemError(
                "too_large", f"the body is {request.content_length} bytes; the limit is {limit}"
            )
        # One registry for the whole request: the key that signed it is checked, and the event sealed,
        # under the same one, even when a newer registry comes into force meanwhile.
        registry = self.registry
        participant, signature = self.authenticate(request, has_body=True, registry=registry)
        _check_json_media_type(request)
        body = await _read_body(request, limit)
        try:
            httpsig.check_content_digest(_field(request, "Content-Digest"), body)
        except httpsig.HttpSignatureError as e:
            raise ProblemError(e.problem, e.args[0]) from e
        key = _idempotency_key(request, signature)
        digest = hashlib.sha256(body).hexdigest()
        client = self.clients[participant]
        async with self.locks.hold((participant, key)):
            try:
                # One hop to a worker thread for the whole blocking part (lookup, pseudonyms, sealing,
                # fsyncs): each hop is a wake-up of the event loop and of a thread.
                event_id, event_type = await asyncio.to_thread(
                    self._submit, client, key, digest, body, registry
                )
            except UsageError:
                # A registry that came into force during the request (a revocation of the caller's
                # key, say) makes the pseudonymizer client unable to sign for the caller: the caller's
                # problem, told as such (401 key_revoked), not the gateway's (500).
                if self.registry is not registry:
                    self.authenticate(request, has_body=True)
                raise
        if event_type is not None:
            self.metrics.accepted.labels(participant, event_type).inc()
        return _accepted(event_id)

    def _submit(
        self, client: Client, key: str, digest: str, body: bytes, registry: Registry
    ) -> tuple[str, str | None]:
        """The blocking part of ``POST /v1/events``, in a worker thread, in the order the checks run:
        the idempotency key's memory (a conflict, or the first answer again), the registry, the request
        (:meth:`_parse`), then :meth:`_accept`. The event id and, unless it is a replay, the type."""
        participant = client.participant
        remembered = self.idempotency.lookup(participant, key)
        if remembered is not None and remembered.digest != digest:
            raise _conflict()
        if remembered is not None and remembered.accepted:
            self.metrics.idempotent_replays.inc()
            return remembered.event_id, None
        if remembered is not None and remembered.slot != self.slot:
            raise _in_progress(remembered.slot)
        self._check_registry(registry)
        submission = self._parse(client, participant, body, registry)
        reserved = remembered.event_id if remembered is not None else None
        return self._accept(client, key, digest, submission, reserved, registry=registry), submission.type

    def _parse(self, client: Client, participant: str, body: bytes, registry: Registry) -> Submission:
        """Validate the request, asking the pseudonymizer for a lead's pseudonyms. While it is away or
        busy (no answer, 5xx, 429), or while earlier leads of this participant still wait for it, a lead
        is validated with stand-in pseudonyms and accepted to wait in the outbox (202). A refusal of the
        gateway's key, or an answer that does not verify against the registry's key, is a 503 with
        Retry-After, and nothing is accepted; the caller retries with its Idempotency-Key."""
        role = registry.pseudonymizer
        stand_in = StandIn(role.version) if role is not None else None
        try:
            return parse_submission(
                body,
                participant=participant,
                registry=registry,
                pseudonymizer=lambda: client.pseudonymizer,
                metrics=client.metrics,
                stand_in=stand_in if client.leads_waiting() else None,
            )
        except PseudonymizerUnavailableError as e:
            if e.transient and stand_in is not None:
                submission = parse_submission(
                    body,
                    participant=participant,
                    registry=registry,
                    pseudonymizer=lambda: client.pseudonymizer,
                    stand_in=stand_in,
                )
                return dataclasses.replace(submission, why=e.code)
            raise ProblemError(
                "pseudonymizer_unavailable",
                f"the pseudonymizer did not answer ({e.code}); nothing was accepted",
                headers={"Retry-After": str(e.retry_after)},
            ) from e
        except (BadSignatureError, MalformedError) as e:  # the pseudonymizer's answer, not the request
            raise ProblemError(
                "pseudonymizer_unavailable",
                "the pseudonymizer's answer did not verify against the registry's key; nothing was accepted",
                headers={"Retry-After": str(STALE_RETRY_AFTER_S)},
            ) from e

    def _accept(
        self,
        client: Client,
        key: str,
        digest: str,
        submission: Submission,
        reserved: str | None,
        *,
        registry: Registry,
    ) -> str:
        """Reserve an id for the key (durably), seal into the outbox under it, mark it accepted.

        Runs in a worker thread. A crash between any two steps leaves a state the retry completes:
        see :mod:`.idempotency`.
        """
        participant = client.participant
        fresh = reserved is None
        if reserved is None:
            proposed = envelope.new_event_id()
            remembered = self.idempotency.reserve(participant, key, digest, proposed)
            if remembered.event_id != proposed:  # another slot reserved the key since the lookup
                raise _conflict() if remembered.digest != digest else _in_progress(remembered.slot)
            reserved = proposed
        try:
            _publish(client, submission, reserved, registry)
        except ProblemError:
            if fresh:  # nothing reached the outbox: the key is free for a corrected request
                self.idempotency.release(participant, key, reserved)
            raise
        self.idempotency.mark_accepted(participant, key)
        return reserved

    async def get_inbox(self, request: web.Request) -> web.Response:
        if self.slot != 0:
            return await self._forward_inbox(request)
        participant, _signature = self.authenticate(request, has_body=False)
        self._check_registry()
        query = request.rel_url.query
        cursor = query.get("cursor")
        start = decode_cursor(cursor) if cursor else None
        try:
            limit = int(query.get("limit", "100"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= self.settings.inbox_max_limit:
            raise ProblemError(
                "invalid_request", f"limit is an integer from 1 to {self.settings.inbox_max_limit}"
            )
        try:
            page = await asyncio.to_thread(self.readers[participant].read, start, limit=limit)
        except TransportError as e:
            raise ProblemError(
                "unavailable", f"the inbox cannot be read now: {e}", headers={"Retry-After": "5"}
            ) from e
        self.metrics.inbox_served.labels(participant).inc(len(page.events))
        body = {"events": page.events, "cursor": encode_cursor(page.cursor), "more": page.more}
        return web.Response(
            body=json.dumps(body, ensure_ascii=False).encode("utf-8"),
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    async def _forward_inbox(self, request: web.Request) -> web.Response:
        """Hand an inbox read to slot 0, which reads the consumer groups and keeps the record of what
        was handed out, over its control socket; the request as it came (slot 0 checks its signature
        over the same method, target and headers) and slot 0's answer as it is."""
        try:
            async with (
                self._to_slot(0, FORWARD_TIMEOUT_S, auto_decompress=False) as session,
                session.get(
                    URL(f"http://gateway{request.raw_path}", encoded=True),
                    headers=forwarded_headers(request.headers, host=request.host),
                    skip_auto_headers=_NOT_ADDED,
                    allow_redirects=False,
                ) as answer,
            ):
                body = await answer.read()
                kept = {k: v for k, v in answer.headers.items() if k.lower() in _ANSWER_HEADERS}
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise ProblemError(
                "unavailable",
                "the inbox is read by the gateway's process 0, which does not answer now",
                headers={"Retry-After": "5"},
            ) from e
        return web.Response(body=body, status=answer.status, headers=kept)

    async def get_openapi(self, _request: web.Request) -> web.Response:
        return web.Response(body=self.openapi, content_type="application/json")

    async def get_metrics(self, request: web.Request) -> web.Response:
        """This process's metrics; with several processes, every one's, each sample labelled ``slot``."""
        if self.settings.processes == 1:
            return await self.get_own_metrics(request)
        own = await asyncio.to_thread(generate_latest, self.metrics.registry)
        others = [slot for slot in range(self.settings.processes) if slot != self.slot]
        answers = await asyncio.gather(*(self._slot_metrics(slot) for slot in others))
        texts = {slot: text for slot, text in zip(others, answers, strict=True) if text is not None}
        texts[self.slot] = own.decode("utf-8")
        merged = await asyncio.to_thread(processes.merge_metrics, texts)
        return web.Response(body=merged, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def get_own_metrics(self, _request: web.Request) -> web.Response:
        text = await asyncio.to_thread(generate_latest, self.metrics.registry)
        return web.Response(body=text, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _to_slot(self, slot: int, timeout_s: float, *, auto_decompress: bool = True) -> aiohttp.ClientSession:
        """A client session to another slot's control socket."""
        return aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(
                path=str(processes.control_socket(self.settings.spool_dir, slot))
            ),
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            auto_decompress=auto_decompress,
        )

    async def _slot_metrics(self, slot: int) -> str | None:
        """Another slot's own metrics from its control socket; None (left out, logged) when it does not
        answer: starting again, say."""
        try:
            async with (
                self._to_slot(slot, SLOT_METRICS_TIMEOUT_S) as session,
                session.get(f"http://gateway{processes.METRICS_PATH}") as answer,
            ):
                if answer.status == 200:
                    return await answer.text()
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            log.warning("gateway process %d gave no metrics: %s", slot, type(e).__name__)
        return None

    # -- the application

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every request on the port: its problems rendered, and counted."""
        started = time.perf_counter()
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None and resource.canonical in ROUTES else "other"
        response = await self._answer(request, handler, route)
        method = request.method if request.method in METHODS else "other"
        self.metrics.requests.labels(route, method, str(response.status)).inc()
        self.metrics.latency.labels(route).observe(time.perf_counter() - started)
        return response

    @web.middleware
    async def control_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """A request another slot hands over on the control socket: its problems rendered and counted by
        reason here (where they are found), the request itself not (the slot it came to counted it)."""
        return await self._answer(request, handler, "control")

    async def _answer(self, request: web.Request, handler: Handler, route: str) -> web.StreamResponse:
        try:
            response = await handler(request)
        except ProblemError as problem:
            response = self._refuse(problem)
        except web.HTTPException as e:
            code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(e.status)
            if code is None:
                raise
            allow = {"Allow": e.headers["Allow"]} if "Allow" in e.headers else {}
            response = self._refuse(ProblemError(code, e.reason, headers=allow))  # type: ignore[arg-type]
        except Exception as e:
            # Only the type and the frames: an exception's message could hold a submitted value.
            log.error(
                "unhandled %s on %s:\n%s",
                type(e).__name__,
                route,
                frames(e),
            )
            response = self._refuse(
                ProblemError("internal", "the gateway failed; the request was not accepted")
            )
        return response

    def _refuse(self, problem: ProblemError) -> web.Response:
        self.metrics.rejections.labels(problem.code).inc()
        return _render(problem)

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self.middleware], client_max_size=self.settings.max_body_bytes)
        app.router.add_post("/v1/events", self.post_event)
        app.router.add_get("/v1/inbox", self.get_inbox)
        app.router.add_get("/v1/openapi.json", self.get_openapi)
        app.router.add_get("/metrics", self.get_metrics)
        return app

    def control_application(self) -> web.Application:
        """What a slot serves on its control socket, to the other slots: its own metrics, and (slot 0)
        the inbox reads they hand over."""
        app = web.Application(
            middlewares=[self.control_middleware], client_max_size=self.settings.max_body_bytes
        )
        app.router.add_get("/v1/inbox", self.get_inbox)
        app.router.add_get(processes.METRICS_PATH, self.get_own_metrics)
        return app

    def webhook_senders(self) -> list[WebhookSender]:
        if self.slot != 0:
            return []
        return [
            WebhookSender(
                url=url,
                bootstrap=self.settings.bootstrap,
                topic=self.names.inbox(participant),
                group_id=f"{acls.participant_group(participant, self.names)}.webhook",
                keystore=self.clients[participant].keys,
                registry=self.in_force,
                metrics=self.metrics,
                clock=self.clock,
                backoff=Backoff(cap_s=self.settings.webhook_max_backoff_s),
                timeout_s=self.settings.webhook_timeout_s,
                handed=HandedOut(self.settings.spool_dir / f"{participant}.webhook.handed.sqlite"),
                problems=self._problem_writer(participant, "webhook"),
                security=self.settings.kafka_security,
                trail=self.clients[participant].trail,
                newer_registry=self.newer_registry,
            )
            for participant, url in self.settings.webhook_urls.items()
        ]


def _field(request: web.Request, name: str) -> str | None:
    lines = request.headers.getall(name, [])
    return ", ".join(v.strip() for v in lines) if lines else None


def _check_json_media_type(request: web.Request) -> None:
    charset = request.charset
    if request.content_type != "application/json" or (charset is not None and charset.lower() != "utf-8"):
        raise ProblemError(
            "unsupported_media_type", "send the body as Content-Type: application/json (UTF-8)"
        )


async def _read_body(request: web.Request, limit: int) -> bytes:
    """The body, read up to ``limit`` bytes (a chunked body has no Content-Length to check first)."""
    body = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > limit:
            raise ProblemError("too_large", f"the body is over the limit of {limit} bytes")
    return bytes(body)


def _idempotency_key(request: web.Request, signature: httpsig.SignatureInput) -> str:
    keys = request.headers.getall("Idempotency-Key", [])
    if len(keys) > 1:
        raise ProblemError("invalid_request", "send one Idempotency-Key header, not several")
    key = keys[0] if keys else None
    if key is None:
        # No key: the signature itself, so a replay of the same signed request gets the first answer.
        return "sig:" + hashlib.sha256(signature.signature).hexdigest()
    if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY or not all(" " <= c <= "~" for c in key):
        raise ProblemError(
            "invalid_request", f"Idempotency-Key is 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters"
        )
    return "key:" + key


def _publish(client: Client, submission: Submission, event_id: str, registry: Registry) -> None:
    """Seal into the outbox under the reserved id, or store a lead to wait for the pseudonymizer there
    (runs in a worker thread)."""
    try:
        if submission.waiting is not None:
            client.defer_lead(
                submission.waiting,
                urgency=submission.urgency,
                refs=submission.refs,
                event_id=event_id,
                registry=registry,
                why=submission.why,
                counted=True,  # parse_submission counted its identifier problems
            )
            return
        client.publish(
            submission.event,
            context=submission.context,
            urgency=submission.urgency,
            refs=submission.refs,
            event_id=event_id,
            registry=registry,
        )
    except ConflictError:
        pass  # the id is in the outbox already: an attempt before a crash got that far
    except (UntrustedInputError, UsageError) as e:  # the caller's facts: a 4xx, never a 500
        raise sealing_problem(submission, e, client.registry) from e
    except sqlite3.Error as e:
        raise ProblemError("unavailable", "the outbox cannot be written", headers={"Retry-After": "5"}) from e


def _render(problem: ProblemError) -> web.Response:
    headers = dict(problem.headers)
    if problem.status == 401:
        headers["Accept-Signature"] = (
            f'sig1=("@method" "@target-uri" "content-digest" "content-type");alg="ed25519";'
            f'tag="{httpsig.REQUEST_TAG}"'
        )
    response = web.Response(
        body=problem.body(), status=problem.status, content_type=MEDIA_TYPE, headers=headers
    )
    if headers.get("Connection") == "close":
        response.force_close()
    return response


def forwarded_headers(headers: MultiMapping[str], *, host: str) -> CIMultiDict[str]:
    """A request's header lines as slot 0 must see them to check its signature: every line in order
    (RFC 9421 joins repeated lines of a field), without the hop-by-hop ones and those ``Connection``
    names, and with the Host the request was addressed to."""
    named = {
        token.strip().lower() for value in headers.getall("Connection", []) for token in value.split(",")
    }
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        if name.lower() not in _HOP_BY_HOP and name.lower() not in named and name.lower() != "host":
            out.add(name, value)
    out["Host"] = host
    return out


def _total_depth(outboxes: list[Outbox]) -> float:
    return float(sum(o.depth() for o in outboxes))


def _oldest_age(outboxes: list[Outbox]) -> float:
    return max(o.oldest_age() for o in outboxes)


def _conflict() -> ProblemError:
    return ProblemError(
        "idempotency_conflict",
        "this Idempotency-Key was used with a different body; use a new key for a new event",
    )


def _in_progress(slot: int) -> ProblemError:
    """The request's key is reserved by another slot, whose outbox alone can take its event. The
    connection is closed with the answer: the retry's new connection may reach that slot."""
    return ProblemError(
        "in_progress",
        f"process {slot} of this gateway holds this request in progress; retry with the same "
        "Idempotency-Key to get its answer",
        headers={"Retry-After": "1", "Connection": "close"},
    )


def _accepted(event_id: str) -> web.Response:
    return web.Response(
        status=202, body=json.dumps({"event_id": event_id}).encode(), content_type="application/json"
    )


async def serve(settings: GatewaySettings, *, clock: Clock = utcnow) -> None:
    """Run the gateway until SIGTERM or SIGINT."""
    if not settings.bootstrap:
        raise UsageError("no Kafka bootstrap: set LIANFANG_BOOTSTRAP or pass --bootstrap")
    if settings.processes > 1 and not settings.supervisor:
        await processes.supervise(settings.processes, settings.host, settings.port)
        return
    if settings.supervisor:
        processes.stop_with(settings.supervisor)
    gateway = Gateway.open(settings, clock=clock)
    asyncio.get_running_loop().set_default_executor(
        concurrent.futures.ThreadPoolExecutor(settings.workers, thread_name_prefix="lianfang-gateway")
    )
    await asyncio.to_thread(gateway.follow)
    runner = web.AppRunner(gateway.application(), access_log=None, handle_signals=False)
    control = web.AppRunner(gateway.control_application(), access_log=None, handle_signals=False)
    tasks: list[asyncio.Task[None]] = []
    try:
        if settings.processes > 1:  # before the port: another slot may ask for metrics at once
            await control.setup()
            path = processes.control_socket(settings.spool_dir, settings.slot)
            path.unlink(missing_ok=True)  # left by this slot's last process (the slot's lock is held)
            before = os.umask(0o177)  # made 0600, not chmod'ed after (the folder may be wider)
            try:
                await web.UnixSite(control, str(path)).start()
            finally:
                os.umask(before)
        await runner.setup()
        site = web.TCPSite(
            runner, settings.host, settings.port, reuse_address=True, reuse_port=bool(settings.supervisor)
        )
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        tasks = [asyncio.create_task(sender.run()) for sender in gateway.webhook_senders()]
        tasks.append(asyncio.create_task(_prune_forever(gateway)))
        served = sorted(gateway.clients)
        log.info(
            "gateway%s on http://%s:%d (pid %d) for %s; registry v%d; webhooks for %s",
            f" process {settings.slot} of {settings.processes}" if settings.supervisor else "",
            settings.host, settings.port, os.getpid(),
            ", ".join(served) if len(served) <= 8 else f"{len(served)} participants (every keystore in home)",
            gateway.registry.version, ", ".join(sorted(settings.webhook_urls)) or "none",
        )  # fmt: skip
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await runner.cleanup()
        await control.cleanup()
        gateway.close()


async def _prune_forever(gateway: Gateway) -> None:
    while True:
        await asyncio.sleep(600)  # housekeeping every 10 minutes, not a wait for a condition
        removed = await asyncio.to_thread(gateway.prune)
        if removed:
            log.info("forgot %d remembered requests past their keeping time", removed)
