"""The pseudonymization service (``lianfang serve pseudonymizer``): HTTP on loopback by default.

``POST /v1/evaluate`` takes a batch of blinded elements (:mod:`services.pseudonymizer.core`) signed as
the gateway's requests are (RFC 9421, Ed25519, :mod:`services.gateway.httpsig`) with a participant's
signing key from the registry in force; ``GET /v1/key`` gives the public key and version;
``GET /metrics``. Every request, in order: signature (401), rate (429 with Retry-After), body (400/413),
then the evaluation, an audit entry (``pseudonymize``: who asked, how many; never an element) and the
answer. Every refusal is problem+json with a code, counted by code.

The key is read from ``<home>/pseudonymizer/key.json`` (mode 0600, written by ``lianfang init``) and
never leaves this process: no participant, the router included, can compute a pseudonym without asking
here. The service refuses to start with a key the registry does not name (clients verify every answer
against the registry's key), and answers 503 ``key_not_named`` while a newer registry names another.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services import trust
from services.audit.kafka import KafkaSink
from services.audit.trail import LocalTrail, participant_trail
from services.bus.registry_follower import RegistryInForce, follow
from services.bus.security import KafkaSecuritySettings, load_security
from services.gateway import httpsig
from services.kernel import crypto, ids, oprf, topics
from services.kernel.clock import Clock, utcnow
from services.kernel.errors import (
    KeyExpiredError,
    KeyRevokedError,
    LianfangError,
    UnknownKeyError,
    UntrustedInputError,
    UsageError,
)
from services.kernel.registry import Registry
from services.pseudonymizer import core
from services.pseudonymizer.metrics import PseudonymizerMetrics

log = logging.getLogger("lianfang.pseudonymizer")

PROBLEM_TYPE: Final = "application/problem+json"
KEY_FILE: Final = trust.PSEUDONYMIZER_KEY


class PseudonymizerSettings(BaseSettings):
    """Settings of the pseudonymizer. Environment variables: ``LIANFANG_PSEUDONYMIZER_<NAME>``, except the
    broker (``LIANFANG_BOOTSTRAP``) and the trust domain (``LIANFANG_HOME``)."""

    model_config = SettingsConfigDict(env_prefix="LIANFANG_PSEUDONYMIZER_", frozen=True, extra="ignore")

    bootstrap: str = Field(
        default="", validation_alias=AliasChoices("LIANFANG_BOOTSTRAP", "bootstrap"), description="Kafka"
    )
    home: Path = Field(
        default=Path(".lianfang"), validation_alias=AliasChoices("LIANFANG_HOME", "home"), description="trust"
    )
    host: str = Field(default="127.0.0.1", description="address to listen on")
    port: int = Field(default=8090, ge=0, le=65535, description="port to listen on")
    operator: str = Field(
        default=ids.PLC, description="the participant that operates the service and signs its audit trail"
    )
    rate_per_s: float = Field(default=20.0, gt=0, description="evaluations a second per participant")
    burst: int = Field(default=oprf.MAX_BATCH, ge=1, le=oprf.MAX_BATCH, description="bucket size")
    spool_dir: Path = Field(default=Path(".run/pseudonymizer"), description="its audit file")
    topic_prefix: str = Field(default="", description="prefix of every topic name (tests use one per run)")
    public_url: str = Field(default="", description="the base URL clients use, for @target-uri")
    max_skew_s: int = Field(default=httpsig.MAX_SKEW_S, ge=1, description="signature `created` window")
    kafka_security: KafkaSecuritySettings = Field(
        default_factory=load_security, description="TLS and SASL login, from LIANFANG_KAFKA_*"
    )


class RefusalError(LianfangError):
    """A request the service refuses: its HTTP status, problem code (the rejection metric's label), and a
    detail that never repeats what was sent."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers or {}


def load_key(home: Path, registry: Registry) -> core.PseudonymizerKey:
    """The key in ``home/pseudonymizer/key.json``, which must be the one ``registry`` names.

    A registry that names no pseudonymizer (a domain from before it) gets a key created on first start,
    as before, with a warning: no client of such a domain asks this service.
    """
    path = home / KEY_FILE
    if registry.pseudonymizer is None:
        log.warning(
            "registry v%d names no pseudonymizer: clients of this domain still use its sealed pseudonym "
            "key and will not ask this service",
            registry.version,
        )
        if not path.exists():
            return trust.create_pseudonymizer_key(home)
        return core.PseudonymizerKey.from_json(path.read_bytes())
    if not path.exists():
        raise UsageError(
            f"no pseudonymizer key at {path}: `lianfang init` writes it beside the registry that names "
            "its public key; copy it there (mode 0600) from where the domain was created"
        )
    key = core.PseudonymizerKey.from_json(path.read_bytes())
    key.check_named_by(registry.pseudonymizer)
    return key


class Pseudonymizer:
    def __init__(
        self,
        settings: PseudonymizerSettings,
        *,
        key: core.PseudonymizerKey,
        registry: Registry | RegistryInForce,
        trail: LocalTrail | None,
        metrics_registry: CollectorRegistry | None = None,
        clock: Clock = utcnow,
    ) -> None:
        self.settings = settings
        self.key = key
        self.in_force = registry if isinstance(registry, RegistryInForce) else RegistryInForce(registry)
        self.trail = trail
        self.metrics = PseudonymizerMetrics(metrics_registry or CollectorRegistry())
        self.clock = clock
        self.limiter = core.RateLimiter(rate=settings.rate_per_s, burst=settings.burst)

    def authenticate(self, request: web.Request) -> str:
        registry = self.in_force.current
        now = self.clock()
        target = (
            self.settings.public_url.rstrip("/") or f"{request.scheme}://{request.host}"
        ) + request.raw_path
        message = httpsig.Message(request.method, target, tuple(request.headers.items()))
        try:
            signature = httpsig.parse_signature(message, tag=httpsig.REQUEST_TAG)
            owner = next(
                (p.id for p in registry.document.participants for k in p.keys if k.kid == signature.keyid),
                None,
            )
            if owner is None:
                raise RefusalError(
                    401, "unknown_key", "the key id is not a signing key of the registry in force"
                )
            public = registry.signing_key(owner, signature.keyid, at=now)
            httpsig.verify_signature(
                message,
                signature,
                public,
                now=now.timestamp(),
                required=["@method", "@target-uri", "content-digest", "content-type"],
                max_skew_s=self.settings.max_skew_s,
            )
        except httpsig.HttpSignatureError as e:
            raise RefusalError(401, e.problem, e.args[0]) from e
        except (KeyRevokedError, KeyExpiredError, UnknownKeyError) as e:
            raise RefusalError(401, e.reason, e.args[0]) from e
        return owner

    def check_key_named(self) -> None:
        """Answer 503 while the registry in force names another key: every client would refuse the
        answer, and the operator must install the key the roots named."""
        role = self.in_force.current.pseudonymizer
        if role is None:
            return  # an older domain: nobody verifies against a registry key
        try:
            self.key.check_named_by(role)
        except UsageError as e:
            log.error("%s", e)
            raise RefusalError(
                503,
                "key_not_named",
                "the registry in force names another pseudonymizer key than this service holds",
                {"Retry-After": "60"},
            ) from e

    async def post_evaluate(self, request: web.Request) -> web.Response:
        participant = self.authenticate(request)
        self.check_key_named()
        body = await request.content.read(core.MAX_BODY_BYTES + 1)
        try:
            httpsig.check_content_digest(request.headers.get("Content-Digest"), body)
            parsed = core.EvaluateRequest.from_bytes(body)
            wait = self.limiter.take(participant, len(parsed.elements), time.monotonic())
        except httpsig.HttpSignatureError as e:
            raise RefusalError(401, e.problem, e.args[0]) from e
        except UntrustedInputError as e:
            raise RefusalError(413 if e.reason == "too_large" else 400, e.reason, e.args[0]) from e
        if wait > 0:
            raise RefusalError(
                429,
                "rate_limited",
                f"{participant} asked for more evaluations than its rate allows "
                f"({self.settings.rate_per_s:g}/s, bursts of {self.settings.burst}); retry later",
                {"Retry-After": str(max(1, int(wait + 0.999)))},
            )
        answer = await asyncio.to_thread(core.answer, self.key, parsed)
        if self.trail is not None:
            # No lock of our own: the trail serializes appends and lets concurrent ones share one fsync
            # (group commit); holding a lock across the fsync would make every request wait for the last.
            await asyncio.to_thread(
                self.trail.append,
                "pseudonymize",
                object=f"oprf:{secrets.token_hex(8)}:n={len(parsed.elements)}",
                to=[participant],
            )
        self.metrics.evaluations.labels(participant).inc(len(parsed.elements))
        self.metrics.batch.observe(len(parsed.elements))
        return web.json_response(answer)

    async def get_key(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {
                "suite": oprf.IDENTIFIER.decode(),
                "mode": core.MODE,
                "version": self.key.version,
                "public": oprf_public_b64(self.key),
            }
        )

    async def get_metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry), content_type="text/plain")

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            response = await handler(request)
        except RefusalError as e:
            self.metrics.rejections.labels(e.code).inc()
            body = {
                "type": f"https://lianfang.example/problems/{e.code}",
                "title": e.code,
                "status": e.status,
                "detail": e.detail,
            }
            response = web.Response(
                body=json.dumps(body).encode(), status=e.status, content_type=PROBLEM_TYPE, headers=e.headers
            )
        except web.HTTPException as e:
            response = e
        self.metrics.requests.labels(str(response.status)).inc()
        return response

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self.middleware], client_max_size=core.MAX_BODY_BYTES)
        app.router.add_post("/v1/evaluate", self.post_evaluate)
        app.router.add_get("/v1/key", self.get_key)
        app.router.add_get("/metrics", self.get_metrics)
        return app


