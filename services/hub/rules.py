"""The joint-meeting rules (联席会议会商规则) as a pure core: one verified event in, the victim's new state
and the alerts to publish out.

Nothing here reads a clock, Kafka or a file: the time of everything is the event time from the signed
header, so windows are computed over event times and events may arrive in any order. The faust app in
:mod:`services.hub.app` keeps a :class:`VictimState` per victim pseudonym (the Kafka key) and a
:class:`SuspectState` per suspect pseudonym (through a repartition), and publishes what comes out.

The rules are described in ``docs/rules.md``; the choices it leaves open are made here:

- **Windows are inclusive**: leads exactly ``escalation_window`` apart still count together; the repeat
  window runs from just after a concluded meeting's event time to that time plus ``repeat_window``.
- **One open alert per victim.** The first rule that fires raises it (version 1); a rule not yet among
  its reasons updates it (same ``alert_id``, version + 1); a rule already among them emits nothing. The
  alert is open until a ``joint_meeting.concluded`` names it; the next rule that fires opens a new
  episode with a new ``alert_id``. An event that fires a rule after the conclusion opens the next
  episode even when its event time is earlier (it arrived late, so the meeting did not see it).
- **Lifecycle**: ``lead.acknowledged`` from ``coordinators`` whose ``lead_id`` or ``refs`` name the
  alert (its ``alert_id`` or the id of any of its events) marks it ``acknowledged``;
  ``joint_meeting.scheduled`` marks it ``scheduled``; ``joint_meeting.concluded`` closes it (it stays in
  the state as ``concluded`` until the next episode replaces it). Status changes emit nothing (the
  coordinators' own events already tell everyone); a later update carries the current status. The
  hub's own ``joint_meeting.alert`` events are ignored.
- **Serial suspects** are counted without a time limit (``docs/rules.md`` names none); the evidence in a
  victim's alert is that victim's own leads, never another victim's.
- **high_risk** fires on a ``risk.assessed`` score at or above ``high_risk_score``. A lead's own risk
  indicators fire it only when ``high_risk_indicators`` is set (off by default: the indicators are not
  the 24-question checklist the threshold is defined on).
- **Idempotent**: an event id already applied changes nothing. Ids are kept as long as the facts: both
  are dropped once older than :attr:`HubConfig.retention` before the latest event time (or beyond
  ``max_events``), and events at or before that horizon (``floor``) are ignored, so a pruned id cannot
  be applied twice.
"""

from __future__ import annotations

import bisect
import json
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any, Final, Literal, get_args

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from schemas.common import Urgency
from schemas.envelope import EnvelopeHeader
from schemas.events import AlertReasonCode, AlertStatus, JointMeetingAlert

__all__ = [
    "HUB_NAMESPACE",
    "IMMEDIATE_REASONS",
    "ActionItemFact",
    "AlertEmission",
    "AlertState",
    "HubConfig",
    "HubError",
    "LeadFact",
    "MeetingFact",
    "Observation",
    "ObservationError",
    "OrderFact",
    "ReasonState",
    "ResponseFact",
    "RiskFact",
    "SerialTrigger",
    "StateDecodeError",
    "SuspectState",
    "SuspectVictim",
    "VictimState",
    "alert_event_id",
    "alert_id_for",
    "deterministic_id",
    "iso",
    "observe",
    "observe_serial",
    "observe_suspect",
    "suspects_of",
]

HUB_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "urn:lianfang:hub")
"""The UUIDv5 namespace of every id the hub makes; fixed, so ids survive restarts and re-processing."""

IMMEDIATE_REASONS: Final[frozenset[AlertReasonCode]] = frozenset({"minor_sexual_abuse", "order_breach"})
"""Reasons that make an alert ``immediate``; any other alert is ``urgent``."""

_REASON_ORDER: Final[tuple[AlertReasonCode, ...]] = get_args(AlertReasonCode)
_MAX_AGENCIES: Final = 100  # JointMeetingAlert.agencies_involved max_length
_MAX_RELATED: Final = 1_000  # JointMeetingAlert.related_events max_length
_MAX_DETAIL: Final = 500  # AlertReason.detail max_length
_MAX_LEADS_PER_SUSPECT_VICTIM: Final = 50


