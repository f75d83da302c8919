"""The hub's joint-meeting rules: thresholds, one alert per victim, lifecycle, idempotence, event order.

Pseudonyms and ids here are invented; times are event times, no clock is read.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.common import Urgency
from schemas.events import JointMeetingAlert
from services.hub.alerts import AlertEmission
from services.hub.config import HubConfig
from services.hub.errors import ObservationError, StateDecodeError
from services.hub.ids import alert_id_for
from services.hub.rules import ignored, observe
from services.hub.serial import SerialTrigger, observe_serial, observe_suspect, suspects_of
from services.hub.state import AlertState, Observation, SuspectState, VictimState
from tests import kit

pytestmark = pytest.mark.unit

CFG = HubConfig()
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
DV_RECIPIENTS = frozenset({"police", "womens_federation", "mediation.renhe", "hub"})
CANONICAL_UUID = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


def pseudonym(seed: str) -> str:
    """A well-formed pseudonym; the real ones are keyed HMACs made in services/kernel/pseudonym.py."""
    digest = hashlib.sha256(seed.encode()).digest()
    return "p1." + base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


VICTIM = pseudonym("victim")
OTHER_VICTIM = pseudonym("other victim")
SUSPECT = pseudonym("suspect")


def eid(n: int) -> str:
    return f"0190a7c2-0000-7000-8000-{n:012x}"


def day(days: float) -> datetime:
    return T0 + timedelta(days=days)


def lead(
    n: int,
    at: datetime,
    *,
    sender: str = "police",
    category: str = "domestic_violence",
    minor: bool = False,
    pj: bool = False,
    suspects: Sequence[str] = (),
    indicators: Sequence[str] = (),
    subject: str = VICTIM,
    urgency: Urgency = "urgent",
) -> Observation:
    return Observation(
        event_id=eid(n),
        event_type="lead.reported",
        sender=sender,
        time=at,
        subject=subject,
        urgency=urgency,
        category=category,
        minor=minor,
        town="renhe",
        recipients=DV_RECIPIENTS | {sender},
        triage={
            "category": category,
            "minor": minor,
            "town": "renhe",
            "requests_joint_meeting": pj,
            "suspect_pseudonyms": list(suspects),
            "risk_indicators": list(indicators),
            "victim_pseudonym": subject,
        },
    )


def event(
    n: int,
    event_type: str,
    at: datetime,
    *,
    sender: str = "police",
    triage: dict[str, Any] | None = None,
    refs: Sequence[str] = (),
    urgency: Urgency = "urgent",
    recipients: Iterable[str] = ("coordinators", "plc", "hub"),
) -> Observation:
    return Observation(
        event_id=eid(n),
        event_type=event_type,
        sender=sender,
        time=at,
        subject=VICTIM,
        urgency=urgency,
        recipients=frozenset(recipients),
        refs=tuple(refs),
        triage=triage or {},
    )


def risk(n: int, at: datetime, score: int, lead_id: str | None = None) -> Observation:
    return event(
        n,
        "risk.assessed",
        at,
        sender="womens_federation",
        triage={"lead_id": lead_id or eid(1), "victim_pseudonym": VICTIM, "score": score},
    )


def breached(n: int, at: datetime) -> Observation:
    return event(
        n,
        "protection_order.breached",
        at,
        triage={"order_id": eid(900), "victim_pseudonym": VICTIM, "breached_at": at.isoformat()},
        recipients=("court", "police", "womens_federation", "hub"),
    )


def concluded(n: int, at: datetime, alert_id: str, items: Sequence[tuple[str, datetime]] = ()) -> Observation:
    return event(
        n,
        "joint_meeting.concluded",
        at,
        sender="coordinators",
        triage={
            "alert_id": alert_id,
            "concluded_at": at.isoformat(),
            "action_item_deadlines": [{"owner": o, "due_at": d.isoformat()} for o, d in items],
        },
    )


def run(
    events: Iterable[Observation], state: VictimState | None = None, cfg: HubConfig = CFG
) -> tuple[VictimState | None, list[AlertEmission]]:
    emitted: list[AlertEmission] = []
    for obs in events:
        state, emissions = observe(state, obs, cfg)
        emitted.extend(emissions)
    return state, emitted


def open_alert(state: VictimState | None) -> AlertState:
    """The state's open alert (failing the test when there is none)."""
    assert state is not None
    assert state.alert is not None
    assert state.has_open_alert()
    return state.alert


