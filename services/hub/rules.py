"""The joint-meeting rules (联席会议会商规则) as a pure core: one verified event in, the victim's new state
and the alerts to publish out.

Nothing here reads a clock, Kafka or a file: the time of everything is the event time (when it
happened: ``occurred_at``, else the signed header's time), so windows are computed over event times and
events may arrive in any order. The hub's worker
(:mod:`services.hub.worker`) keeps a :class:`~services.hub.state.VictimState` per victim pseudonym (the
Kafka key) and publishes what comes out. A rule that fires raises or updates the victim's one open alert
(:mod:`services.hub.alerts`), explained by a text of :mod:`services.hub.messages`; serial suspects are
counted across victims in :mod:`services.hub.serial`.

The rules are described in ``docs/rules.md``; the choices it leaves open are made here:

- **Windows are inclusive**: leads exactly ``escalation_window`` apart still count together; the repeat
  window runs from just after a concluded meeting's event time to that time plus ``repeat_window``.
- **Lifecycle**: ``lead.acknowledged`` from ``coordinators`` whose ``lead_id`` or ``refs`` name the
  alert (its ``alert_id`` or the id of any of its events) marks it ``acknowledged``;
  ``joint_meeting.scheduled`` marks it ``scheduled``; ``joint_meeting.concluded`` closes it (it stays in
  the state as ``concluded`` until the next episode replaces it). Status changes emit nothing (the
  coordinators' own events already tell everyone); a later update carries the current status.
- **Event time** is when what an event reports happened: its ``occurred_at`` where it carries one (a
  lead), else its signed ``time`` (:class:`~services.hub.state.Observation`). Supervision deadlines
  start at a lead's signed time, when it was reported.
- **Ignored types change nothing**: an event no rule reads (the hub's own ``joint_meeting.alert``,
  coming back through its inbox, and ``supervision.*``) neither moves the victim's latest event time
  nor is remembered, so the hub's wall-clock stamp never prunes a history being replayed.
- **high_risk** fires on a ``risk.assessed`` score at or above ``high_risk_score``. A lead's own risk
  indicators fire it only when ``high_risk_indicators`` is set (off by default: the indicators are not
  the 24-question checklist the threshold is defined on).
- **Linked subjects**: an event keyed by a pseudonym linked to this victim (another identifier of the
  same person, :mod:`services.hub.links`) is applied here too, its facts marked ``via`` that pseudonym:
  the rules count it (several agencies, escalation, high risk), supervision does not (its own subject
  watches its deadlines), and a rule whose events all came via one linked subject is left to that
  subject's own state, which fires it.
- **Idempotent**: an event id already applied changes nothing. Ids are kept as long as the facts: both
  are dropped once older than :attr:`~services.hub.config.HubConfig.retention` before the latest event
  time (or beyond ``max_events``), and events at or before that horizon (``floor``) are ignored, so a
  pruned id cannot be applied twice.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Final, Literal

from services.hub.alerts import AlertEmission, Firing, open_alert, raise_or_update
from services.hub.config import HubConfig
from services.hub.errors import ObservationError
from services.hub.ids import as_time
from services.hub.messages import text
from services.hub.state import (
    ActionItemFact,
    AlertState,
    LeadFact,
    MeetingFact,
    Observation,
    OrderFact,
    ResponseFact,
    ResponseKind,
    RiskFact,
    VictimState,
    as_str,
    as_strs,
)

__all__ = ["Ignored", "ignored", "observe"]


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


def _repeat_firing(meeting: MeetingFact, leads: Sequence[LeadFact], cfg: HubConfig) -> Firing | None:
    after = [lead for lead in leads if meeting.t < lead.t <= meeting.t + cfg.repeat_window]
    if not after:
        return None
    first = after[0]
    return Firing(
        "repeat",
        text("repeat", days=_days(first.t - meeting.t), window=_days(cfg.repeat_window)),
        first.t,
        (meeting.id, *(lead.id for lead in after)),
    )


def _on_lead(state: VictimState, obs: Observation, cfg: HubConfig) -> list[Firing]:
    triage = obs.triage
    category = as_str(triage.get("category")) or obs.category
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
        town=as_str(triage.get("town")) or obs.town,
        pj=triage.get("requests_joint_meeting") is True,
        acting=sorted(obs.recipients - cfg.not_acting - {obs.sender}),
        score=max(scores) if scores else None,
        reported=obs.signed_at if obs.signed_at != obs.time else None,
        via=obs.origin,
    )
    _insert(state.leads, lead)
    _touch(state, [lead.by, *lead.acting], lead.t, cfg)

    firings: list[Firing] = []
    if lead.pj:
        firings.append(
            Firing(
                "professional_judgement",
                text("professional_judgement", sender=lead.by),
                lead.t,
                (lead.id,),
            )
        )
    if minor is True and category in cfg.minor_abuse_categories:
        firings.append(
            Firing(
                "minor_sexual_abuse",
                text("minor_sexual_abuse", category=category),
                lead.t,
                (lead.id,),
            )
        )
    indicators = as_strs(triage.get("risk_indicators"))
    if cfg.high_risk_indicators is not None and len(indicators) >= cfg.high_risk_indicators:
        firings.append(
            Firing(
                "high_risk",
                text("high_risk.indicators", count=len(indicators), threshold=cfg.high_risk_indicators),
                lead.t,
                (lead.id,),
            )
        )
    escalation = _window(state.leads, lead, cfg.escalation_window, _nth_lead(cfg.escalation_leads))
    if escalation is not None:
        inside, at = escalation
        firings.append(
            Firing(
                "escalation",
                text(
                    "escalation",
                    days=_days(cfg.escalation_window),
                    count=len(inside),
                    threshold=cfg.escalation_leads,
                ),
                at,
                tuple(x.id for x in inside),
            )
        )
    convergence = _window(state.leads, lead, cfg.convergence_window, _nth_agency(cfg.convergence_agencies))
    if convergence is not None:
        inside, at = convergence
        agencies = sorted({x.by for x in inside})
        firings.append(
            Firing(
                "convergence",
                text(
                    "convergence",
                    days=_days(cfg.convergence_window),
                    count=len(agencies),
                    agencies=", ".join(agencies),
                ),
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


def _on_risk(state: VictimState, obs: Observation, cfg: HubConfig) -> list[Firing]:
    score = obs.triage.get("score")
    if not isinstance(score, int) or isinstance(score, bool):
        return []
    lead_id = as_str(obs.triage.get("lead_id"))
    risk = RiskFact(id=obs.event_id, t=obs.time, by=obs.sender, lead=lead_id, score=score, via=obs.origin)
    _insert(state.risks, risk)
    _touch(state, [obs.sender], obs.time, cfg)
    for index, lead in enumerate(state.leads):
        if lead.id == lead_id and (lead.score is None or lead.score < score):
            state.leads[index] = lead.model_copy(update={"score": score})
    if score < cfg.high_risk_score:
        return []
    return [
        Firing(
            "high_risk",
            text("high_risk.score", score=score, threshold=cfg.high_risk_score),
            obs.time,
            (obs.event_id, *([lead_id] if lead_id else [])),
        )
    ]


def _on_order_requested(state: VictimState, obs: Observation, cfg: HubConfig) -> list[Firing]:
    urgent = obs.triage.get("urgent")
    order = OrderFact(
        id=obs.event_id,
        t=obs.time,
        by=obs.sender,
        urgency=obs.urgency,
        urgent=urgent if isinstance(urgent, bool) else obs.urgency != "routine",
        lead=as_str(obs.triage.get("lead_id")),
    )
    _insert(state.orders, order)
    _touch(state, [obs.sender, *obs.recipients], obs.time, cfg)
    return []


def _on_order_breached(state: VictimState, obs: Observation, cfg: HubConfig) -> list[Firing]:
    _touch(state, [obs.sender, *obs.recipients], obs.time, cfg)
    return [
        Firing(
            "order_breach",
            text("order_breach"),
            obs.time,
            tuple(dict.fromkeys([obs.event_id, *obs.mentions("order_id")])),
        )
    ]


def _response(
    kind: ResponseKind, *ref_fields: str
) -> Callable[[VictimState, Observation, HubConfig], list[Firing]]:
    def handle(state: VictimState, obs: Observation, cfg: HubConfig) -> list[Firing]:
        if kind == "acknowledged" and obs.sender == cfg.coordinators:
            _acknowledge_alert(state, obs)
            return []
        satisfaction = as_str(obs.triage.get("satisfaction")) if kind == "resolved" else None
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
    alert = open_alert(state)
    if alert is not None and alert.status == "open" and _names_alert(alert, obs.mentions("lead_id")):
        alert.status = "acknowledged"


def _on_scheduled(state: VictimState, obs: Observation, cfg: HubConfig) -> list[Firing]:
    alert = open_alert(state)
    if alert is not None and _names_alert(alert, obs.mentions("alert_id")):
        alert.status = "scheduled"
        alert.meeting_at = as_time(obs.triage.get("meeting_at"))
        alert.participants = sorted(set(as_strs(obs.triage.get("participants"))))
    return []


def _on_concluded(state: VictimState, obs: Observation, cfg: HubConfig) -> list[Firing]:
    items: list[ActionItemFact] = []
    raw_items = obs.triage.get("action_item_deadlines")
    for item in raw_items if isinstance(raw_items, list | tuple) else []:
        if not isinstance(item, Mapping):
            continue
        owner, due_at = as_str(item.get("owner")), as_time(item.get("due_at"))
        if owner is not None and due_at is not None:
            items.append(ActionItemFact(owner=owner, due_at=due_at))
    meeting = MeetingFact(
        id=obs.event_id,
        t=obs.time,
        alert=as_str(obs.triage.get("alert_id")),
        urgency=obs.urgency,
        items=items,
    )
    _insert(state.meetings, meeting)
    alert = open_alert(state)
    if alert is not None and _names_alert(alert, obs.mentions("alert_id")):
        alert.status = "concluded"  # the next rule that fires opens a new episode
    # Leads that arrived before this event but happened after the meeting are repeats too.
    repeat = _repeat_firing(meeting, state.leads, cfg)
    return [repeat] if repeat is not None else []


_Handler = Callable[[VictimState, Observation, HubConfig], list[Firing]]

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


Ignored = Literal["not_a_rule_event", "seen", "before_horizon"]
"""Why :func:`observe` leaves a state as it was: the rules read no event of this type (the hub's own
alerts among them), the event was applied already, or it happened at or before the pruned horizon."""


def ignored(state: VictimState | None, obs: Observation) -> Ignored | None:
    """Why ``obs`` changes nothing in ``state``, or ``None`` when it is applied."""
    if obs.event_type not in _HANDLERS:
        return "not_a_rule_event"
    if state is None:
        return None
    if obs.event_id in state.seen:
        return "seen"
    if state.floor is not None and obs.time <= state.floor:
        return "before_horizon"
    return None


def _left_to_its_subject(state: VictimState, firing: Firing) -> bool:
    """Whether every event behind ``firing`` came from one linked subject: that subject's own state holds
    them all (each event is applied where it was keyed, :mod:`services.hub.links`) and fires the rule
    itself, so the linked state would only raise a second alert about the same events."""
    via: dict[str, str | None] = {lead.id: lead.via for lead in state.leads}
    via.update({risk.id: risk.via for risk in state.risks})
    origins = {via.get(event_id) for event_id in firing.events}
    return len(origins) == 1 and None not in origins


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

    The input state is not modified. An event of a type no rule reads, already applied, or older than
    the retained horizon (:func:`ignored` says which) returns the state unchanged and nothing to
    publish.
    """
    if state is None:
        state = VictimState.new(obs.subject)
    elif state.subject != obs.subject:
        raise ObservationError("the observation's subject is not this state's victim")
    if ignored(state, obs) is not None:
        return state, []
    new = state.fork()
    new.seen[obs.event_id] = obs.time
    new.latest = obs.time if new.latest is None else max(new.latest, obs.time)
    firings = _HANDLERS[obs.event_type](new, obs, cfg)
    if obs.origin is not None:
        firings = [f for f in firings if not _left_to_its_subject(new, f)]
    emissions = raise_or_update(new, firings)
    _prune(new, cfg)
    return new, emissions
