"""The freshness of a process's registry: the newest timestamp statement it holds, and what it means now.

:class:`FreshnessInForce` sits beside a process's :class:`~services.bus.registry_follower.RegistryInForce`.
The follower offers it every statement it reads on the registry topic (key ``timestamp``); the pure
:mod:`services.kernel.freshness` verifies them under the timestamp role of the registry in force and
says whether the process is fresh. Services ask :meth:`FreshnessInForce.ok` before they work: the
router and the hub pause while it is False, the gateway answers 503 with Retry-After.

A process that does not require freshness (a setting, off only on purpose) logs a warning at start
and is always ``ok``; its series still show what it would have decided.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from datetime import datetime
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge

from services.bus.registry_follower import RegistryInForce
from services.kernel.clock import Clock, utcnow
from services.kernel.freshness import Freshness, Statement, StatementDecision, assess, judge_statement

log = logging.getLogger("lianfang.freshness")


class FreshnessMetrics:
    """The freshness series of one process, labelled by service (one set per Prometheus registry)."""

    _BY_REGISTRY: Final[weakref.WeakKeyDictionary[CollectorRegistry, FreshnessMetrics]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.fresh = Gauge(
            "lianfang_freshness_fresh",
            "1 while the process holds an unexpired timestamp statement for the registry in force; 0 "
            "while it waits (router and hub paused, gateway answering 503).",
            ["service"],
            registry=registry,
        )
        self.expiry = Gauge(
            "lianfang_freshness_expiry_timestamp_seconds",
            "When the newest timestamp statement held expires (Unix time; 0: none held).",
            ["service"],
            registry=registry,
        )
        self.issued = Gauge(
            "lianfang_freshness_issued_timestamp_seconds",
            "When the newest timestamp statement held was issued (Unix time): its age is time() minus this.",
            ["service"],
            registry=registry,
        )
        self.required = Gauge(
            "lianfang_freshness_required",
            "1 when the process refuses to work without a fresh statement; 0 when that was turned off.",
            ["service"],
            registry=registry,
        )
        self.rejected = Counter(
            "lianfang_freshness_statements_rejected_total",
            "Timestamp statements refused, by reason (e.g. unknown_key: signed by a key the registry "
            "does not delegate to).",
            ["service", "reason"],
            registry=registry,
        )

    @classmethod
    def of(cls, registry: CollectorRegistry | None) -> FreshnessMetrics:
        """The series on ``registry`` (declared on first use); ``None``: a set registered nowhere."""
        if registry is None:
            return cls(None)
        if registry not in cls._BY_REGISTRY:
            cls._BY_REGISTRY[registry] = cls(registry)
        return cls._BY_REGISTRY[registry]


class FreshnessInForce:
    """The newest verified timestamp statement of a process, judged against its registry in force."""

    POLL_S: Final = 0.5

    def __init__(
        self,
        in_force: RegistryInForce,
        *,
        required: bool = True,
        clock: Clock = utcnow,
        metrics: FreshnessMetrics | None = None,
    ) -> None:
        self.in_force = in_force
        self.required = required
        self.service = in_force.service
        self._clock = clock
        self._metrics = metrics
        self._statement: Statement | None = None
        self._lock = threading.Lock()
        self._last_state: str | None = None
        if not required:
            log.warning(
                "%s: freshness statements are NOT required (turned off by a setting): a withheld "
                "registry update or revocation goes unnoticed until the registry itself expires",
                self.service,
            )
        if metrics is not None:
            metrics.required.labels(self.service).set(1 if required else 0)
            metrics.fresh.labels(self.service).set_function(lambda: 1.0 if self.status().fresh else 0.0)
            metrics.expiry.labels(self.service).set(0)
            metrics.issued.labels(self.service).set(0)

    def offer(self, data: bytes) -> StatementDecision:
        """Take ``data`` if it is a valid statement newer than the one held; say why if not."""
        with self._lock:
            decision = judge_statement(self._statement, data, self.in_force.current)
            if decision.statement is not None:
                self._statement = decision.statement
        if decision.statement is not None:
            if self._metrics is not None:
                document = decision.statement.document
                self._metrics.expiry.labels(self.service).set(document.expires.timestamp())
                self._metrics.issued.labels(self.service).set(document.issued.timestamp())
            self.status()  # logs a change of state at once
        elif decision.untrusted:
            if self._metrics is not None:
                self._metrics.rejected.labels(self.service, decision.reason).inc()
            log.warning("%s: freshness statement refused: %s", self.service, decision.detail)
        return decision

    def status(self) -> Freshness:
        """Where the process stands now; a change of state is logged once."""
        freshness = assess(self.in_force.current, self._statement, self._clock())
        if freshness.state != self._last_state:
            self._last_state = freshness.state
            if freshness.fresh:
                log.info(
                    "%s: registry v%d is fresh: %s",
                    self.service,
                    self.in_force.current.version,
                    freshness.detail,
                )
            else:
                log.warning(
                    "%s: registry v%d is not known to be fresh (%s): %s%s",
                    self.service,
                    self.in_force.current.version,
                    freshness.state,
                    freshness.detail,
                    "; waiting for a fresh timestamp statement" if self.required else "; going on anyway",
                )
        return freshness

    def ok(self) -> bool:
        """Whether the process may work now: fresh, or freshness not required."""
        return self.status().fresh or not self.required

    @property
    def fresh_until(self) -> datetime | None:
        return self.status().fresh_until

    def wait_ok(self, timeout: float) -> bool:
        """Block (a thread, not the event loop) until :meth:`ok` holds or ``timeout`` s have passed;
        whether it holds."""
        deadline = time.monotonic() + timeout
        while not self.ok():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(self.POLL_S, remaining))  # re-read: a statement also goes stale by time alone
        return True

    async def wait_until_ok(self) -> None:
        """Return once :meth:`ok` holds (checked every half second)."""
        # Not an asyncio.Event: statements arrive in the follower's thread and a statement also
        # goes stale by time alone, so the state is re-read on a short period.
        while not self.ok():  # noqa: ASYNC110
            await asyncio.sleep(self.POLL_S)
