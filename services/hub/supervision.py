"""Supervision (工作督查) as a pure core: the deadlines of every routed lead, the breaches found at a given
time, and the rates per agency (响应率 / 解决率 / 满意率).

Watches are derived from the facts a :class:`~services.hub.state.VictimState` keeps, so a response that
arrives before the lead it answers (events may arrive out of order) still counts. Choices made here:

- **Who must act on a lead**: every participant the lead was sealed to except the sender, ``hub`` and
  ``coordinators`` (:attr:`HubConfig.not_acting`); the hub sees the whole recipient set of the envelope,
  not which section each recipient got.
- **What satisfies a lead's deadlines**, from the watched agency itself (the signed sender), naming the
  lead in its triage ``lead_id`` or its ``refs``: *acknowledge* by ``lead.acknowledged``,
  ``lead.action_taken`` or ``lead.resolved`` (acting or closing a lead answers it); *first_action* by
  ``lead.action_taken`` or ``lead.resolved``; *resolve* by ``lead.resolved``. All three clocks start at
  the lead's event time.
- **Protection orders**: a ``protection_order.requested`` must be decided (``protection_order.decided``
  naming it in ``request_id`` or ``refs``) within 72 h, 24 h when its triage says ``urgent``; the watched
  agency is the court. The router already allows only the court to publish decisions.
- **Action items** of a ``joint_meeting.concluded``: each item of an owner is met by a
  ``lead.action_taken`` from the owner about this victim at or after the meeting's event time; each
  action meets one item, items taken in order of their deadlines (earliest action first), so an owner
  with three items needs three actions.
- **When a deadline breaches**: a deadline is met in time when the response's event time is at or before
  ``due_at``. At ``now > due_at + breach_grace`` a deadline not met in time is a breach, reported once;
  one met late is still a breach when :func:`due` runs after it (the lateness is the breach).
- Event ids of breaches are deterministic (UUIDv5 of the watch's key), as are those of alerts.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Final

from schemas.common import Urgency
from schemas.events import DeadlineKind, SupervisionBreach
from services.hub.config import HubConfig
from services.hub.errors import ObservationError
from services.hub.ids import deterministic_id, iso
from services.hub.state import ResponseFact, VictimState

__all__ = [
    "BreachEmission",
    "RatesTally",
    "Watch",
    "agency_rates",
    "due",
    "next_due",
    "report_payload",
    "watches",
]

_ANSWERS: Final[dict[DeadlineKind, frozenset[str]]] = {
    "acknowledge": frozenset({"acknowledged", "action_taken", "resolved"}),
    "first_action": frozenset({"action_taken", "resolved"}),
    "resolve": frozenset({"resolved"}),
}
_SATISFIED: Final = frozenset({"satisfied", "basically_satisfied"})
_WITH_FEEDBACK: Final = frozenset({"satisfied", "basically_satisfied", "dissatisfied"})


@dataclass(frozen=True, kw_only=True)
class Watch:
    """One deadline: ``agency`` must answer the event ``lead_id`` (a lead, a protection-order request or
    a concluded meeting) by ``due_at``; ``met_at`` is the event time of the answer, if any yet."""

    key: str
    lead_id: str
    agency: str
    kind: DeadlineKind
    started_at: datetime
    due_at: datetime
    urgency: Urgency
    met_at: datetime | None = None

    @property
    def met_in_time(self) -> bool:
        """Whether it was answered at or before its deadline."""
        return self.met_at is not None and self.met_at <= self.due_at


@dataclass(frozen=True, kw_only=True)
class BreachEmission:
    """A ``supervision.breach`` to publish, to the coordinators and the agency concerned (``audience``)."""

    event_id: str
    subject: str
    lead_id: str
    agency: str
    deadline_kind: DeadlineKind
    due_at: datetime
    detected_at: datetime
    urgency: Urgency

    @property
    def audience(self) -> list[str]:
        """The agency concerned; the policy adds coordinators and plc."""
        return [self.agency]

    def payload(self) -> dict[str, Any]:
        """The event's fields as JSON values, for :class:`schemas.events.SupervisionBreach`."""
        return {
            "schema_version": 1,
            "lead_id": self.lead_id,
            "agency": self.agency,
            "deadline_kind": self.deadline_kind,
            "due_at": iso(self.due_at),
            "detected_at": iso(self.detected_at),
            "urgency": self.urgency,
        }

    def to_event(self) -> SupervisionBreach:
        """The validated event model."""
        return SupervisionBreach.model_validate_json(json.dumps(self.payload()))


def _answers_by(state: VictimState) -> dict[tuple[str, str], list[ResponseFact]]:
    """Responses indexed by (event id they name, responding agency), in event-time order."""
    index: dict[tuple[str, str], list[ResponseFact]] = defaultdict(list)
    for response in state.responses:
        for ref in response.refs:
            index[ref, response.by].append(response)
    return index


