"""What the console's buttons publish, as pure functions: an alert and a submitted form in, a validated
event and its case context out, or :class:`FormError` with the problems in the user's words (message keys
of :mod:`services.console.i18n`).

- acknowledge → ``lead.acknowledged`` by the coordinators with ``lead_id`` = the alert id (and the alert's
  event in ``refs``): the hub marks the alert acknowledged.
- schedule → ``joint_meeting.scheduled`` (alert id, meeting time, participants, location), addressed
  (``audience``) to the participants.
- conclude → ``joint_meeting.concluded`` (alert id, time, action items with owner and due date, summary;
  the deadlines repeated in triage for supervision), addressed to the owners, the participants and the
  agencies involved.

Times in forms are local times of the console's zone (``datetime-local`` inputs); a due date alone means
the end of that day.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, time, tzinfo
from typing import Any, Final

from multidict import MultiMapping
from pydantic import ValidationError

from schemas.events import EventModel, JointMeetingConcluded, JointMeetingScheduled, LeadAcknowledged
from services.console.view import Alert, OwnKind
from services.kernel import ids
from services.kernel.errors import UsageError
from services.sdk.client import CaseContext

__all__ = [
    "NOT_INVITED",
    "FormError",
    "FormProblem",
    "Outgoing",
    "acknowledgement",
    "conclusion",
    "parse_local",
    "schedule",
]

NOT_INVITED: Final = frozenset({ids.ROUTER, ids.HUB, ids.COORDINATORS})
"""Machine participants and the office itself: never asked to attend or to own an action item (only
agencies are)."""
_POLICY_ADDS: Final = frozenset({ids.HUB, ids.COORDINATORS, ids.PLC})  # the joint_meeting rule names them
_MAX_ITEMS: Final = 100
_MAX_LOCATION: Final = 200
_MAX_SUMMARY: Final = 20_000
_MAX_DESCRIPTION: Final = 2_000


@dataclass(frozen=True, slots=True)
class FormProblem:
    key: str
    n: int | None = None
    when: str | None = None  # a local time the message names

    def values(self) -> dict[str, object]:
        found: dict[str, object] = {} if self.n is None else {"n": self.n}
        if self.when is not None:
            found["when"] = self.when
        return found


class FormError(UsageError):
    """The form cannot become an event; ``problems`` say why, in message keys."""

    def __init__(self, problems: Sequence[FormProblem]) -> None:
        super().__init__(", ".join(p.key for p in problems))
        self.problems = list(problems)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """An event ready for :meth:`services.sdk.client.Client.publish`."""

    kind: OwnKind
    event: EventModel
    context: CaseContext
    urgency: str
    audience: tuple[str, ...]


def parse_local(value: str, zone: tzinfo, *, end_of_day: bool = False) -> datetime | None:
    """A time from a form: ``YYYY-MM-DDTHH:MM`` (local to ``zone`` unless it has an offset), or with
    ``end_of_day`` a date alone (23:59 local). None when it is empty or not a time."""
    value = value.strip()
    if not value or len(value) > 40:
        return None
    try:
        if end_of_day and len(value) == 10:
            day = datetime.fromisoformat(value).date()
            return datetime.combine(day, time(23, 59), tzinfo=zone)
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment.replace(tzinfo=zone) if moment.tzinfo is None else moment


def _context(alert: Alert) -> CaseContext:
    """The alert's clear-header facts; its latest event goes into ``refs`` (as ``lead_id``)."""
    return CaseContext.of(alert.header)


def _build(model: type[EventModel], fields: dict[str, Any]) -> EventModel:
    try:
        return model.model_validate_json(json.dumps(fields, default=str))
    except ValidationError as e:  # the form checks above should have caught it; say so plainly
        raise FormError([FormProblem("err.publish")]) from e


def _open(alert: Alert) -> None:
    if alert.status == "concluded":
        raise FormError([FormProblem("err.concluded")])


def acknowledgement(alert: Alert, *, participant: str, now: datetime) -> Outgoing:
    """签收: the office has taken the alert on."""
    _open(alert)
    if alert.header.category is None:
        raise FormError([FormProblem("err.no_route")])
    event = _build(
        LeadAcknowledged,
        {"lead_id": alert.alert_id, "agency": participant, "acknowledged_at": now.isoformat()},
    )
    return Outgoing("acknowledge", event, _context(alert), alert.header.urgency, ())


