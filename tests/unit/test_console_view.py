"""The console's pure parts: the view of the coordinators' inbox (alerts, their status, timelines,
filters, rates) and the forms that become joint-meeting events. Events are sealed by the hub of a demo
domain and opened with the coordinators' keys, as the console opens them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from multidict import MultiDict, MultiDictProxy

from schemas.events import JointMeetingConcluded, JointMeetingScheduled, LeadAcknowledged, SupervisionReport
from services.console import actions
from services.console.actions import FormError
from services.console.view import CaseView, OwnAction, QueueFilter, ViewError, aggregate_rates, trend
from services.hub.ids import alert_event_id, alert_id_for
from services.kernel import envelope
from tests.kit import NOW, DemoDomain, header

pytestmark = pytest.mark.unit

ZONE = ZoneInfo("Asia/Shanghai")
ALLOWED = {"plc", "police", "womens_federation", "mediation.renhe", "court", "hub", "education"}


# --------------------------------------------------------------------------- events as the console gets them


def opened(
    domain: DemoDomain,
    event_type: str,
    payload: dict[str, Any],
    *,
    subject: str,
    sender: str = "hub",
    event_id: str | None = None,
    **fields: Any,
) -> envelope.Opened:
    """An event sealed by ``sender`` per the policy and opened with the coordinators' keys."""
    fields.setdefault("audience", ["police", "womens_federation"])
    h = header(
        type=event_type,
        schema=f"{event_type}/1",
        source=f"urn:lianfang:{sender}",
        subject=subject,
        id=event_id or envelope.new_event_id(),
        **fields,
    )
    record = envelope.seal(
        h, {"triage": payload, "details": payload}, registry=domain.registry, signer=domain.keys(sender)
    )
    return envelope.verify_and_open(
        record.value, registry=domain.registry, now=NOW, keystore=domain.keys("coordinators")
    )


def alert_payload(
    subject: str,
    *,
    episode: int = 1,
    reasons: tuple[str, ...] = ("professional_judgement",),
    status: str = "open",
    raised: datetime = NOW,
    updated: datetime | None = None,
    agencies: tuple[str, ...] = ("police", "womens_federation", "mediation.renhe"),
) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "alert_id": alert_id_for(subject, episode),
        "victim_pseudonym": subject,
        "reasons": [{"code": code, "detail": f"{code} fired"} for code in reasons],
        "agencies_involved": list(agencies),
        "related_events": [envelope.new_event_id()],
        "raised_at": raised.isoformat(),
        "updated_at": (updated or raised).isoformat(),
        "status": status,
    }


def hub_alert(domain: DemoDomain, phone: str = "13800000001", version: int = 1, **kw: Any) -> envelope.Opened:
    subject = domain.subject(phone)
    header_fields = {k: kw.pop(k) for k in ("town", "category", "minor", "urgency") if k in kw}
    payload = alert_payload(subject, **kw)
    return opened(
        domain,
        "joint_meeting.alert",
        payload,
        subject=subject,
        event_id=alert_event_id(payload["alert_id"], version),
        **header_fields,
    )


def view_with(*events: envelope.Opened) -> CaseView:
    view = CaseView()
    for event in events:
        view.apply(event.header, event.sections)
    return view


def form(**fields: Any) -> MultiDictProxy[str]:
    pairs: list[tuple[str, str]] = []
    for name, value in fields.items():
        for item in value if isinstance(value, list) else [value]:
            pairs.append((name, item))
    return MultiDictProxy(MultiDict(pairs))


# --------------------------------------------------------------------------- alerts and their status


def test_versions_of_one_alert_make_one_alert_with_the_latest_reasons(domain: DemoDomain) -> None:
    first = hub_alert(domain, version=1)
    second = hub_alert(
        domain, version=2, reasons=("professional_judgement", "high_risk"), updated=NOW + timedelta(hours=1)
    )
    view = view_with(second, first)  # out of order: the later update still wins
    (alert,) = view.alerts.values()
    assert alert.version == 2
    assert alert.reason_codes == ["professional_judgement", "high_risk"]
    assert alert.status == "open"


def test_an_event_applied_twice_changes_nothing_the_second_time(domain: DemoDomain) -> None:
    event = hub_alert(domain)
    view = CaseView()
    assert view.apply(event.header, event.sections) is not None
    assert view.apply(event.header, event.sections) is None
    assert len(view.timeline(event.header.subject)) == 1


def test_content_that_is_not_its_type_is_refused(domain: DemoDomain) -> None:
    event = hub_alert(domain)
    broken = {"triage": {**event.sections["triage"], "reasons": []}, "details": {}}
    with pytest.raises(ViewError):
        CaseView().apply(event.header, broken)


