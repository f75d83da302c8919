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
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from services.kernel import crypto, jsonx
from services.kernel.errors import LianfangError, MalformedError, UsageError
from services.kernel.keystore import Keystore
from services.kernel.pseudonym import PSEUDONYM_SECRET_LENGTH, Pseudonymizer, PseudonymKey
from services.kernel.registry import Registry

__all__ = [
    "PendingLead",
    "Prefetched",
    "Recording",
    "StandIn",
    "open_pending",
    "own_key",
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
        return jsonx.compact_json({"lead": self.data, "urgency": self.urgency, "refs": list(self.refs)})

    @classmethod
    def from_bytes(cls, raw: bytes) -> PendingLead:
        doc = jsonx.strict_json(raw, what="waiting lead")
        if (
            not isinstance(doc, dict)
            or set(doc) != {"lead", "urgency", "refs"}
            or not isinstance(doc["lead"], dict)
            or not (doc["urgency"] is None or isinstance(doc["urgency"], str))
            or not isinstance(doc["refs"], list)
            or not all(isinstance(r, str) for r in doc["refs"])
        ):
            raise MalformedError("a waiting lead is {lead, urgency, refs}")
        return cls(doc["lead"], doc["urgency"], tuple(doc["refs"]))


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


def seal_pending(lead: PendingLead, *, participant: str, event_id: str, kid: str, public: bytes) -> bytes:
    """The lead encrypted at rest to ``public`` (HPKE base mode), bound to who, which event and which key."""
    return crypto.hpke_wrap(public, lead.to_bytes(), _info(participant, event_id, kid))


def open_pending(sealed: bytes, *, keystore: Keystore, event_id: str, kid: str) -> PendingLead:
    """The waiting lead, opened with the participant's private key ``kid``; raises
    :class:`~services.kernel.errors.DecryptFailedError` when it was not sealed for this row and key."""
    if len(sealed) > MAX_SEALED_BYTES:
        raise MalformedError("a waiting lead is larger than any lead could be")
    raw = crypto.hpke_unwrap(keystore.encryption_key(kid), sealed, _info(keystore.participant, event_id, kid))
    return PendingLead.from_bytes(raw)


class StandIn:
    """Pseudonyms of the right form from a throwaway key, for validating a lead without the service.
    Never published: a lead validated with them is stored waiting and pseudonymized again later."""

    def __init__(self, version: int) -> None:
        self._key = PseudonymKey(version=version, secret=os.urandom(PSEUDONYM_SECRET_LENGTH))

    def pseudonyms(self, canonicals: Sequence[str]) -> list[str]:
        return self._key.pseudonyms(canonicals)


class Recording(StandIn):
    """A stand-in that notes every canonical identifier it was asked for, in order, once each."""

    def __init__(self, version: int) -> None:
        super().__init__(version)
        self.asked: dict[str, None] = {}

    def pseudonyms(self, canonicals: Sequence[str]) -> list[str]:
        self.asked.update(dict.fromkeys(canonicals))
        return super().pseudonyms(canonicals)


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
