"""Every metric of an adapter (SDK, gateway, importer) in one place; labels are bounded sets."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterable
from typing import Protocol

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from services.audit.metrics import AuditMetrics
from services.bus.freshness import FreshnessMetrics
from services.bus.registry_follower import RegistryMetrics


class Watched(Protocol):
    """What the outbox gauges read of an outbox (:class:`~services.sdk.outbox.Outbox`)."""

    def depth(self) -> int: ...

    def oldest_age(self, now: float | None = None) -> float: ...

    def waiting(self) -> int: ...

    def waiting_oldest_age(self, now: float | None = None) -> float: ...


class SdkMetrics:
    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        self.registry = registry  # what a scrape reads (the outbox gauges are computed then)
        self.audit = AuditMetrics(registry)  # this service's audit shippers register here
        self.accepted = Counter(
            "lianfang_adapter_events_accepted_total",
            "Events sealed and written to the outbox, by type.",
            ["type"],
            registry=registry,
        )
        self.published = Counter(
            "lianfang_adapter_events_published_total",
            "Outbox records Kafka acknowledged (acks=all).",
            registry=registry,
        )
        self.identifier_problems = Counter(
            "lianfang_adapter_identifier_problems_total",
            "Identifiers of a person that stayed invalid after normalization, by kind (id_number, "
            "travel_document, phone; subject: the person had no valid identifier at all) and reason "
            "(shape, birth_date, check_digit, none_valid): the lead was kept and flagged, never a value.",
            ["kind", "reason"],
            registry=registry,
        )
        self.outbox_depth = Gauge(
            "lianfang_outbox_depth", "Records accepted but not yet acknowledged by Kafka.", registry=registry
        )
        self.outbox_age = Gauge(
            "lianfang_outbox_oldest_age_seconds",
            "Age of the oldest record still in the outbox.",
            registry=registry,
        )
        self.deferred = Counter(
            "lianfang_outbox_leads_deferred_total",
            "Leads accepted while the pseudonymizer could not answer (or while earlier ones still waited): "
            "stored encrypted, to be pseudonymized, sealed and sent once it answers.",
            registry=registry,
        )
        self.waiting = Gauge(
            "lianfang_outbox_waiting_for_pseudonyms",
            "Leads accepted that wait in the outbox for the pseudonymizer, and an import's events waiting "
            "behind them (counted in the outbox depth too).",
            registry=registry,
        )
        self.waiting_age = Gauge(
            "lianfang_outbox_waiting_for_pseudonyms_oldest_age_seconds",
            "Age of the oldest lead waiting for the pseudonymizer.",
            registry=registry,
        )
        self.waiting_failures = Counter(
            "lianfang_outbox_waiting_failures_total",
            "Attempts to pseudonymize and seal waiting leads that failed, by reason: unavailable (the "
            "service is away or busy: retried), refused (the service refused us, or sealing or the "
            "right to publish failed under the registry in force), invalid (a lead no longer opens or "
            "validates). The leads stay in the outbox.",
            ["reason"],
            registry=registry,
        )
        self.spool_seconds = Histogram(
            "lianfang_outbox_spool_seconds",
            "From acceptance to Kafka's acknowledgement.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 120, 600),
            registry=registry,
        )
        self.received = Counter(
            "lianfang_inbox_events_received_total",
            "Inbox events verified and opened, by type.",
            ["type"],
            registry=registry,
        )
        self.inbox_rejected = Counter(
            "lianfang_inbox_rejected_total",
            "Inbox records this participant could not open, by reason; each is reported by a problem "
            "record on the dead-letter topic.",
            ["reason"],
            registry=registry,
        )
        self.duplicates_skipped = Counter(
            "lianfang_inbox_duplicates_skipped_total",
            "Inbox records skipped because their event id was already handed out by this reader.",
            registry=registry,
        )

        self.inbox_waiting = Gauge(
            "lianfang_inbox_waiting_for_freshness",
            "Inbox readers of this process that wait, reading nothing, because they hold no fresh "
            "timestamp statement for their registry (clients that follow the registry topic).",
            registry=registry,
        )

        # The registry in force (version, issue and expiry times) and the updates refused, of the
        # clients that follow the registry topic themselves (Client.open), and their freshness.
        self.registry_in_force = RegistryMetrics.of(registry)
        self.freshness = FreshnessMetrics.of(registry)

        # The outbox gauges read the watched outboxes when scraped: the sum of the counts and the
        # greatest age over every client of this process that reports here (0 with none).
        self._outboxes: list[Watched] = []
        self._outboxes_lock = threading.Lock()
        self.outbox_depth.set_function(self._over_outboxes(lambda o: o.depth(), sum))
        self.outbox_age.set_function(self._over_outboxes(lambda o: o.oldest_age(), max))
        self.waiting.set_function(self._over_outboxes(lambda o: o.waiting(), sum))
        self.waiting_age.set_function(self._over_outboxes(lambda o: o.waiting_oldest_age(), max))

    def watch_outbox(self, outbox: Watched) -> None:
        with self._outboxes_lock:
            self._outboxes.append(outbox)

    def forget_outbox(self, outbox: Watched) -> None:
        with self._outboxes_lock:
            self._outboxes = [o for o in self._outboxes if o is not outbox]

    def _over_outboxes(
        self, read: Callable[[Watched], float], combine: Callable[[Iterable[float]], float]
    ) -> Callable[[], float]:
        def value() -> float:
            with self._outboxes_lock:
                outboxes = list(self._outboxes)
            values = []
            for outbox in outboxes:
                try:
                    values.append(float(read(outbox)))
                except sqlite3.ProgrammingError:  # closed while being read: its client is closing
                    continue
            return float(combine(values)) if values else 0.0

        return value


_shared: SdkMetrics | None = None


def shared() -> SdkMetrics:
    """The process's adapter metrics on the default registry (several clients share them)."""
    global _shared  # noqa: PLW0603 - one set of series per process, created on first use
    if _shared is None:
        _shared = SdkMetrics()
    return _shared