def test_status_is_the_furthest_of_hub_inbox_and_own_actions(domain: DemoDomain) -> None:
    alert_event = hub_alert(domain)
    view = view_with(alert_event)
    alert_id = alert_event.sections["triage"]["alert_id"]
    subject = alert_event.header.subject
    view.record_own(OwnAction(envelope.new_event_id(), "acknowledge", alert_id, subject, NOW, "wang"))
    assert view.alerts[alert_id].status == "acknowledged"
    scheduled = opened(
        domain,
        "joint_meeting.scheduled",
        {
            "schema_version": 1,
            "alert_id": alert_id,
            "meeting_at": NOW.isoformat(),
            "participants": ["police"],
        },
        subject=subject,
        sender="coordinators",
    )
    view.apply(scheduled.header, scheduled.sections)
    assert view.alerts[alert_id].status == "scheduled"
    assert view.alerts[alert_id].meeting is not None
    # A later hub update still saying "open" does not move the alert back.
    update = hub_alert(domain, version=2, reasons=("professional_judgement", "convergence"))
    view.apply(update.header, update.sections)
    assert view.alerts[alert_id].status == "scheduled"


def test_a_meeting_that_arrives_before_its_alert_is_attached_when_the_alert_comes(domain: DemoDomain) -> None:
    alert_event = hub_alert(domain)
    alert_id = alert_event.sections["triage"]["alert_id"]
    concluded = opened(
        domain,
        "joint_meeting.concluded",
        {
            "schema_version": 1,
            "alert_id": alert_id,
            "concluded_at": NOW.isoformat(),
            "action_items": [],
            "action_item_deadlines": [],
            "summary": "结论",
        },
        subject=alert_event.header.subject,
        sender="coordinators",
    )
    view = view_with(concluded, alert_event)
    assert view.alerts[alert_id].status == "concluded"


def test_the_timeline_holds_the_victims_events_and_own_acknowledgements_once(domain: DemoDomain) -> None:
    alert_event = hub_alert(domain)
    other_victim = hub_alert(domain, phone="13800000009")
    alert_id = alert_event.sections["triage"]["alert_id"]
    subject = alert_event.header.subject
    breach = opened(
        domain,
        "supervision.breach",
        {
            "schema_version": 1,
            "lead_id": envelope.new_event_id(),
            "agency": "police",
            "deadline_kind": "acknowledge",
            "due_at": NOW.isoformat(),
            "detected_at": NOW.isoformat(),
            "urgency": "urgent",
        },
        subject=subject,
        audience=["police"],
    )
    view = view_with(alert_event, other_victim, breach)
    ack = OwnAction(envelope.new_event_id(), "acknowledge", alert_id, subject, NOW, "wang")
    view.record_own(ack)
    view.record_own(ack)
    timeline = view.timeline(subject)
    assert [getattr(e, "type", "own") for e in timeline] == [
        "joint_meeting.alert",
        "supervision.breach",
        "own",
    ]
    assert view.breach_list()[0].event_id == breach.header.id


def test_the_queue_filters_by_status_town_rule_and_age(domain: DemoDomain) -> None:
    recent = hub_alert(domain, "13800000001", town="renhe", reasons=("high_risk",))
    old = hub_alert(domain, "13800000002", town="mapo", raised=NOW - timedelta(days=10))
    done = hub_alert(domain, "13800000003", town="renhe", status="concluded")
    view = view_with(recent, old, done)

    def subjects(**query: str) -> set[str]:
        return {a.subject for a in view.queue(QueueFilter.from_query(query), NOW)}

    r, o, d = (e.header.subject for e in (recent, old, done))
    assert subjects() == {r, o}, "by default everything not concluded"
    assert subjects(status="all") == {r, o, d}
    assert subjects(status="concluded") == {d}
    assert subjects(town="renhe") == {r}
    assert subjects(rule="high_risk") == {r}
    assert subjects(age="1d") == {r}
    assert subjects(age="older") == {o}
    assert subjects(status="nonsense", rule="nonsense", age="nonsense") == {r, o}
    assert view.counts()["open"] == 2
    assert view.counts()["concluded"] == 1
    assert view.towns() == ["mapo", "renhe"]


def test_immediate_alerts_come_first_in_the_queue(domain: DemoDomain) -> None:
    urgent = hub_alert(domain, "13800000001", urgency="urgent", raised=NOW)
    immediate = hub_alert(
        domain, "13800000002", urgency="immediate", reasons=("order_breach",), raised=NOW - timedelta(hours=3)
    )
    view = view_with(urgent, immediate)
    assert [a.header.urgency for a in view.queue(QueueFilter(), NOW)] == ["immediate", "urgent"]


# --------------------------------------------------------------------------- rates


