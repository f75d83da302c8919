"""The pseudonymization service over HTTP on loopback, without Kafka: signed requests from registry
participants get verifiable evaluations; unsigned ones, over-rate ones and malformed ones get a problem
with a code, counted; every answered batch is an audit entry naming who asked and how many."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from services.audit.trail import participant_trail
from services.gateway.client import signed_headers
from services.kernel import crypto, ids, oprf
from services.pseudonymizer import core
from services.pseudonymizer.app import Pseudonymizer, PseudonymizerSettings, load_key
from tests.kit import NOW, DemoDomain

pytestmark = pytest.mark.unit


class Harness:
    def __init__(self, domain: DemoDomain, tmp: Path, **settings: Any) -> None:
        self.domain = domain
        self.loop = asyncio.new_event_loop()
        self.key = load_key(domain.home, domain.registry)
        self.audit_dir = tmp / "audit"
        self.trail = participant_trail(self.audit_dir, domain.keys(ids.PLC), domain.registry, "pseudonymizer",
                                       ship=None, clock=lambda: NOW)  # fmt: skip
        self.service = Pseudonymizer(
            PseudonymizerSettings(**settings), key=self.key, registry=domain.registry, trail=self.trail,
            clock=lambda: NOW,
        )  # fmt: skip
        self.server = TestServer(self.service.application(), host="127.0.0.1")
        self.loop.run_until_complete(self.server.start_server())

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    def post(self, body: bytes, participant: str | None = "police") -> tuple[int, dict[str, str], Any]:
        headers = {"Content-Type": "application/json"}
        if participant is not None:
            store = self.domain.keys(participant)
            kid = next(iter(store.public_signing_keys()))
            headers = signed_headers(
                store, kid, "POST", self.url("/v1/evaluate"), body, created=int(NOW.timestamp())
            )

        async def go() -> tuple[int, dict[str, str], Any]:
            async with (
                aiohttp.ClientSession() as session,
                session.post(self.url("/v1/evaluate"), data=body, headers=headers) as r,
            ):
                return r.status, dict(r.headers), json.loads(await r.read())

        return self.loop.run_until_complete(go())

    def close(self) -> None:
        self.loop.run_until_complete(self.server.close())
        self.trail.close()
        self.loop.close()


@pytest.fixture
def harness(domain: DemoDomain, tmp_path: Path) -> Iterator[Harness]:
    h = Harness(domain, tmp_path, rate_per_s=1.0, burst=4)
    yield h
    h.close()


def blinded(*inputs: bytes) -> tuple[list[oprf.BlindedInput], bytes]:
    blinds = [oprf.blind(data, core.MODE) for data in inputs]
    return blinds, json.dumps({"elements": [crypto.b64e(b.element) for b in blinds]}).encode()


def test_a_signed_batch_is_evaluated_with_a_proof_that_verifies_against_the_services_key(
    harness: Harness,
) -> None:
    inputs = (b"cnid:one", b"phone:two")
    blinds, body = blinded(*inputs)
    status, _headers, answer = harness.post(body)
    assert status == 200
    version, public, evaluation = core.parse_answer(json.dumps(answer).encode(), expected=2)
    assert (version, public) == (1, harness.key.key.public)
    outputs = oprf.finalize(inputs, blinds, evaluation, core.MODE, public=harness.key.key.public)
    assert outputs == [oprf.evaluate(harness.key.key, data, core.MODE) for data in inputs]


def test_a_bug_is_answered_with_a_counted_internal_problem_and_logged_by_type_and_frames_only(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    quoted = "element cnid:110101199003071234 failed"  # a message quoting what was asked

    def failing(*_args: Any) -> None:
        raise ValueError(quoted)

    monkeypatch.setattr(harness.service, "try_reconcile", failing)
    _blinds, body = blinded(b"cnid:one")
    status, _headers, problem = harness.post(body)
    assert (status, problem["title"]) == (500, "internal")
    assert harness.service.metrics.rejections.labels("internal")._value.get() == 1
    assert harness.service.metrics.requests.labels("500")._value.get() == 1
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "ValueError" in logged
    assert "110101199003071234" not in logged


def test_an_unsigned_request_is_refused_with_401_and_counted(harness: Harness) -> None:
    _blinds, body = blinded(b"cnid:one")
    status, _headers, problem = harness.post(body, participant=None)
    assert (status, problem["title"]) == (401, "signature_missing")
    assert harness.service.metrics.rejections.labels("signature_missing")._value.get() == 1


def test_a_participant_over_its_rate_gets_429_with_retry_after_and_others_are_unaffected(
    harness: Harness,
) -> None:
    _blinds, body = blinded(b"a", b"b", b"c")
    assert harness.post(body)[0] == 200
    status, headers, problem = harness.post(body)
    assert (status, problem["title"]) == (429, "rate_limited")
    assert int(headers["Retry-After"]) >= 1
    assert harness.post(body, participant="health")[0] == 200


def test_an_identity_element_is_refused_as_malformed(harness: Harness) -> None:
    body = json.dumps({"elements": [crypto.b64e(bytes(32))]}).encode()
    status, _headers, problem = harness.post(body)
    assert (status, problem["title"]) == (400, "malformed")


def test_every_answered_batch_is_an_audit_entry_naming_the_participant_and_count_but_no_element(
    harness: Harness,
) -> None:
    blinds, body = blinded(b"cnid:one", b"cnid:two")
    assert harness.post(body)[0] == 200
    lines = [json.loads(line) for f in sorted(harness.audit_dir.rglob("*")) if f.is_file()
             for line in f.read_text().splitlines() if line.strip()]  # fmt: skip
    entries = [e for e in lines if e.get("action") == "pseudonymize"]
    assert len(entries) == 1
    assert entries[0]["to"] == ["police"]
    assert entries[0]["object"].endswith(":n=2")
    text = json.dumps(lines)
    assert all(crypto.b64e(b.element) not in text for b in blinds)


def test_the_rate_limiter_refills_at_its_rate() -> None:
    limiter = core.RateLimiter(rate=2.0, burst=4)
    assert limiter.take("police", 4, now=0.0) == 0.0
    assert limiter.take("police", 1, now=0.0) == pytest.approx(0.5)
    assert limiter.take("police", 1, now=0.5) == 0.0
