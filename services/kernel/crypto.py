"""Cryptographic primitives and strict base64, with third-party errors translated at this edge.

Everything here is pure: bytes in, bytes out. The suite is fixed (no algorithm agility on the wire):
Ed25519 signatures over DSSE's pre-authentication encoding (made with OpenSSL, checked with libsodium:
:func:`ed25519_verifies`), AES-256-GCM for sections, and to wrap data
keys HPKE base mode (RFC 9180: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM) in envelope v1,
X25519 with HKDF-SHA256 (RFC 5869) and AES-256-GCM in envelope v2 (``docs/envelope.md``). Argon2id
(keystores, console passwords) runs only through :func:`argon2id`, :func:`argon2id_phc` and
:func:`argon2id_verify_phc`, which keep OpenSSL's Argon2 lanes from deadlocking (see there).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
import threading
from typing import Final

import pysodium
from cryptography.exceptions import InvalidKey, InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from schemas.common import b64decode_strict, b64encode
from services.kernel.errors import BadSignatureError, DecryptFailedError, MalformedError

HPKE_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
DATA_KEY_BYTES = 32
NONCE_BYTES = 12


# --------------------------------------------------------------------------- strict decoding


def b64e(data: bytes) -> str:
    return b64encode(data)


def b64d(text: str, *, what: str, length: int | None = None) -> bytes:
    """Decode standard base64 strictly (:func:`schemas.common.b64decode_strict`: the alphabet only,
    padding where it belongs); a refusal is a :class:`MalformedError` naming ``what``, never the text."""
    try:
        raw = b64decode_strict(text)
    except ValueError as e:
        raise MalformedError(f"{what} is {e}") from e
    if length is not None and len(raw) != length:
        raise MalformedError(f"{what} must be {length} bytes, got {len(raw)}")
    return raw


# --------------------------------------------------------------------------- signatures


def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what a signature actually covers."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(body), body)


def sign(key: Ed25519PrivateKey, payload_type: str, body: bytes) -> bytes:
    return key.sign(pae(payload_type, body))


ED25519_PUBLIC_BYTES: Final = 32
ED25519_SIGNATURE_BYTES: Final = 64


def ed25519_verifies(public_raw: bytes, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` is an Ed25519 signature of ``message`` by the raw public key ``public_raw``.

    Every Ed25519 signature Lianfang checks is checked here, with libsodium's
    ``crypto_sign_verify_detached`` (through ``pysodium``, which the pseudonyms' ristretto255 already
    needs): it takes half the time of OpenSSL's (65 against 128 µs over a 2.5 KiB record in
    ``tests.bench -k envelope`` on the idle benchmark machine), and it is the stricter of the two.
    Besides what both refuse (an ``S`` not below the group order, a key that is not a point), it
    refuses public keys and ``R`` values of small order, and keys not canonically encoded: under
    OpenSSL the identity point as a key, with ``R`` the identity and ``S`` zero, verifies over any
    message at all (a test pins it). Both check the same cofactorless equation and compare ``R`` byte
    for byte, so libsodium's extra refusals are all it changes: what an honest signer makes (OpenSSL
    signs here) verifies under either.
    """
    if len(public_raw) != ED25519_PUBLIC_BYTES or len(signature) != ED25519_SIGNATURE_BYTES:
        return False
    try:
        pysodium.crypto_sign_verify_detached(signature, message, public_raw)
    except ValueError:
        return False
    return True


def verify_signature(public_raw: bytes, signature: bytes, payload_type: str, body: bytes) -> None:
    """Verify over the exact bytes given; raises :class:`BadSignatureError`."""
    if not ed25519_verifies(public_raw, signature, pae(payload_type, body)):
        raise BadSignatureError("the signature does not match the signed bytes")


