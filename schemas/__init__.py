"""Lianfang's wire contracts: the v1 event catalogue as strict, frozen pydantic models.

Language-neutral contracts shared by every service and agency system; nothing here runs a service or does
I/O (except :mod:`schemas.export`, which writes the JSON Schema files in ``schemas/json/``).
"""

from __future__ import annotations

from schemas.common import (
    Category,
    Channel,
    EventId,
    ParticipantId,
    Pseudonym,
    Town,
    Urgency,
    WireModel,
)
from schemas.events import (
    EVENT_MODELS,
    UPCASTERS,
    EventModel,
    JointMeetingAlert,
    JointMeetingConcluded,
    JointMeetingScheduled,
    LeadAcknowledged,
    LeadActionTaken,
    LeadReported,
    LeadResolved,
    ProtectionOrderBreached,
    ProtectionOrderDecided,
    ProtectionOrderRequested,
    RiskAssessed,
    SupervisionBreach,
    SupervisionReport,
    event_model,
    join_sections,
    parse_event,
    split_sections,
    upcast,
)

__all__ = [
    "EVENT_MODELS",
    "UPCASTERS",
    "Category",
    "Channel",
    "EventId",
    "EventModel",
    "JointMeetingAlert",
    "JointMeetingConcluded",
    "JointMeetingScheduled",
    "LeadAcknowledged",
    "LeadActionTaken",
    "LeadReported",
    "LeadResolved",
    "ParticipantId",
    "ProtectionOrderBreached",
    "ProtectionOrderDecided",
    "ProtectionOrderRequested",
    "Pseudonym",
    "RiskAssessed",
    "SupervisionBreach",
    "SupervisionReport",
    "Town",
    "Urgency",
    "WireModel",
    "event_model",
    "join_sections",
    "parse_event",
    "split_sections",
    "upcast",
]
