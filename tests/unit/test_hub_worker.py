"""The hub's per-record work without faust or Kafka: tables are dicts, sending appends to a list, and the
clock is fixed. Events are really sealed and verified in the demo domain; what the hub sends is opened
as the coordinators would open it."""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from schemas.events import RiskAnswers
from services import trust
from services.audit.trail import participant_trail
from services.bus.registry_follower import RegistryInForce
from services.hub import rules, serial
from services.hub.config import HubConfig
from services.hub.ids import alert_id_for
from services.hub.metrics import HubMetrics
from services.hub.state import Observation, VictimState
from services.hub.worker import REPORT_SUBJECT, InboxRecord, RecordWorker
from services.kernel import envelope, topics
from services.kernel.errors import TransportError
from services.kernel.registry import Registry, sign_document
from services.trust import admin
from tests import kit
from tests.kit import DemoDomain
from tests.unit.test_hub_rules import eid, pseudonym

pytestmark = pytest.mark.unit

NAMES = topics.TopicNames("t.")
PARTITIONS = 3
T = kit.NOW + timedelta(hours=1)  # event times: the demo domain's keys are valid from kit.NOW
VICTIM = pseudonym("worker victim")
OTHER_VICTIM = pseudonym("worker other victim")
SUSPECT = pseudonym("worker suspect")


@dataclass(frozen=True)
class Sent:
    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]] | None


@dataclass
class Harness:
    """A worker over dict tables whose sends land in ``sent``; ``now`` is its clock."""

    domain: DemoDomain
    worker: RecordWorker
    victims: dict[bytes, bytes]
    suspects: dict[bytes, bytes]
    registry: CollectorRegistry
    sent: list[Sent] = field(default_factory=list)

    def inbox(self, *values: bytes) -> None:
        for offset, value in enumerate(values):
            asyncio.run(self.worker.on_inbox(value, key=VICTIM.encode(), partition=1, offset=offset))

    def to(self, topic: str) -> list[Sent]:
        return [s for s in self.sent if s.topic == topic]

    def published(self) -> list[envelope.Opened]:
        """What the hub published on the events topic, opened by the coordinators."""
        return [
            envelope.verify_and_open(
                s.value,
                registry=self.domain.registry,
                now=T + timedelta(days=1),
                keystore=self.domain.keys("coordinators"),
            )
            for s in self.to(NAMES.events)
        ]

    def alerts(self) -> list[envelope.Opened]:
        return [o for o in self.published() if o.header.type == "joint_meeting.alert"]

    def count(self, metric: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(metric, labels)

    def state(self, victim: str = VICTIM) -> VictimState:
        return VictimState.from_json(self.victims[victim.encode()])


def acknowledged() -> asyncio.Future[object]:
    """Kafka's acknowledgement, already in."""
    ack: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    ack.set_result(None)
    return ack


def not_acknowledged() -> asyncio.Future[object]:
    """Kafka's acknowledgement, failed: the broker went away."""
    ack: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    ack.set_exception(ConnectionError("the broker is gone"))
    return ack


@dataclass
class HeldAcks:
    """A send whose acknowledgements wait until the test resolves them: ``acks`` in the order sent."""

    sent: list[Sent]
    acks: list[asyncio.Future[object]] = field(default_factory=list)

    async def send(
        self, topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]] | None
    ) -> asyncio.Future[object]:
        self.sent.append(Sent(topic, key, value, headers))
        self.acks.append(asyncio.get_running_loop().create_future())
        return self.acks[-1]


async def until_sent(held: HeldAcks, task: asyncio.Task[None], n: int) -> None:
    """Let the worker's task run until it has sent ``n`` records and waits (a bounded number of turns
    of the event loop, no clock)."""
    for _ in range(1000):
        if len(held.acks) >= n or task.done():
            break
        await asyncio.sleep(0)
    for _ in range(10):  # and a few more turns: it must now be waiting for an acknowledgement
        await asyncio.sleep(0)


