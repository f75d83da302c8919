"""The table of texts the hub's rules put in alerts: complete, bilingual, filled in by name."""

from __future__ import annotations

import re
from typing import get_args

import pytest

from schemas.events import AlertReasonCode
from services.hub.messages import MESSAGES, MessageName, parse, text

pytestmark = pytest.mark.unit

CHINESE = re.compile(r"[\u4e00-\u9fff]")


def test_the_table_holds_exactly_the_names_the_rules_may_ask_for() -> None:
    assert set(MESSAGES) == set(get_args(MessageName))


def test_every_alert_reason_has_a_text_and_every_text_explains_a_reason() -> None:
    reasons = {name.split(".", 1)[0] for name in MESSAGES}
    assert reasons == set(get_args(AlertReasonCode))


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_every_text_says_it_in_chinese_then_in_english(name: MessageName) -> None:
    chinese, separator, english = MESSAGES[name].rpartition("/ ")
    assert separator, "the two halves are separated by '/ '"
    assert CHINESE.search(chinese), "the first half is Chinese"
    assert english.isascii(), "the second half is English"
    assert not CHINESE.search(english)


def test_a_text_is_filled_in_by_name_and_a_missing_value_is_an_error() -> None:
    assert (
        text("high_risk.score", score=16, threshold=14) == "风险评分 16/24 ≥ 14 / risk score 16 of 24 >= 14"
    )
    with pytest.raises(KeyError):
        text("high_risk.score", score=16)


SAMPLES: dict[MessageName, dict[str, object]] = {
    "high_risk.score": {"score": 16, "threshold": 14},
    "high_risk.indicators": {"count": 5, "threshold": 4},
    "escalation": {"days": "365", "count": 3, "threshold": 3},
    "professional_judgement": {"sender": "police"},
    "repeat": {"days": "2.71125e-05", "window": "365"},
    "convergence": {"days": "30", "count": 2, "agencies": "police, womens_federation"},
    "minor_sexual_abuse": {"category": "child_abuse"},
    "order_breach": {},
    "serial_suspect": {"count": 2, "threshold": 2},
}


def test_every_name_has_a_sample_to_read_back() -> None:
    assert set(SAMPLES) == set(MESSAGES)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_a_filled_in_text_reads_back_as_its_name_and_values(name: MessageName) -> None:
    values = SAMPLES[name]
    assert parse(text(name, **values)) == (name, {k: str(v) for k, v in values.items()})


def test_a_text_of_no_table_entry_reads_back_as_nothing() -> None:
    assert parse("风险评分很高 / a very high score") is None
    assert parse("") is None