def report(rows: list[tuple[str, int, int, int, int, float]], end: datetime = NOW) -> SupervisionReport:
    return SupervisionReport.model_validate_json(
        SupervisionReport(
            period_start=end - timedelta(days=1),
            period_end=end,
            rows=[
                {
                    "agency": agency,
                    "received": received,
                    "responded_in_time": in_time,
                    "resolved": resolved,
                    "satisfied": satisfied,
                    "response_rate": in_time / received,
                    "resolution_rate": resolved / received,
                    "satisfaction_rate": rate,
                }
                for agency, received, in_time, resolved, satisfied, rate in rows
            ],
        ).model_dump_json()
    )


def test_rates_sum_the_partitions_of_the_latest_period() -> None:
    older = report([("police", 100, 0, 0, 0, 0.0)], end=NOW - timedelta(days=1))
    part1 = report([("police", 4, 3, 2, 2, 1.0)])
    part2 = report([("police", 6, 3, 2, 1, 0.5), ("court", 1, 1, 0, 0, 0.0)])
    rates = aggregate_rates([older, part1, part2], {"police": 2})
    assert rates is not None
    police = next(r for r in rates.rows if r.agency == "police")
    assert (police.received, police.responded_in_time, police.resolved) == (10, 6, 4)
    assert police.response_rate == pytest.approx(0.6)
    assert police.resolution_rate == pytest.approx(0.4)
    assert police.satisfaction_rate == pytest.approx(0.75)  # weighted by resolved leads
    assert police.breaches == 2
    assert aggregate_rates([], {}) is None


def counted(agency: str, received: int, due: int, in_time: int, *, end: datetime = NOW) -> SupervisionReport:
    """A report of a hub that tells pending leads apart: ``due`` of ``received`` are past their
    acknowledgement deadline or answered; nothing is resolved yet (15 days not over)."""
    row = {
        "agency": agency,
        "received": received,
        "response_due": due,
        "responded_in_time": in_time,
        "resolution_due": 0,
        "resolved": 0,
        "with_feedback": 0,
        "satisfied": 0,
        "response_rate": in_time / due if due else None,
        "resolution_rate": None,
        "satisfaction_rate": None,
    }
    return SupervisionReport.model_validate_json(
        SupervisionReport(period_start=end - timedelta(hours=1), period_end=end, rows=[row]).model_dump_json()
    )


def test_rates_count_only_the_leads_that_are_due_and_pending_leads_lower_no_rate() -> None:
    rates = aggregate_rates([counted("police", 10, 4, 3), counted("police", 5, 0, 0)], {})
    assert rates is not None
    police = rates.rows[0]
    assert (police.received, police.pending) == (15, 11)
    assert police.response_rate == pytest.approx(0.75)
    assert (police.resolution_rate, police.satisfaction_rate) == (None, None)
    waiting = aggregate_rates([counted("court", 3, 0, 0)], {})
    assert waiting is not None
    assert waiting.rows[0].response_rate is None


def test_the_trend_has_one_point_per_report_time_oldest_first_and_a_district_row_over_every_agency() -> None:
    hour = timedelta(hours=1)
    reports = [
        counted("police", 4, 2, 1, end=NOW),
        counted("police", 2, 2, 2, end=NOW - hour),
        counted("court", 2, 2, 2, end=NOW),
    ]
    points = trend(reports)
    assert [p.period_end for p in points] == [NOW - hour, NOW]
    assert [r.agency for r in points[-1].rows] == ["court", "police"]
    police = points[-1].row("police")
    assert police is not None
    assert police.response_rate == pytest.approx(0.5)
    district = points[-1].district()
    assert (district.received, district.response_rate) == (6, pytest.approx(0.75))
    assert points[0].row("court") is None


# --------------------------------------------------------------------------- forms become events


def alert_of(domain: DemoDomain, **kw: Any) -> Any:
    event = hub_alert(domain, **kw)
    view = view_with(event)
    return view.alerts[event.sections["triage"]["alert_id"]]


def test_acknowledging_names_the_alert_as_the_lead_and_refers_to_its_event(domain: DemoDomain) -> None:
    alert = alert_of(domain)
    out = actions.acknowledgement(alert, participant="coordinators", now=NOW)
    assert isinstance(out.event, LeadAcknowledged)
    assert out.event.lead_id == alert.alert_id
    assert out.event.agency == "coordinators"
    assert out.context.lead_id == alert.header.id, "the alert's event goes into refs"
    assert out.context.subject == alert.subject


def test_an_alert_without_a_category_cannot_be_acknowledged(domain: DemoDomain) -> None:
    alert = alert_of(domain, category=None)
    with pytest.raises(FormError) as caught:
        actions.acknowledgement(alert, participant="coordinators", now=NOW)
    assert [p.key for p in caught.value.problems] == ["err.no_route"]


