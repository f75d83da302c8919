"""Every metric of the hub, in one place. Labels are bounded: event types, reason codes, the hub's five
source topics, deadline kinds, participant ids from the registry, the hub's own partitions, and the
three kinds of RocksDB memory."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from services.audit.metrics import AuditMetrics
from services.bus.freshness import FreshnessMetrics
from services.bus.registry_follower import RegistryMetrics
from services.hub.rocksdb_memory import PROPERTIES, StoresMemory


class HubMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.audit = AuditMetrics(registry)  # this service's audit shippers register here
        self.observed = Counter(
            "lianfang_hub_events_observed_total",
            "Inbox events the hub verified and applied, by type.",
            ["type"],
            registry=registry,
        )
        self.rejected = Counter(
            "lianfang_hub_events_rejected_total",
            "Records the hub refused and went past, by source (inbox, suspects, serial, links, clock) and "
            "reason (a reason code; internal: a bug or unreadable stored state). Inbox records are "
            "dead-lettered.",
            ["source", "reason"],
            registry=registry,
        )
        self.ignored = Counter(
            "lianfang_hub_events_ignored_total",
            "Inbox events the hub verified and left its state as it was, by why: not_a_rule_event (its "
            "own alerts, supervision events), seen (applied already), before_horizon (happened before "
            "the victim's retained window).",
            ["reason"],
            registry=registry,
        )
        for reason in ("not_a_rule_event", "seen", "before_horizon"):
            self.ignored.labels(reason)
        self.alerts = Counter(
            "lianfang_hub_alerts_total",
            "Joint-meeting alerts raised or updated, by rule.",
            ["rule"],
            registry=registry,
        )
        self.open_alerts = Gauge(
            "lianfang_hub_open_alerts",
            "Victims with an open joint-meeting alert, per hub partition.",
            ["partition"],
            registry=registry,
        )
        self.breaches = Counter(
            "lianfang_hub_supervision_breaches_total",
            "Deadlines found breached, by kind.",
            ["kind"],
            registry=registry,
        )
        self.latency = Histogram(
            "lianfang_hub_event_to_alert_seconds",
            "From the triggering event's time to the alert's publication.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=registry,
        )
        self.waiting = Gauge(
            "lianfang_hub_waiting_for_freshness",
            "Records the hub holds unacknowledged, by source topic (inbox, suspects, serial, links, clock), "
            "because it has no fresh timestamp statement: nothing is committed past them meanwhile.",
            ["source"],
            registry=registry,
        )
        for source in AGENTS:
            self.waiting.labels(source)
        self.linked = Counter(
            "lianfang_hub_linked_events_total",
            "Leads and risk assessments keyed by one pseudonym and applied to the state of another that "
            "a lead linked it to (another identifier of the same person).",
            registry=registry,
        )
        self.links_refused = Counter(
            "lianfang_hub_links_refused_total",
            "Links the hub did not follow, by reason: too_many_linked (a subject already takes the events "
            "of max_linked pseudonyms), too_many_moves (a pseudonym was linked elsewhere max_link_moves "
            "times), too_many_hops. The events stay applied where they were keyed.",
            ["reason"],
            registry=registry,
        )
        for reason in ("too_many_linked", "too_many_moves", "too_many_hops"):
            self.links_refused.labels(reason)
        self.agent_restarts = Counter(
            "lianfang_hub_agent_restarts_total",
            "Times an agent (inbox, suspects, serial, links, clock) failed on the batch or record it took "
            "(a Kafka failure: a send no broker took) and handled it again in place after a pause: nothing "
            "is skipped, lost or alerted twice, but nothing after it moves meanwhile.",
            ["agent"],
            registry=registry,
        )
        for agent in AGENTS:
            self.agent_restarts.labels(agent)
        self.inbox_read_again = Counter(
            "lianfang_hub_inbox_read_again_total",
            "Times the hub read its inbox again from the group's committed offsets because a partition's "
            "commits had stalled on records handed to it and never acknowledged (faust would commit "
            "nothing more of it); what it had applied is applied again as after a restart: no change.",
            registry=registry,
        )
        self.worker_progress = Gauge(
            "lianfang_hub_worker_progress_timestamp_seconds",
            "Unix time up to which every agent had finished the record it took (now while none holds "
            "one). It stops moving while an agent hangs on a record or fails on it again and again.",
            registry=registry,
        )
        self.lag = Gauge(
            "lianfang_consumer_lag",
            "Offsets of the hub's inbox not yet committed by its group, per partition (the router's "
            "transaction markers count: a drained partition shows 0 or 1).",
            ["group", "topic", "partition"],
            registry=registry,
        )
        self.rates = Gauge(
            "lianfang_supervision_rate",
            "Supervision rates per agency (响应率/解决率/满意率), 0..1, over the leads due: a lead "
            "inside its deadline is pending and counts in no rate; no series while none is due.",
            ["agency", "rate", "partition"],
            registry=registry,
        )
        self.leads = Gauge(
            "lianfang_supervision_leads",
            "Leads routed to each agency per supervision count: received, response_due (answered or past "
            "the acknowledgement deadline), responded_in_time, resolution_due, resolved, with_feedback, "
            "satisfied. Sum over partitions and divide for the district's rates.",
            ["agency", "count", "partition"],
            registry=registry,
        )
        self.rocksdb_memory = Gauge(
            "lianfang_hub_rocksdb_memory_bytes",
            "Memory of the worker's open RocksDB stores (one a partition of each table), summed, by kind: "
            "memtables (written, not yet flushed; at most two write buffers a store), block_cache (blocks "
            "read back; at most the cache's capacity a store), table_readers (index and filter blocks, "
            "outside the cache: a few bytes a key, unbounded). Sampled every rocksdb_memory_interval_s.",
            ["kind"],
            registry=registry,
        )
        self.rocksdb_pinned = Gauge(
            "lianfang_hub_rocksdb_block_cache_pinned_bytes",
            "Of the block_cache of lianfang_hub_rocksdb_memory_bytes, the blocks in use (a read in flight "
            "or an open iterator holds them), which a cache cannot evict: only they take a cache past its "
            "capacity. Sampled with it.",
            registry=registry,
        )
        self.rocksdb_level0_files = Gauge(
            "lianfang_hub_rocksdb_level0_files",
            "Files the worker's RocksDB stores flushed to level 0 and have not compacted yet, summed. Each "
            "held a few hundred KiB that lianfang_hub_rocksdb_memory_bytes does not count, given back at "
            "compaction, in one store measured alone. Sampled with it.",
            registry=registry,
        )
        self.rocksdb_stores = Gauge(
            "lianfang_hub_rocksdb_stores_open",
            "RocksDB stores the worker holds open (a partition of a table, active or standby), whose "
            "memory lianfang_hub_rocksdb_memory_bytes sums.",
            registry=registry,
        )
        self.rocksdb_memory_bound = Gauge(
            "lianfang_hub_rocksdb_memory_bound_bytes",
            "The most the memtables and block caches of the worker's RocksDB stores take together, with a "
            "store open for every partition of every table (rocksdb_memory_bound): compare with the "
            "memtables and block_cache of lianfang_hub_rocksdb_memory_bytes.",
            registry=registry,
        )

        # The registry in force (version, issue and expiry times) and the updates refused.
        self.registry_in_force = RegistryMetrics.of(registry)
        # The newest timestamp statement held; agents wait while it is not fresh.
        self.freshness = FreshnessMetrics.of(registry)

    def set_rates(self, rows: Mapping[str, Mapping[str, Any]], partition: int) -> None:
        """Export one partition's rows of :func:`services.hub.supervision.agency_rates`; a rate with
        nothing due has no series (one set before is removed)."""
        for agency, row in rows.items():
            for rate in RATES:
                labels = (agency, rate.removesuffix("_rate"), str(partition))
                if row.get(rate) is None:
                    with contextlib.suppress(KeyError):
                        self.rates.remove(*labels)
                else:
                    self.rates.labels(*labels).set(float(row[rate]))
            for count in COUNTS:
                self.leads.labels(agency, count, str(partition)).set(int(row.get(count) or 0))

    def set_rocksdb_memory(self, memory: StoresMemory) -> None:
        """Export a sample of :func:`services.hub.rocksdb_memory.memory_of`: every kind, and the stores
        it read (those that raised count in neither)."""
        for kind in PROPERTIES:
            self.rocksdb_memory.labels(kind).set(memory.by_kind[kind])
        self.rocksdb_pinned.set(memory.pinned)
        self.rocksdb_level0_files.set(memory.level0_files)
        self.rocksdb_stores.set(memory.read)


AGENTS = ("inbox", "suspects", "serial", "links", "clock")
"""The hub's agents, each named after the topic it reads."""

RATES = ("response_rate", "resolution_rate", "satisfaction_rate")
COUNTS = (
    "received",
    "response_due",
    "responded_in_time",
    "resolution_due",
    "resolved",
    "with_feedback",
    "satisfied",
)
