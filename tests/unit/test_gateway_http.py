"""The gateway's HTTP behaviour without Kafka: an in-process server on loopback whose outboxes are not
drained, a fixed clock, and requests signed as agencies sign them. Each refusal has its status and
problem body; an accepted event is sealed in the participant's outbox; retries never make two events.
The same cases run against a real broker in tests/integration/test_gateway.py."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry

from services.gateway.app import Gateway, GatewaySettings
from services.gateway.client import signed_headers
from services.gateway.idempotency import IdempotencyStore
from services.kernel import envelope
from services.kernel.errors import (
    DecryptFailedError,
    NotPermittedError,
    RegistryExpiredError,
    UnknownKeyError,
    UsageError,
)
from services.kernel.keystore import Keystore, key_id
from services.pseudonymizer.app import Pseudonymizer, PseudonymizerSettings, load_keys
from services.pseudonymizer.client import ObliviousPseudonymizer
from tests.kit import NOW, DemoDomain, Served

pytestmark = pytest.mark.unit

SERVED = ("police", "womens_federation")
CREATED = int(NOW.timestamp())
MARKER_PHONE = "13987654321"
MARKER_NAME = "欧阳某某"


def lead(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "category": "domestic_violence",
        "channel": "police_call",
        "town": "renhe",
        "victim": {"name": MARKER_NAME, "phone": MARKER_PHONE, "is_minor": False},
        "suspects": [{"name": "李某", "phone": "13900000000", "is_minor": False, "relationship": "spouse"}],
        "minor": False,
        "narrative": "丈夫多次殴打, 邻居报警。",
        "requests_joint_meeting": False,
    }
    event.update(overrides)
    return event


def body_of(event: dict[str, Any] | None = None, **request: Any) -> bytes:
    return json.dumps(
        {"type": "lead.reported", "event": event or lead(), **request}, ensure_ascii=False
    ).encode()


class Harness:
    """A gateway on a loopback port, driven from a private event loop."""

    def __init__(self, domain: DemoDomain, spool: Path, clock: Any = lambda: NOW, **settings: Any) -> None:
        self.domain = domain
        self.loop = asyncio.new_event_loop()
        self.metrics = CollectorRegistry()
        self.gateway = Gateway(
            GatewaySettings(bootstrap="127.0.0.1:9", participants=SERVED, spool_dir=spool, **settings),
            registry=domain.registry,
            keystores={p: domain.keys(p) for p in SERVED},
            metrics_registry=self.metrics,
            clock=clock,
            drain=False,
        )
        self.server = TestServer(self.gateway.application(), host="127.0.0.1")
        self.loop.run_until_complete(self.server.start_server())
        self.session = self.loop.run_until_complete(self._session())

    async def _session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession()

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    def headers(
        self,
        body: bytes | None,
        *,
        method: str = "POST",
        path: str = "/v1/events",
        sender: str = "police",
        **kw: Any,
    ) -> dict[str, str]:
        store = self.domain.keys(sender)
        kid = next(iter(store.signing))
        return signed_headers(
            store, kid, method, self.url(path), body, created=kw.pop("created", CREATED), **kw
        )

    async def _send(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], Any]:
        async with self.session.request(method, self.url(path), data=body, headers=headers) as response:
            raw = await response.read()
            try:
                parsed = json.loads(raw) if raw else None
            except ValueError:
                parsed = raw.decode()
            return response.status, dict(response.headers), parsed

    def send(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], Any]:
        return self.loop.run_until_complete(self._send(method, path, body, headers))

    def post(self, body: bytes, *, sender: str = "police", **kw: Any) -> tuple[int, Any]:
        status, _headers, parsed = self.send(
            "POST", "/v1/events", body, self.headers(body, sender=sender, **kw)
        )
        return status, parsed

    def depth(self, participant: str = "police") -> int:
        return self.gateway.clients[participant].outbox.depth()

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics.get_sample_value(name, labels) or 0.0

    def close(self) -> None:
        self.loop.run_until_complete(self.session.close())
        self.loop.run_until_complete(self.server.close())
        self.gateway.close()
        self.loop.close()


@pytest.fixture
def gw(domain: DemoDomain, tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(domain, tmp_path / "spool")
    yield harness
    harness.close()


# --------------------------------------------------------------------------- accepted


def test_a_signed_lead_is_accepted_with_202_and_sealed_in_the_participants_outbox(
    gw: Harness, domain: DemoDomain
) -> None:
    status, answer = gw.post(body_of())
    assert status == 202
    (pending,) = gw.gateway.clients["police"].outbox.pending()
    assert pending.event_id == answer["event_id"]
    verified = envelope.verify(pending.value, registry=domain.registry, now=NOW)
    assert verified.header.sender == "police"
    assert verified.header.type == "lead.reported"
    assert verified.header.urgency == "urgent"
    assert verified.header.subject == domain.subject(MARKER_PHONE)
    opened = envelope.open_sections(verified, domain.keys("womens_federation"))
    assert opened.sections["details"]["victim"]["name"] == MARKER_NAME
    assert opened.sections["triage"]["suspect_pseudonyms"] == [domain.subject("13900000000")]
    assert (
        gw.metric("lianfang_gateway_events_accepted_total", participant="police", type="lead.reported") == 1
    )


def test_a_lead_while_the_pseudonymizer_rate_limits_the_participant_is_accepted_and_nothing_asks_before_retry_after(
    gw: Harness, domain: DemoDomain
) -> None:
    service = Pseudonymizer(
        PseudonymizerSettings(rate_per_s=0.01, burst=8, max_skew_s=10**9),
        key=load_keys(domain.home, domain.registry),
        registry=domain.registry,
        trail=None,
        clock=lambda: NOW,
    )
    served = Served(service.application())
    try:
        police = gw.gateway.clients["police"]
        asker = police.pseudonymizer
        assert isinstance(asker, ObliviousPseudonymizer)
        asker.url = served.url
        asker.pseudonyms([f"phone:1360000{i:04d}" for i in range(8)])  # the whole burst
        bodies = [body_of(lead(narrative=f"第{i}次报警。")) for i in range(3)]
        assert [gw.post(body)[0] for body in bodies] == [202, 202, 202]
        assert police.leads_waiting() == 3
        assert police.drainer.resolve_waiting() == 0  # the outbox's sender, within the Retry-After
        # One request was answered 429; the leads after it and the sender asked nothing (Retry-After:
        # minutes at this rate).
        assert service.metrics.requests.labels("429")._value.get() == 1
        assert "rate_limited, next request in" in police.waiting_status()
    finally:
        served.close()


def test_a_follow_up_with_the_context_of_its_lead_is_accepted(gw: Harness, domain: DemoDomain) -> None:
    _, first = gw.post(body_of())
    context = {
        "subject": domain.subject(MARKER_PHONE),
        "category": "domestic_violence",
        "minor": False,
        "town": "renhe",
        "school_related": False,
        "lead_id": first["event_id"],
    }
    ack = {"lead_id": first["event_id"], "agency": "police", "acknowledged_at": NOW.isoformat()}
    body = json.dumps(
        {"type": "lead.acknowledged", "event": ack, "context": context, "urgency": "urgent"}
    ).encode()
    status, answer = gw.post(body)
    assert status == 202, answer
    record = next(
        p for p in gw.gateway.clients["police"].outbox.pending() if p.event_id == answer["event_id"]
    )
    header = envelope.verify(record.value, registry=domain.registry, now=NOW).header
    assert header.refs == [first["event_id"]]
    assert header.urgency == "urgent"


# --------------------------------------------------------------------------- refusals


def _problem(status: int, answer: Any, expected_status: int, kind: str) -> None:
    assert status == expected_status, answer
    assert answer["status"] == expected_status
    assert answer["type"] == f"https://lianfang.example/problems/{kind}"
    assert answer["title"]
    assert answer["detail"]


def test_malformed_json_is_400(gw: Harness) -> None:
    status, answer = gw.post(b'{"type": "lead.reported", "event": {')
    _problem(status, answer, 400, "malformed-json")


def test_duplicate_json_keys_are_400(gw: Harness) -> None:
    status, answer = gw.post(b'{"type": "lead.reported", "type": "lead.resolved", "event": {}}')
    _problem(status, answer, 400, "malformed-json")


def test_wrong_types_are_422_naming_each_field_and_never_its_value(gw: Harness) -> None:
    event = lead(
        victim={"name": MARKER_NAME, "phone": int(MARKER_PHONE), "is_minor": "no"},
        minor=0,
        town="仁和镇",
        category="beating",
    )
    status, answer = gw.post(body_of(event))
    _problem(status, answer, 422, "invalid-request")
    pointers = {e["pointer"] for e in answer["errors"]}
    assert {
        "/event/victim/phone",
        "/event/victim/is_minor",
        "/event/minor",
        "/event/town",
        "/event/category",
    } <= pointers
    assert all(e["detail"] and e["code"] for e in answer["errors"])
    text = json.dumps(answer, ensure_ascii=False)
    for value in (MARKER_PHONE, MARKER_NAME, "仁和镇", "beating"):
        assert value not in text
    assert gw.depth() == 0


@pytest.mark.parametrize(
    "victim",
    [
        pytest.param({"name": "王某", "is_minor": False}, id="a victim without an identifier"),
        pytest.param({"name": "王某", "phone": "tel:12", "is_minor": False}, id="a phone typed wrong"),
        pytest.param(
            {"name": "王某", "id_number": "110113199001011230", "is_minor": False}, id="a mistyped ID number"
        ),
    ],
)
def test_a_lead_whose_identifiers_are_all_invalid_is_accepted(gw: Harness, victim: dict[str, Any]) -> None:
    status, answer = gw.post(body_of(lead(victim=victim)))
    assert status == 202, answer
    assert gw.depth() == 1


@pytest.mark.parametrize(
    ("request_body", "pointer"),
    [
        ({"type": "lead.reportd", "event": {}}, "/type"),
        ({"type": "lead.reported"}, "/event"),
        ({"type": "lead.reported", "event": [1]}, "/event"),
        ({"type": "lead.reported", "event": lead(), "urgency": "now"}, "/urgency"),
        ({"type": "lead.reported", "event": lead(), "extra": 1}, "/extra"),
        (
            {"type": "lead.reported", "event": lead(victim_pseudonym="p1." + "A" * 43)},
            "/event/victim_pseudonym",
        ),
        ({"type": "lead.reported", "event": lead(), "context": {"subject": "p1." + "A" * 43}}, "/context"),
        ({"type": "lead.acknowledged", "event": {"lead_id": "x"}}, "/context"),
        ({"type": "lead.acknowledged", "event": {"lead_id": "x"}}, "/event/lead_id"),
    ],
    ids=[
        "an unknown type",
        "no event",
        "an event that is not an object",
        "an unknown urgency",
        "an unknown request field",
        "a pseudonym the gateway computes",
        "a lead with a context",
        "a follow-up without a context",
        "a follow-up with a bad lead id",
    ],
)
def test_a_request_that_breaks_the_contract_is_422_at_that_field(
    gw: Harness, request_body: dict[str, Any], pointer: str
) -> None:
    status, answer = gw.post(json.dumps(request_body, ensure_ascii=False).encode())
    _problem(status, answer, 422, "invalid-request")
    assert pointer in {e["pointer"] for e in answer["errors"]}, answer["errors"]


def test_a_lead_from_a_town_the_registry_does_not_know_is_422_at_the_town_and_never_repeats_it(
    gw: Harness,
) -> None:
    status, answer = gw.post(body_of(lead(town="atlantis")))
    _problem(status, answer, 422, "invalid-request")
    assert [(e["pointer"], e["code"]) for e in answer["errors"]] == [("/event/town", "unknown_town")]
    assert "atlantis" not in json.dumps(answer, ensure_ascii=False)
    assert gw.depth() == 0
    assert gw.metric("lianfang_gateway_rejections_total", reason="invalid_request") == 1
    assert gw.metric("lianfang_gateway_rejections_total", reason="internal") == 0


def test_a_follow_up_whose_context_names_an_unknown_town_is_422_at_the_context_s_town(
    gw: Harness, domain: DemoDomain
) -> None:
    context = {"subject": domain.subject(MARKER_PHONE), "town": "atlantis"}
    context |= {"category": "domestic_violence", "minor": False}
    ack = {"lead_id": envelope.new_event_id(), "agency": "police", "acknowledged_at": NOW.isoformat()}
    body = json.dumps({"type": "lead.acknowledged", "event": ack, "context": context}).encode()
    status, answer = gw.post(body)
    _problem(status, answer, 422, "invalid-request")
    assert [e["pointer"] for e in answer["errors"]] == ["/context/town"]


@pytest.mark.parametrize(
    ("error", "expected_status", "kind"),
    [
        (UnknownKeyError("'mediation.renhe' has no encryption key valid now"), 422, "invalid-request"),
        (DecryptFailedError("a check that sealing met"), 422, "invalid-request"),
        (UsageError("the sharing policy names no recipient"), 422, "invalid-request"),
        (NotPermittedError("'police' may not publish it"), 403, "not-permitted"),
        (RegistryExpiredError("the registry expired"), 503, "registry-expired"),
    ],
    ids=[
        "a recipient without a key",
        "any other untrusted input",
        "a usage error",
        "a permission withdrawn meanwhile",
        "a registry that expired meanwhile",
    ],
)
def test_any_error_raised_while_sealing_a_caller_s_event_is_a_problem_and_never_a_500(
    gw: Harness, monkeypatch: pytest.MonkeyPatch, error: Exception, expected_status: int, kind: str
) -> None:
    def fail(*_args: Any, **_kwargs: Any) -> str:
        raise error

    monkeypatch.setattr(gw.gateway.clients["police"], "publish", fail)
    status, answer = gw.post(body_of())
    _problem(status, answer, expected_status, kind)
    assert gw.metric("lianfang_gateway_rejections_total", reason="internal") == 0
    status, answer = gw.post(body_of())  # the key was released: the retry meets the same check
    assert status == expected_status, answer


def test_a_body_that_is_not_an_object_is_422(gw: Harness) -> None:
    status, answer = gw.post(b"[]")
    _problem(status, answer, 422, "invalid-request")


def test_an_event_type_the_participant_may_not_publish_is_403(gw: Harness) -> None:
    decided = {"request_id": envelope.new_event_id(), "granted": True, "decided_at": NOW.isoformat()}
    context = {"subject": "p1." + "A" * 43}
    body = json.dumps({"type": "protection_order.decided", "event": decided, "context": context}).encode()
    status, answer = gw.post(body)
    _problem(status, answer, 403, "not-permitted")


def test_a_participant_this_gateway_does_not_serve_is_403(gw: Harness) -> None:
    status, answer = gw.post(body_of(), sender="health")
    _problem(status, answer, 403, "not-served")


def test_a_key_no_participant_registered_is_401(gw: Harness) -> None:
    stranger = Keystore("police", signing={}, encryption={})
    kid = stranger.add_signing_key()
    body = body_of()
    headers = signed_headers(stranger, kid, "POST", gw.url("/v1/events"), body, created=CREATED)
    status, response_headers, answer = gw.send("POST", "/v1/events", body, headers)
    _problem(status, answer, 401, "unknown-key")
    assert 'tag="lianfang"' in response_headers["Accept-Signature"]


def test_a_signature_by_another_key_under_a_registered_keyid_is_401(gw: Harness, domain: DemoDomain) -> None:
    impostor = Ed25519PrivateKey.generate()
    police_kid = next(iter(domain.keys("police").signing))
    forged = Keystore("police", signing={key_id(impostor.public_key().public_bytes_raw()): impostor})
    body = body_of()
    headers = signed_headers(
        forged, next(iter(forged.signing)), "POST", gw.url("/v1/events"), body, created=CREATED
    )
    headers["Signature-Input"] = headers["Signature-Input"].replace(next(iter(forged.signing)), police_kid)
    status, _h, answer = gw.send("POST", "/v1/events", body, headers)
    _problem(status, answer, 401, "signature-invalid")
    assert gw.metric("lianfang_gateway_rejections_total", reason="signature_invalid") == 1


@pytest.mark.parametrize(
    ("edit", "kind"),
    [
        (
            lambda h, b: ({k: v for k, v in h.items() if not k.startswith("Signature")}, b),
            "signature-missing",
        ),
        (lambda h, b: ({k: v for k, v in h.items() if k != "Content-Digest"}, b), "signature-components"),
        (lambda h, b: (h, b.replace("多次".encode(), "一次".encode())), "digest-mismatch"),
        (lambda h, b: ({**h, "Idempotency-Key": "added-later"}, b), "signature-components"),
    ],
    ids=["unsigned", "without its digest", "a body changed in flight", "a key added after signing"],
)
def test_an_unsigned_or_altered_request_is_401(gw: Harness, edit: Any, kind: str) -> None:
    body = body_of()
    headers, sent = edit(gw.headers(body), body)
    status, _h, answer = gw.send("POST", "/v1/events", sent, headers)
    _problem(status, answer, 401, kind)
    assert gw.depth() == 0


def test_a_signature_from_ten_minutes_ago_is_401(gw: Harness) -> None:
    status, answer = gw.post(body_of(), created=CREATED - 600)
    _problem(status, answer, 401, "signature-stale")


def test_a_body_over_the_limit_is_413_too_large(gw: Harness) -> None:
    big = body_of(lead(narrative="很" * 100_000))
    assert len(big) > 256 * 1024
    status, answer = gw.post(big)
    _problem(status, answer, 413, "too-large")


def test_a_body_declared_over_the_limit_is_413_before_it_is_read(gw: Harness) -> None:
    big = body_of(lead(narrative="很" * 100_000))
    url = gw.server.make_url("/v1/events")

    async def declare_only() -> bytes:
        reader, writer = await asyncio.open_connection(url.host, url.port)
        head = [f"POST {url.path} HTTP/1.1", f"Host: {url.host}:{url.port}", f"Content-Length: {len(big)}"]
        head += [f"{name}: {value}" for name, value in gw.headers(big).items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())  # and not a byte of the body
        await writer.drain()
        try:
            return await asyncio.wait_for(reader.readline(), 10)  # a gateway reading the body waits
        finally:
            writer.close()

    assert gw.loop.run_until_complete(declare_only()).startswith(b"HTTP/1.1 413 ")


def test_a_chunked_body_over_the_limit_is_413(gw: Harness) -> None:
    big = body_of(lead(narrative="很" * 100_000))

    async def chunks() -> Any:
        for i in range(0, len(big), 16 * 1024):
            yield big[i : i + 16 * 1024]

    async def send() -> tuple[int, Any]:
        async with gw.session.post(gw.url("/v1/events"), data=chunks(), headers=gw.headers(big)) as r:
            return r.status, await r.json(content_type=None)

    status, answer = gw.loop.run_until_complete(send())
    _problem(status, answer, 413, "too-large")


def test_a_body_that_is_not_json_media_type_is_415(gw: Harness) -> None:
    body = body_of()
    status, _h, answer = gw.send("POST", "/v1/events", body, gw.headers(body, content_type="text/plain"))
    _problem(status, answer, 415, "unsupported-media-type")


def test_an_unknown_path_and_a_wrong_method_are_problems_too(gw: Harness) -> None:
    status, headers, answer = gw.send("GET", "/v1/nothing", None, {})
    _problem(status, answer, 404, "not-found")
    assert headers["Content-Type"].startswith("application/problem+json")
    status, _h, answer = gw.send("PUT", "/v1/events", b"{}", {})
    _problem(status, answer, 405, "method-not-allowed")


def test_an_expired_registry_stops_acceptance_with_503_and_retry_after(
    domain: DemoDomain, tmp_path: Path
) -> None:
    later = NOW + timedelta(days=91)
    gw = Harness(domain, tmp_path / "spool", clock=lambda: later)
    try:
        body = body_of()
        status, headers, answer = gw.send(
            "POST", "/v1/events", body, gw.headers(body, created=int(later.timestamp()))
        )
        _problem(status, answer, 503, "registry-expired")
        assert headers["Retry-After"]
        assert gw.depth() == 0
    finally:
        gw.close()


# --------------------------------------------------------------------------- idempotency


def test_the_same_key_and_body_again_get_the_same_202_and_no_second_event(gw: Harness) -> None:
    body = body_of()
    first = gw.post(body, idempotency_key="k-1")
    again = gw.post(body, idempotency_key="k-1", created=CREATED + 5)  # a retry, signed anew
    assert first == again
    assert first[0] == 202
    assert gw.depth() == 1
    assert gw.metric("lianfang_gateway_idempotent_replays_total") == 1


def test_the_same_key_with_another_body_is_409_and_makes_nothing(gw: Harness) -> None:
    assert gw.post(body_of(), idempotency_key="k-2")[0] == 202
    status, answer = gw.post(body_of(lead(narrative="另一件事。")), idempotency_key="k-2")
    _problem(status, answer, 409, "idempotency-conflict")
    assert gw.depth() == 1


def test_one_key_is_one_participants_a_second_participant_may_use_it_too(gw: Harness) -> None:
    a = gw.post(body_of(), idempotency_key="shared")
    b = gw.post(body_of(), idempotency_key="shared", sender="womens_federation")
    assert a[0] == b[0] == 202
    assert a[1] != b[1]


def test_concurrent_retries_with_one_key_make_one_event(gw: Harness) -> None:
    body = body_of()

    async def all_at_once() -> list[tuple[int, dict[str, str], Any]]:
        return await asyncio.gather(
            *[
                gw._send("POST", "/v1/events", body, gw.headers(body, idempotency_key="burst"))
                for _ in range(12)
            ]
        )

    answers = gw.loop.run_until_complete(all_at_once())
    assert {status for status, _h, _a in answers} == {202}
    assert len({a["event_id"] for _s, _h, a in answers}) == 1
    assert gw.depth() == 1


def test_a_replayed_signed_request_without_a_key_gets_the_first_answer(gw: Harness) -> None:
    body = body_of()
    headers = gw.headers(body)
    first = gw.send("POST", "/v1/events", body, headers)
    replay = gw.send("POST", "/v1/events", body, headers)
    assert first[0] == replay[0] == 202
    assert first[2] == replay[2]
    assert gw.depth() == 1
    fresh = gw.post(body, created=CREATED + 1)  # the same lead signed anew is a new request
    assert fresh[1] != first[2]
    assert gw.depth() == 2


def test_keys_survive_a_restart_of_the_gateway(domain: DemoDomain, tmp_path: Path) -> None:
    first = Harness(domain, tmp_path / "spool")
    try:
        answer = first.post(body_of(), idempotency_key="durable")
    finally:
        first.close()
    second = Harness(domain, tmp_path / "spool")
    try:
        assert second.post(body_of(), idempotency_key="durable") == answer
        assert second.depth() == 1
    finally:
        second.close()


def test_a_key_whose_request_was_refused_after_validation_is_free_for_the_corrected_request(
    gw: Harness, domain: DemoDomain
) -> None:
    """A follow-up whose context matches no sharing rule cannot be sealed (422); the key is not spent."""
    _, first = gw.post(body_of())
    ack = {"lead_id": first["event_id"], "agency": "police", "acknowledged_at": NOW.isoformat()}
    context = {
        "subject": domain.subject(MARKER_PHONE),
        "lead_id": first["event_id"],
    }
    unroutable = json.dumps({"type": "lead.acknowledged", "event": ack, "context": context}).encode()
    status, answer = gw.post(unroutable, idempotency_key="ack-1")
    _problem(status, answer, 422, "invalid-request")
    assert "policy names no recipient" in answer["detail"]
    context["category"] = "domestic_violence"
    fixed = json.dumps({"type": "lead.acknowledged", "event": ack, "context": context}).encode()
    status, answer = gw.post(fixed, idempotency_key="ack-1")
    assert status == 202, answer
    assert gw.depth() == 2


def test_a_reservation_left_by_a_crash_before_the_outbox_is_published_under_the_reserved_id(
    domain: DemoDomain, tmp_path: Path
) -> None:
    body = body_of()
    reserved = envelope.new_event_id()
    store = IdempotencyStore(tmp_path / "spool" / "idempotency.sqlite")
    store.reserve("police", "key:crash", hashlib.sha256(body).hexdigest(), reserved)
    store.close()
    gw = Harness(domain, tmp_path / "spool")
    try:
        assert gw.post(body, idempotency_key="crash") == (202, {"event_id": reserved})
        assert [p.event_id for p in gw.gateway.clients["police"].outbox.pending()] == [reserved]
    finally:
        gw.close()


def test_a_reservation_left_by_a_crash_after_the_outbox_is_not_published_twice(gw: Harness) -> None:
    """The crash came between the outbox write and the 'accepted' mark: the retry must not add a copy."""
    body = body_of()
    status, answer = gw.post(body, idempotency_key="late-crash")
    assert status == 202
    gw.gateway.idempotency._db.execute("UPDATE requests SET accepted = 0")  # as if the mark was lost
    assert gw.post(body, idempotency_key="late-crash") == (202, answer)
    assert gw.depth() == 1


def test_a_second_gateway_on_the_same_spool_is_refused(
    gw: Harness, domain: DemoDomain, tmp_path: Path
) -> None:
    with pytest.raises(UsageError, match="another gateway"):
        Harness(domain, tmp_path / "spool")


# --------------------------------------------------------------------------- documents


def test_the_openapi_document_is_served_and_every_reference_resolves(gw: Harness) -> None:
    status, _h, doc = gw.send("GET", "/v1/openapi.json", None, {})
    assert status == 200
    assert doc["openapi"].startswith("3.1")
    assert {"/v1/events", "/v1/inbox", "/v1/openapi.json"} <= set(doc["paths"])
    responses = doc["paths"]["/v1/events"]["post"]["responses"]
    assert {"202", "400", "401", "403", "409", "413", "415", "422", "503"} <= set(responses)
    schemas = doc["components"]["schemas"]
    assert "victim_pseudonym" in schemas["lead.reported"]["required"]
    assert "victim_pseudonym" not in schemas["lead.reported.submission"]["properties"]
    assert "pseudonym" not in schemas["lead.reported.submission"]["$defs"]["Suspect"]["properties"]

    def refs(node: Any, resource: Any) -> Iterator[tuple[str, Any]]:
        if isinstance(node, dict):
            if "$id" in node:
                resource = node
            for key, value in node.items():
                if key == "$ref":
                    yield value, resource
                else:
                    yield from refs(value, resource)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value, resource)

    checked = 0
    for ref, resource in refs(doc, doc):
        assert ref.startswith("#/"), ref
        target = resource
        for step in ref[2:].split("/"):
            target = target[step]
        checked += 1
    assert checked > 50


def test_metrics_count_requests_and_rejections_by_reason(gw: Harness) -> None:
    gw.post(b"{")
    gw.post(body_of())
    status, _headers, text = gw.send("GET", "/metrics", None, {})
    assert status == 200
    assert 'lianfang_gateway_rejections_total{reason="malformed_json"} 1.0' in text
    assert 'lianfang_gateway_requests_total{method="POST",route="/v1/events",status="202"} 1.0' in text
    assert 'lianfang_gateway_outbox_depth{participant="police"} 1.0' in text
    assert "lianfang_outbox_depth 1.0" in text
    assert MARKER_PHONE not in text
