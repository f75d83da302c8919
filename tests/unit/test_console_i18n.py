"""The console speaks Chinese by default and English on request: every message has both, with the same
placeholders, every word the pages need exists, and values are escaped wherever templates put them."""

from __future__ import annotations

import re
import string
from typing import get_args

import pytest

from schemas.common import Category, Urgency
from schemas.events import AlertReasonCode, AlertStatus, DeadlineKind
from services.console import i18n
from services.console.markup import TEMPLATES, Markup, escape, fmt, render
from services.simulator import district

pytestmark = pytest.mark.unit


def fields(message: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(message) if name}


@pytest.mark.parametrize("key", sorted(i18n.MESSAGES))
def test_every_message_has_both_languages_with_the_same_placeholders(key: str) -> None:
    zh, en = i18n.MESSAGES[key]
    assert zh.strip()
    assert en.strip()
    assert fields(zh) == fields(en)


def test_chinese_is_the_default_and_english_the_switch() -> None:
    assert i18n.lang_of(None) == "zh"
    assert i18n.lang_of("fr") == "zh"
    assert i18n.lang_of("en") == "en"
    assert i18n.text("zh", "queue.title") == "预警队列"
    assert i18n.text("en", "queue.title") == "Alert queue"
    assert i18n.text("xx", "queue.title") == "预警队列"
    assert i18n.text("en", "queue.count", n=3) == "3 shown"
    assert i18n.other("zh") == "en"
    assert i18n.other("en") == "zh"


def test_an_unknown_message_is_an_error_that_names_it() -> None:
    with pytest.raises(KeyError, match=r"no\.such\.key"):
        i18n.text("zh", "no.such.key")


@pytest.mark.parametrize(
    ("prefix", "codes"),
    [
        ("reason", get_args(AlertReasonCode)),
        ("status", get_args(AlertStatus)),
        ("urgency", get_args(Urgency)),
        ("category", get_args(Category)),
        ("deadline", get_args(DeadlineKind)),
    ],
)
def test_every_code_of_the_catalogue_has_a_word(prefix: str, codes: tuple[str, ...]) -> None:
    for code in codes:
        assert f"{prefix}.{code}" in i18n.MESSAGES
        assert i18n.label("en", prefix, code) != code


def test_every_town_has_a_chinese_and_an_english_name() -> None:
    for town, zh in district.TOWNS:
        assert i18n.town("zh", town) == zh
        assert i18n.town("en", town) == town.capitalize()
    assert i18n.town("en", "elsewhere") == "elsewhere"
    assert i18n.town("zh", None) == "—"


def test_templates_use_only_messages_that_exist() -> None:
    used = {
        key
        for path in TEMPLATES.glob("*.html")
        for key in re.findall(r"\{\{\s*t:([A-Za-z0-9_.]+)\s*\}\}", path.read_text(encoding="utf-8"))
    }
    assert used
    assert used <= set(i18n.MESSAGES)


def test_values_are_escaped_and_markup_is_kept() -> None:
    hostile = '<script>alert("x")</script>'
    assert escape(hostile) == "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"
    assert escape(Markup("<b>ok</b>")) == "<b>ok</b>"
    assert fmt("<p>{v}</p>", v=hostile) == "<p>&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;</p>"
    assert Markup("<p>") + hostile == "<p>&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"
    assert isinstance(Markup("<p>") + Markup("</p>"), Markup)
    page = render("error.html", "en", {"message": hostile})
    assert "<script>" not in page
    assert "Request refused" in page


def test_a_template_value_that_is_missing_is_an_error() -> None:
    with pytest.raises(KeyError, match="message"):
        render("error.html", "zh", {})
