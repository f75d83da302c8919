"""The audit shippers' series, for the metrics module of every service that writes an audit file.

One collector per registry reports each live :class:`~services.audit.shipping.Shipper` of the process:
``lianfang_audit_unshipped_bytes{chain}`` (lines on disk the audit topic does not have yet) and
``lianfang_audit_ship_failures_total{chain}``. The label is the chain's name (a participant and a
writer), a bounded set per process. The router writes its entries in its transactions and has none.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from services.audit.shipping import Shipper

_LIVE: Final[weakref.WeakSet[Shipper]] = weakref.WeakSet()
_REGISTERED: Final[weakref.WeakSet[CollectorRegistry]] = weakref.WeakSet()


def watch(shipper: Shipper) -> None:
    """Report ``shipper`` until :func:`forget` (or until it is garbage)."""
    _LIVE.add(shipper)


def forget(shipper: Shipper) -> None:
    _LIVE.discard(shipper)


class ShippingCollector(Collector):
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
        for shipper in list(_LIVE):
            unshipped.add_metric([shipper.chain], shipper.pending_bytes)
            failures.add_metric([shipper.chain], shipper.failures)
        yield unshipped
        yield failures


def register(registry: CollectorRegistry) -> None:
    """Add the audit series to ``registry`` (once per registry; services sharing one call it freely)."""
    if registry in _REGISTERED:
        return
    registry.register(ShippingCollector())
    _REGISTERED.add(registry)
