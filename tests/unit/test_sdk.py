"""The SDK's pure parts: pseudonyms computed from identities, default urgency, error texts, and the
clear header it refuses to build."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from schemas.events import LeadReported
from services.kernel.errors import UsageError, validation_summary
from services.kernel.pseudonym import PseudonymKey, pseudonymize
from services.sdk.client import CaseContext, Client, _lead_pseudonyms, default_urgency
from tests.kit import NOW, DemoDomain

pytestmark = pytest.mark.unit

KEY = PseudonymKey(version=1, secret=b"\x07" * 32)


def lead(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "category": "domestic_violence",
        "channel": "police_call",
        "town": "renhe",
        "victim": {"name": "张某某", "phone": "138-0000-0000", "is_minor": False},
        "suspects": [
            {"name": "李某", "phone": "13900000000", "is_minor": False, "relationship": "spouse"},
            {"name": "某人", "is_minor": False, "relationship": "stranger"},
        ],
        "minor": False,
        "risk_indicators": [],
        "narrative": "多次殴打。",
        "requests_joint_meeting": False,
    }
    data.update(overrides)
    return data


def _model(data: dict[str, Any]) -> LeadReported:
    return LeadReported.model_validate_json(json.dumps(_lead_pseudonyms(KEY, data), default=str))


def test_the_victim_pseudonym_is_the_keyed_hash_of_the_strongest_identifier() -> None:
    model = _model(lead())
    assert model.victim_pseudonym == pseudonymize(KEY, phone="13800000000")


def test_only_identifiable_suspects_get_a_pseudonym_and_triage_lists_them_in_order() -> None:
    model = _model(lead())
    assert model.suspects[0].pseudonym == pseudonymize(KEY, phone="13900000000")
    assert model.suspects[1].pseudonym is None
    assert model.suspect_pseudonyms == [model.suspects[0].pseudonym]


def test_a_lead_without_a_victim_is_refused_with_a_clear_message() -> None:
    from services.kernel.errors import UsageError

    with pytest.raises(UsageError, match="needs a victim"):
        _lead_pseudonyms(KEY, {"category": "other"})


@pytest.mark.parametrize(
    ("overrides", "urgency"),
    [
        (
            {
                "category": "sexual_assault",
                "minor": True,
                "victim": {"name": "小某", "phone": "13800000001", "is_minor": True},
            },
            "immediate",
        ),
        ({"risk_indicators": ["strangulation"]}, "immediate"),
        ({}, "urgent"),
        ({"category": "employment_discrimination"}, "routine"),
    ],
)
def test_default_urgency_follows_the_duty_to_act(overrides: dict[str, Any], urgency: str) -> None:
    assert default_urgency(_model(lead(**overrides))) == urgency


def test_a_validation_error_names_the_field_but_not_the_value() -> None:
    with pytest.raises(ValidationError) as raised:
        _model(lead(victim={"name": "张某某", "phone": "13800000000", "is_minor": False, "age": 987}))
    text = validation_summary(raised.value, whole="(event)")
    assert "victim.age" in text
    assert "987" not in text


def test_a_victim_id_number_with_a_wrong_check_digit_is_accepted_and_flagged_unverified() -> None:
    filled = _lead_pseudonyms(
        KEY, lead(victim={"name": "张某某", "id_number": "110113199001011230", "is_minor": False})
    )
    assert filled["victim"]["id_number_unverified"] is True
    assert filled["victim_pseudonym"] == pseudonymize(KEY, id_number="110113199001011230")


@pytest.mark.parametrize("subject", ["张三", "a b", "13800000000", "p1." + "A" * 42])
def test_the_sdk_refuses_to_publish_under_a_subject_that_is_not_a_pseudonym(
    domain: DemoDomain, tmp_path: Path, subject: str
) -> None:
    client = Client(
        keystore=domain.keys("police"),
        registry=domain.registry,
        bootstrap="127.0.0.1:9",  # never contacted: the drainer is not started
        outbox_path=tmp_path / "outbox.sqlite",
        clock=lambda: NOW,
        start=False,
    )
    try:
        context = CaseContext(
            subject=subject, category="domestic_violence", minor=False, town="renhe", school_related=None
        )
        with pytest.raises(UsageError, match="subject") as raised:
            client.publish(_model(lead()), context=context)
        assert subject not in str(raised.value), "the refusal does not repeat the subject"
        assert client.outbox.depth() == 0
    finally:
        client.close()
