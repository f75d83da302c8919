"""The oblivious PRF (RFC 9497, ristretto255-SHA512) against the RFC's own test vectors, and its refusals."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pysodium
import pytest

from services.kernel import oprf
from services.kernel.errors import BadSignatureError, MalformedError, UsageError

pytestmark = pytest.mark.unit

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "vectors" / "rfc9497_ristretto255_sha512.json").read_text()
)
MODES: tuple[oprf.Mode, ...] = ("oprf", "voprf")


def values(hex_list: str) -> list[bytes]:
    return [bytes.fromhex(part) for part in hex_list.split(",")]


def entropy_of(*scalars: bytes) -> oprf.Entropy:
    given: Iterator[bytes] = iter(scalars)
    return lambda: next(given)


def cases(mode: str) -> list[Any]:
    return [pytest.param(v, id=f"{mode}: {v['name']}") for v in VECTORS[mode]["vectors"]]


def key_of(mode: oprf.Mode) -> oprf.ServerKey:
    params = VECTORS[mode]["params"]
    return oprf.derive_key_pair(bytes.fromhex(params["Seed"]), bytes.fromhex(params["KeyInfo"]), mode)


@pytest.mark.parametrize("mode", MODES)
def test_derive_key_pair_gives_the_rfcs_keys(mode: oprf.Mode) -> None:
    params = VECTORS[mode]["params"]
    key = key_of(mode)
    assert key.secret.hex() == params["skSm"]
    if "pkSm" in params:
        assert key.public.hex() == params["pkSm"]


def run_vector(mode: oprf.Mode, vector: dict[str, str]) -> None:
    key = key_of(mode)
    inputs, blinds = values(vector["Input"]), values(vector["Blind"])
    blinded = [oprf.blind(data, mode, entropy_of(b)) for data, b in zip(inputs, blinds, strict=True)]
    assert [b.element.hex() for b in blinded] == vector["BlindedElement"].split(",")
    proof_nonce = entropy_of(*values(vector.get("ProofRandomScalar", "")) if mode == "voprf" else [])
    evaluation = oprf.blind_evaluate(key, [b.element for b in blinded], mode, proof_nonce)
    assert [e.hex() for e in evaluation.elements] == vector["EvaluationElement"].split(",")
    if mode == "voprf":
        assert evaluation.proof is not None
        assert evaluation.proof.hex() == vector["Proof"]
    outputs = oprf.finalize(inputs, blinded, evaluation, mode, public=key.public)
    assert [o.hex() for o in outputs] == vector["Output"].split(",")
    assert [oprf.evaluate(key, data, mode).hex() for data in inputs] == vector["Output"].split(",")


@pytest.mark.parametrize("vector", cases("oprf"))
def test_oprf_mode_matches_the_rfc_vector(vector: dict[str, str]) -> None:
    run_vector("oprf", vector)


@pytest.mark.parametrize("vector", cases("voprf"))
def test_voprf_mode_matches_the_rfc_vector_including_its_proof(vector: dict[str, str]) -> None:
    run_vector("voprf", vector)


def test_the_vectors_cover_both_modes_and_a_batch() -> None:
    assert len(VECTORS["oprf"]["vectors"]) == 2
    assert any("Batch Size 2" in v["name"] for v in VECTORS["voprf"]["vectors"])


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (b"", "6b9a7312411d92f921c6f68ca0b6380730a1a4d982c507211a90964c394179ba"),
        (b"abc", "0da749f12fbe5483eb066a5f595055679b976e93abe9be6f0f6318bce7aca8dc"),
    ],
)
def test_expand_message_xmd_sha512_matches_rfc_9380_appendix_k3(message: bytes, expected: str) -> None:
    dst = b"QUUX-V01-CS02-with-expander-SHA512-256"
    assert oprf.expand_message_xmd(message, dst, 0x20).hex() == expected


def evaluated_batch() -> tuple[oprf.ServerKey, list[bytes], list[oprf.BlindedInput], oprf.Evaluation]:
    key = oprf.generate_key_pair()
    inputs = [b"cnid:one", b"phone:two"]
    blinded = [oprf.blind(data, "voprf") for data in inputs]
    return key, inputs, blinded, oprf.blind_evaluate(key, [b.element for b in blinded], "voprf")


def test_a_fresh_round_trip_gives_what_the_key_holder_computes_directly() -> None:
    key, inputs, blinded, evaluation = evaluated_batch()
    outputs = oprf.finalize(inputs, blinded, evaluation, "voprf", public=key.public)
    assert outputs == [oprf.evaluate(key, data, "voprf") for data in inputs]


@pytest.mark.parametrize("count", [0, 1, 2, 7])
def test_scalars_inverted_together_are_each_ones_inverse(count: int) -> None:
    scalars = [oprf.generate_key_pair().secret for _ in range(count)]
    inverses = oprf.invert_all(scalars)
    one = (1).to_bytes(oprf.SCALAR_LENGTH, "little")
    assert inverses == [pysodium.crypto_core_ristretto255_scalar_invert(s) for s in scalars]
    products = [
        pysodium.crypto_core_ristretto255_scalar_mul(s, i) for s, i in zip(scalars, inverses, strict=True)
    ]
    assert products == [one] * count


def test_a_zero_among_scalars_inverted_together_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="no inverse"):
        oprf.invert_all([oprf.generate_key_pair().secret, bytes(oprf.SCALAR_LENGTH)])


def test_an_answer_made_with_another_key_fails_the_proof() -> None:
    key, inputs, blinded, _ = evaluated_batch()
    other = oprf.blind_evaluate(oprf.generate_key_pair(), [b.element for b in blinded], "voprf")
    with pytest.raises(BadSignatureError):
        oprf.finalize(inputs, blinded, other, "voprf", public=key.public)


def test_swapping_two_evaluated_elements_fails_the_proof() -> None:
    key, inputs, blinded, evaluation = evaluated_batch()
    swapped = oprf.Evaluation(elements=evaluation.elements[::-1], proof=evaluation.proof)
    with pytest.raises(BadSignatureError):
        oprf.finalize(inputs, blinded, swapped, "voprf", public=key.public)


def test_a_voprf_answer_without_a_proof_is_refused() -> None:
    key, inputs, blinded, evaluation = evaluated_batch()
    with pytest.raises(MalformedError):
        oprf.finalize(inputs, blinded, oprf.Evaluation(evaluation.elements, None), "voprf", public=key.public)


def test_an_answer_with_fewer_elements_than_were_sent_is_refused() -> None:
    key, inputs, blinded, evaluation = evaluated_batch()
    short = oprf.Evaluation(elements=evaluation.elements[:1], proof=evaluation.proof)
    with pytest.raises(MalformedError):
        oprf.finalize(inputs, blinded, short, "voprf", public=key.public)


@pytest.mark.parametrize(
    "element",
    [
        pytest.param(bytes(32), id="the identity"),
        pytest.param(b"\xff" * 32, id="a non-canonical encoding"),
        pytest.param(b"\x01" * 31, id="31 bytes"),
    ],
)
def test_the_server_refuses_a_blinded_element_that_is_not_a_valid_non_identity_element(
    element: bytes,
) -> None:
    with pytest.raises(MalformedError):
        oprf.blind_evaluate(oprf.generate_key_pair(), [element], "voprf")


@pytest.mark.parametrize("size", [0, oprf.MAX_BATCH + 1])
def test_the_server_refuses_an_empty_or_oversized_batch(size: int) -> None:
    element = oprf.blind(b"x", "voprf").element
    with pytest.raises(MalformedError):
        oprf.blind_evaluate(oprf.generate_key_pair(), [element] * size, "voprf")


def test_a_scalar_at_or_above_the_group_order_is_refused() -> None:
    with pytest.raises(MalformedError):
        oprf.deserialize_scalar(oprf.ORDER.to_bytes(32, "little"))


def test_a_server_keys_repr_hides_its_secret() -> None:
    key = oprf.generate_key_pair()
    assert key.secret.hex() not in repr(key)
    assert key.public.hex() in repr(key)


def test_a_public_key_that_is_not_the_secrets_is_refused() -> None:
    key, other = oprf.generate_key_pair(), oprf.generate_key_pair()
    with pytest.raises(UsageError):
        oprf.ServerKey(secret=key.secret, public=other.public)


def test_the_two_modes_give_different_outputs_for_one_key_and_input() -> None:
    key = oprf.generate_key_pair()
    assert oprf.evaluate(key, b"cnid:x", "oprf") != oprf.evaluate(key, b"cnid:x", "voprf")
