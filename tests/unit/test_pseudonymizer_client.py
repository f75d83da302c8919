"""The adapters' pseudonymizer client against the service on loopback (no Kafka): its pseudonyms are the
ones the key's holder computes, an answer made with another key is refused, a rate-limited or absent
service is a retryable error that leaves nothing half-written, and an oblivious domain's registry holds
no pseudonym secret at all."""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Iterator
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from schemas.registry import RegistryDocument
from services import trust
from services.kernel import crypto, ids, oprf
from services.kernel.errors import BadSignatureError, UsageError
from services.kernel.pseudonym import PSEUDONYM_PATTERN, normalize_subject
from services.pseudonymizer import core
from services.pseudonymizer.app import Pseudonymizer, PseudonymizerSettings, load_key
from services.pseudonymizer.client import ClientMetrics, ObliviousPseudonymizer, PseudonymizerUnavailableError
from services.sdk.client import Client
from tests.kit import NOW, DemoDomain, Served, WatchedWork

pytestmark = pytest.mark.unit

PHONE = normalize_subject(phone="+86 138 0013 8000")
SAME_PHONE = normalize_subject(phone="138-0013-8000")
ID_NUMBER = normalize_subject(id_number="11010519491231002X")


@pytest.fixture(scope="module")
def oblivious(tmp_path_factory: pytest.TempPathFactory) -> DemoDomain:
    """A domain whose registry names a pseudonymizer (the address is overridden per test)."""
    home = Path(tmp_path_factory.mktemp("oblivious")) / ".lianfang"
    return DemoDomain.create(home, pseudonymizer_url="http://127.0.0.1:9")


def serve(app: web.Application) -> Served:
    return Served(app)


def the_service(
    domain: DemoDomain, *, port: int | None = None, peers: list[Any] | None = None, **settings: Any
) -> Served:
    """The service on loopback (on ``port``, if given); with ``peers`` it notes the client address
    (host, port) of the connection each answer goes out on."""
    service = Pseudonymizer(
        PseudonymizerSettings(**settings),
        key=load_key(domain.home, domain.registry),
        registry=domain.registry,
        trail=None,
        clock=lambda: NOW,
    )
    app = service.application()
    if peers is not None:

        async def note_peer(request: web.Request, _response: web.StreamResponse) -> None:
            peers.append(request.transport.get_extra_info("peername") if request.transport else None)

        app.on_response_prepare.append(note_peer)
    return Served(app, port=port)


def client_of(
    domain: DemoDomain, url: str, participant: str = "police", work: Executor | None = None
) -> ObliviousPseudonymizer:
    return ObliviousPseudonymizer(
        keystore=domain.keys(participant),
        registry=lambda: domain.registry,
        url=url,
        clock=lambda: NOW,
        metrics=ClientMetrics(CollectorRegistry()),
        work=work,
    )


@pytest.fixture(scope="module")
def work() -> Iterator[WatchedWork]:
    pool = WatchedWork()
    yield pool
    pool.shutdown()


@pytest.fixture
def service(oblivious: DemoDomain) -> Iterator[Served]:
    served = the_service(oblivious, rate_per_s=1.0, burst=8)
    yield served
    served.close()


def test_the_clients_pseudonyms_are_the_ones_the_keys_holder_computes_in_the_one_format(
    oblivious: DemoDomain, service: Served
) -> None:
    got = client_of(oblivious, service.url).pseudonyms([PHONE, ID_NUMBER])
    assert got == oblivious.pseudonymizer_key().pseudonyms([PHONE, ID_NUMBER])
    assert all(re.fullmatch(PSEUDONYM_PATTERN, p) and p.startswith("p1.") for p in got)


def test_two_agencies_typing_one_phone_differently_get_one_pseudonym(
    oblivious: DemoDomain, service: Served
) -> None:
    (police,) = client_of(oblivious, service.url, "police").pseudonyms([PHONE])
    (health,) = client_of(oblivious, service.url, "health").pseudonyms([SAME_PHONE])
    assert police == health


