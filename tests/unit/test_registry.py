"""The trust registry: no single root can forge it, it expires, and it tells who may do what."""

from __future__ import annotations

from datetime import timedelta

import pytest

from schemas.registry import PublicKey
from services import trust
from services.kernel import crypto, jsonx
from services.kernel.errors import UntrustedInputError
from services.kernel.keystore import Keystore
from services.kernel.registry import (
    Registry,
    add_signature,
    check_root_signatures,
    read_unverified,
    sign_document,
)
from services.simulator import district
from tests.kit import NOW, DemoDomain

pytestmark = pytest.mark.unit


def _roots(domain: DemoDomain) -> list[Keystore]:
    return domain.trust.root_keystores()


def _signed_by(domain: DemoDomain, *holders: str) -> bytes:
    stores = {s.participant.removeprefix("root."): s for s in _roots(domain)}
    keys = {}
    for holder in holders:
        ((kid, key),) = stores[holder].signing.items()
        keys[kid] = key
    return sign_document(domain.registry.document, keys)


def _verify(domain: DemoDomain, data: bytes, now: object = NOW) -> Registry:
    return Registry.from_bytes(data, trusted_roots=domain.trust.trusted_roots(), now=now)  # type: ignore[arg-type]


def test_the_demo_registry_verifies_with_two_of_three_root_signatures(domain: DemoDomain) -> None:
    registry = _verify(domain, domain.trust.registry_path.read_bytes())
    assert registry.report.threshold == 2
    assert len(registry.report.valid) == 2
    assert {p for p, _, _ in district.participants()} == set(registry.participant_ids())


def test_one_root_signature_where_two_are_needed_is_rejected(domain: DemoDomain) -> None:
    with pytest.raises(UntrustedInputError, match=r"^\[bad_signature\].*1 valid root signature.*1 missing"):
        _verify(domain, _signed_by(domain, "plc"))


def test_the_same_root_signing_twice_counts_once(domain: DemoDomain) -> None:
    once = _signed_by(domain, "plc")
    plc = next(s for s in _roots(domain) if s.participant == "root.plc")
    ((kid, _key),) = plc.signing.items()
    payload, signatures = read_unverified(once)
    twice = jsonx.compact_json(
        {
            "payloadType": "application/vnd.lianfang.registry.v1",
            "signatures": [{"keyid": kid, "sig": crypto.b64e(sig)} for kid, sig in signatures * 2],
        }
    ) + b"\n" + payload  # fmt: skip
    with pytest.raises(UntrustedInputError, match="bad_signature"):
        _verify(domain, twice)
    assert kid in check_root_signatures(domain.trust.trusted_roots(), payload, signatures * 2).valid


def test_a_second_root_signature_added_later_makes_the_registry_valid(domain: DemoDomain) -> None:
    wf = next(s for s in _roots(domain) if s.participant == "root.womens_federation")
    ((kid, key),) = wf.signing.items()
    data = add_signature(_signed_by(domain, "plc"), kid, key)
    assert len(_verify(domain, data).report.valid) == 2


def test_an_edited_participant_name_breaks_the_root_signatures(domain: DemoDomain) -> None:
    data = domain.trust.registry_path.read_bytes()
    assert "区公安局".encode() in data, "the registry file shows names in plain text"
    with pytest.raises(UntrustedInputError, match="bad_signature"):
        _verify(domain, data.replace("区公安局".encode(), "区公安分局".encode()))


def test_an_expired_registry_is_refused(domain: DemoDomain) -> None:
    data = domain.trust.registry_path.read_bytes()
    _verify(domain, data, NOW + timedelta(days=89))
    with pytest.raises(UntrustedInputError, match=r"^\[registry_expired\]"):
        _verify(domain, data, NOW + timedelta(days=90))


def test_duplicate_keys_in_the_signature_line_are_malformed(domain: DemoDomain) -> None:
    data = domain.trust.registry_path.read_bytes()
    bad = data.replace(b'{"payloadType":', b'{"payloadType":"x","payloadType":', 1)
    with pytest.raises(UntrustedInputError, match=r"^\[malformed\].*duplicate"):
        _verify(domain, bad)


def test_a_registry_that_rotates_its_roots_needs_the_new_roots_to_sign_too(domain: DemoDomain) -> None:
    old = _roots(domain)
    new_root = Keystore("root.court")
    new_root.add_signing_key()
    new_roots = trust.roots_of([old[0], old[1], new_root], threshold=2)
    doc = domain.registry.document.model_copy(update={"roots": new_roots, "version": 2})

    def keys_of(*stores: Keystore) -> dict[str, object]:
        return {kid: k for s in stores for kid, k in s.signing.items()}

    only_old = sign_document(doc, keys_of(old[0], old[2]))  # type: ignore[arg-type]
    with pytest.raises(UntrustedInputError, match="rotates its root keys"):
        _verify(domain, only_old)
    both = sign_document(doc, keys_of(old[0], old[1]))  # type: ignore[arg-type]  # in both sets
    assert _verify(domain, both).version == 2


def test_every_participant_opens_the_same_pseudonym_key(sealed_domain: DemoDomain) -> None:
    keys = {
        sealed_domain.registry.pseudonym_key(p, sealed_domain.keys(p).encryption)
        for p in ("police", "hub", "mediation.mapo")
    }
    assert len(keys) == 1
    key = next(iter(keys))
    assert key.secret.hex() not in repr(key)
    assert crypto.b64e(key.secret) not in repr(key)


def test_the_newest_valid_encryption_key_is_the_one_sealed_to(domain: DemoDomain) -> None:
    doc = domain.registry.document
    police = next(p for p in doc.participants if p.id == "police")
    fresh = Keystore.generate("police")
    ((kid, raw),) = fresh.public_encryption_keys().items()
    newer = PublicKey(
        kid=kid, use="encrypt", alg="x25519", public=crypto.b64e(raw), valid_from=NOW + timedelta(hours=1)
    )
    updated = police.model_copy(update={"keys": [*police.keys, newer]})
    registry = Registry(
        doc.model_copy(
            update={"participants": [updated if p.id == "police" else p for p in doc.participants]}
        )
    )
    assert registry.encryption_key("police", at=NOW)[0] != kid
    assert registry.encryption_key("police", at=NOW + timedelta(hours=2))[0] == kid


def test_may_publish_follows_the_registry(domain: DemoDomain) -> None:
    domain.registry.check_may_publish("court", "protection_order.decided")
    with pytest.raises(UntrustedInputError, match="not_permitted"):
        domain.registry.check_may_publish("police", "protection_order.decided")
    with pytest.raises(UntrustedInputError, match="unknown_sender"):
        domain.registry.check_may_publish("nobody", "lead.reported")
