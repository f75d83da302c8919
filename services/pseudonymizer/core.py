"""The pseudonymizer's pure core: the wire format of an evaluation, the key file, and per-participant rates.

A request is ``{"elements": ["<base64 of a 32-byte blinded element>", ...]}`` (1 to
:data:`~services.kernel.oprf.MAX_BATCH`), optionally with ``"version"`` (the key the client's registry
names) and, during a key transition, ``"previous"`` (the previous key's version); the answer is
``{"suite", "mode", "version", "public", "evaluated": [...], "proof"}`` with one evaluated element per
blinded one, in order, and one VOPRF proof for the batch, and, when asked, ``"previous": {"version",
"public", "evaluated", "proof"}``: the same batch under the previous key with its own proof. Nothing here
sees an identifier: blinded elements are uniformly random to whoever lacks the blinds. No clock, network or
files; the service (:mod:`services.pseudonymizer.app`) does the I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from schemas.common import PARTICIPANT_ID_PATTERN
from schemas.registry import PseudonymizerRole
from services.kernel import crypto, jsonx, oprf
from services.kernel.errors import MalformedError, TooLargeError, UsageError
from services.kernel.pseudonym import MAX_PSEUDONYM_KEY_VERSION, oblivious_pseudonym, oprf_input

__all__ = [
    "DICTIONARY_GUESSES",
    "MAX_BODY_BYTES",
    "MODE",
    "EvaluateRequest",
    "PseudonymizerKey",
    "RateLimiter",
    "answer",
    "duration_text",
    "key_file_name",
    "named_versions",
    "parse_answer",
    "parse_answers",
    "parse_rates",
    "retired_versions",
    "unmatched_rates",
]

MODE: Final[oprf.Mode] = "voprf"
KEY_INFO: Final = b"lianfang-pseudonymizer"
"""The public ``info`` a key's seed is derived with (RFC 9497 §3.2.1 DeriveKeyPair)."""
MAX_BODY_BYTES: Final = 64 * 1024
"""A full batch (1024 elements of 44 base64 characters) and its framing fit well within this."""


@dataclass(frozen=True, slots=True)
class PseudonymizerKey:
    """One version of the pseudonymization key: the OPRF key pair and its version (the ``p<version>.``
    prefix of the pseudonyms it gives). Its repr hides the secret."""

    version: int
    key: oprf.ServerKey

    @classmethod
    def from_json(cls, data: bytes) -> PseudonymizerKey:
        """``{"version": N, "seed": "<base64 of 32 bytes>"}``: the key pair derived from the seed."""
        doc = jsonx.strict_json(data, what="pseudonymizer key file")
        if (
            not isinstance(doc, dict)
            or set(doc) != {"version", "seed"}
            or not isinstance(doc["version"], int)
        ):
            raise UsageError('the pseudonymizer key file holds {"version": <int>, "seed": "<base64>"}')
        seed = crypto.b64d(doc["seed"], what="pseudonymizer key seed", length=oprf.SCALAR_LENGTH)
        return cls(version=doc["version"], key=oprf.derive_key_pair(seed, KEY_INFO, MODE))

    @staticmethod
    def new_json(version: int, seed: bytes) -> bytes:
        return jsonx.compact_json({"version": version, "seed": crypto.b64e(seed)})

    def role(self, url: str) -> PseudonymizerRole:
        """What the registry says of this key: its version, public half and where it is served."""
        return PseudonymizerRole(version=self.version, public=crypto.b64e(self.key.public), url=url)

    def check_named_by(self, role: PseudonymizerRole | None) -> None:
        """Raise ``UsageError`` unless ``role`` (the registry's) names this very key as its current one:
        clients verify every answer against the registry's key, so a service with another would only give
        refused answers."""
        if role is None:
            raise UsageError("the registry in force names no pseudonymizer")
        self.check_named_by_version(role, role.version)

    def check_named_by_version(self, role: PseudonymizerRole, version: int) -> None:
        """Raise ``UsageError`` unless this is the key ``role`` names under ``version`` (its current or,
        during a transition, its previous key)."""
        named = {role.version: role.public}
        if role.previous is not None:
            named[role.previous.version] = role.previous.public
        public = crypto.b64e(self.key.public)
        if self.version != version or named.get(version) != public:
            raise UsageError(
                f"the pseudonymizer's key (v{self.version}, public {public}) is not the one the registry "
                f"names (v{version}, public {named.get(version)}): start it with the key file `lianfang "
                "init` or `lianfang pseudonymizer rotate` wrote, or have the roots sign a registry naming "
                "this key"
            )

    def pseudonyms(self, canonicals: Sequence[str]) -> list[str]:
        """The pseudonyms the service gives, computed directly by the key's holder (the service's tests,
        and test domains that hold the key file)."""
        return [
            oblivious_pseudonym(self.version, oprf.evaluate(self.key, oprf_input(c), MODE))
            for c in canonicals
        ]

    def __repr__(self) -> str:
        return f"PseudonymizerKey(version={self.version}, key={self.key!r})"


