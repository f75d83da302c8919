"""What the hub knows about a victim or a suspect: the observation of one verified event, the facts kept
from such events, and the per-victim and per-suspect states the hub's tables hold (as JSON).

Pure data: nothing here reads a clock, Kafka or a file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from schemas.common import Urgency
from schemas.envelope import EnvelopeHeader
from schemas.events import AlertReasonCode, AlertStatus
from services.hub.errors import StateDecodeError
from services.hub.ids import as_time, aware

__all__ = [
    "ActionItemFact",
    "AlertState",
    "LeadFact",
    "LinkState",
    "MeetingFact",
    "Observation",
    "OrderFact",
    "ReasonState",
    "ResponseFact",
    "ResponseKind",
    "RiskFact",
    "SuspectState",
    "SuspectVictim",
    "VictimState",
    "as_str",
    "as_strs",
]


def as_str(value: object) -> str | None:
    """A triage string, or ``None`` when it is missing, empty or not a string."""
    return value if isinstance(value, str) and value else None


def as_strs(value: object) -> list[str]:
    """The non-empty strings of a triage list; ``[]`` when it is not a list."""
    if not isinstance(value, list | tuple):
        return []
    return [item for item in value if isinstance(item, str) and item]


@dataclass(frozen=True, kw_only=True)
class Observation:
    """What the hub learns from one verified event addressed to it: the clear header and the triage.

    ``time`` is when what the event reports happened (normalized to UTC): the triage's ``occurred_at``
    where the event carries one, else the signed header's ``time``; it drives every window, so an
    import of old records lands where its incidents happened. ``signed_at`` is the signed ``time``
    (when the event was reported): supervision deadlines start there. ``recipients`` are all the
    participants the event was sealed to: the agencies that must act.
    """

    event_id: str
    event_type: str
    sender: str
    time: datetime
    subject: str
    urgency: Urgency
    category: str | None = None
    minor: bool | None = None
    town: str | None = None
    recipients: frozenset[str] = frozenset()
    refs: tuple[str, ...] = ()
    triage: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    signed_at: datetime | None = None  # None: the same as ``time``
    links: tuple[str, ...] = ()  # the header's other pseudonyms of the subject (a lead's)
    origin: str | None = None  # the subject the event named, when it joined a linked subject's state

    def __post_init__(self) -> None:
        object.__setattr__(self, "time", aware(self.time, "Observation.time"))
        signed = self.time if self.signed_at is None else aware(self.signed_at, "Observation.signed_at")
        object.__setattr__(self, "signed_at", signed)
        object.__setattr__(self, "recipients", frozenset(self.recipients))
        object.__setattr__(self, "refs", tuple(self.refs))
        object.__setattr__(self, "links", tuple(self.links))
        object.__setattr__(self, "triage", MappingProxyType(dict(self.triage)))

    @classmethod
    def from_header(
        cls, header: EnvelopeHeader, recipients: Iterable[str], triage: Mapping[str, Any] | None = None
    ) -> Observation:
        """The observation of a verified envelope: its header, everyone it was sealed to, its triage."""
        triage = triage or {}
        return cls(
            event_id=header.id,
            event_type=header.type,
            sender=header.sender,
            time=as_time(triage.get("occurred_at")) or header.time,
            signed_at=header.time,
            subject=header.subject,
            urgency=header.urgency,
            category=header.category,
            minor=header.minor,
            town=header.town,
            recipients=frozenset(recipients),
            refs=tuple(header.refs),
            triage=triage,
            links=tuple(header.links),
        )

    def mentions(self, *triage_fields: str) -> list[str]:
        """The event ids this event points at: the named triage fields, then the header's ``refs``."""
        named = [as_str(self.triage.get(name)) for name in triage_fields]
        return list(dict.fromkeys([*(ref for ref in named if ref), *self.refs]))


