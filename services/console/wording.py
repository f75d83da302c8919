"""Values in a coordinator's words, as a pure core: spans of time in days, hours and minutes, and the
hub's alert reasons explained from the console's table of the page's language.

A reason's ``detail`` on the wire is the hub's bilingual text (:mod:`services.hub.messages`); the
console reads its values back with :func:`services.hub.messages.parse` and fills the text of the same
name in :mod:`services.console.texts_zh` or :mod:`services.console.texts_en`: a span of days in human
units, agency ids as the registry's names, category codes as words. A detail that does not parse (an
older hub) shows the half in the page's language.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from types import ModuleType
from typing import Final

from services.console import i18n, texts_en, texts_zh
from services.hub import messages

__all__ = ["duration", "explain"]

_TABLES: Final[dict[str, ModuleType]] = {"zh": texts_zh, "en": texts_en}
_DAYS: Final = frozenset({"days", "window"})


def _table(lang: str) -> ModuleType:
    return _TABLES.get(lang, texts_zh)


def _unit(table: ModuleType, unit: str, n: int) -> str:
    one, more = table.UNITS[unit]
    return str(one if n == 1 else more).format(n=n)


def duration(lang: str, span: timedelta) -> str:
    """``span`` (its absolute value) in at most two units: ``2 天 3 小时``, ``45 minutes``."""
    table = _table(lang)
    minutes = int(abs(span).total_seconds() // 60)
    if minutes < 1:
        return str(table.UNDER_A_MINUTE)
    days, rest = divmod(minutes, 1440)
    hours, minutes = divmod(rest, 60)
    if days:
        parts = [_unit(table, "day", days)] + ([_unit(table, "hour", hours)] if hours and days < 7 else [])
    elif hours:
        parts = [_unit(table, "hour", hours)] + (
            [_unit(table, "minute", minutes)] if minutes and hours < 10 else []
        )
    else:
        parts = [_unit(table, "minute", minutes)]
    return str(table.UNIT_JOIN).join(parts)


def explain(lang: str, detail: str, agency: Callable[[str], str]) -> str:
    """The reason ``detail`` in ``lang``, with ``agency(id)`` naming every participant id it holds."""
    table = _table(lang)
    parsed = messages.parse(detail)
    if parsed is None:
        chinese, slash, english = detail.rpartition("/ ")
        if not slash:
            return detail
        return english.strip() if lang == "en" else chinese.strip()
    name, values = parsed
    shown: dict[str, str] = {}
    for field, value in values.items():
        if field in _DAYS:
            shown[field] = _days(lang, value)
        elif field == "sender":
            shown[field] = agency(value)
        elif field == "agencies":
            shown[field] = str(table.LIST_JOIN).join(agency(a.strip()) for a in value.split(",") if a.strip())
        elif field == "category":
            shown[field] = i18n.label(lang, "category", value)
        else:
            shown[field] = value
    return str(table.REASONS[name]).format(**shown)


def _days(lang: str, value: str) -> str:
    try:
        days = float(value)
    except ValueError:
        return value
    return duration(lang, timedelta(days=days))
