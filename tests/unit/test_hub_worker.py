"""The hub's per-record work without faust or Kafka: tables are dicts, sending appends to a list, and the
clock is fixed. Events are really sealed and verified in the demo domain; what the hub sends is opened
as the coordinators would open it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from services.audit.trail import participant_trail
from services.hub.config import HubConfig
from services.hub.ids import alert_id_for
from services.hub.metrics import HubMetrics
from services.hub.state import VictimState
from services.hub.worker import REPORT_SUBJECT, RecordWorker
from services.kernel import envelope, topics
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
            asyncio.run(self.worker.on_inbox(value, offset))

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


@pytest.fixture
def hub(domain: DemoDomain, tmp_path: Path) -> Iterator[Harness]:
    keys = domain.keys("hub")
    trail = participant_trail(tmp_path / "audit", keys, domain.registry, "hub", ship=None, clock=lambda: T)
    victims: dict[bytes, bytes] = {}
    suspects: dict[bytes, bytes] = {}
    sent: list[Sent] = []

    async def send(topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]] | None) -> None:
        sent.append(Sent(topic, key, value, headers))

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
    """An event really sealed by ``sender`` under the demo policy, with ``triage`` as its triage section."""
    header = kit.header(
        id=eid(n),
        type=event_type,
        schema=f"{event_type}/1",
        source=f"urn:lianfang:{sender}",
        time=at,
        subject=subject,
        refs=list(refs),
    )
    content = {"triage": triage, "details": {"narrative": "测试。"}}
    return envelope.seal(header, content, registry=domain.registry, signer=domain.keys(sender)).value


def lead(domain: DemoDomain, n: int, at: datetime, *, subject: str = VICTIM, **triage: Any) -> bytes:
    fields = {"category": "domestic_violence", "minor": False, "town": "renhe", "victim_pseudonym": subject}
    return sealed(domain, n, "lead.reported", at, {**fields, **triage}, subject=subject)


def risk(domain: DemoDomain, n: int, at: datetime, score: int, lead_id: str) -> bytes:
    triage = {"lead_id": lead_id, "victim_pseudonym": VICTIM, "score": score}
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


def test_a_record_that_fails_verification_is_counted_and_changes_nothing(hub: Harness) -> None:
    hub.inbox(b"not an envelope")
    assert hub.sent == []
    assert hub.victims == {}
    assert hub.count("lianfang_hub_events_rejected_total", reason="malformed") == 1


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


def test_a_partition_s_first_tick_starts_its_report_period_and_a_tick_one_period_later_reports(
    hub: Harness,
) -> None:
    hub.inbox(lead(hub.domain, 1, T))
    mine = topics.partition_for(VICTIM.encode(), PARTITIONS)
    asyncio.run(hub.worker.on_tick(T.isoformat().encode(), mine))
    assert hub.to(NAMES.events) == []
    asyncio.run(hub.worker.on_tick((T + timedelta(hours=1)).isoformat().encode(), mine))
    reports = [o for o in hub.published() if o.header.type == "supervision.report"]
    assert len(reports) == 1
    assert reports[0].header.subject == REPORT_SUBJECT
