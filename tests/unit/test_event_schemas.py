"""The v1 event catalogue: strict parsing, the triage/details split, upcasting and the JSON Schema export.

All people, numbers and places here are invented.
"""

from __future__ import annotations

import base64
import hashlib
import json
import typing
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from schemas import export
from schemas.events import (
    EVENT_MODELS,
    UPCASTERS,
    ActionItem,
    EventModel,
    JointMeetingAlert,
    LeadAcknowledged,
    LeadReported,
    Person,
    RiskAnswers,
    RiskAssessed,
    Suspect,
    event_model,
    join_sections,
    parse_event,
    split_sections,
    upcast,
)

pytestmark = pytest.mark.unit


def pseudonym(seed: str, version: int = 1) -> str:
    """A well-formed pseudonym; the real ones are keyed HMACs made in services/kernel/pseudonym.py."""
    digest = hashlib.sha256(seed.encode()).digest()
    return f"p{version}." + base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


VICTIM = pseudonym("victim")
SUSPECT = pseudonym("suspect")
LEAD = "0190a7c2-3b4d-7e5f-8a9b-0c1d2e3f4a5b"
OTHER = "0190a7c2-3b4d-7e5f-8a9b-0c1d2e3f4a5c"
NAME, PHONE, ID_NUMBER, NARRATIVE = "张某某", "13800000000", "110101199003070000", "丈夫李某某多次殴打"


def answers(yes: int) -> dict[str, bool]:
    """Checklist answers with the first ``yes`` questions answered yes."""
    return {name: index < yes for index, name in enumerate(RiskAnswers.model_fields)}


SAMPLES: dict[str, dict[str, Any]] = {
    "lead.reported": {
        "category": "domestic_violence",
        "channel": "hotline_12338",
        "town": "town01",
        "occurred_at": "2025-03-01T21:30:00+08:00",
        "victim": {
            "name": NAME,
            "id_number": ID_NUMBER,
            "phone": PHONE,
            "birth_date": "1990-03-07",
            "sex": "female",
            "is_minor": False,
            "age": 35,
        },
        "victim_pseudonym": VICTIM,
        "suspects": [{"name": "李某某", "is_minor": False, "relationship": "spouse", "pseudonym": SUSPECT}],
        "suspect_pseudonyms": [SUSPECT],
        "minor": False,
        "risk_indicators": ["strangulation", "threats_to_kill"],
        "narrative": NARRATIVE,
        "requests_joint_meeting": True,
        "reporter_contact": "13800000001",
    },
    "risk.assessed": {
        "lead_id": LEAD,
        "victim_pseudonym": VICTIM,
        "answers": answers(15),
        "score": 15,
        "assessed_by": "police",
        "notes": "受害人非常害怕",
    },
    "lead.acknowledged": {
        "lead_id": LEAD,
        "agency": "mediation.town01",
        "acknowledged_at": "2025-03-01T22:00:00Z",
    },
    "lead.action_taken": {
        "lead_id": LEAD,
        "action": "warning_letter",
        "taken_at": "2025-03-02T09:00:00+08:00",
        "note": "向李某某出具告诫书",
    },
    "lead.resolved": {
        "lead_id": LEAD,
        "outcome": "resolved",
        "resolved_at": "2025-03-10T09:00:00+08:00",
        "satisfaction": "basically_satisfied",
        "feedback": "基本满意",
    },
    "protection_order.requested": {
        "lead_id": LEAD,
        "victim_pseudonym": VICTIM,
        "respondent_pseudonym": SUSPECT,
        "urgent": True,
        "requested_at": "2025-03-02T10:00:00+08:00",
        "grounds": "李某某扬言杀害申请人",
    },
    "protection_order.decided": {
        "request_id": OTHER,
        "granted": True,
        "decided_at": "2025-03-02T20:00:00+08:00",
        "valid_until": "2025-09-02T20:00:00+08:00",
        "terms": ["禁止被申请人骚扰、跟踪申请人"],
    },
    "protection_order.breached": {
        "order_id": OTHER,
        "victim_pseudonym": VICTIM,
        "breached_at": "2025-03-05T23:00:00+08:00",
        "description": "被申请人到申请人住所滋扰",
    },
    "joint_meeting.alert": {
        "alert_id": OTHER,
        "victim_pseudonym": VICTIM,
        "reasons": [
            {"code": "high_risk", "detail": "risk score 15 >= 14"},
            {"code": "professional_judgement", "detail": "the reporter asks for a joint meeting"},
        ],
        "agencies_involved": ["womens_federation", "police"],
        "related_events": [LEAD],
        "raised_at": "2025-03-02T09:05:00+08:00",
        "updated_at": "2025-03-02T09:05:00+08:00",
        "status": "open",
    },
    "joint_meeting.scheduled": {
        "alert_id": OTHER,
        "meeting_at": "2025-03-03T14:00:00+08:00",
        "participants": ["plc", "police", "womens_federation", "mediation.town01"],
        "location": "区委政法委第一会议室",
    },
    "joint_meeting.concluded": {
        "alert_id": OTHER,
        "concluded_at": "2025-03-03T16:00:00+08:00",
        "action_items": [
            {
                "description": "为张某某申请庇护",
                "owner": "civil_affairs",
                "due_at": "2025-03-04T16:00:00+08:00",
            }
        ],
        "action_item_deadlines": [{"owner": "civil_affairs", "due_at": "2025-03-04T16:00:00+08:00"}],
        "summary": "张某某处于高风险，各单位分工如下",
    },
    "supervision.breach": {
        "lead_id": LEAD,
        "agency": "mediation.town01",
        "deadline_kind": "acknowledge",
        "due_at": "2025-03-01T22:30:00+08:00",
        "detected_at": "2025-03-01T22:31:00+08:00",
        "urgency": "immediate",
    },
    "supervision.report": {
        "period_start": "2025-03-01T00:00:00+08:00",
        "period_end": "2025-04-01T00:00:00+08:00",
        "rows": [
            {
                "agency": "police",
                "received": 10,
                "responded_in_time": 9,
                "resolved": 8,
                "satisfied": 7,
                "response_rate": 0.9,
                "resolution_rate": 0.8,
                "satisfaction_rate": 0.875,
            }
        ],
    },
}

