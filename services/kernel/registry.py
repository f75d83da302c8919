"""The trust registry: verified k-of-n from root keys, then asked who may do what with which key.

Pure: :meth:`Registry.from_bytes` takes the file's bytes, the trusted roots and a clock reading.

A registry file is meant to be read by the people who sign it, so it is plain text in two parts::

    {"payloadType":"application/vnd.lianfang.registry.v1","signatures":[{"keyid":..,"sig":..}, ..]}
    <the signed payload: the RegistryDocument as indented JSON, to the end of the file>

The first line is the signature block; everything after its newline is the payload, byte for byte.
Each signature is Ed25519 over DSSE's ``PAE(payloadType, payload)``; the payload is parsed only after
enough signatures verified, and never re-serialized to be checked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from pydantic import ValidationError

from schemas.registry import (
    MAX_REGISTRY_BYTES,
    REGISTRY_PAYLOAD_TYPE,
    Participant,
    PseudonymizerRole,
    PublicKey,
    RegistryDocument,
    Roots,
    WrappedPseudonymKey,
)
from services.kernel import crypto, jsonx, oprf, policy
from services.kernel.errors import (
    BadSignatureError,
    KeyExpiredError,
    KeyRevokedError,
    MalformedError,
    NotPermittedError,
    ReasonCode,
    RegistryExpiredError,
    TooLargeError,
    UnknownKeyError,
    UnknownSenderError,
    UntrustedInputError,
    UsageError,
    validation_summary,
)
from services.kernel.pseudonym import PseudonymKey


@dataclass(frozen=True, slots=True)
class SignatureReport:
    """Which root keys signed a registry, and how many more are needed (for people, not just pass/fail)."""

    threshold: int
    valid: frozenset[str]
    invalid: frozenset[str]
    unknown: frozenset[str]

    @property
    def missing(self) -> int:
        return max(0, self.threshold - len(self.valid))

    @property
    def ok(self) -> bool:
        return self.missing == 0


def _load_dsse(data: bytes) -> tuple[bytes, list[tuple[str, bytes]]]:
    """Split a registry file into its payload bytes and its (key id, signature) pairs."""
    if len(data) > MAX_REGISTRY_BYTES:
        raise TooLargeError(f"registry file is {len(data)} bytes; the limit is {MAX_REGISTRY_BYTES}")
    block, sep, payload = data.partition(b"\n")
    if not sep or not payload:
        raise MalformedError("a registry file is a signature line followed by the signed payload")
    raw = jsonx.strict_json(block, what="registry signature line")
    if not isinstance(raw, dict) or raw.get("payloadType") != REGISTRY_PAYLOAD_TYPE:
        raise MalformedError(f"the registry's first line is not a signature block of {REGISTRY_PAYLOAD_TYPE}")
    if set(raw) != {"payloadType", "signatures"} or not isinstance(raw["signatures"], list):
        raise MalformedError("a registry signature block has exactly payloadType and a list of signatures")
    return payload, [_signature(s) for s in raw["signatures"]]


def _signature(raw: object) -> tuple[str, bytes]:
    if not isinstance(raw, dict) or set(raw) != {"keyid", "sig"}:
        raise MalformedError("a registry signature has exactly keyid and sig")
    return str(raw["keyid"]), crypto.b64d(str(raw["sig"]), what="registry signature", length=64)


def check_root_signatures(
    roots: Roots, payload: bytes, signatures: Iterable[tuple[str, bytes]]
) -> SignatureReport:
    """Count distinct root keys whose signature over ``payload`` verifies.

    Distinct by public key, not key id: :class:`Roots` refuses a key listed twice, and this count
    would not let one key meet a threshold of 2 even if such a root set slipped through."""
    by_kid = {k.kid: crypto.b64d(k.public, what="root key", length=32) for k in roots.keys}
    valid: set[str] = set()
    invalid: set[str] = set()
    unknown: set[str] = set()
    counted: set[bytes] = set()
    for kid, sig in signatures:
        if kid not in by_kid:
            unknown.add(kid)
            continue
        try:
            crypto.verify_signature(by_kid[kid], sig, REGISTRY_PAYLOAD_TYPE, payload)
        except BadSignatureError:
            invalid.add(kid)
            continue
        if by_kid[kid] not in counted:
            counted.add(by_kid[kid])
            valid.add(kid)
    return SignatureReport(roots.threshold, frozenset(valid), frozenset(invalid), frozenset(unknown))


def _parse_document(payload: bytes) -> RegistryDocument:
    jsonx.strict_json(payload, what="registry payload")  # duplicate keys, NaN
    try:
        return RegistryDocument.model_validate_json(payload)
    except ValidationError as e:
        raise MalformedError(f"registry payload does not match the schema: {e.error_count()} error(s)") from e


class Registry:
    """A verified registry document with the look-ups the envelope, router and SDK need."""

    def __init__(
        self,
        document: RegistryDocument,
        payload: bytes = b"",
        report: SignatureReport | None = None,
        data: bytes = b"",
    ) -> None:
        self.document = document
        self.payload = payload
        self.report = report
        self.data = data
        """The whole file (signature line and payload) it was verified from; empty when built here."""
        self._participants: dict[str, Participant] = {p.id: p for p in document.participants}
        self._keys: dict[tuple[str, str, str], PublicKey] = {}
        for participant in document.participants:
            for key in participant.keys:
                self._keys.setdefault((participant.id, key.kid, key.use), key)
        self.recipients = policy.Recipients(document.policy)
        """Who must receive each section of an event with a given header, by the policy in force."""

    # -- construction

    @classmethod
    def from_bytes(
        cls, data: bytes, *, trusted_roots: Roots, now: datetime, allow_expired: bool = False
    ) -> Registry:
        """Verify a registry file: k-of-n root signatures, then schema, then expiry.

        ``allow_expired`` loads an expired registry anyway (the router starts with it and pauses until
        a newer one arrives); its signatures must still verify.

        When the document names roots different from ``trusted_roots`` (a root rotation), it must be
        signed by a threshold of both the trusted roots and its own.
        """
        payload, signatures = _load_dsse(data)
        report = check_root_signatures(trusted_roots, payload, signatures)
        if not report.ok:
            raise BadSignatureError(
                f"the registry has {len(report.valid)} valid root signature(s) of the {report.threshold} "
                f"needed ({report.missing} missing)"
            )
        document = _parse_document(payload)
        if document.roots != trusted_roots:
            rotated = check_root_signatures(document.roots, payload, signatures)
            if not rotated.ok:
                raise BadSignatureError(
                    f"the registry rotates its root keys but has only {len(rotated.valid)} of the "
                    f"{rotated.threshold} signatures its new roots need"
                )
        registry = cls(document, payload, report, data)
        if not allow_expired:
            registry.check_current(now)
        return registry

    # -- validity

    @property
    def version(self) -> int:
        return self.document.version

    @property
    def policy_version(self) -> int:
        return self.document.policy.version

    def check_current(self, now: datetime) -> None:
        if now >= self.document.expires:
            raise RegistryExpiredError(
                f"registry version {self.version} expired at {self.document.expires.isoformat()}; "
                "a newer one signed by the roots is needed"
            )

    # -- participants and keys

    def participant(self, participant_id: str) -> Participant:
        try:
            return self._participants[participant_id]
        except KeyError:
            raise UnknownSenderError(f"{participant_id!r} is not a participant of this registry") from None

    def participant_ids(self) -> list[str]:
        return list(self._participants)

    def signing_key(self, participant_id: str, kid: str, *, at: datetime) -> bytes:
        """The raw public key ``kid`` of ``participant_id`` if it could sign at time ``at``."""
        key = self._key(participant_id, kid, "sign")
        _check_window(key, at, participant_id)
        return crypto.b64d(key.public, what="public key", length=32)

    def encryption_key(self, participant_id: str, *, at: datetime) -> tuple[str, bytes]:
        """The key id and raw X25519 key to seal to for ``participant_id`` at time ``at``.

        The newest key (latest ``valid_from``) that is active at ``at`` wins, so a rotation takes
        effect as soon as the registry carries the new key.
        """
        usable = [
            k
            for k in self.participant(participant_id).keys
            if k.use == "encrypt" and _usable(k, at) and k.status != "revoked"
        ]
        if not usable:
            raise UnknownKeyError(f"{participant_id!r} has no encryption key valid at {at.isoformat()}")
        key = max(usable, key=lambda k: k.valid_from)
        return key.kid, crypto.b64d(key.public, what="public key", length=32)

    def sealing_key(self, participant_id: str, *, at: datetime) -> tuple[str, bytes]:
        """:meth:`encryption_key` for a writer: a participant whose encryption keys are all revoked or
        out of their window is the writer's problem to raise (a :class:`UsageError` saying so), and a
        revoked key is never chosen."""
        try:
            kid, public = self.encryption_key(participant_id, at=at)
        except UnknownKeyError:
            revoked = sorted(
                k.kid
                for k in self.participant(participant_id).keys
                if k.use == "encrypt" and k.status == "revoked"
            )
            held = f"its encryption keys {', '.join(revoked)} are revoked" if revoked else "it has none valid"
            raise UsageError(
                f"cannot seal to {participant_id!r}: {held} in registry v{self.version}; it needs new keys "
                f"(`lianfang keys new --as {participant_id}`) before anything can be sealed to it"
            ) from None
        if self.encryption_key_revoked(participant_id, kid, at=at):  # encryption_key never picks one
            raise UsageError(f"encryption key {kid} of {participant_id!r} is revoked")
        return kid, public

    def encryption_key_revoked(self, participant_id: str, kid: str, *, at: datetime) -> bool:
        """Whether ``kid`` is an encryption key of ``participant_id`` revoked at time ``at``."""
        for key in self.participant(participant_id).keys:
            if key.kid == kid and key.use == "encrypt" and key.status == "revoked":
                return key.revoked_at is None or at >= key.revoked_at
        return False

    def is_encryption_key(self, participant_id: str, kid: str) -> bool:
        return (participant_id, kid, "encrypt") in self._keys

    def _key(self, participant_id: str, kid: str, use: str) -> PublicKey:
        key = self._keys.get((participant_id, kid, use))
        if key is None:
            self.participant(participant_id)  # an unknown participant is told as such
            raise UnknownKeyError(f"{participant_id!r} has no {use} key {kid!r} in registry v{self.version}")
        return key

    def check_may_publish(self, participant_id: str, event_type: str) -> None:
        if event_type not in self.participant(participant_id).may_publish:
            raise NotPermittedError(f"{participant_id!r} may not publish {event_type!r}")

    # -- pseudonyms

    @property
    def pseudonymizer(self) -> PseudonymizerRole | None:
        """The oblivious pseudonymizer the roots name (its key and address), or None in an older domain
        that still seals a pseudonym key to every participant."""
        return self.document.pseudonymizer

    def pseudonymizer_public(self) -> bytes:
        """The pseudonymizer's VOPRF public key: a valid ristretto255 element (else ``MalformedError``)."""
        role = self.document.pseudonymizer
        if role is None:
            raise UsageError(f"registry v{self.version} names no pseudonymizer")
        return oprf.deserialize_element(
            crypto.b64d(role.public, what="pseudonymizer public key", length=oprf.ELEMENT_LENGTH)
        )

    def pseudonymizer_previous_public(self) -> bytes | None:
        """During a key transition, the pseudonymizer's previous VOPRF public key (a valid element);
        otherwise None."""
        role = self.document.pseudonymizer
        if role is None or role.previous is None:
            return None
        return oprf.deserialize_element(
            crypto.b64d(role.previous.public, what="previous pseudonymizer key", length=oprf.ELEMENT_LENGTH)
        )

    def pseudonym_key(self, participant_id: str, keys: Mapping[str, X25519PrivateKey]) -> PseudonymKey:
        """Open the pseudonym key sealed to ``participant_id`` with one of its private keys (in a domain
        that names no pseudonymizer, or one moving from the sealed key to a pseudonymizer)."""
        sealed = self.document.pseudonym_key
        if sealed is None:
            raise UsageError(
                f"registry v{self.version} seals no pseudonym key: pseudonyms come from its "
                "pseudonymizer (services.pseudonymizer.client)"
            )
        for wrapped in sealed.sealed:
            if wrapped.to == participant_id and wrapped.kid in keys:
                secret = crypto.hpke_unwrap(
                    keys[wrapped.kid],
                    crypto.b64d(wrapped.enc, what="sealed pseudonym key"),
                    pseudonym_key_info(sealed.version, wrapped.to, wrapped.kid),
                )
                return PseudonymKey(version=sealed.version, secret=secret)
        raise UsageError(f"the pseudonym key is not sealed to any key {participant_id!r} holds")