# --------------------------------------------------------------------------- sealing


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def aead_encrypt(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM; the caller guarantees a fresh (key, nonce) pair (each data key is used once)."""
    return AESGCM(key).encrypt(nonce, plaintext, aad)


def aead_open(key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, aad)
    except (InvalidTag, ValueError) as e:
        raise DecryptFailedError("a sealed section failed authentication") from e


def hpke_wrap(recipient_public_raw: bytes, plaintext: bytes, info: bytes) -> bytes:
    """HPKE base-mode single-shot encryption to an X25519 public key (enc || ciphertext)."""
    public = X25519PublicKey.from_public_bytes(recipient_public_raw)
    return HPKE_SUITE.encrypt(plaintext, public, info=info)


def hpke_unwrap(private: X25519PrivateKey, sealed: bytes, info: bytes) -> bytes:
    try:
        return HPKE_SUITE.decrypt(sealed, private, info=info)
    except (InvalidTag, ValueError) as e:
        raise DecryptFailedError("a wrapped key could not be opened with our key") from e


def x25519_agree(private: X25519PrivateKey, peer_public_raw: bytes) -> bytes:
    """X25519 Diffie-Hellman; a peer key of small order (an all-zero secret) is a
    :class:`DecryptFailedError`, as is a peer key that is not 32 bytes."""
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer_public_raw))
    except ValueError as e:
        raise DecryptFailedError("no shared secret with this key (not a valid X25519 public key)") from e


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """HKDF-SHA256's extract step (RFC 5869): a 32-byte pseudorandom key."""
    return hmac.digest(salt, ikm, hashlib.sha256)


def hkdf_expand32(prk: bytes, info: bytes) -> bytes:
    """HKDF-SHA256's expand step for one 32-byte output (RFC 5869: T(1) = HMAC(PRK, info || 0x01))."""
    return hmac.digest(prk, info + b"\x01", hashlib.sha256)


def ed25519_public_raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def x25519_public_raw(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


# --------------------------------------------------------------------------- Argon2id

# Why one lock: with OpenSSL 3.2+ (cryptography 50 links OpenSSL 4), a derivation with more than one lane
# runs its lanes on threads of OpenSSL's process-wide thread pool. Two such derivations at once never
# return: both threads wait in ``ossl_crypto_thread_start`` on the pool's one condition variable, each
# holding threads the other waits for (seen with gdb; reproduced with lanes 2 and 4, never with lanes 1,
# which runs on the caller's thread). So multi-lane derivations run one at a time in a process, and
# single-lane ones, which the console's passwords use, run in parallel.
_MULTI_LANE: Final = threading.Lock()
_PHC_LANES: Final = re.compile(r"\$argon2id\$v=19\$m=\d+,t=\d+,p=(\d+)\$")


def _lane_guard(lanes: int) -> contextlib.AbstractContextManager[object]:
    return _MULTI_LANE if lanes != 1 else contextlib.nullcontext()


def argon2id(
    secret: bytes, *, salt: bytes, length: int, iterations: int, lanes: int, memory_kib: int
) -> bytes:
    """The raw Argon2id key of ``secret`` (RFC 9106)."""
    kdf = Argon2id(salt=salt, length=length, iterations=iterations, lanes=lanes, memory_cost=memory_kib)
    with _lane_guard(lanes):
        return kdf.derive(secret)


def argon2id_phc(
    secret: bytes, *, salt: bytes, length: int, iterations: int, lanes: int, memory_kib: int
) -> str:
    """The PHC string of ``secret``'s Argon2id hash (``$argon2id$v=19$m=..,t=..,p=..$salt$hash``)."""
    kdf = Argon2id(salt=salt, length=length, iterations=iterations, lanes=lanes, memory_cost=memory_kib)
    with _lane_guard(lanes):
        return kdf.derive_phc_encoded(secret)


def argon2id_verify_phc(secret: bytes, phc: str) -> bool:
    """Whether ``secret`` matches a PHC string; a malformed string matches nothing. The hash's own
    parameters decide the cost, so a string that does not say its lanes is treated as multi-lane."""
    found = _PHC_LANES.match(phc)
    lanes = int(found.group(1)) if found is not None else 0
    try:
        with _lane_guard(lanes):
            Argon2id.verify_phc_encoded(secret, phc)
    except (InvalidKey, ValueError):
        return False
    return True
