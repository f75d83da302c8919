"""The envelope: wire format of every record on ``lianfang.*`` topics (versions 1 and 2).

A Kafka record value is a DSSE envelope (JSON)::

    {"payloadType": "application/vnd.lianfang.envelope.v<N>",
     "payload": "<base64 of BODY>",
     "signatures": [{"keyid": "<sender's Ed25519 key id>", "sig": "<base64 Ed25519 signature>"}]}

The signature is Ed25519 over ``PAE(payloadType, BODY)`` with DSSE's pre-authentication encoding,
``b"DSSEv1 " + len(type) + b" " + type + b" " + len(body) + b" " + body``. ``BODY`` is two lines of
compact JSON joined by one newline (JSON text never holds a raw newline)::

    HEADER_JSON \\n SECTIONS_JSON

so the exact bytes of the clear header are recovered without re-serializing anything: a reader splits
``BODY`` at its first newline. ``HEADER_JSON`` is :class:`EnvelopeHeader` (no personal data);
``SECTIONS_JSON`` is :class:`Sections`: each of ``triage`` and ``details`` encrypted once with a fresh
256-bit data key (AES-256-GCM, associated data = ``b"lianfang/v1/section\\0" + name + b"\\0" +
SHA-256(HEADER_JSON)``), the data key wrapped for every recipient with HPKE base mode (RFC 9180,
DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM) with ``info = b"lianfang/v1/wrap\\0" + event id
+ b"\\0" + section + b"\\0" + recipient participant + b"\\0" + recipient key id``.

Version 2 (payload type ``...envelope.v2``, header ``v`` 2) keeps the frame, the header and the
sections' encryption (associated data ``b"lianfang/v2/section\\0" + name + b"\\0" +
SHA-256(HEADER_JSON)``) and replaces the per-section HPKE wraps by :class:`SectionsV2`: one stanza per
recipient carrying the data keys of every section it reads. The sender holds an ephemeral X25519 key
for an epoch (a few minutes) and names its public half ``epk``; with recipient key ``pk``::

    pair  = HKDF-Extract(salt=b"lianfang/v2/pair", ikm=X25519(esk, pk) || epk || pk)
    wkey  = HKDF-Expand(pair, b"lianfang/v2/wrap\\0" + salt + SHA-256(HEADER_JSON) + b"\\0" + to
                        + b"\\0" + kid + b"\\0" + sections joined by b"+", 32)
    wrap  = AES-256-GCM(wkey, nonce=12 zero bytes, data keys of those sections in SECTION_NAMES order,
                        associated data empty)

``salt`` is 16 fresh random bytes per event, so every wrap key is used once.

``docs/envelope.md`` explains the format and the order of checks; where the two disagree, this
docstring is normative.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import (
    AwareDatetime,
    BeforeValidator,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from schemas.common import (
    Category,
    EventId,
    ParticipantId,
    Pseudonym,
    Town,
    UniqueList,
    Urgency,
    WireModel,
    b64decode_strict,
)

ENVELOPE_PAYLOAD_TYPE: Final = "application/vnd.lianfang.envelope.v1"
ENVELOPE_PAYLOAD_TYPE_V2: Final = "application/vnd.lianfang.envelope.v2"
EnvelopeVersion = Literal[1, 2]
PAYLOAD_TYPES: Final[dict[int, str]] = {1: ENVELOPE_PAYLOAD_TYPE, 2: ENVELOPE_PAYLOAD_TYPE_V2}
"""The DSSE payload type of each envelope version; the header's ``v`` must agree with it."""
MAX_RECORD_BYTES: Final = 512 * 1024
"""Records larger than this are refused before any parsing (reason ``too_large``)."""
MAX_HEADER_LIST: Final = 128
"""At most this many ``audience`` and ``refs`` items in a clear header."""
MAX_LINKS: Final = 4
"""At most this many ``links`` in a clear header: the subject's other pseudonyms (its other identifiers)."""
MAX_VERSION: Final = 2**31 - 1
"""The largest policy or registry version a clear header may name."""