def key_file_name(version: int) -> str:
    """The file a rotation writes the key of ``version`` to, in ``HOME/pseudonymizer/`` (``lianfang
    init`` writes the first key to ``key.json``; the version inside a file is what counts)."""
    return f"key.v{version}.json"


def named_versions(role: PseudonymizerRole) -> tuple[int, ...]:
    """The key versions a registry's pseudonymizer role names: the current one, then the previous one
    while a transition lasts."""
    return (role.version,) if role.previous is None else (role.version, role.previous.version)


def retired_versions(held: Iterable[int], role: PseudonymizerRole) -> list[int]:
    """The held key versions the roots have retired: below every version the registry names. A key
    above them (a rotation prepared but not yet published) is not retired."""
    floor = min(named_versions(role))
    return sorted(v for v in held if v < floor)


@dataclass(frozen=True, slots=True)
class EvaluateRequest:
    """A batch of blinded elements and, optionally, the key versions to evaluate it under (the current
    one the client's registry names and, during a transition, the previous one)."""

    elements: tuple[bytes, ...]
    version: int | None = None
    previous: int | None = None

    @classmethod
    def from_bytes(cls, body: bytes) -> EvaluateRequest:
        if len(body) > MAX_BODY_BYTES:
            raise TooLargeError(f"the body is over {MAX_BODY_BYTES} bytes")
        doc = jsonx.strict_json(body, what="evaluation request")
        if (
            not isinstance(doc, dict)
            or "elements" not in doc
            or not set(doc) <= {"elements", "version", "previous"}
            or not isinstance(doc["elements"], list)
        ):
            raise MalformedError(
                'the body is {"elements": ["<base64 blinded element>", ...]}, optionally with "version" '
                'and "previous"'
            )
        version, previous = (_version_field(doc, name) for name in ("version", "previous"))
        if previous is not None and (version is None or previous >= version):
            raise MalformedError('"previous" goes with "version" and is below it')
        items = doc["elements"]
        if not 1 <= len(items) <= oprf.MAX_BATCH:
            raise MalformedError(f"a request carries 1 to {oprf.MAX_BATCH} elements")
        if not all(isinstance(item, str) for item in items):
            raise MalformedError("each element is a base64 string")
        elements = tuple(
            oprf.deserialize_element(crypto.b64d(item, what="blinded element", length=oprf.ELEMENT_LENGTH))
            for item in items
        )
        return cls(elements, version, previous)


def _version_field(doc: dict[str, Any], name: str) -> int | None:
    value = doc.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_PSEUDONYM_KEY_VERSION:
        raise MalformedError(f'"{name}" is a key version, an integer from 0 to {MAX_PSEUDONYM_KEY_VERSION}')
    return value


def answer(
    key: PseudonymizerKey,
    request: EvaluateRequest,
    entropy: oprf.Entropy | None = None,
    *,
    previous: PseudonymizerKey | None = None,
) -> dict[str, Any]:
    """The service's answer to ``request``: the evaluated elements and one proof for the batch, and with
    ``previous`` the same batch under the previous key, with a proof of its own."""
    doc = _evaluation(key, request.elements, entropy)
    if previous is not None:
        evaluated = _evaluation(previous, request.elements, entropy)
        doc["previous"] = {k: evaluated[k] for k in ("version", "public", "evaluated", "proof")}
    return doc


def _evaluation(
    key: PseudonymizerKey, elements: tuple[bytes, ...], entropy: oprf.Entropy | None
) -> dict[str, Any]:
    evaluation = (
        oprf.blind_evaluate(key.key, elements, MODE)
        if entropy is None
        else oprf.blind_evaluate(key.key, elements, MODE, entropy)
    )
    assert evaluation.proof is not None
    return {
        "suite": oprf.IDENTIFIER.decode(),
        "mode": MODE,
        "version": key.version,
        "public": crypto.b64e(key.key.public),
        "evaluated": [crypto.b64e(e) for e in evaluation.elements],
        "proof": crypto.b64e(evaluation.proof),
    }


def parse_answer(body: bytes, *, expected: int) -> tuple[int, bytes, oprf.Evaluation]:
    """``(version, public key, evaluation)`` of an answer, for the client; the proof is checked by
    :func:`services.kernel.oprf.finalize` against the public key the client trusts."""
    return parse_answers(body, expected=expected)[0]


