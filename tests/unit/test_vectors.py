"""Known-answer vectors: the envelope's bytes are reproducible from fixed keys and randomness, and the
production code (cryptography's RFC 9180 HPKE) opens what the generator's own HPKE sealed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.kernel import envelope
from tests.vectors import generate

pytestmark = pytest.mark.unit

COMMITTED = json.loads(generate.VECTORS.read_text(encoding="utf-8"))


def test_the_committed_vectors_regenerate_byte_for_byte() -> None:
    assert generate.VECTORS.read_text(encoding="utf-8") == generate.render(), (
        "envelope bytes changed: if on purpose, run `python -m tests.vectors.generate` and say why in the commit"
    )


@pytest.mark.parametrize("vector", COMMITTED["vectors"], ids=lambda v: v["name"])
def test_every_recipient_of_a_vector_opens_it_with_the_production_code(vector: dict[str, Any]) -> None:
    registry = generate.test_registry(COMMITTED["participants"])
    value = vector["expected"]["record"].encode()
    verified = envelope.verify(value, registry=registry, now=generate.TIME)
    assert verified.header_bytes.decode() == vector["expected"]["header_json"]
    assert {k: sorted(v) for k, v in verified.recipients().items()} == vector["recipients"]
    for participant in sorted(set(vector["recipients"]["triage"]) | set(vector["recipients"]["details"])):
        opened = envelope.open_sections(verified, generate.test_keystore(participant))
        for name, content in vector["content"].items():
            if participant in vector["recipients"][name]:
                assert opened.sections[name] == content


def test_the_generators_hpke_matches_the_production_hpke() -> None:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from services.kernel import crypto

    recipient = X25519PrivateKey.from_private_bytes(bytes(range(32)))
    ephemeral = X25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
    sealed = generate.hpke_seal_deterministic(
        ephemeral, crypto.x25519_public_raw(recipient), b"data key bytes", b"info"
    )
    assert crypto.hpke_unwrap(recipient, sealed, b"info") == b"data key bytes"