# pydantic-core remembers the strings it parses from JSON in one cache for the whole process (16,384 of
# up to 64 bytes): a stored state's values are pseudonyms, event ids and times, nearly all seen once, so
# caching them only filled the hub's memory by about 1.4 MiB over its first thousands of victims.
# Only the keys, a few dozen field names, are cached.


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", cache_strings="keys")


class _Fact(BaseModel):
    """A fact once recorded does not change, so states can share it (copy-on-write)."""

    model_config = ConfigDict(extra="forbid", frozen=True, cache_strings="keys")


class LeadFact(_Fact):
    """A ``lead.reported`` about the victim: who reported it, who must act, what triage said."""

    id: str
    t: AwareDatetime
    by: str
    urgency: Urgency
    category: str | None = None
    minor: bool | None = None
    town: str | None = None
    pj: bool = False  # requests_joint_meeting
    acting: list[str] = Field(default_factory=list)
    score: int | None = None  # the highest risk.assessed score for this lead, when known
    reported: AwareDatetime | None = None  # the signed time, when it differs from ``t`` (occurred_at)
    via: str | None = None  # the linked subject it is about (services.hub.links); None: this one

    @property
    def reported_at(self) -> datetime:
        """When the lead was reported (signed): its supervision deadlines start here, not at ``t``,
        which is when the incident happened and may lie years back for an imported record."""
        return self.t if self.reported is None else self.reported


class RiskFact(_Fact):
    """A ``risk.assessed`` about the victim."""

    id: str
    t: AwareDatetime
    by: str
    lead: str | None = None
    score: int
    via: str | None = None  # as LeadFact.via


class OrderFact(_Fact):
    """A ``protection_order.requested`` for the victim: the court must decide it in time."""

    id: str
    t: AwareDatetime
    by: str
    urgency: Urgency
    urgent: bool
    lead: str | None = None


ResponseKind = Literal["acknowledged", "action_taken", "resolved", "decided"]


class ResponseFact(_Fact):
    """An agency's response: lead.acknowledged / action_taken / resolved, protection_order.decided."""

    id: str
    t: AwareDatetime
    by: str
    kind: ResponseKind
    refs: list[str] = Field(default_factory=list)
    satisfaction: str | None = None


class ActionItemFact(_Fact):
    """One action item of a concluded meeting: its owner agency and deadline."""

    owner: str
    due_at: AwareDatetime


class MeetingFact(_Fact):
    """A ``joint_meeting.concluded`` on the victim: starts the repeat window and the action items."""

    id: str
    t: AwareDatetime
    alert: str | None = None
    urgency: Urgency = "urgent"
    items: list[ActionItemFact] = Field(default_factory=list)


class ReasonState(_Fact):
    """One reason of the open alert and what made it fire."""

    code: AlertReasonCode
    detail: str
    t: AwareDatetime
    events: list[str] = Field(default_factory=list)


class AlertState(_Record):
    """The victim's latest alert, as last emitted, and its status; ``concluded`` means none is open."""

    alert_id: str
    episode: int
    version: int = 0
    status: AlertStatus = "open"
    raised_at: AwareDatetime
    updated_at: AwareDatetime
    reasons: list[ReasonState] = Field(default_factory=list)
    agencies: list[str] = Field(default_factory=list)
    event_ids: list[str] = Field(default_factory=list)  # the ids of its emitted versions
    meeting_at: AwareDatetime | None = None
    participants: list[str] = Field(default_factory=list)


