"""Seal, sign, verify and open envelopes: the pure core every adapter and processor calls.

The wire format is documented in :mod:`schemas.envelope`. These functions take bytes, a verified
:class:`~services.kernel.registry.Registry`, a clock reading and (to open) a keystore; they do no I/O.
Verification checks, in order: size, envelope shape, header (a closed set of bounded fields whose
subject is a pseudonym: anything else is ``malformed``), registry expiry, sender, signing key (known,
not revoked, within its validity window at the time it is judged at: when the event reached the bus if
the caller knows it, else the signed ``time``), signature over the exact bytes, publish permission,
sections' shape, and that the sealed recipients equal what the policy demands. Each failure raises an
:class:`~services.kernel.errors.UntrustedInputError` with its stable reason code. ``docs/envelope.md``
lists the checks with their reason codes; where the two disagree, this docstring is normative.

Two envelope versions are read (:mod:`schemas.envelope`); :func:`seal` writes the version its header
names, and :func:`build_header` names 2. Each JSON part of a record (the DSSE frame, the header line,
the sections line, each opened section) is parsed once, strictly, and that one parse is validated.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time as _time
import uuid
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from pydantic import AwareDatetime, ConfigDict, TypeAdapter, ValidationError

from schemas.envelope import (
    MAX_RECORD_BYTES,
    PAYLOAD_TYPES,
    SECTION_NAMES,
    Dsse,
    EnvelopeHeader,
    EnvelopeVersion,
    SealedSection,
    SectionName,
    Sections,
    SectionsV2,
)
from services.kernel import crypto, jsonx
from services.kernel.errors import (
    DecryptFailedError,
    EncryptionKeyRevokedError,
    MalformedError,
    NotARecipientError,
    PolicyMismatchError,
    ReasonCode,
    RegistryExpiredError,
    ReplayError,
    TimeSkewError,
    TooLargeError,
    UntrustedInputError,
    UsageError,
    validation_summary,
)
from services.kernel.keystore import Keystore, key_id
from services.kernel.registry import Registry


@dataclass(frozen=True, slots=True)
class SealedRecord:
    """What a producer sends: the record value, its Kafka key and CloudEvents headers."""

    value: bytes
    key: bytes
    headers: list[tuple[str, bytes]]
    header: EnvelopeHeader


@dataclass(frozen=True, slots=True)
class Verified:
    """An envelope whose signature, sender, key and policy checked out. Sections are still sealed."""

    header: EnvelopeHeader
    header_bytes: bytes
    sections: Sections | SectionsV2
    value: bytes

    @property
    def sender(self) -> str:
        return self.header.sender

    @property
    def version(self) -> EnvelopeVersion:
        return self.header.v

    def wraps(self) -> list[tuple[SectionName, str, str]]:
        """(section, recipient, recipient's key id) for every data key sealed in this envelope."""
        sections = self.sections
        if isinstance(sections, SectionsV2):
            return [(name, s.to, s.kid) for s in sections.recipients for name in s.sections]
        return [
            (name, w.to, w.kid)
            for name in SECTION_NAMES
            if (section := getattr(sections, name)) is not None
            for w in section.recipients
        ]

    def recipients(self) -> dict[SectionName, frozenset[str]]:
        sealed_to: dict[SectionName, set[str]] = {name: set() for name in SECTION_NAMES}
        for name, to, _ in self.wraps():
            sealed_to[name].add(to)
        return {name: frozenset(to) for name, to in sealed_to.items()}


@dataclass(frozen=True, slots=True)
class Opened:
    """A verified envelope and the sections this participant could open."""

    verified: Verified
    sections: dict[SectionName, dict[str, Any]]

    @property
    def header(self) -> EnvelopeHeader:
        return self.verified.header


# --------------------------------------------------------------------------- ids and headers


def new_event_id(now_ms: int | None = None) -> str:
    """A UUIDv7 (RFC 9562): 48-bit Unix milliseconds, then randomness; sorts by creation time."""
    ms = int(_time.time() * 1000) if now_ms is None else now_ms
    raw = bytearray(ms.to_bytes(6, "big") + os.urandom(10))
    raw[6] = (raw[6] & 0x0F) | 0x70
    raw[8] = (raw[8] & 0x3F) | 0x80
    return str(uuid.UUID(bytes=bytes(raw)))


def header_hash(header_bytes: bytes) -> bytes:
    return hashlib.sha256(header_bytes).digest()


def section_aad(name: SectionName, header_bytes: bytes, version: EnvelopeVersion = 1) -> bytes:
    return b"lianfang/v%d/section\0" % version + name.encode() + b"\0" + header_hash(header_bytes)


def wrap_info(event_id: str, name: SectionName, to: str, kid: str) -> bytes:
    return b"\0".join([b"lianfang/v1/wrap", event_id.encode(), name.encode(), to.encode(), kid.encode()])


PAIR_SALT = b"lianfang/v2/pair"
WRAP_NONCE = bytes(crypto.NONCE_BYTES)
"""v2 wraps use each wrap key once (the event's salt is fresh), so a fixed nonce is safe."""
SALT_BYTES = 16
EPOCH = timedelta(minutes=10)
"""How long a sealing process keeps one ephemeral X25519 key (v2) before it makes the next."""
MAX_CACHED_PAIRS = 4096
"""Pair keys a sender keeps per epoch, and a reader per keystore (the oldest is dropped first)."""


def pair_key(shared: bytes, epk: bytes, recipient_public: bytes) -> bytes:
    """v2: the key a sender's epoch key and a recipient's key agree on (HKDF-Extract)."""
    return crypto.hkdf_extract(PAIR_SALT, shared + epk + recipient_public)


def wrap_info_v2(salt: bytes, hh: bytes, to: str, kid: str, names: Sequence[SectionName]) -> bytes:
    """v2: what a wrap key is derived for: this event (salt, header hash), recipient, key and sections."""
    return b"\0".join([b"lianfang/v2/wrap", salt + hh, to.encode(), kid.encode(), "+".join(names).encode()])


_CE_FIELDS: tuple[tuple[str, str], ...] = tuple(
    (info.alias or name, name) for name, info in EnvelopeHeader.model_fields.items() if name != "v"
)
"""(header name after ``ce_``, attribute) of every header field but ``v``, in the model's order."""


def kafka_headers(header: EnvelopeHeader) -> list[tuple[str, bytes]]:
    """CloudEvents Kafka binary-mode headers mirroring the clear header, for ordinary Kafka tools.

    They are a convenience only: routing decisions are made from the signed header, never from these.
    The router writes these, derived from the verified header, on every inbox copy; it never passes on
    the headers a producer wrote, which nobody signed.

    One header per field of the header's JSON form (``model_dump(mode="json")``, which the unit tests
    hold it to) but ``v``, absent or empty ones left out; lists joined by commas, booleans in lower
    case. Read field by field rather than through a dump: the router calls this for every event.
    """
    out = [("content-type", PAYLOAD_TYPES[header.v].encode())]
    for name, attr in _CE_FIELDS:
        value = getattr(header, attr)
        if value is None or value in ("", []):
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, list):
            text = ",".join(value)
        elif isinstance(value, datetime):
            text = _TIME.dump_python(value, mode="json")  # as the header's JSON form writes it
        else:
            text = str(value)
        out.append((f"ce_{name}", text.encode("utf-8")))
    return out


