"""What a coordinator reads: spans of time in days, hours and minutes, and the hub's alert reasons from
the console's table of the page's language, with names for ids and nothing of the other language."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from services.console import texts_en, texts_zh, wording
from services.hub import messages
from services.simulator import district
from tests.unit.test_hub_messages import SAMPLES

pytestmark = pytest.mark.unit

CHINESE = re.compile(r"[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]")
NAMES = {pid: (zh, en) for pid, zh, en in district.participants()}


def agency_in(lang: str) -> object:
    return lambda pid: NAMES[pid][1 if lang == "en" else 0]


def test_each_language_has_a_text_for_every_text_of_the_hub_with_the_same_fields() -> None:
    assert set(texts_zh.REASONS) == set(texts_en.REASONS) == set(messages.MESSAGES)
    for name, hub_text in messages.MESSAGES.items():
        wanted = set(re.findall(r"\{(\w+)\}", hub_text))
        assert set(re.findall(r"\{(\w+)\}", texts_zh.REASONS[name])) == wanted, name
        assert set(re.findall(r"\{(\w+)\}", texts_en.REASONS[name])) == wanted, name


@pytest.mark.parametrize(
    ("span", "zh", "en"),
    [
        (timedelta(seconds=2.3), "不到 1 分钟", "less than a minute"),
        (timedelta(minutes=1), "1 分钟", "1 minute"),
        (timedelta(minutes=45), "45 分钟", "45 minutes"),
        (timedelta(hours=1, minutes=5), "1 小时 5 分钟", "1 hour 5 minutes"),
        (timedelta(hours=12, minutes=5), "12 小时", "12 hours"),
        (timedelta(days=2, hours=3), "2 天 3 小时", "2 days 3 hours"),
        (timedelta(days=365), "365 天", "365 days"),
        (-timedelta(hours=2), "2 小时", "2 hours"),
    ],
)
def test_a_span_of_time_is_said_in_human_units(span: timedelta, zh: str, en: str) -> None:
    assert wording.duration("zh", span) == zh
    assert wording.duration("en", span) == en


def test_a_repeat_a_moment_after_the_meeting_is_said_in_minutes_not_in_a_fraction_of_a_day() -> None:
    detail = messages.text("repeat", days="2.71125e-05", window="365")
    assert (
        wording.explain("zh", detail, agency_in("zh"))
        == "会商结束后 不到 1 分钟再次收到线索（观察期 365 天）"
    )
    assert "2.71125e-05" not in wording.explain("en", detail, agency_in("en"))


def test_a_minor_victims_category_is_named_in_the_pages_language() -> None:
    detail = messages.text("minor_sexual_abuse", category="child_abuse")
    assert (
        wording.explain("zh", detail, agency_in("zh")) == "受害人为未成年人，线索类别为虐待儿童，须立即处理"
    )
    assert wording.explain("en", detail, agency_in("en")) == (
        "A minor victim, category Child abuse: to be handled immediately"
    )


def test_agencies_in_a_reason_are_named_not_given_by_id() -> None:
    detail = messages.text("convergence", days="30", count=2, agencies="police, womens_federation")
    assert "区公安局、区妇联" in wording.explain("zh", detail, agency_in("zh"))
    assert "Public Security Bureau; Women's Federation" in wording.explain("en", detail, agency_in("en"))


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_no_reason_shows_a_word_of_the_other_language_or_a_raw_id(name: messages.MessageName) -> None:
    detail = messages.text(name, **SAMPLES[name])
    english = wording.explain("en", detail, agency_in("en"))
    chinese = wording.explain("zh", detail, agency_in("zh"))
    assert not CHINESE.search(english), english
    assert CHINESE.search(chinese), chinese
    assert not re.search(r"[a-z]{3,}", chinese), chinese  # no English words, codes or ids
    assert "_" not in english, english


def test_a_detail_the_table_does_not_know_shows_the_half_in_the_pages_language() -> None:
    detail = "旧版本的理由 / an older reason"
    assert wording.explain("zh", detail, agency_in("zh")) == "旧版本的理由"
    assert wording.explain("en", detail, agency_in("en")) == "an older reason"
