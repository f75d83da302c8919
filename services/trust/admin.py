"""Changes to the trust registry: add a participant, add keys, rotate keys, revoke a key, the
pseudonymizer's key epochs (rotate its key, move a sealed-key domain to it, end the transition), and a
renewal that changes nothing but the registry's dates.

Every change is a pure function from one registry document to the next version: ``version + 1``, issued
``now``, expiring one ``lifetime`` later, and checked against the schema. Sealing the pseudonym key to
the new encryption keys (:func:`reseal`) and signing by the roots are separate steps that need private
keys; ``lianfang keys ...`` (:mod:`services.cli`) does them and writes the file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import ValidationError

from schemas.common import PARTICIPANT_ID_PATTERN
from schemas.registry import (
    DelegatedRole,
    Participant,
    PreviousPseudonymizerKey,
    PseudonymizerRole,
    PublicKey,
    RegistryDocument,
    Roots,
    SealedPseudonymKey,
)
from services.kernel import jsonx
from services.kernel.errors import MalformedError, UnknownKeyError, UsageError, validation_summary
from services.kernel.pseudonym import PseudonymKey
from services.kernel.registry import Registry, check_roots, seal_pseudonym_key


@dataclass(frozen=True, slots=True)
class Change:
    """The next registry document and, for people, what changed (ids and key ids, never key material)."""

    document: RegistryDocument
    participant: str
    summary: str


def lifetime_of(document: RegistryDocument) -> timedelta:
    """How long a registry was issued for; a change keeps the domain's lifetime."""
    return document.expires - document.issued


def check_participant_id(participant_id: str) -> str:
    """Refuse an id the registry schema would refuse, before it names a file or a key."""
    if re.fullmatch(PARTICIPANT_ID_PATTERN, participant_id) is None or len(participant_id) > 64:
        raise UsageError(
            f"{participant_id!r} is not a participant id: lower-case letters and '_', optionally "
            "followed by '.' and a suffix of lower-case letters, digits and '_' (e.g. 'shelter', "
            "'mediation.renhe')"
        )
    return participant_id


def add_participant(
    document: RegistryDocument,
    *,
    participant_id: str,
    name_zh: str,
    name_en: str,
    may_publish: Sequence[str],
    keys: Sequence[PublicKey],
    now: datetime,
    lifetime: timedelta,
) -> Change:
    """A new participant with its public keys."""
    check_participant_id(participant_id)
    if any(p.id == participant_id for p in document.participants):
        raise UsageError(f"{participant_id!r} is already a participant of registry v{document.version}")
    try:
        participant = Participant(
            id=participant_id,
            name_zh=name_zh,
            name_en=name_en,
            may_publish=list(may_publish),
            keys=list(keys),
        )
    except ValidationError as e:
        raise UsageError(
            f"participant {participant_id!r} is not valid: {validation_summary(e, limit=1, whole='document')}"
        ) from e
    nxt = _next(document, [*document.participants, participant], now=now, lifetime=lifetime)
    return Change(nxt, participant_id, f"added participant {participant_id}: {_kids(keys)}")


def add_keys(
    document: RegistryDocument,
    participant_id: str,
    keys: Sequence[PublicKey],
    *,
    now: datetime,
    lifetime: timedelta,
) -> Change:
    """More public keys for an existing participant; its other keys are unchanged."""
    participant = _participant(document, participant_id)
    _check_new_kids(participant, keys)
    updated = participant.model_copy(update={"keys": [*participant.keys, *keys]})
    nxt = _next(document, _replace(document, updated), now=now, lifetime=lifetime)
    return Change(nxt, participant_id, f"{participant_id}: added {_kids(keys)}")


