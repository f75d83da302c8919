"""The headers of a dead letter, the one shape every writer of ``lianfang.deadletter.v1`` uses: why
(a reason code and a line for people) and where from (source topic, partition and offset), and when.
An inbox reader's problem record (``services.bus.deadletter``) adds the event id and sender of the
verified header, if it verified, and the reader. Never content: the detail is the error's own line,
which names fields and checks, never values."""

from __future__ import annotations

import hashlib
from datetime import datetime

from services.kernel.errors import ReasonCode

__all__ = ["MAX_DETAIL_BYTES", "deadletter_headers"]

MAX_DETAIL_BYTES = 1000


def deadletter_headers(
    reason: ReasonCode,
    detail: str,
    *,
    topic: str,
    partition: int,
    offset: int,
    now: datetime,
    event_id: str | None = None,
    sender: str | None = None,
    reader: str | None = None,
    left_out: bytes | None = None,
    left_out_key: bytes | None = None,
) -> list[tuple[str, bytes]]:
    """Why and where from: the reason code, the source coordinates and the time; for a reader's problem
    record also the verified event id and sender (when known) and the reader
    (``<participant>/<reader>``); for a refused record whose bytes, or whose Kafka key, the letter does
    not carry (``left_out``, ``left_out_key``), their size and SHA-256, to tell them at the source
    offset. No content."""
    headers = [
        ("lianfang_reason", reason.encode()),
        ("lianfang_detail", detail.encode("utf-8")[:MAX_DETAIL_BYTES]),
        ("lianfang_source_topic", topic.encode()),
        ("lianfang_source_partition", str(partition).encode()),
        ("lianfang_source_offset", str(offset).encode()),
        ("lianfang_deadlettered_at", now.isoformat().encode()),
    ]
    for name, value in (("event_id", event_id), ("sender", sender), ("reader", reader)):
        if value is not None:
            headers.append((f"lianfang_{name}", value.encode()))
    for part, data in (("value", left_out), ("key", left_out_key)):
        if data is not None:
            headers.append((f"lianfang_{part}_bytes", str(len(data)).encode()))
            headers.append((f"lianfang_{part}_sha256", hashlib.sha256(data).hexdigest().encode()))
    return headers
