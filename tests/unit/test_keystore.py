"""Private keys at rest: the passphrase-encrypted keystore file."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.kernel.errors import MalformedError, TooLargeError, UsageError
from services.kernel.keystore import MAX_KEYSTORE_BYTES, KdfParams, Keystore, key_id
from services.trust.files import load_keystore, save_keystore

pytestmark = pytest.mark.unit

FAST = KdfParams.for_tests()
PASSPHRASE = "正确 horse battery staple"


@pytest.fixture
def store() -> Keystore:
    store = Keystore.generate("police")
    store.add_signing_key()
    store.add_encryption_key()
    return store


def private_material(store: Keystore) -> dict[str, dict[str, bytes]]:
    return {
        "signing": {kid: sk.private_bytes_raw() for kid, sk in store.signing.items()},
        "encryption": {kid: ek.private_bytes_raw() for kid, ek in store.encryption.items()},
    }


def edited(data: bytes, edit: dict[str, object]) -> bytes:
    document = json.loads(data)
    document.update(edit)
    return json.dumps(document).encode()


def test_a_key_id_is_the_first_sixteen_hex_characters_of_the_sha256_of_the_public_key() -> None:
    raw = bytes(range(32))
    assert key_id(raw) == hashlib.sha256(raw).hexdigest()[:16]
    with pytest.raises(UsageError):
        key_id(raw[:31])


def test_a_generated_keystore_files_each_key_under_its_key_id(store: Keystore) -> None:
    assert len(store.signing) == 2
    assert len(store.encryption) == 2
    for kid, public in (store.public_signing_keys() | store.public_encryption_keys()).items():
        assert len(public) == 32
        assert key_id(public) == kid


def test_saving_and_loading_keeps_every_key(store: Keystore, tmp_path: Path) -> None:
    path = tmp_path / "police.keystore"
    save_keystore(store, path, PASSPHRASE, kdf=FAST)
    loaded = load_keystore(path, PASSPHRASE)
    assert loaded.participant == "police"
    assert private_material(loaded) == private_material(store)
    assert loaded.public_signing_keys() == store.public_signing_keys()
    assert loaded.public_encryption_keys() == store.public_encryption_keys()


def test_the_file_has_the_documented_fields(store: Keystore) -> None:
    document = json.loads(store.to_bytes(PASSPHRASE, kdf=FAST))
    assert list(document) == ["v", "participant", "kdf", "nonce", "ciphertext"]
    assert document["v"] == 1
    assert document["participant"] == "police"
    assert document["kdf"] == {
        "alg": "argon2id",
        "salt": document["kdf"]["salt"],
        "iterations": 1,
        "lanes": 1,
        "memory_cost_kib": 8192,
    }
    assert len(base64.b64decode(document["nonce"])) == 12


def test_the_default_kdf_is_argon2id_with_64_mib_three_passes_and_four_lanes() -> None:
    assert KdfParams() == KdfParams(iterations=3, lanes=4, memory_cost_kib=65536)


def test_a_signing_key_loaded_back_still_signs_for_its_public_key(store: Keystore) -> None:
    loaded = Keystore.from_bytes(store.to_bytes(PASSPHRASE, kdf=FAST), PASSPHRASE)
    kid = next(iter(store.signing))
    signature = loaded.signing_key(kid).sign(b"lead.reported")
    store.signing_key(kid).public_key().verify(signature, b"lead.reported")


def test_a_wrong_passphrase_is_refused(store: Keystore) -> None:
    data = store.to_bytes(PASSPHRASE, kdf=FAST)
    with pytest.raises(UsageError, match="wrong passphrase for the keystore of police"):
        Keystore.from_bytes(data, "wrong horse battery staple")


def test_a_full_width_passphrase_opens_a_file_saved_with_its_half_width_form(store: Keystore) -> None:
    data = store.to_bytes("abc 123", kdf=FAST)
    assert Keystore.from_bytes(data, "ａｂｃ　１２３").participant == "police"


def test_an_empty_passphrase_is_refused_when_saving(store: Keystore) -> None:
    with pytest.raises(UsageError, match="empty passphrase"):
        store.to_bytes("", kdf=FAST)


def test_flipping_a_byte_of_the_ciphertext_is_refused(store: Keystore) -> None:
    data = store.to_bytes(PASSPHRASE, kdf=FAST)
    ciphertext = bytearray(base64.b64decode(json.loads(data)["ciphertext"]))
    ciphertext[len(ciphertext) // 2] ^= 0x01
    tampered = edited(data, {"ciphertext": base64.b64encode(bytes(ciphertext)).decode()})
    with pytest.raises(UsageError, match="altered"):
        Keystore.from_bytes(tampered, PASSPHRASE)


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param({"participant": "procuratorate"}, id="editing the participant is refused"),
        pytest.param({"kdf_iterations": 2}, id="lowering or raising the kdf cost is refused"),
        pytest.param({"kdf_salt": "AAAAAAAAAAAAAAAAAAAAAA=="}, id="replacing the salt is refused"),
    ],
)
def test_editing_the_header_is_refused(store: Keystore, edit: dict[str, object]) -> None:
    document = json.loads(store.to_bytes(PASSPHRASE, kdf=FAST))
    for field, value in edit.items():
        if field.startswith("kdf_"):
            document["kdf"][field.removeprefix("kdf_")] = value
        else:
            document[field] = value
    with pytest.raises(UsageError, match="altered"):
        Keystore.from_bytes(json.dumps(document).encode(), PASSPHRASE)


def test_the_saved_file_is_readable_by_its_owner_only(store: Keystore, tmp_path: Path) -> None:
    path = tmp_path / "police.keystore"
    save_keystore(store, path, PASSPHRASE, kdf=FAST)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["police.keystore"]  # no temporary file left behind


def test_saving_over_an_existing_file_replaces_it_and_keeps_it_private(
    store: Keystore, tmp_path: Path
) -> None:
    path = tmp_path / "police.keystore"
    path.write_text("old")
    path.chmod(0o644)
    save_keystore(store, path, PASSPHRASE, kdf=FAST)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_keystore(path, PASSPHRASE).public_signing_keys() == store.public_signing_keys()


def test_the_repr_names_the_participant_and_key_ids_and_no_key_material(store: Keystore) -> None:
    texts = (repr(store), str(store), f"{store}")
    for text in texts:
        assert "police" in text
        for kid in [*store.signing, *store.encryption]:
            assert kid in text
    for keys in private_material(store).values():
        for raw in keys.values():
            for encoded in (
                raw.hex(),
                raw.hex().upper(),
                base64.b64encode(raw).decode(),
                base64.urlsafe_b64encode(raw).decode().rstrip("="),
                repr(raw),
            ):
                assert all(encoded not in text for text in texts)


def test_the_file_holds_no_key_material_in_the_clear(store: Keystore) -> None:
    data = store.to_bytes(PASSPHRASE, kdf=FAST)
    for keys in private_material(store).values():
        for raw in keys.values():
            assert raw not in data
            assert base64.b64encode(raw) not in data


def test_asking_for_a_missing_key_names_the_keys_there_are(store: Keystore) -> None:
    with pytest.raises(UsageError, match="no signing key 'ffffffffffffffff'"):
        store.signing_key("ffffffffffffffff")
    with pytest.raises(UsageError, match="no encryption key"):
        store.encryption_key(next(iter(store.signing)))


def test_a_key_filed_under_the_wrong_id_is_refused(store: Keystore) -> None:
    kid, key = next(iter(store.signing.items()))
    with pytest.raises(UsageError, match="different key id"):
        Keystore("police", signing={"0000000000000000": key})
    assert Keystore("police", signing={kid: key}).signing_key(kid) is key


def test_a_participant_id_that_is_not_lower_case_is_refused() -> None:
    with pytest.raises(UsageError, match="participant id"):
        Keystore("Police")
    assert Keystore("mediation.town01").participant == "mediation.town01"


def test_a_truncated_file_is_malformed(store: Keystore, tmp_path: Path) -> None:
    path = tmp_path / "police.keystore"
    save_keystore(store, path, PASSPHRASE, kdf=FAST)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MalformedError):
        load_keystore(path, PASSPHRASE)


@pytest.mark.parametrize(
    ("data", "edit"),
    [
        pytest.param(b"", None, id="an empty file"),
        pytest.param(b"\xff\xfe not utf-8", None, id="bytes that are not text"),
        pytest.param(b"[1, 2]", None, id="a JSON array"),
        pytest.param(None, {"v": 2}, id="an unknown version"),
        pytest.param(None, {"v": True}, id="a version that is a boolean"),
        pytest.param(None, {"participant": "Not An Id"}, id="a participant that is not an id"),
        pytest.param(None, {"nonce": "not base64!"}, id="a nonce that is not base64"),
        pytest.param(None, {"nonce": "AAAA"}, id="a nonce of the wrong length"),
        pytest.param(None, {"ciphertext": 42}, id="a ciphertext that is not a string"),
        pytest.param(None, {"extra": 1}, id="an unknown field"),
        pytest.param(None, {"kdf": {"alg": "scrypt"}}, id="another kdf"),
        pytest.param(
            None,
            {
                "kdf": {
                    "alg": "argon2id",
                    "salt": "AAAAAAAAAAAAAAAAAAAAAA==",
                    "iterations": 1,
                    "lanes": 1,
                    "memory_cost_kib": 1 << 40,
                }
            },
            id="a kdf asking for a terabyte of memory",
        ),
        pytest.param(
            None,
            {
                "kdf": {
                    "alg": "argon2id",
                    "salt": "AAAA",
                    "iterations": 1,
                    "lanes": 1,
                    "memory_cost_kib": 8192,
                }
            },
            id="a salt that is too short",
        ),
    ],
)
def test_a_file_that_is_not_a_keystore_is_malformed(
    store: Keystore, data: bytes | None, edit: dict[str, object] | None
) -> None:
    if data is None:
        assert edit is not None
        data = edited(store.to_bytes(PASSPHRASE, kdf=FAST), edit)
    with pytest.raises(MalformedError):
        Keystore.from_bytes(data, PASSPHRASE)


def test_a_field_given_twice_is_malformed(store: Keystore) -> None:
    data = store.to_bytes(PASSPHRASE, kdf=FAST)
    doubled = data.replace(b'"v": 1,', b'"v": 1, "v": 1,', 1)
    assert doubled != data
    with pytest.raises(MalformedError, match="repeats"):
        Keystore.from_bytes(doubled, PASSPHRASE)


def test_an_oversized_file_is_refused_before_parsing() -> None:
    with pytest.raises(TooLargeError):
        Keystore.from_bytes(b" " * (MAX_KEYSTORE_BYTES + 1), PASSPHRASE)


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no keystore"):
        load_keystore(tmp_path / "absent.keystore", PASSPHRASE)


@pytest.mark.parametrize(
    "params",
    [
        {"iterations": 0},
        {"lanes": 0},
        {"memory_cost_kib": 7, "lanes": 1},
        {"memory_cost_kib": 16, "lanes": 4},
        {"iterations": True},
    ],
)
def test_kdf_parameters_argon2id_cannot_use_are_refused(params: dict[str, int]) -> None:
    with pytest.raises(UsageError, match="Argon2id"):
        KdfParams(**params)


VALID_FILE = Keystore.generate("police").to_bytes(PASSPHRASE, kdf=FAST)


@settings(max_examples=200, deadline=None)
@given(position=st.integers(min_value=0, max_value=len(VALID_FILE) - 1), bit=st.integers(0, 7))
def test_flipping_any_bit_of_the_file_is_refused(position: int, bit: int) -> None:
    damaged = bytearray(VALID_FILE)
    damaged[position] ^= 1 << bit
    with pytest.raises((MalformedError, UsageError)):
        Keystore.from_bytes(bytes(damaged), PASSPHRASE)


def test_a_base64_value_with_spare_bits_set_is_malformed(store: Keystore) -> None:
    data = store.to_bytes(PASSPHRASE, kdf=FAST)
    salt = json.loads(data)["kdf"]["salt"]
    assert salt.endswith("==")  # 16 bytes: the last character before the padding has 4 spare bits
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    spare = alphabet[alphabet.index(salt[-3]) ^ 1]
    other = salt[:-3] + spare + "=="
    assert base64.b64decode(other) == base64.b64decode(salt)
    with pytest.raises(MalformedError, match="canonical"):
        Keystore.from_bytes(data.replace(salt.encode(), other.encode()), PASSPHRASE)