def codes(state: VictimState | None) -> set[str]:
    """The reasons of the open alert, if one is open."""
    if state is None or state.alert is None or not state.has_open_alert():
        return set()
    return {reason.code for reason in state.alert.reasons}


def assert_valid(emission: AlertEmission) -> JointMeetingAlert:
    """The payload is a valid joint_meeting.alert, whether serialized as JSON or given as the model."""
    model = JointMeetingAlert.model_validate_json(json.dumps(emission.payload(), default=str))
    assert model == emission.to_event()
    assert model.alert_id == emission.alert_id
    assert [r.code for r in model.reasons] == [r["code"] for r in emission.reasons]
    return model


# --- each rule at its threshold and one step below ------------------------------------------------


THRESHOLDS: list[tuple[str, list[Observation], str | None]] = [
    ("a risk score of 13 of 24 raises nothing", [risk(2, day(0), 13)], None),
    ("a risk score of 14 of 24 raises high_risk", [risk(2, day(0), 14)], "high_risk"),
    (
        "a third lead on day 364 after the first raises escalation",
        [lead(1, day(0)), lead(2, day(200)), lead(3, day(364))],
        "escalation",
    ),
    (
        "a third lead on day 366 after the first raises nothing",
        [lead(1, day(0)), lead(2, day(200)), lead(3, day(366))],
        None,
    ),
    ("two leads within a year raise nothing", [lead(1, day(0)), lead(2, day(100))], None),
    (
        "a second agency reporting on day 29 raises convergence",
        [lead(1, day(0)), lead(2, day(29), sender="health")],
        "convergence",
    ),
    (
        "a second agency reporting on day 31 raises nothing",
        [lead(1, day(0)), lead(2, day(31), sender="health")],
        None,
    ),
    (
        "the same agency reporting twice within 30 days raises nothing",
        [lead(1, day(0)), lead(2, day(1))],
        None,
    ),
    (
        "a lead asking for a joint meeting raises professional_judgement",
        [lead(1, day(0), pj=True)],
        "professional_judgement",
    ),
    ("a lead not asking for a joint meeting raises nothing", [lead(1, day(0), pj=False)], None),
    (
        "a minor victim of sexual assault raises minor_sexual_abuse",
        [lead(1, day(0), category="sexual_assault", minor=True)],
        "minor_sexual_abuse",
    ),
    (
        "a minor victim of child abuse raises minor_sexual_abuse",
        [lead(1, day(0), category="child_abuse", minor=True)],
        "minor_sexual_abuse",
    ),
    (
        "an adult victim of sexual assault raises nothing",
        [lead(1, day(0), category="sexual_assault", minor=False)],
        None,
    ),
    (
        "a minor victim of domestic violence raises nothing",
        [lead(1, day(0), category="domestic_violence", minor=True)],
        None,
    ),
    ("a protection-order breach raises order_breach", [breached(5, day(0))], "order_breach"),
    (
        "a protection-order request raises nothing",
        [
            event(
                5,
                "protection_order.requested",
                day(0),
                triage={"victim_pseudonym": VICTIM, "urgent": True, "requested_at": day(0).isoformat()},
            )
        ],
        None,
    ),
]


@pytest.mark.parametrize(("events", "expected"), [c[1:] for c in THRESHOLDS], ids=[c[0] for c in THRESHOLDS])
def test_each_rule_fires_at_its_threshold_and_not_one_step_below(
    events: list[Observation], expected: str | None
) -> None:
    state, emitted = run(events)
    if expected is None:
        assert emitted == []
        assert codes(state) == set()
    else:
        assert len(emitted) == 1
        assert [r["code"] for r in emitted[0].reasons] == [expected]
        assert emitted[0].version == 1
        assert_valid(emitted[0])