SectionName = Literal["triage", "details"]
SECTION_NAMES: Final[tuple[SectionName, ...]] = ("triage", "details")

BASE64_PATTERN: Final = r"^[A-Za-z0-9+/]*={0,2}$"
Base64 = Annotated[str, Field(pattern=BASE64_PATTERN, description="standard base64")]


def _decode_base64(value: object) -> bytes:
    # Checked and decoded in one pass (a pattern first would read the text twice).
    if not isinstance(value, str):
        raise ValueError("must be base64 text")
    return b64decode_strict(value)


DecodedBase64 = Annotated[
    bytes,
    BeforeValidator(_decode_base64),
    Field(json_schema_extra={"type": "string", "pattern": BASE64_PATTERN}, description="standard base64"),
]
"""Standard base64 on the wire, its bytes once read: what :data:`Base64` accepts less what does not
decode strictly (bad padding, padding inside the text or after a full quantum)."""


class Signature(WireModel):
    """One DSSE signature: the signer's key id and the signature bytes in base64."""

    keyid: str = Field(min_length=1, max_length=128)
    sig: Base64


class Dsse(WireModel):
    """The outer envelope, DSSE's JSON form. Only one signature (the sender's) is accepted."""

    payloadType: Literal[  # DSSE's field name
        "application/vnd.lianfang.envelope.v1", "application/vnd.lianfang.envelope.v2"
    ]
    payload: DecodedBase64 = Field(description="the signed body: the header line, a newline, the sections")
    signatures: list[Signature] = Field(min_length=1, max_length=1)


