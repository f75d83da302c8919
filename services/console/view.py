"""What the coordinators know, as a pure core: verified, opened inbox events in; alerts, case timelines,
breaches and supervision rates out.

The console feeds :meth:`CaseView.apply` every event of the ``coordinators`` inbox (alert versions,
meetings scheduled and concluded, supervision breaches and reports) and :meth:`CaseView.record_own`
every event it published itself, because the policy does not deliver every such event back to the
coordinators (a ``lead.acknowledged`` goes to the agencies of the case and the hub). Nothing here reads a
clock, Kafka or a file; the time of "now" is an argument.

An alert's status is the furthest of: the status in its latest version from the hub, a meeting scheduled
or concluded on it (seen in the inbox), and the coordinators' own actions on it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, Literal, get_args
from urllib.parse import urlencode

from pydantic import ValidationError

from schemas.common import Category
from schemas.envelope import EnvelopeHeader, SectionName
from schemas.events import (
    AgencyRates,
    AlertReasonCode,
    AlertStatus,
    EventModel,
    JointMeetingAlert,
    JointMeetingConcluded,
    JointMeetingScheduled,
    SupervisionBreach,
    SupervisionReport,
    parse_event,
)
from services.console import deadlines, i18n
from services.hub.config import HubConfig
from services.kernel.errors import MalformedError

__all__ = [
    "AGES",
    "PAGE_SIZE",
    "SORTS",
    "STATUSES",
    "AgencyRow",
    "Alert",
    "CaseView",
    "Change",
    "Entry",
    "OwnAction",
    "OwnKind",
    "QueueFilter",
    "Rates",
    "ViewError",
    "aggregate_rates",
]

STATUSES: Final[tuple[AlertStatus, ...]] = get_args(AlertStatus)
_RANK: Final = {status: rank for rank, status in enumerate(STATUSES)}
_URGENCY_RANK: Final = {"immediate": 0, "urgent": 1, "routine": 2}
OwnKind = Literal["acknowledge", "schedule", "conclude"]
_OWN_STATUS: Final[dict[OwnKind, AlertStatus]] = {
    "acknowledge": "acknowledged",
    "schedule": "scheduled",
    "conclude": "concluded",
}
_OWN_TYPE: Final[dict[OwnKind, str]] = {
    "acknowledge": "lead.acknowledged",
    "schedule": "joint_meeting.scheduled",
    "conclude": "joint_meeting.concluded",
}
AGES: Final = ("1d", "7d", "30d", "older")
StatusFilter = Literal["open", "acknowledged", "scheduled", "concluded", "active", "all"]
Sort = Literal["priority", "deadline", "raised", "updated", "town"]
SORTS: Final[tuple[Sort, ...]] = get_args(Sort)
PAGE_SIZE: Final = 25
_MAX_PAGE: Final = 10_000


class ViewError(MalformedError):
    """An inbox event whose opened content is not a valid event of its type."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One inbox event: its clear header and its validated content (both sections joined)."""

    header: EnvelopeHeader
    event: EventModel

    @property
    def event_id(self) -> str:
        return self.header.id

    @property
    def type(self) -> str:
        return self.header.type

    @property
    def time(self) -> datetime:
        return self.header.time

    @property
    def subject(self) -> str:
        return self.header.subject


@dataclass(frozen=True, slots=True)
class OwnAction:
    """An event the console published: who (the account) did what to which alert, when.

    Only ids and times are kept: the content of a meeting or its conclusions comes back through the
    inbox, sealed, and is never written down in clear.
    """

    event_id: str
    kind: OwnKind
    alert_id: str
    subject: str
    at: datetime
    user: str


