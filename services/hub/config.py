"""The hub's configuration: every threshold of the joint-meeting rules and of supervision."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from types import MappingProxyType
from typing import get_args

from schemas.common import Urgency
from services.kernel import ids

__all__ = ["HubConfig"]


def _default_acknowledge() -> Mapping[Urgency, timedelta]:
    return MappingProxyType(
        {"immediate": timedelta(hours=1), "urgent": timedelta(hours=4), "routine": timedelta(hours=24)}
    )


@dataclass(frozen=True, kw_only=True)
class HubConfig:
    """Every threshold of the joint-meeting rules and supervision; defaults from ``docs/rules.md``.

    Rules: ``high_risk_score`` (of 24), ``escalation_leads`` within ``escalation_window``, ``repeat_window``
    after a concluded meeting, ``convergence_agencies`` within ``convergence_window``, ``serial_victims``.
    Supervision: ``acknowledge`` per urgency, ``first_action`` and ``resolution`` from the lead's event
    time, ``order_decision`` (``order_decision_urgent`` when urgent) from the request's event time;
    action items are due at their own ``due_at``. ``breach_grace`` waits that long past a deadline for
    responses still in flight. ``max_lateness`` is how late an event may arrive and still be correlated
    (the router refuses events older than 7 days).
    Linked subjects (:mod:`services.hub.links`): a subject takes the events of at most ``max_linked``
    other pseudonyms; a pseudonym moves to another canonical subject at most ``max_link_moves`` times
    and then brings along its ``max_forwarded`` latest leads and risk assessments.
    """

    high_risk_score: int = 14
    high_risk_indicators: int | None = None
    escalation_leads: int = 3
    escalation_window: timedelta = timedelta(days=365)
    repeat_window: timedelta = timedelta(days=365)
    convergence_agencies: int = 2
    convergence_window: timedelta = timedelta(days=30)
    serial_victims: int = 2
    minor_abuse_categories: frozenset[str] = frozenset({"sexual_assault", "child_abuse"})

    acknowledge: Mapping[Urgency, timedelta] = field(default_factory=_default_acknowledge)
    first_action: timedelta = timedelta(hours=24)
    resolution: timedelta = timedelta(days=15)
    order_decision: timedelta = timedelta(hours=72)
    order_decision_urgent: timedelta = timedelta(hours=24)
    breach_grace: timedelta = timedelta(0)

    hub: str = ids.HUB
    coordinators: str = ids.COORDINATORS
    court: str = ids.COURT
    not_acting: frozenset[str] = frozenset({ids.HUB, ids.COORDINATORS})
    max_lateness: timedelta = timedelta(days=7)
    max_events: int = 2_000
    max_suspect_victims: int = 100
    max_linked: int = 16
    max_link_moves: int = 16
    max_forwarded: int = 50

    def __post_init__(self) -> None:
        counts = {
            "high_risk_score": self.high_risk_score,
            "escalation_leads": self.escalation_leads,
            "convergence_agencies": self.convergence_agencies,
            "serial_victims": self.serial_victims,
            "max_events": self.max_events,
            "max_suspect_victims": self.max_suspect_victims,
            "max_linked": self.max_linked,
            "max_link_moves": self.max_link_moves,
            "max_forwarded": self.max_forwarded,
        }
        if self.high_risk_indicators is not None:
            counts["high_risk_indicators"] = self.high_risk_indicators
        for name, value in counts.items():
            if value < 1:
                raise ValueError(f"HubConfig.{name} must be at least 1, not {value}")
        missing = set(get_args(Urgency)) - set(self.acknowledge)
        if missing:
            raise ValueError(f"HubConfig.acknowledge needs a deadline for every urgency; missing {missing}")
        spans = {
            "escalation_window": self.escalation_window,
            "repeat_window": self.repeat_window,
            "convergence_window": self.convergence_window,
            "first_action": self.first_action,
            "resolution": self.resolution,
            "order_decision": self.order_decision,
            "order_decision_urgent": self.order_decision_urgent,
            **{f"acknowledge[{k}]": v for k, v in self.acknowledge.items()},
        }
        for name, span in spans.items():
            if span <= timedelta(0):
                raise ValueError(f"HubConfig.{name} must be positive")
        if self.breach_grace < timedelta(0) or self.max_lateness < timedelta(0):
            raise ValueError("HubConfig.breach_grace and max_lateness must not be negative")

    def at_time_scale(self, scale: float) -> HubConfig:
        """This configuration for a district whose clock runs ``scale`` times faster than the wall clock
        (the demo): every supervision deadline divided by ``scale``, so a 4-hour acknowledgement is due
        in 40 s at 360. Rule windows stay as they are: they are months long, a demo plays days, so every
        demo case falls inside them either way, and shortening them would shorten what the hub keeps.
        ``breach_grace`` and ``max_lateness`` are wall-clock allowances and stay too."""
        if not scale > 0:
            raise ValueError(f"a time scale must be greater than 0, not {scale}")
        if scale == 1:
            return self
        return replace(
            self,
            acknowledge=MappingProxyType({k: v / scale for k, v in self.acknowledge.items()}),
            first_action=self.first_action / scale,
            resolution=self.resolution / scale,
            order_decision=self.order_decision / scale,
            order_decision_urgent=self.order_decision_urgent / scale,
        )

    @property
    def retention(self) -> timedelta:
        """How long before the latest event time facts are kept: the longest window plus the lateness."""
        longest = max(
            self.escalation_window,
            self.repeat_window,
            self.convergence_window,
            self.first_action,
            self.resolution,
            self.order_decision,
            self.order_decision_urgent,
            *self.acknowledge.values(),
        )
        return longest + self.max_lateness