def _usable(key: PublicKey, at: datetime) -> bool:
    return key.valid_from <= at and (key.valid_until is None or at < key.valid_until)


def _check_window(key: PublicKey, at: datetime, who: str) -> None:
    if key.status == "revoked" and (key.revoked_at is None or at >= key.revoked_at):
        raise KeyRevokedError(f"key {key.kid!r} of {who!r} was revoked before this event was signed")
    if not _usable(key, at):
        raise KeyExpiredError(f"key {key.kid!r} of {who!r} was not valid at {at.isoformat()}")


UpdateReason = Literal["newer", "older", "same_version"] | ReasonCode
"""Why an offered registry was taken (``newer``) or not: an older or the same version (nothing to
do), or the reason code of the check it failed."""


@dataclass(frozen=True, slots=True)
class UpdateDecision:
    """What a process does with a registry offered to it: take ``registry``, or keep its own."""

    reason: UpdateReason
    detail: str
    registry: Registry | None = None

    @property
    def taken(self) -> bool:
        return self.registry is not None

    @property
    def untrusted(self) -> bool:
        """The offer failed a check (it is counted and alerted on); older or equal versions are not
        faults: a compacted topic read from its start holds the versions before the newest."""
        return self.reason not in ("newer", "older", "same_version")


def judge_update(current: Registry, data: bytes, *, trusted_roots: Roots, now: datetime) -> UpdateDecision:
    """Take ``data`` only if it verifies against ``trusted_roots``, is newer than ``current`` and has
    not expired. The signatures and schema are checked first; the version before the expiry, so an
    old expired version still on the topic is ``older``, not a refusal."""
    try:
        candidate = Registry.from_bytes(data, trusted_roots=trusted_roots, now=now, allow_expired=True)
    except UntrustedInputError as e:
        return UpdateDecision(e.reason, str(e))
    if candidate.version < current.version:
        return UpdateDecision("older", f"v{candidate.version} is older than v{current.version} in force")
    if candidate.version == current.version:
        return UpdateDecision("same_version", f"v{candidate.version} is already in force")
    try:
        candidate.check_current(now)
    except RegistryExpiredError as e:
        return UpdateDecision(e.reason, str(e))
    return UpdateDecision("newer", f"v{candidate.version} replaces v{current.version}", candidate)


