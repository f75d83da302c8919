"""Root rotation as TUF does it, thresholds over distinct keys, and the record of the highest registry a
process trusted: the pure judging (services.kernel.registry) and the registry in force that holds it."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from schemas.registry import RegistryDocument, RootKey, Roots
from services import trust
from services.bus.registry_follower import RegistryInForce
from services.kernel import crypto
from services.kernel.errors import UntrustedInputError, UsageError
from services.kernel.keystore import Keystore
from services.kernel.registry import Registry, judge_start, sign_document
from services.trust.trusted import TrustedRecord, record_name
from tests.kit import NOW, DemoDomain

pytestmark = pytest.mark.unit


def _new_roots(*holders: str) -> list[Keystore]:
    stores = []
    for holder in holders:
        store = Keystore(trust.ROOT_PREFIX + holder)
        store.add_signing_key()
        stores.append(store)
    return stores


def _keys(*stores: Keystore) -> dict[str, Any]:
    return {kid: key for store in stores for kid, key in store.signing.items()}


def _doc(domain: DemoDomain, version: int, roots: Roots | None = None) -> RegistryDocument:
    changes: dict[str, Any] = {"version": version}
    if roots is not None:
        changes["roots"] = roots
    return domain.registry.document.model_copy(update=changes)


class Rotation:
    """R1 (the demo's three roots, 2 of 3) → R2 (three new roots, 2 of 3) at v2, signed by both."""

    def __init__(self, domain: DemoDomain) -> None:
        self.domain = domain
        self.r1 = domain.trust.root_keystores()
        self.r2 = _new_roots("court", "procuratorate", "justice")
        self.roots2 = trust.roots_of(self.r2, threshold=2)
        self.v1 = Registry.from_bytes(
            domain.trust.registry_path.read_bytes(), trusted_roots=domain.trust.trusted_roots(), now=NOW
        )
        self.v2 = sign_document(_doc(domain, 2, self.roots2), _keys(*self.r1[:2], *self.r2[:2]))

    def v3_by_r1_putting_r1_back(self) -> bytes:
        return sign_document(_doc(self.domain, 3, self.domain.trust.trusted_roots()), _keys(*self.r1[:2]))

    def v3_by_r2(self) -> bytes:
        return sign_document(_doc(self.domain, 3, self.roots2), _keys(*self.r2[:2]))

    def in_force(self, record: TrustedRecord | None = None) -> RegistryInForce:
        return RegistryInForce(
            self.v1, trusted_roots=self.v1.document.roots, clock=lambda: NOW, record=record, service="router"
        )


def test_after_a_root_rotation_a_registry_signed_by_the_old_roots_alone_that_puts_them_back_is_refused(
    domain: DemoDomain,
) -> None:
    rotation = Rotation(domain)
    held = rotation.in_force()
    assert held.offer(rotation.v2).reason == "newer"
    decision = held.offer(rotation.v3_by_r1_putting_r1_back())
    assert (decision.reason, held.current.version) == ("bad_signature", 2)


def test_after_a_root_rotation_a_registry_signed_by_the_new_roots_alone_is_taken(domain: DemoDomain) -> None:
    rotation = Rotation(domain)
    held = rotation.in_force()
    held.offer(rotation.v2)
    assert held.offer(rotation.v3_by_r2()).reason == "newer"
    assert held.trusted_roots == rotation.roots2


def test_a_rotation_signed_by_the_new_roots_alone_is_refused_and_the_roots_stay(domain: DemoDomain) -> None:
    rotation = Rotation(domain)
    held = rotation.in_force()
    only_new = sign_document(_doc(domain, 2, rotation.roots2), _keys(*rotation.r2))
    assert held.offer(only_new).reason == "bad_signature"
    assert held.trusted_roots == domain.trust.trusted_roots()


def test_a_rotation_signed_by_the_old_roots_alone_is_refused(domain: DemoDomain) -> None:
    rotation = Rotation(domain)
    only_old = sign_document(_doc(domain, 2, rotation.roots2), _keys(*rotation.r1))
    assert rotation.in_force().offer(only_old).reason == "bad_signature"


def _twice_listed(domain: DemoDomain) -> tuple[Keystore, dict[str, Any]]:
    (alone,) = _new_roots("plc")
    ((_, raw),) = alone.public_signing_keys().items()
    public = crypto.b64e(raw)
    fields = {
        "threshold": 2,
        "keys": [
            {"kid": "root-a", "holder": "plc", "public": public},
            {"kid": "root-b", "holder": "plc", "public": public},
        ],
    }
    return alone, fields


def test_a_root_key_listed_under_two_key_ids_is_refused_at_load(domain: DemoDomain) -> None:
    _, fields = _twice_listed(domain)
    with pytest.raises(ValidationError, match="listed twice"):
        Roots.model_validate(fields)


def test_a_threshold_larger_than_the_number_of_root_keys_is_refused_at_load(domain: DemoDomain) -> None:
    roots = domain.trust.trusted_roots().model_dump()
    with pytest.raises(ValidationError, match="cannot be met by 3 root keys"):
        Roots.model_validate({**roots, "threshold": 4})


def test_one_key_under_two_key_ids_does_not_meet_a_threshold_of_two(domain: DemoDomain) -> None:
    """Even a root set built past the schema's check (model_construct) counts distinct keys."""
    alone, fields = _twice_listed(domain)
    keys = [RootKey.model_validate(k) for k in fields["keys"]]
    roots = Roots.model_construct(threshold=2, keys=keys)
    doc = _doc(domain, 1, roots)
    payload = doc.model_dump_json(by_alias=True, indent=2).encode() + b"\n"
    ((_, key),) = alone.signing.items()
    data = (
        b'{"payloadType":"application/vnd.lianfang.registry.v1","signatures":['
        + b",".join(
            b'{"keyid":"%s","sig":"%s"}'
            % (
                kid.encode(),
                crypto.b64e(crypto.sign(key, "application/vnd.lianfang.registry.v1", payload)).encode(),
            )
            for kid in ("root-a", "root-b")
        )
        + b"]}\n"
        + payload
    )
    with pytest.raises(UntrustedInputError, match=r"^\[bad_signature\].*1 valid root signature"):
        Registry.from_bytes(data, trusted_roots=roots, now=NOW)


def test_a_root_set_with_a_key_listed_twice_is_refused_at_signing(domain: DemoDomain) -> None:
    alone, fields = _twice_listed(domain)
    keys = [RootKey.model_validate(k) for k in fields["keys"]]
    doc = _doc(domain, 2, Roots.model_construct(threshold=2, keys=keys))
    with pytest.raises(UsageError, match="listed twice"):
        sign_document(doc, _keys(alone))


def test_an_impossible_threshold_is_refused_at_signing(domain: DemoDomain) -> None:
    roots = domain.trust.trusted_roots()
    doc = _doc(domain, 2, roots.model_copy(update={"threshold": 4}))
    with pytest.raises(UsageError, match="cannot be met"):
        sign_document(doc, _keys(*domain.trust.root_keystores()))
    with pytest.raises(UsageError, match="cannot be met"):
        trust.roots_of(domain.trust.root_keystores(), threshold=4)


# -- the record of the highest registry trusted, and the start


def _record(tmp_path: Path) -> TrustedRecord:
    return TrustedRecord(tmp_path, record_name("router", "lianfang.registry.v1"))


def test_every_registry_taken_is_recorded_and_a_start_never_goes_below_it(
    domain: DemoDomain, tmp_path: Path
) -> None:
    rotation = Rotation(domain)
    record = _record(tmp_path)
    held = rotation.in_force(record)
    held.offer(rotation.v2)
    held.offer(rotation.v3_by_r2())
    recorded = record.load(NOW)
    assert recorded is not None
    assert recorded.version == 3
    start = judge_start(
        domain.trust.registry_path.read_bytes(), recorded, anchor=rotation.v1.document.roots, now=NOW
    )
    assert start.registry.version == 3
    assert start.refused is not None
    assert start.refused.reason == "older"


def test_a_start_refuses_a_home_registry_not_chained_to_the_recorded_roots(
    domain: DemoDomain, tmp_path: Path
) -> None:
    rotation = Rotation(domain)
    record = _record(tmp_path)
    rotation.in_force(record).offer(rotation.v2)
    start = judge_start(
        rotation.v3_by_r1_putting_r1_back(), record.load(NOW), anchor=rotation.v1.document.roots, now=NOW
    )
    assert start.registry.version == 2
    assert start.refused is not None
    assert start.refused.reason == "bad_signature"


def test_a_start_takes_a_newer_chained_home_registry(domain: DemoDomain, tmp_path: Path) -> None:
    rotation = Rotation(domain)
    record = _record(tmp_path)
    rotation.in_force(record).offer(rotation.v2)
    start = judge_start(rotation.v3_by_r2(), record.load(NOW), anchor=rotation.v1.document.roots, now=NOW)
    assert (start.registry.version, start.refused) == (3, None)


def test_a_record_is_never_lowered_by_a_process_still_at_an_older_version(
    domain: DemoDomain, tmp_path: Path
) -> None:
    rotation = Rotation(domain)
    record = _record(tmp_path)
    v2 = Registry.from_bytes(rotation.v2, trusted_roots=rotation.v1.document.roots, now=NOW)
    assert record.save(v2, NOW)
    assert not record.save(rotation.v1, NOW)
    recorded = record.load(NOW)
    assert recorded is not None
    assert recorded.version == 2


def test_an_edited_record_stops_the_start_with_the_fix_named(domain: DemoDomain, tmp_path: Path) -> None:
    record = _record(tmp_path)
    record.save(Rotation(domain).v1, NOW)
    record.path.write_bytes(record.path.read_bytes().replace("区公安局".encode(), "区公安分局".encode()))
    with pytest.raises(UsageError, match="remove it to trust them again"):
        record.load(NOW + timedelta(seconds=1))
