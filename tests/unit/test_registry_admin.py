"""Registry changes as pure functions: each makes the next version and leaves the rest alone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from schemas.registry import PublicKey, RegistryDocument
from services import trust
from services.kernel.errors import UsageError
from services.kernel.keystore import Keystore
from services.kernel.pseudonym import PseudonymKey, new_pseudonym_key
from services.kernel.registry import Registry
from services.simulator import district
from services.trust import admin

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
LATER = NOW + timedelta(days=3)
LIFETIME = timedelta(days=30)


def _document(key: PseudonymKey) -> tuple[RegistryDocument, dict[str, Keystore]]:
    roots = []
    for holder in district.ROOT_HOLDERS:
        root = Keystore(trust.ROOT_PREFIX + holder)
        root.add_signing_key()
        roots.append(root)
    stores = {pid: Keystore.generate(pid) for pid in ("plc", "police")}
    document = trust.build_document(
        version=1,
        now=NOW,
        lifetime=LIFETIME,
        roots=trust.roots_of(roots, 2),
        participants={
            pid: (pid, pid, district.may_publish(pid), trust.public_keys(store, valid_from=NOW))
            for pid, store in stores.items()
        },
        policy=district.default_policy(),
        pseudonym_key=key,
    )
    return document, stores


def _fresh_keys(pid: str, at: datetime) -> tuple[Keystore, list[PublicKey]]:
    store = Keystore.generate(pid)
    return store, trust.public_keys(store, valid_from=at)


def test_a_change_makes_the_next_version_issued_now_with_the_same_lifetime() -> None:
    document, _ = _document(new_pseudonym_key(1))
    _, keys = _fresh_keys("police", LATER)
    change = admin.add_keys(document, "police", keys, now=LATER, lifetime=admin.lifetime_of(document))
    assert change.document.version == 2
    assert change.document.issued == LATER
    assert change.document.expires == LATER + LIFETIME
    assert change.document.participants[0] == document.participants[0]  # plc untouched


def test_rotation_retires_only_active_keys_and_leaves_revoked_ones_revoked() -> None:
    document, _ = _document(new_pseudonym_key(1))
    (sign,) = [k.kid for k in document.participants[1].keys if k.use == "sign"]
    revoked = admin.revoke(document, "police", sign, at=NOW, now=NOW, lifetime=LIFETIME).document
    _, keys = _fresh_keys("police", LATER)
    rotated = admin.rotate(revoked, "police", keys, now=LATER, lifetime=LIFETIME).document
    statuses = {k.kid: (k.status, k.valid_until) for k in rotated.participants[1].keys}
    assert statuses[sign] == ("revoked", None)
    (enc,) = [k.kid for k in document.participants[1].keys if k.use == "encrypt"]
    assert statuses[enc] == ("retired", LATER)
    assert [statuses[k.kid] for k in keys] == [("active", None), ("active", None)]


def test_a_change_made_with_a_clock_before_the_current_version_is_refused() -> None:
    document, _ = _document(new_pseudonym_key(1))
    _, keys = _fresh_keys("police", NOW)
    with pytest.raises(UsageError, match="check the system clock"):
        admin.rotate(document, "police", keys, now=NOW - timedelta(days=1), lifetime=LIFETIME)


def test_resealing_skips_a_participant_left_without_an_encryption_key() -> None:
    key = new_pseudonym_key(1)
    document, stores = _document(key)
    (enc,) = [k.kid for k in document.participants[1].keys if k.use == "encrypt"]
    change = admin.revoke(document, "police", enc, at=LATER, now=LATER, lifetime=LIFETIME)
    resealed, skipped = admin.reseal(change.document, key, now=LATER)
    assert skipped == ["police"]
    assert [w.to for w in resealed.pseudonym_key.sealed] == ["plc"]
    assert Registry(resealed).pseudonym_key("plc", stores["plc"].encryption) == key


def test_a_participant_id_that_could_name_another_file_is_refused() -> None:
    document, _ = _document(new_pseudonym_key(1))
    for bad in ("../police", "Police", "a/b", "x.", ""):
        with pytest.raises(UsageError, match="not a participant id"):
            admin.add_participant(
                document,
                participant_id=bad,
                name_zh="某",
                name_en="x",
                may_publish=[],
                keys=[],
                now=LATER,
                lifetime=LIFETIME,
            )
