"""The adapters' side of the pseudonymizer: blind, ask, verify, unblind, derive.

:class:`ObliviousPseudonymizer` turns canonical identifiers into pseudonyms by asking the service the
registry in force names (``POST /v1/evaluate``, RFC 9421-signed with the participant's key, batches of up
to :data:`~services.kernel.oprf.MAX_BATCH`). Each answer's DLEQ proof is verified against the public key
*in the registry*, never the one the service sends, and its key version must be the registry's: a service
that answered with another key (to split or merge one agency's cases) is refused with
:class:`~services.kernel.errors.BadSignatureError`. The service sees only blinded elements.

When the service cannot answer (down, overloaded, rate-limited, refusing our signature), nothing is
computed and :class:`PseudonymizerUnavailableError` (a :class:`TransportError`) says when to retry and
whether waiting can help (``transient``: no answer, 5xx, 429). The SDK then keeps a lead waiting in its
outbox, encrypted, and sends it once the service answers (:mod:`services.sdk.deferred`); a refusal of
the caller fails the publish.

A small in-memory cache keeps the newest answers, so one lead's identifiers are not evaluated twice
(an importer validates a row, then the SDK publishes it). Nothing is logged but counts and codes.
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Final

from prometheus_client import REGISTRY, CollectorRegistry, Counter

from services.gateway import httpsig
from services.kernel import crypto, envelope, jsonx, oprf
from services.kernel.clock import Clock, utcnow
from services.kernel.errors import BadSignatureError, MalformedError, TransportError, UsageError
from services.kernel.keystore import Keystore
from services.kernel.pseudonym import oblivious_pseudonym, oprf_input
from services.kernel.registry import Registry
from services.pseudonymizer import core

log = logging.getLogger("lianfang.pseudonymizer.client")

__all__ = ["ClientMetrics", "ObliviousPseudonymizer", "PseudonymizerUnavailableError"]

DEFAULT_RETRY_AFTER_S: Final = 30
CACHE_SIZE: Final = 4096


class PseudonymizerUnavailableError(TransportError):
    """The pseudonymizer gave no usable answer; nothing was computed. Retry after ``retry_after`` s.

    ``code`` is the service's problem code (``rate_limited``, ``key_not_named``, …) or ``unreachable``;
    ``status`` its HTTP status (``None``: no answer at all).
    """

    def __init__(
        self, message: str, *, code: str, retry_after: int = DEFAULT_RETRY_AFTER_S, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after = retry_after
        self.status = status

    @property
    def transient(self) -> bool:
        """Whether the service is away or busy (no answer, 5xx, 429) rather than refusing this caller
        (401, 403: our key is unknown or revoked there), which waiting would not cure."""
        return self.status is None or self.status == 429 or self.status >= 500


class ClientMetrics:
    """The client's series (one set a process: :func:`shared_metrics`; tests pass a fresh registry)."""

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        self.requests = Counter(
            "lianfang_pseudonymizer_client_requests_total",
            "Evaluation requests to the pseudonymizer, by outcome (ok, unavailable, rate_limited, "
            "bad_proof, malformed).",
            ["outcome"],
            registry=registry,
        )
        self.elements = Counter(
            "lianfang_pseudonymizer_client_elements_total",
            "Identifiers evaluated by the pseudonymizer (cache hits excluded).",
            registry=registry,
        )


_shared: ClientMetrics | None = None


def shared_metrics() -> ClientMetrics:
    global _shared  # noqa: PLW0603 - one set of series per process, created on first use
    if _shared is None:
        _shared = ClientMetrics()
    return _shared