def test_a_batch_is_one_request_and_a_repeated_identifier_is_not_evaluated_twice(
    oblivious: DemoDomain, service: Served
) -> None:
    client = client_of(oblivious, service.url)
    first = client.pseudonyms([PHONE, ID_NUMBER, PHONE])
    assert first[0] == first[2]
    assert client.pseudonyms([ID_NUMBER]) == [first[1]]
    assert client.metrics.requests.labels("ok")._value.get() == 1
    assert client.metrics.elements._value.get() == 2


def test_pseudonyms_whose_arithmetic_ran_in_a_work_process_are_the_ones_the_keys_holder_computes(
    oblivious: DemoDomain, service: Served, work: WatchedWork
) -> None:
    client = client_of(oblivious, service.url, work=work)
    before = len(work.ran)
    asked = [PHONE, ID_NUMBER, normalize_subject(phone="13600001111")]
    assert client.pseudonyms(asked) == oblivious.pseudonymizer_key().pseudonyms(asked)
    assert work.ran[before:] == ["blind_request", "read_answer"]
    assert client.work is work


@pytest.mark.parametrize("gone", ["killed", "shut down"])
def test_when_the_work_process_is_gone_the_client_says_so_once_and_computes_in_the_callers_thread(
    oblivious: DemoDomain, service: Served, gone: str, caplog: pytest.LogCaptureFixture
) -> None:
    pool = WatchedWork()
    client = client_of(oblivious, service.url, work=pool)
    assert client.pseudonyms([PHONE]) == oblivious.pseudonymizer_key().pseudonyms([PHONE])
    if gone == "killed":
        for process in list(pool.pool._processes.values()):
            process.kill()
            process.join(10)
    else:
        pool.shutdown()
    asked = [ID_NUMBER, normalize_subject(phone="13600002222")]
    assert client.pseudonyms(asked) == oblivious.pseudonymizer_key().pseudonyms(asked)
    assert client.work is None
    said = [r.getMessage() for r in caplog.records if "work process is gone" in r.getMessage()]
    assert len(said) == 1
    pool.shutdown()


def phones(first: int, n: int) -> list[str]:
    """``n`` identifiers no earlier request asked for (the client's cache would answer those)."""
    return [normalize_subject(phone=f"139{i:08d}") for i in range(first, first + n)]


def test_a_clients_requests_go_over_one_connection_the_service_keeps_open(oblivious: DemoDomain) -> None:
    peers: list[Any] = []
    served = the_service(oblivious, peers=peers, rate_per_s=1e9)
    try:
        client = client_of(oblivious, served.url)
        for i in range(3):
            assert client.pseudonyms(phones(10 * i, 2)) == oblivious.pseudonymizer_key().pseudonyms(
                phones(10 * i, 2)
            )
        client.close()
    finally:
        served.close()
    assert len(peers) == 3
    assert len(set(peers)) == 1, "a new TCP connection a request"


def test_a_kept_connection_the_service_closed_is_replaced_and_the_request_is_answered(
    oblivious: DemoDomain,
) -> None:
    peers: list[Any] = []
    first = the_service(oblivious, peers=peers, rate_per_s=1e9)
    port = int(first.url.rsplit(":", 1)[1])
    client = client_of(oblivious, first.url)
    client.pseudonyms(phones(100, 1))
    first.close()  # the service restarts: the connection the client keeps is closed under it
    again = the_service(oblivious, port=port, peers=peers, rate_per_s=1e9)
    try:
        assert client.pseudonyms(phones(101, 1)) == oblivious.pseudonymizer_key().pseudonyms(phones(101, 1))
        assert client.metrics.requests.labels("ok")._value.get() == 2
        assert client.metrics.requests.labels("unavailable")._value.get() == 0
    finally:
        client.close()
        again.close()
    assert len(peers) == 2
    assert peers[0] != peers[1], "the second answer went out on a new connection"


def test_a_pseudonymizer_address_whose_port_is_not_a_number_is_a_usage_error(oblivious: DemoDomain) -> None:
    client = client_of(oblivious, "http://127.0.0.1:port")
    with pytest.raises(UsageError, match="no valid port"):
        client.pseudonyms(phones(200, 1))


