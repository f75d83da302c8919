"""Known-answer vectors for the v1 and v2 envelopes, from deterministic test keys.

    python -m tests.vectors.generate          # rewrite tests/vectors/envelope-v1.json and -v2.json
    python -m tests.vectors.generate --check  # exit 1 if a committed file differs

Sealing is made deterministic by an :class:`~services.kernel.envelope.Entropy` whose data keys,
nonces, HPKE ephemeral keys (v1), salts and epoch key (v2) come from fixed seeds. Its HPKE is written
out here from RFC 9180 (DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM, base mode); the vectors
test then opens every vector with the production path (``cryptography``'s HPKE), so the two must agree
on the RFC. v2's key agreement is the production code's own (X25519 and HKDF-SHA256 from RFC 7748 and
RFC 5869, as ``schemas/envelope.py`` specifies); its vectors pin the bytes.
The keys here are test keys, derived from public seeds: never use them for anything real.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from schemas.envelope import EnvelopeHeader
from schemas.registry import Participant, PublicKey, RegistryDocument, RootKey, Roots, SealedPseudonymKey
from services.kernel import crypto, envelope
from services.kernel.keystore import Keystore, key_id
from services.kernel.registry import Registry
from services.simulator import district

VECTORS = Path(__file__).with_name("envelope-v1.json")
VECTORS_BY_VERSION = {1: VECTORS, 2: Path(__file__).with_name("envelope-v2.json")}
TIME = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)


def _seed(label: str) -> bytes:
    return hashlib.sha256(b"lianfang-test-vector/" + label.encode()).digest()


def test_keystore(participant: str) -> Keystore:
    """A participant's deterministic test keys (one Ed25519, one X25519)."""
    store = Keystore(participant)
    sign = Ed25519PrivateKey.from_private_bytes(_seed(f"{participant}/sign"))
    enc = X25519PrivateKey.from_private_bytes(_seed(f"{participant}/encrypt"))
    store.signing[key_id(crypto.ed25519_public_raw(sign))] = sign
    store.encryption[key_id(crypto.x25519_public_raw(enc))] = enc
    return store


def test_registry(participants: list[str]) -> Registry:
    """A registry over the test keys with the default district policy (unsigned: vectors test the
    envelope, not the registry's root signatures)."""
    entries = []
    for pid in participants:
        store = test_keystore(pid)
        keys = [
            PublicKey(kid=kid, use="sign", alg="ed25519", public=crypto.b64e(raw), valid_from=TIME)
            for kid, raw in store.public_signing_keys().items()
        ] + [
            PublicKey(kid=kid, use="encrypt", alg="x25519", public=crypto.b64e(raw), valid_from=TIME)
            for kid, raw in store.public_encryption_keys().items()
        ]
        entries.append(
            Participant(id=pid, name_zh=pid, name_en=pid, may_publish=district.may_publish(pid), keys=keys)
        )
    root = test_keystore("root")
    ((rkid, rraw),) = root.public_signing_keys().items()
    doc = RegistryDocument(
        version=1,
        issued=TIME,
        expires=datetime(2027, 1, 1, tzinfo=UTC),
        roots=Roots(threshold=1, keys=[RootKey(kid=rkid, holder="plc", public=crypto.b64e(rraw))]),
        participants=entries,
        policy=district.default_policy(),
        pseudonym_key=SealedPseudonymKey(version=1, sealed=[]),
    )
    return Registry(doc)


# --------------------------------------------------------------------------- RFC 9180, deterministic

KEM_SUITE = b"KEM" + (0x0020).to_bytes(2, "big")
HPKE_SUITE = b"HPKE" + (0x0020).to_bytes(2, "big") + (0x0001).to_bytes(2, "big") + (0x0002).to_bytes(2, "big")


def _extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt or bytes(32), ikm, hashlib.sha256).digest()


