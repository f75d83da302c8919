"""Every metric of the pseudonymizer. Labels are bounded: participants come from the registry (or, for
the rates of their own, from the operator's LIANFANG_PSEUDONYMIZER_RATES), reasons from the service's
closed set of problem codes."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from services.audit.metrics import AuditMetrics
from services.bus.registry_follower import RegistryMetrics


class PseudonymizerMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.evaluations = Counter(
            "lianfang_pseudonymizer_evaluations_total",
            "Blinded elements evaluated, by the participant that asked.",
            ["participant"],
            registry=registry,
        )
        self.requests = Counter(
            "lianfang_pseudonymizer_requests_total",
            "Evaluation requests answered, by status code.",
            ["status"],
            registry=registry,
        )
        self.rejections = Counter(
            "lianfang_pseudonymizer_rejections_total",
            "Requests refused, by problem code (rate_limited, signature_invalid, malformed, ...).",
            ["reason"],
            registry=registry,
        )
        self.batch = Histogram(
            "lianfang_pseudonymizer_batch_size",
            "Elements per evaluation request.",
            buckets=(1, 2, 5, 10, 50, 100, 500, 1024),
            registry=registry,
        )
        self.key_version = Gauge(
            "lianfang_pseudonymizer_key_version",
            "The key version the service serves, by role (current; previous during a key transition, "
            "else 0).",
            ["role"],
            registry=registry,
        )
        self.default_rate = Gauge(
            "lianfang_pseudonymizer_default_rate_per_second",
            "Evaluations a second a participant may ask for on average (LIANFANG_PSEUDONYMIZER_RATE_PER_S).",
            registry=registry,
        )
        self.rate = Gauge(
            "lianfang_pseudonymizer_rate_per_second",
            "The rate of its own the operator gave a participant (LIANFANG_PSEUDONYMIZER_RATES), in "
            "evaluations a second, in place of the default.",
            ["participant"],
            registry=registry,
        )
        self.rates_unmatched = Gauge(
            "lianfang_pseudonymizer_rates_unmatched",
            "Participants given a rate of their own that the registry in force does not name (unused "
            "until one does).",
            registry=registry,
        )
        self.keys_destroyed = Counter(
            "lianfang_pseudonymizer_keys_destroyed_total",
            "Retired keys destroyed once the registry in force no longer names them, by outcome "
            "(destroyed: file overwritten and unlinked; file_kept: dropped from memory, the file could "
            "not be removed).",
            ["outcome"],
            registry=registry,
        )
        # The registry in force (its follower reports here) and the audit chain's shipping, as every
        # other service that follows the registry and writes an audit chain: the registry and audit
        # alerts cover this job too.
        self.registry_in_force = RegistryMetrics.of(registry)
        self.audit = AuditMetrics(registry)
        if registry is not REGISTRY:  # the default registry has them already
            # process_start_time_seconds and the rest, as every other service's /metrics: a process
            # started again and again fires LianfangServiceRestarting.
            ProcessCollector(registry=registry)
