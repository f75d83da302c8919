"""The simulator's generator (pure: a seed in, steps out) and its driver (fresh ids, pacing).

Each joint-meeting rule is checked on what the steps say — scores, victims, suspects, senders and
times — not on the generator's own labels, with the pseudonyms the SDK would compute.
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from schemas.events import EventModel, LeadReported, event_model
from services.kernel.errors import UsageError
from services.kernel.pseudonym import PseudonymKey, canonical_id_number
from services.sdk.client import CaseContext, default_urgency, lead_identities
from services.simulator import district
from services.simulator.driver import IdMap, Tally, describe, play, publish_step
from services.simulator.generator import CHANNELS, RULES, TOWN_IDS, Step, generate
from services.simulator.runs import take_seed

pytestmark = pytest.mark.unit

KEY = PseudonymKey(version=3, secret=b"\x11" * 32)
START = datetime(2026, 10, 1, tzinfo=UTC)
YEAR = timedelta(days=365)


def steps_of(days: int = 7, rate: float = 20, seed: int = 1) -> list[Step]:
    return generate(seed=seed, start=START, days=days, rate=rate, key=KEY)


def lead_of(step: Step) -> LeadReported:
    """The lead as the SDK builds it from the payload: pseudonyms computed, then validated."""
    data = lead_identities(KEY, step.payload, token="simulated").data
    return LeadReported.model_validate_json(json.dumps(data, default=str))


@pytest.fixture(scope="module")
def week() -> list[Step]:
    return steps_of()


def test_the_same_seed_gives_the_same_steps_and_another_seed_other_ones() -> None:
    assert steps_of(seed=5) == steps_of(seed=5)
    assert steps_of(seed=5) != steps_of(seed=6)


def test_every_step_is_a_valid_event_that_its_sender_may_publish(week: list[Step]) -> None:
    for step in week:
        assert step.type in district.may_publish(step.sender), (step.sender, step.type)
        if step.kind == "lead":
            lead_of(step)
        else:
            event_model(step.type).model_validate_json(json.dumps(step.payload))
            assert step.context is not None


def test_steps_are_in_time_order_within_the_simulated_days_and_follow_what_they_refer_to(
    week: list[Step],
) -> None:
    assert [s.at for s in week] == sorted(s.at for s in week)
    assert all(START <= s.at < START + timedelta(days=7) for s in week)
    seen: set[str] = set()
    for step in week:
        for name in ("lead_id", "request_id", "order_id"):
            ref = step.payload.get(name)
            assert ref is None or ref in seen, f"{step.type} refers to an event not yet published"
        seen.add(step.event_id)


def test_a_follow_up_carries_the_context_the_sdk_derives_from_its_lead(week: list[Step]) -> None:
    leads = {s.event_id: lead_of(s) for s in week if s.kind == "lead"}
    follow_ups = [s for s in week if s.type == "lead.acknowledged"]
    assert follow_ups
    for step in follow_ups:
        lead = leads[step.payload["lead_id"]]
        assert step.context == CaseContext(
            subject=lead.victim_pseudonym,
            category=lead.category,
            minor=lead.minor,
            town=lead.town,
            school_related=lead.school_related,
            lead_id=step.payload["lead_id"],
        )
        assert step.urgency == default_urgency(lead)


def test_leads_come_from_every_channel_and_every_town(week: list[Step]) -> None:
    leads = [s for s in week if s.kind == "lead"]
    assert {s.payload["channel"] for s in leads} == set(CHANNELS)
    assert {s.payload["town"] for s in leads} == set(TOWN_IDS)


def test_every_id_number_has_a_correct_check_digit_and_a_real_birth_date(week: list[Step]) -> None:
    numbers = [
        person["id_number"]
        for s in week
        if s.kind == "lead"
        for person in [s.payload["victim"], *s.payload["suspects"]]
        if "id_number" in person
    ]
    assert len(numbers) > 100
    for number in numbers:
        assert canonical_id_number(number) == "cnid:" + number  # raises on a wrong check digit
    assert len({n[:6] for n in numbers}) > 1, "people come from more than one region"


def test_the_follow_ups_include_acknowledgements_actions_resolutions_and_protection_orders(
    week: list[Step],
) -> None:
    types = {s.type for s in week}
    assert {
        "lead.reported",
        "lead.acknowledged",
        "lead.action_taken",
        "lead.resolved",
        "risk.assessed",
        "protection_order.requested",
        "protection_order.decided",
        "protection_order.breached",
        "joint_meeting.scheduled",
        "joint_meeting.concluded",
    } <= types
    resolved = [s for s in week if s.type == "lead.resolved"]
    assert {s.payload["satisfaction"] for s in resolved} >= {"satisfied", "basically_satisfied"}


# --------------------------------------------------------------------------- the joint-meeting rules


def _leads(steps: Sequence[Step]) -> list[tuple[Step, LeadReported]]:
    return [(s, lead_of(s)) for s in steps if s.kind == "lead"]


def high_risk(steps: Sequence[Step]) -> bool:
    return any(
        s.type == "risk.assessed"
        and s.payload["score"] >= 14
        and sum(s.payload["answers"].values()) == s.payload["score"]
        for s in steps
    )


def escalation(steps: Sequence[Step]) -> bool:
    times: dict[str, list[datetime]] = defaultdict(list)
    for step, lead in _leads(steps):
        times[lead.victim_pseudonym].append(step.at)
    return any(
        len([t for t in ts if first <= t < first + YEAR]) >= 3 for ts in times.values() for first in ts
    )


def professional_judgement(steps: Sequence[Step]) -> bool:
    return any(lead.requests_joint_meeting for _s, lead in _leads(steps))


def repeat(steps: Sequence[Step]) -> bool:
    meetings = [(s.context.subject, s.at) for s in steps if s.type == "joint_meeting.concluded" and s.context]
    return any(
        lead.victim_pseudonym == subject and held < step.at < held + YEAR
        for subject, held in meetings
        for step, lead in _leads(steps)
    )


def convergence(steps: Sequence[Step]) -> bool:
    reports: dict[str, list[tuple[datetime, str]]] = defaultdict(list)
    for step, lead in _leads(steps):
        reports[lead.victim_pseudonym].append((step.at, step.sender))
    return any(
        a_sender != b_sender and abs(a - b) <= timedelta(days=30)
        for seen in reports.values()
        for a, a_sender in seen
        for b, b_sender in seen
    )


def minor_sexual_abuse(steps: Sequence[Step]) -> bool:
    return any(
        lead.minor and lead.category in ("sexual_assault", "child_abuse") for _s, lead in _leads(steps)
    )


def order_breach(steps: Sequence[Step]) -> bool:
    granted = {s.event_id for s in steps if s.type == "protection_order.decided" and s.payload["granted"]}
    return any(s.type == "protection_order.breached" and s.payload["order_id"] in granted for s in steps)


def serial_suspect(steps: Sequence[Step]) -> bool:
    victims: dict[str, set[str]] = defaultdict(set)
    for _step, lead in _leads(steps):
        for suspect in lead.suspect_pseudonyms:
            victims[suspect].add(lead.victim_pseudonym)
    return any(len(v) >= 2 for v in victims.values())


CHECKS = {
    "high_risk": high_risk,
    "escalation": escalation,
    "professional_judgement": professional_judgement,
    "repeat": repeat,
    "convergence": convergence,
    "minor_sexual_abuse": minor_sexual_abuse,
    "order_breach": order_breach,
    "serial_suspect": serial_suspect,
}


def test_there_is_a_check_for_every_rule() -> None:
    assert set(CHECKS) == set(RULES)


@pytest.mark.parametrize(("days", "rate"), [(7, 20), (1, 2), (30, 5)])
@pytest.mark.parametrize("rule", RULES)
def test_each_joint_meeting_rule_is_met_by_at_least_one_case(rule: str, days: int, rate: float) -> None:
    """Even one simulated day at a low rate holds a case for every rule (the cases are compressed)."""
    steps = steps_of(days=days, rate=rate)
    assert CHECKS[rule]([s for s in steps if s.case == rule]), f"no {rule} case in {days} day(s)"


def test_the_background_alone_does_not_invent_joint_meetings(week: list[Step]) -> None:
    background = [s for s in week if s.case == "background"]
    assert not any(s.type.startswith("joint_meeting") for s in background)
    assert not professional_judgement(background)


# --------------------------------------------------------------------------- the driver


class Recorder:
    """A sender that records what it was asked to publish and answers with the given event id."""

    def __init__(
        self, name: str, log: list[tuple[str, str, str, dict[str, Any], CaseContext | None]]
    ) -> None:
        self.name = name
        self.log = log

    def publish_lead(
        self, data: Mapping[str, Any], *, urgency: str | None = None, event_id: str | None = None
    ) -> str:
        assert event_id is not None
        self.log.append((self.name, "lead.reported", event_id, dict(data), None))
        return event_id

    def publish(
        self,
        event: EventModel,
        *,
        context: CaseContext,
        urgency: str = "routine",
        refs: Sequence[str] = (),
        audience: Sequence[str] = (),
        event_id: str | None = None,
    ) -> str:
        assert event_id is not None
        self.log.append((self.name, event.EVENT_TYPE, event_id, event.model_dump(mode="json"), context))
        return event_id


def test_the_driver_publishes_every_step_through_its_sender_with_fresh_ids_and_rewritten_references() -> None:
    steps = steps_of(days=1, rate=2)
    log: list[tuple[str, str, str, dict[str, Any], CaseContext | None]] = []
    senders = {name: Recorder(name, log) for name in {s.sender for s in steps}}
    tally = play(steps, senders, start=START)
    assert tally.total == len(steps) == len(log)
    assert [entry[0] for entry in log] == [s.sender for s in steps]
    published = [entry[2] for entry in log]
    assert len(set(published)) == len(published)
    assert all(uuid.UUID(i).version == 7 for i in published)
    assert not {s.event_id for s in steps} & set(published), "placeholders never reach the bus"
    earlier: set[str] = set()
    for _sender, _type, event_id, payload, context in log:
        for name in ("lead_id", "request_id", "order_id"):
            if payload.get(name):
                assert payload[name] in earlier
        if context is not None and context.lead_id is not None:
            assert context.lead_id in earlier
        earlier.add(event_id)


def test_two_runs_of_one_seed_publish_different_ids() -> None:
    steps = steps_of(days=1, rate=2)
    first, second = IdMap(), IdMap()
    lead = next(s for s in steps if s.kind == "lead")
    assert first(lead.event_id) != second(lead.event_id)
    assert first(lead.event_id) == first(lead.event_id)


def test_paced_playback_waits_for_each_steps_simulated_time_sped_up() -> None:
    steps = steps_of(days=1, rate=2)[:5]
    now = [0.0]
    naps: list[float] = []

    def sleep(seconds: float) -> None:
        naps.append(seconds)
        now[0] += seconds

    log: list[tuple[str, str, str, dict[str, Any], CaseContext | None]] = []
    senders = {name: Recorder(name, log) for name in {s.sender for s in steps}}
    play(steps, senders, start=START, speed=3600.0, clock=lambda: now[0], sleep=sleep)
    last = (steps[-1].at - START).total_seconds() / 3600.0
    assert now[0] == pytest.approx(last, abs=1e-6)
    assert all(n <= 1.0 for n in naps)


def test_paced_playback_maps_every_simulated_time_of_a_payload_onto_the_wall_clock_sped_up() -> None:
    steps = [s for s in steps_of(days=14, rate=2) if s.case == "repeat"]
    origin = datetime(2027, 1, 1, 9, 0, tzinfo=UTC)
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    log: list[tuple[str, str, str, dict[str, Any], CaseContext | None]] = []
    senders = {name: Recorder(name, log) for name in {s.sender for s in steps}}
    play(steps, senders, start=START, speed=360.0, clock=lambda: now[0], sleep=sleep, wall=lambda: origin)

    def wall(simulated: str) -> datetime:
        return origin + (datetime.fromisoformat(simulated) - START) / 360

    lead_step = next(s for s in steps if s.kind == "lead")
    lead_payload = next(entry[3] for entry in log if entry[1] == "lead.reported")
    assert datetime.fromisoformat(lead_payload["occurred_at"]) == wall(lead_step.payload["occurred_at"])
    concluded_step = next(s for s in steps if s.type == "joint_meeting.concluded")
    concluded = next(entry[3] for entry in log if entry[1] == "joint_meeting.concluded")
    due_dates = [datetime.fromisoformat(i["due_at"]) for i in concluded["action_items"]]
    assert due_dates == [wall(i["due_at"]) for i in concluded_step.payload["action_items"]]
    assert due_dates[0] - datetime.fromisoformat(concluded["concluded_at"]) < timedelta(hours=1)


def victims_and_ids(seed: int) -> tuple[set[str], set[str]]:
    """The victim pseudonyms and the event ids one run of ``seed`` publishes."""
    steps = generate(seed=seed, start=START, days=2, rate=10, key=KEY)
    log: list[tuple[str, str, str, dict[str, Any], CaseContext | None]] = []
    play(steps, {name: Recorder(name, log) for name in {s.sender for s in steps}}, start=START)
    victims = {lead_of(s).victim_pseudonym for s in steps if s.kind == "lead"}
    return victims, {entry[2] for entry in log}


def test_two_runs_with_one_state_file_play_other_people_under_other_event_ids(tmp_path: Path) -> None:
    state = tmp_path / "simulator" / "state.json"
    first, second = take_seed(state), take_seed(state)
    assert (first, second) == (1, 2)
    victims_1, ids_1 = victims_and_ids(first)
    victims_2, ids_2 = victims_and_ids(second)
    assert victims_1
    assert victims_2
    assert not victims_1 & victims_2, "the second run replayed people of the first"
    assert not ids_1 & ids_2


def test_a_state_file_that_is_not_the_simulator_s_is_refused_with_the_fix(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text("{}")
    with pytest.raises(UsageError, match="remove it"):
        take_seed(state)


def test_publish_step_refuses_an_event_without_a_case_context() -> None:
    from dataclasses import replace

    from services.kernel.errors import UsageError

    step = next(s for s in steps_of(days=1, rate=2) if s.kind == "event")
    with pytest.raises(UsageError, match="no case context"):
        publish_step(Recorder("x", []), replace(step, context=None), IdMap())


def test_the_summary_counts_per_type_per_sender_and_per_rule(week: list[Step]) -> None:
    tally = Tally()
    for step in week:
        tally.count(step)
    text = describe(tally, steps=week)
    assert f"published {len(week)} events" in text
    assert "lead.reported" in text
    assert "womens_federation" in text
    for rule in RULES:
        assert rule in text
    assert "7 channels and 25 towns" in text


def test_lianfang_simulate_dry_run_parses_its_options_and_prints_the_summary(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from services import cli

    assert cli.main(["simulate", "--dry-run", "--days", "1", "--seed", "3"]) == 0
    assert capsys.readouterr().out.strip(), "the dry run printed no summary"
