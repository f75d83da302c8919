"""Leads through an outage of the pseudonymizer, without Kafka: accepted and kept encrypted on disk while
the service is away, then pseudonymized in one request, sealed once each under their own event ids, in
the order they were accepted; a refusal of the caller, or a lead that is wrong in itself, still raises."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from services.bus.registry_follower import RegistryInForce
from services.kernel import envelope
from services.kernel.errors import DecryptFailedError, MalformedError, TransportError, UsageError
from services.kernel.pseudonym import normalize_subject
from services.kernel.registry import sign_document
from services.pseudonymizer.client import PseudonymizerUnavailableError
from services.sdk import deferred
from services.sdk.client import Client
from services.sdk.metrics import SdkMetrics
from services.sdk.outbox import Deferred, Drainer, Outbox, Resolved
from tests.kit import NOW, DemoDomain, until

pytestmark = pytest.mark.unit

NAME, PHONE, ID_NUMBER = "欧阳某某", "13712345678", "11010519491231002X"


class Service:
    """The pseudonymizer as the SDK sees it: away (``down``), refusing us, or answering with the key."""

    def __init__(self, domain: DemoDomain) -> None:
        self.key = domain.pseudonymizer_key()
        self.down: PseudonymizerUnavailableError | None = None
        self.requests: list[list[str]] = []

    def pseudonyms(self, canonicals: Sequence[str]) -> list[str]:
        if self.down is not None:
            raise self.down
        self.requests.append(list(canonicals))
        return self.key.pseudonyms(canonicals)


def away(status: int | None = None, code: str = "unreachable", retry_after: int = 30) -> Any:
    return PseudonymizerUnavailableError("away", code=code, retry_after=retry_after, status=status)


@pytest.fixture(scope="module")
def oblivious(tmp_path_factory: pytest.TempPathFactory) -> DemoDomain:
    return DemoDomain.create(
        Path(tmp_path_factory.mktemp("outage")) / ".lianfang", pseudonymizer_url="http://127.0.0.1:9"
    )


@pytest.fixture
def service(oblivious: DemoDomain) -> Service:
    return Service(oblivious)


@pytest.fixture
def police(oblivious: DemoDomain, service: Service, tmp_path: Path) -> Iterator[Client]:
    client = Client(
        keystore=oblivious.keys("police"),
        registry=oblivious.registry,
        bootstrap="",
        outbox_path=tmp_path / "police.sqlite",
        clock=lambda: NOW,
        start=False,
        pseudonymizer=service,
        metrics=SdkMetrics(CollectorRegistry()),
    )
    yield client
    client.close()


def a_lead(phone: str = PHONE, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "category": "domestic_violence",
        "channel": "police_call",
        "town": "renhe",
        "victim": {"name": NAME, "phone": phone, "is_minor": False},
        "suspects": [{"name": "某某", "id_number": ID_NUMBER, "is_minor": False, "relationship": "spouse"}],
        "minor": False,
        "risk_indicators": ["threats_to_kill"],
        "narrative": "多次殴打。",
        "requests_joint_meeting": False,
    }
    data.update(overrides)
    return data


def test_while_the_pseudonymizer_is_away_a_lead_is_accepted_and_waits_with_nothing_readable_on_disk(
    police: Client, service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    service.down = away()
    with caplog.at_level(logging.INFO, "lianfang.sdk"):
        event_id = police.publish_lead(a_lead())
    assert event_id
    assert police.outbox.waiting() == 1
    assert police.outbox.depth() == 1, "a waiting lead is accepted and not yet sent"
    assert police.outbox.pending() == [], "nothing is sealed, nothing can reach Kafka"
    assert police.metrics.registry is not None
    assert police.metrics.registry.get_sample_value("lianfang_outbox_waiting_for_pseudonyms") == 1
    police.outbox.close()
    spool = b"".join(p.read_bytes() for p in police.outbox.path.parent.glob("police.sqlite*"))
    for clear in (NAME.encode(), PHONE.encode(), ID_NUMBER.encode(), "多次殴打".encode()):
        assert clear not in spool
    assert "wait in the outbox, encrypted, until the pseudonymizer answers (unreachable)" in caplog.text
    assert PHONE not in caplog.text
    assert NAME not in caplog.text
    police.outbox = Outbox(police.outbox.path)


def test_once_it_answers_the_waiting_leads_are_pseudonymized_in_one_request_and_sealed_in_order(
    oblivious: DemoDomain, police: Client, service: Service
) -> None:
    service.down = away()
    phones = [f"1370000{i:04d}" for i in range(5)]
    ids = [police.publish_lead(a_lead(phone)) for phone in phones]
    service.down = None
    assert police.drainer.resolve_waiting() == 5
    assert len(service.requests) == 1, "one request for the whole batch"
    assert police.outbox.waiting() == 0
    records = police.outbox.pending()
    assert [r.event_id for r in records] == ids
    for record, phone in zip(records, phones, strict=True):
        subject = oblivious.pseudonymizer_key().pseudonyms([normalize_subject(phone=phone)])[0]
        assert record.key == subject.encode()
        opened = envelope.verify_and_open(
            record.value, registry=oblivious.registry, now=NOW, keystore=oblivious.keys("hub")
        )
        assert opened.header.id == record.event_id
        assert opened.header.subject == subject
    assert police.metrics.accepted.labels("lead.reported")._value.get() == 5


def test_a_bug_while_sealing_waiting_leads_keeps_them_and_logs_no_word_of_them(
    police: Client, service: Service, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    service.down = away()
    police.publish_lead(a_lead())
    service.down = None
    quoted = f"cannot seal {NAME} {PHONE}"  # a message quoting an open lead

    def failing(_rows: Any) -> int:
        raise ValueError(quoted)

    monkeypatch.setattr(police.drainer, "resolve", failing)
    with caplog.at_level(logging.ERROR, "lianfang"):
        assert police.drainer.resolve_waiting() == 0
    assert police.outbox.waiting() == 1, "the lead stays in the outbox"
    assert "ValueError" in caplog.text
    assert NAME not in caplog.text
    assert PHONE not in caplog.text


def test_while_leads_wait_a_new_lead_waits_behind_them_even_when_the_service_answers(
    police: Client, service: Service
) -> None:
    service.down = away(status=503, code="key_not_named")
    first = police.publish_lead(a_lead("13700000001"))
    service.down = None
    second = police.publish_lead(a_lead("13700000002"))
    assert service.requests == [], "the second lead did not overtake the first"
    assert police.outbox.waiting() == 2
    police.drainer.resolve_waiting()
    assert [r.event_id for r in police.outbox.pending()] == [first, second]


def test_a_rate_limited_answer_also_lets_the_lead_wait(police: Client, service: Service) -> None:
    service.down = away(status=429, code="rate_limited", retry_after=3)
    police.publish_lead(a_lead())
    assert police.outbox.waiting() == 1


def test_a_refusal_of_the_caller_still_raises_and_nothing_is_stored(police: Client, service: Service) -> None:
    service.down = away(status=401, code="key_revoked")
    with pytest.raises(PseudonymizerUnavailableError):
        police.publish_lead(a_lead())
    assert police.outbox.depth() == 0


def test_a_lead_wrong_in_itself_is_refused_at_once_during_an_outage(police: Client, service: Service) -> None:
    service.down = away()
    with pytest.raises(MalformedError):
        police.publish_lead(a_lead(category="not_a_category"))
    with pytest.raises(MalformedError):
        police.publish_lead(a_lead(victim={"name": NAME, "phone": "12345"}))
    assert police.outbox.depth() == 0


def test_a_crash_between_pseudonymizing_and_the_outbox_commit_leaves_the_lead_waiting_and_sealed_once(
    police: Client, service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    service.down = away()
    event_id = police.publish_lead(a_lead())
    service.down = None

    def crash(_done: object) -> None:
        raise OSError("the process died here")

    with monkeypatch.context() as m:
        m.setattr(police.outbox, "resolve", crash)
        with pytest.raises(OSError, match="died"):
            police._resolve_waiting(police.outbox.deferred())
    assert police.outbox.waiting() == 1
    assert police.outbox.pending() == []
    assert police.drainer.resolve_waiting() == 1
    assert police.drainer.resolve_waiting() == 0, "nothing is left to seal a second time"
    assert [r.event_id for r in police.outbox.pending()] == [event_id]


def test_an_event_id_accepted_as_waiting_is_not_accepted_again(police: Client, service: Service) -> None:
    from services.sdk.outbox import ConflictError

    service.down = away()
    event_id = police.publish_lead(a_lead())
    with pytest.raises(ConflictError):
        police.publish_lead(a_lead(), event_id=event_id)
    service.down = None
    with pytest.raises(ConflictError):
        police.publish_lead(a_lead(), event_id=event_id)


def test_flush_waits_for_the_leads_waiting_for_pseudonyms_too(police: Client, service: Service) -> None:
    service.down = away()
    police.publish_lead(a_lead())
    assert police.flush(timeout=0.05) is False


def test_a_waiting_lead_moved_under_another_event_id_does_not_open(oblivious: DemoDomain) -> None:
    keys = oblivious.keys("police")
    kid, public = deferred.own_key(keys, oblivious.registry, NOW)
    pending = deferred.PendingLead.of(a_lead(), urgency=None)
    sealed = deferred.seal_pending(pending, participant="police", event_id="e1", kid=kid, public=public)
    assert deferred.open_pending(sealed, keystore=keys, event_id="e1", kid=kid) == pending
    with pytest.raises(DecryptFailedError):
        deferred.open_pending(sealed, keystore=keys, event_id="e2", kid=kid)


def test_a_waiting_lead_that_no_longer_opens_stays_in_the_outbox_counted(
    police: Client, service: Service
) -> None:
    service.down = away()
    police.publish_lead(a_lead())
    row = police.outbox.deferred()[0]
    service.down = None
    tampered = Deferred(
        row.seq, row.event_id, row.kid, row.sealed[:-1] + bytes([row.sealed[-1] ^ 1]), row.accepted
    )
    assert police._resolve_waiting([tampered]) == 0
    assert police.outbox.waiting() == 1
    assert police.metrics.waiting_failures.labels("invalid")._value.get() == 1


class Failing:
    def __init__(self, error: TransportError) -> None:
        self.error = error
        self.calls = 0

    def __call__(self, rows: list[Deferred]) -> int:
        self.calls += 1
        raise self.error


def test_the_drainer_backs_off_from_a_failing_pseudonymizer_within_its_ceiling(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    box.put_deferred(event_id="e1", kid="k", sealed=b"x")
    resolve = Failing(away(status=429, code="rate_limited", retry_after=7))
    drainer = Drainer(box, "", resolve=resolve, max_backoff_s=5.0)
    assert drainer.resolve_waiting(now=100.0) == 0
    assert drainer.resolve_waiting(now=104.9) == 0
    assert resolve.calls == 1, "Retry-After, capped at the ceiling, is respected"
    drainer.resolve_waiting(now=105.0)
    assert resolve.calls == 2
    unreachable = Failing(away())
    drainer = Drainer(box, "", resolve=unreachable, max_backoff_s=5.0)
    for now in (0.0, 0.3, 0.8, 1.7):
        drainer.resolve_waiting(now=now)
    assert unreachable.calls == 4, "no answer at all: doubling from 0.2 s"
    box.close()


def test_a_registry_without_a_pseudonymizer_has_nothing_to_wait_for(
    sealed_domain: DemoDomain, tmp_path: Path
) -> None:
    client = Client(
        keystore=sealed_domain.keys("police"),
        registry=sealed_domain.registry,
        bootstrap="",
        outbox_path=tmp_path / "p.sqlite",
        clock=lambda: NOW,
        start=False,
        metrics=SdkMetrics(CollectorRegistry()),
    )
    try:
        with pytest.raises(UsageError, match="names no pseudonymizer"):
            client.defer_lead(a_lead())
    finally:
        client.close()


class Recorded(Drainer):
    """A drainer whose Kafka is a list."""

    sent: list[str]

    def send(self, records: list[Any]) -> None:
        self.sent.extend(r.event_id for r in records)
        self.outbox.mark_sent(records)


def test_a_pseudonymizer_that_does_not_answer_holds_back_no_record_that_needs_none(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    box.put_deferred(event_id="waiting", kid="k", sealed=b"x")
    hanging, release = threading.Event(), threading.Event()

    def resolve(_rows: list[Deferred]) -> int:
        hanging.set()
        release.wait(30)  # the service takes its time to not answer
        return 0

    drainer = Recorded(box, "", resolve=resolve)
    drainer.sent = []
    drainer.start()
    try:
        until(hanging.is_set, "the drainer asks the pseudonymizer")
        box.put(event_id="follow-up", topic="events", key=b"s", value=b"sealed", headers=[])
        until(lambda: drainer.sent == ["follow-up"], "the follow-up sent while the service hangs")
    finally:
        release.set()
        drainer.stop(10)
        box.close()


def test_a_lead_that_waited_across_a_registry_change_is_sealed_under_the_registry_in_force_when_sent(
    oblivious: DemoDomain, service: Service, tmp_path: Path
) -> None:
    keys: dict[str, Any] = {}
    for store in oblivious.trust.root_keystores()[:2]:
        keys.update(store.signing)
    document = oblivious.registry.document
    held = RegistryInForce(
        oblivious.registry, trusted_roots=oblivious.trust.trusted_roots(), clock=lambda: NOW
    )
    client = Client(
        keystore=oblivious.keys("police"),
        registry=held,
        bootstrap="",
        outbox_path=tmp_path / "police.sqlite",
        clock=lambda: NOW,
        start=False,
        pseudonymizer=service,
        metrics=SdkMetrics(CollectorRegistry()),
    )
    try:
        service.down = away()
        event_id = client.publish_lead(a_lead())
        newer = document.model_copy(update={"version": document.version + 1})
        assert held.offer(sign_document(newer, keys)).taken
        service.down = None
        assert client.drainer.resolve_waiting() == 1
        (record,) = client.outbox.pending()
        header = envelope.parse(record.value)[4]
        assert (header.id, header.registry) == (event_id, document.version + 1)
    finally:
        client.close()


def test_a_full_batch_of_leads_that_cannot_be_sent_holds_back_none_behind_it(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    for event_id in ("stuck-1", "stuck-2", "ok-3"):
        box.put_deferred(event_id=event_id, kid="k", sealed=b"x")
    seen: list[list[str]] = []

    def resolve(rows: list[Deferred]) -> int:
        seen.append([r.event_id for r in rows])
        ok = [r for r in rows if r.event_id.startswith("ok")]
        box.resolve([Resolved(r, "events", b"s", b"v", []) for r in ok])
        return len(ok)

    drainer = Drainer(box, "", resolve=resolve, resolve_batch=2)
    for now in (0.0, 1.0, 2.0):
        drainer.resolve_waiting(now=now)
    assert seen == [["stuck-1", "stuck-2"], ["ok-3"], ["stuck-1", "stuck-2"]]
    assert [p.event_id for p in box.pending()] == ["ok-3"]
    box.close()


def test_while_the_service_is_away_the_next_attempt_starts_from_the_oldest_lead(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    for event_id in ("first", "second", "third"):
        box.put_deferred(event_id=event_id, kid="k", sealed=b"x")
    seen: list[list[str]] = []

    def resolve(rows: list[Deferred]) -> int:
        seen.append([r.event_id for r in rows])
        raise away()

    drainer = Drainer(box, "", resolve=resolve, resolve_batch=2)
    drainer.resolve_waiting(now=0.0)
    drainer.resolve_waiting(now=100.0)
    assert seen == [["first", "second"], ["first", "second"]]
    box.close()


def test_a_waiting_lead_gets_its_victims_links_from_the_real_pseudonyms(
    oblivious: DemoDomain, police: Client, service: Service
) -> None:
    service.down = away()
    victim = {"name": NAME, "phone": PHONE, "id_number": "11010519491231002X", "is_minor": False}
    police.publish_lead(a_lead(victim=victim))
    service.down = None
    assert police.drainer.resolve_waiting() == 1
    (record,) = police.outbox.pending()
    header = envelope.parse(record.value)[4]
    key = oblivious.pseudonymizer_key()
    by_id, by_phone = key.pseudonyms(
        [normalize_subject(id_number="11010519491231002X"), normalize_subject(phone=PHONE)]
    )
    assert header.subject == by_id
    assert list(header.links) == [by_phone]