@pytest.fixture
def hub(domain: DemoDomain, tmp_path: Path) -> Iterator[Harness]:
    keys = domain.keys("hub")
    trail = participant_trail(tmp_path / "audit", keys, domain.registry, "hub", ship=None, clock=lambda: T)
    victims: dict[bytes, bytes] = {}
    suspects: dict[bytes, bytes] = {}
    sent: list[Sent] = []

    async def send(
        topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]] | None
    ) -> asyncio.Future[object]:
        sent.append(Sent(topic, key, value, headers))
        return acknowledged()

    registry = CollectorRegistry()
    worker = RecordWorker(
        config=HubConfig(),
        names=NAMES,
        partitions=PARTITIONS,
        report_every_s=3600.0,
        registry=domain.registry,
        keys=keys,
        trail=trail,
        metrics=HubMetrics(registry),
        victims=victims,
        suspects=suspects,
        send=send,
        clock=lambda: T + timedelta(days=1),
    )
    yield Harness(domain, worker, victims, suspects, registry, sent)
    trail.close()


def sealed(
    domain: DemoDomain,
    n: int,
    event_type: str,
    at: datetime,
    triage: dict[str, Any],
    *,
    sender: str = "police",
    subject: str = VICTIM,
    refs: Sequence[str] = (),
) -> bytes:
    """An event really sealed by ``sender`` under the demo policy, with ``triage`` as its triage section
    (a lead's completed from the header as the SDK writes it, :func:`tests.kit.sections_for`)."""
    header = kit.header(
        id=eid(n),
        type=event_type,
        schema=f"{event_type}/1",
        source=f"urn:lianfang:{sender}",
        time=at,
        subject=subject,
        refs=list(refs),
    )
    content = kit.sections_for(header, {"triage": triage, "details": {"narrative": "测试。"}})
    return envelope.seal(header, content, registry=domain.registry, signer=domain.keys(sender)).value


def lead(domain: DemoDomain, n: int, at: datetime, *, subject: str = VICTIM, **triage: Any) -> bytes:
    return sealed(domain, n, "lead.reported", at, triage, subject=subject)  # the rest as the SDK writes it


def risk(domain: DemoDomain, n: int, at: datetime, score: int, lead_id: str) -> bytes:
    answers = {name: i < score for i, name in enumerate(RiskAnswers.model_fields)}  # score yes answers
    triage = {
        "lead_id": lead_id,
        "victim_pseudonym": VICTIM,
        "score": score,
        "answers": answers,
        "assessed_by": "womens_federation",
    }
    return sealed(domain, n, "risk.assessed", at, triage, sender="womens_federation", refs=[lead_id])


def reason_codes(opened: envelope.Opened) -> list[str]:
    return [reason["code"] for reason in opened.sections["details"]["reasons"]]


def test_a_high_risk_lead_raises_one_alert_with_the_coordinators_as_recipients(hub: Harness) -> None:
    hub.inbox(lead(hub.domain, 1, T), risk(hub.domain, 2, T + timedelta(minutes=5), 16, eid(1)))
    [alert] = hub.alerts()
    assert alert.header.sender == "hub"
    assert alert.header.subject == VICTIM
    assert reason_codes(alert) == ["high_risk"]
    assert alert.sections["details"]["alert_id"] == alert_id_for(VICTIM, 1)
    assert "coordinators" in set().union(*alert.verified.recipients().values())
    [record] = hub.to(NAMES.events)
    assert record.key == VICTIM.encode()
    assert hub.state().has_open_alert()
    assert hub.count("lianfang_hub_alerts_total", rule="high_risk") == 1


def test_a_second_trigger_for_the_same_victim_updates_the_alert_instead_of_raising_another(
    hub: Harness,
) -> None:
    hub.inbox(lead(hub.domain, 1, T, requests_joint_meeting=True))
    hub.inbox(risk(hub.domain, 2, T + timedelta(minutes=5), 16, eid(1)))
    first, second = hub.alerts()
    assert first.sections["details"]["alert_id"] == second.sections["details"]["alert_id"]
    assert first.header.id != second.header.id
    assert reason_codes(first) == ["professional_judgement"]
    assert reason_codes(second) == ["professional_judgement", "high_risk"]
    assert hub.state().alert is not None
    assert hub.state().alert.version == 2


def test_an_event_delivered_twice_sends_nothing_the_second_time_and_leaves_the_state(hub: Harness) -> None:
    event = lead(hub.domain, 1, T, requests_joint_meeting=True)
    hub.inbox(event)
    stored = hub.victims[VICTIM.encode()]
    sent = len(hub.sent)
    hub.inbox(event)
    assert len(hub.sent) == sent == 1
    assert hub.victims[VICTIM.encode()] == stored


