"""Every metric of the console, in one place. Labels are bounded: sign-in outcomes, page names, event
types of the catalogue and the console's own action names.

The console's audit chain is reported with its SDK client's (``SdkMetrics.audit``): both run in one
process on one registry, which takes one collector of the audit series.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from services.bus.registry_follower import RegistryMetrics


class ConsoleMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.logins = Counter(
            "lianfang_console_logins_total",
            "Sign-in attempts, by outcome (ok, bad_credentials, locked, csrf).",
            ["outcome"],
            registry=registry,
        )
        self.sessions = Gauge(
            "lianfang_console_sessions", "Live sessions (signed-in coordinators).", registry=registry
        )
        self.views = Counter(
            "lianfang_console_views_total",
            "Pages of case content served (each one is in the audit log), by page.",
            ["page"],
            registry=registry,
        )
        self.actions = Counter(
            "lianfang_console_actions_total",
            "Events the coordinators published from the console, by action and result.",
            ["action", "result"],
            registry=registry,
        )
        self.refused = Counter(
            "lianfang_console_requests_refused_total",
            "Requests refused, by reason: before any work (csrf, unauthenticated, forbidden by the role), or "
            "internal (a bug met on it, answered with an error page).",
            ["reason"],
            registry=registry,
        )
        self.applied = Counter(
            "lianfang_console_inbox_events_total",
            "Inbox events the console added to its view, by type (invalid: not its schema; internal: a bug "
            "met on it; neither shown).",
            ["type"],
            registry=registry,
        )
        self.live_clients = Gauge(
            "lianfang_console_live_clients", "Open server-sent-event streams.", registry=registry
        )
        self.inbox_up = Gauge(
            "lianfang_console_inbox_up",
            "1 while the console reads its inbox without error, 0 while it retries.",
            registry=registry,
        )
        # The registry in force (version, issue and expiry times) and the updates refused.
        self.registry_in_force = RegistryMetrics.of(registry)
