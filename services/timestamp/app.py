"""The timestamp service (``lianfang serve timestamp``): the online half of the short freeze window.

It follows ``lianfang.registry.v1`` like every process, and every ``renew_every_s`` (a minute) signs,
with the timestamp role's key (``HOME/timestamp.key``), a statement naming the registry in force (its
version and the digest of its signed payload), valid for ``valid_for_s`` (ten minutes), and writes it
to the registry topic under the key ``timestamp`` (:mod:`services.kernel.freshness`). Other processes
pause, or answer 503, once their newest statement has expired or names a newer registry than theirs.

It names only a registry it has seen on the topic and verified, so on the topic's one partition a
statement always comes after the registry it names: a process that read the statement but holds an
older registry was denied that registry.
"""

from __future__ import annotations

import logging
import signal
import threading
from datetime import timedelta
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from schemas.freshness import TIMESTAMP_RECORD_KEY
from services import trust
from services.bus import metrics_endpoint
from services.bus.cluster import DURABLE_PRODUCER
from services.bus.registry_follower import RegistryInForce, follow
from services.bus.security import KafkaSecuritySettings, kafka_python_kwargs, load_security
from services.bus.settings import ServiceSettings
from services.kernel import topics
from services.kernel.clock import Clock, utcnow
from services.kernel.errors import UsageError
from services.kernel.freshness import sign_statement
from services.kernel.keystore import Keystore
from services.timestamp.metrics import TimestampMetrics

log = logging.getLogger("lianfang.timestamp")


class TimestampSettings(ServiceSettings):
    """Settings of the timestamp service. Environment variables: ``LIANFANG_TIMESTAMP_<NAME>``, except
    the broker (``LIANFANG_BOOTSTRAP``), the trust domain (``LIANFANG_HOME``: ``timestamp.key``, the
    registry and the anchor; passphrase as for every keystore) and the Kafka login (``LIANFANG_KAFKA_*``)."""

    model_config = SettingsConfigDict(env_prefix="LIANFANG_TIMESTAMP_")

    topic_prefix: str = Field(default="", description="prefix of every topic name (tests use one per run)")
    renew_every_s: float = Field(default=60.0, gt=0, description="a new statement this often")
    valid_for_s: float = Field(
        default=600.0, gt=0, description="each statement's lifetime: the freeze window"
    )
    metrics_port: int = Field(default=9105, ge=0, description="port of /metrics; 0 turns it off")
    metrics_address: str = Field(default=metrics_endpoint.LOOPBACK, description=metrics_endpoint.ADDRESS_HELP)
    kafka_security: KafkaSecuritySettings = Field(
        default_factory=load_security, description="TLS and SASL login, from LIANFANG_KAFKA_*"
    )


class Stamper:
    """Signs and publishes one statement at a time (the loop is :func:`serve`'s)."""

    def __init__(
        self,
        settings: TimestampSettings,
        in_force: RegistryInForce,
        keystore: Keystore,
        producer: Any,
        *,
        metrics: TimestampMetrics,
        clock: Clock = utcnow,
    ) -> None:
        if settings.valid_for_s <= settings.renew_every_s:
            raise UsageError("LIANFANG_TIMESTAMP_VALID_FOR_S must exceed LIANFANG_TIMESTAMP_RENEW_EVERY_S")
        self.settings = settings
        self.in_force = in_force
        self.keys = dict(keystore.signing)
        self.producer = producer
        self.metrics = metrics
        self.clock = clock
        self.topic = topics.TopicNames(settings.topic_prefix).registry

    def delegated(self) -> bool:
        role = self.in_force.current.document.timestamp
        ours = role is not None and bool({k.kid for k in role.keys} & set(self.keys))
        self.metrics.delegated.set(1 if ours else 0)
        return ours

    def publish_once(self) -> bool:
        """Sign a statement for the registry in force and wait for Kafka's acknowledgement."""
        registry = self.in_force.current
        if not self.delegated():
            log.error(
                "registry v%d does not delegate the timestamp role to this key (%s): every process "
                "will refuse its statements; the roots must list it (see the README, rotating the "
                "timestamp key)",
                registry.version,
                ", ".join(self.keys),
            )
        now = self.clock()
        data = sign_statement(
            registry, self.keys, now=now, valid_for=timedelta(seconds=self.settings.valid_for_s)
        )
        try:
            self.producer.send(self.topic, key=TIMESTAMP_RECORD_KEY, value=data).get(timeout=30)
        except KafkaError as e:
            self.metrics.failures.inc()
            log.warning(
                "statement for registry v%d not published (%s); retrying next period", registry.version, e
            )
            return False
        self.metrics.published.inc()
        self.metrics.issued.set(now.timestamp())
        log.info(
            "statement: registry v%d is the newest, valid until %s",
            registry.version,
            now + timedelta(seconds=self.settings.valid_for_s),
        )
        return True


def serve(settings: TimestampSettings, *, metrics: TimestampMetrics | None = None) -> None:
    """Publish a statement every ``renew_every_s`` until SIGTERM or SIGINT."""
    if not settings.bootstrap:
        raise UsageError("no Kafka bootstrap: set LIANFANG_BOOTSTRAP or pass --bootstrap")
    metrics = metrics or TimestampMetrics()
    domain = trust.open_domain(settings.home)
    keystore = domain.timestamp_keystore()
    in_force = RegistryInForce.from_domain(
        domain, service="timestamp", metrics=metrics.registry_in_force, allow_expired=True
    )
    names = topics.TopicNames(settings.topic_prefix)
    follower = follow(
        in_force, bootstrap=settings.bootstrap, topic=names.registry, security=settings.kafka_security
    )
    producer = KafkaProducer(
        bootstrap_servers=settings.bootstrap,
        client_id="lianfang-timestamp",
        **DURABLE_PRODUCER,
        **kafka_python_kwargs(settings.kafka_security),
    )
    stamper = Stamper(settings, in_force, keystore, producer, metrics=metrics)
    metrics_endpoint.start(settings)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _signum, _frame: stop.set())
    log.info(
        "timestamp: a statement every %.0f s, valid %.0f s", settings.renew_every_s, settings.valid_for_s
    )
    try:
        while not stop.is_set():
            stamper.publish_once()
            stop.wait(settings.renew_every_s)  # the renewal period
    finally:
        follower.stop()
        producer.close()