def test_a_record_that_fails_verification_is_counted_dead_lettered_and_changes_nothing(hub: Harness) -> None:
    hub.inbox(b"not an envelope")
    assert [s.topic for s in hub.sent] == [NAMES.deadletter]
    assert hub.victims == {}
    assert hub.count("lianfang_hub_events_rejected_total", source="inbox", reason="malformed") == 1


def test_a_send_that_fails_leaves_the_state_unwritten_so_the_event_is_applied_again(hub: Harness) -> None:
    async def refuse(topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]] | None) -> None:
        raise RuntimeError("the broker did not acknowledge")

    event = lead(hub.domain, 1, T, requests_joint_meeting=True)
    send, hub.worker.send = hub.worker.send, refuse
    with pytest.raises(RuntimeError, match="acknowledge"):
        hub.inbox(event)
    assert hub.victims == {}
    hub.worker.send = send
    hub.inbox(event)
    assert [reason_codes(a) for a in hub.alerts()] == [["professional_judgement"]]


def test_a_batch_puts_its_audit_entries_on_disk_in_one_fsync_before_it_writes_its_states(
    hub: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    trail = hub.worker.trail.trail
    seen_at_sync: list[tuple[int, int]] = []
    sync = trail.sync

    def recording_sync() -> None:
        seen_at_sync.append((len(hub.victims), len(hub.sent)))
        sync()

    monkeypatch.setattr(trail, "sync", recording_sync)
    records = [
        InboxRecord(lead(hub.domain, 1, T, requests_joint_meeting=True), VICTIM.encode(), 1, 0),
        InboxRecord(lead(hub.domain, 2, T, subject=OTHER_VICTIM), OTHER_VICTIM.encode(), 1, 1),
        InboxRecord(risk(hub.domain, 3, T + timedelta(minutes=5), 16, eid(1)), VICTIM.encode(), 1, 2),
    ]
    syncs = trail._file.syncs if trail._file is not None else 0
    asyncio.run(hub.worker.on_inbox_batch(records))
    assert seen_at_sync == [(0, 2)], "one sync, after both alerts were sent and before any state"
    assert trail._file is not None
    assert trail._file.syncs == syncs + 1
    assert trail.path is not None
    assert trail.durable_size() == trail.path.stat().st_size
    alert = hub.state().alert
    assert alert is not None
    assert alert.version == 2, "the second record of the batch saw the first one's state"
    assert set(hub.victims) == {VICTIM.encode(), OTHER_VICTIM.encode()}


def test_a_batch_whose_send_fails_writes_none_of_its_states(hub: Harness) -> None:
    async def refuse(topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]] | None) -> None:
        raise RuntimeError("the broker did not acknowledge")

    records = [
        InboxRecord(lead(hub.domain, 1, T, subject=OTHER_VICTIM), OTHER_VICTIM.encode(), 1, 0),
        InboxRecord(lead(hub.domain, 2, T, requests_joint_meeting=True), VICTIM.encode(), 1, 1),
    ]
    hub.worker.send = refuse
    with pytest.raises(TransportError, match="acknowledge"):
        asyncio.run(hub.worker.on_inbox_batch(records))
    assert hub.victims == {}, "the first record's state is not written: the batch is handled again"


def test_a_batch_sends_every_record_before_it_waits_for_an_acknowledgement_and_writes_states_after_all(
    hub: Harness,
) -> None:
    held = HeldAcks(hub.sent)
    hub.worker.send = held.send
    victims = [pseudonym(f"acked victim {i}") for i in range(3)]
    records = [
        InboxRecord(lead(hub.domain, i + 1, T, subject=v, requests_joint_meeting=True), v.encode(), 1, i)
        for i, v in enumerate(victims)
    ]

    async def scenario() -> None:
        task = asyncio.create_task(hub.worker.on_inbox_batch(records))
        await until_sent(held, task, len(records))
        assert not task.done(), "the batch waits for Kafka's acknowledgements"
        assert [s.topic for s in hub.sent] == [NAMES.events] * 3, "all three alerts sent before any ack"
        assert hub.victims == {}, "no state before its alert is acknowledged"
        assert hub.count("lianfang_hub_alerts_total", rule="professional_judgement") is None
        for ack in held.acks[:2]:
            ack.set_result(None)
        await until_sent(held, task, len(records))
        assert not task.done(), "two of three acknowledged: the batch still waits"
        assert hub.victims == {}, "two of three acknowledged: still nothing written"
        held.acks[2].set_result(None)
        await task

    asyncio.run(scenario())
    assert set(hub.victims) == {v.encode() for v in victims}
    assert hub.count("lianfang_hub_alerts_total", rule="professional_judgement") == 3


