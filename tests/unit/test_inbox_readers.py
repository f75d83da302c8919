"""What every inbox reader shares: the ids it handed out, the result for a record it cannot open, the
problem record it writes about one; the SDK's reading loop over a stand-in consumer, and the gateway's
webhook over a stand-in receiver."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from kafka import TopicPartition
from kafka.errors import KafkaTimeoutError
from prometheus_client import CollectorRegistry

from services.bus import registry_follower
from services.bus.deadletter import problem_headers
from services.gateway import webhooks
from services.gateway.metrics import GatewayMetrics
from services.gateway.webhooks import WebhookSender
from services.kernel import envelope
from services.kernel.errors import RegistryExpiredError, TransportError, UsageError
from services.sdk.client import Client
from services.sdk.metrics import SdkMetrics
from services.store.handed import KEEP, HandedOut
from tests.kit import CONTENT, NOW, DemoDomain, RandomKeyFor, Served, header, rewrite_body, seal

pytestmark = pytest.mark.unit

# --------------------------------------------------------------------------- the handed-out ids


class Ticks:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_an_event_id_handed_out_once_is_refused_a_second_time_and_keeps_its_first_place() -> None:
    handed = HandedOut(None)
    assert handed.remember("e1", 0, 10)
    assert not handed.remember("e1", 2, 99)
    assert handed.first("e1") == (0, 10)
    assert handed.first("e2") is None


def test_handed_out_ids_survive_a_restart_of_the_reader(tmp_path: Path) -> None:
    path = tmp_path / "r" / "handed.sqlite"
    first = HandedOut(path)
    first.remember("e1", 1, 5)
    first.close()
    again = HandedOut(path)
    assert not again.remember("e1", 1, 5)
    again.close()


def test_ids_older_than_the_router_s_replay_window_are_forgotten() -> None:
    ticks = Ticks()
    handed = HandedOut(None, now=ticks)
    handed.remember("old", 0, 1)
    ticks.now += KEEP.total_seconds() - 1
    handed.remember("recent", 0, 2)
    ticks.now += 2
    assert handed.prune() == 1
    assert handed.first("old") is None
    assert handed.first("recent") == (0, 2)


def test_a_reported_record_is_remembered_apart_from_event_ids() -> None:
    handed = HandedOut(None)
    assert not handed.reported(1, 7)
    handed.remember_reported(1, 7)
    assert handed.reported(1, 7)
    assert not handed.reported(7, 1)
    assert handed.remember("1", 1, 7), "a problem record never shadows an event id"


# --------------------------------------------------------------------------- unreadable records


def test_an_event_sealed_with_a_random_key_for_police_is_unreadable_to_police_with_its_header(
    domain: DemoDomain,
) -> None:
    h = header(source="urn:lianfang:womens_federation")
    sealed = envelope.seal(
        h,
        CONTENT,
        registry=domain.registry,
        signer=domain.keys("womens_federation"),
        entropy=RandomKeyFor("police"),
    )
    verified = envelope.verify(sealed.value, registry=domain.registry, now=NOW)
    assert "police" in verified.recipients()["details"], "police is a mandatory recipient"
    result = envelope.open_or_unreadable(
        sealed.value, registry=domain.registry, now=NOW, keystore=domain.keys("police")
    )
    assert isinstance(result, envelope.Unreadable)
    assert result.reason == "decrypt_failed"
    assert result.header is not None
    assert result.header.id == h.id
    assert result.header.sender == "womens_federation"
    other = next(p for p in verified.recipients()["details"] if p != "police")
    opened = envelope.open_or_unreadable(
        sealed.value, registry=domain.registry, now=NOW, keystore=domain.keys(other)
    )
    assert isinstance(opened, envelope.Opened), "the other recipients still open it"


def test_an_event_whose_signature_fails_is_unreadable_and_names_no_header(domain: DemoDomain) -> None:
    value = rewrite_body(seal(domain), lambda hb, s: (hb.replace(b"renhe", b"nancai"), s))
    result = envelope.open_or_unreadable(
        value, registry=domain.registry, now=NOW, keystore=domain.keys("police")
    )
    assert isinstance(result, envelope.Unreadable)
    assert result.reason == "bad_signature"
    assert result.header is None


@dataclass
class At:
    topic: str = "lianfang.inbox.police.v1"
    partition: int = 2
    offset: int = 41
    value: bytes = b""
    key: bytes | None = None


def test_a_problem_record_names_reason_source_event_sender_and_reader_and_holds_no_content(
    domain: DemoDomain,
) -> None:
    h = header(source="urn:lianfang:womens_federation")
    sealed = envelope.seal(
        h,
        CONTENT,
        registry=domain.registry,
        signer=domain.keys("womens_federation"),
        entropy=RandomKeyFor("police"),
    )
    problem = envelope.open_or_unreadable(
        sealed.value, registry=domain.registry, now=NOW, keystore=domain.keys("police")
    )
    assert isinstance(problem, envelope.Unreadable)
    headers = dict(problem_headers(problem, reader="police/sdk", topic="t", partition=2, offset=41, now=NOW))
    assert headers["lianfang_reason"] == b"decrypt_failed"
    assert (headers["lianfang_source_topic"], headers["lianfang_source_partition"]) == (b"t", b"2")
    assert headers["lianfang_source_offset"] == b"41"
    assert headers["lianfang_event_id"] == h.id.encode()
    assert headers["lianfang_sender"] == b"womens_federation"
    assert headers["lianfang_reader"] == b"police/sdk"
    everything = b" ".join(headers.values()).decode()
    for secret in ("张某某", "13800000000", "殴打", "threats_to_kill"):
        assert secret not in everything


# --------------------------------------------------------------------------- the SDK's loop


@dataclass
class Record:
    value: bytes
    offset: int
    topic: str = "lianfang.inbox.police.v1"
    partition: int = 0
    key: bytes | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


@dataclass
class StandIn:
    """A consumer and a problem writer that log what they are asked, in order."""

    records: list[Record]
    log: list[str] = field(default_factory=list)
    position: int = 0

    def poll(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Record]]:
        if self.position >= len(self.records):
            return {}
        record = self.records[self.position]
        self.position += 1
        return {TopicPartition(record.topic, record.partition): [record]}

    fail_commits: bool = False

    def commit(self, offsets: dict[TopicPartition, Any], timeout_ms: int | None = None) -> None:
        if self.fail_commits:
            raise KafkaTimeoutError("the group coordinator did not answer")
        self.log.append(
            "commit " + " ".join(f"{tp.partition}@{o.offset}" for tp, o in sorted(offsets.items()))
        )

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.log.append(f"seek {offset}")
        self.position = next(i for i, r in enumerate(self.records) if r.offset == offset)

    def close(self) -> None:
        pass

    def write(self, problem: envelope.Unreadable, record: Any) -> None:
        self.log.append(f"problem {problem.reason} {record.offset}")


@pytest.fixture
def police(domain: DemoDomain, tmp_path: Path) -> Iterator[tuple[Client, SdkMetrics]]:
    metrics = SdkMetrics(CollectorRegistry())
    client = Client(
        keystore=domain.keys("police"),
        registry=domain.registry,
        bootstrap="127.0.0.1:9",  # never contacted: the consumer and the writer are stand-ins
        outbox_path=tmp_path / "police.sqlite",
        clock=lambda: NOW,
        start=False,
        metrics=metrics,
    )
    yield client, metrics
    client.close()


def _attach(client: Client, records: list[Record]) -> StandIn:
    stand_in = StandIn(records)
    client._consumer = stand_in  # type: ignore[assignment]
    client._problems = stand_in  # type: ignore[assignment]
    return stand_in


def test_the_sdk_hands_an_event_delivered_twice_out_once(
    domain: DemoDomain, police: tuple[Client, SdkMetrics]
) -> None:
    client, metrics = police
    value = seal(domain)
    stand_in = _attach(client, [Record(value, 0), Record(value, 1), Record(seal(domain), 2)])
    got = [o.header.id for o in client.inbox(timeout=0)]
    assert len(got) == 2
    assert len(set(got)) == 2
    assert metrics.duplicates_skipped._value.get() == 1
    assert stand_in.log == ["commit 0@3"], "one commit past the three, once the inbox had no more"


def test_the_sdk_skips_an_event_its_caller_finished_when_kafka_re_delivers_it_after_a_crash(
    domain: DemoDomain, police: tuple[Client, SdkMetrics]
) -> None:
    client, metrics = police
    value = seal(domain)
    _attach(client, [Record(value, 0), Record(seal(domain), 1)])
    reading = client.inbox(timeout=0)
    next(reading)
    next(reading)  # asked for the next: done with the first; the process "dies" handling the second
    _attach(client, [Record(value, 0)])  # Kafka re-delivers the uncommitted record
    assert list(client.inbox(timeout=0)) == []
    assert metrics.duplicates_skipped._value.get() == 1


def test_the_sdk_hands_out_again_the_event_its_caller_was_handling_when_its_process_died(
    domain: DemoDomain, police: tuple[Client, SdkMetrics]
) -> None:
    client, _ = police
    value = seal(domain)
    _attach(client, [Record(value, 0)])
    reading = client.inbox(timeout=0)
    event_id = next(reading).header.id  # the process "dies" while its caller handles the event
    _attach(client, [Record(value, 0)])  # Kafka re-delivers the uncommitted record
    assert [opened.header.id for opened in client.inbox(timeout=0)] == [event_id]


def test_the_sdk_has_the_finished_event_s_id_and_the_next_one_s_audit_entry_on_disk_before_handing_it_out(
    domain: DemoDomain, police: tuple[Client, SdkMetrics], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, _ = police
    _attach(client, [Record(seal(domain), 0), Record(seal(domain), 1)])
    handed = client._handed_out()
    synced: list[int] = []
    audited = client.trail.sync
    monkeypatch.setattr(client.trail, "sync", lambda: (audited(), synced.append(1)))
    remember = handed.remember

    def slow_disk(*args: Any) -> bool:
        time.sleep(0.2)  # a slow fsync: the id's write is still in flight when the next is ready
        return remember(*args)

    monkeypatch.setattr(handed, "remember", slow_disk)
    reading = client.inbox(timeout=0)
    first = next(reading)
    assert len(synced) == 1, "the opening of the first was audited on disk before it was handed out"
    second = next(reading)  # the caller is done with the first
    assert handed.first(first.header.id) == (0, 0), "its id was on disk before the second was handed out"
    assert len(synced) == 2
    assert handed.first(second.header.id) is None, "the second is in hand, not finished"


def test_when_the_finished_event_s_id_cannot_be_written_it_and_the_next_are_put_back_and_nothing_is_committed(
    domain: DemoDomain, police: tuple[Client, SdkMetrics], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, _ = police
    stand_in = _attach(client, [Record(seal(domain), 0), Record(seal(domain), 1, partition=1)])
    handed = client._handed_out()
    reading = client.inbox(timeout=0)
    next(reading)

    def disk_fails(*_: Any) -> bool:
        raise TransportError("the disk is full")

    monkeypatch.setattr(handed, "remember", disk_fails)
    with pytest.raises(TransportError, match="disk is full"):
        next(reading)  # done with the first: its id cannot be written
    assert "seek 0" in stand_in.log, "the first is put back, to be handed out again"
    assert "seek 1" in stand_in.log, "the second, opened meanwhile, is put back too"
    assert not any(line.startswith("commit") for line in stand_in.log)


def test_a_periodic_commit_that_fails_skips_no_event_for_the_same_client_s_next_reading(
    domain: DemoDomain, police: tuple[Client, SdkMetrics]
) -> None:
    client, _ = police
    client.inbox_commit_every_s = 0  # every event is due at once
    values = [seal(domain) for _ in range(3)]
    stand_in = _attach(client, [Record(value, offset) for offset, value in enumerate(values)])
    reading = client.inbox(timeout=0)
    handed = [next(reading).header.id, next(reading).header.id]
    stand_in.fail_commits = True
    with pytest.raises(TransportError):
        next(reading)  # done with the second; the commit then due (past the first) fails
    stand_in.fail_commits = False
    again = [opened.header.id for opened in client.inbox(timeout=0)]
    assert again == [envelope.parse(values[2])[4].id], "the third is handed out; the two finished are not"
    assert not set(again) & set(handed)


def test_a_record_met_while_the_registry_has_expired_is_read_again_by_the_same_client_s_next_reading(
    domain: DemoDomain, police: tuple[Client, SdkMetrics]
) -> None:
    client, _ = police
    stand_in = _attach(client, [Record(seal(domain), 0)])
    client.clock = lambda: domain.registry.document.expires + timedelta(hours=1)
    with pytest.raises(RegistryExpiredError):
        list(client.inbox(timeout=0))
    client.clock = lambda: NOW  # a registry in force again (the console reads on with the same client)
    assert len(list(client.inbox(timeout=0))) == 1
    assert stand_in.log[0] == "seek 0", "put back on the record it could not open"


def test_the_sdk_commits_once_the_interval_has_passed_and_at_the_end_of_the_reading(
    domain: DemoDomain, police: tuple[Client, SdkMetrics]
) -> None:
    client, _ = police
    client.inbox_commit_every_s = 0  # every event is due at once
    stand_in = _attach(client, [Record(seal(domain), 0), Record(seal(domain), 1, partition=2)])
    assert len(list(client.inbox(timeout=0, max_records=2))) == 2
    assert stand_in.log == ["commit 0@1", "commit 2@2"]


def test_a_last_commit_that_fails_is_logged_and_the_events_handed_out_stay_handed_out(
    domain: DemoDomain, police: tuple[Client, SdkMetrics], caplog: pytest.LogCaptureFixture
) -> None:
    client, metrics = police
    value = seal(domain)
    stand_in = _attach(client, [Record(value, 0)])
    stand_in.fail_commits = True
    assert len(list(client.inbox(timeout=0, max_records=1))) == 1
    assert "not committed" in caplog.text
    _attach(client, [Record(value, 0)])  # Kafka re-delivers what was not committed
    assert list(client.inbox(timeout=0)) == []
    assert metrics.duplicates_skipped._value.get() == 1


def test_an_event_whose_handler_stopped_the_iteration_is_handed_out_again(
    domain: DemoDomain, police: tuple[Client, SdkMetrics]
) -> None:
    client, _ = police
    value = seal(domain)
    stand_in = _attach(client, [Record(value, 0)])
    for _opened in client.inbox(timeout=0):
        break
    assert stand_in.log == ["seek 0"], "not committed, and the consumer is put back on it"
    assert [o.header.id for o in client.inbox(timeout=0)] == [envelope.parse(value)[4].id]


def test_an_event_police_cannot_open_is_reported_before_its_commit_and_reading_goes_on(
    domain: DemoDomain, police: tuple[Client, SdkMetrics]
) -> None:
    client, metrics = police
    h = header(source="urn:lianfang:womens_federation")
    bad = envelope.seal(
        h,
        CONTENT,
        registry=domain.registry,
        signer=domain.keys("womens_federation"),
        entropy=RandomKeyFor("police"),
    ).value
    good = seal(domain)
    stand_in = _attach(client, [Record(bad, 0), Record(good, 1)])
    got = list(client.inbox(timeout=0))
    assert [o.header.id for o in got] == [envelope.parse(good)[4].id]
    assert stand_in.log == ["problem decrypt_failed 0", "commit 0@2"]
    assert metrics.inbox_rejected.labels("decrypt_failed")._value.get() == 1


def test_a_problem_record_that_was_written_is_not_written_again_when_the_record_comes_back(
    domain: DemoDomain, police: tuple[Client, SdkMetrics]
) -> None:
    client, metrics = police
    bad = rewrite_body(seal(domain), lambda hb, s: (hb.replace(b"renhe", b"nancai"), s))
    _attach(client, [Record(bad, 0)])
    list(client.inbox(timeout=0))
    stand_in = _attach(client, [Record(bad, 0)])
    list(client.inbox(timeout=0))
    assert stand_in.log == ["commit 0@1"]
    assert metrics.inbox_rejected.labels("bad_signature")._value.get() == 1


def test_each_reader_of_one_participant_has_its_own_group_and_its_own_handed_out_ids(
    domain: DemoDomain, tmp_path: Path
) -> None:
    def reader(name: str | None) -> Client:
        return Client(
            keystore=domain.keys("coordinators"),
            registry=domain.registry,
            bootstrap="127.0.0.1:9",
            outbox_path=tmp_path / "coordinators.sqlite",
            start=False,
            reader=name,
        )

    clients = [reader(None), reader("console"), reader("cli")]
    try:
        assert [c.inbox_group for c in clients] == [
            "lianfang-inbox-coordinators",
            "lianfang-inbox-coordinators.console",
            "lianfang-inbox-coordinators.cli",
        ]
        assert len({c.handed_path for c in clients}) == 3
    finally:
        for c in clients:
            c.close()


@pytest.mark.parametrize("name", ["", "a.b", "x y", "../up"])
def test_a_reader_name_that_could_leave_the_participant_s_groups_is_refused(
    domain: DemoDomain, tmp_path: Path, name: str
) -> None:
    from services.kernel.errors import UsageError

    with pytest.raises(UsageError, match="reader name"):
        Client(
            keystore=domain.keys("police"),
            registry=domain.registry,
            bootstrap="127.0.0.1:9",
            outbox_path=tmp_path / "police.sqlite",
            start=False,
            reader=name,
        )


# --------------------------------------------------------------------------- the gateway's webhook


def _webhook(domain: DemoDomain, stand_in: StandIn) -> tuple[WebhookSender, list[str]]:
    sender = WebhookSender(
        url="http://127.0.0.1:9/hook",  # never contacted: _post is a stand-in
        bootstrap="127.0.0.1:9",
        topic="lianfang.inbox.police.v1",
        group_id="lianfang-inbox-police.webhook",
        keystore=domain.keys("police"),
        registry=domain.registry,
        metrics=GatewayMetrics(CollectorRegistry()),
        clock=lambda: NOW,
        handed=HandedOut(None),
        problems=stand_in,  # type: ignore[arg-type]
    )
    posted: list[str] = []

    async def post(_session: Any, _body: bytes, event_id: str) -> str | None:
        posted.append(event_id)
        return None

    sender._post = post  # type: ignore[method-assign]
    return sender, posted


def _deliver(sender: WebhookSender, records: list[Record]) -> None:
    async def run() -> None:
        for record in records:
            await sender._deliver_one(None, record)  # type: ignore[arg-type]

    asyncio.run(run())


def test_the_webhook_posts_an_event_delivered_twice_once(domain: DemoDomain) -> None:
    stand_in = StandIn([])
    sender, posted = _webhook(domain, stand_in)
    value = seal(domain)
    _deliver(sender, [Record(value, 0), Record(value, 1)])
    assert posted == [envelope.parse(value)[4].id]
    assert sender.metrics.duplicates_skipped.labels("webhook")._value.get() == 1


def test_the_webhook_reports_an_event_police_cannot_open_once_and_posts_nothing_of_it(
    domain: DemoDomain,
) -> None:
    stand_in = StandIn([])
    sender, posted = _webhook(domain, stand_in)
    h = header(source="urn:lianfang:womens_federation")
    bad = envelope.seal(
        h,
        CONTENT,
        registry=domain.registry,
        signer=domain.keys("womens_federation"),
        entropy=RandomKeyFor("police"),
    ).value
    _deliver(sender, [Record(bad, 0), Record(bad, 0)])  # the second time: after a restart before the commit
    assert posted == []
    assert stand_in.log == ["problem decrypt_failed 0"]
    assert sender.metrics.inbox_rejected.labels("decrypt_failed")._value.get() == 1


def test_a_bug_in_a_webhook_sender_is_counted_and_it_reads_again_instead_of_ending(
    domain: DemoDomain, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Consumer:  # the sender's Kafka consumer: started and stopped, never read (_consume is ours)
        def __init__(self, *_args: Any, **_kwargs: Any) -> None:
            pass

        async def start(self) -> None:
            pass

        async def stop(self) -> None:
            pass

    monkeypatch.setattr(webhooks, "AIOKafkaConsumer", Consumer)
    sender, _ = _webhook(domain, StandIn([]))
    sender.backoff = webhooks.Backoff(first_s=0.001, cap_s=0.001)
    rounds: list[int] = []

    async def consume(_consumer: Any, _session: Any) -> None:
        rounds.append(len(rounds))
        if len(rounds) == 1:
            raise ValueError("a bug met on one event")
        raise asyncio.CancelledError  # the gateway stops

    sender._consume = consume  # type: ignore[method-assign]
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(sender.run())
    assert rounds == [0, 1], "it read again after the bug"
    assert sender.metrics is not None
    assert sender.metrics.webhook_failures.labels("police", "internal")._value.get() == 1


def test_an_event_its_caller_refuses_is_counted_reported_and_not_handed_out_again(
    domain: DemoDomain, police: tuple[Client, SdkMetrics]
) -> None:
    client, metrics = police
    value = seal(domain)
    stand_in = _attach(client, [Record(value, 0), Record(seal(domain), 1)])
    reading = client.inbox(timeout=0)
    first = next(reading)
    client.refuse(first, "malformed", "it does not match its schema")
    assert next(reading).header.id != first.header.id
    reading.close()
    assert "problem malformed 0" in stand_in.log
    assert metrics.inbox_rejected.labels("malformed")._value.get() == 1
    _attach(client, [Record(value, 0)])  # Kafka re-delivers it
    assert list(client.inbox(timeout=0)) == []


def test_refusing_an_event_that_is_not_the_one_in_hand_is_a_usage_error(
    domain: DemoDomain, police: tuple[Client, SdkMetrics]
) -> None:
    client, _ = police
    _attach(client, [Record(seal(domain), 0), Record(seal(domain), 1)])
    reading = client.inbox(timeout=0)
    first = next(reading)
    next(reading)  # asked for the next: the first is finished
    with pytest.raises(UsageError, match="handed out last"):
        client.refuse(first, "malformed", "too late")
    reading.close()


def test_an_event_the_receiver_refuses_for_good_is_reported_and_passed_so_later_events_arrive(
    domain: DemoDomain,
) -> None:
    stand_in = StandIn([])
    sender, posted = _webhook(domain, stand_in)
    sender.backoff = webhooks.Backoff(first_s=0.001, cap_s=0.001)
    refused_one, good = seal(domain), seal(domain)
    refused_id = envelope.parse(refused_one)[4].id

    async def post(_session: Any, _body: bytes, event_id: str) -> str | None:
        posted.append(event_id)
        return "refused" if event_id == refused_id else None  # a 4xx for that one, every time

    sender._post = post  # type: ignore[method-assign]
    _deliver(sender, [Record(refused_one, 0), Record(good, 1)])
    assert posted.count(refused_id) == WebhookSender.MAX_REFUSALS
    assert posted[-1] == envelope.parse(good)[4].id, "the later event arrived"
    assert "problem receiver_refused 0" in stand_in.log
    assert sender.metrics is not None
    assert sender.metrics.inbox_rejected.labels("receiver_refused")._value.get() == 1
    _deliver(sender, [Record(refused_one, 0)])  # read again after a restart: not posted again
    assert posted.count(refused_id) == WebhookSender.MAX_REFUSALS


def test_a_receiver_that_says_later_is_asked_again_however_often(domain: DemoDomain) -> None:
    sender, posted = _webhook(domain, StandIn([]))
    sender.backoff = webhooks.Backoff(first_s=0.001, cap_s=0.001)
    answers = iter(["status_4xx"] * (3 * WebhookSender.MAX_REFUSALS) + [None])  # 429s, then a 2xx

    async def post(_session: Any, _body: bytes, event_id: str) -> str | None:
        posted.append(event_id)
        return next(answers)

    sender._post = post  # type: ignore[method-assign]
    _deliver(sender, [Record(seal(domain), 0)])
    assert len(posted) == 3 * WebhookSender.MAX_REFUSALS + 1
    assert sender.delivered == 1


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, None),
        (429, "status_4xx"),
        (408, "status_4xx"),
        (401, "status_4xx"),  # a key the receiver has not taken yet: every event until it has
        (404, "status_4xx"),  # a URL mistyped: every event until it is put right
        (400, "refused"),
        (409, "refused"),
        (422, "refused"),
        (503, "status_5xx"),
    ],
)
def test_a_receiver_s_answer_is_taken_as_done_later_refused_or_failed(
    domain: DemoDomain, status: int, outcome: str | None
) -> None:
    async def answer(_request: web.Request) -> web.Response:
        return web.Response(status=status)

    app = web.Application()
    app.router.add_post("/hook", answer)
    served = Served(app)
    try:
        sender, _ = _webhook(domain, StandIn([]))
        sender.url = served.url + "/hook"
        sender._post = WebhookSender._post.__get__(sender)  # type: ignore[method-assign]  # the real one

        async def post() -> str | None:
            async with aiohttp.ClientSession() as session:
                return await sender._post(session, b"{}", "0190f3a0-0000-7000-8000-000000000000")

        assert asyncio.run(post()) == outcome
    finally:
        served.close()


def test_a_bug_met_delivering_one_record_reports_it_as_internal_and_the_next_is_delivered(
    domain: DemoDomain,
) -> None:
    stand_in = StandIn([])
    sender, posted = _webhook(domain, stand_in)
    first, second = Record(seal(domain), 0), Record(seal(domain), 1)
    deliver = sender._deliver_one

    async def deliver_one(session: Any, record: Any) -> None:
        if record is first:
            raise ValueError("a bug met on this one")
        await deliver(session, record)

    class Consumer:
        def __init__(self) -> None:
            self.batches = [{TopicPartition(first.topic, 0): [first, second]}]
            self.committed: list[int] = []

        async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Record]]:
            if not self.batches:
                raise asyncio.CancelledError  # the gateway stops
            return self.batches.pop()

        async def commit(self, offsets: dict[TopicPartition, int]) -> None:
            self.committed += list(offsets.values())

    consumer = Consumer()
    sender._deliver_one = deliver_one  # type: ignore[method-assign]
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(sender._consume(consumer, None))  # type: ignore[arg-type]
    assert "problem internal 0" in stand_in.log
    assert posted == [envelope.parse(second.value)[4].id]
    assert consumer.committed == [1, 2]
    assert sender.metrics.webhook_failures.labels("police", "internal")._value.get() == 1


def test_a_bug_met_opening_one_record_reports_it_as_internal_and_the_reader_goes_on(
    domain: DemoDomain, police: tuple[Client, SdkMetrics], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, metrics = police
    first, second = seal(domain), seal(domain)
    stand_in = _attach(client, [Record(first, 0), Record(second, 1)])
    real = registry_follower.open_or_unreadable

    def opening(value: bytes, **kwargs: Any) -> Any:
        if value == first:
            raise ValueError("a bug met on this one")
        return real(value, **kwargs)

    monkeypatch.setattr(registry_follower, "open_or_unreadable", opening)
    got = [opened.header.id for opened in client.inbox(timeout=0)]
    assert got == [envelope.parse(second)[4].id], "the reader went on past it"
    assert "problem internal 0" in stand_in.log
    assert metrics.inbox_rejected.labels("internal")._value.get() == 1
