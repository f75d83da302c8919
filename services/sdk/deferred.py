"""Leads that wait for their pseudonyms while the pseudonymizer cannot answer: pure.

A lead accepted during an outage is stored in the outbox before its subject is known
(:meth:`services.sdk.outbox.Outbox.put_deferred`). Its content (identifiers, narrative, everything the
caller gave) is HPKE-sealed to one of the participant's own encryption keys, the one the registry names
for sealing to it when the keystore holds it: the process that publishes holds the private key anyway,
and the outbox file alone then reveals only that a lead with this event id waits, and since when. The
HPKE ``info`` binds the participant, the event id and the key id, so a row moved under another event id
does not open.

The pseudonymizers here never ask a service: :class:`StandIn` gives pseudonyms of the right form for
validating a lead before it is accepted, :class:`Recording` notes which identifiers a batch of leads
needs (one request for all of them), :class:`Prefetched` answers from that request's result.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from services.kernel import crypto, jsonx
from services.kernel.errors import LianfangError, MalformedError, UsageError
from services.kernel.keystore import Keystore
from services.kernel.pseudonym import PSEUDONYM_SECRET_LENGTH, Pseudonymizer, PseudonymKey
from services.kernel.registry import Registry

__all__ = [
    "Pending",
    "PendingEvent",
    "PendingLead",
    "Prefetched",
    "Recording",
    "StandIn",
    "open_pending",
    "own_key",
    "pending_from_bytes",
    "seal_pending",
]

_INFO: Final = b"lianfang-outbox-deferred-lead-v1\x00"
MAX_SEALED_BYTES: Final = 2 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class PendingLead:
    """What :meth:`services.sdk.client.Client.publish_lead` was given, to be published once the
    pseudonyms can be had: the lead's fields as JSON values, the urgency and references asked for."""

    data: dict[str, Any]
    urgency: str | None = None
    refs: tuple[str, ...] = ()

    @classmethod
    def of(cls, data: Mapping[str, Any], *, urgency: str | None, refs: Sequence[str] = ()) -> PendingLead:
        """The lead as JSON values (dates as ISO text, as validation reads them)."""
        plain = json.loads(json.dumps(dict(data), default=str, ensure_ascii=False))
        if not isinstance(plain, dict):
            raise UsageError("a lead is a mapping of its fields")
        return cls(plain, urgency, tuple(refs))

    def to_bytes(self) -> bytes:
        return jsonx.compact_json(
            {"kind": "lead", "lead": self.data, "urgency": self.urgency, "refs": list(self.refs)}
        )