def rotate(
    document: RegistryDocument,
    participant_id: str,
    keys: Sequence[PublicKey],
    *,
    now: datetime,
    lifetime: timedelta,
) -> Change:
    """New keys for a participant; its active keys are retired (``valid_until = now``).

    A retired key stays listed, so what it signed while valid still verifies.
    """
    participant = _participant(document, participant_id)
    _check_new_kids(participant, keys)
    retired = [k for k in participant.keys if k.status == "active" and _valid_at(k, now)]
    kept = [
        k.model_copy(update={"status": "retired", "valid_until": now}) if k in retired else k
        for k in participant.keys
    ]
    updated = participant.model_copy(update={"keys": [*kept, *keys]})
    nxt = _next(document, _replace(document, updated), now=now, lifetime=lifetime)
    old = _kids(retired) if retired else "no active keys"
    return Change(nxt, participant_id, f"{participant_id}: retired {old}; added {_kids(keys)}")


def revoke(
    document: RegistryDocument,
    participant_id: str,
    kid: str,
    *,
    at: datetime,
    now: datetime,
    lifetime: timedelta,
) -> Change:
    """Revoke key ``kid`` from ``at`` on: what it signed from then on is refused."""
    participant = _participant(document, participant_id)
    if at.tzinfo is None:
        raise UsageError("a revocation time needs a time zone, e.g. 2025-03-01T09:00:00+08:00")
    matches = [k for k in participant.keys if k.kid == kid]
    if not matches:
        held = ", ".join(k.kid for k in participant.keys) or "none"
        raise UsageError(f"{participant_id!r} has no key {kid!r} (its keys: {held})")
    (key,) = matches
    if key.status == "revoked":
        when = key.revoked_at.isoformat() if key.revoked_at else "an unknown time"
        raise UsageError(f"key {kid} of {participant_id} was already revoked at {when}")
    revoked = key.model_copy(update={"status": "revoked", "revoked_at": at})
    updated = participant.model_copy(
        update={"keys": [revoked if k.kid == kid else k for k in participant.keys]}
    )
    nxt = _next(document, _replace(document, updated), now=now, lifetime=lifetime)
    return Change(
        nxt,
        participant_id,
        f"{participant_id}: revoked {_use(key)} key {kid} from {at.isoformat(timespec='seconds')}",
    )


def renew(document: RegistryDocument, *, now: datetime, lifetime: timedelta) -> Change:
    """The same registry as its next version, issued ``now`` and expiring one ``lifetime`` later: how a
    domain whose registry nears its expiry, or has passed it, goes on when nothing else is to change."""
    nxt = _next(document, list(document.participants), now=now, lifetime=lifetime)
    was, until = (d.isoformat(timespec="seconds") for d in (document.expires, nxt.expires))
    return Change(nxt, "registry", f"renewed: expires {until} (was {was})")


def rotate_roots(document: RegistryDocument, roots: Roots, *, now: datetime, lifetime: timedelta) -> Change:
    """A new root set (k of n). The result must be signed by a threshold of the old roots and of the
    new ones (:meth:`services.kernel.registry.Registry.from_bytes`); a root set listing a key twice or
    whose threshold its keys cannot meet is refused here."""
    check_roots(roots)
    if roots == document.roots:
        raise UsageError("the new root set is the one in force: nothing to rotate")
    nxt = _next(document, list(document.participants), now=now, lifetime=lifetime)
    nxt = nxt.model_copy(update={"roots": roots})
    holders = ", ".join(f"{k.holder}/{k.kid}" for k in roots.keys)
    return Change(nxt, "roots", f"roots: {roots.threshold} of {len(roots.keys)} ({holders})")


def delegate_timestamp(
    document: RegistryDocument, role: DelegatedRole, *, now: datetime, lifetime: timedelta
) -> Change:
    """The timestamp role delegated to other keys (a rotation: list the new key beside the old one
    first, then drop the old one in a later version; see the README)."""
    nxt = _next(document, list(document.participants), now=now, lifetime=lifetime)
    nxt = nxt.model_copy(update={"timestamp": role})
    kids = ", ".join(k.kid for k in role.keys)
    return Change(nxt, "timestamp", f"timestamp role: {role.threshold} of [{kids}]")


