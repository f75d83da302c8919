"""The registry in force, kept current from ``lianfang.registry.v1``: one follower for every process.

Every process that verifies or seals (router, hub, gateway, console, SDK clients, the CLI's ``publish``
and ``inbox``) starts with the registry in HOME and takes a newer one from the compacted registry
topic without a restart:

- :class:`RegistryInForce` holds the registry in force. It takes an offered registry only when the
  pure :func:`~services.kernel.registry.judge_update` says so (verifies against the trusted roots,
  newer, not expired), and exports the process's registry series (:class:`RegistryMetrics`).
- :class:`RegistryFollower` reads the whole topic (no consumer group: every process reads it all)
  in a daemon thread, forever. A failed connection or read is retried with capped exponential
  back-off; nothing but :meth:`RegistryFollower.stop` ends it. :meth:`RegistryFollower.catch_up`
  waits until everything on the topic now has been offered (at start-up, and when a record names a
  key the registry in force does not know yet).

Why a thread, also in the asyncio services: one implementation serves them all, and the SDK and the
console run threads anyway. Readers only look at :attr:`RegistryInForce.current`, a reference that
the follower replaces whole (atomic under the GIL), so they need no lock.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Final, Protocol

from kafka import KafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge

from schemas.freshness import TIMESTAMP_RECORD_KEY
from schemas.registry import Roots
from services.bus.security import KafkaSecuritySettings, kafka_python_kwargs
from services.kernel import envelope
from services.kernel.clock import Clock, utcnow
from services.kernel.errors import LianfangError, ReasonCode, UsageError
from services.kernel.keystore import Keystore
from services.kernel.registry import Registry, UpdateDecision, judge_start, judge_update
from services.trust import TrustDomain
from services.trust.trusted import TrustedRecord, record_name

log = logging.getLogger("lianfang.registry")

NEWER_REGISTRY_MAY_LIFT: Final[frozenset[ReasonCode]] = frozenset(
    {"unknown_sender", "unknown_key", "not_permitted", "policy_mismatch"}
)
"""Refusals a registry newer than the one in force may lift: a new participant, a rotated key, a
right or a sharing rule added. The router may have taken that registry a moment before this process."""


class RegistryMetrics:
    """The registry series of one process, labelled by service. One set per Prometheus registry:
    services that share one (the gateway and its SDK clients) share these."""

    _BY_REGISTRY: Final[weakref.WeakKeyDictionary[CollectorRegistry, RegistryMetrics]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.version = Gauge(
            "lianfang_registry_version", "Version of the registry in force.", ["service"], registry=registry
        )
        self.expiry = Gauge(
            "lianfang_registry_expiry_timestamp_seconds",
            "When the registry in force expires (Unix time).",
            ["service"],
            registry=registry,
        )
        self.issued = Gauge(
            "lianfang_registry_issued_timestamp_seconds",
            "When the registry in force was issued (Unix time): its age is time() minus this.",
            ["service"],
            registry=registry,
        )
        self.rejected = Counter(
            "lianfang_registry_updates_rejected_total",
            "Registry updates refused, by reason.",
            ["service", "reason"],
            registry=registry,
        )

    @classmethod
    def of(cls, registry: CollectorRegistry | None) -> RegistryMetrics:
        """The series on ``registry`` (declared on first use); ``None``: a set registered nowhere."""
        if registry is None:
            return cls(None)
        if registry not in cls._BY_REGISTRY:
            cls._BY_REGISTRY[registry] = cls(registry)
        return cls._BY_REGISTRY[registry]


class RegistryInForce:
    """The registry a process uses now; replaced only by a newer one that verifies against the
    trusted roots. Without ``trusted_roots`` it is fixed (it takes no update).

    The trusted roots advance with the registry in force: once a registry that rotates the roots is
    taken (signed by a threshold of the old roots and of its own), the next one must be signed by the
    new roots. With a ``record``, every registry taken is also written to the process's record of the
    highest registry it trusted, so a restart does not go below it (:mod:`services.trust.trusted`)."""

    def __init__(
        self,
        registry: Registry,
        *,
        trusted_roots: Roots | None = None,
        clock: Clock = utcnow,
        metrics: RegistryMetrics | None = None,
        service: str = "sdk",
        record: TrustedRecord | None = None,
    ) -> None:
        self._current = registry
        self._roots = trusted_roots
        self._clock = clock
        self._metrics = metrics
        self.service = service
        self._record = record
        self._lock = threading.Lock()
        self._publish_gauges()

    @classmethod
    def from_domain(
        cls,
        domain: TrustDomain,
        *,
        service: str,
        metrics: RegistryMetrics | None,
        clock: Clock = utcnow,
        allow_expired: bool = False,
        registry_topic: str | None = None,
        participant: str | None = None,
    ) -> RegistryInForce:
        """The registry of HOME, verified against HOME's trust anchor, which also judges updates.

        ``allow_expired`` starts with an expired registry anyway (its signatures must verify): the
        router pauses until a newer one arrives instead of refusing to start.

        With ``registry_topic`` (the topic the process follows), the process keeps a record of the
        highest registry it trusted in HOME/trusted/ (named after ``service``, ``participant`` and the
        topic) and starts from it rather than from an older, or unchained, HOME/registry.json."""
        roots = domain.trusted_roots()
        try:
            data = domain.registry_path.read_bytes()
        except FileNotFoundError:
            raise UsageError(f"no registry at {domain.registry_path}; run `lianfang init` first") from None
        record: TrustedRecord | None = None
        now = clock()
        if registry_topic is None:
            registry = Registry.from_bytes(data, trusted_roots=roots, now=now, allow_expired=allow_expired)
        else:
            record = TrustedRecord(domain.home, record_name(service, registry_topic, participant))
            registry = _start_registry(
                domain, data, roots, record, service=service, now=now, allow_expired=allow_expired
            )
        # The registry's own roots judge what comes next: they are the anchor's, or a rotation of them.
        in_force = cls(
            registry,
            trusted_roots=registry.document.roots,
            clock=clock,
            metrics=metrics,
            service=service,
            record=record,
        )
        if record is not None:
            record.save(registry, now)
        return in_force

    @property
    def current(self) -> Registry:
        return self._current

    @property
    def follows(self) -> bool:
        """Whether it can take updates (it has trusted roots to judge them by)."""
        return self._roots is not None

    def offer(self, data: bytes) -> UpdateDecision:
        """Take ``data`` if it is a valid registry newer than the current one; say why if not."""
        if self._roots is None:
            raise UsageError("this registry in force has no trusted roots: it cannot take updates")
        with self._lock:
            decision = judge_update(self._current, data, trusted_roots=self._roots, now=self._clock())
            if decision.registry is not None:
                self._current = decision.registry
                self._roots = decision.registry.document.roots  # a rotation's new roots judge from now on
                self._keep_record(decision.registry)
        if decision.registry is not None:
            self._publish_gauges()
            log.info(
                "%s: registry v%d in force (expires %s)",
                self.service,
                decision.registry.version,
                decision.registry.document.expires.isoformat(),
            )
        elif decision.untrusted:
            if self._metrics is not None:
                self._metrics.rejected.labels(self.service, decision.reason).inc()
            log.warning("%s: registry update refused: %s", self.service, decision.detail)
        else:
            log.debug("%s: registry update not needed: %s", self.service, decision.detail)
        return decision

    @property
    def trusted_roots(self) -> Roots | None:
        """The roots the next registry must be signed by (those of the registry in force)."""
        return self._roots

    def _keep_record(self, registry: Registry) -> None:
        if self._record is None:
            return
        try:
            self._record.save(registry, self._clock())
        except (OSError, LianfangError) as e:  # keep serving; the floor after a restart stays lower
            log.error(
                "%s: registry v%d in force but not recorded in %s (%s): a restart would start below it",
                self.service, registry.version, self._record.path, e,
            )  # fmt: skip

    def expired(self) -> bool:
        return self._clock() >= self._current.document.expires

    def _publish_gauges(self) -> None:
        if self._metrics is None:
            return
        document = self._current.document
        self._metrics.version.labels(self.service).set(document.version)
        self._metrics.expiry.labels(self.service).set(document.expires.timestamp())
        self._metrics.issued.labels(self.service).set(document.issued.timestamp())


def _start_registry(
    domain: TrustDomain,
    data: bytes,
    anchor: Roots,
    record: TrustedRecord,
    *,
    service: str,
    now: datetime,
    allow_expired: bool,
) -> Registry:
    """The registry to start with: HOME's, unless the record of the highest one trusted is newer (or
    HOME's is not chained to it); then HOME's is refused and said so, naming the fix."""
    start = judge_start(data, record.load(now), anchor=anchor, now=now)
    if start.refused is not None:
        log.warning(
            "%s: %s refused (%s): starting from registry v%d recorded in %s. To silence this, copy a "
            "registry at least as new, signed by its roots, into %s (the newest one on the registry "
            "topic, or from the root holders)",
            service, domain.registry_path, start.refused.detail, start.registry.version, record.path,
            domain.registry_path,
        )  # fmt: skip
    if not allow_expired:
        start.registry.check_current(now)
    return start.registry


def in_force(registry: Registry | RegistryInForce) -> RegistryInForce:
    """``registry`` as a registry in force: a plain :class:`Registry` is a fixed one."""
    return registry if isinstance(registry, RegistryInForce) else RegistryInForce(registry)


NewerRegistry = Callable[[ReasonCode], bool]
""":meth:`RegistryFollower.newer_registry_for` of a process's follower, for the readers it serves."""


