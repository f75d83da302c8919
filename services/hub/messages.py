"""Every text the joint-meeting rules put in an alert, Chinese then English, keyed by a stable name.

An alert reason's ``detail`` is one of these texts with its ``{fields}`` filled in; the rules look texts
up here by name and never write one inline, so translators and reviewers find them all in one table.
A name starts with the reason code it explains (``high_risk.score``: a ``high_risk`` reason raised by a
risk score). Texts hold no personal data: only counts, thresholds, categories and agency ids.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from functools import cache
from types import MappingProxyType
from typing import Final, Literal

__all__ = ["MESSAGES", "MessageName", "parse", "text"]

MessageName = Literal[
    "high_risk.score",
    "high_risk.indicators",
    "escalation",
    "professional_judgement",
    "repeat",
    "convergence",
    "minor_sexual_abuse",
    "order_breach",
    "serial_suspect",
]

MESSAGES: Final[Mapping[MessageName, str]] = MappingProxyType(
    {
        "high_risk.score": "风险评分 {score}/24 ≥ {threshold} / risk score {score} of 24 >= {threshold}",
        "high_risk.indicators": (
            "线索风险因素 {count} 项 ≥ {threshold} / {count} risk indicators on a lead >= {threshold}"
        ),
        "escalation": "{days} 天内 {count} 条线索 / {count} leads within {days} days (threshold {threshold})",
        "professional_judgement": (
            "报告机构请求联席会商（专业判断）/ {sender} asks for a joint meeting (professional judgement)"
        ),
        "repeat": (
            "会商结束后 {days} 天内再次报告 / a new lead {days} days after a joint meeting concluded "
            "(window {window} days)"
        ),
        "convergence": (
            "{days} 天内 {count} 个机构报告 / {count} agencies reported within {days} days: {agencies}"
        ),
        "minor_sexual_abuse": (
            "未成年受害人，线索类别 {category}（立即）/ a minor victim, category {category} (immediate)"
        ),
        "order_breach": (
            "人身安全保护令被违反（立即）/ a personal safety protection order was breached (immediate)"
        ),
        "serial_suspect": (
            "同一嫌疑人涉及 {count} 名受害人 / the same suspect is named against {count} victims "
            "(threshold {threshold})"
        ),
    }
)
"""The texts by name; ``{field}`` marks a value filled in by :func:`text`."""


def text(name: MessageName, **values: object) -> str:
    """The text ``name`` with its fields filled in from ``values`` (a missing field raises ``KeyError``)."""
    return MESSAGES[name].format(**values)


@cache
def _pattern(name: MessageName) -> re.Pattern[str]:
    """The text ``name`` as a regular expression: each field a named group, a repeated field the same."""
    parts: list[str] = []
    seen: set[str] = set()
    for literal, field, _spec, _conversion in string.Formatter().parse(MESSAGES[name]):
        parts.append(re.escape(literal))
        if field is None:
            continue
        parts.append(f"(?P={field})" if field in seen else f"(?P<{field}>.+?)")
        seen.add(field)
    return re.compile("".join(parts), re.DOTALL)


def parse(detail: str) -> tuple[MessageName, dict[str, str]] | None:
    """Which text ``detail`` is and the values filled into it (as text), or None for any other text.

    The inverse of :func:`text`, for readers that explain a reason in one language of their own (the
    console) from the hub's bilingual detail; a detail written by an older table parses to None.
    """
    for name in MESSAGES:
        found = _pattern(name).fullmatch(detail)
        if found is not None:
            return name, found.groupdict()
    return None