def rotate_pseudonymizer(
    document: RegistryDocument,
    *,
    version: int,
    public: str,
    transition_until: datetime,
    now: datetime,
    lifetime: timedelta,
) -> Change:
    """The pseudonymizer's next key (``version``, ``public``) and, until the roots end the transition
    (:func:`end_pseudonymizer_transition`, not before ``transition_until``), the current one as previous."""
    role = document.pseudonymizer
    if role is None:
        raise UsageError(
            f"registry v{document.version} names no pseudonymizer: move the domain to one first "
            "(`lianfang pseudonymizer migrate`)"
        )
    _check_no_transition(document)
    if version <= role.version:
        raise UsageError(
            f"the next pseudonymizer key's version must be above v{role.version}, not v{version}"
        )
    _check_until(transition_until, now)
    nxt = role.model_copy(
        update={
            "version": version,
            "public": public,
            "previous": PreviousPseudonymizerKey(version=role.version, public=role.public),
            "transition_until": transition_until,
        }
    )
    changed = _next(document, list(document.participants), now=now, lifetime=lifetime, pseudonymizer=nxt)
    return Change(
        changed,
        "pseudonymizer",
        f"pseudonymizer key v{version}; v{role.version} kept as the previous key until the transition "
        f"ends (not before {transition_until.isoformat(timespec='seconds')})",
    )


def migrate_to_pseudonymizer(
    document: RegistryDocument,
    role: PseudonymizerRole,
    *,
    transition_until: datetime,
    now: datetime,
    lifetime: timedelta,
) -> Change:
    """A domain that seals a pseudonym key names the pseudonymizer ``role``; the sealed key stays, as the
    previous epoch, until the roots end the transition (not before ``transition_until``)."""
    sealed = document.pseudonym_key
    if document.pseudonymizer is not None or sealed is None:
        raise UsageError(f"registry v{document.version} already names a pseudonymizer: nothing to migrate")
    if role.version <= sealed.version:
        raise UsageError(
            f"the pseudonymizer's version must be above the sealed key's (v{sealed.version}), so that old "
            "and new pseudonyms cannot collide"
        )
    _check_until(transition_until, now)
    nxt = role.model_copy(update={"previous": None, "transition_until": transition_until})
    changed = _next(document, list(document.participants), now=now, lifetime=lifetime, pseudonymizer=nxt)
    return Change(
        changed,
        "pseudonymizer",
        f"pseudonymizer v{role.version} at {role.url}; the sealed pseudonym key v{sealed.version} kept as "
        "the previous epoch until the transition ends (not before "
        f"{transition_until.isoformat(timespec='seconds')})",
    )


def end_pseudonymizer_transition(
    document: RegistryDocument, *, now: datetime, lifetime: timedelta, force: bool = False
) -> Change:
    """The registry without the previous key (or the sealed key): clients stop linking, the service
    destroys the previous key. Refused before ``transition_until`` unless ``force``: ending early leaves
    people seen before and after it unlinked while the hub still looks back at them."""
    role = document.pseudonymizer
    if role is None or role.transition_until is None:
        raise UsageError(f"registry v{document.version} has no pseudonymizer key transition under way")
    if now < role.transition_until and not force:
        raise UsageError(
            f"the transition lasts until {role.transition_until.isoformat(timespec='seconds')} (the hub's "
            "longest look-back after it began): ending it now leaves a person seen before and after it "
            "unlinked while the hub's rules still look back at them; pass --force to end it anyway"
        )
    if role.previous is not None:
        what = f"previous pseudonymizer key v{role.previous.version} dropped: the service destroys it"
    else:
        assert document.pseudonym_key is not None
        what = f"sealed pseudonym key v{document.pseudonym_key.version} removed from the registry"
    nxt = role.model_copy(update={"previous": None, "transition_until": None})
    changed = _next(
        document,
        list(document.participants),
        now=now,
        lifetime=lifetime,
        pseudonymizer=nxt,
        pseudonym_key=None,
    )
    return Change(changed, "pseudonymizer", f"key transition ended: {what}")