@dataclass(slots=True)
class Alert:
    """One alert (all versions share ``alert_id``) and what the coordinators did about it."""

    alert_id: str
    subject: str
    versions: list[Entry] = field(default_factory=list)
    meetings: list[Entry] = field(default_factory=list)
    conclusions: list[Entry] = field(default_factory=list)
    own: list[OwnAction] = field(default_factory=list)

    @property
    def latest_entry(self) -> Entry:
        return self.versions[-1]

    @property
    def latest(self) -> JointMeetingAlert:
        event = self.latest_entry.event
        assert isinstance(event, JointMeetingAlert)
        return event

    @property
    def header(self) -> EnvelopeHeader:
        return self.latest_entry.header

    @property
    def version(self) -> int:
        return len(self.versions)

    @property
    def meeting(self) -> JointMeetingScheduled | None:
        if not self.meetings:
            return None
        event = self.meetings[-1].event
        assert isinstance(event, JointMeetingScheduled)
        return event

    @property
    def conclusion(self) -> JointMeetingConcluded | None:
        if not self.conclusions:
            return None
        event = self.conclusions[-1].event
        assert isinstance(event, JointMeetingConcluded)
        return event

    @property
    def status(self) -> AlertStatus:
        candidates: list[AlertStatus] = [self.latest.status]
        if self.meetings:
            candidates.append("scheduled")
        if self.conclusions:
            candidates.append("concluded")
        candidates.extend(_OWN_STATUS[action.kind] for action in self.own)
        return max(candidates, key=lambda s: _RANK[s])

    @property
    def reason_codes(self) -> list[AlertReasonCode]:
        return [reason.code for reason in self.latest.reasons]

    @property
    def acknowledged_by(self) -> OwnAction | None:
        return next((a for a in self.own if a.kind == "acknowledge"), None)

    @property
    def updated_at(self) -> datetime:
        """When anything last happened to the alert: a version, a meeting, a conclusion, an own action."""
        moments = [self.latest.updated_at, *(e.time for e in (*self.meetings, *self.conclusions))]
        return max([*moments, *(a.at for a in self.own)])

    def sort_key(self) -> tuple[int, int, float]:
        """Open work first, then the most urgent, then the most recently updated."""
        return (
            1 if self.status == "concluded" else 0,
            _URGENCY_RANK.get(self.header.urgency, 3),
            -self.updated_at.timestamp(),
        )


@dataclass(frozen=True, slots=True)
class Change:
    """What an applied event changed, for live updates: the event type and the alert it concerns."""

    type: str
    event_id: str
    alert_id: str | None

    def to_json(self) -> str:
        return json.dumps({"type": self.type, "event_id": self.event_id, "alert_id": self.alert_id})


@dataclass(frozen=True, slots=True)
class QueueFilter:
    """The queue's filters, search, order and page; every field empty means everything not concluded,
    most pressing first, first page.

    ``q`` searches the pseudonym, the town, the category, the reasons and the status, by code and by
    their words in either language; ``overdue`` keeps the alerts with a deadline past (see
    :mod:`services.console.deadlines`).
    """

    status: StatusFilter = "active"
    town: str = ""
    rule: str = ""
    age: str = ""
    category: str = ""
    overdue: bool = False
    q: str = ""
    sort: Sort = "priority"
    page: int = 1

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> QueueFilter:
        """Filters from a query string; unknown values are ignored (they match nothing special)."""
        status = query.get("status", "active")
        if status not in ("open", "acknowledged", "scheduled", "concluded", "active", "all"):
            status = "active"
        rule = query.get("rule", "")
        age = query.get("age", "")
        category = query.get("category", "")
        sort = query.get("sort", "priority")
        page = query.get("page", "1")
        return cls(
            status=status,  # type: ignore[arg-type]  # checked against the literal above
            town=query.get("town", "")[:32],
            rule=rule if rule in get_args(AlertReasonCode) else "",
            age=age if age in AGES else "",
            category=category if category in get_args(Category) else "",
            overdue=query.get("overdue", "") == "1",
            q=" ".join(query.get("q", "").split())[:64],
            sort=sort if sort in SORTS else "priority",
            page=min(int(page), _MAX_PAGE) if page.isdigit() and int(page) > 0 else 1,
        )

    def audited(self) -> str:
        """The filters as the audit log keeps them: the search text only by its length (coordinators
        type names and phone numbers into it; the log keeps who looked, not what they typed)."""
        values = self.query()
        if "q" in values:
            values["q"] = f"({len(self.q)} chars)"
        return urlencode(values)

    def query(self, **changes: str) -> dict[str, str]:
        """The query string of these filters with ``changes``, leaving out empty and default values.

        Any change but of the page itself goes back to the first page.
        """
        values = {
            "status": self.status,
            "town": self.town,
            "rule": self.rule,
            "age": self.age,
            "category": self.category,
            "overdue": "1" if self.overdue else "",
            "q": self.q,
            "sort": self.sort,
            "page": str(self.page) if "page" not in changes and not changes else "",
        }
        values.update(changes)
        defaults = {"status": "active", "sort": "priority", "page": "1"}
        return {k: v for k, v in values.items() if v and defaults.get(k) != v}

    def matches(self, alert: Alert, now: datetime, *, overdue: bool = False) -> bool:
        """Whether the alert passes every filter; ``overdue`` says whether a deadline of it is past."""
        return (
            self._status_matches(alert.status)
            and (not self.town or alert.header.town == self.town)
            and (not self.rule or self.rule in alert.reason_codes)
            and (not self.category or alert.header.category == self.category)
            and (not self.overdue or overdue)
            and self._age_matches(now - alert.latest.raised_at)
            and (not self.q or self._found(alert))
        )

    def _found(self, alert: Alert) -> bool:
        """Every word of ``q`` is in the alert's pseudonym, town, category, reasons or status."""
        header = alert.header
        words: list[str] = [alert.subject, alert.alert_id, alert.status]
        for lang in i18n.LANGS:
            words += [
                i18n.town(lang, header.town),
                i18n.label(lang, "category", header.category),
                i18n.label(lang, "status", alert.status),
                *(i18n.label(lang, "reason", code) for code in alert.reason_codes),
            ]
        words += [header.town or "", header.category or "", *alert.reason_codes]
        haystack = "\n".join(words).casefold()
        return all(term in haystack for term in self.q.casefold().split())

    def _status_matches(self, status: AlertStatus) -> bool:
        if self.status == "active":
            return status != "concluded"
        return self.status in ("all", status)

    def _age_matches(self, age: timedelta) -> bool:
        if not self.age:
            return True
        if self.age == "older":
            return age > timedelta(days=7)
        return age <= {"1d": timedelta(days=1), "7d": timedelta(days=7), "30d": timedelta(days=30)}[self.age]


