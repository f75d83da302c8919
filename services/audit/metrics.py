"""The audit shippers' series, held by the metrics object of each service that writes an audit file.

An :class:`AuditMetrics` collector reports the shippers registered with it:
``lianfang_audit_unshipped_bytes{chain}`` (lines on disk the audit topic does not have yet) and
``lianfang_audit_ship_failures_total{chain}``. The label is the chain's name (a participant and a
writer), a bounded set per process. The router writes its entries in its transactions and has none.

A registry takes one collector of these names: a service whose process already has one on its
registry (the console and the SDK client it runs) registers its shippers with that one.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class Reported(Protocol):
    """What the collector reads of a shipper (:class:`~services.audit.shipping.Shipper`)."""

    @property
    def chain(self) -> str: ...

    @property
    def pending_bytes(self) -> int: ...

    @property
    def failures(self) -> int: ...


class AuditMetrics(Collector):
    """Reports each shipper from :meth:`watch` until :meth:`forget` (or until it is garbage)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._shippers: weakref.WeakSet[Reported] = weakref.WeakSet()
        if registry is not None:
            registry.register(self)

    def watch(self, shipper: Reported) -> None:
        self._shippers.add(shipper)

    def forget(self, shipper: Reported) -> None:
        self._shippers.discard(shipper)

    def collect(self) -> Iterator[Metric]:
        unshipped = GaugeMetricFamily(
            "lianfang_audit_unshipped_bytes",
            "Bytes of audit entries on disk that the audit topic has not acknowledged yet.",
            labels=["chain"],
        )
        failures = CounterMetricFamily(
            "lianfang_audit_ship_failures",
            "Attempts to ship audit entries to the audit topic that failed (they are retried).",
            labels=["chain"],
        )
        for shipper in list(self._shippers):
            unshipped.add_metric([shipper.chain], shipper.pending_bytes)
            failures.add_metric([shipper.chain], shipper.failures)
        yield unshipped
        yield failures


__all__ = ["AuditMetrics", "Reported"]
