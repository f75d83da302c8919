"""The HTTP gateway as a fuzz target: schemathesis generates requests from its own OpenAPI document.

Each generated request is sent twice to a gateway running in a thread of this process on 127.0.0.1:

- as generated (its signature headers are fuzzed text): ``/v1/events`` and ``/v1/inbox`` must refuse
  it with a 4xx ``application/problem+json`` whose ``status`` is the HTTP status;
- signed as an agency signs it (RFC 9421, the police's registered key, over the generated method, URL,
  body and Idempotency-Key): any answer but a 5xx, and every refusal a problem document.

A 5xx, an answer that is not a problem document, or no answer within :data:`HANG_S` is a finding.
The gateway runs at the fixed clock ``tests.kit.NOW``, its outboxes undrained; its inbox is read from a
real Kafka (the caller's), where the police's inbox holds one event and some records that are not.
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import seed as fixed_seed
from hypothesis.errors import Unsatisfiable
from hypothesis.strategies import SearchStrategy
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry
from schemathesis import GenerationMode

from services.bus import cluster
from services.gateway.app import Gateway, GatewaySettings
from services.gateway.client import signed_headers
from services.gateway.problems import MEDIA_TYPE
from services.kernel import envelope, topics
from tests.kit import CONTENT, NOW, DemoDomain, header

SERVED: Final = ("police", "womens_federation")
SIGNER: Final = "police"
HANG_S: Final = 10.0
_SIGNATURE_HEADERS: Final = ("Signature", "Signature-Input", "Content-Digest", "Content-Type")


class GatewayFindingError(AssertionError):
    """The gateway broke the contract for one request."""


def unscoped(document: dict[str, Any]) -> dict[str, Any]:
    """The document with each embedded event schema's ``$id`` scope removed and its ``#/$defs/...``
    references rewritten to point into ``#/components/schemas/<name>/$defs/...``.

    The two documents mean the same; schemathesis resolves ``#/$defs`` against the whole document
    rather than against the embedded schema's ``$id`` and then silently generates no request body.
    """
    out = copy.deepcopy(document)
    for name, schema in out["components"]["schemas"].items():
        if schema.pop("$id", None) is not None:
            _rewrite_refs(schema, f"#/components/schemas/{name}/$defs/")
    return out


def _rewrite_refs(node: Any, prefix: str) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/"):
                node[key] = prefix + value.removeprefix("#/$defs/")
            else:
                _rewrite_refs(value, prefix)
    elif isinstance(node, list):
        for item in node:
            _rewrite_refs(item, prefix)


@dataclass
class RunningGateway:
    """A gateway on a loopback port, served from a thread with its own event loop."""

    domain: DemoDomain
    gateway: Gateway
    base_url: str
    _loop: asyncio.AbstractEventLoop
    _runner: web.AppRunner
    _thread: threading.Thread

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()
        self.gateway.close()


def _fill_inbox(bootstrap: str, prefix: str, domain: DemoDomain) -> None:
    """One event sealed to the police, and records that are not envelopes, in the police's inbox."""
    names = topics.TopicNames(prefix)
    sealed = envelope.seal(header(), CONTENT, registry=domain.registry, signer=domain.keys("police"))
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    records = [(sealed.key, sealed.value), (b"x", b"not an envelope"), (None, b""), (b"k", b"{}")]
    futures = [producer.send(names.inbox("police"), key=k, value=v) for k, v in records]
    producer.flush()
    producer.close()
    for future in futures:
        future.get(timeout=30)


@contextmanager
def running_gateway(folder: Path, *, bootstrap: str, prefix: str) -> Iterator[RunningGateway]:
    """A gateway for :data:`SERVED` over a new demo domain in ``folder``, on topics named with
    ``prefix`` (made here) at ``bootstrap``."""
    domain = DemoDomain.create(folder / ".lianfang")
    cluster.apply_topics(bootstrap, domain.registry.participant_ids(), prefix=prefix)
    _fill_inbox(bootstrap, prefix, domain)
    gateway = Gateway(
        GatewaySettings(
            bootstrap=bootstrap, participants=SERVED, spool_dir=folder / "spool", topic_prefix=prefix
        ),
        registry=domain.registry,
        keystores={p: domain.keys(p) for p in SERVED},
        metrics_registry=CollectorRegistry(),
        clock=lambda: NOW,
        drain=False,
    )
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(gateway.application(), access_log=None, handle_signals=False)

    async def start() -> int:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return int(runner.addresses[0][1])

    port = loop.run_until_complete(start())
    thread = threading.Thread(target=loop.run_forever, name="fuzzed-gateway", daemon=True)
    thread.start()
    running = RunningGateway(domain, gateway, f"http://127.0.0.1:{port}", loop, runner, thread)
    try:
        yield running
    finally:
        running.stop()