def no_newer_registry(_reason: ReasonCode) -> bool:
    """For readers without a follower: no newer registry ever comes."""
    return False


def open_or_unreadable(
    value: bytes,
    *,
    in_force: RegistryInForce,
    newer_registry: NewerRegistry,
    now: Clock,
    keystore: Keystore,
    headers: Sequence[tuple[str, bytes | None]] | None = None,
) -> envelope.Opened | envelope.Unreadable:
    """:func:`~services.kernel.envelope.open_or_unreadable` with the registry in force, and once more
    after catching up with the registry topic when a newer registry may lift the refusal (a key
    rotated a moment ago, which the router already knew of). Every inbox reader opens through this.

    ``headers`` are the inbox record's Kafka headers: the signing key is judged at the time the router
    accepted the event (:func:`~services.kernel.envelope.accepted_at`), so a lead whose key was revoked
    after the router delivered it still opens."""
    keys_at = envelope.accepted_at(headers)

    def attempt() -> envelope.Opened | envelope.Unreadable:
        return envelope.open_or_unreadable(
            value, registry=in_force.current, now=now(), keystore=keystore, keys_at=keys_at
        )

    result = attempt()
    if isinstance(result, envelope.Unreadable) and newer_registry(result.reason):
        result = attempt()
    return result


