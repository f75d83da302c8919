"""Every metric of the gateway, in one place. Labels are bounded: routes are the gateway's own, status
codes and problem codes come from closed sets, participants from the gateway's configuration.

The outbox's depth and age are the SDK's series (``lianfang_outbox_depth``, ...), summed over the
participants this gateway serves, plus one series per participant here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from services.bus.freshness import FreshnessMetrics
from services.bus.registry_follower import RegistryMetrics

ROUTES = ("/v1/events", "/v1/inbox", "/v1/openapi.json", "/metrics", "other")


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.requests = Counter(
            "lianfang_gateway_requests_total",
            "HTTP requests answered, by route, method and status code.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.rejections = Counter(
            "lianfang_gateway_rejections_total",
            "Requests refused with a problem, by problem code (signature_invalid, too_large, ...).",
            ["reason"],
            registry=registry,
        )
        self.latency = Histogram(
            "lianfang_gateway_request_seconds",
            "From the request's arrival to its response, by route.",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.accepted = Counter(
            "lianfang_gateway_events_accepted_total",
            "Events accepted (202) and written to a participant's outbox, by participant and type.",
            ["participant", "type"],
            registry=registry,
        )
        self.idempotent_replays = Counter(
            "lianfang_gateway_idempotent_replays_total",
            "Requests answered with an earlier 202 because their Idempotency-Key (or signature) was seen.",
            registry=registry,
        )
        self.inbox_served = Counter(
            "lianfang_gateway_inbox_events_served_total",
            "Opened inbox events returned by GET /v1/inbox, by participant.",
            ["participant"],
            registry=registry,
        )
        self.inbox_rejected = Counter(
            "lianfang_gateway_inbox_rejected_total",
            "Inbox records a served participant cannot open (inbox and webhooks), by reason code; each "
            "is reported by a problem record on the dead-letter topic.",
            ["reason"],
            registry=registry,
        )
        self.duplicates_skipped = Counter(
            "lianfang_gateway_inbox_duplicates_skipped_total",
            "Inbox records skipped because their event id was already handed out, by reader "
            "(inbox: GET /v1/inbox, webhook).",
            ["reader"],
            registry=registry,
        )
        self.webhook_delivered = Counter(
            "lianfang_gateway_webhook_deliveries_total",
            "Inbox events a participant's webhook acknowledged with 2xx (offset then committed).",
            ["participant"],
            registry=registry,
        )
        self.webhook_failures = Counter(
            "lianfang_gateway_webhook_attempt_failures_total",
            "Webhook attempts that failed, by participant and outcome: retried, but for the last of an "
            "event refused for good (refused) and a bug (internal), both then reported and passed.",
            ["participant", "outcome"],
            registry=registry,
        )
        self.webhook_backoff = Gauge(
            "lianfang_gateway_webhook_backoff_seconds",
            "Current retry delay of a participant's webhook (0 while deliveries succeed).",
            ["participant"],
            registry=registry,
        )
        # The registry in force (version, issue and expiry times) and the updates refused.
        self.registry_in_force = RegistryMetrics.of(registry)
        # The newest timestamp statement held (the same series Gateway.open's holder reports on).
        self.freshness = FreshnessMetrics.of(registry)

    def watch_outboxes(
        self, depth: Mapping[str, Callable[[], float]], age: Mapping[str, Callable[[], float]]
    ) -> None:
        """Report each served participant's outbox depth and oldest age at scrape time."""
        self.registry.register(_OutboxCollector(depth, age))


class _OutboxCollector(Collector):
    def __init__(
        self, depth: Mapping[str, Callable[[], float]], age: Mapping[str, Callable[[], float]]
    ) -> None:
        self.depth = dict(depth)
        self.age = dict(age)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "lianfang_gateway_outbox_depth",
            "Events accepted for a participant but not yet acknowledged by Kafka.",
            labels=["participant"],
        )
        age = GaugeMetricFamily(
            "lianfang_gateway_outbox_oldest_age_seconds",
            "Age of the oldest event still in a participant's outbox.",
            labels=["participant"],
        )
        for participant, fn in sorted(self.depth.items()):
            depth.add_metric([participant], fn())
        for participant, fn in sorted(self.age.items()):
            age.add_metric([participant], fn())
        return [depth, age]

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []
