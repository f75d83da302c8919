"""Freshness statements: the short freeze window (TUF's timestamp role), verified and judged purely.

A registry is valid for 90 days, so whoever withholds a newer one (a revocation) could keep a process
on the old one for weeks. The roots therefore delegate to an online key (``RegistryDocument.timestamp``)
that signs, every minute, a short-lived statement naming the newest registry's version and digest. A
process trusts its view of the registry only while it holds a statement that

1. fits the size cap and is a signature line followed by the signed payload (as a registry file is);
2. carries valid signatures of ``threshold`` keys of the timestamp role of the registry in force (a
   statement signed by any other key is refused: ``unknown_key``, or ``bad_signature``);
3. parses as a :class:`~schemas.freshness.FreshnessStatement` (strict JSON, the schema);
4. has not expired (else: ``stale``);
5. names a registry no newer than the one in force (else: ``behind``, a withheld update), and the same
   digest when it names the same version (else: ``conflict``).

Checks 1-3 judge an offered statement (:func:`judge_statement`); 4-5 and a re-check of 2 after the
registry in force changed (a rotated timestamp key) judge the process (:func:`assess`). Pure: bytes,
a registry and a clock reading in, results out.

Layout of a statement record::

    {"payloadType":"application/vnd.lianfang.freshness.v1","signatures":[{"keyid":..,"sig":..}]}
    <the statement as compact JSON (services.kernel.jsonx.compact_json)>

Each signature is Ed25519 over DSSE's ``PAE(payloadType, payload)``; nothing is re-serialized to
verify.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from schemas.freshness import FRESHNESS_PAYLOAD_TYPE, MAX_STATEMENT_BYTES, FreshnessStatement
from schemas.registry import DelegatedRole
from services.kernel import crypto, jsonx
from services.kernel.errors import (
    BadSignatureError,
    MalformedError,
    ReasonCode,
    TooLargeError,
    UnknownKeyError,
    UntrustedInputError,
)
from services.kernel.registry import Registry

DEFAULT_VALID_FOR: Final = timedelta(minutes=10)
DEFAULT_RENEW_EVERY: Final = timedelta(minutes=1)

State = Literal["fresh", "no_role", "missing", "untrusted", "stale", "behind", "conflict"]
"""Where a process stands: ``fresh``, or why not (see :func:`assess`)."""
STATES: Final[tuple[State, ...]] = ("fresh", "no_role", "missing", "untrusted", "stale", "behind", "conflict")


def registry_digest(registry: Registry) -> str:
    """What a statement names a registry by: SHA-256 of its signed payload (the bytes the roots
    signed; adding a signature to the file does not change it)."""
    return "sha256:" + hashlib.sha256(registry.payload).hexdigest()


@dataclass(frozen=True, slots=True)
class Statement:
    """A statement whose signatures verified under ``role``; ``data`` is the record, byte for byte."""

    document: FreshnessStatement
    data: bytes
    role: DelegatedRole


def sign_statement(
    registry: Registry,
    keys: Mapping[str, Ed25519PrivateKey],
    *,
    now: datetime,
    valid_for: timedelta = DEFAULT_VALID_FOR,
) -> bytes:
    """A statement that ``registry`` is the newest, issued ``now`` and valid for ``valid_for``,
    signed by each of ``keys`` (key id to the timestamp role's private key)."""
    document = FreshnessStatement(
        registry_version=registry.version,
        registry_digest=registry_digest(registry),
        issued=now,
        expires=now + valid_for,
    )
    payload = jsonx.compact_json(document.model_dump(mode="json"))
    signatures = [
        {"keyid": kid, "sig": crypto.b64e(crypto.sign(key, FRESHNESS_PAYLOAD_TYPE, payload))}
        for kid, key in keys.items()
    ]
    block = jsonx.compact_json({"payloadType": FRESHNESS_PAYLOAD_TYPE, "signatures": signatures})
    return block + b"\n" + payload


def verify_statement(data: bytes, role: DelegatedRole | None) -> Statement:
    """Checks 1-3: the statement's frame, ``role``'s signatures, its schema. Raises an
    :class:`~services.kernel.errors.UntrustedInputError` naming the reason."""
    if len(data) > MAX_STATEMENT_BYTES:
        raise TooLargeError(f"a freshness statement is {len(data)} bytes; the limit is {MAX_STATEMENT_BYTES}")
    block, sep, payload = data.partition(b"\n")
    if not sep or not payload:
        raise MalformedError("a freshness statement is a signature line followed by the signed payload")
    raw = jsonx.strict_json(block, what="freshness signature line")
    if not isinstance(raw, dict) or set(raw) != {"payloadType", "signatures"}:
        raise MalformedError("a freshness signature line has exactly payloadType and signatures")
    if raw["payloadType"] != FRESHNESS_PAYLOAD_TYPE or not isinstance(raw["signatures"], list):
        raise MalformedError(f"a freshness statement is signed as {FRESHNESS_PAYLOAD_TYPE}")
    if role is None:
        raise UnknownKeyError("the registry in force delegates no timestamp role: no statement can verify")
    _check_signatures(role, payload, raw["signatures"])
    jsonx.strict_json(payload, what="freshness statement")
    try:
        document = FreshnessStatement.model_validate_json(payload)
    except ValidationError as e:
        raise MalformedError(
            f"the freshness statement does not match the schema: {e.error_count()} error(s)"
        ) from e
    return Statement(document, data, role)


def _check_signatures(role: DelegatedRole, payload: bytes, signatures: list[object]) -> None:
    by_kid = {k.kid: crypto.b64d(k.public, what="timestamp key", length=32) for k in role.keys}
    valid: set[str] = set()
    unknown = 0
    for entry in signatures:
        if not isinstance(entry, dict) or set(entry) != {"keyid", "sig"}:
            raise MalformedError("a freshness signature has exactly keyid and sig")
        kid = str(entry["keyid"])
        sig = crypto.b64d(str(entry["sig"]), what="freshness signature", length=64)
        if kid not in by_kid:
            unknown += 1
            continue
        try:
            crypto.verify_signature(by_kid[kid], sig, FRESHNESS_PAYLOAD_TYPE, payload)
            valid.add(kid)
        except BadSignatureError:
            pass
    if len(valid) >= role.threshold:
        return
    if unknown and not valid:
        raise UnknownKeyError(
            "the freshness statement is signed by a key the registry in force does not delegate the "
            "timestamp role to"
        )
    raise BadSignatureError(
        f"the freshness statement has {len(valid)} valid timestamp signature(s) of the "
        f"{role.threshold} needed"
    )


StatementReason = Literal["newer", "older"] | ReasonCode
"""Why an offered statement was taken (``newer``), not needed (``older``: issued no later than the
one held), or refused (the reason code of the check it failed)."""


@dataclass(frozen=True, slots=True)
class StatementDecision:
    reason: StatementReason
    detail: str
    statement: Statement | None = None

    @property
    def untrusted(self) -> bool:
        """The offer failed a check (counted and logged); an older statement is no fault: the
        compacted topic read from its start holds earlier ones."""
        return self.reason not in ("newer", "older")


def judge_statement(held: Statement | None, data: bytes, registry: Registry) -> StatementDecision:
    """Take ``data`` if it verifies under the timestamp role of ``registry`` and was issued after the
    statement ``held``. An expired one is still taken (it is the newest known): :func:`assess` says it
    is stale."""
    try:
        offered = verify_statement(data, registry.document.timestamp)
    except UntrustedInputError as e:
        return StatementDecision(e.reason, str(e))
    if held is not None and offered.document.issued <= held.document.issued:
        return StatementDecision("older", f"issued {offered.document.issued.isoformat()}, not newer")
    return StatementDecision("newer", f"issued {offered.document.issued.isoformat()}", offered)


@dataclass(frozen=True, slots=True)
class Freshness:
    """Whether a process may trust its registry now, why not, and until when it may (``fresh_until``
    is the statement's expiry when fresh, else ``None``)."""

    state: State
    detail: str
    fresh_until: datetime | None = None
    statement: Statement | None = None

    @property
    def fresh(self) -> bool:
        return self.state == "fresh"


def assess(registry: Registry, statement: Statement | None, now: datetime) -> Freshness:  # noqa: PLR0911
    """Checks 4-5 (and 2 again, when the registry in force delegates to other keys than the statement
    was verified under)."""
    role = registry.document.timestamp
    if role is None:
        return Freshness("no_role", f"registry v{registry.version} delegates no timestamp role")
    if statement is None:
        return Freshness("missing", "no freshness statement has been received")
    if statement.role != role:
        try:
            statement = verify_statement(statement.data, role)
        except UntrustedInputError as e:
            return Freshness(
                "untrusted", f"the statement held does not verify under registry v{registry.version}: {e}"
            )
    doc = statement.document
    if now >= doc.expires:
        return Freshness(
            "stale",
            f"the newest freshness statement expired at {doc.expires.isoformat()}",
            statement=statement,
        )
    if doc.registry_version > registry.version:
        return Freshness(
            "behind",
            f"the timestamp role names registry v{doc.registry_version}, but v{registry.version} is in "
            "force: a newer registry is being withheld or was refused",
            statement=statement,
        )
    if doc.registry_version == registry.version and doc.registry_digest != registry_digest(registry):
        return Freshness(
            "conflict",
            f"the timestamp role names another registry v{doc.registry_version} than the one in force",
            statement=statement,
        )
    return Freshness("fresh", f"fresh until {doc.expires.isoformat()}", doc.expires, statement)
