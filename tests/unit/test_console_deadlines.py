"""An alert's deadlines in the console: derived from the hub's configuration, counted down, marked
overdue; and the queue's search, filters, orders and pages that use them. Events are sealed by the hub of
a demo domain and opened with the coordinators' keys, as the console opens them."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from services.console import deadlines
from services.console.view import PAGE_SIZE, CaseView, OwnAction, QueueFilter
from services.hub.config import HubConfig
from services.hub.ids import alert_event_id
from services.kernel import envelope
from tests.kit import NOW, DemoDomain
from tests.unit.test_console_view import alert_payload, hub_alert, opened, view_with

pytestmark = pytest.mark.unit

CONFIG = HubConfig()


def scheduled(domain: DemoDomain, alert: envelope.Opened, *, meeting_at: Any = NOW, time: Any = None) -> Any:
    return opened(
        domain,
        "joint_meeting.scheduled",
        {
            "schema_version": 1,
            "alert_id": alert.sections["triage"]["alert_id"],
            "meeting_at": meeting_at.isoformat(),
            "participants": ["police"],
        },
        subject=alert.header.subject,
        sender="coordinators",
        **({"time": time} if time is not None else {}),
    )


def concluded(domain: DemoDomain, alert: envelope.Opened, *, due: Any, event_id: str | None = None) -> Any:
    items = [{"owner": "police", "due_at": due.isoformat(), "description": "出具告诫书"}]
    return opened(
        domain,
        "joint_meeting.concluded",
        {
            "schema_version": 1,
            "alert_id": alert.sections["triage"]["alert_id"],
            "concluded_at": NOW.isoformat(),
            "action_items": items,
            "action_item_deadlines": [{"owner": "police", "due_at": due.isoformat()}],
            "summary": "结论",
        },
        subject=alert.header.subject,
        sender="coordinators",
        event_id=event_id,
    )


def by_kind(found: list[deadlines.Deadline]) -> dict[str, deadlines.Deadline]:
    return {d.kind: d for d in found}


# --------------------------------------------------------------------------- deadlines


@pytest.mark.parametrize(("urgency", "hours"), [("immediate", 1), ("urgent", 4)])
def test_an_alert_must_be_acknowledged_within_the_hubs_deadline_for_its_urgency(
    domain: DemoDomain, urgency: str, hours: int
) -> None:
    event = hub_alert(domain, urgency=urgency)
    view = view_with(event)
    (alert,) = view.alerts.values()
    ack = by_kind(view.deadlines(alert))["acknowledge"]
    assert ack.due_at == NOW + CONFIG.acknowledge[urgency]  # type: ignore[index]
    assert ack.due_at == NOW + timedelta(hours=hours)
    assert ack.state(NOW + timedelta(minutes=1)) == "pending"
    assert ack.state(NOW + timedelta(hours=hours) - timedelta(minutes=1)) == "soon"
    assert ack.state(NOW + timedelta(hours=hours, minutes=1)) == "overdue"
    assert deadlines.overdue(view.deadlines(alert), NOW + timedelta(hours=hours, minutes=1))


def test_the_meeting_must_be_scheduled_within_the_hubs_first_action_deadline(domain: DemoDomain) -> None:
    view = view_with(hub_alert(domain))
    (alert,) = view.alerts.values()
    assert by_kind(view.deadlines(alert))["schedule"].due_at == NOW + CONFIG.first_action


def test_an_update_that_makes_the_alert_immediate_brings_the_acknowledgement_forward(
    domain: DemoDomain,
) -> None:
    first = hub_alert(domain, version=1, urgency="urgent")
    later = NOW + timedelta(minutes=30)
    second = hub_alert(
        domain,
        version=2,
        urgency="immediate",
        reasons=("professional_judgement", "order_breach"),
        updated=later,
    )
    view = view_with(first, second)
    (alert,) = view.alerts.values()
    assert by_kind(view.deadlines(alert))["acknowledge"].due_at == later + timedelta(hours=1)


def test_an_acknowledgement_meets_the_deadline_and_a_late_one_is_marked_late(domain: DemoDomain) -> None:
    event = hub_alert(domain, urgency="immediate")
    view = view_with(event)
    (alert,) = view.alerts.values()
    ack_at = NOW + timedelta(hours=2)
    view.record_own(
        OwnAction(envelope.new_event_id(), "acknowledge", alert.alert_id, alert.subject, ack_at, "wang")
    )
    found = by_kind(view.deadlines(alert))
    assert found["acknowledge"].met_at == ack_at
    assert found["acknowledge"].state(NOW + timedelta(hours=3)) == "met_late"
    assert found["schedule"].state(NOW + timedelta(hours=3)) == "pending"
    assert deadlines.pressing(view.deadlines(alert), NOW + timedelta(hours=3)) == found["schedule"]


def test_a_scheduled_meeting_meets_both_the_acknowledgement_and_the_scheduling(domain: DemoDomain) -> None:
    event = hub_alert(domain)
    view = view_with(event, scheduled(domain, event, time=NOW + timedelta(hours=1)))
    (alert,) = view.alerts.values()
    found = view.deadlines(alert)
    assert {d.kind: d.state(NOW + timedelta(days=3)) for d in found} == {
        "acknowledge": "met",
        "schedule": "met",
    }
    assert deadlines.pressing(found, NOW + timedelta(days=3)) is None


def test_an_action_item_counts_down_to_its_due_date_and_is_overdue_once_the_hub_reports_its_breach(
    domain: DemoDomain,
) -> None:
    event = hub_alert(domain)
    due = NOW + timedelta(days=7)
    conclusion = concluded(domain, event, due=due)
    view = view_with(event, conclusion)
    (alert,) = view.alerts.values()
    item = by_kind(view.deadlines(alert))["action_item"]
    assert (item.owner, item.due_at) == ("police", due)
    assert item.state(NOW + timedelta(days=1)) == "pending"
    assert item.state(due + timedelta(hours=1)) == "passed", "without a breach, the owner may have acted"
    breach = opened(
        domain,
        "supervision.breach",
        {
            "schema_version": 1,
            "lead_id": conclusion.header.id,
            "agency": "police",
            "deadline_kind": "action_item",
            "due_at": due.isoformat(),
            "detected_at": (due + timedelta(minutes=5)).isoformat(),
            "urgency": "urgent",
        },
        subject=event.header.subject,
        audience=["police"],
    )
    view.apply(breach.header, breach.sections)
    item = by_kind(view.deadlines(alert))["action_item"]
    assert item.state(due + timedelta(hours=1)) == "overdue"


# --------------------------------------------------------------------------- times and order


def test_an_own_action_updates_the_time_the_alert_was_last_updated(domain: DemoDomain) -> None:
    view = view_with(hub_alert(domain))
    (alert,) = view.alerts.values()
    assert alert.updated_at == NOW
    later = NOW + timedelta(minutes=20)
    view.record_own(
        OwnAction(envelope.new_event_id(), "acknowledge", alert.alert_id, alert.subject, later, "wang")
    )
    assert alert.updated_at == later


def test_the_timeline_lists_a_meeting_after_the_alert_it_belongs_to_even_when_its_clock_is_behind(
    domain: DemoDomain,
) -> None:
    subject = domain.subject("13800000001")
    payload = alert_payload(subject)
    event = opened(
        domain,
        "joint_meeting.alert",
        payload,
        subject=subject,
        event_id=alert_event_id(payload["alert_id"], 1),
        time=NOW + timedelta(minutes=3),  # the hub's clock runs ahead of the console's
    )
    meeting = scheduled(domain, event, time=NOW)
    view = view_with(meeting, event)
    types = [getattr(e, "type", "own") for e in view.timeline(event.header.subject)]
    assert types == ["joint_meeting.alert", "joint_meeting.scheduled"]


# --------------------------------------------------------------------------- the queue


def queue_of(domain: DemoDomain) -> CaseView:
    return view_with(
        hub_alert(domain, "13800000001", town="renhe", urgency="immediate", category="child_abuse"),
        hub_alert(domain, "13800000002", town="mapo", raised=NOW - timedelta(hours=3)),
        hub_alert(
            domain, "13800000003", town="houshayu", reasons=("high_risk",), raised=NOW - timedelta(days=2)
        ),
    )


def towns(view: CaseView, query: dict[str, str], now: Any = NOW) -> list[str | None]:
    return [a.header.town for a in view.queue(QueueFilter.from_query(query), now)]


@pytest.mark.parametrize(
    ("q", "found"),
    [
        ("仁和", ["renhe"]),
        ("Mapo", ["mapo"]),
        ("虐待儿童", ["renhe"]),
        ("child abuse", ["renhe"]),
        ("高风险", ["houshayu"]),
        ("high_risk", ["houshayu"]),
        ("新预警 后沙峪", ["houshayu"]),
        ("no such words", []),
    ],
)
def test_the_search_finds_alerts_by_town_category_reason_and_status_in_either_language(
    domain: DemoDomain, q: str, found: list[str]
) -> None:
    assert towns(queue_of(domain), {"q": q, "status": "all"}) == found


def test_the_search_finds_an_alert_by_its_pseudonym(domain: DemoDomain) -> None:
    view = queue_of(domain)
    subject = domain.subject("13800000002")
    assert towns(view, {"q": subject[:12]}) == ["mapo"]


def test_the_overdue_filter_keeps_the_alerts_past_a_deadline(domain: DemoDomain) -> None:
    view = queue_of(domain)
    # an hour and a half on: the immediate alert (1 h) is late, the urgent one raised 3 h ago (4 h) too;
    # the one raised two days ago is past its 24 h scheduling deadline.
    now = NOW + timedelta(minutes=90)
    assert sorted(t or "" for t in towns(view, {"overdue": "1"}, now)) == ["houshayu", "mapo", "renhe"]
    assert towns(view, {"overdue": "1"}, NOW + timedelta(minutes=30)) == ["houshayu"]


def test_the_queue_sorts_by_nearest_deadline_newest_raised_and_town(domain: DemoDomain) -> None:
    view = queue_of(domain)
    assert towns(view, {"sort": "deadline"}) == ["houshayu", "renhe", "mapo"]
    assert towns(view, {"sort": "raised"}) == ["renhe", "mapo", "houshayu"]
    assert towns(view, {"sort": "town"}) == ["houshayu", "mapo", "renhe"]


def test_the_queue_filters_by_category(domain: DemoDomain) -> None:
    assert towns(queue_of(domain), {"category": "child_abuse"}) == ["renhe"]
    assert QueueFilter.from_query({"category": "no_such"}).category == ""


def test_a_page_number_is_kept_in_the_query_and_any_other_change_goes_back_to_the_first_page() -> None:
    where = QueueFilter.from_query({"page": "3", "q": "仁和", "sort": "deadline"})
    assert where.query() == {"page": "3", "q": "仁和", "sort": "deadline"}
    assert where.query(town="mapo") == {"q": "仁和", "sort": "deadline", "town": "mapo"}
    assert where.query(page="4")["page"] == "4"
    assert QueueFilter.from_query({"page": "-1"}).page == 1
    assert QueueFilter.from_query({"page": "x"}).page == 1


def test_a_page_holds_page_size_alerts_and_a_page_beyond_the_last_shows_the_last(domain: DemoDomain) -> None:
    from services.console.pages import page_of

    view = view_with(*(hub_alert(domain, f"1390000{i:04d}") for i in range(PAGE_SIZE + 3)))
    alerts = view.queue(QueueFilter(), NOW)
    first, pages = page_of(alerts, QueueFilter())
    assert (len(first), pages) == (PAGE_SIZE, 2)
    last, _ = page_of(alerts, QueueFilter(page=99))
    assert len(last) == 3
    assert not {a.alert_id for a in first} & {a.alert_id for a in last}
