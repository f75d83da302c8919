"""The sharing policy's answers, remembered per header: the same as computing them, and bounded."""

from __future__ import annotations

import typing
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.common import Category
from schemas.envelope import EnvelopeHeader
from services.kernel import policy
from services.kernel.registry import Registry
from tests.kit import DemoDomain
from tests.kit import header as demo_header

pytestmark = pytest.mark.unit


def _choices(registry: Registry) -> dict[str, list[Any]]:
    """Values of each routing field that the demo district's rules name, and some they do not."""
    rules = registry.document.policy.rules
    types = {t for rule in rules for t in rule.when.type or ()} | {"lead.reported", "case.note"}
    towns = {t for rule in rules for t in rule.when.town or ()} | {"renhe", "nowhere"}
    return {
        "type": sorted(types),
        "category": [None, *typing.get_args(Category)],
        "minor": [None, True, False],
        "school_related": [None, True, False],
        "town": [None, *sorted(towns)],
        "urgency": ["immediate", "urgent", "routine"],
        "audience": registry.participant_ids()[:6],
    }


def _headers(registry: Registry) -> st.SearchStrategy[dict[str, Any]]:
    choices = _choices(registry)
    return st.fixed_dictionaries(
        {
            **{name: st.sampled_from(values) for name, values in choices.items() if name != "audience"},
            "audience": st.lists(st.sampled_from(choices["audience"]), unique=True, max_size=3),
        }
    )


def header(**fields: Any) -> EnvelopeHeader:
    """The demo header with ``fields``, its schema following its type."""
    return demo_header(schema=f"{fields.get('type', 'lead.reported')}/1", **fields)


@pytest.fixture(scope="module")
def registry(sealed_domain: DemoDomain) -> Registry:
    return sealed_domain.registry


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_remembered_recipients_are_what_the_policy_computes_for_every_header(
    registry: Registry, data: st.DataObject
) -> None:
    remembered = policy.Recipients(registry.document.policy)
    for _ in range(3):  # the second and third answers come from memory, and differ from nothing
        fields = data.draw(_headers(registry))
        h = header(**fields)
        assert dict(remembered(h)) == policy.recipients(registry.document.policy, h), fields
        assert dict(remembered(header(**fields))) == policy.recipients(registry.document.policy, h), fields


def test_headers_that_differ_only_in_their_audience_get_their_own_recipients(registry: Registry) -> None:
    remembered = policy.Recipients(registry.document.policy)
    to_court = remembered(header(type="joint_meeting.alert", audience=["court"]))
    to_health = remembered(header(type="joint_meeting.alert", audience=["health"]))
    assert to_court != to_health
    assert to_court == policy.recipients(
        registry.document.policy, header(type="joint_meeting.alert", audience=["court"])
    )


def test_a_header_asked_again_is_answered_from_memory(registry: Registry) -> None:
    remembered = policy.Recipients(registry.document.policy)
    first = remembered(header())
    assert remembered(header()) is first
    assert len(remembered) == 1


def test_the_memory_holds_at_most_its_limit_of_answers(registry: Registry) -> None:
    remembered = policy.Recipients(registry.document.policy, limit=4)
    towns = [f"town_{i}" for i in range(10)]
    for town in towns:
        remembered(header(town=town))
        assert len(remembered) <= 4
    last = header(town=towns[-1])
    assert dict(remembered(last)) == policy.recipients(registry.document.policy, last)


def test_a_header_with_an_audience_the_sender_chose_is_answered_but_not_remembered(
    registry: Registry,
) -> None:
    remembered = policy.Recipients(registry.document.policy)
    h = header(type="joint_meeting.alert", audience=["court", "health"])
    assert dict(remembered(h)) == policy.recipients(registry.document.policy, h)
    assert len(remembered) == 0


def test_a_remembered_answer_cannot_be_changed_by_whoever_asked(registry: Registry) -> None:
    answer = policy.Recipients(registry.document.policy)(header())
    with pytest.raises(TypeError):
        answer["triage"] = frozenset({"someone"})  # type: ignore[index]


def test_the_registry_answers_with_the_policy_it_carries(registry: Registry) -> None:
    h = header(category="sexual_assault", minor=True)
    assert dict(registry.recipients(h)) == policy.recipients(registry.document.policy, h)