class VictimState(_Record):
    """Everything the hub keeps about one victim, bounded by :attr:`HubConfig.retention`.

    Facts (leads, risk assessments, protection-order requests, responses, concluded meetings) are
    kept sorted by event time; supervision watches are derived from them (see
    :func:`services.hub.supervision.watches`), and ``breached`` names those already reported.
    """

    v: Literal[1] = 1
    subject: str
    latest: AwareDatetime | None = None  # the latest event time applied
    floor: AwareDatetime | None = None  # events at or before this time are ignored (pruned horizon)
    seen: dict[str, AwareDatetime] = Field(default_factory=dict)  # applied event ids and their times
    leads: list[LeadFact] = Field(default_factory=list)
    risks: list[RiskFact] = Field(default_factory=list)
    orders: list[OrderFact] = Field(default_factory=list)
    responses: list[ResponseFact] = Field(default_factory=list)
    meetings: list[MeetingFact] = Field(default_factory=list)
    agencies: dict[str, AwareDatetime] = Field(default_factory=dict)  # agency -> last time involved
    serial: dict[str, AwareDatetime] = Field(default_factory=dict)  # suspects already flagged serial
    episodes: int = 0
    alert: AlertState | None = None
    breached: list[str] = Field(default_factory=list)  # watch keys already reported

    @classmethod
    def new(cls, subject: str) -> VictimState:
        """An empty state for a victim pseudonym."""
        return cls(subject=subject)

    def to_json(self) -> bytes:
        """Compact JSON; equal states give equal bytes."""
        return self.model_dump_json().encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> VictimState:
        """Read :meth:`to_json`'s bytes; :class:`StateDecodeError` when they are not a state."""
        try:
            return cls.model_validate_json(raw)
        except ValidationError as e:
            raise StateDecodeError(f"stored victim state is unreadable: {e.error_count()} errors") from e

    def fork(self) -> VictimState:
        """A copy that can be changed without changing this state: new containers, shared facts."""
        return self.model_copy(
            update={
                "seen": dict(self.seen),
                "leads": list(self.leads),
                "risks": list(self.risks),
                "orders": list(self.orders),
                "responses": list(self.responses),
                "meetings": list(self.meetings),
                "agencies": dict(self.agencies),
                "serial": dict(self.serial),
                "alert": self.alert.model_copy(deep=True) if self.alert is not None else None,
                "breached": list(self.breached),
            }
        )

    def has_open_alert(self) -> bool:
        """Whether an alert is open (raised and not yet concluded)."""
        return self.alert is not None and self.alert.status != "concluded"

    def last_lead_facts(self) -> dict[str, Any]:
        """The routing facts of the latest lead (``category``, ``minor``, ``town``), or ``{}``."""
        if not self.leads:
            return {}
        last = self.leads[-1]
        return {"category": last.category, "minor": last.minor, "town": last.town}


class SuspectVictim(_Fact):
    """One victim a suspect was named against: first event time and the lead ids."""

    first: AwareDatetime
    leads: list[str] = Field(default_factory=list)


class SuspectState(_Record):
    """Everything the hub keeps about one suspect pseudonym: the victims it was named against."""

    v: Literal[1] = 1
    suspect: str
    victims: dict[str, SuspectVictim] = Field(default_factory=dict)

    def to_json(self) -> bytes:
        """Compact JSON; equal states give equal bytes."""
        return self.model_dump_json().encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> SuspectState:
        """Read :meth:`to_json`'s bytes; :class:`StateDecodeError` when they are not a state."""
        try:
            return cls.model_validate_json(raw)
        except ValidationError as e:
            raise StateDecodeError(f"stored suspect state is unreadable: {e.error_count()} errors") from e


class LinkState(_Record):
    """What the hub keeps about one pseudonym as a link (:mod:`services.hub.links`): the subject whose
    state takes its events (``into``, a pseudonym that sorts before it; ``None``: its own), how often
    that changed, and the pseudonyms whose events it takes (``linked``, at most ``max_linked``)."""

    v: Literal[1] = 1
    pseudonym: str
    into: str | None = None
    moves: int = 0
    linked: list[str] = Field(default_factory=list)

    def to_json(self) -> bytes:
        """Compact JSON; equal states give equal bytes."""
        return self.model_dump_json().encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> LinkState:
        """Read :meth:`to_json`'s bytes; :class:`StateDecodeError` when they are not a state."""
        try:
            return cls.model_validate_json(raw)
        except ValidationError as e:
            raise StateDecodeError(f"stored link state is unreadable: {e.error_count()} errors") from e
