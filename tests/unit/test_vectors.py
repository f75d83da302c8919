"""Known-answer vectors: the envelope's bytes are reproducible from fixed keys and randomness, and the
production code (cryptography's RFC 9180 HPKE for v1) opens what the generator sealed; v2's wraps are
re-derived here from the formulas of ``schemas/envelope.py`` alone."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.kernel import crypto, envelope
from tests.vectors import generate

pytestmark = pytest.mark.unit

COMMITTED = {
    version: json.loads(path.read_text(encoding="utf-8"))
    for version, path in generate.VECTORS_BY_VERSION.items()
}
VECTORS = [(version, v) for version, doc in COMMITTED.items() for v in doc["vectors"]]


@pytest.mark.parametrize("version", sorted(COMMITTED))
def test_the_committed_vectors_regenerate_byte_for_byte(version: int) -> None:
    path = generate.VECTORS_BY_VERSION[version]
    assert path.read_text(encoding="utf-8") == generate.render(version), (
        "envelope bytes changed: if on purpose, run `python -m tests.vectors.generate` and say why in the commit"
    )


@pytest.mark.parametrize(
    ("version", "vector"), VECTORS, ids=lambda v: v["name"] if isinstance(v, dict) else f"v{v}"
)
def test_every_recipient_of_a_vector_opens_it_with_the_production_code(
    version: int, vector: dict[str, Any]
) -> None:
    registry = generate.test_registry(COMMITTED[version]["participants"])
    value = vector["expected"]["record"].encode()
    verified = envelope.verify(value, registry=registry, now=generate.TIME)
    assert verified.version == version
    assert verified.header_bytes.decode() == vector["expected"]["header_json"]
    assert {k: sorted(v) for k, v in verified.recipients().items()} == vector["recipients"]
    for participant in sorted(set(vector["recipients"]["triage"]) | set(vector["recipients"]["details"])):
        opened = envelope.open_sections(verified, generate.test_keystore(participant))
        for name, content in vector["content"].items():
            if participant in vector["recipients"][name]:
                assert opened.sections[name] == content


def _hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt, ikm, hashlib.sha256).digest()


@pytest.mark.parametrize("vector", COMMITTED[2]["vectors"], ids=lambda v: v["name"])
def test_the_v2_wraps_follow_the_formulas_of_the_wire_format(vector: dict[str, Any]) -> None:
    body = crypto.b64d(json.loads(vector["expected"]["record"])["payload"], what="payload")
    header_bytes, _, sections_bytes = body.partition(b"\n")
    sections = json.loads(sections_bytes)
    (seed,) = vector["entropy"]["epoch_seeds"]
    (salt,) = vector["entropy"]["salts"]
    epoch = X25519PrivateKey.from_private_bytes(bytes.fromhex(seed))
    epk = epoch.public_key().public_bytes_raw()
    assert crypto.b64d(sections["epk"], what="epk") == epk
    present = [name for name in ("triage", "details") if name in sections]
    data_keys = dict(zip(present, vector["entropy"]["data_keys"], strict=True))
    for stanza in sections["recipients"]:
        recipient = generate.test_keystore(stanza["to"]).encryption[stanza["kid"]].public_key()
        shared = epoch.exchange(recipient)
        pair = _hkdf_extract(b"lianfang/v2/pair", shared + epk + recipient.public_bytes_raw())
        info = b"\0".join(
            [
                b"lianfang/v2/wrap",
                bytes.fromhex(salt) + hashlib.sha256(header_bytes).digest(),
                stanza["to"].encode(),
                stanza["kid"].encode(),
                "+".join(stanza["sections"]).encode(),
            ]
        )
        wrap_key = hmac.new(pair, info + b"\x01", hashlib.sha256).digest()
        keys = AESGCM(wrap_key).decrypt(bytes(12), crypto.b64d(stanza["wrap"], what="wrap"), b"")
        assert keys.hex() == "".join(data_keys[name] for name in stanza["sections"])


def test_the_generators_hpke_matches_the_production_hpke() -> None:
    recipient = X25519PrivateKey.from_private_bytes(bytes(range(32)))
    ephemeral = X25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
    sealed = generate.hpke_seal_deterministic(
        ephemeral, crypto.x25519_public_raw(recipient), b"data key bytes", b"info"
    )
    assert crypto.hpke_unwrap(recipient, sealed, b"info") == b"data key bytes"