class HubError(Exception):
    """Base of the errors the hub's pure core raises on purpose."""


class ObservationError(HubError, ValueError):
    """The caller passed an impossible observation: a naive time, or another victim's state."""


class StateDecodeError(HubError, ValueError):
    """Stored state bytes are not a state this version can read."""


def _default_acknowledge() -> Mapping[Urgency, timedelta]:
    return MappingProxyType(
        {"immediate": timedelta(hours=1), "urgent": timedelta(hours=4), "routine": timedelta(hours=24)}
    )


@dataclass(frozen=True, kw_only=True)
class HubConfig:
    """Every threshold of the joint-meeting rules and supervision; defaults from ``docs/rules.md``.

    Rules: ``high_risk_score`` (of 24), ``escalation_leads`` within ``escalation_window``, ``repeat_window``
    after a concluded meeting, ``convergence_agencies`` within ``convergence_window``, ``serial_victims``.
    Supervision: ``acknowledge`` per urgency, ``first_action`` and ``resolution`` from the lead's event
    time, ``order_decision`` (``order_decision_urgent`` when urgent) from the request's event time;
    action items are due at their own ``due_at``. ``breach_grace`` waits that long past a deadline for
    responses still in flight. ``max_lateness`` is how late an event may arrive and still be correlated
    (the router refuses events older than 7 days).
    """

    high_risk_score: int = 14
    high_risk_indicators: int | None = None
    escalation_leads: int = 3
    escalation_window: timedelta = timedelta(days=365)
    repeat_window: timedelta = timedelta(days=365)
    convergence_agencies: int = 2
    convergence_window: timedelta = timedelta(days=30)
    serial_victims: int = 2
    minor_abuse_categories: frozenset[str] = frozenset({"sexual_assault", "child_abuse"})

    acknowledge: Mapping[Urgency, timedelta] = field(default_factory=_default_acknowledge)
    first_action: timedelta = timedelta(hours=24)
    resolution: timedelta = timedelta(days=15)
    order_decision: timedelta = timedelta(hours=72)
    order_decision_urgent: timedelta = timedelta(hours=24)
    breach_grace: timedelta = timedelta(0)

    hub: str = "hub"
    coordinators: str = "coordinators"
    court: str = "court"
    not_acting: frozenset[str] = frozenset({"hub", "coordinators"})
    max_lateness: timedelta = timedelta(days=7)
    max_events: int = 2_000
    max_suspect_victims: int = 100

    def __post_init__(self) -> None:
        counts = {
            "high_risk_score": self.high_risk_score,
            "escalation_leads": self.escalation_leads,
            "convergence_agencies": self.convergence_agencies,
            "serial_victims": self.serial_victims,
            "max_events": self.max_events,
            "max_suspect_victims": self.max_suspect_victims,
        }
        if self.high_risk_indicators is not None:
            counts["high_risk_indicators"] = self.high_risk_indicators
        for name, value in counts.items():
            if value < 1:
                raise ValueError(f"HubConfig.{name} must be at least 1, not {value}")
        missing = set(get_args(Urgency)) - set(self.acknowledge)
        if missing:
            raise ValueError(f"HubConfig.acknowledge needs a deadline for every urgency; missing {missing}")
        spans = {
            "escalation_window": self.escalation_window,
            "repeat_window": self.repeat_window,
            "convergence_window": self.convergence_window,
            "first_action": self.first_action,
            "resolution": self.resolution,
            "order_decision": self.order_decision,
            "order_decision_urgent": self.order_decision_urgent,
            **{f"acknowledge[{k}]": v for k, v in self.acknowledge.items()},
        }
        for name, span in spans.items():
            if span <= timedelta(0):
                raise ValueError(f"HubConfig.{name} must be positive")
        if self.breach_grace < timedelta(0) or self.max_lateness < timedelta(0):
            raise ValueError("HubConfig.breach_grace and max_lateness must not be negative")

    @property
    def retention(self) -> timedelta:
        """How long before the latest event time facts are kept: the longest window plus the lateness."""
        longest = max(
            self.escalation_window,
            self.repeat_window,
            self.convergence_window,
            self.first_action,
            self.resolution,
            self.order_decision,
            self.order_decision_urgent,
            *self.acknowledge.values(),
        )
        return longest + self.max_lateness