PERSONAL_SAMPLE_VALUES = (NAME, PHONE, ID_NUMBER, NARRATIVE, "李某某", "13800000001", "1990-03-07")


def raw(event_type: str, **changes: Any) -> bytes:
    """A sample event of the type as JSON bytes, with top-level fields replaced (``None`` removes one)."""
    data = {**SAMPLES[event_type], **changes}
    return json.dumps({k: v for k, v in data.items() if v is not None}, ensure_ascii=False).encode()


def sample(event_type: str) -> EventModel:
    return parse_event(event_type, raw(event_type))


def error_types(error: ValidationError) -> set[str]:
    return {detail["type"] for detail in error.errors()}


ALL_TYPES = sorted(EVENT_MODELS)


# --- the catalogue -------------------------------------------------------------------------------------


def test_the_catalogue_has_the_thirteen_event_types_of_the_design() -> None:
    assert set(EVENT_MODELS) == {
        "lead.reported",
        "risk.assessed",
        "lead.acknowledged",
        "lead.action_taken",
        "lead.resolved",
        "protection_order.requested",
        "protection_order.decided",
        "protection_order.breached",
        "joint_meeting.alert",
        "joint_meeting.scheduled",
        "joint_meeting.concluded",
        "supervision.breach",
        "supervision.report",
    }
    assert set(SAMPLES) == set(EVENT_MODELS)
    for event_type, model in EVENT_MODELS.items():
        assert event_type == model.EVENT_TYPE
        assert model.model_fields["schema_version"].default == 1


def test_an_unknown_event_type_raises_a_key_error_naming_the_known_types() -> None:
    assert event_model("joint_meeting.alert") is JointMeetingAlert
    with pytest.raises(KeyError, match=r"unknown event type 'lead\.deleted'.*lead\.reported"):
        event_model("lead.deleted")
    with pytest.raises(KeyError):
        parse_event("lead.deleted", b"{}")


@pytest.mark.parametrize("event_type", ALL_TYPES)
def test_every_sample_event_parses_and_survives_a_split_and_a_join(event_type: str) -> None:
    event = sample(event_type)
    assert type(event) is EVENT_MODELS[event_type]
    triage, details = split_sections(event)
    assert join_sections(event_type, triage, details) == event
    assert parse_event(event_type, event.model_dump_json().encode()) == event