class ObliviousPseudonymizer:
    """Pseudonyms from the pseudonymizer the registry names, for one participant (its signing key).

    ``registry`` is called for the registry in force at each request (the key and version to verify
    against); ``url`` overrides the address the registry gives (never the key).
    """

    def __init__(
        self,
        *,
        keystore: Keystore,
        registry: Callable[[], Registry],
        url: str | None = None,
        timeout_s: float = 10.0,
        clock: Clock = utcnow,
        metrics: ClientMetrics | None = None,
        entropy: oprf.Entropy | None = None,
    ) -> None:
        self.keys = keystore
        self.registry = registry
        self.url = url
        self.timeout_s = timeout_s
        self.clock = clock
        self.metrics = metrics or shared_metrics()
        self.entropy = entropy
        self._cache: OrderedDict[tuple[str, str], str] = OrderedDict()

    def pseudonyms(self, canonicals: Sequence[str]) -> list[str]:
        registry = self.registry()
        role = registry.pseudonymizer
        if role is None:
            raise UsageError(f"registry v{registry.version} names no pseudonymizer")
        public = registry.pseudonymizer_public()
        found: dict[str, str] = {}
        missing: list[str] = []
        for canonical in dict.fromkeys(canonicals):
            cached = self._cache.get((role.public, canonical))
            if cached is None:
                missing.append(canonical)
            else:
                found[canonical] = cached
        for start in range(0, len(missing), oprf.MAX_BATCH):
            chunk = missing[start : start + oprf.MAX_BATCH]
            for canonical, pseudonym in zip(chunk, self._evaluate(registry, public, chunk), strict=True):
                found[canonical] = pseudonym
                self._remember((role.public, canonical), pseudonym)
        return [found[c] for c in canonicals]

    def _remember(self, key: tuple[str, str], pseudonym: str) -> None:
        self._cache[key] = pseudonym
        self._cache.move_to_end(key)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)

    def _evaluate(self, registry: Registry, public: bytes, canonicals: Sequence[str]) -> list[str]:
        role = registry.pseudonymizer
        assert role is not None
        inputs = [oprf_input(c) for c in canonicals]
        blinded = [
            oprf.blind(i, core.MODE) if self.entropy is None else oprf.blind(i, core.MODE, self.entropy)
            for i in inputs
        ]
        body = jsonx.compact_json({"elements": [crypto.b64e(b.element) for b in blinded]})
        answer = self._post(registry, body)
        try:
            version, _offered, evaluation = core.parse_answer(answer, expected=len(inputs))
            if version != role.version:
                raise BadSignatureError(
                    f"the pseudonymizer answered with key v{version}; the registry names v{role.version}"
                )
            # The proof is checked against the registry's key; the key the service offers is ignored.
            outputs = oprf.finalize(inputs, blinded, evaluation, core.MODE, public=public)
        except BadSignatureError:
            self.metrics.requests.labels("bad_proof").inc()
            log.error(
                "the pseudonymizer's answer does not verify against registry v%d's key: refused",
                registry.version,
            )
            raise
        except MalformedError:
            self.metrics.requests.labels("malformed").inc()
            raise
        self.metrics.requests.labels("ok").inc()
        self.metrics.elements.inc(len(inputs))
        return [oblivious_pseudonym(role.version, output) for output in outputs]

    def _post(self, registry: Registry, body: bytes) -> bytes:
        role = registry.pseudonymizer
        assert role is not None
        url = (self.url or role.url).rstrip("/") + "/v1/evaluate"
        if not url.startswith(("http://", "https://")):
            raise UsageError("the pseudonymizer's address must be an http(s) URL")
        now = self.clock()
        kid = envelope.choose_signing_kid(self.keys, registry, now)
        headers = {"Content-Type": "application/json"}
        headers.update(
            httpsig.sign_request(
                "POST",
                url,
                headers=headers,
                body=body,
                key=self.keys.signing_key(kid),
                keyid=kid,
                created=int(now.timestamp()),
            )
        )
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310
                data: bytes = response.read(core.MAX_BODY_BYTES * 2)
                return data
        except urllib.error.HTTPError as e:
            raise self._refused(e) from e
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            self.metrics.requests.labels("unavailable").inc()
            raise PseudonymizerUnavailableError(
                f"the pseudonymizer at {url} did not answer ({type(e).__name__}); nothing was published, "
                f"retry in {DEFAULT_RETRY_AFTER_S} s",
                code="unreachable",
            ) from e

    def _refused(self, e: urllib.error.HTTPError) -> UsageError | PseudonymizerUnavailableError:
        code = _problem_code(e)
        if e.code in (400, 413):  # our own request was wrong: a bug here, not the caller's input
            self.metrics.requests.labels("malformed").inc()
            return UsageError(f"the pseudonymizer refused the request as {code} ({e.code})")
        retry_after = _retry_after(e.headers.get("Retry-After"))
        self.metrics.requests.labels("rate_limited" if e.code == 429 else "unavailable").inc()
        return PseudonymizerUnavailableError(
            f"the pseudonymizer answered {e.code} {code}; nothing was published, retry in {retry_after} s",
            code=code,
            retry_after=retry_after,
            status=e.code,
        )


def _problem_code(e: urllib.error.HTTPError) -> str:
    try:
        doc = jsonx.strict_json(e.read(4096), what="problem")
    except (MalformedError, OSError):
        return "unknown"
    title = doc.get("title") if isinstance(doc, dict) else None
    return title if isinstance(title, str) and title.isidentifier() and len(title) <= 64 else "unknown"


def _retry_after(value: str | None) -> int:
    if value is not None and value.strip().isdigit():
        return max(1, min(int(value.strip()), 3600))
    return DEFAULT_RETRY_AFTER_S