@dataclass(frozen=True, slots=True)
class PendingEvent:
    """Any other event that waits behind a lead or for its pseudonyms (an import's follow-ups and
    protection orders): the event and its case context as JSON, where each pseudonym not known yet is a
    stand-in, and ``persons``, each stand-in's canonical identifier, to be replaced by its pseudonym."""

    type: str
    event: dict[str, Any]
    context: dict[str, Any]
    urgency: str
    refs: tuple[str, ...] = ()
    persons: dict[str, str] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        return jsonx.compact_json(
            {
                "kind": "event", "type": self.type, "event": self.event, "context": self.context,
                "urgency": self.urgency, "refs": list(self.refs), "persons": self.persons,
            }
        )  # fmt: skip

    def filled(self, pseudonyms: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The event and the context with each stand-in replaced by the pseudonym of its person
        (``pseudonyms``: canonical identifier -> pseudonym)."""
        real = {stand_in: pseudonyms[canonical] for stand_in, canonical in self.persons.items()}
        return _replaced(self.event, real), _replaced(self.context, real)


Pending = PendingLead | PendingEvent


def _replaced(value: Any, mapping: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return mapping.get(value, value)
    if isinstance(value, list):
        return [_replaced(v, mapping) for v in value]
    if isinstance(value, dict):
        return {k: _replaced(v, mapping) for k, v in value.items()}
    return value


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def pending_from_bytes(raw: bytes) -> Pending:
    doc = jsonx.strict_json(raw, what="waiting event")
    if not isinstance(doc, dict):
        raise MalformedError("a waiting event is a JSON object")
    kind = doc.get("kind")
    if (
        kind == "lead"
        and set(doc) == {"kind", "lead", "urgency", "refs"}
        and isinstance(doc["lead"], dict)
        and (doc["urgency"] is None or isinstance(doc["urgency"], str))
        and _strings(doc["refs"])
    ):
        return PendingLead(doc["lead"], doc["urgency"], tuple(doc["refs"]))
    if kind == "event" and set(doc) == {"kind", "type", "event", "context", "urgency", "refs", "persons"}:
        persons = doc["persons"]
        if (
            isinstance(doc["type"], str)
            and isinstance(doc["event"], dict)
            and isinstance(doc["context"], dict)
            and isinstance(doc["urgency"], str)
            and _strings(doc["refs"])
            and isinstance(persons, dict)
            and all(isinstance(v, str) for v in persons.values())
        ):
            return PendingEvent(
                doc["type"], doc["event"], doc["context"], doc["urgency"], tuple(doc["refs"]), persons
            )
    raise MalformedError("a waiting event is a lead or an event of the expected shape")


def own_key(keystore: Keystore, registry: Registry, at: datetime) -> tuple[str, bytes]:
    """``(key id, public key)`` to seal a waiting lead to: the participant's key the registry names for
    sealing (not revoked or expired) when the keystore holds it, else the newest in the keystore."""
    try:
        kid, public = registry.sealing_key(keystore.participant, at=at)
    except LianfangError:
        kid = ""
    if kid not in keystore.encryption:
        if not keystore.encryption:
            raise UsageError(f"the keystore of {keystore.participant} holds no encryption key")
        kid = list(keystore.encryption)[-1]
        public = keystore.public_encryption_keys()[kid]
    return kid, public


def _info(participant: str, event_id: str, kid: str) -> bytes:
    return _INFO + b"\x00".join(s.encode() for s in (participant, event_id, kid))


def seal_pending(pending: Pending, *, participant: str, event_id: str, kid: str, public: bytes) -> bytes:
    """What waits, encrypted at rest to ``public`` (HPKE base mode), bound to who, which event, which key."""
    return crypto.hpke_wrap(public, pending.to_bytes(), _info(participant, event_id, kid))


def open_pending(sealed: bytes, *, keystore: Keystore, event_id: str, kid: str) -> Pending:
    """The waiting lead, opened with the participant's private key ``kid``; raises
    :class:`~services.kernel.errors.DecryptFailedError` when it was not sealed for this row and key."""
    if len(sealed) > MAX_SEALED_BYTES:
        raise MalformedError("a waiting lead is larger than any lead could be")
    raw = crypto.hpke_unwrap(keystore.encryption_key(kid), sealed, _info(keystore.participant, event_id, kid))
    return pending_from_bytes(raw)


class StandIn:
    """Pseudonyms of the right form from a throwaway key, for validating a lead without the service.
    Never published: a lead validated with them is stored waiting and pseudonymized again later."""

    def __init__(self, version: int) -> None:
        self._key = PseudonymKey(version=version, secret=os.urandom(PSEUDONYM_SECRET_LENGTH))

    def pseudonyms(self, canonicals: Sequence[str]) -> list[str]:
        return self._key.pseudonyms(canonicals)


class Recording(StandIn):
    """A stand-in that notes every canonical identifier it was asked for, in order, once each, and
    which stand-in it gave each (``persons``: stand-in -> canonical identifier)."""

    def __init__(self, version: int) -> None:
        super().__init__(version)
        self.asked: dict[str, None] = {}
        self.persons: dict[str, str] = {}

    def pseudonyms(self, canonicals: Sequence[str]) -> list[str]:
        self.asked.update(dict.fromkeys(canonicals))
        given = super().pseudonyms(canonicals)
        self.persons.update(zip(given, canonicals, strict=True))
        return given


class Prefetched:
    """Pseudonyms asked for before, in one batch. An identifier not among them is asked of ``fallback``
    (none: a bug of the caller, :class:`UsageError`)."""

    def __init__(self, known: Mapping[str, str], *, fallback: Pseudonymizer | None = None) -> None:
        self.known = dict(known)
        self.fallback = fallback

    def pseudonyms(self, canonicals: Sequence[str]) -> list[str]:
        missing = [c for c in dict.fromkeys(canonicals) if c not in self.known]
        if missing:
            if self.fallback is None:
                raise UsageError("an identifier was not among those evaluated for this batch")
            self.known.update(zip(missing, self.fallback.pseudonyms(missing), strict=True))
        return [self.known[c] for c in canonicals]