def self_signed(data: bytes, *, now: datetime) -> Registry:
    """A registry verified against the roots it names itself (expired or not).

    Only for a process's own record of the highest registry it trusted: that registry was judged
    against the chain of roots when it was taken; re-reading it checks only that the record is whole.
    """
    payload, _ = _load_dsse(data)
    roots = _parse_document(payload).roots
    return Registry.from_bytes(data, trusted_roots=roots, now=now, allow_expired=True)


@dataclass(frozen=True, slots=True)
class StartDecision:
    """The registry a process starts with, and why the one in its home folder was not it (if not)."""

    registry: Registry
    refused: UpdateDecision | None = None


def judge_start(home: bytes, trusted: Registry | None, *, anchor: Roots, now: datetime) -> StartDecision:
    """Choose the registry a process starts with, never going below the highest one it trusted.

    Without a record of one (``trusted`` is ``None``, a first start) the home folder's registry must
    verify against the trust anchor (raises if not, expired or not). With one, the home folder's
    registry is judged as an update of it (:func:`judge_update`: chained to its roots, newer, not
    expired); when it is not taken, the process keeps ``trusted`` and ``refused`` says why: an older
    registry, another one of the same version, or one the trusted roots did not sign.
    """
    if trusted is None:
        return StartDecision(Registry.from_bytes(home, trusted_roots=anchor, now=now, allow_expired=True))
    payload, version = _unverified_version(home)
    if payload == trusted.payload:
        return StartDecision(trusted)
    if version is not None and version < trusted.version:  # said plainly, whoever signed it
        return StartDecision(
            trusted, UpdateDecision("older", f"v{version} is older than v{trusted.version} already trusted")
        )
    decision = judge_update(trusted, home, trusted_roots=trusted.document.roots, now=now)
    if decision.registry is not None:
        return StartDecision(decision.registry)
    if decision.reason == "same_version":
        decision = UpdateDecision(
            "same_version", f"it is another registry with the version v{trusted.version} already trusted"
        )
    return StartDecision(trusted, decision)