@pytest.mark.parametrize(
    ("meeting_to_lead", "fires"),
    [(timedelta(days=364), True), (timedelta(days=366), False), (timedelta(seconds=1), True)],
    ids=["a lead 364 days after the meeting", "a lead 366 days after the meeting", "a lead just after"],
)
def test_a_lead_within_a_year_after_a_concluded_meeting_raises_repeat(
    meeting_to_lead: timedelta, fires: bool
) -> None:
    state, first = run([lead(1, day(0), pj=True)])
    assert first[0].alert_id == alert_id_for(VICTIM, 1)
    state, none = run([concluded(2, day(10), first[0].alert_id)], state)
    assert none == []
    assert state is not None
    assert not state.has_open_alert()
    state, emitted = run([lead(3, day(10) + meeting_to_lead)], state)
    if fires:
        assert [r["code"] for r in emitted[0].reasons] == ["repeat"]
        assert emitted[0].alert_id == alert_id_for(VICTIM, 2) != first[0].alert_id
        assert_valid(emitted[0])
    else:
        assert emitted == []


def test_minor_sexual_abuse_and_order_breach_make_the_alert_immediate_and_others_urgent() -> None:
    _, minor = run([lead(1, day(0), category="sexual_assault", minor=True)])
    _, order = run([breached(2, day(0))])
    _, judgement = run([lead(1, day(0), pj=True)])
    assert minor[0].urgency == order[0].urgency == "immediate"
    assert judgement[0].urgency == "urgent"


def test_a_lead_s_risk_indicators_raise_high_risk_only_when_configured() -> None:
    indicators = ["weapon", "strangulation", "threats_to_kill"]
    _, off = run([lead(1, day(0), indicators=indicators)])
    _, below = run([lead(1, day(0), indicators=indicators[:2])], cfg=HubConfig(high_risk_indicators=3))
    _, on = run([lead(1, day(0), indicators=indicators)], cfg=HubConfig(high_risk_indicators=3))
    assert off == below == []
    assert [r["code"] for r in on[0].reasons] == ["high_risk"]


def test_thresholds_are_configuration() -> None:
    cfg = HubConfig(high_risk_score=10, escalation_leads=2, escalation_window=timedelta(days=30))
    _, by_score = run([risk(2, day(0), 10)], cfg=cfg)
    _, by_leads = run([lead(1, day(0)), lead(2, day(30))], cfg=cfg)
    assert [r["code"] for r in by_score[0].reasons] == ["high_risk"]
    assert [r["code"] for r in by_leads[0].reasons] == ["escalation"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"high_risk_score": 0},
        {"escalation_leads": 0},
        {"convergence_window": timedelta(0)},
        {"acknowledge": {"urgent": timedelta(hours=4)}},
        {"breach_grace": timedelta(seconds=-1)},
    ],
    ids=["a zero score", "zero leads", "an empty window", "an urgency without deadline", "negative grace"],
)
def test_an_impossible_configuration_is_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="HubConfig"):
        HubConfig(**kwargs)