def test_a_batch_whose_acknowledgement_fails_after_its_sends_writes_none_of_its_states(hub: Harness) -> None:
    held = HeldAcks(hub.sent)
    hub.worker.send = held.send
    records = [
        InboxRecord(lead(hub.domain, 1, T, requests_joint_meeting=True), VICTIM.encode(), 1, 0),
        InboxRecord(
            lead(hub.domain, 2, T, subject=OTHER_VICTIM, requests_joint_meeting=True),
            OTHER_VICTIM.encode(),
            1,
            1,
        ),
    ]

    async def scenario() -> None:
        task = asyncio.create_task(hub.worker.on_inbox_batch(records))
        await until_sent(held, task, len(records))
        held.acks[0].set_exception(ConnectionError("the broker is gone"))
        held.acks[1].set_result(None)
        with pytest.raises(TransportError, match="broker is gone"):
            await task

    asyncio.run(scenario())
    assert hub.victims == {}, "neither state is written: the batch is handled again"
    assert hub.count("lianfang_hub_alerts_total", rule="professional_judgement") == 1, (
        "the acknowledged alert is counted, the other not"
    )


def test_a_suspect_s_state_is_written_only_once_its_serial_triggers_are_acknowledged(hub: Harness) -> None:
    hub.inbox(
        lead(hub.domain, 1, T, suspect_pseudonyms=[SUSPECT]),
        lead(hub.domain, 2, T + timedelta(minutes=1), subject=OTHER_VICTIM, suspect_pseudonyms=[SUSPECT]),
    )
    first, second = hub.to(NAMES.hub_suspects)
    asyncio.run(hub.worker.on_suspect(first.value))
    one_victim = hub.suspects[SUSPECT.encode()]

    async def refuse(topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]] | None) -> Any:
        return not_acknowledged()

    hub.worker.send = refuse
    with pytest.raises(TransportError, match="broker is gone"):
        asyncio.run(hub.worker.on_suspect(second.value))
    assert hub.suspects[SUSPECT.encode()] == one_victim, "the second victim is not counted yet"


def test_a_suspect_named_against_two_victims_flags_both_through_the_suspect_and_serial_topics(
    hub: Harness,
) -> None:
    hub.inbox(
        lead(hub.domain, 1, T, suspect_pseudonyms=[SUSPECT]),
        lead(hub.domain, 2, T + timedelta(minutes=1), subject=OTHER_VICTIM, suspect_pseudonyms=[SUSPECT]),
    )
    notes = hub.to(NAMES.hub_suspects)
    assert [n.key for n in notes] == [SUSPECT.encode()] * 2
    assert [json.loads(n.value)["victim"] for n in notes] == [VICTIM, OTHER_VICTIM]
    for note in notes:
        asyncio.run(hub.worker.on_suspect(note.value))
    assert SUSPECT.encode() in hub.suspects
    triggers = hub.to(NAMES.hub_serial)
    assert sorted(t.key for t in triggers) == sorted([VICTIM.encode(), OTHER_VICTIM.encode()])
    for trigger in triggers:
        asyncio.run(hub.worker.on_serial(trigger.value))
    alerts = hub.alerts()
    assert sorted(a.header.subject for a in alerts) == sorted([VICTIM, OTHER_VICTIM])
    assert all(reason_codes(a) == ["serial_suspect"] for a in alerts)


def test_a_tick_past_a_deadline_reports_each_breach_once_and_only_on_the_victim_s_partition(
    hub: Harness,
) -> None:
    hub.inbox(lead(hub.domain, 1, T))
    mine = topics.partition_for(VICTIM.encode(), PARTITIONS)
    other = (mine + 1) % PARTITIONS
    late = (T + timedelta(hours=5)).isoformat().encode()  # an urgent lead is acknowledged within 4 hours
    asyncio.run(hub.worker.on_tick(late, other))
    assert hub.to(NAMES.events) == []
    asyncio.run(hub.worker.on_tick(late, mine))
    breaches = [o for o in hub.published() if o.header.type == "supervision.breach"]
    assert breaches
    assert {b.sections["details"]["deadline_kind"] for b in breaches} == {"acknowledge"}
    assert sorted(b.sections["details"]["agency"] for b in breaches) == hub.state().leads[0].acting
    assert len(hub.state().breached) == len(breaches)
    sent = len(hub.sent)
    asyncio.run(hub.worker.on_tick(late, mine))
    assert len(hub.sent) == sent