def _check_no_transition(document: RegistryDocument) -> None:
    role = document.pseudonymizer
    if role is not None and role.transition_until is not None:
        raise UsageError(
            f"a pseudonymizer key transition is under way until "
            f"{role.transition_until.isoformat(timespec='seconds')}: end it first "
            "(`lianfang pseudonymizer end-transition`)"
        )


def _check_until(transition_until: datetime, now: datetime) -> None:
    if transition_until.tzinfo is None or transition_until <= now:
        raise UsageError("a transition ends after it begins, at a time with a time zone")


def reseal(
    document: RegistryDocument, key: PseudonymKey, *, now: datetime
) -> tuple[RegistryDocument, list[str]]:
    """Seal the pseudonym key to each participant's current encryption key.

    Unlike :func:`services.trust.reseal_pseudonym_key`, a participant left with no usable
    encryption key (its only one was just revoked) is skipped rather than blocking the revocation; its
    id is returned so the operator can issue it new keys.
    """
    registry = Registry(document)  # not signed yet: used only to look keys up
    targets: dict[str, tuple[str, bytes]] = {}
    skipped: list[str] = []
    for participant in document.participants:
        try:
            targets[participant.id] = registry.encryption_key(participant.id, at=now)
        except UnknownKeyError:
            skipped.append(participant.id)
    sealed = SealedPseudonymKey(
        version=key.version, sealed=seal_pseudonym_key(key.secret, key.version, targets)
    )
    return document.model_copy(update={"pseudonym_key": sealed}), skipped


def read_document(payload: bytes) -> RegistryDocument:
    """Parse an unverified registry payload, to show a root holder what they are about to sign."""
    jsonx.strict_json(payload, what="registry payload")
    try:
        return RegistryDocument.model_validate_json(payload)
    except ValidationError as e:
        raise MalformedError(
            f"registry payload does not match the schema: {validation_summary(e, limit=1, whole='document')}"
        ) from e


# -- helpers


def _next(
    document: RegistryDocument,
    participants: list[Participant],
    *,
    now: datetime,
    lifetime: timedelta,
    **changes: object,
) -> RegistryDocument:
    if lifetime <= timedelta(0):
        raise UsageError("a registry lifetime must be positive")
    if now < document.issued:
        raise UsageError(
            f"the clock reads {now.isoformat()}, before registry v{document.version} was issued "
            f"({document.issued.isoformat()}); check the system clock"
        )
    candidate = document.model_copy(
        update={
            "version": document.version + 1,
            "issued": now,
            "expires": now + lifetime,
            "participants": participants,
            **changes,
        }
    )
    # model_copy does not validate: a JSON round trip checks the whole document against the schema.
    try:
        return RegistryDocument.model_validate_json(candidate.model_dump_json(by_alias=True))
    except ValidationError as e:
        raise UsageError(
            f"the changed registry would not be valid: {validation_summary(e, limit=1, whole='document')}"
        ) from e


def _participant(document: RegistryDocument, participant_id: str) -> Participant:
    for participant in document.participants:
        if participant.id == participant_id:
            return participant
    raise UsageError(
        f"{participant_id!r} is not a participant of registry v{document.version}; "
        "`lianfang keys new --as ID --name-zh ... --name-en ...` adds one"
    )


def _replace(document: RegistryDocument, updated: Participant) -> list[Participant]:
    return [updated if p.id == updated.id else p for p in document.participants]


def _check_new_kids(participant: Participant, keys: Iterable[PublicKey]) -> None:
    held = {k.kid for k in participant.keys}
    for key in keys:
        if key.kid in held:
            raise UsageError(f"{participant.id} already has a key {key.kid}")


def _valid_at(key: PublicKey, at: datetime) -> bool:
    return key.valid_until is None or at < key.valid_until


def _kids(keys: Iterable[PublicKey]) -> str:
    return ", ".join(f"{_use(k)} key {k.kid}" for k in keys)


def _use(key: PublicKey) -> str:
    return "signing" if key.use == "sign" else "encryption"
