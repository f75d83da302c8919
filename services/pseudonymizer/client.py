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
the caller fails the publish. After a 429 the client asks nothing more until the service's Retry-After
has passed: every caller meanwhile (an SDK's publishers, the outbox's sender, an import reading ahead)
gets the same error at once, without a request that would only be refused again.

During a key transition (the registry names a previous key, or still seals the HMAC key of a domain
moving to the pseudonymizer) :meth:`ObliviousPseudonymizer.epochs` gives each identifier's pseudonym under
the current key and under the previous one: one request evaluated under both keys, each evaluation's proof
checked against the registry's key of its version (or, for the sealed key, the HMAC computed here). The
SDK puts the previous one in the header's ``links``.

The client's arithmetic (blinding each identifier, then checking the proofs, unblinding and deriving)
costs about 0.2 ms an identifier, most of it libsodium calls that give up the caller's interpreter lock
and must win it back from the caller's busy threads; with ``work`` (a process pool: an import's) it runs
in another process, so that the caller's own work (mapping, sealing, storing) and the next batch's
arithmetic use two CPUs. What crosses to that process: the identifiers, the request's blinds and the
service's answer; never a key (the request is signed here). If that process dies, the client says so
once in the log and does the arithmetic in the caller's thread from then on.

A small in-memory cache keeps the newest answers, so one lead's identifiers are not evaluated twice
(an importer validates a row, then the SDK publishes it); it is emptied whenever the registry in force
names other keys, and the sealed key is dropped once the registry no longer carries it. Nothing is logged
but counts and codes.
"""

from __future__ import annotations

import http.client
import logging
import math
import multiprocessing
import signal
import ssl
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from email.message import Message
from typing import Final, ParamSpec, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter

from services.gateway import httpsig
from services.kernel import envelope, jsonx, oprf
from services.kernel.clock import Clock, utcnow
from services.kernel.errors import BadSignatureError, MalformedError, TransportError, UsageError
from services.kernel.keystore import Keystore
from services.kernel.pseudonym import (
    EpochPseudonyms,
    PseudonymKey,
    pseudonym,
)
from services.kernel.registry import Registry
from services.pseudonymizer import blinding, core
from services.pseudonymizer.coalesce import Coalescer

log = logging.getLogger("lianfang.pseudonymizer.client")

P = ParamSpec("P")
T = TypeVar("T")

__all__ = ["ClientMetrics", "ObliviousPseudonymizer", "PseudonymizerUnavailableError", "work_process"]

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


def work_process() -> ProcessPoolExecutor:
    """One process for a client's arithmetic (``ObliviousPseudonymizer(work=...)``), started on first use
    and fresh (``spawn``: nothing of this process, its threads or its keys, is inherited). Its owner shuts
    it down after the client is closed. It ignores Ctrl-C: the owner stops on it, then shuts it down.
    As with any ``spawn`` pool, the new process imports the program's main module again: a program run
    as a script keeps its work under ``if __name__ == "__main__":`` (``lianfang`` and ``python -m`` do)."""
    spawn = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(1, mp_context=spawn, initializer=_ignore_interrupts)


def _ignore_interrupts() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class ObliviousPseudonymizer:
    """Pseudonyms from the pseudonymizer the registry names, for one participant (its signing key).

    ``registry`` is called for the registry in force at each request (the key and version to verify
    against); ``url`` overrides the address the registry gives (never the key). Concurrent callers share
    requests, ``in_flight`` of them at a time (see :mod:`.coalesce`): more than one for a caller that asks
    ahead (an import), one for many small callers. ``work``: where the arithmetic runs (a process pool;
    ``None``: in the caller's thread, as always with ``entropy``, which tests inject).
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
        monotonic: Callable[[], float] = time.monotonic,
        in_flight: int = 1,
        work: Executor | None = None,
    ) -> None:
        self.keys = keystore
        self.work = work if entropy is None else None
        self.registry = registry
        self.url = url
        self.timeout_s = timeout_s
        self.clock = clock
        self.metrics = metrics or shared_metrics()
        self.entropy = entropy
        self.monotonic = monotonic
        self._quiet_until = 0.0  # after a 429: no request before this (monotonic) time
        self._cache: OrderedDict[str, EpochPseudonyms] = OrderedDict()
        self._epoch: tuple[str, str | None, int | None] | None = None
        self._sealed: PseudonymKey | None = None
        self._lock = threading.Lock()  # the cache: an import's threads and an SDK's publishers share it
        # Threads asking at once (an SDK client's publishers, the gateway's requests) share one request.
        self._requests: Coalescer[Registry, EpochPseudonyms] = Coalescer(
            self._evaluate_all, limit=oprf.MAX_BATCH, in_flight=in_flight
        )
        self._connections = _Connections(timeout_s)

    def rate_limited_for(self) -> float:
        """Seconds left of the service's last 429 Retry-After (0: this client asks again)."""
        return max(0.0, self._quiet_until - self.monotonic())

    def pseudonyms(self, canonicals: Sequence[str]) -> list[str]:
        """The pseudonym of each canonical identifier under the current key, in order."""
        return [e.current for e in self.epochs(canonicals)]

    def epochs(self, canonicals: Sequence[str]) -> list[EpochPseudonyms]:
        """Each canonical identifier's pseudonym under the current key and, during a key transition,
        under the previous one (the subject, and what goes into ``links``), in order."""
        registry = self.registry()
        role = registry.pseudonymizer
        if role is None:
            raise UsageError(f"registry v{registry.version} names no pseudonymizer")
        found: dict[str, EpochPseudonyms] = {}
        missing: list[str] = []
        with self._lock:  # the cache only: the request is shared with the callers asking meanwhile
            sealed = self._sealed_key(registry)
            epoch = (
                role.public,
                role.previous.public if role.previous else None,
                sealed.version if sealed else None,
            )
            if epoch != self._epoch:  # other keys: nothing cached under the old ones is kept
                self._cache.clear()
                self._epoch = epoch
            for canonical in dict.fromkeys(canonicals):
                cached = self._cache.get(canonical)
                if cached is None:
                    missing.append(canonical)
                else:
                    found[canonical] = cached
        evaluated = self._requests.run(registry, missing)
        for canonical, answer in zip(missing, evaluated, strict=True):
            pair = answer if sealed is None else EpochPseudonyms(answer.current, pseudonym(sealed, canonical))
            found[canonical] = pair
            self._remember(canonical, pair, epoch)
        return [found[c] for c in canonicals]

    def _evaluate_all(self, registry: Registry, canonicals: list[str]) -> list[EpochPseudonyms]:
        """Every identifier evaluated, in requests of at most :data:`~services.kernel.oprf.MAX_BATCH`."""
        out: list[EpochPseudonyms] = []
        for start in range(0, len(canonicals), oprf.MAX_BATCH):
            out += self._evaluate(registry, canonicals[start : start + oprf.MAX_BATCH])
        return out

    def _sealed_key(self, registry: Registry) -> PseudonymKey | None:
        """The sealed HMAC key while the registry carries it beside the pseudonymizer (a domain moving
        over); dropped from memory as soon as a registry in force no longer does."""
        sealed = registry.document.pseudonym_key
        if sealed is None:
            self._sealed = None
            return None
        if self._sealed is None or self._sealed.version != sealed.version:
            try:
                self._sealed = registry.pseudonym_key(self.keys.participant, self.keys.encryption)
            except UsageError:
                log.warning(
                    "registry v%d seals the previous pseudonym key to none of %s's keys: leads carry no "
                    "link to the sealed-key pseudonym",
                    registry.version, self.keys.participant,
                )  # fmt: skip
                return None
        return self._sealed

    def _remember(self, canonical: str, pair: EpochPseudonyms, epoch: object) -> None:
        with self._lock:
            if epoch != self._epoch:  # another thread met other keys meanwhile: not theirs to keep
                return
            self._cache[canonical] = pair
            self._cache.move_to_end(canonical)
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)

    def _evaluate(self, registry: Registry, canonicals: Sequence[str]) -> list[EpochPseudonyms]:
        role = registry.pseudonymizer
        assert role is not None
        quiet = self.rate_limited_for()
        if quiet > 0:  # the service said when to come back; asking sooner would only be refused again
            retry_after = max(1, math.ceil(quiet))
            raise PseudonymizerUnavailableError(
                f"the pseudonymizer rate-limits {self.keys.participant}; nothing was published, retry in "
                f"{retry_after} s",
                code="rate_limited",
                retry_after=retry_after,
                status=429,
            )
        wanted = [(role.version, registry.pseudonymizer_public())]
        previous_public = registry.pseudonymizer_previous_public()
        if role.previous is not None and previous_public is not None:
            wanted.append((role.previous.version, previous_public))
        body, blinded = self._compute(
            blinding.blind_request,
            canonicals,
            role.version,
            role.previous.version if role.previous is not None else None,
            self.entropy,
        )
        answer = self._post(registry, body)
        try:
            pairs = self._compute(blinding.read_answer, canonicals, blinded, answer, wanted)
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
        self.metrics.elements.inc(len(canonicals))
        return pairs

    def _compute(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args)`` in the work pool (the caller waits), or here when there is none or it died."""
        work = self.work
        if work is not None:
            try:
                future = work.submit(fn, *args, **kwargs)
            except RuntimeError:  # shut down (its owner is closing) or broken before: fn has not run
                self._work_gone(work)
            else:
                try:
                    return future.result()
                except BrokenProcessPool:  # the process died under fn: computing it again is harmless
                    self._work_gone(work)
        return fn(*args, **kwargs)

    def _work_gone(self, work: Executor) -> None:
        """Stop using ``work``, saying so once (threads that were using it all come here)."""
        with self._lock:
            if self.work is not work:
                return
            self.work = None
        log.warning(
            "the pseudonymizer client's work process is gone: its arithmetic runs in the caller's thread "
            "from now on"
        )

    def _post(self, registry: Registry, body: bytes) -> bytes:
        role = registry.pseudonymizer
        assert role is not None
        url = (self.url or role.url).rstrip("/") + "/v1/evaluate"
        if not url.startswith(("http://", "https://")):
            raise UsageError("the pseudonymizer's address must be an http(s) URL")
        try:
            urllib.parse.urlsplit(url).port  # noqa: B018 (parsing it is the check)
        except ValueError as e:
            raise UsageError(f"the pseudonymizer's address has no valid port: {e}") from e
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
        try:
            status, answer_headers, data = self._connections.post(url, body, headers)
        except (OSError, http.client.HTTPException) as e:  # TimeoutError is an OSError
            self.metrics.requests.labels("unavailable").inc()
            raise PseudonymizerUnavailableError(
                f"the pseudonymizer at {url} did not answer ({type(e).__name__}); nothing was published, "
                f"retry in {DEFAULT_RETRY_AFTER_S} s",
                code="unreachable",
            ) from e
        if not 200 <= status < 300:
            raise self._refused(status, answer_headers, data)
        return data

    def close(self) -> None:
        """Close the connections kept open to the service (a later request opens a new one)."""
        self._connections.close()

    def _refused(
        self, status: int, headers: Message, body: bytes
    ) -> UsageError | PseudonymizerUnavailableError:
        code = _problem_code(body)
        if status in (400, 413):  # our own request was wrong: a bug here, not the caller's input
            self.metrics.requests.labels("malformed").inc()
            return UsageError(f"the pseudonymizer refused the request as {code} ({status})")
        retry_after = _retry_after(headers.get("Retry-After"))
        self.metrics.requests.labels("rate_limited" if status == 429 else "unavailable").inc()
        if status == 429:
            self._quiet_until = self.monotonic() + retry_after
        return PseudonymizerUnavailableError(
            f"the pseudonymizer answered {status} {code}; nothing was published, retry in {retry_after} s",
            code=code,
            retry_after=retry_after,
            status=status,
        )


class _Connections:
    """HTTP/1.1 connections to the service kept open between requests, one per request in flight.

    A request took a new TCP connection each (urllib): about 0.3 ms of a publish's time on loopback,
    more across machines and with TLS. A request takes an idle connection, or opens one, and gives it
    back once its answer was read whole and the service did not ask to close it. A kept connection
    that turns out closed (the service's idle timeout, most likely, before it read the request) gets
    the request once more on a new connection: an evaluation is deterministic, so at worst the service
    counts one twice. Any other failure is the caller's.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._idle: list[tuple[tuple[str, str, int | None], http.client.HTTPConnection]] = []
        self._lock = threading.Lock()

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, Message, bytes]:
        """The status, headers and body (at most twice the service's largest answer) of a POST."""
        parts = urllib.parse.urlsplit(url)
        origin = (parts.scheme, parts.hostname or "", parts.port)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        kept = self._take(origin)
        if kept is not None:
            try:
                return self._send(origin, kept, target, body, headers)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                pass  # closed by the service while idle: once more on a new connection
        return self._send(origin, self._open(origin), target, body, headers)

    def _send(
        self,
        origin: tuple[str, str, int | None],
        connection: http.client.HTTPConnection,
        target: str,
        body: bytes,
        headers: dict[str, str],
    ) -> tuple[int, Message, bytes]:
        limit = core.MAX_BODY_BYTES * 2
        try:
            connection.request("POST", target, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read(limit + 1)
        except BaseException:
            connection.close()
            raise
        if response.will_close or len(data) > limit or not response.isclosed():
            connection.close()  # not read to its end, or the service closes it: not reusable
        else:
            with self._lock:
                self._idle.append((origin, connection))
        return response.status, response.headers, data[:limit]

    def _take(self, origin: tuple[str, str, int | None]) -> http.client.HTTPConnection | None:
        with self._lock:
            for i, (where, connection) in enumerate(self._idle):
                if where == origin:
                    del self._idle[i]
                    return connection
        return None

    def _open(self, origin: tuple[str, str, int | None]) -> http.client.HTTPConnection:
        scheme, host, port = origin
        if scheme == "https":
            return http.client.HTTPSConnection(
                host, port, timeout=self.timeout_s, context=ssl.create_default_context()
            )
        return http.client.HTTPConnection(host, port, timeout=self.timeout_s)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for _, connection in idle:
            connection.close()


def _problem_code(body: bytes) -> str:
    try:
        doc = jsonx.strict_json(body[:4096], what="problem")
    except MalformedError:
        return "unknown"
    title = doc.get("title") if isinstance(doc, dict) else None
    return title if isinstance(title, str) and title.isidentifier() and len(title) <= 64 else "unknown"


def _retry_after(value: str | None) -> int:
    if value is not None and value.strip().isdigit():
        return max(1, min(int(value.strip()), 3600))
    return DEFAULT_RETRY_AFTER_S