def test_a_lead_inside_its_deadline_exports_no_response_rate_and_a_rate_of_0_once_it_is_late(
    hub: Harness,
) -> None:
    hub.inbox(lead(hub.domain, 1, T))  # urgent: acknowledged within 4 hours, by nobody here
    mine = topics.partition_for(VICTIM.encode(), PARTITIONS)
    agency = hub.state().leads[0].acting[0]
    labels = {"agency": agency, "partition": str(mine)}

    def sample(name: str, **more: str) -> float | None:
        return hub.registry.get_sample_value(name, {**labels, **more})

    asyncio.run(hub.worker.on_tick((T + timedelta(hours=3)).isoformat().encode(), mine))
    assert sample("lianfang_supervision_rate", rate="response") is None
    assert sample("lianfang_supervision_leads", count="received") == 1
    assert sample("lianfang_supervision_leads", count="response_due") == 0
    asyncio.run(hub.worker.on_tick((T + timedelta(hours=5)).isoformat().encode(), mine))
    assert sample("lianfang_supervision_rate", rate="response") == 0.0
    assert sample("lianfang_supervision_leads", count="response_due") == 1
    assert sample("lianfang_supervision_rate", rate="resolution") is None  # 15 days are not over


def report_period_started(hub: Harness) -> int:
    """A lead about the victim, then its partition's first tick (the partition's report period starts
    at T); returns the partition."""
    hub.inbox(lead(hub.domain, 1, T))
    mine = topics.partition_for(VICTIM.encode(), PARTITIONS)
    asyncio.run(hub.worker.on_tick(T.isoformat().encode(), mine))
    return mine


def reports(hub: Harness) -> list[envelope.Opened]:
    return [o for o in hub.published() if o.header.type == "supervision.report"]


def test_a_partition_s_first_tick_starts_its_report_period_and_a_tick_one_period_later_reports(
    hub: Harness,
) -> None:
    mine = report_period_started(hub)
    assert hub.to(NAMES.events) == []
    asyncio.run(hub.worker.on_tick((T + timedelta(hours=1)).isoformat().encode(), mine))
    [report] = reports(hub)
    assert report.header.subject == REPORT_SUBJECT


def test_a_report_kafka_did_not_acknowledge_is_sent_again_when_its_tick_is_handled_again(
    hub: Harness,
) -> None:
    mine = report_period_started(hub)
    later = (T + timedelta(hours=1)).isoformat().encode()

    async def refuse(topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]] | None) -> Any:
        hub.sent.append(Sent(topic, key, value, headers))
        return not_acknowledged()

    send, hub.worker.send = hub.worker.send, refuse
    with pytest.raises(TransportError, match="broker is gone"):
        asyncio.run(hub.worker.on_tick(later, mine))
    hub.worker.send = send
    asyncio.run(hub.worker.on_tick(later, mine))
    first, again = reports(hub)
    assert first.header.id == again.header.id, "the same report again, the first never acknowledged"


# --------------------------------------------------------------------------- no record stops the hub


def headers_of(sent: Sent) -> dict[str, str]:
    return {k: v.decode() for k, v in sent.headers or []}


def test_a_lead_whose_triage_names_a_suspect_where_a_pseudonym_goes_is_dead_lettered_and_reaches_no_hub_topic(
    hub: Harness,
) -> None:
    hub.inbox(lead(hub.domain, 1, T, suspect_pseudonyms=["钱某 13911112222"]))
    assert [s.topic for s in hub.sent] == [NAMES.deadletter]
    letter = hub.sent[0]
    assert headers_of(letter)["lianfang_reason"] == "malformed"
    assert "钱某" not in headers_of(letter)["lianfang_detail"]
    assert hub.suspects == {}
    assert hub.count("lianfang_hub_events_rejected_total", source="inbox", reason="malformed") == 1


