"""The console's Chinese table of the hub's alert reasons, and its units of time.

One entry per text of :mod:`services.hub.messages`, with the same fields; the console fills them with
values already in Chinese (durations in 天、小时、分钟, agency and category names), so nothing of the
English half of the hub's detail reaches a Chinese page. :mod:`services.console.texts_en` is its twin.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from services.hub.messages import MessageName

REASONS: Final[Mapping[MessageName, str]] = MappingProxyType(
    {
        "high_risk.score": "风险评估得分 {score}/24，达到高风险阈值 {threshold} 分",
        "high_risk.indicators": "一条线索含 {count} 项风险因素，达到阈值 {threshold} 项",
        "escalation": "{days}内收到 {count} 条线索（阈值 {threshold} 条）",
        "professional_judgement": "{sender}依专业判断请求召开联席会商",
        "repeat": "会商结束后 {days}再次收到线索（观察期 {window}）",
        "convergence": "{days}内有 {count} 个机构报告同一受害人：{agencies}",
        "minor_sexual_abuse": "受害人为未成年人，线索类别为{category}，须立即处理",
        "order_breach": "人身安全保护令被违反，须立即处理",
        "serial_suspect": "同一嫌疑人涉及 {count} 名受害人（阈值 {threshold} 名）",
    }
)
"""Why the hub raised an alert, by the name of the hub's text."""

UNITS: Final[Mapping[str, tuple[str, str]]] = MappingProxyType(
    {"day": ("{n} 天", "{n} 天"), "hour": ("{n} 小时", "{n} 小时"), "minute": ("{n} 分钟", "{n} 分钟")}
)
"""A number of days, hours, minutes: (one, more than one)."""

UNIT_JOIN: Final = " "
UNDER_A_MINUTE: Final = "不到 1 分钟"
LIST_JOIN: Final = "、"