def _agencies(chosen: Sequence[str], allowed: Collection[str], problems: list[FormProblem]) -> list[str]:
    picked = list(dict.fromkeys(a.strip() for a in chosen if a.strip()))
    if any(a not in allowed or a in NOT_INVITED for a in picked):
        problems.append(FormProblem("err.unknown_participant"))
        return []
    return picked


def schedule(alert: Alert, form: MultiMapping[str], *, zone: tzinfo, allowed: Collection[str]) -> Outgoing:
    """安排会商 from the fields ``meeting_at``, ``location`` and ``participants`` (repeated)."""
    _open(alert)
    problems: list[FormProblem] = []
    meeting_at = parse_local(form.get("meeting_at", ""), zone)
    if meeting_at is None:
        problems.append(FormProblem("err.meeting_at"))
    participants = _agencies(form.getall("participants", []), allowed, problems)
    if not participants and not problems:
        problems.append(FormProblem("err.participants"))
    location = form.get("location", "").strip()
    if len(location) > _MAX_LOCATION:
        problems.append(FormProblem("err.location"))
    if problems or meeting_at is None:
        raise FormError(problems)
    fields: dict[str, Any] = {
        "alert_id": alert.alert_id,
        "meeting_at": meeting_at.isoformat(),
        "participants": participants,
    }
    if location:
        fields["location"] = location
    event = _build(JointMeetingScheduled, fields)
    audience = tuple(sorted(set(participants) - _POLICY_ADDS))
    return Outgoing("schedule", event, _context(alert), alert.header.urgency, audience)


def conclusion(
    alert: Alert, form: MultiMapping[str], *, zone: tzinfo, allowed: Collection[str], now: datetime
) -> Outgoing:
    """会商结论 from ``concluded_at`` (default now), ``summary`` and the repeated item fields
    ``item_owner``, ``item_due`` and ``item_description`` (rows left wholly empty are skipped)."""
    _open(alert)
    problems: list[FormProblem] = []
    raw_at = form.get("concluded_at", "").strip()
    concluded_at = parse_local(raw_at, zone) if raw_at else now
    meeting = alert.meeting
    if concluded_at is None:
        problems.append(FormProblem("err.concluded_at"))
    elif meeting is not None and concluded_at < meeting.meeting_at:
        local = meeting.meeting_at.astimezone(zone).strftime("%Y-%m-%d %H:%M")
        problems.append(FormProblem("err.before_meeting", when=local))
    summary = form.get("summary", "").strip()
    if not summary or len(summary) > _MAX_SUMMARY:
        problems.append(FormProblem("err.summary"))
    owners, dues, descriptions = (
        form.getall(name, []) for name in ("item_owner", "item_due", "item_description")
    )
    rows = max(len(owners), len(dues), len(descriptions))
    items: list[dict[str, str]] = []
    for index in range(rows):
        owner, due, description = (
            (column[index] if index < len(column) else "").strip() for column in (owners, dues, descriptions)
        )
        if not (owner or due or description):
            continue
        n = len(items) + 1
        due_at = parse_local(due, zone, end_of_day=True)
        if (
            owner not in allowed
            or owner in NOT_INVITED
            or due_at is None
            or not description
            or len(description) > _MAX_DESCRIPTION
        ):
            problems.append(FormProblem("err.item", n))
            items.append({})
            continue
        if concluded_at is not None and due_at < concluded_at:
            problems.append(FormProblem("err.item_due", n))
        items.append({"owner": owner, "due_at": due_at.isoformat(), "description": description})
    if len(items) > _MAX_ITEMS:
        problems.append(FormProblem("err.items"))
    if problems or concluded_at is None:
        raise FormError(problems)
    event = _build(
        JointMeetingConcluded,
        {
            "alert_id": alert.alert_id,
            "concluded_at": concluded_at.isoformat(),
            "action_items": items,
            "action_item_deadlines": [{"owner": i["owner"], "due_at": i["due_at"]} for i in items],
            "summary": summary,
        },
    )
    addressed = {i["owner"] for i in items} | set(alert.latest.agencies_involved)
    addressed |= set(meeting.participants) if meeting is not None else set()
    audience = tuple(sorted(a for a in addressed - _POLICY_ADDS if a in allowed))
    return Outgoing("conclude", event, _context(alert), alert.header.urgency, audience)