def test_a_lead_whose_triage_category_is_outside_the_schema_is_dead_lettered_and_the_victim_s_alerts_go_on(
    hub: Harness,
) -> None:
    hub.inbox(lead(hub.domain, 1, T, category="家暴 (a name) 张三"))
    assert [headers_of(s)["lianfang_reason"] for s in hub.to(NAMES.deadletter)] == ["malformed"]
    hub.sent.clear()
    hub.inbox(lead(hub.domain, 2, T + timedelta(minutes=1), requests_joint_meeting=True))
    assert len(hub.alerts()) == 1, "the victim's next alert seals"


@pytest.mark.parametrize(
    "triage",
    [
        {"category": "sexual_assault"},
        {"minor": True},
        {"town": "mapo"},
        {"victim_pseudonym": "p1." + "B" * 42 + "A"},
    ],
    ids=["category", "minor", "town", "victim"],
)
def test_a_lead_whose_sealed_triage_contradicts_its_signed_header_is_dead_lettered(
    hub: Harness, triage: dict[str, Any]
) -> None:
    hub.inbox(lead(hub.domain, 1, T, requests_joint_meeting=True, **triage))
    assert [headers_of(s)["lianfang_reason"] for s in hub.sent] == ["malformed"]
    assert hub.alerts() == []


def test_a_refused_inbox_record_is_dead_lettered_with_the_router_s_headers_and_no_content(
    hub: Harness,
) -> None:
    hub.inbox(b"x", b'{"payloadType": "not ours"}')
    letters = hub.to(NAMES.deadletter)
    assert [letter.value for letter in letters] == [b"x", b'{"payloadType": "not ours"}']
    assert [letter.key for letter in letters] == [VICTIM.encode()] * 2
    first = headers_of(letters[0])
    assert set(first) == {
        "lianfang_reason",
        "lianfang_detail",
        "lianfang_source_topic",
        "lianfang_source_partition",
        "lianfang_source_offset",
        "lianfang_deadlettered_at",
    }
    assert first["lianfang_reason"] == "malformed"
    assert first["lianfang_source_topic"] == NAMES.inbox("hub")
    assert (first["lianfang_source_partition"], first["lianfang_source_offset"]) == ("1", "0")
    assert headers_of(letters[1])["lianfang_source_offset"] == "1"
    assert "not ours" not in json.dumps([headers_of(letter) for letter in letters])
    assert hub.count("lianfang_hub_events_rejected_total", source="inbox", reason="malformed") == 2


def test_a_victim_whose_stored_state_is_unreadable_is_dead_lettered_as_internal_and_others_go_on(
    hub: Harness,
) -> None:
    hub.victims[VICTIM.encode()] = b'{"not": "a victim state"}'
    hub.inbox(lead(hub.domain, 1, T, requests_joint_meeting=True))
    [letter] = hub.to(NAMES.deadletter)
    assert headers_of(letter)["lianfang_reason"] == "internal"
    assert hub.count("lianfang_hub_events_rejected_total", source="inbox", reason="internal") == 1
    hub.inbox(lead(hub.domain, 2, T, subject=OTHER_VICTIM, requests_joint_meeting=True))
    assert [a.header.subject for a in hub.alerts()] == [OTHER_VICTIM]