def _first(responses: Iterable[ResponseFact], kinds: frozenset[str]) -> datetime | None:
    return min((r.t for r in responses if r.kind in kinds), default=None)


def watches(state: VictimState, cfg: HubConfig) -> list[Watch]:
    """Every deadline the victim's retained facts set, with whether and when each was answered."""
    found: list[Watch] = []
    answers = _answers_by(state)
    for lead in state.leads:
        if lead.via is not None:
            continue  # a linked subject's lead: its own subject watches it (services.hub.links)
        starts: dict[DeadlineKind, timedelta] = {
            "acknowledge": cfg.acknowledge[lead.urgency],
            "first_action": cfg.first_action,
            "resolve": cfg.resolution,
        }
        for agency in lead.acting:
            responses = answers.get((lead.id, agency), [])
            for kind, span in starts.items():
                found.append(
                    Watch(
                        key=f"{lead.id}/{agency}/{kind}",
                        lead_id=lead.id,
                        agency=agency,
                        kind=kind,
                        started_at=lead.reported_at,
                        due_at=lead.reported_at + span,
                        urgency=lead.urgency,
                        met_at=_first(responses, _ANSWERS[kind]),
                    )
                )
    decisions: dict[str, list[datetime]] = defaultdict(list)
    for response in state.responses:
        if response.kind == "decided":
            for ref in response.refs:
                decisions[ref].append(response.t)
    for order in state.orders:
        span = cfg.order_decision_urgent if order.urgent else cfg.order_decision
        found.append(
            Watch(
                key=f"{order.id}/{cfg.court}/protection_order_decision",
                lead_id=order.id,
                agency=cfg.court,
                kind="protection_order_decision",
                started_at=order.t,
                due_at=order.t + span,
                urgency=order.urgency,
                met_at=min(decisions.get(order.id, []), default=None),
            )
        )
    found.extend(_action_items(state))
    return found


def _action_items(state: VictimState) -> list[Watch]:
    """Action-item deadlines; each owner's actions after a meeting meet its items, earliest due first."""
    items_by_owner: dict[str, list[Watch]] = defaultdict(list)
    for meeting in state.meetings:
        for index, item in enumerate(meeting.items):
            items_by_owner[item.owner].append(
                Watch(
                    key=f"{meeting.id}/{item.owner}/action_item/{index}",
                    lead_id=meeting.id,
                    agency=item.owner,
                    kind="action_item",
                    started_at=meeting.t,
                    due_at=item.due_at,
                    urgency=meeting.urgency,
                )
            )
    found: list[Watch] = []
    for owner, owned in items_by_owner.items():
        actions = [r for r in state.responses if r.by == owner and r.kind == "action_taken"]
        used: set[str] = set()
        for watch in sorted(owned, key=lambda w: (w.due_at, w.started_at, w.key)):
            action = next((a for a in actions if a.id not in used and a.t >= watch.started_at), None)
            if action is None:
                found.append(watch)
            else:
                used.add(action.id)
                found.append(replace(watch, met_at=action.t))
    return found