ACCEPTED_AT_HEADER = "lianfang_accepted_at"
"""The Kafka header the router puts on every inbox copy: when the event reached the bus (the broker's
append time on the events topic, ISO 8601), the time the router judged the sender's key at. Only the
router writes inboxes (``services/kernel/acls.py``), so inbox readers judge the key at the same time and
keep a lead whose key was revoked after the router accepted it."""


def accepted_header(at: datetime) -> tuple[str, bytes]:
    """The :data:`ACCEPTED_AT_HEADER` of an inbox copy accepted at ``at``."""
    return ACCEPTED_AT_HEADER, at.isoformat(timespec="milliseconds").encode()


def accepted_at(headers: Sequence[tuple[str, bytes | None]] | None) -> datetime | None:
    """The time the router accepted an inbox record (:data:`ACCEPTED_AT_HEADER`), or ``None`` when the
    record has no such header or it is not an aware ISO 8601 time (a copy routed before the router
    wrote it): the reader then judges the key at the signed ``time``, as before."""
    for name, raw in headers or ():
        if name != ACCEPTED_AT_HEADER or raw is None:
            continue
        try:
            at = datetime.fromisoformat(raw.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            return None
        return at if at.tzinfo is not None else None
    return None


def check_time_skew(header: EnvelopeHeader, appended_at: datetime, max_skew: timedelta) -> None:
    """Refuse (``time_skew``) an event whose signed ``time`` lies more than ``max_skew`` either side of
    ``appended_at``, when it reached the bus. Keys are judged at ``appended_at``, which no sender
    controls; this check keeps the signed time honest too, so the replay window and the readers, which
    see the signed time, cannot be steered by back- or forward-dating."""
    if abs(header.time - appended_at) > max_skew:
        raise TimeSkewError(
            f"event {header.id} is signed at {header.time.isoformat()}, more than {max_skew} from when it "
            f"reached the bus ({appended_at.isoformat()}): the sender's clock is off or it dated the event"
        )


# --------------------------------------------------------------------------- sealing


class EpochKey:
    """v2: a sender's ephemeral X25519 key for one epoch and the pair keys it agreed with recipients'
    keys. One Diffie-Hellman per recipient key and epoch instead of one HPKE seal per recipient and
    section of every event; dropped when the epoch ends (see ``docs/decisions.md`` for what that means
    for forward secrecy)."""

    def __init__(self, private: X25519PrivateKey, started: float = 0.0) -> None:
        self.private = private
        self.public_raw = crypto.x25519_public_raw(private)
        self.started = started
        self._pairs: dict[bytes, bytes] = {}

    def pair(self, recipient_public_raw: bytes) -> bytes:
        prk = self._pairs.get(recipient_public_raw)
        if prk is None:
            shared = crypto.x25519_agree(self.private, recipient_public_raw)
            prk = pair_key(shared, self.public_raw, recipient_public_raw)
            if len(self._pairs) < MAX_CACHED_PAIRS:
                self._pairs[recipient_public_raw] = prk
        return prk


class Entropy(Protocol):
    """Where sealing gets its randomness. Production uses :class:`SystemEntropy`; the known-answer
    vector generator passes a deterministic one, so vectors can be regenerated byte for byte."""

    def data_key(self) -> bytes: ...

    def nonce(self) -> bytes: ...

    def hpke_wrap(self, recipient_public_raw: bytes, plaintext: bytes, info: bytes) -> bytes: ...

    def salt(self) -> bytes: ...

    def epoch_key(self) -> EpochKey: ...


class SystemEntropy:
    """The operating system's randomness (fresh data keys, nonces, salts and ephemeral keys); v2's
    ephemeral key is replaced every :data:`EPOCH` of this process's monotonic clock."""

    _epoch_s: float = EPOCH.total_seconds()
    _current: EpochKey | None = None
    _lock = threading.Lock()

    def data_key(self) -> bytes:
        return crypto.new_data_key()

    def nonce(self) -> bytes:
        return os.urandom(crypto.NONCE_BYTES)

    def hpke_wrap(self, recipient_public_raw: bytes, plaintext: bytes, info: bytes) -> bytes:
        return crypto.hpke_wrap(recipient_public_raw, plaintext, info)

    def salt(self) -> bytes:
        return os.urandom(SALT_BYTES)

    def epoch_key(self) -> EpochKey:
        now = _time.monotonic()
        current = self._current
        if current is None or now - current.started >= self._epoch_s:
            with self._lock:
                current = self._current
                if current is None or now - current.started >= self._epoch_s:
                    current = EpochKey(X25519PrivateKey.generate(), now)
                    self._current = current
        return current


SYSTEM_ENTROPY = SystemEntropy()


def build_header(
    *,
    event_id: str,
    sender: str,
    event_type: str,
    schema_version: int,
    at: datetime,
    subject: str,
    category: str | None,
    minor: bool | None,
    school_related: bool | None = None,
    town: str | None,
    urgency: str,
    audience: Sequence[str],
    refs: Sequence[str],
    registry: Registry,
    version: EnvelopeVersion = 2,
    links: Sequence[str] = (),
) -> EnvelopeHeader:
    """The clear header of a new event from ``sender``, under the policy and registry versions of
    ``registry``, for envelope ``version``. Validated as JSON, as a reader will; :class:`UsageError`
    names what is wrong."""
    fields: dict[str, Any] = {
        "v": version,
        "specversion": "1.0",
        "id": event_id,
        "source": f"urn:lianfang:{sender}",
        "type": event_type,
        "time": at.isoformat(),
        "subject": subject,
        "schema": f"{event_type}/{schema_version}",
        "category": category,
        "minor": minor,
        "school_related": school_related,
        "town": town,
        "urgency": urgency,
        "audience": list(audience),
        "policy": registry.policy_version,
        "registry": registry.version,
        "refs": list(refs),
    }
    if links:  # absent rather than empty: a header without links keeps the bytes it always had
        fields["links"] = list(links)
    try:
        return EnvelopeHeader.model_validate_json(json.dumps(fields))
    except ValidationError as e:
        raise UsageError(f"cannot build the envelope header: {validation_summary(e, whole='(event)')}") from e


def choose_signing_kid(signer: Keystore, registry: Registry, at: datetime) -> str:
    """The key id the participant signs with at ``at``: the newest of its keys the registry accepts."""
    usable = []
    for kid in signer.signing:
        try:
            registry.signing_key(signer.participant, kid, at=at)
        except UntrustedInputError:  # this key cannot sign now: try the next
            continue
        usable.append(kid)
    if not usable:
        raise UsageError(
            f"{signer.participant!r} holds no signing key the registry accepts at {at.isoformat()}"
        )
    return sorted(usable)[-1]


def seal(
    header: EnvelopeHeader,
    content: Mapping[SectionName, Mapping[str, Any]],
    *,
    registry: Registry,
    signer: Keystore,
    signing_kid: str | None = None,
    entropy: Entropy = SYSTEM_ENTROPY,
) -> SealedRecord:
    """Encrypt each section for the recipients the policy names, sign, and frame the record, in the
    envelope version the header names.

    ``content`` maps section names to JSON-ready dicts. A section the policy gives nobody is left out
    (data minimization); a section the policy gives someone must be present.
    """
    if header.sender != signer.participant:
        raise UsageError(f"header source is {header.sender!r} but the keystore is {signer.participant!r}")
    wanted = registry.recipients(header)
    if not any(wanted.values()):
        raise UsageError(f"the sharing policy names no recipient for {header.type} with these header fields")
    for name in SECTION_NAMES:
        if wanted[name] and name not in content:
            raise UsageError(f"the policy shares the {name!r} section of {header.type} but none was given")
    header_json = header.model_dump(mode="json", by_alias=True)
    header_bytes = jsonx.compact_json(header_json)
    seal_sections = _seal_v2 if header.v == 2 else _seal_v1
    sections_bytes = seal_sections(
        header, header_bytes, content=content, wanted=wanted, registry=registry, entropy=entropy
    )
    body = header_bytes + b"\n" + sections_bytes
    kid = signing_kid or choose_signing_kid(signer, registry, header.time)
    payload_type = PAYLOAD_TYPES[header.v]
    signature = crypto.sign(signer.signing_key(kid), payload_type, body)
    value = jsonx.compact_json(
        {
            "payloadType": payload_type,
            "payload": crypto.b64e(body),
            "signatures": [{"keyid": kid, "sig": crypto.b64e(signature)}],
        }
    )
    if len(value) > MAX_RECORD_BYTES:
        raise UsageError(f"the sealed event is {len(value)} bytes; the bus takes at most {MAX_RECORD_BYTES}")
    return SealedRecord(
        value=value, key=header.subject.encode(), headers=kafka_headers(header), header=header
    )


_Wanted = Mapping[SectionName, frozenset[str]]


def _seal_v1(
    header: EnvelopeHeader,
    header_bytes: bytes,
    *,
    content: Mapping[SectionName, Mapping[str, Any]],
    wanted: _Wanted,
    registry: Registry,
    entropy: Entropy,
) -> bytes:
    """v1 sections: each data key wrapped with HPKE for every recipient of its section."""
    sealed: dict[str, Any] = {}
    for name in SECTION_NAMES:
        if not wanted[name]:
            continue
        data_key, nonce = entropy.data_key(), entropy.nonce()
        plaintext = jsonx.compact_json(dict(content[name]))
        ct = crypto.aead_encrypt(data_key, nonce, plaintext, section_aad(name, header_bytes))
        wrapped = []
        for to in sorted(wanted[name]):
            kid, public = registry.sealing_key(to, at=header.time)
            enc = entropy.hpke_wrap(public, data_key, wrap_info(header.id, name, to, kid))
            wrapped.append({"to": to, "kid": kid, "enc": crypto.b64e(enc)})
        sealed[name] = {
            "alg": "A256GCM",
            "nonce": crypto.b64e(nonce),
            "ct": crypto.b64e(ct),
            "recipients": wrapped,
        }
    return jsonx.compact_json(sealed)


def _seal_v2(
    header: EnvelopeHeader,
    header_bytes: bytes,
    *,
    content: Mapping[SectionName, Mapping[str, Any]],
    wanted: _Wanted,
    registry: Registry,
    entropy: Entropy,
) -> bytes:
    """v2 sections: each recipient gets one stanza holding the data keys of the sections it reads,
    wrapped under a key derived from its pair key with the epoch's ephemeral key."""
    sealed: dict[str, Any] = {}
    data_keys: dict[SectionName, bytes] = {}
    readers: dict[str, list[SectionName]] = {}
    for name in SECTION_NAMES:
        if not wanted[name]:
            continue
        data_key, nonce = entropy.data_key(), entropy.nonce()
        plaintext = jsonx.compact_json(dict(content[name]))
        ct = crypto.aead_encrypt(data_key, nonce, plaintext, section_aad(name, header_bytes, 2))
        data_keys[name] = data_key
        sealed[name] = {"alg": "A256GCM", "nonce": crypto.b64e(nonce), "ct": crypto.b64e(ct)}
        for to in wanted[name]:
            readers.setdefault(to, []).append(name)
    epoch, salt, hh = entropy.epoch_key(), entropy.salt(), header_hash(header_bytes)
    stanzas = []
    for to in sorted(readers):
        names = readers[to]
        kid, public = registry.sealing_key(to, at=header.time)
        wrap_key = crypto.hkdf_expand32(epoch.pair(public), wrap_info_v2(salt, hh, to, kid, names))
        keys = b"".join(data_keys[name] for name in names)
        wrap = crypto.aead_encrypt(wrap_key, WRAP_NONCE, keys, b"")
        stanzas.append({"to": to, "kid": kid, "sections": names, "wrap": crypto.b64e(wrap)})
    sealed.update(epk=crypto.b64e(epoch.public_raw), salt=crypto.b64e(salt), recipients=stanzas)
    return jsonx.compact_json(sealed)


# --------------------------------------------------------------------------- verification


_TIME = TypeAdapter(AwareDatetime, config=ConfigDict(strict=True, hide_input_in_errors=True))


def _parse_model(
    model: type[Dsse] | type[EnvelopeHeader] | type[Sections] | type[SectionsV2], data: bytes, what: str
) -> Any:
    """One strict parse (duplicate keys, NaN, bad UTF-8 refused), then the model validates its result.

    The wire models are strict, and validating parsed JSON in Python mode accepts exactly what their
    JSON mode does, but for a date and time: JSON carries it as text, which Python mode in strict would
    refuse, so a textual ``time`` is read as JSON mode reads it (``tests/unit/test_envelope.py`` pins
    the equivalence).
    """
    data_obj = jsonx.strict_json(data, what=what)
    try:
        if model is EnvelopeHeader and isinstance(data_obj, dict) and isinstance(data_obj.get("time"), str):
            data_obj["time"] = _TIME.validate_strings(data_obj["time"])
        return model.model_validate(data_obj)
    except ValidationError as e:
        summary = validation_summary(e, limit=5)
        raise MalformedError(f"{what} does not match its schema ({summary})") from e


def parse(value: bytes) -> tuple[Dsse, bytes, bytes, bytes, EnvelopeHeader]:
    """Size check, then the DSSE frame, the body split and the header. Nothing is trusted yet."""
    if len(value) > MAX_RECORD_BYTES:
        raise TooLargeError(f"record is {len(value)} bytes; the limit is {MAX_RECORD_BYTES}")
    dsse: Dsse = _parse_model(Dsse, value, "envelope")
    body = dsse.payload
    header_bytes, sep, sections_bytes = body.partition(b"\n")
    if not sep:
        raise MalformedError("envelope body has no header line")
    header: EnvelopeHeader = _parse_model(EnvelopeHeader, header_bytes, "envelope header")
    if PAYLOAD_TYPES[header.v] != dsse.payloadType:
        raise MalformedError(f"the header says envelope v{header.v} but the payload type is another version")
    return dsse, body, header_bytes, sections_bytes, header


def verify(value: bytes, *, registry: Registry, now: datetime, keys_at: datetime | None = None) -> Verified:
    """Check everything that can be checked without a private key; see the module docstring.

    ``now`` judges the registry's expiry; ``keys_at`` the signing key's revocation and validity: the
    router passes when the event reached the bus (the broker's append time), inbox readers the time the
    router accepted it (:func:`accepted_at`). Without it the key is judged at the signed ``time``,
    which the sender chose.
    """
    dsse, body, header_bytes, sections_bytes, header = parse(value)
    registry.check_current(now)
    registry.participant(header.sender)
    signature = dsse.signatures[0]
    public = registry.signing_key(
        header.sender, signature.keyid, at=header.time if keys_at is None else keys_at
    )
    crypto.verify_signature(
        public, crypto.b64d(signature.sig, what="signature", length=64), dsse.payloadType, body
    )
    registry.check_may_publish(header.sender, header.type)
    sections: Sections | SectionsV2
    if header.v == 2:
        sections_v2: SectionsV2 = _parse_model(SectionsV2, sections_bytes, "envelope sections")
        _check_stanzas(sections_v2)
        sections = sections_v2
    else:
        sections = _parse_model(Sections, sections_bytes, "envelope sections")
    verified = Verified(header=header, header_bytes=header_bytes, sections=sections, value=value)
    _check_policy(verified, registry)
    return verified


def _check_stanzas(sections: SectionsV2) -> None:
    """v2's shape beyond the schema: key sizes, one stanza per recipient naming present sections in
    order, and no section that nobody can read."""
    crypto.b64d(sections.epk, what="ephemeral key", length=32)
    crypto.b64d(sections.salt, what="salt", length=SALT_BYTES)
    read: set[str] = set()
    seen: set[str] = set()
    for stanza in sections.recipients:
        if stanza.to in seen:
            raise MalformedError("the envelope names a recipient twice")
        seen.add(stanza.to)
        if list(stanza.sections) != [name for name in SECTION_NAMES if name in stanza.sections]:
            raise MalformedError("a recipient's sections are not in their order")
        for name in stanza.sections:
            if getattr(sections, name) is None:
                raise MalformedError(f"a recipient is given the key of the {name} section, which is absent")
        read.update(stanza.sections)
    for name in SECTION_NAMES:
        if getattr(sections, name) is not None and name not in read:
            raise MalformedError(f"the {name} section is sealed to nobody")


def _check_policy(verified: Verified, registry: Registry) -> None:
    expected = registry.recipients(verified.header)
    wraps = verified.wraps()
    for name in SECTION_NAMES:
        sealed_to = [to for section, to, _ in wraps if section == name]
        if len(sealed_to) != len(set(sealed_to)):
            raise MalformedError(f"the {name} section names a recipient twice")
        actual = frozenset(sealed_to)
        if actual != expected[name]:
            extra = sorted(actual - expected[name])
            missing = sorted(expected[name] - actual)
            raise PolicyMismatchError(
                f"{name} is sealed to recipients that differ from policy v{registry.policy_version}: "
                f"not allowed {extra}, missing {missing}"
            )
    for name, to, kid in wraps:
        if not registry.is_encryption_key(to, kid):
            raise PolicyMismatchError(f"{name} is sealed to {to!r} under an unregistered key")


def check_recipient_keys(verified: Verified, registry: Registry, now: datetime) -> None:
    """No section's data key may be wrapped for an encryption key revoked by ``now``: the router
    does not deliver such wraps (``encryption_key_revoked``). Readers do not apply it: what was
    delivered before a revocation stays readable by its recipient."""
    for name, to, kid in verified.wraps():
        if registry.encryption_key_revoked(to, kid, at=now):
            raise EncryptionKeyRevokedError(
                f"{name} is sealed to {to!r} under encryption key {kid}, revoked in registry "
                f"v{registry.version}"
            )


def open_sections(verified: Verified, keystore: Keystore) -> Opened:
    """Open every section sealed to ``keystore``'s participant; raises if there is none."""
    if isinstance(verified.sections, SectionsV2):
        return _open_v2(verified, verified.sections, keystore)
    me = keystore.participant
    opened: dict[SectionName, dict[str, Any]] = {}
    for name in SECTION_NAMES:
        section: SealedSection | None = getattr(verified.sections, name)
        mine = [w for w in section.recipients if w.to == me] if section else []
        if not section or not mine:
            continue
        wrapped = mine[0]
        if wrapped.kid not in keystore.encryption:
            raise DecryptFailedError(
                f"the {name} section is sealed to key {wrapped.kid!r}, which we do not hold"
            )
        data_key = crypto.hpke_unwrap(
            keystore.encryption_key(wrapped.kid),
            crypto.b64d(wrapped.enc, what="wrapped key"),
            wrap_info(verified.header.id, name, me, wrapped.kid),
        )
        plaintext = crypto.aead_open(
            data_key,
            crypto.b64d(section.nonce, what="nonce", length=crypto.NONCE_BYTES),
            crypto.b64d(section.ct, what="ciphertext"),
            section_aad(name, verified.header_bytes),
        )
        opened[name] = _section_content(name, plaintext)
    if not opened:
        raise NotARecipientError(f"{me!r} is not a recipient of any section of event {verified.header.id}")
    return Opened(verified=verified, sections=opened)


def _section_content(name: SectionName, plaintext: bytes) -> dict[str, Any]:
    content = jsonx.strict_json(plaintext, what=f"{name} section")
    if not isinstance(content, dict):
        raise MalformedError(f"the {name} section is not a JSON object")
    return content


_READER_PAIRS_LOCK = threading.Lock()


def _reader_pair(keystore: Keystore, kid: str, epk: bytes) -> bytes:
    """The pair key of ``keystore``'s key ``kid`` with a sender's epoch key, remembered per keystore."""
    cache = keystore.pair_keys
    prk = cache.get((kid, epk))
    if prk is None:
        private = keystore.encryption_key(kid)
        shared = crypto.x25519_agree(private, epk)
        prk = pair_key(shared, epk, crypto.x25519_public_raw(private))
        with _READER_PAIRS_LOCK:
            while len(cache) >= MAX_CACHED_PAIRS:
                del cache[next(iter(cache))]
            cache[(kid, epk)] = prk
    return prk


def _open_v2(verified: Verified, sections: SectionsV2, keystore: Keystore) -> Opened:
    me = keystore.participant
    mine = [s for s in sections.recipients if s.to == me]
    if not mine:
        raise NotARecipientError(f"{me!r} is not a recipient of any section of event {verified.header.id}")
    stanza = mine[0]
    if stanza.kid not in keystore.encryption:
        raise DecryptFailedError(f"the event is sealed to key {stanza.kid!r}, which we do not hold")
    epk = crypto.b64d(sections.epk, what="ephemeral key", length=32)
    salt = crypto.b64d(sections.salt, what="salt", length=SALT_BYTES)
    info = wrap_info_v2(salt, header_hash(verified.header_bytes), me, stanza.kid, stanza.sections)
    wrap_key = crypto.hkdf_expand32(_reader_pair(keystore, stanza.kid, epk), info)
    try:
        keys = crypto.aead_open(wrap_key, WRAP_NONCE, crypto.b64d(stanza.wrap, what="wrapped keys"), b"")
    except DecryptFailedError as e:
        raise DecryptFailedError("the wrapped keys could not be opened with our key") from e
    if len(keys) != crypto.DATA_KEY_BYTES * len(stanza.sections):
        raise DecryptFailedError("the wrapped keys are not one data key per section")
    opened: dict[SectionName, dict[str, Any]] = {}
    for i, name in enumerate(stanza.sections):
        section = getattr(sections, name)
        plaintext = crypto.aead_open(
            keys[i * crypto.DATA_KEY_BYTES : (i + 1) * crypto.DATA_KEY_BYTES],
            crypto.b64d(section.nonce, what="nonce", length=crypto.NONCE_BYTES),
            crypto.b64d(section.ct, what="ciphertext"),
            section_aad(name, verified.header_bytes, 2),
        )
        opened[name] = _section_content(name, plaintext)
    return Opened(verified=verified, sections=opened)


def verify_and_open(
    value: bytes, *, registry: Registry, now: datetime, keystore: Keystore, keys_at: datetime | None = None
) -> Opened:
    """Verify (the key judged at ``keys_at``, see :func:`verify`), then open what is sealed to
    ``keystore``'s participant."""
    return open_sections(verify(value, registry=registry, now=now, keys_at=keys_at), keystore)


@dataclass(frozen=True, slots=True)
class Unreadable:
    """An inbox record its recipient cannot open: the reason code, a line for people that holds no
    content, and the header if the signature verified (then its id and sender can be named)."""

    reason: ReasonCode
    detail: str
    header: EnvelopeHeader | None


def open_or_unreadable(
    value: bytes,
    *,
    registry: Registry,
    now: datetime,
    keystore: Keystore,
    keys_at: datetime | None = None,
) -> Opened | Unreadable:
    """:func:`verify_and_open` as a result for inbox readers: a record that fails is an
    :class:`Unreadable` to report, not an exception. An expired registry is not the record's fault:
    :class:`RegistryExpiredError` still propagates, so the reader stops rather than skip the record."""
    verified: Verified | None = None
    try:
        verified = verify(value, registry=registry, now=now, keys_at=keys_at)
        return open_sections(verified, keystore)
    except RegistryExpiredError:
        raise
    except UntrustedInputError as e:
        if verified is None:
            return Unreadable(e.reason, str(e), None)
        # Past the signature the message could only speak of the sealed sections: name the reason alone.
        return Unreadable(
            e.reason, f"[{e.reason}] {keystore.participant!r} cannot open this event", verified.header
        )


# --------------------------------------------------------------------------- replay


DIGEST_HEX = 16
"""How much of the SHA-256 of an accepted record the replay window keeps (hex digits: 64 bits). It only
tells a byte-identical copy of the record (a producer's retry) from another record under the same id (a
replay); both are refused. ``services/router/seen.py`` says what the truncation costs."""


@dataclass(frozen=True, slots=True)
class Seen:
    """What the replay window remembers of an accepted event: its time and the start of the digest of
    its bytes (:data:`DIGEST_HEX`; a full digest remembered before is read as its start)."""

    time: float
    digest: str

    def encode(self) -> bytes:
        return f"{self.time!r} {self.digest}".encode()

    @classmethod
    def decode(cls, raw: bytes) -> Seen:
        t, _, digest = raw.decode().partition(" ")
        return cls(float(t), digest[:DIGEST_HEX])


class DuplicateError(ReplayError):
    """A byte-identical copy of an accepted event: a producer's retry, not an attack. Reason ``replay``;
    the router drops such a copy (the event was delivered once) instead of dead-lettering it."""


class ReplayWindow:
    """Refuses an event id seen before, and events whose time is outside ``now - window .. now + skew``.

    ``seen`` maps event ids to :class:`Seen`; pass a persistent mapping to survive restarts. Ids older
    than the window may be pruned, since the time check refuses them anyway.
    """

    def __init__(
        self,
        *,
        window: timedelta = timedelta(days=7),
        max_skew: timedelta = timedelta(minutes=5),
        seen: MutableMapping[str, Seen] | None = None,
    ) -> None:
        self.window = window
        self.max_skew = max_skew
        self.seen: MutableMapping[str, Seen] = {} if seen is None else seen

    def check(self, header: EnvelopeHeader, now: datetime, value: bytes = b"") -> None:
        """Raise :class:`ReplayError` for a repeat or out-of-window event, else remember it.

        A repeat whose bytes equal the accepted copy's raises the subclass :class:`DuplicateError`.
        """
        if header.time < now - self.window:
            raise ReplayError(f"event {header.id} is older than the {self.window} replay window")
        if header.time > now + self.max_skew:
            raise ReplayError(f"event {header.id} is dated more than {self.max_skew} in the future")
        digest = hashlib.sha256(value).hexdigest()[:DIGEST_HEX]
        previous = self.seen.get(header.id)
        if previous is not None:
            if previous.digest == digest:
                raise DuplicateError(f"event {header.id} was already accepted; this is an identical copy")
            raise ReplayError(f"event {header.id} was already accepted")
        self.seen[header.id] = Seen(header.time.timestamp(), digest)

    def prune(self, now: datetime) -> int:
        cutoff = (now - self.window).timestamp()
        # A mapping that can list its old ids itself (the router's compact state) saves decoding all.
        older_than = getattr(self.seen, "older_than", None)
        old: list[str] = (
            older_than(cutoff)
            if older_than is not None
            else [event_id for event_id, seen in self.seen.items() if seen.time < cutoff]
        )
        for event_id in old:
            del self.seen[event_id]
        return len(old)


__all__ = [
    "ACCEPTED_AT_HEADER",
    "DIGEST_HEX",
    "EPOCH",
    "DuplicateError",
    "EpochKey",
    "Opened",
    "ReplayWindow",
    "SealedRecord",
    "Seen",
    "Unreadable",
    "Verified",
    "accepted_at",
    "accepted_header",
    "check_time_skew",
    "kafka_headers",
    "key_id",
    "new_event_id",
    "open_or_unreadable",
    "open_sections",
    "parse",
    "seal",
    "verify",
    "verify_and_open",
]