@dataclass(frozen=True, slots=True)
class AgencyRow:
    """One agency's counts and rates; a rate is ``None`` while nothing is due for it (all pending)."""

    agency: str
    received: int
    responded_in_time: int
    resolved: int
    satisfied: int
    response_rate: float | None
    resolution_rate: float | None
    satisfaction_rate: float | None
    breaches: int = 0
    pending: int = 0  # leads still inside their acknowledgement deadline
    counts: Mapping[str, float] = field(default_factory=dict, compare=False)  # the sums behind the rates


@dataclass(frozen=True, slots=True)
class Rates:
    """Per-agency rates as the hub reported them at ``period_end`` (one report per partition)."""

    period_start: datetime
    period_end: datetime
    rows: list[AgencyRow]

    def row(self, agency: str) -> AgencyRow | None:
        return next((r for r in self.rows if r.agency == agency), None)

    def district(self) -> AgencyRow:
        """Every agency's counts summed into one row (the district's rates)."""
        return _row("", [r.counts for r in self.rows])


_COUNTS: Final = (
    "received",
    "response_due",
    "responded_in_time",
    "resolution_due",
    "resolved",
    "with_feedback",
    "satisfied",
)


def _counts(row: AgencyRates) -> dict[str, float]:
    """A reported row's counts. A report from a hub before pending leads were told apart has no
    ``*_due`` counts: every lead received counted as due; its feedback count is estimated from its rate."""
    feedback = (
        row.with_feedback
        if row.with_feedback is not None
        else (row.satisfied / row.satisfaction_rate if row.satisfaction_rate else 0.0)
    )
    return {
        "received": row.received,
        "response_due": row.received if row.response_due is None else row.response_due,
        "responded_in_time": row.responded_in_time,
        "resolution_due": row.received if row.resolution_due is None else row.resolution_due,
        "resolved": row.resolved,
        "with_feedback": feedback,
        "satisfied": row.satisfied,
    }


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def _row(agency: str, parts: Iterable[Mapping[str, float]], breaches: int = 0) -> AgencyRow:
    total = dict.fromkeys(_COUNTS, 0.0)
    for part in parts:
        for name in _COUNTS:
            total[name] += part.get(name, 0.0)
    return AgencyRow(
        agency=agency,
        received=int(total["received"]),
        responded_in_time=int(total["responded_in_time"]),
        resolved=int(total["resolved"]),
        satisfied=int(total["satisfied"]),
        response_rate=_ratio(total["responded_in_time"], total["response_due"]),
        resolution_rate=_ratio(total["resolved"], total["resolution_due"]),
        satisfaction_rate=_ratio(total["satisfied"], total["with_feedback"]),
        breaches=breaches,
        pending=int(total["received"] - total["response_due"]),
        counts=total,
    )


def aggregate_rates(reports: Iterable[SupervisionReport], breaches: Mapping[str, int]) -> Rates | None:
    """Sum the rows of the latest period's reports (one per hub partition) into one row per agency.

    Counts add up and the rates are recomputed from them, over the leads due only: a lead still inside
    its deadline is pending, in no rate (as the hub and its Prometheus gauges count it).
    """
    points = trend(reports, breaches)
    return points[-1] if points else None