DETAILS: list[tuple[str, list[Observation], HubConfig, str]] = [
    (
        "a risk score",
        [risk(2, day(0), 16)],
        CFG,
        "风险评分 16/24 ≥ 14 / risk score 16 of 24 >= 14",
    ),
    (
        "a lead's risk indicators",
        [lead(1, day(0), indicators=["weapon", "strangulation", "threats_to_kill"])],
        HubConfig(high_risk_indicators=2),
        "线索风险因素 3 项 ≥ 2 / 3 risk indicators on a lead >= 2",
    ),
    (
        "escalation",
        [lead(1, day(0)), lead(2, day(200)), lead(3, day(364))],
        CFG,
        "365 天内 3 条线索 / 3 leads within 365 days (threshold 3)",
    ),
    (
        "convergence",
        [lead(1, day(0)), lead(2, day(29), sender="health")],
        CFG,
        "30 天内 2 个机构报告 / 2 agencies reported within 30 days: health, police",
    ),
    (
        "professional judgement",
        [lead(1, day(0), pj=True)],
        CFG,
        "报告机构请求联席会商（专业判断）/ police asks for a joint meeting (professional judgement)",
    ),
    (
        "a minor victim of sexual assault",
        [lead(1, day(0), category="sexual_assault", minor=True)],
        CFG,
        "未成年受害人，线索类别 sexual_assault（立即）/ a minor victim, category sexual_assault (immediate)",
    ),
    (
        "an order breach",
        [breached(5, day(0))],
        CFG,
        "人身安全保护令被违反（立即）/ a personal safety protection order was breached (immediate)",
    ),
    (
        "a repeat",
        [concluded(1, day(0), alert_id_for(VICTIM, 1)), lead(2, day(10.5))],
        CFG,
        "会商结束后 10.5 天内再次报告 / a new lead 10.5 days after a joint meeting concluded (window 365 days)",
    ),
]


@pytest.mark.parametrize(
    ("events", "cfg", "detail"),
    [c[1:] for c in DETAILS],
    ids=[f"{c[0]} is explained in both languages" for c in DETAILS],
)
def test_each_reason_s_detail_says_what_fired_in_chinese_and_english(
    events: list[Observation], cfg: HubConfig, detail: str
) -> None:
    _, emitted = run(events, cfg=cfg)
    assert [r["detail"] for r in emitted[-1].reasons] == [detail]


# --- serial suspects ------------------------------------------------------------------------------


def _through_suspects(
    notes: Sequence[tuple[str, str, datetime]],
    suspect_state: SuspectState | None = None,
) -> tuple[SuspectState | None, list[SerialTrigger]]:
    triggers: list[SerialTrigger] = []
    for victim, lead_id, at in notes:
        suspect_state, found = observe_suspect(suspect_state, SUSPECT, victim, lead_id, at, CFG)
        triggers.extend(found)
    return suspect_state, triggers


def test_a_suspect_named_against_two_victims_raises_serial_suspect_for_each_and_one_victim_does_not() -> None:
    _, one = _through_suspects([(VICTIM, eid(1), day(0)), (VICTIM, eid(2), day(3))])
    assert one == []

    _, two = _through_suspects([(VICTIM, eid(1), day(0)), (OTHER_VICTIM, eid(2), day(3))])
    assert sorted(t.victim for t in two) == sorted([VICTIM, OTHER_VICTIM])
    for trigger in two:
        assert trigger.victims == tuple(sorted([VICTIM, OTHER_VICTIM]))
        assert trigger.time == day(3)
        state, emitted = observe_serial(None, trigger, CFG)
        assert [r["code"] for r in emitted[0].reasons] == ["serial_suspect"]
        assert emitted[0].subject == trigger.victim
        model = assert_valid(emitted[0])
        assert model.related_events == list(trigger.lead_ids)
        again, nothing = observe_serial(state, trigger, CFG)
        assert nothing == []
        assert again.to_json() == state.to_json()


def test_a_further_victim_of_a_serial_suspect_gets_its_own_trigger_and_the_others_none() -> None:
    third = pseudonym("third victim")
    state, _ = _through_suspects([(VICTIM, eid(1), day(0)), (OTHER_VICTIM, eid(2), day(3))])
    state, more = _through_suspects([(third, eid(3), day(5))], state)
    assert [t.victim for t in more] == [third]
    assert len(more[0].victims) == 3
    state, repeated = _through_suspects([(third, eid(3), day(5)), (VICTIM, eid(4), day(6))], state)
    assert repeated == [], "a lead id seen before, or a victim known before, triggers nothing"