def test_event_models_are_frozen() -> None:
    event = sample("lead.acknowledged")
    assert isinstance(event, LeadAcknowledged)
    with pytest.raises(ValidationError, match="frozen"):
        event.agency = "police"  # type: ignore[misc]


def test_declaring_triage_fields_that_the_model_does_not_have_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="TRIAGE_FIELDS"):

        class Broken(EventModel):
            EVENT_TYPE: ClassVar[str] = "broken"
            TRIAGE_FIELDS: ClassVar[frozenset[str]] = frozenset({"nope"})
            schema_version: int = 1


# --- strictness ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("event_type", ALL_TYPES)
def test_unknown_fields_in_an_event_are_rejected(event_type: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_event(event_type, raw(event_type, victim_address="某区某街道1号"))
    assert error_types(caught.value) == {"extra_forbidden"}


def test_unknown_fields_in_a_nested_object_are_rejected() -> None:
    victim = {**SAMPLES["lead.reported"]["victim"], "address": "某区某街道1号"}
    with pytest.raises(ValidationError) as caught:
        parse_event("lead.reported", raw("lead.reported", victim=victim))
    assert error_types(caught.value) == {"extra_forbidden"}


def test_iso_datetime_strings_are_accepted_from_json_in_strict_mode() -> None:
    event = parse_event("lead.acknowledged", raw("lead.acknowledged"))
    assert isinstance(event, LeadAcknowledged)
    assert event.acknowledged_at == datetime(2025, 3, 1, 22, 0, tzinfo=UTC)


def test_a_naive_datetime_is_rejected() -> None:
    with pytest.raises(ValidationError) as caught:
        parse_event("lead.acknowledged", raw("lead.acknowledged", acknowledged_at="2025-03-01T22:00:00"))
    assert error_types(caught.value) == {"timezone_aware"}


@pytest.mark.parametrize(
    ("case", "changes", "expected"),
    [
        ("a datetime as a unix timestamp", {"acknowledged_at": 1740866400}, "datetime_type"),
        ("an agency id with capitals", {"agency": "Police"}, "string_pattern_mismatch"),
        ("a lead id that is not a canonical uuid", {"lead_id": LEAD.upper()}, "string_pattern_mismatch"),
        ("schema version true", {"schema_version": True}, "value_error"),
        ("schema version 1.0", {"schema_version": 1.0}, "value_error"),
        ("schema version 2 from the future", {"schema_version": 2}, "literal_error"),
        ("schema version 0 with no upcaster", {"schema_version": 0}, "literal_error"),
    ],
)
def test_values_of_the_wrong_type_or_shape_are_rejected_not_coerced(
    case: str, changes: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_event("lead.acknowledged", raw("lead.acknowledged", **changes))
    assert expected in error_types(caught.value), case


def test_python_strings_are_not_coerced_into_datetimes() -> None:
    with pytest.raises(ValidationError):
        LeadAcknowledged.model_validate(
            {"lead_id": LEAD, "agency": "police", "acknowledged_at": "2025-03-01T22:00:00Z"}
        )


@pytest.mark.parametrize(
    ("case", "data"),
    [
        ("a key given twice", b'{"lead_id": "x", "lead_id": "y"}'),
        ("NaN", b'{"score": NaN}'),
        ("bytes that are not UTF-8", b'{"agency": "\xff"}'),
        ("not JSON at all", b"lead_id=1"),
        ("a UTF-8 byte order mark", b'\xef\xbb\xbf{"lead_id": "x"}'),
    ],
)
def test_malformed_json_is_a_validation_error(case: str, data: bytes) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_event("lead.acknowledged", data)
    assert error_types(caught.value) == {"json_invalid"}, case


def test_a_json_array_instead_of_an_object_is_rejected() -> None:
    with pytest.raises(ValidationError) as caught:
        parse_event("lead.acknowledged", b"[]")
    assert error_types(caught.value) == {"model_type"}


@pytest.mark.parametrize(
    ("case", "value"),
    [
        ("a version with a leading zero", "p01." + VICTIM[3:]),
        ("base64 padding", VICTIM + "="),
        ("a last character that carries more than 4 bits", VICTIM[:-1] + "B"),
        ("standard rather than url-safe base64", VICTIM[:10] + "+" + VICTIM[11:]),
        ("a digest one character short", VICTIM[:-1]),
    ],
)
def test_a_non_canonical_pseudonym_is_rejected(case: str, value: str) -> None:
    with pytest.raises(ValidationError):
        parse_event("protection_order.breached", raw("protection_order.breached", victim_pseudonym=value))


def test_validation_errors_do_not_repeat_personal_data() -> None:
    victim = {**SAMPLES["lead.reported"]["victim"], "phone": "张某某的电话" * 10}  # too long
    with pytest.raises(ValidationError) as caught:
        parse_event("lead.reported", raw("lead.reported", victim=victim))
    assert "张某某" not in str(caught.value)


def test_repeated_items_in_a_set_like_list_are_rejected() -> None:
    with pytest.raises(ValidationError, match="unique"):
        parse_event("lead.reported", raw("lead.reported", risk_indicators=["weapon", "weapon"]))
    reasons = [{"code": "repeat", "detail": "a"}, {"code": "repeat", "detail": "b"}]
    with pytest.raises(ValidationError, match="reason code"):
        parse_event("joint_meeting.alert", raw("joint_meeting.alert", reasons=reasons))


# --- cross-field rules -----------------------------------------------------------------------------------


def test_a_risk_score_that_does_not_match_the_answers_is_rejected() -> None:
    with pytest.raises(ValidationError, match="score must equal the number of yes answers"):
        parse_event("risk.assessed", raw("risk.assessed", score=14))


def test_the_risk_checklist_has_24_questions_described_in_chinese_and_english() -> None:
    assert len(RiskAnswers.model_fields) == 24
    for name, info in RiskAnswers.model_fields.items():
        assert info.annotation is bool, name
        assert info.is_required(), name
        assert info.description is not None
        assert " / " in info.description, name
    event = sample("risk.assessed")
    assert isinstance(event, RiskAssessed)
    assert event.answers.yes_count() == event.score == 15


def test_the_minor_flag_must_agree_with_the_victims_details() -> None:
    with pytest.raises(ValidationError, match=r"minor must equal victim\.is_minor"):
        parse_event("lead.reported", raw("lead.reported", minor=True))
    victim = {**SAMPLES["lead.reported"]["victim"], "age": 15}
    with pytest.raises(ValidationError, match="is_minor must agree with age"):
        parse_event("lead.reported", raw("lead.reported", victim=victim))


def test_suspect_pseudonyms_must_mirror_the_suspects() -> None:
    with pytest.raises(ValidationError, match="suspect_pseudonyms"):
        parse_event("lead.reported", raw("lead.reported", suspect_pseudonyms=[]))
    with pytest.raises(ValidationError, match="suspect_pseudonyms"):
        parse_event("lead.reported", raw("lead.reported", suspect_pseudonyms=[VICTIM]))


def test_action_item_deadlines_must_mirror_the_action_items() -> None:
    late = [{"owner": "civil_affairs", "due_at": "2025-03-05T16:00:00+08:00"}]
    with pytest.raises(ValidationError, match="action_item_deadlines"):
        parse_event("joint_meeting.concluded", raw("joint_meeting.concluded", action_item_deadlines=late))


@pytest.mark.parametrize(
    ("case", "event_type", "changes", "message"),
    [
        (
            "a refused order with an expiry",
            "protection_order.decided",
            {"granted": False},
            "only for a granted order",
        ),
        (
            "an order that expires before it is decided",
            "protection_order.decided",
            {"valid_until": "2025-03-01T00:00:00+08:00"},
            "later than decided_at",
        ),
        (
            "an alert updated before it was raised",
            "joint_meeting.alert",
            {"updated_at": "2025-03-02T09:00:00+08:00"},
            "not be earlier than raised_at",
        ),
        (
            "a breach detected before the deadline",
            "supervision.breach",
            {"detected_at": "2025-03-01T22:00:00+08:00"},
            "not yet due",
        ),
        (
            "a report period that ends before it starts",
            "supervision.report",
            {"period_end": "2025-02-01T00:00:00+08:00"},
            "period_end must be later",
        ),
        (
            "more resolved leads than received",
            "supervision.report",
            {"rows": [{**SAMPLES["supervision.report"]["rows"][0], "resolved": 11}]},
            "cannot exceed received",
        ),
        (
            "a rate above one",
            "supervision.report",
            {"rows": [{**SAMPLES["supervision.report"]["rows"][0], "response_rate": 1.5}]},
            "less than or equal to 1",
        ),
    ],
)
def test_inconsistent_events_are_rejected(
    case: str, event_type: str, changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_event(event_type, raw(event_type, **changes))


# --- triage and details ------------------------------------------------------------------------------------

_PERSONAL_FIELD_NAMES = {
    "name",
    "id_number",
    "phone",
    "birth_date",
    "victim",
    "suspects",
    "narrative",
    "notes",
    "note",
    "feedback",
    "grounds",
    "terms",
    "description",
    "summary",
    "action_items",
    "reporter_contact",
    "location",
}


def _models_in(annotation: Any) -> set[type[BaseModel]]:
    """Every pydantic model an annotation mentions, however deeply nested in lists and unions."""
    found: set[type[BaseModel]] = set()
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        found.add(annotation)
        for info in annotation.model_fields.values():
            found |= _models_in(info.annotation)
    for argument in typing.get_args(annotation):
        found |= _models_in(argument)
    return found


@pytest.mark.parametrize("event_type", ALL_TYPES)
def test_triage_holds_no_names_phones_or_id_numbers(event_type: str) -> None:
    model = EVENT_MODELS[event_type]
    for field_name in model.TRIAGE_FIELDS:
        assert field_name not in _PERSONAL_FIELD_NAMES, field_name
        nested = _models_in(model.model_fields[field_name].annotation)
        assert not nested & {Person, Suspect, ActionItem}, field_name
        for nested_model in nested:
            assert not set(nested_model.model_fields) & _PERSONAL_FIELD_NAMES, (field_name, nested_model)
    triage, _ = split_sections(sample(event_type))
    text = json.dumps(triage, ensure_ascii=False)
    for value in PERSONAL_SAMPLE_VALUES:
        assert value not in text


@pytest.mark.parametrize("event_type", ALL_TYPES)
def test_every_field_is_either_triage_or_details_and_both_carry_the_schema_version(event_type: str) -> None:
    event = sample(event_type)
    triage, details = split_sections(event)
    assert triage["schema_version"] == details["schema_version"] == 1
    assert set(triage) == event.TRIAGE_FIELDS | {"schema_version"}
    assert set(triage) | set(details) == set(type(event).model_fields)
    assert set(triage) & set(details) == {"schema_version"}


def test_a_triage_only_recipient_gets_the_triage_as_a_dict() -> None:
    triage, _ = split_sections(sample("lead.reported"))
    assert join_sections("lead.reported", triage) == triage
    assert join_sections("lead.reported", triage, None) == triage


def test_a_triage_section_alone_is_still_checked_against_the_triage_rules() -> None:
    triage, _ = split_sections(sample("risk.assessed"))
    with pytest.raises(ValidationError, match="score must equal the number of yes answers"):
        join_sections("risk.assessed", {**triage, "score": 3})
    with pytest.raises(ValidationError, match="category"):
        join_sections("lead.reported", {**split_sections(sample("lead.reported"))[0], "category": "dv"})


@pytest.mark.parametrize(
    ("case", "move"),
    [
        ("the victim's identity in triage", ("victim", "to_triage")),
        ("the narrative in triage", ("narrative", "to_triage")),
        ("the category in details", ("category", "to_details")),
    ],
)
def test_a_field_in_the_wrong_section_is_rejected(case: str, move: tuple[str, str]) -> None:
    triage, details = split_sections(sample("lead.reported"))
    field, direction = move
    if direction == "to_triage":
        triage[field] = details.pop(field)
    else:
        details[field] = triage.pop(field)
    with pytest.raises(ValidationError) as caught:
        join_sections("lead.reported", triage, details)
    assert error_types(caught.value) == {"section_mismatch"}, case
    if direction == "to_triage":
        with pytest.raises(ValidationError):
            join_sections("lead.reported", triage)


def test_sections_that_give_different_schema_versions_are_rejected() -> None:
    triage, details = split_sections(sample("lead.acknowledged"))
    with pytest.raises(ValidationError, match="different schema versions"):
        join_sections("lead.acknowledged", triage, {**details, "schema_version": 0})


def test_joining_python_objects_rather_than_json_values_is_a_type_error() -> None:
    triage, details = split_sections(sample("lead.acknowledged"))
    triage["acknowledged_at"] = datetime(2025, 3, 1, tzinfo=UTC)
    with pytest.raises(TypeError, match="JSON values"):
        join_sections("lead.acknowledged", triage, details)


# --- upcasting ------------------------------------------------------------------------------------------


def test_an_upcaster_brings_an_old_version_up_to_the_current_one(monkeypatch: pytest.MonkeyPatch) -> None:
    def rename_by_to_agency(data: dict[str, Any]) -> dict[str, Any]:
        upgraded = {k: v for k, v in data.items() if k != "by"}
        if "by" in data:
            upgraded["agency"] = data["by"]
        return upgraded

    monkeypatch.setitem(UPCASTERS, ("lead.acknowledged", 0), rename_by_to_agency)
    old = {"schema_version": 0, "lead_id": LEAD, "by": "police", "acknowledged_at": "2025-03-01T22:00:00Z"}

    assert upcast("lead.acknowledged", old) == {
        **SAMPLES["lead.acknowledged"],
        "schema_version": 1,
        "agency": "police",
    }
    assert old["schema_version"] == 0, "upcast must not modify its input"
    assert "by" in old
    event = parse_event("lead.acknowledged", json.dumps(old).encode())
    assert isinstance(event, LeadAcknowledged)
    assert (event.agency, event.schema_version) == ("police", 1)
    triage, details = dict(old), {"schema_version": 0}
    assert join_sections("lead.acknowledged", triage, details) == event
    assert join_sections("lead.acknowledged", triage)["agency"] == "police"


def test_current_data_and_data_without_a_version_pass_through_upcast_unchanged() -> None:
    data = dict(SAMPLES["lead.resolved"])
    assert upcast("lead.resolved", data) == data
    assert upcast("lead.resolved", {**data, "schema_version": 1}) == {**data, "schema_version": 1}


def test_every_version_older_than_the_current_one_has_an_upcaster() -> None:
    for event_type, model in EVENT_MODELS.items():
        current = model.model_fields["schema_version"].default
        for version in range(1, current):
            assert (event_type, version) in UPCASTERS, (event_type, version)


# --- a property: any lead survives the wire ---------------------------------------------------------------

_TIMEZONES = st.sampled_from([UTC, timezone(timedelta(hours=8)), timezone(timedelta(hours=-5, minutes=-30))])
_MOMENTS = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=_TIMEZONES)
_HANZI = st.characters(min_codepoint=0x4E00, max_codepoint=0x9FA5)
_PSEUDONYMS = st.builds(
    lambda version, digest: f"p{version}." + base64.urlsafe_b64encode(digest).decode().rstrip("="),
    st.integers(0, 9),
    st.binary(min_size=32, max_size=32),
)


@st.composite
def _people(draw: st.DrawFn) -> dict[str, Any]:
    age = draw(st.none() | st.integers(0, 120))
    return {
        "name": draw(st.text(_HANZI, min_size=2, max_size=4)),
        "id_number": draw(st.none() | st.from_regex(r"[0-9]{17}[0-9X]", fullmatch=True)),
        "phone": draw(st.none() | st.from_regex(r"1[3-9][0-9]{9}", fullmatch=True)),
        "birth_date": draw(st.none() | st.dates()),
        "sex": draw(st.none() | st.sampled_from(["female", "male", "unknown"])),
        "is_minor": draw(st.booleans()) if age is None else age < 18,
        "age": age,
    }


@st.composite
def _leads(draw: st.DrawFn) -> LeadReported:
    victim = Person(**draw(_people()))
    # Distinct pseudonyms: one pseudonym on two suspects is one person listed twice, which is rejected.
    pseudonyms = draw(st.lists(st.none() | _PSEUDONYMS, max_size=3, unique_by=lambda p: p or object()))
    relationships = typing.get_args(Suspect.model_fields["relationship"].annotation)
    suspects = [
        Suspect(**draw(_people()), relationship=draw(st.sampled_from(relationships)), pseudonym=pseudonym)
        for pseudonym in pseudonyms
    ]
    indicators = typing.get_args(typing.get_args(LeadReported.model_fields["risk_indicators"].annotation)[0])
    return LeadReported(
        category=draw(st.sampled_from(typing.get_args(LeadReported.model_fields["category"].annotation))),
        channel=draw(st.sampled_from(typing.get_args(LeadReported.model_fields["channel"].annotation))),
        town=draw(st.from_regex(r"[a-z0-9_]{1,32}", fullmatch=True)),
        occurred_at=draw(st.none() | _MOMENTS),
        victim=victim,
        victim_pseudonym=draw(_PSEUDONYMS),
        suspects=suspects,
        suspect_pseudonyms=[s.pseudonym for s in suspects if s.pseudonym is not None],
        minor=victim.is_minor,
        school_related=draw(st.booleans()),
        risk_indicators=draw(st.lists(st.sampled_from(indicators), unique=True)),
        narrative=draw(st.text(max_size=300)),
        requests_joint_meeting=draw(st.booleans()),
        reporter_contact=draw(st.none() | st.text(min_size=1, max_size=40)),
    )


@settings(deadline=None)
@given(_leads())
def test_any_lead_survives_the_wire_and_the_split_into_sections(lead: LeadReported) -> None:
    assert parse_event("lead.reported", lead.model_dump_json().encode()) == lead
    triage, details = split_sections(lead)
    assert join_sections("lead.reported", triage, details) == lead
    assert join_sections("lead.reported", triage) == triage


# --- the JSON Schema export ---------------------------------------------------------------------------


def test_the_committed_json_schema_export_is_current() -> None:
    assert export.stale_files() == [], "run `python -m schemas.export` and commit schemas/json/"


def test_every_exported_schema_has_an_id_a_title_and_the_triage_fields() -> None:
    for name, text in export.render_schemas().items():
        document = json.loads(text)
        event_type = name.removesuffix(".schema.json")
        assert document["$id"] == f"https://lianfang.example/schemas/v1/{event_type}.schema.json"
        assert document["title"] == EVENT_MODELS[event_type].__name__
        assert document["x-lianfang-triage-fields"] == sorted(EVENT_MODELS[event_type].TRIAGE_FIELDS)
        assert document["additionalProperties"] is False
        assert text.endswith("}\n")


def test_every_exported_property_is_described_in_chinese_and_english() -> None:
    def properties(document: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        found = list(document.get("properties", {}).items())
        for definition in document.get("$defs", {}).values():
            found += properties(definition)
        return found

    for text in export.render_schemas().values():
        for name, schema in properties(json.loads(text)):
            description = schema.get("description", "")
            assert any("\u4e00" <= char <= "\u9fff" for char in description), name
            assert any(char.isascii() and char.isalpha() for char in description), name


def test_the_export_check_names_missing_stale_and_unexpected_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert export.main(["--check", "--dir", str(tmp_path)]) == 1
    assert "missing:" in capsys.readouterr().err
    assert export.main(["--dir", str(tmp_path)]) == 0
    assert export.main(["--check", "--dir", str(tmp_path)]) == 0
    (tmp_path / "lead.reported.schema.json").write_text("{}\n", encoding="utf-8")
    (tmp_path / "lead.deleted.schema.json").write_text("{}\n", encoding="utf-8")
    assert export.main(["--check", "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "stale:" in err
    assert "unexpected:" in err
    assert export.main(["--dir", str(tmp_path)]) == 0
    assert not (tmp_path / "lead.deleted.schema.json").exists()
    assert export.stale_files(tmp_path) == []


def test_a_person_is_written_without_the_newer_identifier_fields_until_they_are_used() -> None:
    # Readers that predate travel_document and identifier_flags refuse unknown fields: a person who
    # uses neither must serialize as before, so those readers still read every such lead.
    victim = SAMPLES["lead.reported"]["victim"]
    _, details = split_sections(parse_event("lead.reported", raw("lead.reported")))
    assert "travel_document" not in details["victim"]
    assert "identifier_flags" not in details["victim"]
    flagged = {**victim, "identifier_flags": ["phone_invalid"], "travel_document": "E12345678"}
    _, details = split_sections(parse_event("lead.reported", raw("lead.reported", victim=flagged)))
    assert details["victim"]["identifier_flags"] == ["phone_invalid"]
    assert details["victim"]["travel_document"] == "E12345678"
