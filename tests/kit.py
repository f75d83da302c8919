"""Helpers shared by the tests: a fixed clock, a demo domain with cached keystores, header builders."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ParamSpec, TypeVar

from aiohttp import web
from aiohttp.test_utils import TestServer

from schemas.envelope import EnvelopeHeader
from services import trust
from services.bus.eos import Handler, TransactionalRunner
from services.bus.security import KafkaSecuritySettings
from services.kernel import crypto, envelope, jsonx
from services.kernel.keystore import KdfParams, Keystore
from services.kernel.pseudonym import Pseudonymizer, PseudonymKey, normalize_subject
from services.kernel.registry import Registry
from services.pseudonymizer.client import work_process
from services.pseudonymizer.core import PseudonymizerKey
from services.pseudonymizer.metrics import PseudonymizerMetrics

NOW = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
"""The tests' clock: the demo domain is issued at NOW and expires 90 days later."""


@dataclass
class DemoDomain:
    home: Path
    trust: trust.TrustDomain
    registry: Registry
    _stores: dict[str, Keystore] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        home: Path,
        now: datetime = NOW,
        lifetime: timedelta = trust.DEFAULT_LIFETIME,
        *,
        pseudonymizer_url: str | None = None,
    ) -> DemoDomain:
        """A demo domain; with ``pseudonymizer_url`` its registry names a pseudonymizer there (and holds
        no pseudonym secret), else it seals a pseudonym key to every participant (an older domain)."""
        domain = trust.init_domain(
            home, now=now, kdf=KdfParams.for_tests(), lifetime=lifetime, pseudonymizer_url=pseudonymizer_url
        )
        return cls(home=home, trust=domain, registry=domain.registry(now))

    def keys(self, participant: str) -> Keystore:
        if participant not in self._stores:
            self._stores[participant] = self.trust.keystore(participant)
        return self._stores[participant]

    def pseudonym_key(self) -> PseudonymKey:
        return self.registry.pseudonym_key("police", self.keys("police").encryption)

    def pseudonymizer_key(self) -> PseudonymizerKey:
        """The pseudonymizer's own key (only its operator holds it: the tests play that part)."""
        return PseudonymizerKey.from_json((self.home / trust.PSEUDONYMIZER_KEY).read_bytes())

    def pseudonymizer(self) -> Pseudonymizer:
        """What gives this domain's pseudonyms, computed here without asking anyone: the sealed key, or
        the pseudonymizer's key as its operator holds it."""
        return self.pseudonym_key() if self.registry.pseudonymizer is None else self.pseudonymizer_key()

    def subject(self, phone: str = "13800000000") -> str:
        return self.pseudonymizer().pseudonyms([normalize_subject(phone=phone)])[0]


def header(**overrides: Any) -> EnvelopeHeader:
    """A valid clear header of a DV lead reported by police in 仁和镇 at NOW; override any field."""
    fields: dict[str, Any] = {
        "v": 1,
        "specversion": "1.0",
        "id": envelope.new_event_id(int(NOW.timestamp() * 1000)),
        "source": "urn:lianfang:police",
        "type": "lead.reported",
        "time": NOW.isoformat(),
        "subject": "p1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "schema": "lead.reported/1",
        "category": "domestic_violence",
        "minor": False,
        "town": "renhe",
        "urgency": "urgent",
        "policy": 1,
        "registry": 1,
    }
    fields.update(overrides)
    if isinstance(fields["time"], datetime):
        fields["time"] = fields["time"].isoformat()
    return EnvelopeHeader.model_validate_json(json.dumps(fields))


CONTENT = {
    "triage": {"category": "domestic_violence", "risk_indicators": ["threats_to_kill"], "minor": False},
    "details": {
        "victim": {"name": "张某某", "phone": "13800000000"},
        "narrative": "丈夫多次殴打, 邻居报警。",
    },
}


