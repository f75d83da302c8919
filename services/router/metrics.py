"""Every metric of the router, in one place. Labels are bounded: event types, reason codes and
participant ids come from closed sets (the catalogue, the error codes, the registry); consumer lag is
labelled by the worker's group, its source topic and that topic's partitions (12 by default)."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from services.bus.freshness import FreshnessMetrics
from services.bus.registry_follower import RegistryMetrics
from services.kernel.errors import REASON_CODES


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.routed = Counter(
            "lianfang_router_events_routed_total",
            "Events verified and delivered, by type.",
            ["type"],
            registry=registry,
        )
        self.delivered = Counter(
            "lianfang_router_deliveries_total",
            "Copies written to inboxes, by participant.",
            ["participant"],
            registry=registry,
        )
        self.deadlettered = Counter(
            "lianfang_router_deadletters_total",
            "Records refused to the dead-letter topic, by reason.",
            ["reason"],
            registry=registry,
        )
        self.duplicates = Counter(
            "lianfang_router_duplicates_total",
            "Byte-identical copies of accepted events (producer retries), dropped after the first delivery.",
            registry=registry,
        )
        for reason in REASON_CODES:  # every reason's series exists from the start, so rate() sees the first
            self.deadlettered.labels(reason)
        self.latency = Histogram(
            "lianfang_router_event_to_routed_seconds",
            "From the event's signed time to its delivery.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=registry,
        )
        self.paused = Gauge(
            "lianfang_router_paused",
            "1 while routing waits: the registry in force has expired, or no fresh timestamp statement.",
            registry=registry,
        )
        self.lag = Gauge(
            "lianfang_consumer_lag",
            "Records of a source partition not yet consumed by the group: end offset (last stable offset, "
            "as the worker reads committed records) minus the worker's position. Only the partitions "
            "this worker holds.",
            ["group", "topic", "partition"],
            registry=registry,
        )
        self.worker_restarts = Counter(
            "lianfang_router_worker_restarts_total",
            "Times the worker started afresh after a Kafka failure (a broker lost mid-transaction, a send "
            "refused): it rejoined the group, fenced its producers and redid the batch.",
            registry=registry,
        )
        self.transactions = Histogram(
            "lianfang_router_transaction_records",
            "Records of the events topic each committed transaction of a worker took (a poll's records "
            "of all its partitions). Its count is the transactions committed: each costs the same few "
            "round trips to the broker however many records it holds, so a rate of transactions near "
            "the rate of records means the router pays them a record.",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
            registry=registry,
        )
        self.worker_progress = Gauge(
            "lianfang_router_worker_progress_timestamp_seconds",
            "Unix time the worker's loop last came back from Kafka with its batch committed (or nothing to "
            "do). It stops moving while the worker restarts over and over or hangs in a transaction.",
            registry=registry,
        )
        self.loop_lag = Histogram(
            "lianfang_router_loop_lag_seconds",
            "How much later than asked the worker's event loop ran a task (measured every 0.25 s). The "
            "Kafka consumer's heartbeats wait as long: a lag over the session timeout (10 s) gets the "
            "worker dropped from its group.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        # The registry in force (version, issue and expiry times) and the updates refused.
        self.registry_in_force = RegistryMetrics.of(registry)
        # The newest timestamp statement held: whether it is fresh, its expiry, statements refused.
        self.freshness = FreshnessMetrics.of(registry)
