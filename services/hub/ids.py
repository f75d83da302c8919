"""Ids and times of the hub: deterministic ids that survive restarts and re-processing, and the one way
to read and write an event time."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Final

from services.hub.errors import ObservationError

__all__ = [
    "HUB_NAMESPACE",
    "alert_event_id",
    "alert_id_for",
    "as_time",
    "aware",
    "deterministic_id",
    "iso",
]

HUB_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "urn:lianfang:hub")
"""The UUIDv5 namespace of every id the hub makes; fixed, so ids survive restarts and re-processing."""


def deterministic_id(*parts: str) -> str:
    """A canonical lower-case UUID (v5 in :data:`HUB_NAMESPACE`) of the parts; equal parts, equal id."""
    return str(uuid.uuid5(HUB_NAMESPACE, "\x1f".join(parts)))


def alert_id_for(subject: str, episode: int) -> str:
    """The id of a victim's ``episode``-th alert."""
    return deterministic_id("joint_meeting.alert", subject, str(episode))


def alert_event_id(alert_id: str, version: int) -> str:
    """The event id of version ``version`` of an alert."""
    return deterministic_id("joint_meeting.alert/event", alert_id, str(version))


def iso(t: datetime) -> str:
    """An aware time as an ISO 8601 string in UTC with ``Z``."""
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def aware(t: datetime, what: str) -> datetime:
    """``t`` in UTC; :class:`ObservationError` (naming ``what``) when it is naive."""
    if t.tzinfo is None or t.utcoffset() is None:
        raise ObservationError(f"{what} must be timezone-aware (event times are UTC instants)")
    return t.astimezone(UTC)


def as_time(value: object) -> datetime | None:
    """A triage time (an ISO string from JSON, or a datetime), or ``None`` when it is not one."""
    if isinstance(value, datetime):
        t = value
    elif isinstance(value, str):
        try:
            t = datetime.fromisoformat(value)
        except ValueError:
            return None
    else:
        return None
    if t.tzinfo is None or t.utcoffset() is None:
        return None
    try:
        return t.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+23:59 is a valid instant with no UTC datetime
        return None