# --- ids and times --------------------------------------------------------------------------------


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


def _aware(t: datetime, what: str) -> datetime:
    if t.tzinfo is None or t.utcoffset() is None:
        raise ObservationError(f"{what} must be timezone-aware (event times are UTC instants)")
    return t.astimezone(UTC)


def _as_time(value: object) -> datetime | None:
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
    return t.astimezone(UTC)


def _as_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _as_strs(value: object) -> list[str]:
    if not isinstance(value, list | tuple):
        return []
    return [item for item in value if isinstance(item, str) and item]


# --- observations ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Observation:
    """What the hub learns from one verified event addressed to it: the clear header and the triage.

    ``time`` is the signed header's event time (normalized to UTC); it drives every window.
    ``recipients`` are all the participants the event was sealed to: the agencies that must act.
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

    def __post_init__(self) -> None:
        object.__setattr__(self, "time", _aware(self.time, "Observation.time"))
        object.__setattr__(self, "recipients", frozenset(self.recipients))
        object.__setattr__(self, "refs", tuple(self.refs))
        object.__setattr__(self, "triage", MappingProxyType(dict(self.triage)))

    @classmethod
    def from_header(
        cls, header: EnvelopeHeader, recipients: Iterable[str], triage: Mapping[str, Any] | None = None
    ) -> Observation:
        """The observation of a verified envelope: its header, everyone it was sealed to, its triage."""
        return cls(
            event_id=header.id,
            event_type=header.type,
            sender=header.sender,
            time=header.time,
            subject=header.subject,
            urgency=header.urgency,
            category=header.category,
            minor=header.minor,
            town=header.town,
            recipients=frozenset(recipients),
            refs=tuple(header.refs),
            triage=triage or {},
        )

    def mentions(self, *triage_fields: str) -> list[str]:
        """The event ids this event points at: the named triage fields, then the header's ``refs``."""
        named = [_as_str(self.triage.get(name)) for name in triage_fields]
        return list(dict.fromkeys([*(ref for ref in named if ref), *self.refs]))


def suspects_of(obs: Observation) -> tuple[str, ...]:
    """The suspect pseudonyms an event names against its victim: a lead's ``suspect_pseudonyms`` and a
    protection-order request's ``respondent_pseudonym``. Send each to :func:`observe_suspect`."""
    if obs.event_type == "lead.reported":
        return tuple(dict.fromkeys(_as_strs(obs.triage.get("suspect_pseudonyms"))))
    if obs.event_type == "protection_order.requested":
        respondent = _as_str(obs.triage.get("respondent_pseudonym"))
        return (respondent,) if respondent else ()
    return ()


# --- state ----------------------------------------------------------------------------------------


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Fact(BaseModel):
    """A fact once recorded does not change, so states can share it (copy-on-write)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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


class RiskFact(_Fact):
    """A ``risk.assessed`` about the victim."""

    id: str
    t: AwareDatetime
    by: str
    lead: str | None = None
    score: int


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


# --- emissions ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class AlertEmission:
    """A ``joint_meeting.alert`` to publish: a new alert (version 1) or an update of the open one.

    ``event_id`` and ``alert_id`` are deterministic, so re-processing publishes the same ids.
    ``urgency`` is for the envelope header; ``agencies_involved`` is its ``audience``.
    """

    event_id: str
    alert_id: str
    subject: str
    version: int
    reasons: list[dict[str, str]]
    agencies_involved: list[str]
    related_events: list[str]
    raised_at: datetime
    updated_at: datetime
    status: AlertStatus
    urgency: Urgency

    def payload(self) -> dict[str, Any]:
        """The event's fields as JSON values, for :class:`schemas.events.JointMeetingAlert`."""
        return {
            "schema_version": 1,
            "alert_id": self.alert_id,
            "victim_pseudonym": self.subject,
            "reasons": [dict(reason) for reason in self.reasons],
            "agencies_involved": list(self.agencies_involved),
            "related_events": list(self.related_events),
            "raised_at": iso(self.raised_at),
            "updated_at": iso(self.updated_at),
            "status": self.status,
        }

    def to_event(self) -> JointMeetingAlert:
        """The validated event model (pydantic ``ValidationError`` if the payload broke a rule)."""
        return JointMeetingAlert.model_validate_json(json.dumps(self.payload()))