def test_a_bug_in_the_rules_for_one_record_is_dead_lettered_as_internal_and_the_next_is_applied(
    hub: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    observe = rules.observe

    def buggy(state: VictimState | None, obs: Observation, cfg: HubConfig) -> Any:
        if obs.subject == VICTIM:
            raise IndexError("a bug met on this victim's record")
        return observe(state, obs, cfg)

    monkeypatch.setattr(rules, "observe", buggy)
    hub.inbox(
        lead(hub.domain, 1, T, requests_joint_meeting=True),
        lead(hub.domain, 2, T, subject=OTHER_VICTIM, requests_joint_meeting=True),
    )
    [letter] = hub.to(NAMES.deadletter)
    assert headers_of(letter)["lianfang_reason"] == "internal"
    assert "IndexError" in headers_of(letter)["lianfang_detail"]
    assert "a bug met" not in headers_of(letter)["lianfang_detail"]
    assert [a.header.subject for a in hub.alerts()] == [OTHER_VICTIM]
    assert hub.count("lianfang_hub_events_observed_total", type="lead.reported") == 1


def test_an_audit_trail_that_fails_while_opening_a_record_stops_the_worker_to_be_restarted(
    hub: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*_args: Any, **_kwargs: Any) -> None:
        raise TransportError("the audit file cannot be written")

    monkeypatch.setattr(hub.worker.trail, "append", disk_full)
    with pytest.raises(TransportError, match="audit file"):
        hub.inbox(lead(hub.domain, 1, T))
    assert hub.sent == []


def test_a_record_met_while_the_registry_in_force_has_expired_is_kept_for_a_retry_not_dead_lettered(
    hub: Harness,
) -> None:
    value = lead(hub.domain, 1, T)
    in_time = hub.worker.clock
    hub.worker.clock = lambda: hub.domain.registry.document.expires + timedelta(hours=1)
    with pytest.raises(TransportError, match="registry in force has expired"):
        hub.inbox(value)  # the agent handles it again after a pause (until_handled)
    assert hub.sent == [], "nothing dead-lettered, nothing sent"
    hub.worker.clock = in_time  # a newer registry, as far as this record can tell
    hub.inbox(value)
    assert hub.to(NAMES.deadletter) == []
    assert hub.state().leads, "applied once a registry in force is not expired"


def test_a_dead_letter_kafka_does_not_take_stops_the_worker_to_be_restarted(hub: Harness) -> None:
    async def refuse(topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]] | None) -> None:
        raise ConnectionError("the broker is gone")

    hub.worker.send = refuse
    with pytest.raises(TransportError, match="broker is gone"):
        hub.inbox(b"not an envelope")


def note(**fields: Any) -> bytes:
    good = {"suspect": SUSPECT, "victim": VICTIM, "lead_id": eid(1), "time": T.isoformat()}
    return json.dumps({**good, **fields}).encode()


INTERNAL_RECORD_CASES = {
    "bytes that are not JSON on the suspects topic are malformed": ("suspects", b"\xff{", "malformed"),
    "a suspect note that is a list is malformed": ("suspects", b"[1, 2]", "malformed"),
    "a suspect note without its victim is malformed": ("suspects", b'{"suspect": "s"}', "malformed"),
    "a suspect note with a naive time is malformed": (
        "suspects",
        note(time="2026-01-01T00:00:00"),
        "malformed",
    ),
    "a suspect note whose victim is a number is malformed": ("suspects", note(victim=7), "malformed"),
    "bytes that are not JSON on the serial topic are malformed": ("serial", b"garbage", "malformed"),
    "a serial trigger without its victims is malformed": ("serial", b'{"victim": "v"}', "malformed"),
    "a tick that is not a time is malformed": ("clock", b"soon", "malformed"),
    "a tick that is not UTF-8 is malformed": ("clock", b"\xff\xfe", "malformed"),
    "a naive tick is malformed": ("clock", b"2026-01-01T00:00:00", "malformed"),
}


def feed(hub: Harness, source: str, value: bytes) -> None:
    if source == "suspects":
        asyncio.run(hub.worker.on_suspect(value, partition=0, offset=7))
    elif source == "serial":
        asyncio.run(hub.worker.on_serial(value, partition=0, offset=7))
    else:
        asyncio.run(hub.worker.on_tick(value, 0, 7))


@pytest.mark.parametrize(
    ("source", "value", "reason"), list(INTERNAL_RECORD_CASES.values()), ids=list(INTERNAL_RECORD_CASES)
)
def test_a_bad_record_on_the_hub_s_own_topics_is_counted_and_the_worker_goes_on(
    hub: Harness, source: str, value: bytes, reason: str
) -> None:
    feed(hub, source, value)
    assert hub.sent == []
    assert hub.suspects == {}
    assert hub.count("lianfang_hub_events_rejected_total", source=source, reason=reason) == 1
    asyncio.run(hub.worker.on_suspect(note()))  # the next good record is applied
    assert SUSPECT.encode() in hub.suspects


def test_unreadable_stored_state_behind_a_suspect_or_serial_record_is_counted_as_internal(
    hub: Harness,
) -> None:
    hub.suspects[SUSPECT.encode()] = b"[]"
    asyncio.run(hub.worker.on_suspect(note()))
    assert hub.count("lianfang_hub_events_rejected_total", source="suspects", reason="internal") == 1
    hub.victims[VICTIM.encode()] = b"{"
    trigger = serial.SerialTrigger(victim=VICTIM, suspect=SUSPECT, victims=(VICTIM,), time=T, lead_ids=())
    asyncio.run(hub.worker.on_serial(trigger.to_json()))
    assert hub.count("lianfang_hub_events_rejected_total", source="serial", reason="internal") == 1
    assert hub.sent == []