def test_a_serial_suspect_s_detail_says_how_many_victims_in_chinese_and_english() -> None:
    _, triggers = _through_suspects([(VICTIM, eid(1), day(0)), (OTHER_VICTIM, eid(2), day(3))])
    _, emitted = observe_serial(None, triggers[0], CFG)
    assert [r["detail"] for r in emitted[0].reasons] == [
        "同一嫌疑人涉及 2 名受害人 / the same suspect is named against 2 victims (threshold 2)"
    ]


def test_suspect_state_and_serial_triggers_round_trip_through_json() -> None:
    state, triggers = _through_suspects([(VICTIM, eid(1), day(0)), (OTHER_VICTIM, eid(2), day(3))])
    assert state is not None
    assert SuspectState.from_json(state.to_json()).to_json() == state.to_json()
    for trigger in triggers:
        assert SerialTrigger.from_json(trigger.to_json()) == trigger
    with pytest.raises(StateDecodeError):
        SerialTrigger.from_json(b'{"victim": "x"}')


def test_suspects_are_read_from_a_lead_and_from_a_protection_order_request() -> None:
    assert suspects_of(lead(1, day(0), suspects=[SUSPECT])) == (SUSPECT,)
    request = event(
        2,
        "protection_order.requested",
        day(0),
        triage={"victim_pseudonym": VICTIM, "respondent_pseudonym": SUSPECT, "urgent": False},
    )
    assert suspects_of(request) == (SUSPECT,)
    assert suspects_of(risk(3, day(0), 5)) == ()


# --- one alert per victim -------------------------------------------------------------------------


def test_a_victim_who_triggers_three_rules_gets_one_alert_with_three_reasons() -> None:
    state, emitted = run([lead(1, day(0), pj=True), risk(2, day(1), 16), breached(3, day(2))])
    assert len({e.alert_id for e in emitted}) == 1
    assert [e.version for e in emitted] == [1, 2, 3]
    assert len({e.event_id for e in emitted}) == 3
    assert [r["code"] for r in emitted[-1].reasons] == ["professional_judgement", "high_risk", "order_breach"]
    assert [e.urgency for e in emitted] == ["urgent", "urgent", "immediate"]
    assert emitted[-1].raised_at == day(0)
    assert emitted[-1].updated_at == day(2)
    assert emitted[-1].related_events == [eid(1), eid(2), eid(3), eid(900)]
    assert emitted[-1].agencies_involved == ["court", "mediation.renhe", "police", "womens_federation"]
    for emission in emitted:
        assert_valid(emission)
    assert codes(state) == {"professional_judgement", "high_risk", "order_breach"}


def test_a_rule_already_among_the_open_alert_s_reasons_does_not_emit_again() -> None:
    state, emitted = run([risk(2, day(0), 15), risk(3, day(1), 20), lead(4, day(2), pj=True)])
    assert [e.version for e in emitted] == [1, 2]
    _, nothing = run([lead(5, day(3), pj=True)], state)
    assert nothing == []


def test_one_event_that_fires_several_rules_raises_one_alert_with_all_of_them() -> None:
    _, emitted = run(
        [lead(1, day(0), sender="health"), lead(2, day(1), pj=True, minor=True, category="child_abuse")]
    )
    assert len(emitted) == 1
    assert [r["code"] for r in emitted[0].reasons] == [
        "professional_judgement",
        "convergence",
        "minor_sexual_abuse",
    ]
    assert emitted[0].urgency == "immediate"


