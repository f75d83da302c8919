"""Reading one cell: text, numbers, dates, ID numbers, phones, towns and mapped words. Pure functions.

Each reader returns the value the event field takes, or raises :class:`CellError` whose reason says
what is wrong without repeating the cell (it may be personal data): "has a wrong check digit", not
the number.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from datetime import date, datetime, timedelta, timezone
from typing import Final

from services.importers.spec import MapValue, fold
from services.kernel.errors import UsageError
from services.kernel.pseudonym import canonical_id_number, canonical_phone
from services.simulator import district

CHINA: Final = timezone(timedelta(hours=8), "CST")
"""Exports give local times without a zone: Beijing time, UTC+8 (no daylight saving since 1991)."""

FUTURE_SLACK: Final = timedelta(days=1)
_AGE: Final = re.compile(r"([0-9]{1,3})(?:岁|周岁)?")


class CellError(UsageError):
    """A cell that cannot be read; ``reason`` completes the sentence "<column> ..."."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def text(raw: str) -> str | None:
    value = raw.strip()
    return value or None


def integer(raw: str) -> int:
    match = _AGE.fullmatch(fold(raw))
    if match is None:
        raise CellError("is not a whole number")
    return int(match.group(1))


def moment(raw: str, formats: Sequence[str], *, now: datetime | None) -> datetime:
    """A time in one of ``formats`` (or ISO 8601); a time without a zone is Beijing time.

    With ``now``, a time more than a day after it is refused (a typing error, as nothing reported
    has happened yet); ``now=None`` allows times ahead, such as an order's expiry.
    """
    value = " ".join(unicodedata.normalize("NFKC", raw).split())
    parsed: datetime | None = None
    for pattern in formats:
        try:
            parsed = datetime.strptime(value, pattern)  # a naive time: the zone is added below
        except ValueError:
            continue
        break
    if parsed is None:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise CellError(
                "is not a date or time in a known format (such as 2024-03-05, 2024/03/05 14:20 "
                "or 2024年3月5日)"
            ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=CHINA)
    if parsed.year < 1900:
        raise CellError("is a date before 1900")
    if now is not None and parsed > now + FUTURE_SLACK:
        raise CellError("is a date in the future")
    return parsed


def day(raw: str, formats: Sequence[str], *, now: datetime) -> date:
    return moment(raw, formats, now=now).date()


def id_number(raw: str) -> str:
    """The 18-character resident ID number, upper-cased (a 15-digit first-generation number converted),
    when the kernel's checks pass or only the check digit is wrong; else the cell as given. A number
    typed wrong never refuses a row: the SDK flags it and links the person by the other identifiers."""
    try:
        return canonical_id_number(raw).removeprefix("cnid:")
    except UsageError:
        return raw.strip()


def phone(raw: str) -> str:
    """The digits of a mainland mobile or a landline with its area code; else the cell as given (the
    SDK flags it, as :func:`id_number` says)."""
    try:
        return canonical_phone(raw).removeprefix("phone:")
    except UsageError:
        return raw.strip()


def _town_names() -> dict[str, str]:
    names: dict[str, str] = {}
    for town_id, zh in district.TOWNS:
        names[fold(town_id)] = town_id
        names[fold(zh)] = town_id
        short = zh.removesuffix("街道").removesuffix("镇")
        if len(short) >= 2:  # 杨镇 and 张镇 are not shortened to one character
            names[fold(short)] = town_id
    return names


TOWN_NAMES: Final = _town_names()
_TOWN_PREFIXES: Final = ("北京市", "顺义区")


def town(raw: str) -> str:
    """A town or street of the district by its Chinese name (仁和镇, 仁和), or its id (renhe)."""
    value = fold(raw)
    for prefix in _TOWN_PREFIXES:
        value = value.removeprefix(prefix)
    found = TOWN_NAMES.get(value)
    if found is None:
        raise CellError("is not a town or street of the district")
    return found


def mapped(raw: str, values: Mapping[str, MapValue], map_name: str) -> MapValue:
    """The map's value for a cell ("" means: no value)."""
    found = values.get(fold(raw))
    if found is None:
        known = [k for k in values if values[k] != ""][:10]
        raise CellError(
            f"has a value that is not in the {map_name!r} map (accepted values include: {', '.join(known)})"
        )
    return found


def items(raw: str, separators: str) -> list[str]:
    """The items of a list cell, split on any of ``separators``."""
    parts = re.split("[" + re.escape(separators) + "]", raw)
    return [p.strip() for p in parts if p.strip()]


def birth_date_of(id_number_value: str) -> date | None:
    """The birth date in a checked resident ID number (characters 7-14)."""
    try:
        return date(int(id_number_value[6:10]), int(id_number_value[10:12]), int(id_number_value[12:14]))
    except ValueError:
        return None


def age_at(birth: date, at: date) -> int:
    return at.year - birth.year - ((at.month, at.day) < (birth.month, birth.day))