def _aware(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ObservationError("now must be timezone-aware")
    return now


def due(state: VictimState, now: datetime, cfg: HubConfig) -> tuple[VictimState, list[BreachEmission]]:
    """The deadlines breached at ``now`` and not reported before; the returned state remembers them.

    The input state is not modified; when nothing is breached it is returned as it is.
    """
    now = _aware(now)
    reported = set(state.breached)
    breached = [
        w
        for w in watches(state, cfg)
        if w.key not in reported and not w.met_in_time and now > w.due_at + cfg.breach_grace
    ]
    if not breached:
        return state, []
    breached.sort(key=lambda w: (w.due_at, w.key))
    new = state.fork()
    new.breached.extend(w.key for w in breached)
    emissions = [
        BreachEmission(
            event_id=deterministic_id("supervision.breach", w.key),
            subject=state.subject,
            lead_id=w.lead_id,
            agency=w.agency,
            deadline_kind=w.kind,
            due_at=w.due_at,
            detected_at=now,
            urgency=w.urgency,
        )
        for w in breached
    ]
    return new, emissions


def next_due(state: VictimState, cfg: HubConfig) -> datetime | None:
    """The earliest time at which :func:`due` would report a breach not yet reported (for timers)."""
    reported = set(state.breached)
    pending = [
        w.due_at + cfg.breach_grace
        for w in watches(state, cfg)
        if w.key not in reported and not w.met_in_time
    ]
    return min(pending, default=None)


def agency_rates(
    states: Iterable[VictimState], now: datetime, cfg: HubConfig, *, since: datetime | None = None
) -> dict[str, dict[str, Any]]:
    """Counts and rates per agency over the leads routed to it with a reported time in ``[since, now)``.

    Each lead is, for each rate, **met**, **failed** or **pending** at ``now``; a pending lead is in no
    rate's denominator, so a lead still inside its deadline never lowers a rate:

    - ``received``: leads routed to the agency (it was among those that must act);
    - ``response_due``: of those, answered by the agency by ``now`` or past the acknowledgement deadline;
      ``responded_in_time``: answered (acknowledged, acted on or resolved) at or before that deadline;
    - ``resolution_due``: resolved by ``now`` or past the resolution deadline; ``resolved``: resolved by
      ``now`` (in time or not);
    - ``satisfied`` / ``with_feedback``: of the resolved, those whose latest ``lead.resolved`` says
      ``satisfied`` or ``basically_satisfied`` / gave any feedback (``not_reached`` is none);
    - 响应率 ``response_rate`` = responded_in_time / response_due; 解决率 ``resolution_rate`` = resolved /
      resolution_due; 满意率 ``satisfaction_rate`` = satisfied / with_feedback; each ``None`` while its
      denominator is 0 (nothing is due yet: no rate, rather than a rate of 0).

    Rows are keyed and sorted by agency, only for agencies that received a lead; each row is a
    :class:`~schemas.events.AgencyRates` dict. :class:`RatesTally` counts the same one state at a time.
    """
    tally = RatesTally(now, cfg, since=since)
    for state in states:
        tally.add(state)
    return tally.rows()


class RatesTally:
    """:func:`agency_rates` counted one victim's state at a time, so a caller going through a whole
    partition's victims (the hub's tick) holds one state, not all of them."""

    _FIELDS: Final = ("received", "response_due", "responded_in_time", "resolution_due", "resolved")

    def __init__(self, now: datetime, cfg: HubConfig, *, since: datetime | None = None) -> None:
        self.now = _aware(now)
        self.cfg = cfg
        self.since = since
        self.counts: dict[str, dict[str, int]] = defaultdict(
            lambda: dict.fromkeys((*self._FIELDS, "satisfied", "with_feedback"), 0)
        )

    def add(self, state: VictimState) -> None:
        """Count the leads of ``state`` (see :func:`agency_rates`)."""
        now, cfg, since = self.now, self.cfg, self.since
        answers = _answers_by(state)
        for lead in state.leads:
            reported = lead.reported_at
            if lead.via is not None or reported >= now or (since is not None and reported < since):
                continue  # a linked subject's lead is counted where it was keyed
            ack_due = reported + cfg.acknowledge[lead.urgency]
            resolve_due = reported + cfg.resolution
            for agency in lead.acting:
                responses = [r for r in answers.get((lead.id, agency), []) if r.t <= now]
                row = self.counts[agency]
                row["received"] += 1
                answered = _first(responses, _ANSWERS["acknowledge"])
                row["response_due"] += answered is not None or now > ack_due
                row["responded_in_time"] += answered is not None and answered <= ack_due
                resolutions = [r for r in responses if r.kind == "resolved"]
                row["resolution_due"] += bool(resolutions) or now > resolve_due
                if resolutions:
                    row["resolved"] += 1
                    latest = max(resolutions, key=lambda r: (r.t, r.id)).satisfaction
                    row["satisfied"] += latest in _SATISFIED
                    row["with_feedback"] += latest in _WITH_FEEDBACK

    def rows(self) -> dict[str, dict[str, Any]]:
        """The rows of the states counted so far, as :func:`agency_rates` returns them."""
        return {agency: _rates_row(agency, self.counts[agency]) for agency in sorted(self.counts)}


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _rates_row(agency: str, count: Mapping[str, int]) -> dict[str, Any]:
    return {
        "agency": agency,
        **count,
        "response_rate": _ratio(count["responded_in_time"], count["response_due"]),
        "resolution_rate": _ratio(count["resolved"], count["resolution_due"]),
        "satisfaction_rate": _ratio(count["satisfied"], count["with_feedback"]),
    }


def report_payload(
    rows: Mapping[str, Mapping[str, Any]] | Iterable[Mapping[str, Any]],
    period_start: datetime,
    period_end: datetime,
) -> dict[str, Any]:
    """The fields of a :class:`schemas.events.SupervisionReport` as JSON values, rows sorted by agency.

    ``rows`` is what :func:`agency_rates` returns (or its values).
    """
    values = list(rows.values()) if isinstance(rows, Mapping) else list(rows)
    return {
        "schema_version": 1,
        "period_start": iso(_aware(period_start)),
        "period_end": iso(_aware(period_end)),
        "rows": [dict(row) for row in sorted(values, key=lambda row: str(row["agency"]))],
    }