def _expand(prk: bytes, info: bytes, length: int) -> bytes:
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def _labeled_extract(suite: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return _extract(salt, b"HPKE-v1" + suite + label + ikm)


def _labeled_expand(suite: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    return _expand(prk, length.to_bytes(2, "big") + b"HPKE-v1" + suite + label + info, length)


def hpke_seal_deterministic(
    ephemeral: X25519PrivateKey, pk_r_raw: bytes, plaintext: bytes, info: bytes
) -> bytes:
    """RFC 9180 single-shot base-mode seal with a given ephemeral key; returns enc || ciphertext."""
    enc = ephemeral.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    dh = ephemeral.exchange(X25519PublicKey.from_public_bytes(pk_r_raw))
    eae_prk = _labeled_extract(KEM_SUITE, b"", b"eae_prk", dh)
    shared = _labeled_expand(KEM_SUITE, eae_prk, b"shared_secret", enc + pk_r_raw, 32)
    psk_id_hash = _labeled_extract(HPKE_SUITE, b"", b"psk_id_hash", b"")
    info_hash = _labeled_extract(HPKE_SUITE, b"", b"info_hash", info)
    context = b"\x00" + psk_id_hash + info_hash
    secret = _labeled_extract(HPKE_SUITE, shared, b"secret", b"")
    key = _labeled_expand(HPKE_SUITE, secret, b"key", context, 32)
    nonce = _labeled_expand(HPKE_SUITE, secret, b"base_nonce", context, 12)
    return enc + AESGCM(key).encrypt(nonce, plaintext, b"")


class SeededEntropy:
    """Deterministic stand-in for the system's randomness; every draw is recorded for the vector."""

    def __init__(self, label: str, version: int = 1) -> None:
        self.label = label
        self.draws: dict[str, list[str]] = {"data_keys": [], "nonces": [], "ephemeral_seeds": []}
        if version == 2:
            self.draws = {"data_keys": [], "nonces": [], "salts": [], "epoch_seeds": []}
        self._epoch: envelope.EpochKey | None = None

    def _next(self, kind: str, length: int) -> bytes:
        value = _seed(f"{self.label}/{kind}/{len(self.draws[kind])}")[:length]
        self.draws[kind].append(value.hex())
        return value

    def data_key(self) -> bytes:
        return self._next("data_keys", 32)

    def nonce(self) -> bytes:
        return self._next("nonces", 12)

    def hpke_wrap(self, recipient_public_raw: bytes, plaintext: bytes, info: bytes) -> bytes:
        ephemeral = X25519PrivateKey.from_private_bytes(self._next("ephemeral_seeds", 32))
        return hpke_seal_deterministic(ephemeral, recipient_public_raw, plaintext, info)

    def salt(self) -> bytes:
        return self._next("salts", envelope.SALT_BYTES)

    def epoch_key(self) -> envelope.EpochKey:
        if self._epoch is None:
            self._epoch = envelope.EpochKey(
                X25519PrivateKey.from_private_bytes(self._next("epoch_seeds", 32))
            )
        return self._epoch


# --------------------------------------------------------------------------- the vectors

PARTICIPANTS = [
    "police",
    "womens_federation",
    "hub",
    "mediation.renhe",
    "court",
    "hrss",
    "trade_union",
    "procuratorate",
]

CASES: list[dict[str, Any]] = [
    {
        "name": "dv-lead-4-recipients",
        "description": "A DV lead from police in 仁和镇: triage to 4, details to 3 (the hub reads triage only).",
        "sender": "police",
        "header": {
            "type": "lead.reported",
            "category": "domestic_violence",
            "minor": False,
            "town": "renhe",
            "urgency": "urgent",
        },
        "content": {
            "triage": {"category": "domestic_violence", "risk_indicators": ["strangulation"], "minor": False},
            "details": {"victim": {"name": "李某某", "phone": "13900000000"}, "narrative": "前夫多次威胁。"},
        },
    },
    {
        "name": "employment-discrimination-5-recipients",
        "description": "An employment-discrimination lead from the women's federation (12338).",
        "sender": "womens_federation",
        "header": {
            "type": "lead.reported",
            "category": "employment_discrimination",
            "minor": False,
            "urgency": "routine",
        },
        "content": {
            "triage": {"category": "employment_discrimination"},
            "details": {"narrative": "招聘启事写明只招男性。", "employer": "某某公司"},
        },
    },
]


def _header(case: dict[str, Any], index: int, version: int) -> EnvelopeHeader:
    fields = {
        "v": version,
        "specversion": "1.0",
        "id": f"01a1b2c3-d4e5-7f00-8000-00000000000{index}",
        "source": f"urn:lianfang:{case['sender']}",
        "time": TIME.isoformat(),
        "subject": "p1.Vector-subject-pseudonym-for-tests-onlyAAAA",
        "schema": f"{case['header']['type']}/1",
        "policy": 1,
        "registry": 1,
        **case["header"],
    }
    return EnvelopeHeader.model_validate_json(json.dumps(fields))


def build_vectors(version: int = 1) -> dict[str, Any]:
    registry = test_registry(PARTICIPANTS)
    out: list[dict[str, Any]] = []
    for index, case in enumerate(CASES):
        # v1's labels are the case names alone, so its committed bytes stay as they were.
        entropy = SeededEntropy(case["name"] if version == 1 else f"v{version}/{case['name']}", version)
        h = _header(case, index, version)
        record = envelope.seal(
            h, case["content"], registry=registry, signer=test_keystore(case["sender"]), entropy=entropy
        )
        verified = envelope.verify(record.value, registry=registry, now=TIME)
        out.append(
            {
                "name": case["name"],
                "description": case["description"],
                "sender": case["sender"],
                "content": case["content"],
                "entropy": entropy.draws,
                "recipients": {k: sorted(v) for k, v in verified.recipients().items()},
                "expected": {
                    "header_json": verified.header_bytes.decode(),
                    "header_sha256": hashlib.sha256(verified.header_bytes).hexdigest(),
                    "kafka_key": record.key.decode(),
                    "record": record.value.decode(),
                },
            }
        )
    return {
        "about": f"Lianfang envelope v{version} known-answer vectors; regenerate with "
        + "`python -m tests.vectors.generate`.",
        "keys": "test keys: seed = SHA-256('lianfang-test-vector/' + participant + '/sign' or '/encrypt')",
        "time": TIME.isoformat(),
        "participants": PARTICIPANTS,
        "vectors": out,
    }


def render(version: int = 1) -> str:
    return json.dumps(build_vectors(version), indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="compare with the committed file instead")
    args = parser.parse_args(argv)
    stale = 0
    for version, path in VECTORS_BY_VERSION.items():
        text = render(version)
        if not args.check:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
        elif not path.exists() or path.read_text(encoding="utf-8") != text:
            print(f"{path} is stale: run `python -m tests.vectors.generate`", file=sys.stderr)
            stale = 1
        else:
            print(f"{path} is current")
    return stale


if __name__ == "__main__":
    sys.exit(main())