def test_the_alert_lifecycle_follows_the_coordinators_events() -> None:
    state, raised = run([lead(1, day(0), pj=True)])
    alert = raised[0]
    ack = event(2, "lead.acknowledged", day(0.1), sender="coordinators", refs=[alert.event_id],
                triage={"lead_id": alert.event_id, "agency": "coordinators", "acknowledged_at": day(0.1).isoformat()})  # fmt: skip
    state, nothing = run([ack], state)
    assert nothing == []
    assert open_alert(state).status == "acknowledged"

    scheduled = event(3, "joint_meeting.scheduled", day(1), sender="coordinators",
                      triage={"alert_id": alert.alert_id, "meeting_at": day(5).isoformat(),
                              "participants": ["police", "womens_federation"]})  # fmt: skip
    state, nothing = run([scheduled], state)
    assert nothing == []
    assert (open_alert(state).status, open_alert(state).meeting_at) == ("scheduled", day(5))
    assert open_alert(state).participants == ["police", "womens_federation"]

    state, updated = run([risk(4, day(2), 18)], state)
    assert (updated[0].alert_id, updated[0].version, updated[0].status) == (alert.alert_id, 2, "scheduled")
    assert_valid(updated[0])

    state, nothing = run([concluded(5, day(5), alert.alert_id)], state)
    assert nothing == []
    assert state is not None
    assert not state.has_open_alert()

    state, reopened = run([breached(6, day(6))], state)
    assert reopened[0].alert_id == alert_id_for(VICTIM, 2)
    assert (reopened[0].version, reopened[0].status) == (1, "open")
    assert [r["code"] for r in reopened[0].reasons] == ["order_breach"]


def test_a_concluded_alert_stays_closed_and_a_late_trigger_opens_the_next_episode() -> None:
    state, raised = run([lead(1, day(0), pj=True)])
    alert_id = raised[0].alert_id
    late_schedule = event(3, "joint_meeting.scheduled", day(4), sender="coordinators",
                          triage={"alert_id": alert_id, "meeting_at": day(5).isoformat(), "participants": ["police"]})  # fmt: skip
    state, _ = run([concluded(2, day(5), alert_id), late_schedule], state)
    assert state is not None
    assert state.alert is not None
    assert (state.alert.alert_id, state.alert.status) == (alert_id, "concluded")
    state, reopened = run([risk(4, day(4), 20)], state)  # happened before the meeting, arrived after it
    assert reopened[0].alert_id == alert_id_for(VICTIM, 2)
    assert [r["code"] for r in reopened[0].reasons] == ["high_risk"]


def test_an_acknowledgement_from_an_agency_or_of_another_alert_leaves_the_status() -> None:
    state, raised = run([lead(1, day(0), pj=True)])
    from_agency = event(
        2, "lead.acknowledged", day(0.1), sender="womens_federation", refs=[raised[0].event_id]
    )
    other = event(3, "lead.acknowledged", day(0.1), sender="coordinators", refs=[eid(77)])
    state, _ = run([from_agency, other], state)
    assert open_alert(state).status == "open"


def test_a_lead_that_happened_after_the_meeting_but_arrived_before_its_conclusion_is_a_repeat() -> None:
    state, raised = run([lead(1, day(0), pj=True)])
    state, _ = run([lead(2, day(10)), concluded(3, day(9), raised[0].alert_id)], state)
    assert open_alert(state).alert_id == alert_id_for(VICTIM, 2)
    assert codes(state) == {"repeat"}


# --- idempotence, determinism, order -------------------------------------------------------------


def test_re_observing_an_event_changes_nothing_and_emits_nothing() -> None:
    events = [lead(1, day(0), pj=True), risk(2, day(1), 16), breached(3, day(2))]
    state, _ = run(events)
    assert state is not None
    before = state.to_json()
    for obs in events:
        again, emitted = observe(state, obs, CFG)
        assert emitted == []
        assert again.to_json() == before


def test_replaying_the_same_events_from_scratch_gives_the_same_alert_and_event_ids() -> None:
    events = [lead(1, day(0), pj=True), risk(2, day(1), 16), breached(3, day(2))]
    _, first = run(events)
    _, second = run(events)
    assert first == second
    for emission in first:
        assert re.fullmatch(CANONICAL_UUID, emission.event_id)
        assert re.fullmatch(CANONICAL_UUID, emission.alert_id)
        assert uuid.UUID(emission.event_id).version == 5
    other, _ = run([lead(1, day(0), pj=True, subject=OTHER_VICTIM)])
    assert open_alert(other).alert_id != first[0].alert_id, "alert ids differ between victims"


