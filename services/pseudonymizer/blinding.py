"""The adapters' side of an evaluation, as arithmetic: blind identifiers into a request body, then read
the service's answer into pseudonyms. Pure: no clock, network, keys or files.

:class:`~services.pseudonymizer.client.ObliviousPseudonymizer` calls these around its signed request, in
the caller's thread or in a process of their own (an import's: about 0.2 ms an identifier, mostly
libsodium's group arithmetic, whose calls would otherwise wait to win the caller's interpreter lock back
from its other threads); so their arguments and results are plain values a process pool can carry.
"""

from __future__ import annotations

from collections.abc import Sequence

from services.kernel import crypto, jsonx, oprf
from services.kernel.errors import BadSignatureError
from services.kernel.pseudonym import EpochPseudonyms, oblivious_pseudonym, oprf_input
from services.pseudonymizer import core

__all__ = ["blind_request", "read_answer"]


def blind_request(
    canonicals: Sequence[str], version: int, previous: int | None, entropy: oprf.Entropy | None
) -> tuple[bytes, list[oprf.BlindedInput]]:
    """The body of an evaluation request for ``canonicals`` (under key ``version`` and, during a
    transition, ``previous``), and the blinded inputs whose blinds unblind its answer."""
    inputs = [oprf_input(c) for c in canonicals]
    blinded = [
        oprf.blind(i, core.MODE) if entropy is None else oprf.blind(i, core.MODE, entropy) for i in inputs
    ]
    request: dict[str, object] = {"elements": [crypto.b64e(b.element) for b in blinded], "version": version}
    if previous is not None:
        request["previous"] = previous
    return jsonx.compact_json(request), blinded


def read_answer(
    canonicals: Sequence[str],
    blinded: Sequence[oprf.BlindedInput],
    answer: bytes,
    wanted: Sequence[tuple[int, bytes]],
) -> list[EpochPseudonyms]:
    """Each identifier's pseudonyms from the service's ``answer``: one evaluation for each ``(version,
    public key)`` the registry names, in order, each proof checked against the registry's key (keys the
    service offers are ignored). Raises :class:`BadSignatureError` (another key, a proof that does not
    verify) or :class:`MalformedError`."""
    inputs = [oprf_input(c) for c in canonicals]
    evaluations = core.parse_answers(answer, expected=len(inputs))
    if [v for v, _, _ in evaluations] != [v for v, _ in wanted]:
        raise BadSignatureError(
            f"the pseudonymizer answered with key(s) {[v for v, _, _ in evaluations]}; the registry "
            f"names {[v for v, _ in wanted]}"
        )
    outputs = [
        [
            oblivious_pseudonym(version, output)
            for output in oprf.finalize(inputs, blinded, evaluation, core.MODE, public=trusted)
        ]
        for (version, trusted), (_, _offered, evaluation) in zip(wanted, evaluations, strict=True)
    ]
    previous = outputs[1] if len(outputs) > 1 else [None] * len(inputs)
    return [EpochPseudonyms(c, p) for c, p in zip(outputs[0], previous, strict=True)]