class EnvelopeHeader(WireModel):
    """The clear, signed header: CloudEvents attributes plus what routing needs. No personal data.

    It is a closed set: every field is a closed vocabulary or a bounded format, the subject is a
    pseudonym, and an unknown field is an error (reason ``malformed``). Any participant can sign a
    header, and the router copies what it reads here into Kafka headers and audit entries, so nothing
    in it may be free text that could carry a name or an ID number. A new field is a new envelope
    version, or (``links``) one that is absent when empty, so that every header without it keeps its
    bytes and older readers still read it.
    """

    v: EnvelopeVersion = Field(description="envelope version (the DSSE payload type's)")
    specversion: Literal["1.0"] = Field(description="CloudEvents spec version")
    id: EventId = Field(description="事件标识 / event id, a UUIDv7")
    source: str = Field(
        pattern=r"^urn:lianfang:[a-z][a-z_]*(\.[a-z0-9_]+)?$",
        max_length=len("urn:lianfang:") + 64,
        description="发送方 / sender, `urn:lianfang:<participant>`",
    )
    type: str = Field(
        pattern=r"^[a-z_]+\.[a-z_]+$", max_length=64, description="事件类型 / event type, e.g. lead.reported"
    )
    time: AwareDatetime = Field(description="事件时间 / when the sender signed the event (UTC)")
    subject: Pseudonym = Field(description="当事人假名 / subject pseudonym (the Kafka key)")
    schema_: str = Field(
        alias="schema",
        pattern=r"^[a-z_]+\.[a-z_]+/[0-9]{1,9}$",
        max_length=74,
        description="payload schema, `<type>/<version>`",
    )
    category: Category | None = Field(default=None, description="线索类别 / category of the lead")
    minor: bool | None = Field(default=None, description="未成年人 / the victim is a minor")
    school_related: bool | None = Field(default=None, description="涉校 / the case concerns a school")
    town: Town | None = Field(default=None, description="镇街 / town or street of the case")
    urgency: Urgency = Field(description="紧急程度 / urgency: immediate, urgent or routine")
    audience: UniqueList[ParticipantId] = Field(
        default_factory=list,
        max_length=MAX_HEADER_LIST,
        description="相关单位 / agencies a joint-meeting or supervision event is addressed to, by policy",
    )
    policy: int = Field(ge=1, le=MAX_VERSION, description="sharing-policy version the sender sealed for")
    registry: int = Field(ge=1, le=MAX_VERSION, description="registry version the sender used")
    refs: UniqueList[EventId] = Field(
        default_factory=list, max_length=MAX_HEADER_LIST, description="ids of related events"
    )
    links: UniqueList[Pseudonym] = Field(
        default_factory=list,
        max_length=MAX_LINKS,
        description="关联假名 / pseudonyms of the subject's other identifiers (a lead's victim: phone, "
        "passport, name with birth date), so that its leads keyed by another identifier are linked; "
        "absent when empty",
    )

    @model_validator(mode="after")
    def _schema_names_the_type(self) -> EnvelopeHeader:
        if self.schema_.rpartition("/")[0] != self.type:
            raise ValueError("schema must be `<type>/<version>` of the header's own type")
        return self

    @model_validator(mode="after")
    def _links_are_not_the_subject(self) -> EnvelopeHeader:
        if self.subject in self.links:
            raise ValueError("links must not repeat the subject")
        return self

    @model_serializer(mode="wrap")
    def _without_empty_links(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A header without links is written without the field, byte for byte as before it existed,
        # so readers that predate it read every event that links nothing.
        data: dict[str, Any] = handler(self)
        if not data.get("links"):
            data.pop("links", None)
        return data

    @property
    def sender(self) -> str:
        """The participant id in ``source``."""
        return self.source.removeprefix("urn:lianfang:")


class WrappedKey(WireModel):
    """A section's data key sealed with HPKE to one recipient's encryption key."""

    to: ParticipantId
    kid: str = Field(min_length=1, max_length=64, description="recipient's X25519 key id")
    enc: Base64 = Field(description="HPKE output: encapsulated key then ciphertext of the data key")


class SealedSection(WireModel):
    """One section encrypted once (AES-256-GCM) and its data key wrapped for each recipient."""

    alg: Literal["A256GCM"] = "A256GCM"
    nonce: Base64
    ct: Base64
    recipients: list[WrappedKey] = Field(min_length=1, max_length=64)


class Sections(WireModel):
    """The sealed sections of an event; a section the policy gives nobody is absent."""

    triage: SealedSection | None = None
    details: SealedSection | None = None


KAFKA_HEADER_PREFIX: Final = "ce_"
"""CloudEvents Kafka binary-mode headers mirror the clear header: ``ce_id``, ``ce_type``, ..."""


# --------------------------------------------------------------------------- version 2

MAX_RECIPIENTS: Final = 128
"""At most this many recipient stanzas in a v2 envelope."""


class EncryptedSection(WireModel):
    """A v2 section: encrypted once (AES-256-GCM); its data key travels in the recipients' stanzas."""

    alg: Literal["A256GCM"] = "A256GCM"
    nonce: Base64
    ct: Base64


class RecipientStanza(WireModel):
    """The data keys of the sections one recipient reads, wrapped under a key agreed with its ``kid``."""

    to: ParticipantId
    kid: str = Field(min_length=1, max_length=64, description="recipient's X25519 key id")
    sections: UniqueList[SectionName] = Field(min_length=1, max_length=len(SECTION_NAMES))
    wrap: Base64 = Field(description="AES-256-GCM of the sections' data keys, in SECTION_NAMES order")


class SectionsV2(WireModel):
    """The sealed sections of a v2 event and one stanza per recipient; a section nobody reads is absent."""

    epk: Base64 = Field(description="the sender's ephemeral X25519 public key of the epoch")
    salt: Base64 = Field(description="16 fresh random bytes of this event")
    recipients: list[RecipientStanza] = Field(min_length=1, max_length=MAX_RECIPIENTS)
    triage: EncryptedSection | None = None
    details: EncryptedSection | None = None