def _unverified_version(data: bytes) -> tuple[bytes | None, int | None]:
    """The payload and version of a registry file, unverified (only to word a refusal)."""
    try:
        payload = _load_dsse(data)[0]
        return payload, _parse_document(payload).version
    except UntrustedInputError:
        return None, None


def pseudonym_key_info(version: int, to: str, kid: str) -> bytes:
    return b"lianfang/v1/pseudonym-key\0%d\0%s\0%s" % (version, to.encode(), kid.encode())


def seal_pseudonym_key(
    secret: bytes, version: int, recipients: Mapping[str, tuple[str, bytes]]
) -> list[WrappedPseudonymKey]:
    """Seal the pseudonym secret to each participant's (kid, X25519 public key)."""
    return [
        WrappedPseudonymKey(
            to=pid,
            kid=kid,
            enc=crypto.b64e(crypto.hpke_wrap(public, secret, pseudonym_key_info(version, pid, kid))),
        )
        for pid, (kid, public) in sorted(recipients.items())
    ]


def sign_document(document: RegistryDocument, root_keys: Mapping[str, Ed25519PrivateKey]) -> bytes:
    """Serialize a registry document once and sign those bytes with each given root key.

    A root set that lists a key twice or whose threshold its keys cannot meet is refused here, before
    anyone signs it (a document built with ``model_copy`` skipped the schema's own check)."""
    check_roots(document.roots)
    payload = document.model_dump_json(by_alias=True, indent=2).encode("utf-8") + b"\n"
    return _envelope(
        payload, [(kid, crypto.sign(k, REGISTRY_PAYLOAD_TYPE, payload)) for kid, k in root_keys.items()]
    )


