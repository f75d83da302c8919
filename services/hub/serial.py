"""Serial suspects (同一嫌疑人涉及多名受害人) as a pure core: the suspects an event names, a suspect's
victims counted across victims, and the trigger that raises ``serial_suspect`` on each victim.

The hub repartitions the suspects an event names by suspect pseudonym (:func:`suspects_of`, then
:func:`observe_suspect` on the suspect's own state); a suspect reaching ``serial_victims`` victims sends
a :class:`SerialTrigger` back to each victim's partition (:func:`observe_serial` on the victim's state).

- **Serial suspects** are counted without a time limit (``docs/rules.md`` names none); the evidence in a
  victim's alert is that victim's own leads, never another victim's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from services.hub.alerts import AlertEmission, Firing, raise_or_update
from services.hub.config import HubConfig
from services.hub.errors import ObservationError, StateDecodeError
from services.hub.ids import as_time, aware, iso
from services.hub.messages import text
from services.hub.state import Observation, SuspectState, SuspectVictim, VictimState, as_str, as_strs

__all__ = ["SerialTrigger", "SuspectNote", "observe_serial", "observe_suspect", "suspects_of"]

_MAX_LEADS_PER_SUSPECT_VICTIM: Final = 50


def suspects_of(obs: Observation) -> tuple[str, ...]:
    """The suspect pseudonyms an event names against its victim: a lead's ``suspect_pseudonyms`` and a
    protection-order request's ``respondent_pseudonym``. Send each to :func:`observe_suspect`."""
    if obs.event_type == "lead.reported":
        return tuple(dict.fromkeys(as_strs(obs.triage.get("suspect_pseudonyms"))))
    if obs.event_type == "protection_order.requested":
        respondent = as_str(obs.triage.get("respondent_pseudonym"))
        return (respondent,) if respondent else ()
    return ()


@dataclass(frozen=True, kw_only=True)
class SuspectNote:
    """``lead_id`` names ``suspect`` against ``victim`` at ``time``: one record of the suspects topic,
    keyed by the suspect, for :func:`observe_suspect` on the suspect's partition."""

    suspect: str
    victim: str
    lead_id: str
    time: datetime

    def __post_init__(self) -> None:
        object.__setattr__(self, "time", aware(self.time, "SuspectNote.time"))

    def to_json(self) -> bytes:
        data = {
            "suspect": self.suspect,
            "victim": self.victim,
            "lead_id": self.lead_id,
            "time": iso(self.time),
        }
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> SuspectNote:
        """Read :meth:`to_json`'s bytes; :class:`StateDecodeError` when they are not a note."""
        try:
            data = json.loads(raw)
            time = as_time(data["time"])
            if time is None:
                raise ValueError("time is not an aware ISO 8601 time")
            fields = {name: data[name] for name in ("suspect", "victim", "lead_id")}
            if not all(isinstance(v, str) for v in fields.values()):
                raise TypeError("suspect, victim and lead_id are strings")
            return cls(**fields, time=time)
        except (ValueError, KeyError, TypeError) as e:
            raise StateDecodeError(f"suspect note is unreadable: {type(e).__name__}") from e


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
        object.__setattr__(self, "time", aware(self.time, "SerialTrigger.time"))
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
            time = as_time(data["time"])
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
            raise StateDecodeError(f"serial trigger is unreadable: {type(e).__name__}") from e


def observe_suspect(  # noqa: PLR0917 - the app calls it positionally, one argument per fact
    state: SuspectState | None, suspect: str, victim: str, lead_id: str, time: datetime, cfg: HubConfig
) -> tuple[SuspectState, list[SerialTrigger]]:
    """Record that ``lead_id`` names ``suspect`` against ``victim``; returns the serial triggers.

    When the suspect reaches ``serial_victims`` distinct victims, one trigger goes to each of them;
    each later new victim gets its own trigger (the earlier victims were already flagged for this
    suspect, and :func:`observe_serial` would ignore a second trigger). A lead id seen before changes
    nothing. At most ``max_suspect_victims`` victims are kept (the earliest seen are dropped first).
    """
    time = aware(time, "time")
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
    firing = Firing(
        "serial_suspect",
        text("serial_suspect", count=n, threshold=cfg.serial_victims),
        trigger.time,
        trigger.lead_ids,
    )
    return new, raise_or_update(new, [firing])
