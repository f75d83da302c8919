"""The SDK's pure parts: pseudonyms computed from identities, default urgency, error texts, and the
clear header it refuses to build."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from schemas.events import LeadReported
from services.kernel.errors import UsageError, validation_summary
from services.kernel.pseudonym import PseudonymKey, pseudonymize
from services.sdk.client import CaseContext, Client, OffsetsToCommit, default_urgency, lead_identities
from services.sdk.metrics import SdkMetrics
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


TOKEN = "0190a0a0-0000-7000-8000-000000000000"


def _lead_pseudonyms(key: PseudonymKey, data: dict[str, Any]) -> dict[str, Any]:
    return lead_identities(key, data, token=TOKEN).data


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


def test_a_victim_id_number_with_a_wrong_check_digit_is_kept_flagged_and_keyed_by_the_phone() -> None:
    metrics = SdkMetrics(CollectorRegistry())
    victim = {"name": "张某某", "id_number": "110113199001011230", "phone": "13800000000", "is_minor": False}
    identities = lead_identities(KEY, lead(victim=victim), token=TOKEN, metrics=metrics)
    filled = identities.data
    assert filled["victim"]["id_number"] == "110113199001011230"
    assert filled["victim"]["id_number_unverified"] is True
    assert filled["victim"]["identifier_flags"] == ["id_number_unverified"]
    assert filled["victim_pseudonym"] == pseudonymize(KEY, phone="13800000000")
    assert identities.links == ()
    assert metrics.identifier_problems.labels("id_number", "check_digit")._value.get() == 1
    LeadReported.model_validate_json(json.dumps(filled, default=str))


def test_the_victims_other_valid_identifiers_become_links_computed_in_the_same_batch() -> None:
    asked: list[list[str]] = []

    class Counting:
        def pseudonyms(self, canonicals: Any) -> list[str]:
            asked.append(list(canonicals))
            return KEY.pseudonyms(canonicals)

    victim = {"name": "张某某", "id_number": "11010119850512007X", "phone": "13800000000", "is_minor": False}
    identities = lead_identities(Counting(), lead(victim=victim), token=TOKEN)
    assert identities.data["victim_pseudonym"] == pseudonymize(KEY, id_number="11010119850512007X")
    assert identities.links == (pseudonymize(KEY, phone="13800000000"),)
    assert len(asked) == 1  # the victim's subject and link and the suspect's pseudonym: one call
    assert asked[0] == ["cnid:11010119850512007X", "phone:13800000000", "phone:13900000000"]


def test_a_victim_whose_only_identifier_is_invalid_is_kept_under_a_pseudonym_of_its_own() -> None:
    metrics = SdkMetrics(CollectorRegistry())
    victim = {"name": "张某某", "phone": "12", "is_minor": False}
    identities = lead_identities(KEY, lead(victim=victim), token=TOKEN, metrics=metrics)
    model = LeadReported.model_validate_json(json.dumps(identities.data, default=str))
    assert model.victim_pseudonym == KEY.pseudonyms(["unlinked:" + TOKEN])[0]
    assert model.victim.identifier_flags == ["phone_invalid", "no_valid_identifier"]
    assert model.victim.phone == "12"
    assert metrics.identifier_problems.labels("phone", "shape")._value.get() == 1
    assert metrics.identifier_problems.labels("subject", "none_valid")._value.get() == 1


def _offline_client(domain: DemoDomain, tmp_path: Path, **options: Any) -> Client:
    """Police's client whose drainer is not started: its broker is never contacted."""
    return Client(
        keystore=domain.keys("police"),
        registry=domain.registry,
        bootstrap="127.0.0.1:9",
        outbox_path=tmp_path / "outbox.sqlite",
        clock=lambda: NOW,
        start=False,
        **options,
    )


@pytest.mark.parametrize("subject", ["张三", "a b", "13800000000", "p1." + "A" * 42])
def test_the_sdk_refuses_to_publish_under_a_subject_that_is_not_a_pseudonym(
    domain: DemoDomain, tmp_path: Path, subject: str
) -> None:
    client = _offline_client(domain, tmp_path)
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


@pytest.mark.parametrize("own", [True, False])
def test_the_outbox_gauges_read_the_outbox_when_scraped_unless_the_metrics_owner_computes_them(
    domain: DemoDomain, tmp_path: Path, own: bool
) -> None:
    registry = CollectorRegistry()
    metrics = SdkMetrics(registry)
    client = _offline_client(domain, tmp_path, metrics=metrics, outbox_gauges=own)
    try:
        client.publish_lead(lead())
        client.publish_lead(lead())
        assert client.outbox.depth() == 2
        assert registry.get_sample_value("lianfang_outbox_depth") == (2 if own else 0)
        assert registry.get_sample_value("lianfang_outbox_waiting_for_pseudonyms") == 0
    finally:
        client.close()
    assert registry.get_sample_value("lianfang_outbox_depth") == 0, "a closed client's outbox: 0, no error"


def test_clients_sharing_their_metrics_report_the_sum_of_their_outboxes_and_a_closed_one_leaves_it(
    domain: DemoDomain, tmp_path: Path
) -> None:
    registry = CollectorRegistry()
    metrics = SdkMetrics(registry)
    first = _offline_client(domain, tmp_path / "first", metrics=metrics)
    try:
        second = _offline_client(domain, tmp_path / "second", metrics=metrics)
        try:
            first.publish_lead(lead())
            second.publish_lead(lead())
            second.publish_lead(lead())
            assert registry.get_sample_value("lianfang_outbox_depth") == 3
        finally:
            second.close()
        assert registry.get_sample_value("lianfang_outbox_depth") == 1
    finally:
        first.close()


def test_the_offsets_to_commit_are_the_next_past_the_last_record_done_of_each_partition_once_due() -> None:
    now = [100.0]
    done = OffsetsToCommit(1.0, now=lambda: now[0])
    assert not done.due()
    done.past("inbox", 0, 7)
    done.past("inbox", 0, 8)
    done.past("inbox", 2, 3)
    assert not done.due()
    now[0] = 101.0
    assert done.due()
    assert {tp.partition: o.offset for tp, o in done.take().items()} == {0: 9, 2: 4}
    assert done.take() == {}
    assert not done.due()