class RegistryConsumer(Protocol):
    """What the follower needs of a Kafka consumer (kafka-python's, or a test's fake)."""

    def assign(self, partitions: list[TopicPartition]) -> None: ...
    def seek_to_beginning(self, *partitions: TopicPartition) -> None: ...
    def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]: ...
    def position(self, partition: TopicPartition) -> int: ...
    def poll(self, timeout_ms: int = 0) -> dict[TopicPartition, list[Any]]: ...
    def close(self) -> None: ...


class RegistryFollower:
    """Reads ``topic`` from its start in a daemon thread and offers each record to ``in_force``."""

    POLL_MS = 500

    def __init__(
        self,
        in_force: RegistryInForce,
        *,
        bootstrap: str,
        topic: str,
        security: KafkaSecuritySettings,
        min_backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        consumer: Callable[[], RegistryConsumer] | None = None,
        on_statement: Callable[[bytes], object] | None = None,
    ) -> None:
        if not in_force.follows:
            raise UsageError("a registry follower needs a registry in force with trusted roots")
        self.in_force = in_force
        self.topic = topic
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self._consumer = consumer or (lambda: self._kafka_consumer(bootstrap, security))
        # Timestamp statements share the topic under their own key (services.bus.freshness).
        self.on_statement = on_statement
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._progress = threading.Condition()
        self._asked = 0  # catch-up requests made
        self._reached = 0  # the newest request whose end offset was read
        self.failures = 0
        self._polled = False  # whether the current connection has read from the topic

    def _kafka_consumer(self, bootstrap: str, security: KafkaSecuritySettings) -> RegistryConsumer:
        consumer: RegistryConsumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            client_id=f"lianfang-registry-{self.in_force.service}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **kafka_python_kwargs(security),
        )
        return consumer

    # -- the thread

    def start(self) -> RegistryFollower:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"registry-follower-{self.in_force.service}", daemon=True
            )
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        with self._progress:
            self._progress.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def catch_up(self, timeout: float) -> bool:
        """Wait until every record on the topic now has been offered; False if ``timeout`` passed
        first (Kafka unreachable) or the follower is not running."""
        if self._thread is None or self._stop.is_set():
            return False
        with self._progress:
            self._asked += 1
            ticket = self._asked
            return self._progress.wait_for(
                lambda: self._reached >= ticket or self._stop.is_set(), timeout
            ) and (self._reached >= ticket)

    def newer_registry_for(self, reason: ReasonCode, timeout: float = 5.0) -> bool:
        """For a refusal a newer registry may lift: catch up, and say whether a newer one came into
        force (then the caller checks the record again, once)."""
        if reason not in NEWER_REGISTRY_MAY_LIFT:
            return False
        before = self.in_force.current
        self.catch_up(timeout)
        return self.in_force.current is not before

    def _run(self) -> None:
        delay = self.min_backoff_s
        while not self._stop.is_set():
            consumer: RegistryConsumer | None = None
            self._polled = False
            try:
                consumer = self._consumer()
                self._follow(consumer)
            except Exception as e:  # Kafka down, a timeout, a bug: never the end of following
                self.failures += 1
                if self._polled:  # it worked for a while: this is a new outage, retry soon
                    delay = self.min_backoff_s
                log.warning(
                    "%s: reading %s failed (%s: %s); retrying in %.1f s",
                    self.in_force.service, self.topic, type(e).__name__, e, delay,
                )  # fmt: skip
            finally:
                if consumer is not None:
                    try:
                        consumer.close()
                    except Exception as e:  # closing a broken consumer may fail too: it is dropped
                        log.debug("closing the registry consumer failed: %r", e)
            if self._stop.wait(delay):  # back-off between attempts
                return
            delay = min(self.max_backoff_s, delay * 2)

    def _follow(self, consumer: RegistryConsumer) -> None:
        tp = TopicPartition(self.topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        target: tuple[int, int] | None = None  # (ticket, end offset) of the catch-up being served
        while not self._stop.is_set():
            with self._progress:
                asked = self._asked
            if asked > self._reached and (target is None or target[0] < asked):
                target = (asked, consumer.end_offsets([tp])[tp])
            records = consumer.poll(timeout_ms=self.POLL_MS).get(tp, [])
            self._polled = True
            for record in records:
                if record.key == TIMESTAMP_RECORD_KEY:
                    if self.on_statement is not None and record.value:
                        self.on_statement(record.value)
                elif record.value:
                    self.in_force.offer(record.value)
            if target is not None and consumer.position(tp) >= target[1]:
                with self._progress:
                    self._reached = max(self._reached, target[0])
                    self._progress.notify_all()
                target = None


def follow(
    in_force: RegistryInForce,
    *,
    bootstrap: str,
    topic: str,
    security: KafkaSecuritySettings,
    catch_up_s: float = 10.0,
    on_statement: Callable[[bytes], object] | None = None,
) -> RegistryFollower:
    """Start following and wait (up to ``catch_up_s``) until the topic's records have been offered, so
    a process starts with the newest registry; Kafka unreachable: it starts with the one it has.
    ``on_statement`` takes the timestamp statements read on the topic."""
    follower = RegistryFollower(
        in_force, bootstrap=bootstrap, topic=topic, security=security, on_statement=on_statement
    ).start()
    if catch_up_s and not follower.catch_up(catch_up_s):
        log.warning(
            "%s: %s not read within %.0f s: registry v%d in force until it is",
            in_force.service, topic, catch_up_s, in_force.current.version,
        )  # fmt: skip
    return follower
