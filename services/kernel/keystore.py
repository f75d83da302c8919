"""One participant's private keys at rest, encrypted under a passphrase.

A keystore holds Ed25519 signing keys and X25519 encryption keys, each under its key id
(:func:`key_id`, the id the trust registry lists). On disk it is one JSON document::

    {"v": 1, "participant": "police",
     "kdf": {"alg": "argon2id", "salt": b64, "iterations": 3, "lanes": 4, "memory_cost_kib": 65536},
     "nonce": b64, "ciphertext": b64}

The ciphertext is AES-256-GCM of a JSON document of the raw private keys, under a key that Argon2id
derives from the passphrase; the header (``v``, ``participant``, ``kdf``) is the associated data, so a
file whose participant or KDF parameters were edited does not decrypt. Neither the repr nor any message
shows key bytes, and nothing here logs. Pure: :mod:`services.trust.files` reads and writes the files.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.kernel import crypto, jsonx
from services.kernel.errors import MalformedError, TooLargeError, UsageError

__all__ = [
    "KEYSTORE_VERSION",
    "MAX_KEYSTORE_BYTES",
    "KdfParams",
    "Keystore",
    "key_id",
]

KEYSTORE_VERSION: Final = 1
MAX_KEYSTORE_BYTES: Final = 1 << 20
"""Refuse larger files before parsing: a keystore of a few hundred keys is some tens of KiB."""

_KEY_LENGTH: Final = 32
_SALT_LENGTH: Final = 16
_NONCE_LENGTH: Final = 12
_HEADER_KEYS: Final = frozenset({"v", "participant", "kdf", "nonce", "ciphertext"})
_KDF_KEYS: Final = frozenset({"alg", "salt", "iterations", "lanes", "memory_cost_kib"})
_PAYLOAD_KEYS: Final = frozenset({"signing", "encryption"})
_PARTICIPANT: Final = re.compile(r"[a-z0-9][a-z0-9_.-]{0,127}")

# Ceilings on KDF parameters, so that a hostile file cannot make loading take all memory or hours.
_MAX_ITERATIONS: Final = 64
_MAX_LANES: Final = 64
_MAX_MEMORY_KIB: Final = 4 * 1024 * 1024


def key_id(public_raw: bytes) -> str:
    """The key id of a raw 32-byte Ed25519 or X25519 public key: 16 hex characters of its SHA-256."""
    if len(public_raw) != _KEY_LENGTH:
        raise UsageError(f"a key id is computed over a raw {_KEY_LENGTH}-byte public key")
    return hashlib.sha256(public_raw).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class KdfParams:
    """Argon2id cost parameters (RFC 9106). The defaults are its second recommended option (64 MiB)."""

    iterations: int = 3
    lanes: int = 4
    memory_cost_kib: int = 65536

    def __post_init__(self) -> None:
        problem = _kdf_problem(self.iterations, self.lanes, self.memory_cost_kib)
        if problem is not None:
            raise UsageError(problem)

    @classmethod
    def for_tests(cls) -> KdfParams:
        """A cheap preset (8 MiB, one pass) that keeps test suites fast. Never use it for real keys."""
        return cls(iterations=1, lanes=1, memory_cost_kib=8192)


def _kdf_problem(iterations: object, lanes: object, memory_cost_kib: object) -> str | None:
    for name, value, ceiling in (
        ("iterations", iterations, _MAX_ITERATIONS),
        ("lanes", lanes, _MAX_LANES),
        ("memory_cost_kib", memory_cost_kib, _MAX_MEMORY_KIB),
    ):
        if not _is_int_in(value, 1, ceiling):
            return f"Argon2id {name} must be an integer from 1 to {ceiling}"
    if isinstance(lanes, int) and isinstance(memory_cost_kib, int) and memory_cost_kib < 8 * lanes:
        return "Argon2id memory_cost_kib must be at least 8 KiB per lane"
    return None


def _is_int_in(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


class Keystore:
    """The private signing (Ed25519) and encryption (X25519) keys of one participant, by key id."""

    participant: str
    signing: dict[str, Ed25519PrivateKey]
    encryption: dict[str, X25519PrivateKey]
    pair_keys: dict[tuple[str, bytes], bytes]
    """Keys agreed between our encryption keys and senders' epoch keys (envelope v2), kept in memory
    only, bounded by :func:`services.kernel.envelope.open_sections`."""

    def __init__(
        self,
        participant: str,
        signing: Mapping[str, Ed25519PrivateKey] | None = None,
        encryption: Mapping[str, X25519PrivateKey] | None = None,
    ) -> None:
        if _PARTICIPANT.fullmatch(participant) is None:
            raise UsageError(
                "a participant id is lower-case letters, digits, '_', '.' and '-' (such as "
                "'police' or 'mediation.town01'), at most 128 characters"
            )
        self.participant = participant
        self.signing = dict(signing or {})
        self.encryption = dict(encryption or {})
        self.pair_keys = {}
        for kid, sk in self.signing.items():
            if key_id(sk.public_key().public_bytes_raw()) != kid:
                raise UsageError(f"signing key filed under {kid!r} has a different key id")
        for kid, ek in self.encryption.items():
            if key_id(ek.public_key().public_bytes_raw()) != kid:
                raise UsageError(f"encryption key filed under {kid!r} has a different key id")

    @classmethod
    def generate(cls, participant: str) -> Keystore:
        """A new keystore with one fresh signing key and one fresh encryption key."""
        store = cls(participant)
        store.add_signing_key()
        store.add_encryption_key()
        return store

    def add_signing_key(self) -> str:
        """Generate and keep a new Ed25519 signing key; return its key id."""
        sk = Ed25519PrivateKey.generate()
        kid = key_id(sk.public_key().public_bytes_raw())
        self.signing[kid] = sk
        return kid

    def add_encryption_key(self) -> str:
        """Generate and keep a new X25519 encryption key; return its key id."""
        ek = X25519PrivateKey.generate()
        kid = key_id(ek.public_key().public_bytes_raw())
        self.encryption[kid] = ek
        return kid

    def signing_key(self, kid: str) -> Ed25519PrivateKey:
        try:
            return self.signing[kid]
        except KeyError:
            raise UsageError(
                f"the keystore of {self.participant} has no signing key {kid!r}; "
                f"it holds {sorted(self.signing) or 'none'}"
            ) from None

    def encryption_key(self, kid: str) -> X25519PrivateKey:
        try:
            return self.encryption[kid]
        except KeyError:
            raise UsageError(
                f"the keystore of {self.participant} has no encryption key {kid!r}; "
                f"it holds {sorted(self.encryption) or 'none'}"
            ) from None

    def public_signing_keys(self) -> dict[str, bytes]:
        """Raw 32-byte Ed25519 public keys by key id."""
        return {kid: sk.public_key().public_bytes_raw() for kid, sk in self.signing.items()}

    def public_encryption_keys(self) -> dict[str, bytes]:
        """Raw 32-byte X25519 public keys by key id."""
        return {kid: ek.public_key().public_bytes_raw() for kid, ek in self.encryption.items()}

    def __repr__(self) -> str:
        return (
            f"Keystore(participant={self.participant!r}, signing={sorted(self.signing)!r}, "
            f"encryption={sorted(self.encryption)!r})"
        )

    __str__ = __repr__

    # -- at rest -------------------------------------------------------------------------------------

    def to_bytes(self, passphrase: str, *, kdf: KdfParams = KdfParams()) -> bytes:
        """The encrypted keystore file. A fresh salt and nonce are drawn on every call."""
        if not passphrase:
            raise UsageError(
                f"refusing to encrypt the keystore of {self.participant} with an empty passphrase"
            )
        salt = os.urandom(_SALT_LENGTH)
        nonce = os.urandom(_NONCE_LENGTH)
        header = _header(self.participant, kdf, salt)
        payload = jsonx.compact_json(
            {
                "signing": {kid: _b64(sk.private_bytes_raw()) for kid, sk in self.signing.items()},
                "encryption": {kid: _b64(ek.private_bytes_raw()) for kid, ek in self.encryption.items()},
            }
        )
        aead = AESGCM(_derive(passphrase, kdf, salt))
        ciphertext = aead.encrypt(nonce, payload, jsonx.compact_json(header))
        document = {**header, "nonce": _b64(nonce), "ciphertext": _b64(ciphertext)}
        return json.dumps(document, indent=2).encode("ascii") + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes, passphrase: str) -> Keystore:
        """Decrypt a keystore file made by :meth:`to_bytes`.

        Raises :class:`MalformedError` (or :class:`TooLargeError`) when the bytes are not a keystore,
        and :class:`UsageError` when the passphrase is wrong or the file was altered — AES-GCM cannot
        tell those two apart.
        """
        if len(data) > MAX_KEYSTORE_BYTES:
            raise TooLargeError(f"a keystore file is at most {MAX_KEYSTORE_BYTES} bytes")
        document = _parse_object(data, "the keystore file")
        if set(document) != _HEADER_KEYS:
            raise MalformedError(f"a keystore file has exactly the fields {sorted(_HEADER_KEYS)}")
        version = document["v"]
        if isinstance(version, bool) or version != KEYSTORE_VERSION:
            raise MalformedError(
                f"unsupported keystore version; this software reads version {KEYSTORE_VERSION}"
            )
        participant = document["participant"]
        if not isinstance(participant, str) or _PARTICIPANT.fullmatch(participant) is None:
            raise MalformedError("the keystore's participant is not a participant id")
        kdf, salt = _parse_kdf(document["kdf"])
        nonce = _unb64(document["nonce"], "nonce")
        ciphertext = _unb64(document["ciphertext"], "ciphertext")
        if len(nonce) != _NONCE_LENGTH:
            raise MalformedError(f"the keystore's nonce must be {_NONCE_LENGTH} bytes")

        aead = AESGCM(_derive(passphrase, kdf, salt))
        try:
            payload = aead.decrypt(nonce, ciphertext, jsonx.compact_json(_header(participant, kdf, salt)))
        except InvalidTag as e:
            raise UsageError(
                f"wrong passphrase for the keystore of {participant}, or the file was altered"
            ) from e
        return cls._from_payload(participant, payload)

    @classmethod
    def _from_payload(cls, participant: str, payload: bytes) -> Keystore:
        # Authenticated, so a problem here means a bug in whatever wrote the file, not an attacker.
        keys = _parse_object(payload, "the keystore's decrypted contents")
        if set(keys) != _PAYLOAD_KEYS or not all(isinstance(keys[k], dict) for k in _PAYLOAD_KEYS):
            raise MalformedError("the keystore's decrypted contents are not signing and encryption keys")
        try:
            signing = {
                kid: Ed25519PrivateKey.from_private_bytes(_unb64(raw, "signing key"))
                for kid, raw in keys["signing"].items()
            }
            encryption = {
                kid: X25519PrivateKey.from_private_bytes(_unb64(raw, "encryption key"))
                for kid, raw in keys["encryption"].items()
            }
        except ValueError:
            raise MalformedError("the keystore holds a private key of the wrong length") from None
        try:
            return cls(participant, signing, encryption)
        except UsageError as e:
            raise MalformedError(f"the keystore is inconsistent: {e}") from None


def _header(participant: str, kdf: KdfParams, salt: bytes) -> dict[str, Any]:
    """The authenticated header fields; its canonical JSON is the AES-GCM associated data."""
    return {
        "v": KEYSTORE_VERSION,
        "participant": participant,
        "kdf": {
            "alg": "argon2id",
            "salt": _b64(salt),
            "iterations": kdf.iterations,
            "lanes": kdf.lanes,
            "memory_cost_kib": kdf.memory_cost_kib,
        },
    }


def _parse_kdf(value: object) -> tuple[KdfParams, bytes]:
    if not isinstance(value, dict) or set(value) != _KDF_KEYS:
        raise MalformedError(f"the keystore's kdf has exactly the fields {sorted(_KDF_KEYS)}")
    if value["alg"] != "argon2id":
        raise MalformedError("the keystore's kdf is not argon2id")
    problem = _kdf_problem(value["iterations"], value["lanes"], value["memory_cost_kib"])
    if problem is not None:
        raise MalformedError(f"the keystore's kdf parameters are out of range: {problem}")
    salt = _unb64(value["salt"], "salt")
    if len(salt) < 8:
        raise MalformedError("the keystore's salt is shorter than 8 bytes")
    kdf = KdfParams(
        iterations=value["iterations"], lanes=value["lanes"], memory_cost_kib=value["memory_cost_kib"]
    )
    return kdf, salt


def _derive(passphrase: str, kdf: KdfParams, salt: bytes) -> bytes:
    # NFKC so that a passphrase typed with a full-width (Chinese IME) keyboard layout still opens the file.
    secret = unicodedata.normalize("NFKC", passphrase).encode("utf-8")
    return crypto.argon2id(
        secret,
        salt=salt,
        length=_KEY_LENGTH,
        iterations=kdf.iterations,
        lanes=kdf.lanes,
        memory_kib=kdf.memory_cost_kib,
    )


def _parse_object(data: bytes, what: str) -> dict[str, Any]:
    value = jsonx.strict_json(data, what=what)
    if not isinstance(value, dict):
        raise MalformedError(f"{what} is not a JSON object")
    return value


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise MalformedError(f"the keystore's {what} is not a base64 string")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedError(f"the keystore's {what} is not valid base64") from None
    # One encoding per value: the header is authenticated by re-encoding it, so refuse spare bits.
    if _b64(raw) != value:
        raise MalformedError(f"the keystore's {what} is not canonical base64")
    return raw