def tampered(domain: DemoDomain, edit: str) -> web.Application:
    """A pseudonymizer that answers with another key (``other_key``) or an altered element, while
    claiming the registry's key and version."""
    registry_key = domain.pseudonymizer_key()
    other = core.PseudonymizerKey(version=registry_key.version, key=oprf.generate_key_pair())

    async def evaluate(request: web.Request) -> web.Response:
        parsed = core.EvaluateRequest.from_bytes(await request.read())
        answer = core.answer(other if edit == "other_key" else registry_key, parsed)
        answer["public"] = crypto.b64e(registry_key.key.public)
        if edit == "altered_element":
            answer["evaluated"][0] = crypto.b64e(oprf.hash_to_group(b"another", core.MODE))
        if edit == "other_version":
            answer["version"] = registry_key.version + 1
        return web.json_response(answer)

    app = web.Application()
    app.router.add_post("/v1/evaluate", evaluate)
    return app


@pytest.mark.parametrize("where", ["here", "work process"])
@pytest.mark.parametrize("edit", ["other_key", "altered_element", "other_version"])
def test_an_answer_not_made_with_the_registrys_key_is_refused_and_counted(
    oblivious: DemoDomain, edit: str, where: str, work: WatchedWork
) -> None:
    served = serve(tampered(oblivious, edit))
    try:
        client = client_of(oblivious, served.url, work=work if where == "work process" else None)
        with pytest.raises(BadSignatureError):
            client.pseudonyms([PHONE])
        assert client.metrics.requests.labels("bad_proof")._value.get() == 1
        assert client.metrics.requests.labels("ok")._value.get() == 0
    finally:
        served.close()


def test_a_rate_limited_client_gets_a_retryable_error_with_the_services_retry_after(
    oblivious: DemoDomain, service: Served
) -> None:
    client = client_of(oblivious, service.url)
    many = [normalize_subject(phone=f"1390000{i:04d}") for i in range(8)]
    client.pseudonyms(many)  # the whole burst
    with pytest.raises(PseudonymizerUnavailableError) as caught:
        client.pseudonyms([PHONE])
    assert (caught.value.code, caught.value.retry_after) == ("rate_limited", 1)
    assert client.metrics.requests.labels("rate_limited")._value.get() == 1


def test_after_a_429_the_client_asks_nothing_before_the_services_retry_after_then_asks_again(
    oblivious: DemoDomain, service: Served
) -> None:
    now = [0.0]
    client = ObliviousPseudonymizer(
        keystore=oblivious.keys("police"),
        registry=lambda: oblivious.registry,
        url=service.url,
        clock=lambda: NOW,
        metrics=ClientMetrics(CollectorRegistry()),
        monotonic=lambda: now[0],
    )
    client.pseudonyms([normalize_subject(phone=f"1390001{i:04d}") for i in range(8)])  # the whole burst
    with pytest.raises(PseudonymizerUnavailableError):
        client.pseudonyms([PHONE])
    asked = client.metrics.requests.labels("rate_limited")._value.get()
    assert asked == 1
    now[0] = 0.5
    with pytest.raises(PseudonymizerUnavailableError) as caught:
        client.pseudonyms([PHONE])
    assert (caught.value.code, caught.value.status, caught.value.retry_after) == ("rate_limited", 429, 1)
    assert caught.value.transient
    assert client.metrics.requests.labels("rate_limited")._value.get() == 1  # answered here, not asked
    assert client.rate_limited_for() == pytest.approx(0.5)
    now[0] = 1.0
    with contextlib.suppress(PseudonymizerUnavailableError):  # the service decides; it was asked
        client.pseudonyms([PHONE])
    made = sum(client.metrics.requests.labels(o)._value.get() for o in ("ok", "rate_limited"))
    assert made == 3