def oprf_public_b64(key: core.PseudonymizerKey) -> str:
    return crypto.b64e(key.key.public)


async def serve(settings: PseudonymizerSettings, *, clock: Clock = utcnow) -> None:
    """Run the pseudonymizer until SIGTERM or SIGINT."""
    domain = trust.open_domain(settings.home)
    in_force = RegistryInForce.from_domain(domain, service="pseudonymizer", metrics=None)
    names = topics.TopicNames(settings.topic_prefix)
    sink = KafkaSink(settings.bootstrap, names.audit, settings.kafka_security) if settings.bootstrap else None
    try:
        keystore = domain.keystore(settings.operator)
    except UsageError as e:
        raise UsageError(f"the pseudonymizer signs its audit trail as {settings.operator}: {e}") from e
    trail = participant_trail(
        settings.spool_dir / "audit", keystore, in_force.current, "pseudonymizer", ship=sink, clock=clock
    )
    service = Pseudonymizer(
        settings, key=load_key(settings.home, in_force.current), registry=in_force, trail=trail, clock=clock
    )
    follower = (
        follow(in_force, bootstrap=settings.bootstrap, topic=names.registry, security=settings.kafka_security)
        if settings.bootstrap
        else None
    )
    runner = web.AppRunner(service.application(), access_log=None, handle_signals=False)
    try:
        await runner.setup()
        await web.TCPSite(runner, settings.host, settings.port, reuse_address=True).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info(
            "pseudonymizer on http://%s:%d (pid %d), key v%d, %g evaluations/s per participant",
            settings.host, settings.port, os.getpid(), service.key.version, settings.rate_per_s,
        )  # fmt: skip
        await stop.wait()
    finally:
        await runner.cleanup()
        if follower is not None:
            follower.stop()
        with contextlib.suppress(Exception):
            trail.close()
