"""The router's decision as a pure function: bytes, registry, clock and replay window in; the inboxes
to deliver to, or the reason to dead-letter, out. The router never holds a private key: it decides
from the signed clear header alone."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from services.kernel import envelope
from services.kernel.envelope import ReplayWindow
from services.kernel.errors import MalformedError
from services.kernel.registry import Registry


@dataclass(frozen=True, slots=True)
class Route:
    """Deliver this event to these participants' inboxes (sorted, each once)."""

    event_id: str
    event_type: str
    sender: str
    recipients: tuple[str, ...]
    event_time: datetime


def decide(
    value: bytes, key: bytes | None, *, registry: Registry, now: datetime, replay: ReplayWindow
) -> Route:
    """Verify the envelope and name its inboxes; raises an ``UntrustedInputError`` to dead-letter it.

    The Kafka key is not signed, so it must equal the signed subject: otherwise a replayed copy with
    another key would land on another partition and escape the replay window kept per partition.
    """
    verified = envelope.verify(value, registry=registry, now=now)
    header = verified.header
    if key is None or key != header.subject.encode():
        raise MalformedError("the record's Kafka key differs from the envelope's signed subject")
    replay.check(header, now, value)
    everyone = set().union(*verified.recipients().values())
    return Route(
        event_id=header.id,
        event_type=header.type,
        sender=header.sender,
        recipients=tuple(sorted(everyone)),
        event_time=header.time,
    )