def test_an_unreachable_pseudonymizer_is_unavailable_and_the_publish_waits_with_nothing_sealed(
    oblivious: DemoDomain, tmp_path: Path
) -> None:
    police = Client(
        keystore=oblivious.keys("police"),
        registry=oblivious.registry,
        bootstrap="",
        outbox_path=tmp_path / "police.sqlite",
        clock=lambda: NOW,
        start=False,
    )
    lead = {
        "category": "domestic_violence",
        "channel": "police_call",
        "town": "renhe",
        "victim": {"name": "张某某", "phone": "13800000000", "is_minor": False},
        "minor": False,
        "risk_indicators": [],
        "narrative": "……",
        "requests_joint_meeting": False,
    }
    try:
        assert isinstance(police.pseudonymizer, ObliviousPseudonymizer)
        with pytest.raises(PseudonymizerUnavailableError) as caught:
            police.pseudonymizer.pseudonyms([PHONE])
        assert caught.value.code == "unreachable"
        assert caught.value.retry_after > 0
        assert caught.value.transient
        police.publish_lead(lead)
        assert police.outbox.waiting() == 1
        assert police.outbox.pending() == []
    finally:
        police.close()


def test_an_oblivious_domains_registry_holds_no_pseudonym_secret_for_any_keystore(
    oblivious: DemoDomain,
) -> None:
    document = json.loads(oblivious.registry.payload)
    assert "pseudonym_key" not in document or document["pseudonym_key"] is None
    assert set(document["pseudonymizer"]) == {"suite", "mode", "version", "public", "url"}
    for participant in (ids.PLC, "police", ids.ROUTER):
        with pytest.raises(UsageError, match="seals no pseudonym key"):
            oblivious.registry.pseudonym_key(participant, oblivious.keys(participant).encryption)
    key_file = oblivious.home / trust.PSEUDONYMIZER_KEY
    assert key_file.stat().st_mode & 0o777 == 0o600


def test_a_registry_names_a_pseudonymizer_or_seals_a_key_never_neither_and_both_only_in_a_transition(
    oblivious: DemoDomain, sealed_domain: DemoDomain
) -> None:
    both = oblivious.registry.document.model_dump(mode="json")
    both["pseudonym_key"] = sealed_domain.registry.document.model_dump(mode="json")["pseudonym_key"]
    both["pseudonymizer"]["version"] = 2  # above the sealed key's
    neither = {**both, "pseudonym_key": None, "pseudonymizer": None}
    with pytest.raises(ValidationError, match="exactly one"):
        RegistryDocument.model_validate_json(json.dumps(neither))
    with pytest.raises(ValidationError, match="transition_until"):
        RegistryDocument.model_validate_json(json.dumps(both))


def test_the_service_refuses_to_start_with_a_key_the_registry_does_not_name(
    oblivious: DemoDomain, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    trust.create_pseudonymizer_key(home)
    with pytest.raises(UsageError, match="not the one the registry names"):
        load_key(home, oblivious.registry)
    with pytest.raises(UsageError, match="no pseudonymizer key"):
        load_key(tmp_path / "empty", oblivious.registry)


def _at_once(client: ObliviousPseudonymizer, asks: list[list[str]]) -> list[object]:
    """Each ask from a thread of its own, all released together; each one's answers or exception."""
    barrier = threading.Barrier(len(asks))
    outcomes: list[object] = [None] * len(asks)

    def ask(i: int) -> None:
        barrier.wait(10)
        try:
            outcomes[i] = client.pseudonyms(asks[i])
        except Exception as e:
            outcomes[i] = e

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(asks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return outcomes


def test_callers_asking_at_once_from_threads_each_get_the_pseudonyms_of_their_own_identifiers(
    oblivious: DemoDomain,
) -> None:
    served = the_service(oblivious, rate_per_s=1_000_000.0, burst=oprf.MAX_BATCH)
    try:
        client = client_of(oblivious, served.url)
        asks = [[normalize_subject(phone=f"1370000{i:04d}"), PHONE] for i in range(8)]
        outcomes = _at_once(client, asks)
        holder = oblivious.pseudonymizer_key()
        assert outcomes == [holder.pseudonyms(ask) for ask in asks]
    finally:
        served.close()


def test_callers_asking_at_once_of_an_unreachable_pseudonymizer_each_hear_that_it_is_unavailable(
    oblivious: DemoDomain,
) -> None:
    client = client_of(oblivious, "http://127.0.0.1:9")
    outcomes = _at_once(client, [[normalize_subject(phone=f"1360000{i:04d}")] for i in range(4)])
    assert all(isinstance(o, PseudonymizerUnavailableError) and o.code == "unreachable" for o in outcomes)
