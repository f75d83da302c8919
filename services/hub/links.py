"""Linked subjects (一人多标识) as a pure core: the leads about one person keyed by different identifiers
(a mistyped ID number made one lead fall back to the phone) join one state, so that the rules see them
together.

A lead names, beside its subject pseudonym (the Kafka key), the pseudonyms of the victim's other
identifiers (its header's ``links``). The hub keeps a :class:`~services.hub.state.LinkState` per
pseudonym, in its own partition like everything else, and talks between partitions over
``lianfang.hub.links.v1`` (the serial-suspect rule's pattern, :mod:`services.hub.serial`):

1. A lead with subject ``S`` naming link ``L`` sends a :class:`LinkNote` keyed by the greater of the two
   (the *alias*) saying it belongs with the lesser (:func:`notes_for`). Which one is canonical is the
   lexical order of the pseudonyms: a hub knows nothing about the identifiers behind them, and with
   every ``into`` sorting before its pseudonym, forwarding can only go downhill and never loops.
2. The alias's partition (:func:`observe_note`) records where it goes and forwards there the leads and
   risk assessments it already holds (:func:`forwardable`); when it already went to another subject,
   the greater of the two is told to follow the lesser, so linked subjects end in one, as in a
   union-find whose parent pointers only decrease.
3. Every later lead or risk assessment keyed by an alias is still applied to its own state (its
   supervision, its own alerts) and also forwarded, as a :class:`Forwarded` keyed by ``into``.
4. The canonical subject's partition (:func:`route_forwarded`) passes it on if it went elsewhere in the
   meantime, else applies it to its own state with the facts marked ``via`` the alias, so its rules
   (several agencies, escalation) count it and its alert names the linked leads.

Bounds, since any participant can sign a lead with any links: the header holds at most four; a
subject takes events from at most ``max_linked`` pseudonyms; a pseudonym changes where it goes at most
``max_link_moves`` times, bringing at most ``max_forwarded`` facts each time; a forwarded event passes
at most :data:`MAX_HOPS` subjects. What is refused is counted, never the lead: every event stays applied
where it was keyed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final, Literal

from services.hub.config import HubConfig
from services.hub.errors import ObservationError, StateDecodeError
from services.hub.ids import as_time, iso
from services.hub.state import LinkState, Observation, VictimState

__all__ = [
    "FORWARDED_TYPES",
    "MAX_HOPS",
    "Forwarded",
    "LinkNote",
    "LinkRefusal",
    "forward",
    "forwardable",
    "notes_for",
    "observe_note",
    "read",
    "route_forwarded",
]

FORWARDED_TYPES: Final = frozenset({"lead.reported", "risk.assessed"})
"""What a linked subject's state takes from its aliases: what the joint-meeting rules count across a
person's leads. Responses, orders and meetings concern their own subject's alert and deadlines."""

MAX_HOPS: Final = 8
"""A forwarded event passes at most this many subjects that went elsewhere before it is refused."""

LinkRefusal = Literal["too_many_linked", "too_many_moves", "too_many_hops"]
"""Why the hub did not follow a link (``lianfang_hub_links_refused_total{reason}``)."""


@dataclass(frozen=True, kw_only=True)
class LinkNote:
    """``alias`` belongs with ``into`` (which sorts before it): a record of the links topic keyed by
    ``alias``, for :func:`observe_note` on its partition."""

    alias: str
    into: str

    def to_json(self) -> bytes:
        return json.dumps(
            {"kind": "link", "alias": self.alias, "into": self.into}, separators=(",", ":")
        ).encode()


@dataclass(frozen=True, kw_only=True)
class Forwarded:
    """An event keyed by ``origin`` for the state of ``to``: a record of the links topic keyed by ``to``,
    for :func:`route_forwarded` on its partition. ``hops``: how many subjects passed it on so far."""

    to: str
    origin: str
    obs: Observation
    hops: int = 0

    def to_json(self) -> bytes:
        data = {
            "kind": "event",
            "to": self.to,
            "origin": self.origin,
            "hops": self.hops,
            "obs": _dump(self.obs),
        }
        return json.dumps(data, separators=(",", ":"), default=str).encode()


def read(raw: bytes | str) -> LinkNote | Forwarded:
    """A record of the links topic; :class:`StateDecodeError` when it is neither kind."""
    try:
        data = json.loads(raw)
        kind = data["kind"]
        if kind == "link":
            alias, into = data["alias"], data["into"]
            if not isinstance(alias, str) or not isinstance(into, str):
                raise TypeError("alias and into are strings")
            if not into < alias:
                raise ValueError("into must sort before alias")
            return LinkNote(alias=alias, into=into)
        if kind == "event":
            to, origin, hops = data["to"], data["origin"], data["hops"]
            if not isinstance(to, str) or not isinstance(origin, str) or type(hops) is not int:
                raise TypeError("to and origin are strings, hops an integer")
            return Forwarded(to=to, origin=origin, hops=hops, obs=_load(data["obs"]))
        raise ValueError("unknown kind")
    except (ValueError, KeyError, TypeError) as e:
        raise StateDecodeError(f"links record is unreadable: {type(e).__name__}") from e


def _dump(obs: Observation) -> dict[str, Any]:
    return {
        "event_id": obs.event_id,
        "event_type": obs.event_type,
        "sender": obs.sender,
        "time": iso(obs.time),
        "signed_at": iso(obs.signed_at or obs.time),
        "subject": obs.subject,
        "urgency": obs.urgency,
        "category": obs.category,
        "minor": obs.minor,
        "town": obs.town,
        "recipients": sorted(obs.recipients),
        "refs": list(obs.refs),
        "triage": dict(obs.triage),
    }


def _load(data: Mapping[str, Any]) -> Observation:
    time, signed_at = as_time(data["time"]), as_time(data["signed_at"])
    if time is None or signed_at is None:
        raise ValueError("times are aware ISO 8601 times")
    strings = {name: data[name] for name in ("event_id", "event_type", "sender", "subject", "urgency")}
    if not all(isinstance(v, str) for v in strings.values()):
        raise TypeError("ids, types, sender, subject and urgency are strings")
    triage, recipients, refs = data["triage"], data["recipients"], data["refs"]
    if not isinstance(triage, dict) or not isinstance(recipients, list) or not isinstance(refs, list):
        raise TypeError("triage is an object, recipients and refs are lists")
    if strings["urgency"] not in ("immediate", "urgent", "routine"):
        raise ValueError("unknown urgency")
    return Observation(
        event_id=strings["event_id"],
        event_type=strings["event_type"],
        sender=strings["sender"],
        time=time,
        signed_at=signed_at,
        subject=strings["subject"],
        urgency=strings["urgency"],
        category=data.get("category") if isinstance(data.get("category"), str) else None,
        minor=data.get("minor") if isinstance(data.get("minor"), bool) else None,
        town=data.get("town") if isinstance(data.get("town"), str) else None,
        recipients=frozenset(str(r) for r in recipients),
        refs=tuple(str(r) for r in refs),
        triage=triage,
    )


def notes_for(obs: Observation) -> list[LinkNote]:
    """The link notes a lead sends: one per link, keyed by the greater pseudonym of the pair. Only
    ``lead.reported`` links (the SDK puts a victim's other identifiers there)."""
    if obs.event_type != "lead.reported":
        return []
    return [
        LinkNote(alias=max(obs.subject, link), into=min(obs.subject, link))
        for link in dict.fromkeys(obs.links)
        if link != obs.subject
    ]


def forward(link: LinkState | None, obs: Observation) -> Forwarded | None:
    """What to send for an event just applied to its own subject's state: the event for the subject it
    is linked into, if any and if the rules count it there."""
    if link is None or link.into is None or obs.event_type not in FORWARDED_TYPES:
        return None
    return Forwarded(to=link.into, origin=obs.origin or obs.subject, obs=obs)


def forwardable(state: VictimState | None, cfg: HubConfig) -> list[Observation]:
    """The latest ``max_forwarded`` leads and risk assessments a state holds, as observations (the
    facts keep what the rules read), each with the subject it was first keyed by as ``origin``."""
    if state is None:
        return []
    found: list[tuple[datetime, Observation]] = []
    for lead in state.leads:
        triage = {
            "category": lead.category,
            "minor": lead.minor,
            "town": lead.town,
            "requests_joint_meeting": lead.pj,
        }
        obs = Observation(
            event_id=lead.id,
            event_type="lead.reported",
            sender=lead.by,
            time=lead.t,
            signed_at=lead.reported_at,
            subject=state.subject,
            urgency=lead.urgency,
            category=lead.category,
            minor=lead.minor,
            town=lead.town,
            recipients=frozenset({lead.by, *lead.acting}),
            triage={k: v for k, v in triage.items() if v is not None},
            origin=lead.via or state.subject,
        )
        found.append((lead.t, obs))
    for risk in state.risks:
        triage_risk: dict[str, Any] = {"score": risk.score, **({"lead_id": risk.lead} if risk.lead else {})}
        obs = Observation(
            event_id=risk.id,
            event_type="risk.assessed",
            sender=risk.by,
            time=risk.t,
            subject=state.subject,
            urgency="routine",
            recipients=frozenset({risk.by}),
            triage=triage_risk,
            origin=risk.via or state.subject,
        )
        found.append((risk.t, obs))
    found.sort(key=lambda item: (item[0], item[1].event_id))
    return [obs for _, obs in found[-cfg.max_forwarded :]]


def observe_note(
    link: LinkState | None, victim: VictimState | None, note: LinkNote, cfg: HubConfig
) -> tuple[LinkState, list[LinkNote | Forwarded], LinkRefusal | None]:
    """Apply ``note`` on the alias's partition: the new link state, what to send, and why not, if not.

    ``victim`` is the alias's own state: when the alias moves, its leads and risk assessments follow.
    A note whose ``into`` does not sort before its alias is an :class:`ObservationError` (only this
    module writes notes).
    """
    if not note.into < note.alias:
        raise ObservationError("a link note's into must sort before its alias")
    state = link if link is not None else LinkState(pseudonym=note.alias)
    if state.pseudonym != note.alias:
        raise ObservationError("the note's alias is not this state's pseudonym")
    current = state.into
    if current == note.into:
        return state, [], None
    if current is not None and current < note.into:
        return state, [LinkNote(alias=note.into, into=current)], None  # the newcomer follows
    if state.moves >= cfg.max_link_moves:
        return state, [], "too_many_moves"
    new = state.model_copy(update={"into": note.into, "moves": state.moves + 1})
    sends: list[LinkNote | Forwarded] = [
        Forwarded(to=note.into, origin=obs.origin or note.alias, obs=obs) for obs in forwardable(victim, cfg)
    ]
    if current is not None:
        sends.append(LinkNote(alias=current, into=note.into))  # where it went before follows too
    return new, sends, None


def route_forwarded(
    link: LinkState | None, forwarded: Forwarded, cfg: HubConfig
) -> tuple[LinkState | None, Forwarded | Observation | None, LinkRefusal | None]:
    """Apply ``forwarded`` on its subject's partition: the new link state, then either the record to pass
    on (the subject went elsewhere), the observation to apply to the subject's state (its ``origin``
    set, its subject this one), or ``None`` with the reason it was refused (or nothing to do)."""
    to, origin = forwarded.to, forwarded.origin
    if origin == to:
        return link, None, None
    if link is not None and link.into is not None:
        if forwarded.hops + 1 >= MAX_HOPS:
            return link, None, "too_many_hops"
        return link, replace(forwarded, to=link.into, hops=forwarded.hops + 1), None
    state = link if link is not None else LinkState(pseudonym=to)
    if origin not in state.linked:
        if len(state.linked) >= cfg.max_linked:
            return link, None, "too_many_linked"
        state = state.model_copy(update={"linked": [*state.linked, origin]})
    obs = replace(forwarded.obs, subject=to, origin=origin, links=())
    return state, obs, None