def trend(reports: Iterable[SupervisionReport], breaches: Mapping[str, int] | None = None) -> list[Rates]:
    """The rates at each time the hub reported, oldest first: the reports of one ``period_end`` (one per
    hub partition) summed per agency. ``breaches`` (per agency) go into the rows of every point."""
    by_end: dict[datetime, list[SupervisionReport]] = {}
    for report in reports:
        by_end.setdefault(report.period_end, []).append(report)
    points = []
    for end in sorted(by_end):
        parts: dict[str, list[dict[str, float]]] = {}
        for report in by_end[end]:
            for row in report.rows:
                parts.setdefault(row.agency, []).append(_counts(row))
        rows = [_row(a, parts[a], (breaches or {}).get(a, 0)) for a in sorted(parts)]
        start = min(r.period_start for r in by_end[end])
        points.append(Rates(period_start=start, period_end=end, rows=rows))
    return points


def _content(event_type: str, sections: Mapping[SectionName, Mapping[str, Any]]) -> EventModel:
    """The event from the sections the coordinators opened (details first, triage wins on a clash)."""
    merged = {**sections.get("details", {}), **sections.get("triage", {})}
    try:
        return parse_event(event_type, json.dumps(merged).encode())
    except (KeyError, ValidationError, TypeError, ValueError) as e:
        raise ViewError(f"a {event_type} event does not match its schema") from e


