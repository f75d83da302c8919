"""Envelope v2: one stanza per recipient wrapping the data keys of the sections it reads, under a key
agreed once per epoch. Every v1 guarantee holds for it: only the policy's recipients read, the router
sees who is sealed to under which key, and every bad record is refused with its reason code."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from schemas.envelope import ENVELOPE_PAYLOAD_TYPE, EnvelopeHeader
from services.kernel import crypto, envelope
from services.kernel.errors import EncryptionKeyRevokedError, UntrustedInputError
from services.kernel.registry import Registry
from tests.kit import CONTENT, NOW, DemoDomain, header, rewrite_body

pytestmark = pytest.mark.unit

Sections = dict[str, Any]


def seal2(
    d: DemoDomain, *, sender: str = "police", entropy: envelope.Entropy | None = None, **fields: Any
) -> bytes:
    fields.setdefault("source", f"urn:lianfang:{sender}")
    h = header(v=2, **fields)
    return envelope.seal(
        h, CONTENT, registry=d.registry, signer=d.keys(sender), entropy=entropy or envelope.SystemEntropy()
    ).value


def _edit(edit: Callable[[Sections], None]) -> Callable[[DemoDomain], bytes]:
    """An insider (police) edits the sections of its own v2 event and signs again."""

    def build(d: DemoDomain) -> bytes:
        def change(h: bytes, s: Sections) -> tuple[bytes, object]:
            edit(s)
            return h, s

        return rewrite_body(seal2(d), change, d.keys("police"))

    return build


def _stanza(s: Sections, to: str) -> dict[str, Any]:
    found: dict[str, Any] = next(r for r in s["recipients"] if r["to"] == to)
    return found


def _flip(text: str) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[0] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def _as_v1_payload_type(d: DemoDomain) -> bytes:
    value = json.loads(seal2(d))
    body = crypto.b64d(value["payload"], what="p")
    police = d.keys("police")
    kid = next(iter(police.signing))
    sig = crypto.sign(police.signing_key(kid), ENVELOPE_PAYLOAD_TYPE, body)
    value.update(payloadType=ENVELOPE_PAYLOAD_TYPE, signatures=[{"keyid": kid, "sig": crypto.b64e(sig)}])
    return json.dumps(value).encode()


def _wrap_of_another_event(d: DemoDomain) -> bytes:
    other = json.loads(crypto.b64d(json.loads(seal2(d))["payload"], what="p").partition(b"\n")[2])

    def edit(s: Sections) -> None:
        s["salt"] = other["salt"]
        _stanza(s, "womens_federation")["wrap"] = _stanza(other, "womens_federation")["wrap"]

    return _edit(edit)(d)


@dataclass(frozen=True)
class Case:
    name: str
    reason: str
    build: Callable[[DemoDomain], bytes]
    reader: str | None = "womens_federation"


CASES = [
    Case("a v2 header under the v1 payload type is malformed", "malformed", _as_v1_payload_type),
    Case(
        "a recipient named in two stanzas is malformed",
        "malformed",
        _edit(lambda s: s["recipients"].append(dict(_stanza(s, "police")))),
    ),
    Case(
        "a stanza giving the key of an absent section is malformed",
        "malformed",
        _edit(lambda s: (s.pop("details"), None)),
    ),
    Case(
        "a section that no stanza gives the key of is malformed",
        "malformed",
        _edit(lambda s: s.update(recipients=[{**r, "sections": ["triage"]} for r in s["recipients"]])),
    ),
    Case(
        "a stanza naming its sections out of order is malformed",
        "malformed",
        _edit(lambda s: _stanza(s, "police").update(sections=["details", "triage"])),
    ),
    Case(
        "an ephemeral key of the wrong length is malformed",
        "malformed",
        _edit(lambda s: s.update(epk=base64.b64encode(bytes(31)).decode())),
    ),
    Case(
        "the hub given the details key is a policy mismatch",
        "policy_mismatch",
        _edit(lambda s: _stanza(s, "hub").update(sections=["triage", "details"])),
    ),
    Case(
        "a stanza readdressed to a participant the policy does not name is a policy mismatch",
        "policy_mismatch",
        _edit(lambda s: _stanza(s, "police").update(to="education")),
    ),
    Case(
        "a stanza under a key its recipient never registered is a policy mismatch",
        "policy_mismatch",
        _edit(lambda s: _stanza(s, "police").update(kid="0000000000000000")),
    ),
    Case(
        "a flipped wrap does not open",
        "decrypt_failed",
        _edit(
            lambda s: _stanza(s, "womens_federation").update(
                wrap=_flip(_stanza(s, "womens_federation")["wrap"])
            )
        ),
    ),
    Case(
        "a changed salt makes the wraps fail",
        "decrypt_failed",
        _edit(lambda s: s.update(salt=_flip(s["salt"]))),
    ),
    Case(
        "another event's wrap and salt pasted in do not open under this header",
        "decrypt_failed",
        _wrap_of_another_event,
    ),
    Case(
        "a stanza narrowed to fewer sections than the policy gives is a policy mismatch",
        "policy_mismatch",
        _edit(lambda s: _stanza(s, "womens_federation").update(sections=["triage"])),
    ),
    Case(
        "an outsider's change to a stanza breaks the signature",
        "bad_signature",
        lambda d: rewrite_body(seal2(d), lambda h, s: (h, {**s, "salt": _flip(s["salt"])})),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_an_adversarial_v2_record_is_refused_with_its_reason_code(domain: DemoDomain, case: Case) -> None:
    value = case.build(domain)
    with pytest.raises(UntrustedInputError) as raised:
        verified = envelope.verify(value, registry=domain.registry, now=NOW)
        if case.reader:
            envelope.open_sections(verified, domain.keys(case.reader))
    assert raised.value.reason == case.reason, str(raised.value)


def test_every_recipient_of_a_v2_lead_reads_its_sections_and_the_hub_only_triage(domain: DemoDomain) -> None:
    verified = envelope.verify(seal2(domain), registry=domain.registry, now=NOW)
    assert verified.version == 2
    readers = verified.recipients()
    assert readers["triage"] == readers["details"] | {"hub"}
    for participant in readers["triage"]:
        opened = envelope.open_sections(verified, domain.keys(participant))
        expected = {"triage"} if participant == "hub" else {"triage", "details"}
        assert set(opened.sections) == expected
        assert all(opened.sections[name] == CONTENT[name] for name in expected)


def test_a_participant_no_stanza_names_is_not_a_recipient(domain: DemoDomain) -> None:
    verified = envelope.verify(seal2(domain), registry=domain.registry, now=NOW)
    with pytest.raises(UntrustedInputError) as raised:
        envelope.open_sections(verified, domain.keys("education"))
    assert raised.value.reason == "not_a_recipient"


def test_the_router_sees_every_recipient_and_key_of_a_v2_record_without_opening_it(
    domain: DemoDomain,
) -> None:
    verified = envelope.verify(seal2(domain), registry=domain.registry, now=NOW)
    for name, to, kid in verified.wraps():
        assert domain.registry.is_encryption_key(to, kid), (name, to)
    assert {to for _, to, _ in verified.wraps()} == verified.recipients()["triage"]


def test_a_v2_stanza_for_a_revoked_encryption_key_is_refused_by_the_routers_check(domain: DemoDomain) -> None:
    verified = envelope.verify(seal2(domain), registry=domain.registry, now=NOW)
    (kid,) = domain.keys("police").encryption
    revoked = _registry_revoking(domain.registry, "police", kid, at=NOW)
    with pytest.raises(EncryptionKeyRevokedError):
        envelope.check_recipient_keys(verified, revoked, NOW + timedelta(seconds=1))


def _registry_revoking(registry: Registry, participant: str, kid: str, *, at: datetime) -> Registry:
    doc = registry.document
    participants = []
    for p in doc.participants:
        if p.id == participant:
            keys = [
                k.model_copy(update={"status": "revoked", "revoked_at": at}) if k.kid == kid else k
                for k in p.keys
            ]
            p = p.model_copy(update={"keys": keys})
        participants.append(p)
    return Registry(doc.model_copy(update={"participants": participants}))


def test_events_of_one_epoch_share_its_key_and_the_next_epoch_has_another(domain: DemoDomain) -> None:
    entropy = envelope.SystemEntropy()
    first, second = (_epk(seal2(domain, entropy=entropy)) for _ in range(2))
    assert first == second
    entropy._epoch_s = 0.0  # every seal now starts a new epoch
    assert _epk(seal2(domain, entropy=entropy)) != first


def _epk(value: bytes) -> str:
    sections = json.loads(crypto.b64d(json.loads(value)["payload"], what="p").partition(b"\n")[2])
    epk: str = sections["epk"]
    return epk


def test_a_readers_cache_of_pair_keys_stays_within_its_bound(
    domain: DemoDomain, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(envelope, "MAX_CACHED_PAIRS", 2)
    entropy = envelope.SystemEntropy()
    entropy._epoch_s = 0.0
    reader = domain.keys("womens_federation")
    reader.pair_keys.clear()
    for _ in range(4):
        verified = envelope.verify(seal2(domain, entropy=entropy), registry=domain.registry, now=NOW)
        assert envelope.open_sections(verified, reader).sections == CONTENT
        assert len(reader.pair_keys) <= 2


def test_build_header_writes_v2_and_v1_records_still_verify_and_open(domain: DemoDomain) -> None:
    built = envelope.build_header(
        event_id=envelope.new_event_id(),
        sender="police",
        event_type="lead.reported",
        schema_version=1,
        at=NOW,
        subject="p1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        category="domestic_violence",
        minor=False,
        town="renhe",
        urgency="urgent",
        audience=[],
        refs=[],
        registry=domain.registry,
    )
    assert built.v == 2
    v1 = envelope.seal(header(v=1), CONTENT, registry=domain.registry, signer=domain.keys("police"))
    assert dict(v1.headers)["content-type"] == b"application/vnd.lianfang.envelope.v1"
    opened = envelope.verify_and_open(
        v1.value, registry=domain.registry, now=NOW, keystore=domain.keys("hub")
    )
    assert opened.verified.version == 1
    assert opened.sections == {"triage": CONTENT["triage"]}


# The one strict parse validates in Python mode what used to be validated from JSON: both must accept
# and refuse the same headers (a textual time is read as JSON mode reads it).
HEADER_EDGES: list[tuple[str, object]] = [
    ("v", True),
    ("v", 1.0),
    ("v", 3),
    ("policy", 1.0),
    ("policy", True),
    ("policy", "1"),
    ("minor", 1),
    ("minor", "true"),
    ("time", 5),
    ("time", "2026-11-01 08:00:00+00:00"),
    ("time", "2026-11-01T08:00:00"),
    ("time", "2026-11-01T08:00:00Z"),
    ("time", "2026-11-01"),
    ("time", "1762000000"),
    ("time", None),
    ("audience", []),
    ("audience", ["police", "police"]),
    ("urgency", "URGENT"),
    ("refs", "x"),
]


@pytest.mark.parametrize(("field", "value"), HEADER_EDGES, ids=lambda x: repr(x))
def test_one_strict_parse_accepts_exactly_the_headers_json_validation_accepts(
    field: str, value: object
) -> None:
    raw = json.dumps({**json.loads(header().model_dump_json(by_alias=True)), field: value}).encode()
    try:
        EnvelopeHeader.model_validate_json(raw)
        json_mode_accepts = True
    except ValidationError:
        json_mode_accepts = False
    try:
        envelope._parse_model(EnvelopeHeader, raw, "header")
        one_parse_accepts = True
    except UntrustedInputError:
        one_parse_accepts = False
    assert one_parse_accepts == json_mode_accepts
