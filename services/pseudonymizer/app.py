"""The pseudonymization service (``lianfang serve pseudonymizer``): HTTP on loopback by default.

``POST /v1/evaluate`` takes a batch of blinded elements (:mod:`services.pseudonymizer.core`) signed as
the gateway's requests are (RFC 9421, Ed25519, :mod:`services.gateway.httpsig`) with a participant's
signing key from the registry in force; ``GET /v1/key`` gives the public key and version;
``GET /metrics``. Every request, in order: signature (401), rate (429 with Retry-After), body (400/413),
then the evaluation, an audit entry (``pseudonymize``: who asked, how many; never an element) and the
answer. Every refusal is problem+json with a code, counted by code.

The keys are read from ``<home>/pseudonymizer/`` (mode 0600: ``key.json`` written by ``lianfang init``,
``key.v<N>.json`` by ``lianfang pseudonymizer rotate``) and never leave this process: no participant, the
router included, can compute a pseudonym without asking here. The service refuses to start without the
keys the registry names (clients verify every answer against the registry's keys), and answers 503
``key_not_named`` for a version the registry in force does not name or it does not hold. During a key
transition it serves the current and the previous key, one batch under both when asked; once the registry
in force no longer names a key, the key's file is overwritten, flushed and unlinked and the key dropped
(:mod:`services.pseudonymizer.keys`), which is logged and audited by version.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import secrets
import signal
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Final

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from services import trust
from services.audit.kafka import KafkaSink
from services.audit.trail import LocalTrail, participant_trail
from services.bus.registry_follower import RegistryInForce, follow
from services.bus.security import KafkaSecuritySettings, load_security
from services.bus.settings import ServiceSettings
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
    frames,
    validation_summary,
)
from services.kernel.registry import Registry
from services.pseudonymizer import core
from services.pseudonymizer.keys import KeyFolder, destroy_file
from services.pseudonymizer.metrics import PseudonymizerMetrics

log = logging.getLogger("lianfang.pseudonymizer")

PROBLEM_TYPE: Final = "application/problem+json"
KEY_FILE: Final = trust.PSEUDONYMIZER_KEY


class PseudonymizerSettings(ServiceSettings):
    """Settings of the pseudonymizer. Environment variables: ``LIANFANG_PSEUDONYMIZER_<NAME>``, except the
    broker (``LIANFANG_BOOTSTRAP``) and the trust domain (``LIANFANG_HOME``)."""

    model_config = SettingsConfigDict(env_prefix="LIANFANG_PSEUDONYMIZER_")

    host: str = Field(default="127.0.0.1", description="address to listen on")
    port: int = Field(default=8090, ge=0, le=65535, description="port to listen on")
    operator: str = Field(
        default=ids.PLC, description="the participant that operates the service and signs its audit trail"
    )
    rate_per_s: float = Field(default=20.0, gt=0, description="evaluations a second per participant")
    rates: Annotated[Mapping[str, float], NoDecode] = Field(
        default_factory=dict,
        description="comma-separated participant=evaluations_per_second: a rate of its own, in place of "
        "rate_per_s, for each participant named (an importer, for the time of an import); the burst is "
        "the same for all",
    )
    burst: int = Field(default=oprf.MAX_BATCH, ge=1, le=oprf.MAX_BATCH, description="bucket size")
    spool_dir: Path = Field(default=Path(".run/pseudonymizer"), description="its audit file")
    topic_prefix: str = Field(default="", description="prefix of every topic name (tests use one per run)")
    public_url: str = Field(default="", description="the base URL clients use, for @target-uri")
    max_skew_s: int = Field(default=httpsig.MAX_SKEW_S, ge=1, description="signature `created` window")
    kafka_security: KafkaSecuritySettings = Field(
        default_factory=load_security, description="TLS and SASL login, from LIANFANG_KAFKA_*"
    )

    @field_validator("rates", mode="before")
    @classmethod
    def _parse_rates(cls, value: object) -> object:
        return core.parse_rates(value) if isinstance(value, str) else value

    @classmethod
    def from_env(cls) -> PseudonymizerSettings:
        """The settings from the environment; a bad one is a ``UsageError`` that names it."""
        try:
            return cls()
        except ValidationError as e:
            summary = validation_summary(e).replace("Value error, ", "")
            raise UsageError(f"the pseudonymizer's settings: {summary}") from e


class RefusalError(LianfangError):
    """A request the service refuses: its HTTP status, problem code (the rejection metric's label), and a
    detail that never repeats what was sent."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers or {}


def load_key(home: Path, registry: Registry) -> core.PseudonymizerKey:
    """The current key of :func:`load_keys`."""
    keys = load_keys(home, registry)
    role = registry.pseudonymizer
    return keys[role.version] if role is not None else keys[max(keys)]


def load_keys(home: Path, registry: Registry) -> dict[int, core.PseudonymizerKey]:
    """The keys in ``home/pseudonymizer/`` that ``registry`` names (the current one and, during a
    transition, the previous one), each checked against the registry's public key.

    A registry that names no pseudonymizer (a domain from before it) gets a key created on first start,
    as before, with a warning: no client of such a domain asks this service.
    """
    path = home / KEY_FILE
    role = registry.pseudonymizer
    if role is None:
        log.warning(
            "registry v%d names no pseudonymizer: clients of this domain still use its sealed pseudonym "
            "key and will not ask this service",
            registry.version,
        )
        if not path.exists():
            key = trust.create_pseudonymizer_key(home)
            return {key.version: key}
        key = core.PseudonymizerKey.from_json(path.read_bytes())
        return {key.version: key}
    found = {version: key for version, (_, key) in KeyFolder(path.parent).read().items()}
    if not found:
        raise UsageError(
            f"no pseudonymizer key at {path}: `lianfang init` writes it beside the registry that names "
            "its public key; copy it there (mode 0600) from where the domain was created"
        )
    keys: dict[int, core.PseudonymizerKey] = {}
    for version in core.named_versions(role):
        named = found.get(version)
        if named is None:
            held = ", ".join(f"v{v}" for v in sorted(found))
            raise UsageError(
                f"registry v{registry.version} names pseudonymizer key v{version}, which {path.parent} "
                f"does not hold (it holds {held}): copy the key file (mode 0600) from where the key was "
                "created (`lianfang pseudonymizer rotate` writes key.v<N>.json)"
            )
        named.check_named_by_version(role, version)
        keys[version] = named
    return keys


class Pseudonymizer:
    def __init__(
        self,
        settings: PseudonymizerSettings,
        *,
        key: core.PseudonymizerKey | Mapping[int, core.PseudonymizerKey],
        registry: Registry | RegistryInForce,
        trail: LocalTrail | None,
        metrics: PseudonymizerMetrics | None = None,
        clock: Clock = utcnow,
        key_folder: Path | None = None,
    ) -> None:
        """``key``: the key, or the keys by version, the registry names; ``key_folder`` (the service's
        ``HOME/pseudonymizer``) is where keys newly named are read from and retired ones destroyed."""
        self.settings = settings
        self.keys = {key.version: key} if isinstance(key, core.PseudonymizerKey) else dict(key)
        self.key_folder = KeyFolder(key_folder) if key_folder is not None else None
        self.in_force = registry if isinstance(registry, RegistryInForce) else RegistryInForce(registry)
        self.trail = trail
        self.metrics = metrics or PseudonymizerMetrics(CollectorRegistry())
        self.clock = clock
        self.limiter = core.RateLimiter(rate=settings.rate_per_s, burst=settings.burst, rates=settings.rates)
        self.metrics.default_rate.set(settings.rate_per_s)
        for participant, rate in settings.rates.items():
            self.metrics.rate.labels(participant).set(rate)
        self._unmatched: list[str] | None = None
        self._reconciled: int | None = None
        self.reconcile()
        self.check_rates()

    @property
    def key(self) -> core.PseudonymizerKey:
        """The current key: the one the registry in force names, else the newest held."""
        role = self.in_force.current.pseudonymizer
        if role is not None and role.version in self.keys:
            return self.keys[role.version]
        return self.keys[max(self.keys)]

    def reconcile(self) -> None:
        """Bring the keys held in line with the registry in force, once per registry version (until it
        succeeds): read the keys it newly names from the folder, and destroy those below every version
        it names."""
        registry = self.in_force.current
        if registry.version == self._reconciled:
            return
        role = registry.pseudonymizer
        if role is None:
            self._reconciled = registry.version
            return
        on_disk = self.key_folder.read() if self.key_folder is not None else {}
        for version in core.named_versions(role):
            if version not in self.keys and version in on_disk:
                key = on_disk[version][1]
                try:
                    key.check_named_by_version(role, version)
                except UsageError as e:
                    log.error("%s", e)
                    continue
                self.keys[version] = key
                log.info("pseudonymizer key v%d loaded: registry v%d names it", version, registry.version)
        for version in core.retired_versions({*self.keys, *on_disk}, role):
            self.destroy(version, registry.version)
        self.metrics.key_version.labels("current").set(role.version if role.version in self.keys else 0)
        previous = role.previous.version if role.previous is not None else None
        self.metrics.key_version.labels("previous").set(
            previous if previous is not None and previous in self.keys else 0
        )
        self._reconciled = registry.version

    def try_reconcile(self) -> None:
        """:meth:`reconcile`, logging a failure (a folder it cannot read) instead of raising: the service
        goes on with the keys it holds and tries again at the next request or second; then
        :meth:`check_rates`."""
        try:
            self.reconcile()
        except (OSError, LianfangError) as e:
            log.error("could not bring the pseudonymizer's keys in line with the registry: %s", e)
        self.check_rates()

    def check_rates(self) -> None:
        """Warn, once each time the set changes, of rates given to names the registry in force does not
        name (a typo, or a participant added or removed since): such a rate is kept, unused, and applies
        as soon as a registry names the participant. Their number is a gauge."""
        unmatched = core.unmatched_rates(self.settings.rates, self.in_force.current.participant_ids())
        if unmatched == self._unmatched:
            return
        self._unmatched = unmatched
        self.metrics.rates_unmatched.set(len(unmatched))
        if unmatched:
            log.warning(
                "LIANFANG_PSEUDONYMIZER_RATES gives a rate to %s, which registry v%d does not name: "
                "unused until a registry names it (check the spelling against `lianfang registry show`)",
                ", ".join(unmatched), self.in_force.current.version,
            )  # fmt: skip

    def destroy(self, version: int, registry_version: int) -> None:
        """Destroy key ``version``: its files overwritten, flushed and unlinked, the key dropped from
        memory. Logged and audited by version only."""
        self.keys.pop(version, None)
        outcome = "destroyed"
        for path in self.key_folder.paths_of(version) if self.key_folder is not None else []:
            try:
                destroy_file(path)
            except OSError as e:
                outcome = "file_kept"
                log.error(
                    "pseudonymizer key v%d is out of use but its file %s could not be destroyed (%s): "
                    "remove it by hand (a read-only mount: remove it from where it is mounted from)",
                    version, path, e.strerror or e,
                )  # fmt: skip
        self.metrics.keys_destroyed.labels(outcome).inc()
        log.warning(
            "pseudonymizer key v%d destroyed (%s): registry v%d no longer names it; evaluations under it "
            "are refused from now on",
            version, "file overwritten and unlinked" if outcome == "destroyed" else "dropped from memory",
            registry_version,
        )  # fmt: skip
        if self.trail is not None:
            self.trail.append("key_change", object=f"pseudonymizer-key.v{version}.destroyed")

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

    def keys_for(
        self, request: core.EvaluateRequest
    ) -> tuple[core.PseudonymizerKey, core.PseudonymizerKey | None]:
        """The keys to evaluate ``request`` under: the version it asks for (default: the current one)
        and the previous one if asked. A version the registry in force does not name, or this service
        does not hold, is 503 ``key_not_named``: a client whose registry differs (a rotation under way,
        a key file not yet installed) retries; every answer under another key would be refused."""
        registry = self.in_force.current
        role = registry.pseudonymizer
        if role is None:  # an older domain: nobody verifies against a registry key
            if request.version is not None and request.version != self.key.version:
                raise _not_named(f"the service holds key v{self.key.version}")
            return self.key, None
        named = core.named_versions(role)
        wanted = request.version if request.version is not None else role.version
        key = self.keys.get(wanted)
        if wanted not in named or key is None:
            log.error(
                "asked for pseudonymizer key v%d; registry v%d names %s and this service holds %s",
                wanted, registry.version, _versions(named), _versions(self.keys),
            )  # fmt: skip
            raise _not_named("the registry in force does not name that key, or this service lacks it")
        if request.previous is None:
            return key, None
        previous = self.keys.get(request.previous)
        if role.previous is None or request.previous != role.previous.version or previous is None:
            raise _not_named("the registry in force names no such previous key, or it was destroyed")
        return key, previous

    async def post_evaluate(self, request: web.Request) -> web.Response:
        participant = self.authenticate(request)
        self.try_reconcile()
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
                f"({self.limiter.rate_of(participant):g}/s, bursts of {self.settings.burst}); retry later",
                {"Retry-After": str(max(1, int(wait + 0.999)))},
            )
        key, previous = self.keys_for(parsed)
        answer = await asyncio.to_thread(functools.partial(core.answer, key, parsed, previous=previous))
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
        self.try_reconcile()
        doc: dict[str, object] = {
            "suite": oprf.IDENTIFIER.decode(),
            "mode": core.MODE,
            "version": self.key.version,
            "public": oprf_public_b64(self.key),
        }
        role = self.in_force.current.pseudonymizer
        if role is not None and role.previous is not None and role.previous.version in self.keys:
            previous = self.keys[role.previous.version]
            doc["previous"] = {"version": previous.version, "public": oprf_public_b64(previous)}
        return web.json_response(doc)

    async def get_metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry), content_type="text/plain")

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            response = await handler(request)
        except RefusalError as e:
            response = self._refuse(e)
        except web.HTTPException as e:
            response = e
        except Exception as e:
            # Only the type and the frames: an exception's message could quote what was asked.
            log.error(
                "unhandled %s on %s:\n%s",
                type(e).__name__,
                request.path,
                frames(e),
            )
            response = self._refuse(
                RefusalError(500, "internal", "the pseudonymizer failed; nothing was evaluated")
            )
        self.metrics.requests.labels(str(response.status)).inc()
        return response

    def _refuse(self, e: RefusalError) -> web.Response:
        """A problem document for ``e``, counted by its code."""
        self.metrics.rejections.labels(e.code).inc()
        body = {
            "type": f"https://lianfang.example/problems/{e.code}",
            "title": e.code,
            "status": e.status,
            "detail": e.detail,
        }
        return web.Response(
            body=json.dumps(body).encode(), status=e.status, content_type=PROBLEM_TYPE, headers=e.headers
        )

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self.middleware], client_max_size=core.MAX_BODY_BYTES)
        app.router.add_post("/v1/evaluate", self.post_evaluate)
        app.router.add_get("/v1/key", self.get_key)
        app.router.add_get("/metrics", self.get_metrics)
        return app