def parse_answers(body: bytes, *, expected: int) -> list[tuple[int, bytes, oprf.Evaluation]]:
    """Each evaluation of an answer as :func:`parse_answer` gives it: the current key's, then (when the
    request asked for it) the previous key's."""
    doc = jsonx.strict_json(body, what="pseudonymizer answer")
    try:
        if doc["suite"] != oprf.IDENTIFIER.decode() or doc["mode"] != MODE:
            raise MalformedError("the pseudonymizer answered with another suite or mode")
        found = [_parse_evaluation(doc, expected)]
        if doc.get("previous") is not None:
            if not isinstance(doc["previous"], dict):
                raise MalformedError("the pseudonymizer's previous evaluation is not an object")
            found.append(_parse_evaluation(doc["previous"], expected))
    except (KeyError, TypeError) as e:
        raise MalformedError("the pseudonymizer's answer is not of the expected shape") from e
    return found


def _parse_evaluation(doc: dict[str, Any], expected: int) -> tuple[int, bytes, oprf.Evaluation]:
    try:
        version, evaluated = doc["version"], doc["evaluated"]
        if not isinstance(version, int) or not isinstance(evaluated, list) or len(evaluated) != expected:
            raise MalformedError("the pseudonymizer's answer does not match the request")
        public = crypto.b64d(doc["public"], what="public key", length=oprf.ELEMENT_LENGTH)
        elements = tuple(
            crypto.b64d(e, what="evaluated element", length=oprf.ELEMENT_LENGTH) for e in evaluated
        )
        proof = crypto.b64d(doc["proof"], what="proof", length=2 * oprf.SCALAR_LENGTH)
    except (KeyError, TypeError) as e:
        raise MalformedError("the pseudonymizer's answer is not of the expected shape") from e
    return version, public, oprf.Evaluation(elements=elements, proof=proof)


DICTIONARY_GUESSES: Final = 365_000
"""The guesses a dictionary of the ID numbers of one region and birth year takes: 365 birth dates times
1,000 sequence numbers (the check digit follows from the rest). The cost of a rate, in the logs and docs."""


def duration_text(seconds: float) -> str:
    """``seconds`` for a person: ``45 s``, ``15 min``, ``5.1 hours``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} hours"


RATES_FORM: Final = "participant=evaluations_per_second[,participant=evaluations_per_second...]"


def parse_rates(text: str) -> dict[str, float]:
    """The rates the operator gives named participants (``LIANFANG_PSEUDONYMIZER_RATES``), e.g.
    ``womens_federation=400,police=100``: participant ids as the registry spells them, each with a
    positive, finite number of evaluations a second. Raises ``UsageError`` naming the first bad entry.

    Whether each name is a participant is not checked here: the registry in force changes at run time
    (:func:`unmatched_rates`)."""
    rates: dict[str, float] = {}
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        name, sep, value = (part.strip() for part in entry.partition("="))
        if not sep or re.fullmatch(PARTICIPANT_ID_PATTERN, name) is None:
            raise UsageError(f"LIANFANG_PSEUDONYMIZER_RATES: {entry!r} is not {RATES_FORM}")
        try:
            rate = float(value)
        except ValueError:
            rate = math.nan
        if not math.isfinite(rate) or rate <= 0:
            raise UsageError(
                f"LIANFANG_PSEUDONYMIZER_RATES: {entry!r}: the rate is a number of evaluations a second "
                "above 0"
            )
        if name in rates:
            raise UsageError(f"LIANFANG_PSEUDONYMIZER_RATES: {name} is given a rate twice")
        rates[name] = rate
    return rates


def unmatched_rates(rates: Iterable[str], participants: Iterable[str]) -> list[str]:
    """The participants given a rate of their own that ``participants`` (the registry in force) does
    not name, sorted: their rate waits, unused, until a registry names them."""
    known = set(participants)
    return sorted(name for name in rates if name not in known)


@dataclass
class RateLimiter:
    """A token bucket per participant: ``rate`` evaluations a second on average (``rates``: a rate of
    its own for a participant the operator named), bursts of ``burst``.

    :meth:`take` returns 0 when the evaluations may go ahead (and takes them), else the seconds after
    which they would.
    """

    rate: float
    burst: int
    rates: Mapping[str, float] = field(default_factory=dict)
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def rate_of(self, participant: str) -> float:
        """The participant's rate: its own if the operator gave it one, else the default."""
        return self.rates.get(participant, self.rate)

    def take(self, participant: str, count: int, now: float) -> float:
        if count > self.burst:
            raise MalformedError(f"a request may carry at most {self.burst} elements here (the burst limit)")
        rate = self.rate_of(participant)
        tokens, then = self._buckets.get(participant, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + max(0.0, now - then) * rate)
        if tokens >= count:
            self._buckets[participant] = (tokens - count, now)
            return 0.0
        self._buckets[participant] = (tokens, now)
        return (count - tokens) / rate
