"""Every metric of the timestamp service, in one place."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from services.bus.registry_follower import RegistryMetrics


class TimestampMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.published = Counter(
            "lianfang_timestamp_statements_published_total",
            "Freshness statements Kafka acknowledged.",
            registry=registry,
        )
        self.failures = Counter(
            "lianfang_timestamp_publish_failures_total",
            "Freshness statements that could not be published (Kafka away); the next period tries again.",
            registry=registry,
        )
        self.issued = Gauge(
            "lianfang_timestamp_last_issued_timestamp_seconds",
            "When the newest statement Kafka acknowledged was issued (Unix time).",
            registry=registry,
        )
        self.delegated = Gauge(
            "lianfang_timestamp_key_delegated",
            "1 while the registry in force delegates the timestamp role to this service's key.",
            registry=registry,
        )
        # The registry the statements name: the newest this service has seen on the topic.
        self.registry_in_force = RegistryMetrics.of(registry)
