"""The router's decision as a pure function: bytes, where they were read, registry, clock and replay
window in; the inboxes to deliver to, or the reason to dead-letter, out. The router never holds a
private key: it decides from the signed clear header alone.

Checks, in order: the envelope verifies (:func:`services.kernel.envelope.verify`), its signing key
judged at when the record reached the bus (``appended_at``, the broker's append time: a sender cannot
choose it, so a key revoked or retired at R gets nothing delivered that reached the bus after R, however
the event is dated); no section is wrapped for an encryption key revoked by now
(:func:`services.kernel.envelope.check_recipient_keys`); the record's Kafka key is the signed subject;
the record sits on the partition that key maps to; the signed ``time`` lies within ``max_skew`` of
``appended_at``; its id is new to the partition's replay window.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from services.kernel import envelope, topics
from services.kernel.envelope import ReplayWindow
from services.kernel.errors import MalformedError, MisplacedError
from services.kernel.registry import Registry


@dataclass(frozen=True, slots=True)
class Route:
    """Deliver this event to these participants' inboxes (sorted, each once), with these Kafka headers."""

    event_id: str
    event_type: str
    sender: str
    subject: str
    recipients: tuple[str, ...]
    event_time: datetime
    headers: tuple[tuple[str, bytes], ...]
    """CloudEvents headers derived from the verified header, and the time the event was accepted at
    (:data:`~services.kernel.envelope.ACCEPTED_AT_HEADER`); the producer's own headers are unsigned
    and never passed on."""


def decide(
    value: bytes,
    key: bytes | None,
    *,
    partition: int,
    partitions: int,
    registry: Registry,
    now: datetime,
    replay: ReplayWindow,
    appended_at: datetime | None = None,
    max_skew: timedelta = timedelta(minutes=5),
) -> Route:
    """Verify the record read from ``partition`` of a topic of ``partitions`` and name its inboxes;
    raises an ``UntrustedInputError`` to dead-letter it.

    The Kafka key and the partition are not signed, and the replay window is kept per partition: so
    the key must equal the signed subject and the partition must be the one Kafka's default
    partitioner gives that key, as every producer writes it. Otherwise a copy written under another
    key or to another partition would escape the window that saw the original.

    ``appended_at`` is when the record reached the bus: the broker's ``LogAppendTime``. The service
    passes ``None`` for a record without one (an events topic still on ``CreateTime``, which the
    producer sets): the key is then judged at ``now``, which no sender controls either, and the skew
    is not checked (a backlog read late would otherwise be refused whole).
    """
    accepted = now if appended_at is None else appended_at
    verified = envelope.verify(value, registry=registry, now=now, keys_at=accepted)
    envelope.check_recipient_keys(verified, registry, now)
    header = verified.header
    if key is None or key != header.subject.encode():
        raise MalformedError("the record's Kafka key differs from the envelope's signed subject")
    expected = topics.partition_for(key, partitions)
    if partition != expected:
        raise MisplacedError(
            f"the record is on partition {partition}, but its key maps to partition {expected} "
            f"of {partitions}: only a producer that chose the partition itself writes it there"
        )
    if appended_at is not None:
        envelope.check_time_skew(header, appended_at, max_skew)
    replay.check(header, now, value)
    everyone = set().union(*verified.recipients().values())
    return Route(
        event_id=header.id,
        event_type=header.type,
        sender=header.sender,
        subject=header.subject,
        recipients=tuple(sorted(everyone)),
        event_time=header.time,
        headers=(*envelope.kafka_headers(header), envelope.accepted_header(accepted)),
    )