@dataclass(frozen=True, kw_only=True)
class SerialTrigger:
    """A suspect reached ``serial_victims`` victims: apply ``serial_suspect`` to ``victim``.

    ``victims`` are all the suspect's victims (sorted pseudonyms); ``lead_ids`` are this victim's leads
    naming the suspect (only they go into the victim's alert); ``time`` is the latest first-seen time of
    the suspect's victims, the event time by which the suspect had that many victims.
    """

    victim: str
    suspect: str
    victims: tuple[str, ...]
    time: datetime
    lead_ids: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "time", _aware(self.time, "SerialTrigger.time"))
        object.__setattr__(self, "victims", tuple(self.victims))
        object.__setattr__(self, "lead_ids", tuple(self.lead_ids))

    def to_json(self) -> bytes:
        """Compact JSON for the repartition topic."""
        data = {
            "victim": self.victim,
            "suspect": self.suspect,
            "victims": list(self.victims),
            "time": iso(self.time),
            "lead_ids": list(self.lead_ids),
        }
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> SerialTrigger:
        """Read :meth:`to_json`'s bytes; :class:`StateDecodeError` when they are not a trigger."""
        try:
            data = json.loads(raw)
            time = _as_time(data["time"])
            if time is None:
                raise ValueError("time is not an aware ISO 8601 time")
            return cls(
                victim=str(data["victim"]),
                suspect=str(data["suspect"]),
                victims=tuple(str(v) for v in data["victims"]),
                time=time,
                lead_ids=tuple(str(i) for i in data["lead_ids"]),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise StateDecodeError(f"serial trigger is unreadable: {e}") from e


# --- the rules ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Firing:
    code: AlertReasonCode
    detail: str
    time: datetime
    events: tuple[str, ...]


def _days(span: timedelta) -> str:
    days = span / timedelta(days=1)
    return f"{days:g}"


def _insert(items: list[Any], item: Any) -> None:
    bisect.insort(items, item, key=lambda x: (x.t, x.id))


def _touch(state: VictimState, agencies: Iterable[str], t: datetime, cfg: HubConfig) -> None:
    for agency in agencies:
        if agency in cfg.not_acting:
            continue
        previous = state.agencies.get(agency)
        if previous is None or previous < t:
            state.agencies[agency] = t


_Reached = Callable[[Sequence[LeadFact], int, int], datetime | None]


def _window(
    leads: Sequence[LeadFact], member: LeadFact, span: timedelta, reached: _Reached
) -> tuple[list[LeadFact], datetime] | None:
    """The first window ``[start, start + span]`` holding ``member`` in which ``reached`` is met.

    ``reached(leads, i, j)`` returns the event time at which ``leads[i:j]`` met the threshold, or
    ``None``. Returns the window's leads and the trigger time (not earlier than the member's time).
    """
    times = [lead.t for lead in leads]
    position = next(i for i, lead in enumerate(leads) if lead is member)
    for i in range(bisect.bisect_left(times, member.t - span), position + 1):
        j = bisect.bisect_right(times, times[i] + span)
        at = reached(leads, i, j)
        if at is not None:
            return list(leads[i:j]), max(at, member.t)
    return None


def _nth_lead(n: int) -> _Reached:
    def reached(leads: Sequence[LeadFact], i: int, j: int) -> datetime | None:
        return leads[i + n - 1].t if j - i >= n else None

    return reached


def _nth_agency(n: int) -> _Reached:
    def reached(leads: Sequence[LeadFact], i: int, j: int) -> datetime | None:
        agencies: set[str] = set()
        for k in range(i, j):
            agencies.add(leads[k].by)
            if len(agencies) >= n:
                return leads[k].t
        return None

    return reached


def _repeat_firing(meeting: MeetingFact, leads: Sequence[LeadFact], cfg: HubConfig) -> _Firing | None:
    after = [lead for lead in leads if meeting.t < lead.t <= meeting.t + cfg.repeat_window]
    if not after:
        return None
    first = after[0]
    return _Firing(
        "repeat",
        f"会商结束后 {_days(first.t - meeting.t)} 天内再次报告 / a new lead "
        f"{_days(first.t - meeting.t)} days after a joint meeting concluded "
        f"(window {_days(cfg.repeat_window)} days)",
        first.t,
        (meeting.id, *(lead.id for lead in after)),
    )


def _on_lead(state: VictimState, obs: Observation, cfg: HubConfig) -> list[_Firing]:
    triage = obs.triage
    category = _as_str(triage.get("category")) or obs.category
    minor_value = triage.get("minor")
    minor = minor_value if isinstance(minor_value, bool) else obs.minor
    scores = [risk.score for risk in state.risks if risk.lead == obs.event_id]
    lead = LeadFact(
        id=obs.event_id,
        t=obs.time,
        by=obs.sender,
        urgency=obs.urgency,
        category=category,
        minor=minor,
        town=_as_str(triage.get("town")) or obs.town,
        pj=triage.get("requests_joint_meeting") is True,
        acting=sorted(obs.recipients - cfg.not_acting - {obs.sender}),
        score=max(scores) if scores else None,
    )
    _insert(state.leads, lead)
    _touch(state, [lead.by, *lead.acting], lead.t, cfg)

    firings: list[_Firing] = []
    if lead.pj:
        firings.append(
            _Firing(
                "professional_judgement",
                f"报告机构请求联席会商（专业判断）/ {lead.by} asks for a joint meeting "
                "(professional judgement)",
                lead.t,
                (lead.id,),
            )
        )
    if minor is True and category in cfg.minor_abuse_categories:
        firings.append(
            _Firing(
                "minor_sexual_abuse",
                f"未成年受害人，线索类别 {category}（立即）/ a minor victim, category {category} (immediate)",
                lead.t,
                (lead.id,),
            )
        )
    indicators = _as_strs(triage.get("risk_indicators"))
    if cfg.high_risk_indicators is not None and len(indicators) >= cfg.high_risk_indicators:
        firings.append(
            _Firing(
                "high_risk",
                f"线索风险因素 {len(indicators)} 项 ≥ {cfg.high_risk_indicators} / "
                f"{len(indicators)} risk indicators on a lead >= {cfg.high_risk_indicators}",
                lead.t,
                (lead.id,),
            )
        )
    escalation = _window(state.leads, lead, cfg.escalation_window, _nth_lead(cfg.escalation_leads))
    if escalation is not None:
        inside, at = escalation
        firings.append(
            _Firing(
                "escalation",
                f"{_days(cfg.escalation_window)} 天内 {len(inside)} 条线索 / {len(inside)} leads within "
                f"{_days(cfg.escalation_window)} days (threshold {cfg.escalation_leads})",
                at,
                tuple(x.id for x in inside),
            )
        )
    convergence = _window(state.leads, lead, cfg.convergence_window, _nth_agency(cfg.convergence_agencies))
    if convergence is not None:
        inside, at = convergence
        agencies = sorted({x.by for x in inside})
        firings.append(
            _Firing(
                "convergence",
                f"{_days(cfg.convergence_window)} 天内 {len(agencies)} 个机构报告 / {len(agencies)} agencies "
                f"reported within {_days(cfg.convergence_window)} days: {', '.join(agencies)}",
                at,
                tuple(x.id for x in inside),
            )
        )
    meetings = [m for m in state.meetings if m.t < lead.t <= m.t + cfg.repeat_window]
    if meetings:
        repeat = _repeat_firing(meetings[-1], [lead], cfg)
        if repeat is not None:
            firings.append(repeat)
    return firings


def _on_risk(state: VictimState, obs: Observation, cfg: HubConfig) -> list[_Firing]:
    score = obs.triage.get("score")
    if not isinstance(score, int) or isinstance(score, bool):
        return []
    lead_id = _as_str(obs.triage.get("lead_id"))
    _insert(state.risks, RiskFact(id=obs.event_id, t=obs.time, by=obs.sender, lead=lead_id, score=score))
    _touch(state, [obs.sender], obs.time, cfg)
    for index, lead in enumerate(state.leads):
        if lead.id == lead_id and (lead.score is None or lead.score < score):
            state.leads[index] = lead.model_copy(update={"score": score})
    if score < cfg.high_risk_score:
        return []
    return [
        _Firing(
            "high_risk",
            f"风险评分 {score}/24 ≥ {cfg.high_risk_score} / "
            f"risk score {score} of 24 >= {cfg.high_risk_score}",
            obs.time,
            (obs.event_id, *([lead_id] if lead_id else [])),
        )
    ]


def _on_order_requested(state: VictimState, obs: Observation, cfg: HubConfig) -> list[_Firing]:
    urgent = obs.triage.get("urgent")
    order = OrderFact(
        id=obs.event_id,
        t=obs.time,
        by=obs.sender,
        urgency=obs.urgency,
        urgent=urgent if isinstance(urgent, bool) else obs.urgency != "routine",
        lead=_as_str(obs.triage.get("lead_id")),
    )
    _insert(state.orders, order)
    _touch(state, [obs.sender, *obs.recipients], obs.time, cfg)
    return []


def _on_order_breached(state: VictimState, obs: Observation, cfg: HubConfig) -> list[_Firing]:
    _touch(state, [obs.sender, *obs.recipients], obs.time, cfg)
    return [
        _Firing(
            "order_breach",
            "人身安全保护令被违反（立即）/ a personal safety protection order was breached (immediate)",
            obs.time,
            tuple(dict.fromkeys([obs.event_id, *obs.mentions("order_id")])),
        )
    ]


def _response(
    kind: ResponseKind, *ref_fields: str
) -> Callable[[VictimState, Observation, HubConfig], list[_Firing]]:
    def handle(state: VictimState, obs: Observation, cfg: HubConfig) -> list[_Firing]:
        if kind == "acknowledged" and obs.sender == cfg.coordinators:
            _acknowledge_alert(state, obs)
            return []
        satisfaction = _as_str(obs.triage.get("satisfaction")) if kind == "resolved" else None
        response = ResponseFact(
            id=obs.event_id,
            t=obs.time,
            by=obs.sender,
            kind=kind,
            refs=obs.mentions(*ref_fields),
            satisfaction=satisfaction,
        )
        _insert(state.responses, response)
        _touch(state, [obs.sender], obs.time, cfg)
        return []

    return handle


def _names_alert(alert: AlertState, ids: Iterable[str]) -> bool:
    return any(ref == alert.alert_id or ref in alert.event_ids for ref in ids)


def _acknowledge_alert(state: VictimState, obs: Observation) -> None:
    alert = _open_alert(state)
    if alert is not None and alert.status == "open" and _names_alert(alert, obs.mentions("lead_id")):
        alert.status = "acknowledged"


def _on_scheduled(state: VictimState, obs: Observation, cfg: HubConfig) -> list[_Firing]:
    alert = _open_alert(state)
    if alert is not None and _names_alert(alert, obs.mentions("alert_id")):
        alert.status = "scheduled"
        alert.meeting_at = _as_time(obs.triage.get("meeting_at"))
        alert.participants = sorted(set(_as_strs(obs.triage.get("participants"))))
    return []


def _on_concluded(state: VictimState, obs: Observation, cfg: HubConfig) -> list[_Firing]:
    items: list[ActionItemFact] = []
    raw_items = obs.triage.get("action_item_deadlines")
    for item in raw_items if isinstance(raw_items, list | tuple) else []:
        if not isinstance(item, Mapping):
            continue
        owner, due_at = _as_str(item.get("owner")), _as_time(item.get("due_at"))
        if owner is not None and due_at is not None:
            items.append(ActionItemFact(owner=owner, due_at=due_at))
    meeting = MeetingFact(
        id=obs.event_id,
        t=obs.time,
        alert=_as_str(obs.triage.get("alert_id")),
        urgency=obs.urgency,
        items=items,
    )
    _insert(state.meetings, meeting)
    alert = _open_alert(state)
    if alert is not None and _names_alert(alert, obs.mentions("alert_id")):
        alert.status = "concluded"  # the next rule that fires opens a new episode
    # Leads that arrived before this event but happened after the meeting are repeats too.
    repeat = _repeat_firing(meeting, state.leads, cfg)
    return [repeat] if repeat is not None else []


def _ignore(state: VictimState, obs: Observation, cfg: HubConfig) -> list[_Firing]:
    return []


_Handler = Callable[[VictimState, Observation, HubConfig], list[_Firing]]

_HANDLERS: Final[dict[str, _Handler]] = {
    "lead.reported": _on_lead,
    "risk.assessed": _on_risk,
    "lead.acknowledged": _response("acknowledged", "lead_id"),
    "lead.action_taken": _response("action_taken", "lead_id"),
    "lead.resolved": _response("resolved", "lead_id"),
    "protection_order.requested": _on_order_requested,
    "protection_order.decided": _response("decided", "request_id"),
    "protection_order.breached": _on_order_breached,
    "joint_meeting.scheduled": _on_scheduled,
    "joint_meeting.concluded": _on_concluded,
}


def _open_alert(state: VictimState) -> AlertState | None:
    alert = state.alert
    return alert if alert is not None and alert.status != "concluded" else None


def _urgency(alert: AlertState) -> Urgency:
    return "immediate" if any(r.code in IMMEDIATE_REASONS for r in alert.reasons) else "urgent"


def _emission(state: VictimState, alert: AlertState) -> AlertEmission:
    related = list(dict.fromkeys(event for reason in alert.reasons for event in reason.events))
    return AlertEmission(
        event_id=alert_event_id(alert.alert_id, alert.version),
        alert_id=alert.alert_id,
        subject=state.subject,
        version=alert.version,
        reasons=[{"code": r.code, "detail": r.detail[:_MAX_DETAIL]} for r in alert.reasons],
        agencies_involved=list(alert.agencies),
        related_events=related[-_MAX_RELATED:],
        raised_at=alert.raised_at,
        updated_at=alert.updated_at,
        status=alert.status,
        urgency=_urgency(alert),
    )


def _apply(state: VictimState, firings: Sequence[_Firing]) -> list[AlertEmission]:
    """Raise the victim's alert or update it with the reasons not yet among its reasons."""
    alert = _open_alert(state)
    known = {reason.code for reason in alert.reasons} if alert is not None else set()
    new: dict[AlertReasonCode, _Firing] = {}
    for firing in sorted(firings, key=lambda f: (_REASON_ORDER.index(f.code), f.time)):
        if firing.code not in known and firing.code not in new:
            new[firing.code] = firing
    if not new:
        return []
    if alert is None:
        state.episodes += 1
        first = min(f.time for f in new.values())
        alert = AlertState(
            alert_id=alert_id_for(state.subject, state.episodes),
            episode=state.episodes,
            raised_at=first,
            updated_at=first,
        )
        state.alert = alert
    alert.reasons.extend(
        ReasonState(code=f.code, detail=f.detail, t=f.time, events=list(f.events)) for f in new.values()
    )
    alert.version += 1
    alert.updated_at = max(alert.updated_at, *(f.time for f in new.values()))
    alert.agencies = sorted(state.agencies)[:_MAX_AGENCIES]
    emission = _emission(state, alert)
    alert.event_ids.append(emission.event_id)
    return [emission]


def _prune(state: VictimState, cfg: HubConfig) -> None:
    """Drop facts and ids at or before the horizon, so the state stays bounded."""
    floor = state.floor
    if state.latest is not None:
        cutoff = state.latest - cfg.retention
        floor = cutoff if floor is None else max(floor, cutoff)
    if len(state.seen) > cfg.max_events:
        times = sorted(state.seen.values())
        by_count = times[len(times) - cfg.max_events - 1]
        floor = by_count if floor is None else max(floor, by_count)
    if floor is None:
        return
    state.floor = floor
    state.seen = {event_id: t for event_id, t in state.seen.items() if t > floor}
    state.leads = [x for x in state.leads if x.t > floor]
    state.risks = [x for x in state.risks if x.t > floor]
    state.orders = [x for x in state.orders if x.t > floor]
    state.responses = [x for x in state.responses if x.t > floor]
    state.meetings = [m for m in state.meetings if m.t > floor or any(i.due_at > floor for i in m.items)]
    state.agencies = {agency: t for agency, t in state.agencies.items() if t > floor}
    sources = {x.id for x in state.leads} | {x.id for x in state.orders} | {x.id for x in state.meetings}
    state.breached = [key for key in state.breached if key.split("/", 1)[0] in sources]


def observe(
    state: VictimState | None, obs: Observation, cfg: HubConfig
) -> tuple[VictimState, list[AlertEmission]]:
    """Apply one event to the victim's state; returns the new state and the alerts to publish.

    The input state is not modified. An event already applied, or older than the retained horizon,
    returns the state unchanged and nothing to publish.
    """
    if state is None:
        state = VictimState.new(obs.subject)
    elif state.subject != obs.subject:
        raise ObservationError("the observation's subject is not this state's victim")
    if obs.event_id in state.seen or (state.floor is not None and obs.time <= state.floor):
        return state, []
    new = state.fork()
    new.seen[obs.event_id] = obs.time
    new.latest = obs.time if new.latest is None else max(new.latest, obs.time)
    firings = _HANDLERS.get(obs.event_type, _ignore)(new, obs, cfg)
    emissions = _apply(new, firings)
    _prune(new, cfg)
    return new, emissions


# --- serial suspects ------------------------------------------------------------------------------


def observe_suspect(  # noqa: PLR0917 - the app calls it positionally, one argument per fact
    state: SuspectState | None, suspect: str, victim: str, lead_id: str, time: datetime, cfg: HubConfig
) -> tuple[SuspectState, list[SerialTrigger]]:
    """Record that ``lead_id`` names ``suspect`` against ``victim``; returns the serial triggers.

    When the suspect reaches ``serial_victims`` distinct victims, one trigger goes to each of them;
    each later new victim gets its own trigger (the earlier victims were already flagged for this
    suspect, and :func:`observe_serial` would ignore a second trigger). A lead id seen before changes
    nothing. At most ``max_suspect_victims`` victims are kept (the earliest seen are dropped first).
    """
    time = _aware(time, "time")
    if state is None:
        state = SuspectState(suspect=suspect)
    elif state.suspect != suspect:
        raise ObservationError("the suspect is not this state's suspect")
    seen = state.victims.get(victim)
    if seen is not None and lead_id in seen.leads:
        return state, []
    new = state.model_copy(update={"victims": dict(state.victims)})
    is_new_victim = seen is None
    entry = SuspectVictim(
        first=time if seen is None else min(seen.first, time),
        leads=[*(seen.leads if seen is not None else []), lead_id][-_MAX_LEADS_PER_SUSPECT_VICTIM:],
    )
    new.victims[victim] = entry
    if len(new.victims) > cfg.max_suspect_victims:
        others = sorted(
            (kv for kv in new.victims.items() if kv[0] != victim), key=lambda kv: (kv[1].first, kv[0])
        )
        new.victims = {**dict(others[len(others) - cfg.max_suspect_victims + 1 :]), victim: entry}
    count = len(new.victims)
    if not is_new_victim or count < cfg.serial_victims:
        return new, []
    targets = sorted(new.victims) if count == cfg.serial_victims else [victim]
    victims = tuple(sorted(new.victims))
    at = max(v.first for v in new.victims.values())
    triggers = [
        SerialTrigger(
            victim=target,
            suspect=suspect,
            victims=victims,
            time=at,
            lead_ids=tuple(new.victims[target].leads),
        )
        for target in targets
    ]
    return new, triggers


def observe_serial(
    state: VictimState | None, trigger: SerialTrigger, cfg: HubConfig
) -> tuple[VictimState, list[AlertEmission]]:
    """Apply a serial-suspect trigger to its victim; a suspect already flagged for them is a no-op."""
    if state is None:
        state = VictimState.new(trigger.victim)
    elif state.subject != trigger.victim:
        raise ObservationError("the trigger's victim is not this state's victim")
    if trigger.suspect in state.serial:
        return state, []
    new = state.fork()
    new.serial[trigger.suspect] = trigger.time
    if len(new.serial) > cfg.max_suspect_victims:
        kept = sorted(new.serial.items(), key=lambda kv: (kv[1], kv[0]))[-cfg.max_suspect_victims :]
        new.serial = dict(kept)
    n = len(trigger.victims)
    firing = _Firing(
        "serial_suspect",
        f"同一嫌疑人涉及 {n} 名受害人 / the same suspect is named against {n} victims "
        f"(threshold {cfg.serial_victims})",
        trigger.time,
        trigger.lead_ids,
    )
    return new, _apply(new, [firing])