@dataclass
class GatewayOutcome:
    """What a run did: requests sent, answers by status, and the findings (one an operation)."""

    requests: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)
    by_operation: dict[str, int] = field(default_factory=dict)
    problems: dict[str, int] = field(default_factory=dict)


def fuzz_gateway(gw: RunningGateway, *, examples: int, seed: int) -> GatewayOutcome:
    """``examples`` generated requests for each operation and generation mode, each sent unsigned
    and signed. The same seed generates the same requests."""
    document = json.loads(gw.gateway.openapi)
    schema = schemathesis.openapi.from_dict(unscoped(document))
    outcome = GatewayOutcome()
    session = requests.Session()
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            check = _checker(gw, session, outcome, signed_path=operation.path != "/v1/openapi.json")
            before = outcome.requests
            try:
                _generate(operation.as_strategy(generation_mode=mode), check, examples=examples, seed=seed)
            except Unsatisfiable:  # an operation without parameters has no negative cases
                pass
            except GatewayFindingError as e:
                outcome.findings.append(f"{operation.method.upper()} {operation.path} ({mode.value}): {e}")
            outcome.by_operation[f"{operation.method.upper()} {operation.path} {mode.value}"] = (
                outcome.requests - before
            )
    session.close()
    return outcome


def _generate(
    strategy: SearchStrategy[Any], check: Callable[[Any], None], *, examples: int, seed: int
) -> None:
    """Check ``examples`` cases drawn from ``strategy``; a finding is shrunk to a small case."""

    @fixed_seed(seed)
    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        check(case)

    run()


def _checker(
    gw: RunningGateway, session: requests.Session, outcome: GatewayOutcome, *, signed_path: bool
) -> Callable[[Any], None]:
    store = gw.domain.keys(SIGNER)
    kid = sorted(store.signing)[-1]

    def send(prepared: requests.PreparedRequest) -> requests.Response:
        try:
            response = session.send(prepared, timeout=HANG_S)
        except requests.Timeout as e:
            raise GatewayFindingError(f"no answer within {HANG_S} s") from e
        outcome.requests += 1
        outcome.statuses[response.status_code] = outcome.statuses.get(response.status_code, 0) + 1
        return response

    def check(case: Any) -> None:
        kwargs = case.as_transport_kwargs(base_url=gw.base_url)
        kwargs.pop("cookies", None)
        try:
            prepared = requests.Request(**kwargs).prepare()
            response = send(prepared)
        except (ValueError, UnicodeError, requests.exceptions.InvalidHeader):
            reject()  # requests will not send it (a header value it cannot encode): not a request
        _contract(response, refused=signed_path)
        if not signed_path:
            return
        body = prepared.body.encode() if isinstance(prepared.body, str) else prepared.body
        assert body is None or isinstance(body, bytes)
        headers = {
            k: v if isinstance(v, str) else v.decode("latin-1")
            for k, v in prepared.headers.items()
            if k not in _SIGNATURE_HEADERS
        }
        idempotency = headers.pop("Idempotency-Key", None)
        assert prepared.method is not None
        assert prepared.url is not None
        try:
            headers.update(
                signed_headers(
                    store,
                    kid,
                    prepared.method,
                    prepared.url,
                    body,
                    idempotency_key=idempotency,
                    created=int(NOW.timestamp()),
                )
            )
            prepared.prepare_headers(headers)
            if body is not None:
                prepared.prepare_content_length(body)
            response = send(prepared)
        except (ValueError, UnicodeError, requests.exceptions.InvalidHeader):
            return  # the signed copy cannot be sent; the unsigned one was checked
        _contract(response, refused=False)
        if response.status_code >= 400:
            kind = f"{response.status_code} {str(response.json().get('type', '')).rsplit('/', 1)[-1]}"
            outcome.problems[kind] = outcome.problems.get(kind, 0) + 1

    return check


def _contract(response: requests.Response, *, refused: bool) -> None:
    status = response.status_code
    if status >= 500:
        raise GatewayFindingError(f"answered {status}: {response.text[:300]}")
    if refused and status < 400:
        raise GatewayFindingError(f"an unsigned request was answered {status}")
    if status < 400:
        return
    if response.headers.get("Content-Type", "").split(";")[0] != MEDIA_TYPE:
        raise GatewayFindingError(f"a {status} answer is {response.headers.get('Content-Type')!r}")
    try:
        problem = response.json()
    except ValueError as e:
        raise GatewayFindingError(f"a {status} answer is not JSON") from e
    if not isinstance(problem, dict) or problem.get("status") != status or "type" not in problem:
        raise GatewayFindingError(f"a {status} answer is not a problem document: {response.text[:300]}")


__all__ = ["GatewayOutcome", "RunningGateway", "fuzz_gateway", "running_gateway", "unscoped"]