def check_roots(roots: Roots) -> Roots:
    """``roots`` validated again (distinct key ids and keys, a threshold they can meet); a
    :class:`UsageError` saying which rule it breaks if not."""
    try:
        return Roots.model_validate_json(roots.model_dump_json())
    except ValidationError as e:
        raise UsageError(f"this root set cannot be signed: {validation_summary(e, limit=1)}") from e


def add_signature(data: bytes, kid: str, root_key: Ed25519PrivateKey) -> bytes:
    """Add one root's signature to an existing registry file (for k-of-n signing by several agencies)."""
    payload, signatures = _load_dsse(data)
    existing = [(k, sig) for k, sig in signatures if k != kid]
    return _envelope(payload, [*existing, (kid, crypto.sign(root_key, REGISTRY_PAYLOAD_TYPE, payload))])


def _envelope(payload: bytes, signatures: list[tuple[str, bytes]]) -> bytes:
    block = {
        "payloadType": REGISTRY_PAYLOAD_TYPE,
        "signatures": [{"keyid": kid, "sig": crypto.b64e(sig)} for kid, sig in signatures],
    }
    return jsonx.compact_json(block) + b"\n" + payload


def read_unverified(data: bytes) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The payload and signatures of a registry file, unverified (for `registry verify` reports)."""
    return _load_dsse(data)
