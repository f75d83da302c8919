"""A victim's one open alert (会商提示) as a pure core: the rules' firings in, the alert raised or updated
and the ``joint_meeting.alert`` to publish out.

- **One open alert per victim.** The first rule that fires raises it (version 1); a rule not yet among
  its reasons updates it (same ``alert_id``, version + 1); a rule already among them emits nothing. The
  alert is open until a ``joint_meeting.concluded`` names it; the next rule that fires opens a new
  episode with a new ``alert_id``. An event that fires a rule after the conclusion opens the next
  episode even when its event time is earlier (it arrived late, so the meeting did not see it).
- An alert is ``immediate`` when one of its reasons is in :data:`IMMEDIATE_REASONS`, else ``urgent``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, get_args

from schemas.common import Urgency
from schemas.events import AlertReasonCode, AlertStatus, JointMeetingAlert
from services.hub.ids import alert_event_id, alert_id_for, iso
from services.hub.state import AlertState, ReasonState, VictimState

__all__ = [
    "IMMEDIATE_REASONS",
    "AlertEmission",
    "Firing",
    "open_alert",
    "raise_or_update",
]

IMMEDIATE_REASONS: Final[frozenset[AlertReasonCode]] = frozenset({"minor_sexual_abuse", "order_breach"})
"""Reasons that make an alert ``immediate``; any other alert is ``urgent``."""

_REASON_ORDER: Final[tuple[AlertReasonCode, ...]] = get_args(AlertReasonCode)
_MAX_AGENCIES: Final = 100  # JointMeetingAlert.agencies_involved max_length
_MAX_RELATED: Final = 1_000  # JointMeetingAlert.related_events max_length
_MAX_DETAIL: Final = 500  # AlertReason.detail max_length


@dataclass(frozen=True, kw_only=True)
class AlertEmission:
    """A ``joint_meeting.alert`` to publish: a new alert (version 1) or an update of the open one.

    ``event_id`` and ``alert_id`` are deterministic, so re-processing publishes the same ids.
    ``urgency`` is for the envelope header; ``agencies_involved`` is its ``audience``.
    """

    event_id: str
    alert_id: str
    subject: str
    version: int
    reasons: list[dict[str, str]]
    agencies_involved: list[str]
    related_events: list[str]
    raised_at: datetime
    updated_at: datetime
    status: AlertStatus
    urgency: Urgency

    def payload(self) -> dict[str, Any]:
        """The event's fields as JSON values, for :class:`schemas.events.JointMeetingAlert`."""
        return {
            "schema_version": 1,
            "alert_id": self.alert_id,
            "victim_pseudonym": self.subject,
            "reasons": [dict(reason) for reason in self.reasons],
            "agencies_involved": list(self.agencies_involved),
            "related_events": list(self.related_events),
            "raised_at": iso(self.raised_at),
            "updated_at": iso(self.updated_at),
            "status": self.status,
        }

    def to_event(self) -> JointMeetingAlert:
        """The validated event model (pydantic ``ValidationError`` if the payload broke a rule)."""
        return JointMeetingAlert.model_validate_json(json.dumps(self.payload()))


@dataclass(frozen=True)
class Firing:
    """A rule that fired: its reason code, the text that explains it, when, and the events behind it."""

    code: AlertReasonCode
    detail: str
    time: datetime
    events: tuple[str, ...]


def open_alert(state: VictimState) -> AlertState | None:
    """The victim's alert while it is open (raised and not yet concluded), else ``None``."""
    alert = state.alert
    return alert if alert is not None and alert.status != "concluded" else None


def _urgency(alert: AlertState) -> Urgency:
    return "immediate" if any(r.code in IMMEDIATE_REASONS for r in alert.reasons) else "urgent"


def _emission(state: VictimState, alert: AlertState) -> AlertEmission:
    related = list(dict.fromkeys(event for reason in alert.reasons for event in reason.events))
    return AlertEmission(
        event_id=alert_event_id(alert.alert_id, alert.version),
        alert_id=alert.alert_id,
        subject=state.subject,
        version=alert.version,
        reasons=[{"code": r.code, "detail": r.detail[:_MAX_DETAIL]} for r in alert.reasons],
        agencies_involved=list(alert.agencies),
        related_events=related[-_MAX_RELATED:],
        raised_at=alert.raised_at,
        updated_at=alert.updated_at,
        status=alert.status,
        urgency=_urgency(alert),
    )


def raise_or_update(state: VictimState, firings: Sequence[Firing]) -> list[AlertEmission]:
    """Raise the victim's alert or update it with the reasons not yet among its reasons.

    Changes ``state`` in place (callers pass a fork); returns the emission, or nothing when no new reason
    fired.
    """
    alert = open_alert(state)
    known = {reason.code for reason in alert.reasons} if alert is not None else set()
    new: dict[AlertReasonCode, Firing] = {}
    for firing in sorted(firings, key=lambda f: (_REASON_ORDER.index(f.code), f.time)):
        if firing.code not in known and firing.code not in new:
            new[firing.code] = firing
    if not new:
        return []
    if alert is None:
        state.episodes += 1
        first = min(f.time for f in new.values())
        alert = AlertState(
            alert_id=alert_id_for(state.subject, state.episodes),
            episode=state.episodes,
            raised_at=first,
            updated_at=first,
        )
        state.alert = alert
    alert.reasons.extend(
        ReasonState(code=f.code, detail=f.detail, t=f.time, events=list(f.events)) for f in new.values()
    )
    alert.version += 1
    alert.updated_at = max(alert.updated_at, *(f.time for f in new.values()))
    alert.agencies = sorted(state.agencies)[:_MAX_AGENCIES]
    emission = _emission(state, alert)
    alert.event_ids.append(emission.event_id)
    return [emission]
