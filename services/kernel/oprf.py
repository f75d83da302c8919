"""Oblivious pseudorandom functions: RFC 9497, suite ristretto255-SHA512, modes OPRF and VOPRF. Pure.

A client blinds its input (:func:`blind`), the server multiplies the blinded element by its secret key
(:func:`blind_evaluate`), and the client unblinds and hashes (:func:`finalize`). The server never sees
the input and the client never holds the key, so nobody can compute an output offline: each output
costs one evaluation that the server can authenticate, count and refuse. In VOPRF mode the server also
proves (a batched DLEQ proof, :func:`generate_proof`) that it used the key whose public half the client
knows, so it cannot answer one client with another key than the rest.

The group arithmetic is libsodium's ristretto255 (through ``pysodium``); the hashing and transcripts
are here, in the order the RFC gives them. ``tests/unit/test_oprf.py`` checks every step against the
RFC's test vectors (Appendix A.1.1), with the blinds and proof nonces injected as :class:`Entropy`.

Checks on what comes from the other side, in order: an element is 32 bytes, a canonical ristretto255
encoding and not the identity (:func:`deserialize_element`); a scalar is 32 bytes and below the group
order (:func:`deserialize_scalar`); lists have the lengths they must; the proof verifies. Failures raise
:class:`~services.kernel.errors.MalformedError` (bad bytes) or
:class:`~services.kernel.errors.BadSignatureError` (a proof that does not verify).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

import pysodium

from services.kernel.errors import BadSignatureError, MalformedError, UsageError

__all__ = [
    "ELEMENT_LENGTH",
    "IDENTIFIER",
    "MAX_BATCH",
    "OUTPUT_LENGTH",
    "SCALAR_LENGTH",
    "BlindedInput",
    "Entropy",
    "Evaluation",
    "Mode",
    "ServerKey",
    "blind",
    "blind_evaluate",
    "context_string",
    "derive_key_pair",
    "deserialize_element",
    "deserialize_scalar",
    "evaluate",
    "finalize",
    "generate_key_pair",
    "generate_proof",
    "hash_to_group",
    "hash_to_scalar",
    "invert_all",
    "verify_proof",
]

IDENTIFIER: Final = b"ristretto255-SHA512"
ELEMENT_LENGTH: Final = 32
SCALAR_LENGTH: Final = 32
OUTPUT_LENGTH: Final = 64
MAX_BATCH: Final = 1024
"""The most elements one evaluation takes (the RFC's I2OSP(i, 2) would allow 65535)."""
ORDER: Final = 2**252 + 27742317777372353535851937790883648493

Mode = Literal["oprf", "voprf"]
_MODE_BYTE: Final[dict[Mode, int]] = {"oprf": 0x00, "voprf": 0x01}
_IDENTITY: Final = bytes(ELEMENT_LENGTH)
_ONE: Final = (1).to_bytes(SCALAR_LENGTH, "little")
_GENERATOR: Final = pysodium.crypto_scalarmult_ristretto255_base(_ONE)

Entropy = Callable[[], bytes]
"""A source of uniformly random scalars (32 bytes, little-endian, below the order). Tests inject the
RFC's blinds and proof nonces; the default is libsodium's ``crypto_core_ristretto255_scalar_random``."""


def _random_scalar() -> bytes:
    scalar: bytes = pysodium.crypto_core_ristretto255_scalar_random()
    return scalar


def context_string(mode: Mode) -> bytes:
    """``"OPRFV1-" || I2OSP(mode, 1) || "-" || identifier`` (RFC 9497 §3.1)."""
    return b"OPRFV1-" + bytes([_MODE_BYTE[mode]]) + b"-" + IDENTIFIER


# --------------------------------------------------------------------------- hashing (RFC 9380)


def _i2osp(value: int, length: int) -> bytes:
    return value.to_bytes(length, "big")


def _framed(*parts: bytes) -> bytes:
    """Each part preceded by its length in two bytes, as the RFC's transcripts are built."""
    return b"".join(_i2osp(len(part), 2) + part for part in parts)


def expand_message_xmd(message: bytes, dst: bytes, length: int) -> bytes:
    """expand_message_xmd with SHA-512 (RFC 9380 §5.3.1)."""
    b_in_bytes, s_in_bytes = 64, 128
    ell = -(-length // b_in_bytes)
    if ell > 255 or length > 65535 or len(dst) > 255:
        raise UsageError("expand_message_xmd: the requested length or the DST is too long")
    dst_prime = dst + _i2osp(len(dst), 1)
    b0 = hashlib.sha512(bytes(s_in_bytes) + message + _i2osp(length, 2) + b"\x00" + dst_prime).digest()
    blocks = [hashlib.sha512(b0 + b"\x01" + dst_prime).digest()]
    for i in range(2, ell + 1):
        mixed = bytes(x ^ y for x, y in zip(b0, blocks[-1], strict=True))
        blocks.append(hashlib.sha512(mixed + _i2osp(i, 1) + dst_prime).digest())
    return b"".join(blocks)[:length]


def hash_to_group(message: bytes, mode: Mode) -> bytes:
    """hash_to_ristretto255 with DST ``"HashToGroup-" || contextString``: a serialized element."""
    uniform = expand_message_xmd(message, b"HashToGroup-" + context_string(mode), 64)
    element: bytes = pysodium.crypto_core_ristretto255_from_hash(uniform)
    return element


def hash_to_scalar(message: bytes, mode: Mode, *, dst: bytes | None = None) -> bytes:
    """64 uniform bytes (DST ``"HashToScalar-" || contextString`` unless given), reduced modulo the order."""
    uniform = expand_message_xmd(message, dst or b"HashToScalar-" + context_string(mode), 64)
    scalar: bytes = pysodium.crypto_core_ristretto255_scalar_reduce(uniform)
    return scalar


# --------------------------------------------------------------------------- the group


def deserialize_element(data: bytes) -> bytes:
    """``data`` if it is a canonical ristretto255 encoding of an element other than the identity."""
    if not isinstance(data, bytes) or len(data) != ELEMENT_LENGTH:
        raise MalformedError(f"a group element is {ELEMENT_LENGTH} bytes")
    if hmac.compare_digest(data, _IDENTITY) or not pysodium.crypto_core_ristretto255_is_valid_point(data):
        raise MalformedError("not a valid ristretto255 element (or the identity)")
    return data


def deserialize_scalar(data: bytes) -> bytes:
    """``data`` if it is 32 little-endian bytes of an integer below the group order."""
    if not isinstance(data, bytes) or len(data) != SCALAR_LENGTH:
        raise MalformedError(f"a scalar is {SCALAR_LENGTH} bytes")
    if int.from_bytes(data, "little") >= ORDER:
        raise MalformedError("a scalar must be below the group order")
    return data


def _mul(scalar: bytes, element: bytes) -> bytes:
    try:
        product: bytes = pysodium.crypto_scalarmult_ristretto255(scalar, element)
    except ValueError as e:  # libsodium refuses a product that is the identity
        raise MalformedError("a scalar multiplication gave the identity") from e
    return product


def _mul_base(scalar: bytes) -> bytes:
    try:
        product: bytes = pysodium.crypto_scalarmult_ristretto255_base(scalar)
    except ValueError as e:
        raise MalformedError("a scalar multiplication gave the identity") from e
    return product


def _add(p: bytes, q: bytes) -> bytes:
    total: bytes = pysodium.crypto_core_ristretto255_add(p, q)
    return total


def _scalar_mul(x: bytes, y: bytes) -> bytes:
    product: bytes = pysodium.crypto_core_ristretto255_scalar_mul(x, y)
    return product


def _scalar_sub(x: bytes, y: bytes) -> bytes:
    difference: bytes = pysodium.crypto_core_ristretto255_scalar_sub(x, y)
    return difference


def _scalar_invert(s: bytes) -> bytes:
    try:
        inverse: bytes = pysodium.crypto_core_ristretto255_scalar_invert(s)
    except ValueError as e:
        raise UsageError("zero has no inverse") from e
    return inverse


def invert_all(scalars: Sequence[bytes]) -> list[bytes]:
    """The inverse of each non-zero scalar, with one inversion for them all (Montgomery's trick: three
    scalar products each, about 3 µs, instead of an inversion each, about 20 µs)."""
    prefixes: list[bytes] = []
    product = _ONE
    for s in scalars:
        prefixes.append(product)
        product = _scalar_mul(product, s)
    inverse = _scalar_invert(product)  # of every scalar's product: a zero among them has none
    out = [b""] * len(scalars)
    for i in range(len(scalars) - 1, -1, -1):
        out[i] = _scalar_mul(inverse, prefixes[i])
        inverse = _scalar_mul(inverse, scalars[i])
    return out


def _is_zero(scalar: bytes) -> bool:
    return hmac.compare_digest(scalar, bytes(SCALAR_LENGTH))


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True, slots=True)
class ServerKey:
    """The server's key pair: ``secret`` (a non-zero scalar) and ``public`` (secret times the generator).
    Its repr hides the secret."""

    secret: bytes
    public: bytes

    def __post_init__(self) -> None:
        deserialize_scalar(self.secret)
        if _is_zero(self.secret):
            raise UsageError("an OPRF secret key is never zero")
        if not hmac.compare_digest(_mul_base(self.secret), self.public):
            raise UsageError("the OPRF public key does not belong to the secret key")

    @classmethod
    def from_secret(cls, secret: bytes) -> ServerKey:
        return cls(secret=secret, public=_mul_base(deserialize_scalar(secret)))

    def __repr__(self) -> str:
        return f"ServerKey(public={self.public.hex()}, secret=<redacted>)"

    __str__ = __repr__


def generate_key_pair(entropy: Entropy = _random_scalar) -> ServerKey:
    """A fresh random key pair (RFC 9497 §3.2)."""
    secret = entropy()
    while _is_zero(secret):
        secret = entropy()
    return ServerKey.from_secret(secret)


def derive_key_pair(seed: bytes, info: bytes, mode: Mode) -> ServerKey:
    """The deterministic key pair of ``seed`` (32 secret bytes) and public ``info`` (RFC 9497 §3.2.1)."""
    if len(seed) != SCALAR_LENGTH:
        raise UsageError(f"a key seed is {SCALAR_LENGTH} bytes")
    derive_input = seed + _framed(info)
    dst = b"DeriveKeyPair" + context_string(mode)
    for counter in range(256):
        secret = hash_to_scalar(derive_input + _i2osp(counter, 1), mode, dst=dst)
        if not _is_zero(secret):
            return ServerKey.from_secret(secret)
    raise UsageError("DeriveKeyPair found no non-zero scalar in 256 tries")  # pragma: no cover


# --------------------------------------------------------------------------- the protocol


@dataclass(frozen=True, slots=True)
class BlindedInput:
    """What :func:`blind` returns: the client keeps ``blind`` and sends ``element``."""

    blind: bytes
    element: bytes

    def __repr__(self) -> str:
        return f"BlindedInput(element={self.element.hex()}, blind=<redacted>)"


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The server's answer to a batch: one evaluated element per blinded element, in order, and in VOPRF
    mode one proof (``c || s``, 64 bytes) covering them all."""

    elements: tuple[bytes, ...]
    proof: bytes | None


def blind(data: bytes, mode: Mode, entropy: Entropy = _random_scalar) -> BlindedInput:
    """Blind(input): a random non-zero scalar and ``blind * HashToGroup(input)``."""
    element = hash_to_group(data, mode)
    if hmac.compare_digest(element, _IDENTITY):  # pragma: no cover - needs a SHA-512 preimage
        raise UsageError("the input maps to the identity element")
    scalar = entropy()
    while _is_zero(scalar):
        scalar = entropy()
    return BlindedInput(blind=deserialize_scalar(scalar), element=_mul(scalar, element))


def _composites(
    key: ServerKey | None, b: bytes, cs: Sequence[bytes], ds: Sequence[bytes], mode: Mode
) -> tuple[bytes, bytes]:
    """ComputeComposites (M, Z); with the server's key, ComputeCompositesFast (Z = k * M)."""
    seed = hashlib.sha512(_framed(b, b"Seed-" + context_string(mode))).digest()
    m: bytes | None = None
    z: bytes | None = None
    for i, (c, d) in enumerate(zip(cs, ds, strict=True)):
        transcript = _framed(seed) + _i2osp(i, 2) + _framed(c, d) + b"Composite"
        di = hash_to_scalar(transcript, mode)
        term_m = _mul(di, c)
        m = term_m if m is None else _add(m, term_m)
        if key is None:
            term_z = _mul(di, d)
            z = term_z if z is None else _add(z, term_z)
    if m is None:
        raise UsageError("a proof covers at least one element")
    if key is not None:
        z = _mul(key.secret, m)
    assert z is not None
    return m, z


def _challenge(b: bytes, m: bytes, z: bytes, t2: bytes, t3: bytes, *, mode: Mode) -> bytes:
    return hash_to_scalar(_framed(b, m, z, t2, t3) + b"Challenge", mode)


def generate_proof(
    key: ServerKey,
    blinded: Sequence[bytes],
    evaluated: Sequence[bytes],
    mode: Mode,
    entropy: Entropy = _random_scalar,
) -> bytes:
    """GenerateProof(k, G, pkS, C, D): a batched DLEQ proof that ``evaluated[i] = k * blinded[i]``."""
    m, z = _composites(key, key.public, blinded, evaluated, mode)
    r = deserialize_scalar(entropy())
    t2 = _mul_base(r)
    t3 = _mul(r, m)
    c = _challenge(key.public, m, z, t2, t3, mode=mode)
    s = _scalar_sub(r, _scalar_mul(c, key.secret))
    return c + s


def verify_proof(
    public: bytes, blinded: Sequence[bytes], evaluated: Sequence[bytes], proof: bytes, mode: Mode
) -> None:
    """VerifyProof(G, pkS, C, D, proof); raises :class:`BadSignatureError` when it does not verify."""
    if len(proof) != 2 * SCALAR_LENGTH:
        raise MalformedError(f"a proof is {2 * SCALAR_LENGTH} bytes")
    c, s = deserialize_scalar(proof[:SCALAR_LENGTH]), deserialize_scalar(proof[SCALAR_LENGTH:])
    m, z = _composites(None, public, blinded, evaluated, mode)
    try:
        t2 = _add(_mul_base(s), _mul(c, public))
        t3 = _add(_mul(s, m), _mul(c, z))
    except MalformedError as e:  # a product that is the identity: not an honest proof
        raise BadSignatureError("the OPRF proof does not verify") from e
    if not hmac.compare_digest(_challenge(public, m, z, t2, t3, mode=mode), c):
        raise BadSignatureError("the OPRF proof does not verify: the server did not use its published key")


def blind_evaluate(
    key: ServerKey, blinded: Sequence[bytes], mode: Mode, entropy: Entropy = _random_scalar
) -> Evaluation:
    """BlindEvaluate for a batch: each element times the secret key, and in VOPRF mode one proof."""
    if not 1 <= len(blinded) <= MAX_BATCH:
        raise MalformedError(f"a batch has 1 to {MAX_BATCH} elements")
    elements = [deserialize_element(e) for e in blinded]
    evaluated = tuple(_mul(key.secret, e) for e in elements)
    proof = generate_proof(key, elements, evaluated, mode, entropy) if mode == "voprf" else None
    return Evaluation(elements=evaluated, proof=proof)


def _output(data: bytes, element: bytes) -> bytes:
    return hashlib.sha512(_framed(data, element) + b"Finalize").digest()


def finalize(
    inputs: Sequence[bytes],
    blinded: Sequence[BlindedInput],
    evaluation: Evaluation,
    mode: Mode,
    *,
    public: bytes | None = None,
) -> list[bytes]:
    """Finalize for a batch: verify the proof (VOPRF mode, against ``public``), unblind, hash.

    Returns one 64-byte output per input, in order.
    """
    if not len(inputs) == len(blinded) == len(evaluation.elements):
        raise MalformedError("the answer has another number of elements than were sent")
    evaluated = [deserialize_element(e) for e in evaluation.elements]
    if mode == "voprf":
        if public is None:
            raise UsageError("VOPRF mode needs the server's public key")
        if evaluation.proof is None:
            raise MalformedError("a VOPRF answer carries a proof")
        verify_proof(public, [b.element for b in blinded], evaluated, evaluation.proof, mode)
    unblinders = invert_all([b.blind for b in blinded])
    return [
        _output(data, _mul(unblinder, element))
        for data, unblinder, element in zip(inputs, unblinders, evaluated, strict=True)
    ]


def evaluate(key: ServerKey, data: bytes, mode: Mode) -> bytes:
    """Evaluate(skS, input): the output computed directly by whoever holds the key (the service's tests)."""
    return _output(data, _mul(key.secret, hash_to_group(data, mode)))
