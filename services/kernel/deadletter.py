"""The headers of a dead letter, the one shape every writer of ``lianfang.deadletter.v1`` uses: why
(a reason code and a line for people) and where from (source topic, partition and offset), and when.
Never content: the detail is the error's own line, which names fields and checks, never values."""

from __future__ import annotations

from datetime import datetime

from services.kernel.errors import ReasonCode

__all__ = ["MAX_DETAIL_BYTES", "deadletter_headers"]

MAX_DETAIL_BYTES = 1000


def deadletter_headers(
    reason: ReasonCode, detail: str, *, topic: str, partition: int, offset: int, now: datetime
) -> list[tuple[str, bytes]]:
    """Why and where from: the reason code, the source coordinates and the time. No content."""
    return [
        ("lianfang_reason", reason.encode()),
        ("lianfang_detail", detail.encode("utf-8")[:MAX_DETAIL_BYTES]),
        ("lianfang_source_topic", topic.encode()),
        ("lianfang_source_partition", str(partition).encode()),
        ("lianfang_source_offset", str(offset).encode()),
        ("lianfang_deadlettered_at", now.isoformat().encode()),
    ]