def test_scheduling_reads_local_time_and_addresses_the_participants(domain: DemoDomain) -> None:
    alert = alert_of(domain)
    out = actions.schedule(
        alert,
        form(meeting_at="2026-11-03T09:30", location=" 区妇联 ", participants=["plc", "police", "police"]),
        zone=ZONE,
        allowed=ALLOWED,
    )
    assert isinstance(out.event, JointMeetingScheduled)
    assert out.event.meeting_at == datetime(2026, 11, 3, 1, 30, tzinfo=UTC)
    assert out.event.participants == ["plc", "police"]
    assert out.event.location == "区妇联"
    assert out.audience == ("police",), "the policy adds plc, coordinators and the hub itself"


@pytest.mark.parametrize(
    ("fields", "problems"),
    [
        ({"participants": ["police"]}, ["err.meeting_at"]),
        ({"meeting_at": "tomorrow", "participants": ["police"]}, ["err.meeting_at"]),
        ({"meeting_at": "2026-11-03T09:30"}, ["err.participants"]),
        ({"meeting_at": "2026-11-03T09:30", "participants": ["somebody"]}, ["err.unknown_participant"]),
        ({"meeting_at": "2026-11-03T09:30", "participants": ["hub"]}, ["err.unknown_participant"]),
        (
            {"meeting_at": "2026-11-03T09:30", "participants": ["police"], "location": "x" * 201},
            ["err.location"],
        ),
    ],
    ids=["no time", "not a time", "nobody invited", "an unknown agency", "the hub", "a long location"],
)
def test_a_schedule_form_with_a_mistake_is_refused_with_its_problems(
    domain: DemoDomain, fields: dict[str, Any], problems: list[str]
) -> None:
    with pytest.raises(FormError) as caught:
        actions.schedule(alert_of(domain), form(**fields), zone=ZONE, allowed=ALLOWED)
    assert [p.key for p in caught.value.problems] == problems


def test_concluding_mirrors_the_deadlines_and_skips_empty_rows(domain: DemoDomain) -> None:
    alert = alert_of(domain)
    out = actions.conclusion(
        alert,
        form(
            concluded_at="2026-11-01T17:00",
            summary="会商纪要",
            item_owner=["police", "", "education"],
            item_due=["2026-11-08", "", "2026-11-10T12:00"],
            item_description=["出具告诫书", "", "学校关注"],
        ),
        zone=ZONE,
        allowed=ALLOWED,
        now=NOW,
    )
    assert isinstance(out.event, JointMeetingConcluded)
    assert [i.owner for i in out.event.action_items] == ["police", "education"]
    assert out.event.action_items[0].due_at == datetime(2026, 11, 8, 23, 59, tzinfo=ZONE)
    assert [(d.owner, d.due_at) for d in out.event.action_item_deadlines] == [
        (i.owner, i.due_at) for i in out.event.action_items
    ]
    assert set(out.audience) == {"police", "education", "womens_federation", "mediation.renhe"}


@pytest.mark.parametrize(
    ("fields", "problems"),
    [
        ({}, ["err.summary"]),
        ({"summary": "s", "concluded_at": "yesterday"}, ["err.concluded_at"]),
        ({"summary": "s", "item_owner": ["police"]}, ["err.item"]),
        (
            {"summary": "s", "item_owner": ["hub"], "item_due": ["2026-11-09"], "item_description": ["x"]},
            ["err.item"],
        ),
        (
            {"summary": "s", "item_owner": ["police"], "item_due": ["2026-10-01"], "item_description": ["x"]},
            ["err.item_due"],
        ),
    ],
    ids=[
        "no summary",
        "not a time",
        "an item without a due date",
        "an item owned by the hub",
        "due before the meeting",
    ],
)
def test_a_conclusion_form_with_a_mistake_is_refused_with_its_problems(
    domain: DemoDomain, fields: dict[str, Any], problems: list[str]
) -> None:
    with pytest.raises(FormError) as caught:
        actions.conclusion(alert_of(domain), form(**fields), zone=ZONE, allowed=ALLOWED, now=NOW)
    assert [p.key for p in caught.value.problems] == problems


def test_nothing_more_can_be_done_to_a_concluded_alert(domain: DemoDomain) -> None:
    alert = alert_of(domain, status="concluded")
    for act in (
        lambda: actions.acknowledgement(alert, participant="coordinators", now=NOW),
        lambda: actions.schedule(
            alert, form(meeting_at="2026-11-03T09:30", participants="police"), zone=ZONE, allowed=ALLOWED
        ),
    ):
        with pytest.raises(FormError) as caught:
            act()
        assert [p.key for p in caught.value.problems] == ["err.concluded"]