def oprf_public_b64(key: core.PseudonymizerKey) -> str:
    return crypto.b64e(key.key.public)


def _not_named(detail: str) -> RefusalError:
    return RefusalError(503, "key_not_named", detail, {"Retry-After": "5"})


def _versions(versions: Iterable[int]) -> str:
    return ", ".join(f"v{v}" for v in sorted(versions)) or "none"


async def _reconcile_every_second(service: Pseudonymizer) -> None:
    """Keys newly named are loaded, and retired ones destroyed, within a second of a registry taking
    effect, whether or not anyone asks meanwhile."""
    while True:
        await asyncio.sleep(1.0)  # the period of the check, not a wait for something
        service.try_reconcile()


async def serve(settings: PseudonymizerSettings, *, clock: Clock = utcnow) -> None:
    """Run the pseudonymizer until SIGTERM or SIGINT."""
    domain = trust.open_domain(settings.home)
    metrics = PseudonymizerMetrics(CollectorRegistry())
    in_force = RegistryInForce.from_domain(domain, service="pseudonymizer", metrics=metrics.registry_in_force)
    names = topics.TopicNames(settings.topic_prefix)
    sink = KafkaSink(settings.bootstrap, names.audit, settings.kafka_security) if settings.bootstrap else None
    try:
        keystore = domain.keystore(settings.operator)
    except UsageError as e:
        raise UsageError(f"the pseudonymizer signs its audit trail as {settings.operator}: {e}") from e
    trail = participant_trail(
        settings.spool_dir / "audit",
        keystore,
        in_force.current,
        "pseudonymizer",
        ship=sink,
        clock=clock,
        metrics=metrics.audit,
    )
    service = Pseudonymizer(
        settings,
        key=load_keys(settings.home, in_force.current),
        registry=in_force,
        trail=trail,
        metrics=metrics,
        clock=clock,
        key_folder=settings.home / KEY_FILE.parent,
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
        keeper = asyncio.create_task(_reconcile_every_second(service))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info(
            "pseudonymizer on http://%s:%d (pid %d), keys %s (v%d current), %g evaluations/s per "
            "participant, bursts of %d",
            settings.host, settings.port, os.getpid(), _versions(service.keys), service.key.version,
            settings.rate_per_s, settings.burst,
        )  # fmt: skip
        for participant, rate in sorted(settings.rates.items()):
            log.warning(
                "%s has a rate of its own: %g evaluations/s (default %g); a dictionary of %s guesses "
                "takes it %s (LIANFANG_PSEUDONYMIZER_RATES; take it back when its import is done)",
                participant, rate, settings.rate_per_s, f"{core.DICTIONARY_GUESSES:,}",
                core.duration_text(core.DICTIONARY_GUESSES / rate),
            )  # fmt: skip
        await stop.wait()
        keeper.cancel()
    finally:
        await runner.cleanup()
        if follower is not None:
            follower.stop()
        with contextlib.suppress(Exception):
            trail.close()
