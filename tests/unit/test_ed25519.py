"""Every Ed25519 signature is checked by :func:`services.kernel.crypto.ed25519_verifies` (libsodium):
what OpenSSL signs verifies, RFC 8032's vectors hold, and a key of small order signs nothing."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from services.kernel import crypto
from services.kernel.errors import BadSignatureError

pytestmark = pytest.mark.unit

# RFC 8032, section 7.1, TEST 1 (empty message) and TEST 2 (one byte).
RFC8032 = [
    (
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
]

# The identity point: a public key of small order. With R the identity and S zero, the cofactorless
# equation [S]B = R + [k]A holds for every message.
IDENTITY = b"\x01" + bytes(31)
FORGERY = IDENTITY + bytes(32)


@pytest.mark.parametrize(("public", "message", "signature"), RFC8032)
def test_rfc_8032_s_signatures_verify_and_a_changed_byte_does_not(
    public: str, message: str, signature: str
) -> None:
    key, msg, sig = bytes.fromhex(public), bytes.fromhex(message), bytes.fromhex(signature)
    assert crypto.ed25519_verifies(key, sig, msg)
    assert not crypto.ed25519_verifies(key, sig, msg + b"\x00")
    assert not crypto.ed25519_verifies(key, sig[:-1] + bytes([sig[-1] ^ 1]), msg)


@settings(max_examples=50, deadline=None)
@given(message=st.binary(max_size=4096))
def test_whatever_openssl_signs_verifies(message: bytes) -> None:
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes_raw()
    assert crypto.ed25519_verifies(public, key.sign(message), message)


def test_a_key_of_small_order_signs_nothing_though_openssl_would_accept_it() -> None:
    # Why the check is libsodium's: OpenSSL accepts this signature over any message.
    Ed25519PublicKey.from_public_bytes(IDENTITY).verify(FORGERY, b"any message")

    assert not crypto.ed25519_verifies(IDENTITY, FORGERY, b"any message")
    with pytest.raises(BadSignatureError):
        crypto.verify_signature(IDENTITY, FORGERY, "application/vnd.lianfang.event+json", b"{}")


def test_a_key_or_signature_of_the_wrong_length_does_not_verify() -> None:
    public, message, signature = (bytes.fromhex(x) for x in RFC8032[0])
    assert not crypto.ed25519_verifies(public[:31], signature, message)
    assert not crypto.ed25519_verifies(public, signature[:63], message)
    assert not crypto.ed25519_verifies(public, signature + b"\x00", message)