class CaseView:
    """The coordinators' view of their inbox. Not thread-safe: the console guards it with a lock.

    ``config`` is the hub's, for the deadlines of each alert (:mod:`services.console.deadlines`).
    """

    def __init__(self, config: HubConfig | None = None) -> None:
        self.config = config or HubConfig()
        self.alerts: dict[str, Alert] = {}
        self.by_subject: dict[str, list[Entry]] = {}
        self.breaches: list[Entry] = []
        self.reports: list[Entry] = []
        self.own: dict[str, OwnAction] = {}
        self._seen: set[str] = set()
        self._pending_meetings: dict[str, list[Entry]] = {}  # alert id -> events before the alert

    # -- input

    def apply(
        self, header: EnvelopeHeader, sections: Mapping[SectionName, Mapping[str, Any]]
    ) -> Change | None:
        """Add one opened inbox event; None when it was already applied. Raises :class:`ViewError`."""
        if header.id in self._seen:
            return None
        entry = Entry(header, _content(header.type, sections))
        self._seen.add(header.id)
        self.by_subject.setdefault(header.subject, []).append(entry)
        alert_id: str | None = None
        event = entry.event
        if isinstance(event, JointMeetingAlert):
            alert_id = event.alert_id
            alert = self.alerts.get(alert_id)
            if alert is None:
                alert = self.alerts[alert_id] = Alert(alert_id=alert_id, subject=header.subject)
                alert.own = [a for a in self.own.values() if a.alert_id == alert_id]
                for pending in self._pending_meetings.pop(alert_id, []):
                    self._attach(alert, pending)
            alert.versions.append(entry)
            alert.versions.sort(key=_version_order)
        elif isinstance(event, JointMeetingScheduled | JointMeetingConcluded):
            alert_id = event.alert_id
            alert = self.alerts.get(alert_id)
            if alert is None:
                self._pending_meetings.setdefault(alert_id, []).append(entry)
            else:
                self._attach(alert, entry)
        elif isinstance(event, SupervisionBreach):
            self.breaches.append(entry)
        elif isinstance(event, SupervisionReport):
            self.reports.append(entry)
        return Change(type=header.type, event_id=header.id, alert_id=alert_id)

    @staticmethod
    def _attach(alert: Alert, entry: Entry) -> None:
        target = alert.meetings if isinstance(entry.event, JointMeetingScheduled) else alert.conclusions
        target.append(entry)
        target.sort(key=lambda e: e.time)

    def record_own(self, action: OwnAction) -> Change | None:
        """Add an event the console published; None when it was already recorded."""
        if action.event_id in self.own:
            return None
        self.own[action.event_id] = action
        alert = self.alerts.get(action.alert_id)
        if alert is not None:
            alert.own.append(action)
        return Change(type=_OWN_TYPE[action.kind], event_id=action.event_id, alert_id=action.alert_id)

    # -- output

    def deadlines(self, alert: Alert) -> list[deadlines.Deadline]:
        """The alert's deadlines, from the hub's configuration and the breaches it reported."""
        return deadlines.for_alert(alert, self.breaches, self.config)

    def queue(self, where: QueueFilter, now: datetime) -> list[Alert]:
        """Every alert that passes ``where``, in its order (all pages)."""
        chosen = []
        due: dict[str, datetime] = {}
        for alert in self.alerts.values():
            if not alert.versions:
                continue
            found = self.deadlines(alert)
            if where.matches(alert, now, overdue=deadlines.overdue(found, now)):
                chosen.append(alert)
                pressing = deadlines.pressing(found, now)
                if pressing is not None:
                    due[alert.alert_id] = pressing.due_at
        chosen.sort(key=Alert.sort_key)  # the tie-break of every other order
        if where.sort == "deadline":
            far = datetime.max.replace(tzinfo=now.tzinfo)
            chosen.sort(key=lambda a: due.get(a.alert_id, far))
        elif where.sort == "raised":
            chosen.sort(key=lambda a: a.latest.raised_at, reverse=True)
        elif where.sort == "updated":
            chosen.sort(key=lambda a: a.updated_at, reverse=True)
        elif where.sort == "town":
            chosen.sort(key=lambda a: a.header.town or "\uffff")
        return chosen

    def alert(self, alert_id: str) -> Alert | None:
        alert = self.alerts.get(alert_id)
        return alert if alert is not None and alert.versions else None

    def counts(self) -> dict[str, int]:
        """How many alerts have each status (and ``active``: not concluded)."""
        result = dict.fromkeys([*STATUSES, "active", "all"], 0)
        for alert in self.alerts.values():
            if not alert.versions:
                continue
            result[alert.status] += 1
            result["all"] += 1
            result["active"] += alert.status != "concluded"
        return result

    def towns(self) -> list[str]:
        return sorted({a.header.town for a in self.alerts.values() if a.versions and a.header.town})

    def timeline(self, subject: str) -> list[Entry | OwnAction]:
        """Everything about the victim the coordinators may read, and their own actions, in event order.

        Own actions whose event came back through the inbox appear once (as the inbox event). Entries go
        by time, but what belongs to an alert never before the alert's first version (clocks of the hub
        and the console differ), and at one time an alert before anything else (the sort is stable:
        otherwise inbox events before own actions).
        """
        entries: list[Entry | OwnAction] = list(self.by_subject.get(subject, []))
        seen = {e.event_id for e in self.by_subject.get(subject, [])}
        entries += [a for a in self.own.values() if a.subject == subject and a.event_id not in seen]
        return sorted(entries, key=self._timeline_key)

    def _timeline_key(self, entry: Entry | OwnAction) -> tuple[datetime, int]:
        if isinstance(entry, OwnAction):
            at, alert_id, type_ = entry.at, entry.alert_id, _OWN_TYPE[entry.kind]
        else:
            at, type_ = entry.time, entry.type
            alert_id = str(getattr(entry.event, "alert_id", ""))
        alert = self.alerts.get(alert_id)
        if alert is not None and alert.versions and type_ != "joint_meeting.alert":
            at = max(at, alert.versions[0].time)
        return (at, 0 if type_ == "joint_meeting.alert" else 1)

    def breach_list(self) -> list[Entry]:
        """Breaches, the most recently detected first."""

        def detected(entry: Entry) -> datetime:
            event = entry.event
            return event.detected_at if isinstance(event, SupervisionBreach) else entry.time

        return sorted(self.breaches, key=detected, reverse=True)

    def rates(self) -> Rates | None:
        """The newest rates the hub reported, with the breaches per agency so far."""
        return aggregate_rates(self._reports(), self.breaches_by_agency())

    def trend(self) -> list[Rates]:
        """The rates at each time the hub reported, oldest first (the trend chart)."""
        return trend(self._reports())

    def _reports(self) -> list[SupervisionReport]:
        return [e.event for e in self.reports if isinstance(e.event, SupervisionReport)]

    def breaches_by_agency(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for entry in self.breaches:
            if isinstance(entry.event, SupervisionBreach):
                counts[entry.event.agency] = counts.get(entry.event.agency, 0) + 1
        return counts

    def alert_for_subject(self, subject: str) -> Alert | None:
        """The newest alert about a victim (to link a breach to its case)."""
        found = [a for a in self.alerts.values() if a.subject == subject and a.versions]
        return max(found, key=lambda a: a.latest.raised_at, default=None)


def _version_order(entry: Entry) -> tuple[datetime, int, datetime]:
    event = entry.event
    assert isinstance(event, JointMeetingAlert)
    return (event.updated_at, len(event.reasons), entry.time)
