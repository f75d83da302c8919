"""Supervision: each deadline breaches just after it passes and not before, once; answers in time never
breach; breaches and reports are valid events; rates on a small known set.

Pseudonyms and ids here are invented; ``now`` is an argument, no clock is read.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas.events import AgencyRates, SupervisionBreach, SupervisionReport
from services.hub.config import HubConfig
from services.hub.errors import ObservationError
from services.hub.rules import observe
from services.hub.state import Observation, VictimState
from services.hub.supervision import (
    BreachEmission,
    agency_rates,
    due,
    next_due,
    report_payload,
    watches,
)
from tests.unit.test_hub_rules import VICTIM, concluded, eid, event, lead

pytestmark = pytest.mark.unit

CFG = HubConfig()
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)


def at(hours: float = 0, days: float = 0) -> datetime:
    return T0 + timedelta(hours=hours, days=days)


def build(events: Iterable[Observation], cfg: HubConfig = CFG) -> VictimState:
    state: VictimState | None = None
    for obs in events:
        state, _ = observe(state, obs, cfg)
    assert state is not None
    return state


def answer(
    n: int, kind: str, when: datetime, *, by: str = "womens_federation", lead_id: str = eid(1), **triage: Any
) -> Observation:
    """A lead.acknowledged / action_taken / resolved from ``by`` naming the lead in its triage."""
    fields: dict[str, Any] = {"lead_id": lead_id, **triage}
    return event(
        n, f"lead.{kind}", when, sender=by, triage=fields, recipients=("police", "womens_federation", "hub")
    )


def resolved(
    n: int, when: datetime, satisfaction: str, *, by: str = "womens_federation", lead_id: str = eid(1)
) -> Observation:
    return answer(n, "resolved", when, by=by, lead_id=lead_id, outcome="resolved", satisfaction=satisfaction)


def order_request(n: int, when: datetime, *, urgent: bool) -> Observation:
    return event(
        n,
        "protection_order.requested",
        when,
        sender="womens_federation",
        triage={"victim_pseudonym": VICTIM, "urgent": urgent, "requested_at": when.isoformat()},
        recipients=("court", "police", "womens_federation", "hub"),
    )


def decision(n: int, when: datetime, request_id: str) -> Observation:
    return event(
        n,
        "protection_order.decided",
        when,
        sender="court",
        triage={"request_id": request_id, "granted": True, "decided_at": when.isoformat()},
        recipients=("court", "police", "womens_federation", "hub"),
    )


def kinds(breaches: Sequence[BreachEmission], agency: str = "womens_federation") -> list[str]:
    return [b.deadline_kind for b in breaches if b.agency == agency]


# A DV lead from the police at T0 is routed to the women's federation and the town's mediation room:
# both must act. Each case starts the clock of one kind and answers every other deadline in time.
DEADLINES: list[tuple[str, list[Observation], str, str, datetime]] = [
    (
        "an immediate lead's acknowledgement is due in 1 hour",
        [lead(1, T0, urgency="immediate")],
        "womens_federation",
        "acknowledge",
        at(hours=1),
    ),
    (
        "an urgent lead's acknowledgement is due in 4 hours",
        [lead(1, T0, urgency="urgent")],
        "womens_federation",
        "acknowledge",
        at(hours=4),
    ),
    (
        "a routine lead's acknowledgement is due in 24 hours",
        [lead(1, T0, urgency="routine")],
        "womens_federation",
        "acknowledge",
        at(hours=24),
    ),
    (
        "the first action is due 24 hours after the lead",
        [lead(1, T0), answer(2, "acknowledged", at(hours=1))],
        "womens_federation",
        "first_action",
        at(hours=24),
    ),
    (
        "resolution is due 15 days after the lead",
        [
            lead(1, T0),
            answer(2, "action_taken", at(hours=1), action="warning_letter", taken_at=at(hours=1).isoformat()),
        ],
        "womens_federation",
        "resolve",
        at(days=15),
    ),
    (
        "a protection-order request is decided within 72 hours",
        [order_request(5, T0, urgent=False)],
        "court",
        "protection_order_decision",
        at(hours=72),
    ),
    (
        "an urgent protection-order request is decided within 24 hours",
        [order_request(5, T0, urgent=True)],
        "court",
        "protection_order_decision",
        at(hours=24),
    ),
    (
        "an action item is due at its own due date",
        [concluded(6, T0, eid(99), [("civil_affairs", at(days=10))])],
        "civil_affairs",
        "action_item",
        at(days=10),
    ),
]


@pytest.mark.parametrize(
    ("events", "agency", "kind", "due_at"), [c[1:] for c in DEADLINES], ids=[c[0] for c in DEADLINES]
)
def test_each_deadline_breaches_just_after_it_passes_and_not_before_and_only_once(
    events: list[Observation], agency: str, kind: str, due_at: datetime
) -> None:
    state = build(events)
    same, early = due(state, due_at - SECOND, CFG)
    assert kind not in kinds(early, agency)
    same, on_time = due(same, due_at, CFG)
    assert kind not in kinds(on_time, agency), "at the deadline itself the answer is still in time"

    later, found = due(same, due_at + SECOND, CFG)
    mine = [b for b in found if b.agency == agency and b.deadline_kind == kind]
    assert len(mine) == 1
    breach = mine[0]
    assert (breach.due_at, breach.detected_at, breach.subject) == (due_at, due_at + SECOND, VICTIM)
    model = SupervisionBreach.model_validate_json(json.dumps(breach.payload(), default=str))
    assert model == breach.to_event()
    assert model.deadline_kind == kind
    assert breach.audience == [agency]

    _, again = due(later, due_at + timedelta(days=30), CFG)
    assert [b for b in again if b.agency == agency and b.deadline_kind == kind] == []


def test_deadlines_answered_in_time_never_breach() -> None:
    state = build(
        [
            lead(1, T0, urgency="immediate"),
            answer(2, "acknowledged", at(hours=1)),
            answer(3, "action_taken", at(hours=20), action="legal_aid", taken_at=at(hours=20).isoformat()),
            resolved(4, at(days=15), "satisfied"),
            order_request(5, T0, urgent=True),
            decision(6, at(hours=24), eid(5)),
            concluded(7, T0, eid(99), [("police", at(days=3))]),
            answer(8, "action_taken", at(days=3), by="police", lead_id=eid(70), action="warning_letter"),
        ]
    )
    _, breaches = due(state, at(days=60), CFG)
    assert [b for b in breaches if b.agency != "mediation.renhe"] == []


def test_a_deadline_met_late_is_still_a_breach_once_detected() -> None:
    state = build([lead(1, T0, urgency="urgent"), answer(2, "acknowledged", at(hours=5))])
    _, breaches = due(state, at(days=1), CFG)
    assert "acknowledge" in kinds(breaches)


def test_an_answer_that_arrives_before_its_lead_still_counts() -> None:
    state = build([answer(2, "acknowledged", at(hours=1)), lead(1, T0)])
    _, breaches = due(state, at(hours=5), CFG)
    assert "acknowledge" not in kinds(breaches)


def test_only_the_agency_that_must_act_can_answer_for_itself() -> None:
    state = build([lead(1, T0), answer(2, "acknowledged", at(hours=1), by="mediation.renhe")])
    _, breaches = due(state, at(hours=5), CFG)
    assert kinds(breaches, "womens_federation") == ["acknowledge"]
    assert kinds(breaches, "mediation.renhe") == []
    assert kinds(breaches, "police") == [], "the reporting agency is not watched on its own lead"


def test_acting_or_resolving_also_answers_the_earlier_deadlines() -> None:
    state = build([lead(1, T0), resolved(2, at(hours=2), "satisfied")])
    _, breaches = due(state, at(days=20), CFG)
    assert kinds(breaches) == []


def test_each_action_item_of_an_owner_needs_its_own_action() -> None:
    items = [("police", at(days=5)), ("police", at(days=10))]
    one_action = [
        concluded(6, T0, eid(99), items),
        answer(7, "action_taken", at(days=4), by="police", lead_id=eid(70), action="warning_letter"),
    ]
    before_meeting = answer(8, "action_taken", T0 - SECOND, by="police", lead_id=eid(71), action="other")
    _, breaches = due(build([before_meeting, *one_action]), at(days=11), CFG)
    assert [(b.deadline_kind, b.due_at) for b in breaches] == [("action_item", at(days=10))]
    assert len({b.event_id for b in breaches}) == len(breaches)


def test_breach_ids_are_deterministic_and_differ_per_deadline() -> None:
    state = build([lead(1, T0)])
    _, first = due(state, at(days=20), CFG)
    _, second = due(build([lead(1, T0)]), at(days=30), CFG)
    assert [b.event_id for b in first] == [b.event_id for b in second]
    assert len({b.event_id for b in first}) == len(first) == 6


def test_the_grace_period_delays_detection_but_not_the_deadline() -> None:
    cfg = HubConfig(breach_grace=timedelta(minutes=10))
    state = build([lead(1, T0)], cfg)
    _, none = due(state, at(hours=4) + timedelta(minutes=10), cfg)
    _, found = due(state, at(hours=4) + timedelta(minutes=10) + SECOND, cfg)
    assert kinds(none) == []
    assert kinds(found) == ["acknowledge"]
    assert found[0].due_at == at(hours=4)


def test_next_due_names_the_earliest_unanswered_deadline() -> None:
    state = build([lead(1, T0, urgency="immediate"), answer(2, "acknowledged", at(hours=0.5))])
    assert next_due(state, CFG) == at(hours=1)  # mediation.renhe has not acknowledged
    state, _ = due(state, at(hours=2), CFG)
    assert next_due(state, CFG) == at(hours=24)
    assert next_due(VictimState.new(VICTIM), CFG) is None


def test_due_returns_the_same_state_when_nothing_is_breached_and_needs_an_aware_time() -> None:
    state = build([lead(1, T0)])
    same, none = due(state, at(hours=1), CFG)
    assert none == []
    assert same is state
    with pytest.raises(ObservationError):
        due(state, datetime(2026, 3, 2, 9, 0), CFG)  # a naive time


def test_watches_are_derived_from_the_retained_facts() -> None:
    state = build([lead(1, T0), order_request(5, T0, urgent=False)])
    found = {(w.agency, w.kind) for w in watches(state, CFG)}
    assert found == {
        (agency, kind)
        for agency in ("womens_federation", "mediation.renhe")
        for kind in ("acknowledge", "first_action", "resolve")
    } | {("court", "protection_order_decision")}


# --- rates ----------------------------------------------------------------------------------------


def test_rates_on_a_small_known_set() -> None:
    first = build(
        [
            lead(1, T0),
            answer(2, "acknowledged", at(hours=1)),  # in time
            resolved(3, at(days=3), "satisfied"),
            answer(4, "acknowledged", at(hours=6), by="mediation.renhe"),  # late
        ]
    )
    second = build(
        [
            lead(11, at(days=1)),
            answer(12, "acknowledged", at(days=1, hours=2), lead_id=eid(11)),  # in time
            resolved(13, at(days=2), "dissatisfied", lead_id=eid(11)),
            lead(21, at(days=2)),  # nobody answered
            resolved(22, at(days=4), "not_reached", by="mediation.renhe", lead_id=eid(21)),
        ]
    )
    rows = agency_rates([first, second], at(days=10), CFG)
    assert list(rows) == ["mediation.renhe", "womens_federation"]
    assert rows["womens_federation"] == {
        "agency": "womens_federation",
        "received": 3,
        "response_due": 3,
        "responded_in_time": 2,
        "resolution_due": 2,  # lead 21 is not resolved and its 15 days are not over: pending
        "resolved": 2,
        "satisfied": 1,
        "with_feedback": 2,
        "response_rate": 2 / 3,
        "resolution_rate": 1.0,
        "satisfaction_rate": 1 / 2,
    }
    assert rows["mediation.renhe"] == {
        "agency": "mediation.renhe",
        "received": 3,
        "response_due": 3,
        "responded_in_time": 0,  # one late acknowledgement, one late resolution, one silence
        "resolution_due": 1,
        "resolved": 1,
        "satisfied": 0,
        "with_feedback": 0,  # not_reached is no feedback
        "response_rate": 0.0,
        "resolution_rate": 1.0,
        "satisfaction_rate": None,
    }
    for row in rows.values():
        AgencyRates.model_validate_json(json.dumps(row))

    since = agency_rates([first, second], at(days=10), CFG, since=at(days=1))
    assert since["womens_federation"]["received"] == 2
    before_answers = agency_rates([first], at(hours=0.5), CFG)
    assert before_answers["womens_federation"]["responded_in_time"] == 0


def test_a_lead_inside_its_acknowledgement_deadline_is_pending_not_failed() -> None:
    state = build([lead(1, T0, urgency="urgent")])  # due at 4 h; nobody has answered yet
    inside = agency_rates([state], at(hours=3), CFG)["womens_federation"]
    assert (inside["received"], inside["response_due"], inside["responded_in_time"]) == (1, 0, 0)
    assert inside["response_rate"] is None
    at_the_deadline = agency_rates([state], at(hours=4), CFG)["womens_federation"]
    assert at_the_deadline["response_rate"] is None  # met in time may still come at the deadline itself
    past = agency_rates([state], at(hours=4) + SECOND, CFG)["womens_federation"]
    assert (past["response_due"], past["response_rate"]) == (1, 0.0)


def test_an_answer_inside_the_deadline_counts_at_once_and_a_silent_lead_only_once_it_is_late() -> None:
    state = build(
        [
            lead(1, T0, urgency="urgent"),
            answer(2, "acknowledged", at(hours=1)),
            lead(3, at(hours=2), urgency="urgent"),  # not answered by anyone
        ]
    )
    early = agency_rates([state], at(hours=3), CFG)["womens_federation"]
    assert (early["received"], early["response_due"], early["response_rate"]) == (2, 1, 1.0)
    late = agency_rates([state], at(hours=7), CFG)["womens_federation"]
    assert (late["response_due"], late["response_rate"]) == (2, 0.5)


def test_a_lead_is_pending_for_resolution_until_its_fifteen_days_are_over() -> None:
    state = build([lead(1, T0), answer(2, "acknowledged", at(hours=1))])
    within = agency_rates([state], at(days=15), CFG)["womens_federation"]
    assert (within["resolution_due"], within["resolution_rate"]) == (0, None)
    over = agency_rates([state], at(days=15) + SECOND, CFG)["womens_federation"]
    assert (over["resolution_due"], over["resolved"], over["resolution_rate"]) == (1, 0, 0.0)


def test_satisfaction_counts_only_resolutions_with_feedback() -> None:
    state = build([lead(1, T0), resolved(2, at(hours=2), "not_reached")])
    row = agency_rates([state], at(days=1), CFG)["womens_federation"]
    assert (row["resolved"], row["with_feedback"], row["satisfaction_rate"]) == (1, 0, None)
    assert row["resolution_rate"] == 1.0


def test_the_supervision_report_payload_is_a_valid_event() -> None:
    state = build(
        [lead(1, T0), answer(2, "acknowledged", at(hours=1)), resolved(3, at(days=1), "basically_satisfied")]
    )
    rows = agency_rates([state], at(days=7), CFG)
    payload = report_payload(rows, T0, at(days=7))
    report = SupervisionReport.model_validate_json(json.dumps(payload, default=str))
    assert [row.agency for row in report.rows] == ["mediation.renhe", "womens_federation"]
    assert report.rows[1].satisfaction_rate == 1.0
    assert report_payload(rows.values(), T0, at(days=7)) == payload
    empty = SupervisionReport.model_validate_json(json.dumps(report_payload({}, T0, at(days=7))))
    assert empty.rows == []


# --- the demo's time scale -------------------------------------------------------------------------


def test_at_a_time_scale_of_360_an_urgent_acknowledgement_is_due_in_40_seconds_and_breaches_after() -> None:
    fast = CFG.at_time_scale(360)
    state = build([lead(1, T0, urgency="urgent")], fast)
    assert kinds(due(state, T0 + timedelta(seconds=40), fast)[1]) == []
    assert kinds(due(state, T0 + timedelta(seconds=41), fast)[1]) == ["acknowledge"]
    assert (fast.first_action, fast.resolution) == (timedelta(minutes=4), timedelta(hours=1))
    assert fast.escalation_window == CFG.escalation_window  # rule windows are not scaled
    assert CFG.at_time_scale(1) is CFG


def test_a_time_scale_must_be_positive() -> None:
    with pytest.raises(ValueError, match="greater than 0"):
        CFG.at_time_scale(0)
