"""An alert's deadlines and where each stands, as a pure core: an alert, the breaches the hub reported
and the hub's configuration in; for each deadline its due time, whether it is met, and at a given time
how much is left or how late it is.

The alert does not carry its deadlines: they are derived here, once, from the hub's
:class:`~services.hub.config.HubConfig`, so the console shows the numbers the hub applies:

- **acknowledge** (签收): the acknowledgement deadline of the alert's urgency
  (:attr:`HubConfig.acknowledge`: 1 h ``immediate``, 4 h ``urgent``) from the time each version was
  raised; an update that made the alert more urgent can bring it forward, so the earliest counts. Met by
  the office's acknowledgement, or by anything later on the alert (a meeting, its conclusion, a status
  the hub reports).
- **schedule** (安排会商): the first-action deadline (:attr:`HubConfig.first_action`, 24 h) from when the
  alert was raised: scheduling the meeting is the office's first action on it. Met by a meeting or a
  conclusion.
- **action_item** (会商任务): each item of the conclusion, due at its own ``due_at``. Whether its owner
  acted is the hub's to judge: an item is overdue once the hub reports its ``supervision.breach``, and
  merely *passed* when its time is over and no breach has come (yet).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Final, Literal

from schemas.events import JointMeetingAlert, SupervisionBreach
from services.hub.config import HubConfig

if TYPE_CHECKING:  # the view asks for deadlines; this module only reads its objects
    from services.console.view import Alert, Entry

__all__ = ["SOON", "Deadline", "Kind", "State", "for_alert", "overdue", "pressing"]

Kind = Literal["acknowledge", "schedule", "action_item"]
State = Literal["met", "met_late", "pending", "soon", "overdue", "passed"]
SOON: Final = 0.25
"""A pending deadline is ``soon`` when less than this share of its span is left."""


@dataclass(frozen=True, slots=True)
class Deadline:
    """One deadline of an alert: what, from when, by when, and when it was met (if known)."""

    kind: Kind
    started_at: datetime
    due_at: datetime
    met_at: datetime | None = None
    owner: str | None = None  # an action item's agency
    breached: bool = False  # the hub reported a breach of it

    def state(self, now: datetime) -> State:
        if self.met_at is not None:
            return "met" if self.met_at <= self.due_at else "met_late"
        if self.breached:
            return "overdue"
        if now > self.due_at:
            return "passed" if self.kind == "action_item" else "overdue"
        span = self.due_at - self.started_at
        return "soon" if self.due_at - now < span * SOON else "pending"

    def left(self, now: datetime) -> timedelta:
        """Time left until it is due (negative once it is past)."""
        return self.due_at - now


def for_alert(alert: Alert, breaches: Iterable[Entry], config: HubConfig) -> list[Deadline]:
    """The alert's deadlines in the order the office meets them: acknowledge, schedule, action items."""
    latest = alert.latest
    raised = [v.event for v in alert.versions if isinstance(v.event, JointMeetingAlert)]
    ack_due = min(
        v.event.updated_at + config.acknowledge[v.header.urgency]
        for v in alert.versions
        if isinstance(v.event, JointMeetingAlert)
    )
    acted = {a.kind: a.at for a in sorted(alert.own, key=lambda a: a.at, reverse=True)}
    later = [e.time for e in (*alert.meetings, *alert.conclusions)]
    status_seen = [v.updated_at for v in raised if v.status != "open"]
    deadlines = [
        Deadline(
            "acknowledge",
            latest.raised_at,
            ack_due,
            _earliest(
                [acted.get("acknowledge"), acted.get("schedule"), acted.get("conclude"), *later, *status_seen]
            ),
        ),
        Deadline(
            "schedule",
            latest.raised_at,
            latest.raised_at + config.first_action,
            _earliest(
                [
                    acted.get("schedule"),
                    acted.get("conclude"),
                    *later,
                    *(v.updated_at for v in raised if v.status in ("scheduled", "concluded")),
                ]
            ),
        ),
    ]
    conclusion = alert.conclusion
    if conclusion is not None and alert.conclusions:
        concluded_id = alert.conclusions[-1].event_id
        missed = {
            (e.event.agency, e.event.due_at)
            for e in breaches
            if isinstance(e.event, SupervisionBreach)
            and e.event.deadline_kind == "action_item"
            and e.event.lead_id == concluded_id
        }
        deadlines += [
            Deadline(
                "action_item",
                conclusion.concluded_at,
                item.due_at,
                owner=item.owner,
                breached=(item.owner, item.due_at) in missed,
            )
            for item in conclusion.action_items
        ]
    return deadlines


def _earliest(moments: Iterable[datetime | None]) -> datetime | None:
    return min((m for m in moments if m is not None), default=None)


def pressing(deadlines: Sequence[Deadline], now: datetime) -> Deadline | None:
    """The deadline to show first: the most overdue, else the one due soonest; None when all are met."""
    waiting = [d for d in deadlines if d.state(now) in ("overdue", "soon", "pending")]
    return min(waiting, key=lambda d: d.due_at, default=None)


def overdue(deadlines: Sequence[Deadline], now: datetime) -> bool:
    """Whether any deadline of the alert is overdue now."""
    return any(d.state(now) == "overdue" for d in deadlines)