def sections_for(h: EnvelopeHeader, content: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``content`` as the SDK would seal it under ``h``: a lead's triage completed with the fields its
    schema requires, from the header (the hub refuses a triage its schema refuses)."""
    if h.type != "lead.reported":
        return content
    required = {
        "category": h.category,
        "channel": "police_call",
        "minor": bool(h.minor),
        "victim_pseudonym": h.subject,
        "requests_joint_meeting": False,
        **({"town": h.town} if h.town else {}),
    }
    return {**content, "triage": {**required, **content.get("triage", {})}}


def seal(
    domain: DemoDomain, *, sender: str = "police", registry: Registry | None = None, **fields: Any
) -> bytes:
    """Seal CONTENT under a header built from ``fields``, signed by ``sender``."""
    fields.setdefault("source", f"urn:lianfang:{sender}")
    h = header(**fields)
    return envelope.seal(h, CONTENT, registry=registry or domain.registry, signer=domain.keys(sender)).value


class SetClock:
    """A clock that stands still at ``now`` until a test moves it (``clock.now += ...``)."""

    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def later(minutes: int) -> datetime:
    return NOW + timedelta(minutes=minutes)


def rewrite_body(value: bytes, edit: Any, signer: Keystore | None = None, kid: str | None = None) -> bytes:
    """Decode an envelope, let ``edit(header_bytes, sections_dict)`` change it, and re-frame it.

    Without ``signer`` the original signature is kept (an outsider's tampering); with one, the
    edited body is signed again (an insider who holds a valid key).
    """
    dsse = json.loads(value)
    body = crypto.b64d(dsse["payload"], what="payload")
    header_bytes, _, sections_bytes = body.partition(b"\n")
    header_bytes, sections = edit(header_bytes, json.loads(sections_bytes))
    new_body = header_bytes + b"\n" + jsonx.compact_json(sections)
    dsse["payload"] = crypto.b64e(new_body)
    if signer is not None:
        use = kid or next(iter(signer.signing))
        sig = crypto.sign(signer.signing_key(use), dsse["payloadType"], new_body)
        dsse["signatures"] = [{"keyid": use, "sig": crypto.b64e(sig)}]
    return jsonx.compact_json(dsse)


class RandomKeyFor(envelope.SystemEntropy):
    """Sealing entropy of a hostile or broken sender: the data key wrapped for ``victim`` is random, so
    the envelope verifies (the router routes it) but ``victim`` cannot decrypt its sections."""

    def __init__(self, victim: str) -> None:
        self.victim = victim.encode()

    def hpke_wrap(self, recipient_public_raw: bytes, plaintext: bytes, info: bytes) -> bytes:
        to = info.split(b"\0")[3]  # envelope.wrap_info: label, event id, section, recipient, kid
        if to == self.victim:
            plaintext = os.urandom(len(plaintext))
        return super().hpke_wrap(recipient_public_raw, plaintext, info)


def until(condition: Callable[[], bool], what: str, deadline_s: float = 10.0) -> None:
    """Poll ``condition`` (another thread changes what it reads) until it holds; fail after the deadline."""
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {deadline_s} s")
        time.sleep(0.005)  # the poll interval inside the deadline


class Served:
    """An aiohttp application on loopback, its event loop in a thread (the client under test blocks)."""

    def __init__(self, app: web.Application, port: int | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = TestServer(app, host="127.0.0.1", port=port)
        asyncio.run_coroutine_threadsafe(self.server.start_server(), self.loop).result(30)
        self.url = str(self.server.make_url("")).rstrip("/")

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


def serve_pseudonymizer(domain: DemoDomain, port: int, clock: Callable[[], datetime] = lambda: NOW) -> Served:
    """The pseudonymizer of an oblivious demo domain on 127.0.0.1:``port`` (where its registry says it
    is), without a rate limit for the tests' callers, whose signatures may be dated at ``NOW`` whatever
    the day; stop it with ``close()``."""
    from prometheus_client import CollectorRegistry

    from services.pseudonymizer.app import Pseudonymizer, PseudonymizerSettings, load_keys

    service = Pseudonymizer(
        PseudonymizerSettings(rate_per_s=1e9, max_skew_s=10**9),
        key=load_keys(domain.home, domain.registry),
        registry=domain.registry,
        trail=None,
        clock=clock,
        metrics=PseudonymizerMetrics(CollectorRegistry()),
    )
    return Served(service.application(), port=port)


def offline_runner(
    handler: Handler, *, source: str = "events", on_restart: Callable[[], None] | None = None
) -> TransactionalRunner:
    """An exactly-once runner for unit tests: a bootstrap in a range reserved for testing that no
    broker answers, no login; the test gives it fake Kafka clients or replaces its loop."""
    return TransactionalRunner(
        bootstrap="198.18.0.1:9",
        group_id="g",
        source=source,
        state_topic="state",
        handler=handler,
        security=KafkaSecuritySettings(),
        on_restart=on_restart,
    )


class BatchSending:
    """What the exactly-once runner asks of a producer to send a batch (``create_batch``,
    ``send_batch``, ``partitions_for`` and the cluster's partitions), for a fake transactional producer
    that defines ``send(topic, value, key=, headers=, partition=)``: a batch sent is each of its
    records sent in order, and delivered once every one of them is (the first failure fails it)."""

    PARTITIONS = 3

    @property
    def client(self) -> Any:
        every = set(range(self.PARTITIONS))
        cluster = SimpleNamespace(available_partitions_for_topic=lambda _topic: every)
        return SimpleNamespace(cluster=cluster)

    async def partitions_for(self, _topic: str) -> set[int]:
        return set(range(self.PARTITIONS))

    def create_batch(self) -> FakeBatch:
        return FakeBatch()

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> asyncio.Future[None]:
        sends = [
            await self.send(topic, value, key=key, headers=headers, partition=partition)  # type: ignore[attr-defined]
            for key, value, headers in batch.records
        ]
        return asyncio.ensure_future(_all_delivered(sends))


@dataclass
class FakeBatch:
    """A record batch being built: every record fits."""

    records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = field(default_factory=list)

    def append(
        self,
        *,
        timestamp: float | None,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
    ) -> object:
        self.records.append((key, value, headers))
        return object()


async def _all_delivered(sends: list[asyncio.Future[None]]) -> None:
    for result in await asyncio.gather(*sends, return_exceptions=True):
        if isinstance(result, BaseException):
            raise result


P = ParamSpec("P")
T = TypeVar("T")


class WatchedWork(Executor):
    """The pool :func:`services.pseudonymizer.client.work_process` makes (``pool``), noting the name of
    each function that ran to its end in its process (``ran``)."""

    def __init__(self) -> None:
        self.pool = work_process()
        self.ran: list[str] = []

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        future = self.pool.submit(fn, *args, **kwargs)
        future.add_done_callback(lambda f: f.exception() is None and self.ran.append(fn.__name__))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.pool.shutdown(wait, cancel_futures=cancel_futures)