def test_the_observed_state_is_a_new_object_and_the_input_is_not_modified() -> None:
    state, _ = run([lead(1, day(0))])
    assert state is not None
    before = state.to_json()
    after, _ = observe(state, lead(2, day(1), pj=True), CFG)
    after, _ = observe(after, risk(3, day(2), 16, lead_id=eid(1)), CFG)
    after, _ = observe(after, concluded(4, day(3), alert_id_for(VICTIM, 1)), CFG)
    assert state.to_json() == before
    assert after is not state
    assert [x.score for x in after.leads] == [16, None]
    assert state.leads[0].score is None


# Spread over 370 days, inside the retention (365 days + 7 of lateness): an event that arrives later than
# that behind the newest one is ignored (see the history test below); the router refuses events over 7 days old.
ORDERED_EVENTS: list[Observation] = [
    lead(1, day(0)),
    lead(2, day(20), sender="health"),
    lead(3, day(40)),
    risk(4, day(41), 15, lead_id=eid(3)),
    lead(5, day(300), pj=True),
    breached(6, day(301)),
    lead(7, day(370)),
]


@settings(max_examples=60, deadline=None)
@given(st.permutations(ORDERED_EVENTS))
def test_out_of_order_arrival_ends_in_the_same_alert_as_in_order(events: list[Observation]) -> None:
    in_order, _ = run(ORDERED_EVENTS)
    shuffled, _ = run(events)
    assert open_alert(shuffled).alert_id == open_alert(in_order).alert_id
    assert (
        codes(shuffled)
        == codes(in_order)
        == {
            "escalation",
            "convergence",
            "high_risk",
            "professional_judgement",
            "order_breach",
        }
    )
    assert shuffled is not None
    assert in_order is not None
    assert shuffled.leads == in_order.leads


# --- state ----------------------------------------------------------------------------------------


def test_victim_state_round_trips_through_compact_stable_json() -> None:
    state, _ = run([*ORDERED_EVENTS, concluded(8, day(371), alert_id_for(VICTIM, 1), [("police", day(390))])])
    assert state is not None
    raw = state.to_json()
    assert raw == json.dumps(json.loads(raw), separators=(",", ":"), ensure_ascii=False).encode(), "compact"
    again = VictimState.from_json(raw)
    assert again == state
    assert again.to_json() == raw


@settings(max_examples=40, deadline=None)
@given(st.permutations(ORDERED_EVENTS), st.integers(min_value=1, max_value=len(ORDERED_EVENTS)))
def test_any_state_round_trips_through_json(events: list[Observation], count: int) -> None:
    state, _ = run(events[:count])
    assert state is not None
    assert VictimState.from_json(state.to_json()).to_json() == state.to_json()


@pytest.mark.parametrize("raw", [b"", b"{}", b"[]", b'{"v": 2, "subject": "x"}', b"\xff"])
def test_unreadable_state_bytes_raise_a_state_decode_error(raw: bytes) -> None:
    with pytest.raises(StateDecodeError):
        VictimState.from_json(raw)


def test_history_older_than_the_longest_window_is_dropped_and_cannot_be_applied_again() -> None:
    first = lead(1, day(0), pj=True)
    state, _ = run([first, lead(2, day(10))])
    state, _ = run([lead(3, day(400))], state)
    assert state is not None
    assert [x.id for x in state.leads] == [eid(3)]
    assert set(state.seen) == {eid(3)}
    assert state.floor == day(400) - CFG.retention
    again, emitted = observe(state, first, CFG)
    assert emitted == []
    assert again is state


def test_the_number_of_events_kept_per_victim_is_bounded() -> None:
    cfg = HubConfig(max_events=5)
    state, _ = run([lead(n, day(n / 100)) for n in range(1, 12)], cfg=cfg)
    assert state is not None
    assert len(state.seen) <= 5
    assert len(state.leads) <= 5
    assert all(t > state.floor for t in state.seen.values() if state.floor is not None)