def test_a_tick_checks_every_other_victim_when_one_victim_s_state_is_unreadable(hub: Harness) -> None:
    hub.inbox(lead(hub.domain, 1, T))
    mine = topics.partition_for(VICTIM.encode(), PARTITIONS)
    broken = next(
        key
        for i in range(100)
        if topics.partition_for(key := pseudonym(f"broken {i}").encode(), PARTITIONS) == mine
    )
    hub.victims = {broken: b"not json", **hub.victims}  # the broken one is met first
    hub.worker.victims = hub.victims
    asyncio.run(hub.worker.on_tick((T + timedelta(hours=5)).isoformat().encode(), mine))
    types = {o.header.type for o in hub.published()}
    assert types == {"supervision.breach"}
    assert hub.count("lianfang_hub_events_rejected_total", source="clock", reason="internal") == 1


def test_a_lead_signed_with_a_key_only_a_newer_registry_lists_is_opened_once_that_registry_is_in_force(
    hub: Harness, domain: DemoDomain
) -> None:
    health = domain.trust.keystore("health")  # a copy: the session's domain keeps its keys
    kids = {health.add_signing_key(), health.add_encryption_key()}
    keys = [k for k in trust.public_keys(health, valid_from=kit.NOW) if k.kid in kids]
    document = domain.registry.document
    rotated = admin.rotate(document, "health", keys, now=kit.NOW, lifetime=admin.lifetime_of(document))
    roots: dict[str, Any] = {}
    for store in domain.trust.root_keystores()[:2]:
        roots.update(store.signing)
    data = sign_document(rotated.document, roots)
    newer = Registry.from_bytes(data, trusted_roots=domain.trust.trusted_roots(), now=T)
    lead = kit.header(id=eid(900), source="urn:lianfang:health", time=T, subject=VICTIM)
    triage = {
        "category": "domestic_violence",
        "channel": "hospital",
        "minor": False,
        "town": "renhe",
        "victim_pseudonym": VICTIM,
        "requests_joint_meeting": False,
    }
    content = {"triage": triage, "details": {"n": "测试。"}}
    value = envelope.seal(lead, content, registry=newer, signer=health).value

    hub.inbox(value)  # no newer registry to be had: refused
    assert hub.count("lianfang_hub_events_rejected_total", source="inbox", reason="unknown_key") == 1

    held = RegistryInForce(domain.registry, trusted_roots=domain.trust.trusted_roots(), clock=lambda: T)
    hub.worker.in_force = held
    hub.worker.newer_registry = lambda _error: held.offer(data).taken  # the topic had it meanwhile
    hub.inbox(value)
    assert hub.count("lianfang_hub_events_rejected_total", source="inbox", reason="unknown_key") == 1
    assert hub.count("lianfang_hub_events_observed_total", type="lead.reported") == 1
    assert hub.worker.registry.version == newer.version


def test_a_tick_holds_one_victim_s_state_at_a_time_so_its_memory_peak_does_not_grow_with_the_victims(
    hub: Harness,
) -> None:
    hub.inbox(lead(hub.domain, 1, T))
    state = hub.victims[VICTIM.encode()]
    mine = topics.partition_for(VICTIM.encode(), PARTITIONS)
    tick = (T + timedelta(hours=3)).isoformat().encode()  # inside every deadline: nothing to send

    def peak_of_a_tick(victims: int) -> int:
        for i in range(len(hub.victims), victims):
            hub.victims[f"victim {i}".encode()] = state
        tracemalloc.start()
        try:
            asyncio.run(hub.worker.on_tick(tick, mine))
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    few, many = peak_of_a_tick(1_000), peak_of_a_tick(5_000)
    counted = hub.count(
        "lianfang_supervision_leads",
        agency=hub.state().leads[0].acting[0],
        partition=str(mine),
        count="received",
    )
    assert counted == sum(1 for key in hub.victims if topics.partition_for(key, PARTITIONS) == mine)
    # Listing the partition's keys still grows with them (about 100 bytes a victim of the partition);
    # holding every state grew 1.4 KB a victim, four times the peak of 1,000 at 5,000.
    assert many < 1.5 * few, f"a tick's peak went from {few} bytes at 1,000 victims to {many} at 5,000"