def test_observations_need_aware_times_and_the_state_s_own_victim() -> None:
    with pytest.raises(ObservationError):
        lead(1, datetime(2026, 1, 1, 9, 0))  # a naive time
    state, _ = run([lead(1, day(0))])
    with pytest.raises(ObservationError):
        observe(state, lead(2, day(1), subject=OTHER_VICTIM), CFG)


def test_an_observation_is_built_from_a_verified_header_and_its_triage() -> None:
    header = kit.header(
        id=eid(42),
        time=day(0).isoformat(),
        subject=VICTIM,
        urgency="immediate",
        category="sexual_assault",
        minor=True,
        refs=[eid(41)],
    )
    triage = {"category": "sexual_assault", "minor": True, "requests_joint_meeting": False}
    obs = Observation.from_header(header, {"police", "procuratorate", "hub"}, triage)
    assert (obs.event_id, obs.event_type, obs.sender, obs.time) == (
        eid(42),
        "lead.reported",
        "police",
        day(0),
    )
    assert (obs.subject, obs.urgency, obs.category, obs.minor, obs.town) == (
        VICTIM,
        "immediate",
        "sexual_assault",
        True,
        "renhe",
    )
    assert obs.recipients == frozenset({"police", "procuratorate", "hub"})
    assert obs.refs == (eid(41),)
    assert dict(obs.triage) == triage
    state, emitted = observe(None, obs, CFG)
    assert [r["code"] for r in emitted[0].reasons] == ["minor_sexual_abuse"]
    assert state.last_lead_facts() == {"category": "sexual_assault", "minor": True, "town": "renhe"}


def test_the_hub_s_own_alerts_and_unknown_types_change_nothing_in_the_victim_s_state() -> None:
    before, _ = run([lead(1, day(0))])
    own = event(9, "joint_meeting.alert", day(0), sender="hub", triage={"alert_id": eid(1)})
    report = event(10, "supervision.report", day(0), sender="hub")
    state, emitted = run([own, report], before)
    assert emitted == []
    assert state is before
    assert ignored(before, own) == "not_a_rule_event"


def test_a_hub_alert_stamped_years_after_the_victim_s_leads_does_not_move_the_window_or_prune_them() -> None:
    old = [lead(1, day(-3 * 365)), lead(2, day(-3 * 365 + 10))]
    state, _ = run(old)
    alert = event(9, "joint_meeting.alert", day(0), sender="hub", triage={"alert_id": eid(1)})
    state, _ = run([alert], state)
    assert state is not None
    assert state.latest == day(-3 * 365 + 10)
    state, emitted = run([lead(3, day(-3 * 365 + 20))], state)
    assert [r["code"] for r in emitted[-1].reasons] == ["escalation"]


def test_a_lead_s_windows_use_its_occurred_at_and_its_deadlines_start_when_it_was_reported() -> None:
    reported = day(0)
    leads = []
    for n, days_ago in ((1, 1200), (2, 1190), (3, 1180)):
        occurred = reported - timedelta(days=days_ago)
        base = lead(n, reported)
        leads.append(
            Observation.from_header(
                kit.header(
                    id=base.event_id,
                    time=reported,
                    subject=VICTIM,
                    category="domestic_violence",
                    minor=False,
                ),
                base.recipients,
                {**base.triage, "occurred_at": occurred.isoformat()},
            )
        )
    assert leads[0].time == reported - timedelta(days=1200)
    assert leads[0].signed_at == reported
    state, emitted = run(leads)
    assert state is not None
    assert "escalation" in {r["code"] for e in emitted for r in e.reasons}
    assert state.leads[0].t == reported - timedelta(days=1200)
    assert state.leads[0].reported_at == reported


def test_an_event_from_before_the_retained_window_is_ignored_and_says_so() -> None:
    state, _ = run([lead(1, day(0))])
    too_old = lead(2, day(-2 * 365))
    assert ignored(state, too_old) == "before_horizon"
    assert ignored(state, lead(1, day(0))) == "seen"
    assert ignored(state, lead(3, day(1))) is None
