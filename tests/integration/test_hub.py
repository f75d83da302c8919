"""The hub on the real broker, behind the router: events are signed now (the router refuses a signed
time far from the broker's), the incident times the hub's windows run on are chosen by the test as each
lead's ``occurred_at`` (the domain was issued 400 days ago), and supervision ticks carry the time the
test needs."""

from __future__ import annotations

import json
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import MessageSizeTooLargeError

from schemas.events import RiskAnswers, RiskAssessed
from services.bus.cluster import DURABLE_PRODUCER
from services.cli import main as cli_main
from services.hub.rocksdb_memory import PROPERTIES
from services.kernel import ids
from services.sdk.client import CaseContext, Client
from tests.faults.soak import hub_drained
from tests.integration.buskit import Bus, HubProcess, RegistryChange, RouterProcess
from tests.kit import DemoDomain

pytestmark = pytest.mark.integration

ISSUED = datetime.now(UTC) - timedelta(days=400)
NOW = datetime.now(UTC)
QUESTIONS = list(RiskAnswers.model_fields)


class Alerts:
    """Everything the coordinators receive, collected as it arrives (each test looks for its own)."""

    def __init__(self, bus: Bus, tmp: Path, *, clock: Callable[[], datetime] = lambda: NOW) -> None:
        self.client = Client(
            keystore=bus.domain.keys("coordinators"),
            registry=bus.domain.registry,
            bootstrap=bus.bootstrap,
            outbox_path=tmp / "coordinators.sqlite",
            topic_prefix=bus.prefix,
            clock=clock,
        )
        self.by_subject: dict[str, list[dict[str, Any]]] = {}
        self.types: dict[str, list[str]] = {}

    def _drain(self) -> None:
        for opened in self.client.inbox(timeout=0.5):
            self.types.setdefault(opened.header.subject, []).append(opened.header.type)
            if opened.header.type == "joint_meeting.alert":
                payload = {**opened.sections["details"], "_event_id": opened.header.id}
                self.by_subject.setdefault(opened.header.subject, []).append(payload)

    def wait_for(
        self, subject: str, done: Callable[[list[dict[str, Any]]], bool], timeout: float = 90
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._drain()
            if done(self.by_subject.get(subject, [])):
                return self.by_subject[subject]
        raise AssertionError(
            f"alerts for {subject[:12]}… never met the condition: {self.by_subject.get(subject)}"
        )

    def breaches_for(self, subject: str) -> list[str]:
        self._drain()
        return [t for t in self.types.get(subject, []) if t == "supervision.breach"]


@pytest.fixture(scope="module")
def hub_bus(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Bus:
    home = Path(tmp_path_factory.mktemp("hub-domain")) / ".lianfang"
    domain = DemoDomain.create(home, now=ISSUED, lifetime=timedelta(days=800))
    return Bus.create(kafka_bootstrap, f"t-hub-{datetime.now(UTC):%H%M%S%f}.", domain)


@pytest.fixture(scope="module")
def pipeline(
    hub_bus: Bus, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RouterProcess, HubProcess]]:
    tmp = Path(tmp_path_factory.mktemp("hub"))
    router = RouterProcess(
        hub_bus,
        hub_bus.domain.home,
        tmp / "router.log",
        group=f"{hub_bus.prefix}router",
    )
    hub = HubProcess(hub_bus, tmp / "hub.log", tmp / "hub-data")
    try:
        hub_bus.wait_for(
            lambda: router.metric("lianfang_registry_version", service="router"), 60, "router start"
        )
        hub_bus.wait_for(
            lambda: hub.metric("lianfang_hub_events_observed_total") is not None, 90, "hub start"
        )
        yield router, hub
    finally:
        hub.stop()
        router.stop()


@pytest.fixture(scope="module")
def alerts(hub_bus: Bus, pipeline: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Alerts]:
    collector = Alerts(hub_bus, Path(tmp_path_factory.mktemp("coordinators")))
    yield collector
    collector.client.close()


class Agency:
    """An agency's SDK client: it signs now and dates each lead's incident (``occurred_at``)."""

    def __init__(self, bus: Bus, participant: str, tmp: Path) -> None:
        self.client = Client(
            keystore=bus.domain.keys(participant),
            registry=bus.domain.registry,
            bootstrap=bus.bootstrap,
            outbox_path=tmp / f"{participant}.sqlite",
            topic_prefix=bus.prefix,
        )

    def lead(self, phone: str, at: datetime, **overrides: Any) -> str:
        data: dict[str, Any] = {
            "category": "domestic_violence",
            "channel": "police_call",
            "town": "houshayu",
            "occurred_at": at.isoformat(),
            "victim": {"name": "周某某", "phone": phone, "is_minor": False},
            "minor": False,
            "risk_indicators": [],
            "narrative": "家庭纠纷。",
            "requests_joint_meeting": False,
        }
        data.update(overrides)
        event_id = self.client.publish_lead(data)
        assert self.client.flush(30)
        return event_id

    def risk(self, subject: str, lead_id: str, score: int) -> str:
        """A risk assessment, now (it carries no incident time)."""
        answers = {q: i < score for i, q in enumerate(QUESTIONS)}
        event = RiskAssessed.model_validate(
            {
                "lead_id": lead_id,
                "victim_pseudonym": subject,
                "answers": RiskAnswers.model_validate(answers),
                "score": score,
                "assessed_by": self.client.participant,
            }
        )
        context = CaseContext(subject, "domestic_violence", False, "houshayu", False, lead_id)
        event_id = self.client.publish(event, context=context, urgency="urgent")
        assert self.client.flush(30)
        return event_id


@pytest.fixture
def agencies(hub_bus: Bus, tmp_path: Path) -> Iterator[dict[str, Agency]]:
    made = {p: Agency(hub_bus, p, tmp_path) for p in ("police", "womens_federation", "health")}
    yield made
    for agency in made.values():
        agency.client.close()


def subject_of(bus: Bus, phone: str) -> str:
    return bus.domain.subject(phone)


def reasons(payloads: list[dict[str, Any]]) -> set[str]:
    return {r["code"] for r in payloads[-1]["reasons"]} if payloads else set()


def test_a_risk_score_of_13_raises_nothing_and_14_raises_a_high_risk_alert(
    hub_bus: Bus, alerts: Alerts, agencies: dict[str, Agency]
) -> None:
    police = agencies["police"]
    low, high = "13700000013", "13700000014"
    low_lead = police.lead(low, NOW - timedelta(hours=2))
    police.risk(subject_of(hub_bus, low), low_lead, 13)
    # A sentinel trigger on the same victim: the hub handles one victim's events in order, so when
    # the sentinel's alert arrives, a high-risk alert for the score of 13 would already have come.
    police.lead(low, NOW - timedelta(minutes=30), requests_joint_meeting=True)
    got = alerts.wait_for(subject_of(hub_bus, low), lambda a: bool(a))
    assert reasons(got) == {"professional_judgement"}

    high_lead = police.lead(high, NOW - timedelta(hours=2))
    police.risk(subject_of(hub_bus, high), high_lead, 14)
    got = alerts.wait_for(subject_of(hub_bus, high), lambda a: bool(a))
    assert reasons(got) == {"high_risk"}


def test_a_third_lead_on_day_364_raises_an_escalation_alert_and_on_day_366_nothing(
    hub_bus: Bus, alerts: Alerts, agencies: dict[str, Agency]
) -> None:
    police = agencies["police"]
    start = NOW - timedelta(days=370)
    for phone, last_day in (("13700000364", 364), ("13700000366", 366)):
        first = police.lead(phone, start)
        police.lead(phone, start + timedelta(days=100))
        police.lead(phone, start + timedelta(days=last_day))
        # The sentinel is a risk assessment, not a fourth lead: it cannot add to the escalation count.
        police.risk(subject_of(hub_bus, phone), first, 20)
    on_364 = alerts.wait_for(subject_of(hub_bus, "13700000364"), lambda a: "high_risk" in reasons(a))
    assert reasons(on_364) == {"escalation", "high_risk"}
    on_366 = alerts.wait_for(subject_of(hub_bus, "13700000366"), bool)
    assert reasons(on_366) == {"high_risk"}


def test_a_victim_who_triggers_three_rules_gets_one_alert_with_three_reasons(
    hub_bus: Bus, alerts: Alerts, agencies: dict[str, Agency]
) -> None:
    phone = "13700000003"
    subject = subject_of(hub_bus, phone)
    lead_id = agencies["police"].lead(phone, NOW - timedelta(hours=5), requests_joint_meeting=True)
    agencies["womens_federation"].lead(
        phone, NOW - timedelta(hours=4), channel="hotline_12338"
    )  # convergence
    agencies["police"].risk(subject, lead_id, 16)  # high risk
    got = alerts.wait_for(
        subject, lambda a: reasons(a) >= {"professional_judgement", "convergence", "high_risk"}
    )
    assert len({a["alert_id"] for a in got}) == 1, "one open alert per victim; later triggers update it"


def test_a_missed_acknowledgement_deadline_breaches_and_escalates_to_the_coordinators(
    hub_bus: Bus, alerts: Alerts, agencies: dict[str, Agency]
) -> None:
    phone = "13700000404"
    agencies["police"].lead(phone, NOW - timedelta(minutes=10))  # urgent DV lead: acknowledge within 4 h
    subject = subject_of(hub_bus, phone)
    tick(hub_bus, NOW + timedelta(hours=5))
    hub_bus.wait_for(
        lambda: alerts.breaches_for(subject), 90, "the acknowledgement breach at the coordinators"
    )


def inbox_lags(bus: Bus, hub: HubProcess) -> dict[int, float]:
    """The hub's group's lag on each inbox partition, as its /metrics says (sampled every second)."""
    series = f'lianfang_consumer_lag{{group="{bus.prefix}hub",'
    text = urllib.request.urlopen(f"http://127.0.0.1:{hub.port}/metrics", timeout=5).read().decode()
    return {
        int(line.partition('partition="')[2].partition('"')[0]): float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith(series)
    }


def inbox_tails(bus: Bus) -> dict[int, int]:
    """Per partition of the hub's inbox, the offsets after its last committed record: commit markers
    that no consumer commits past before a record follows (:func:`tests.faults.soak.hub_drained`)."""
    topic = bus.names.inbox(ids.HUB)
    consumer = KafkaConsumer(bootstrap_servers=bus.bootstrap, isolation_level="read_committed")
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        ends = consumer.end_offsets(tps)
    finally:
        consumer.close()
    last: dict[int, int] = {}
    for record in bus.read_all([topic])[topic]:
        last[record.partition] = max(last.get(record.partition, -1), record.offset)
    return {tp.partition: ends[tp] - (last.get(tp.partition, -1) + 1) for tp in tps}


def test_the_hub_reports_its_consumer_lag_per_inbox_partition_and_it_drains(
    hub_bus: Bus, alerts: Alerts, pipeline: tuple[RouterProcess, HubProcess]
) -> None:
    _router, hub = pipeline
    # The router writes the inbox in transactions, one producer per events partition: a partition may
    # end in several commit markers (transactions that interleave), which no consumer commits past, so
    # drained is a lag of at most those (a run timed out on "lag <= 1", the check the soak dropped).
    seen: dict[str, dict[int, Any]] = {}

    def drained() -> bool:
        seen["lag"], seen["tail"] = inbox_lags(hub_bus, hub), inbox_tails(hub_bus)
        return len(seen["lag"]) == 3 and hub_drained(seen["lag"], seen["tail"])

    try:
        hub_bus.wait_for(drained, 60, "3 drained lag series")
    except AssertionError as e:
        raise AssertionError(f"{e}: last lag {seen.get('lag')}, tail {seen.get('tail')}") from e


def test_a_burst_of_300_inbox_transactions_is_committed_to_its_end_in_seconds_not_one_transaction_a_second(
    hub_bus: Bus, pipeline: tuple[RouterProcess, HubProcess]
) -> None:
    """faust 0.15 alone commits such a burst one transaction per commit round (one a second here:
    minutes); ``services.hub.consumer`` says why. The records are not events: each is refused
    (dead-lettered) and acknowledged, which is all the commit needs."""
    _router, hub = pipeline
    burst = 300
    producer = KafkaProducer(
        bootstrap_servers=hub_bus.bootstrap, transactional_id=f"{hub_bus.prefix}burst", acks="all"
    )
    try:
        producer.init_transactions()
        for n in range(burst):
            producer.begin_transaction()
            producer.send(hub_bus.names.inbox(ids.HUB), b"not an event %d" % n, partition=0)
            producer.commit_transaction()
    finally:
        producer.close()
    refused = lambda: hub.metric(  # noqa: E731
        "lianfang_hub_events_rejected_total", source="inbox", reason="malformed"
    )
    hub_bus.wait_for(lambda: (refused() or 0) >= burst, 60, f"the hub refusing the {burst} records")
    hub_bus.wait_for(
        lambda: inbox_lags(hub_bus, hub).get(0, burst) <= 1, 20, "the burst committed to its end"
    )


def test_a_record_of_an_inbox_transaction_the_router_aborted_never_reaches_the_hub(
    hub_bus: Bus, pipeline: tuple[RouterProcess, HubProcess]
) -> None:
    """An aborted record, then a committed one, on one inbox partition: the hub refuses (dead-letters)
    the committed one and never reads the other. Read uncommitted, as faust reads without exactly-once,
    it refused both."""
    _router, hub = pipeline

    def refused() -> float:
        return hub.metric("lianfang_hub_events_rejected_total", source="inbox", reason="malformed") or 0

    before = refused()
    producer = KafkaProducer(
        bootstrap_servers=hub_bus.bootstrap, transactional_id=f"{hub_bus.prefix}aborted", acks="all"
    )
    try:
        producer.init_transactions()
        producer.begin_transaction()
        producer.send(hub_bus.names.inbox(ids.HUB), b"not an event, aborted", partition=1)
        producer.flush()
        producer.abort_transaction()
        producer.begin_transaction()
        producer.send(hub_bus.names.inbox(ids.HUB), b"not an event, committed", partition=1)
        producer.commit_transaction()
    finally:
        producer.close()
    hub_bus.wait_for(lambda: refused() >= before + 1, 60, "the hub refusing the committed record")
    hub_bus.wait_for(
        lambda: inbox_lags(hub_bus, hub).get(1, 99) <= 1, 30, "the partition committed past both"
    )
    assert refused() == before + 1


def test_the_hub_reports_the_memory_of_its_nine_rocksdb_stores_within_their_bound(
    hub_bus: Bus, agencies: dict[str, Agency], pipeline: tuple[RouterProcess, HubProcess]
) -> None:
    _router, hub = pipeline
    observed = hub.metric("lianfang_hub_events_observed_total", type="lead.reported") or 0
    for hours in (3, 2, 1):  # one victim: three writes of her state (each over 700 bytes) in one store
        agencies["police"].lead("13700000900", NOW - timedelta(hours=hours))
    hub_bus.wait_for(
        lambda: (hub.metric("lianfang_hub_events_observed_total", type="lead.reported") or 0) >= observed + 3,
        60,
        "the hub to apply 3 leads",
    )

    last: dict[str, float | None] = {}

    def sampled() -> dict[str, float | None] | None:
        last.update(
            {kind: hub.metric("lianfang_hub_rocksdb_memory_bytes", kind=kind) for kind in PROPERTIES},
            stores=hub.metric("lianfang_hub_rocksdb_stores_open"),
        )
        # One worker holds every partition of the 3 tables: 9 stores. A memtable takes 2 KiB (its arena's
        # first block) until what was written to it passes that, as the victim's three states do; no
        # memtable is flushed here (1 MiB), so none falls back.
        return dict(last) if last["stores"] == 9 and (last["memtables"] or 0) > 9 * 2048 else None

    try:
        memory = hub_bus.wait_for(sampled, 30, "9 RocksDB stores with written memtables on /metrics")
    except AssertionError as e:
        raise AssertionError(f"{e}; last read: {last}") from None
    bound = hub.metric("lianfang_hub_rocksdb_memory_bound_bytes")
    # rocksdb_memory_bound of the default settings: 9 stores, two 1 MiB memtables and two 256 KiB caches each
    assert bound == 3 * 3 * (2 * 1024 + 2 * 256) * 1024
    assert 0 < (memory["memtables"] or 0) + (memory["block_cache"] or 0) <= bound


@contextmanager
def events_topic_refusing_every_record(bus: Bus) -> Iterator[None]:
    """A real fault under the hub's sends: the events topic takes no record (``max.message.bytes`` of
    1, so the broker answers MESSAGE_TOO_LARGE to every produce, at once), then its own settings
    again. The legacy AlterConfigs call replaces a topic's whole set, so the set is read first."""
    admin = KafkaAdminClient(bootstrap_servers=bus.bootstrap)
    try:
        described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, bus.names.events)])
        settings = {
            key: str(data["value"] if isinstance(data, dict) else data)
            for by_name in described.values()
            for key, data in by_name[bus.names.events].items()
        }
        assert settings.get("max.message.bytes") == "1048576", settings
        refusing = ConfigResource(
            ConfigResourceType.TOPIC, bus.names.events, {**settings, "max.message.bytes": "1"}
        )
        admin.alter_configs([refusing])
        try:
            bus.wait_for(lambda: _refuses_records(bus, bus.names.events), 30, "the events topic refusing")
            yield
        finally:
            admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, bus.names.events, settings)])
    finally:
        admin.close()


def _refuses_records(bus: Bus, topic: str) -> bool:
    """Whether the broker refuses a record on ``topic`` now (one that it took would be dead-lettered by
    the router as malformed)."""
    producer = KafkaProducer(bootstrap_servers=bus.bootstrap, **DURABLE_PRODUCER)
    try:
        producer.send(topic, key=b"probe", value=b"probe").get(timeout=10)
    except MessageSizeTooLargeError:
        return True
    finally:
        producer.close()
    return False


JOINT_MEETING = {
    "triage": {"category": "domestic_violence", "requests_joint_meeting": True, "minor": False},
    "details": {"victim": {"name": "郑某某", "phone": "-"}, "narrative": "请求召开联席会议。"},
}
"""A lead's sections that raise a joint-meeting alert on their own (professional judgement)."""


def test_a_batch_whose_alerts_kafka_refuses_is_handled_again_until_kafka_takes_them_and_each_alert_arrives_once(
    hub_bus: Bus, alerts: Alerts, pipeline: tuple[RouterProcess, HubProcess]
) -> None:
    _router, hub = pipeline
    phones = [f"137000008{i:02d}" for i in range(4)]
    subjects = {subject_of(hub_bus, phone) for phone in phones}
    failed_before = hub.metric("lianfang_hub_agent_restarts_total", agent="inbox") or 0.0
    with events_topic_refusing_every_record(hub_bus):
        # Leads as the router delivers them, straight into the hub's inbox: no lead could be published
        # on the events topic while it refuses every record.
        leads = [hub_bus.seal(phone=phone, content=JOINT_MEETING) for phone in phones]
        hub_bus.publish(leads, topic=hub_bus.names.inbox(ids.HUB))
        hub_bus.wait_for(
            lambda: (
                (hub.metric("lianfang_hub_agent_restarts_total", agent="inbox") or 0) >= failed_before + 3
            ),
            40,
            "the inbox batch failing three times",
        )
    for subject in subjects:
        alerts.wait_for(subject, bool, timeout=40)
    # Every agent done with what it took (its progress time is now): no batch is being handled again.
    hub_bus.wait_for(
        lambda: (hub.metric("lianfang_hub_worker_progress_timestamp_seconds") or 0) > time.time() - 2,
        20,
        "the hub idle",
    )
    delivered = hub_bus.inbox_ids()["coordinators"]
    mine = {s: a for s, a in alerts.by_subject.items() if s in subjects}
    assert {s: len(a) for s, a in mine.items()} == dict.fromkeys(subjects, 1), "one alert a victim"
    assert all(delivered[a[0]["_event_id"]] == 1 for a in mine.values()), "each delivered once"
    sent = Counter(
        dict(r.headers).get("ce_id", b"?").decode()
        for r in hub_bus.read_all([hub_bus.names.events])[hub_bus.names.events]
        if dict(r.headers).get("ce_subject", b"").decode() in subjects
    )
    assert sorted(sent.values()) == [1] * len(subjects), f"the hub sent each alert once: {sent}"
    assert hub.alive(), "the hub recovered in its process"


def tick(bus: Bus, at: datetime) -> None:
    producer = KafkaProducer(bootstrap_servers=bus.bootstrap, **DURABLE_PRODUCER)
    for partition in range(3):
        producer.send(bus.names.hub_clock, key=b"tick", value=at.isoformat().encode(), partition=partition)
    producer.flush()
    producer.close()


def test_a_suspect_who_appears_against_two_victims_raises_a_serial_alert_for_both(
    hub_bus: Bus, alerts: Alerts, agencies: dict[str, Agency]
) -> None:
    suspect = {"name": "吴某", "phone": "13966660000", "is_minor": False, "relationship": "partner"}
    agencies["police"].lead("13700000501", NOW - timedelta(days=20), suspects=[suspect])
    agencies["womens_federation"].lead(
        "13700000502", NOW - timedelta(days=2), suspects=[suspect], channel="hotline_12338"
    )
    for phone in ("13700000501", "13700000502"):
        got = alerts.wait_for(subject_of(hub_bus, phone), lambda a: "serial_suspect" in reasons(a))
        assert "serial_suspect" in reasons(got)


def test_a_key_rotated_while_the_hub_runs_the_hub_opens_the_next_lead_signed_with_the_new_key_without_a_restart(
    hub_bus: Bus, pipeline: tuple[RouterProcess, HubProcess], tmp_path: Path
) -> None:
    router, hub = pipeline
    started = hub.metric("lianfang_registry_version", service="hub")
    rotated, health = RegistryChange.rotation(hub_bus.domain, "health")
    hub_bus.produce([(b"registry", rotated.data)], topic=hub_bus.names.registry)
    version = rotated.registry.version
    hub_bus.wait_for(
        lambda: router.metric("lianfang_registry_version", service="router") == version, 30, "the router's v2"
    )
    observed = hub.metric("lianfang_hub_events_observed_total", type="lead.reported") or 0
    refused = hub.metric("lianfang_hub_events_rejected_total", source="inbox", reason="unknown_key") or 0
    with Client(
        keystore=health,
        registry=rotated.registry,
        bootstrap=hub_bus.bootstrap,
        outbox_path=tmp_path / "health-rotated.sqlite",
        topic_prefix=hub_bus.prefix,
    ) as client:
        client.publish_lead(
            {
                "category": "domestic_violence",
                "channel": "hospital",
                "town": "houshayu",
                "victim": {"name": "郑某某", "phone": "13700000601", "is_minor": False},
                "minor": False,
                "risk_indicators": [],
                "narrative": "急诊发现多处外伤。",
                "requests_joint_meeting": False,
            }
        )
        assert client.flush(30)
    hub_bus.wait_for(
        lambda: (hub.metric("lianfang_hub_events_observed_total", type="lead.reported") or 0) > observed,
        60,
        f"the hub to open the lead signed with the new key:\n{hub.tail()}",
    )
    assert (
        hub.metric("lianfang_hub_events_rejected_total", source="inbox", reason="unknown_key") or 0
    ) == refused
    assert started == version - 1
    assert hub.metric("lianfang_registry_version", service="hub") == version
    assert hub.alive(), "no restart"


def test_an_import_of_leads_that_happened_three_years_ago_routes_and_raises_an_escalation_alert(
    hub_bus: Bus, alerts: Alerts, agencies: dict[str, Agency]
) -> None:
    phone = "13700000701"
    long_ago = NOW - timedelta(days=3 * 365)
    for days in (0, 40, 80):  # three leads within twelve months, three years back, all signed now
        agencies["police"].lead(phone, long_ago + timedelta(days=days))
    got = alerts.wait_for(subject_of(hub_bus, phone), lambda a: "escalation" in reasons(a))
    assert reasons(got) == {"escalation"}
    assert datetime.fromisoformat(got[-1]["raised_at"]) == long_ago + timedelta(days=80)


def test_the_hub_s_own_alert_coming_back_through_its_inbox_does_not_move_the_victim_s_window(
    hub_bus: Bus, alerts: Alerts, agencies: dict[str, Agency]
) -> None:
    phone = "13700000702"
    subject = subject_of(hub_bus, phone)
    long_ago = NOW - timedelta(days=3 * 365)
    agencies["police"].lead(phone, long_ago, requests_joint_meeting=True)
    agencies["police"].lead(phone, long_ago + timedelta(days=10))
    # The alert is stamped now. Once the coordinators have it, the router has also committed its copy
    # to the hub's inbox, on the partition of this victim, ahead of the next lead.
    alerts.wait_for(subject, lambda a: reasons(a) == {"professional_judgement"})
    agencies["police"].lead(phone, long_ago + timedelta(days=20))
    got = alerts.wait_for(subject, lambda a: "escalation" in reasons(a))
    assert reasons(got) == {"professional_judgement", "escalation"}


def test_lianfang_publish_occurred_at_dates_the_incident_the_hub_s_windows_see(
    hub_bus: Bus, alerts: Alerts, tmp_path: Path
) -> None:
    phone = "13700000703"
    occurred = (NOW - timedelta(days=2 * 365)).replace(microsecond=0)
    lead = {
        "type": "lead.reported",
        "event": {
            "category": "domestic_violence",
            "channel": "police_call",
            "town": "houshayu",
            "victim": {"name": "冯某某", "phone": phone, "is_minor": False},
            "minor": False,
            "risk_indicators": [],
            "narrative": "旧案补录。",
            "requests_joint_meeting": True,
        },
    }
    path = tmp_path / "lead.json"
    path.write_text(json.dumps(lead, ensure_ascii=False), encoding="utf-8")
    argv = ["publish", "--as", "police", str(path), "--occurred-at", occurred.isoformat()]
    argv += ["--home", str(hub_bus.domain.home), "--bootstrap", hub_bus.bootstrap]
    assert cli_main([*argv, "--topic-prefix", hub_bus.prefix]) == 0
    got = alerts.wait_for(subject_of(hub_bus, phone), bool)
    assert reasons(got) == {"professional_judgement"}
    assert datetime.fromisoformat(got[-1]["raised_at"]) == occurred


def test_sigkill_of_the_hub_loses_no_state_and_raises_no_duplicate_alert(
    hub_bus: Bus,
    alerts: Alerts,
    agencies: dict[str, Agency],
    pipeline: tuple[RouterProcess, HubProcess],
    tmp_path: Path,
) -> None:
    """Runs last in this module: it replaces the module's hub with a restarted one."""
    phone = "13700000911"
    subject = subject_of(hub_bus, phone)
    lead_id = agencies["police"].lead(phone, NOW - timedelta(hours=6), requests_joint_meeting=True)
    alerts.wait_for(subject, bool)
    agencies["womens_federation"].lead(phone, NOW - timedelta(hours=5), channel="hotline_12338")
    _router, hub = pipeline
    hub.kill()

    restarted = HubProcess(hub_bus, tmp_path / "hub-restarted.log", Path(hub.data_dir))
    try:
        agencies["police"].risk(subject, lead_id, 18)
        got = alerts.wait_for(
            subject,
            lambda a: reasons(a) == {"professional_judgement", "convergence", "high_risk"},
            timeout=120,
        )
    finally:
        restarted.stop()
    assert len({a["alert_id"] for a in got}) == 1, "the restarted hub updated the same alert"
    ids = [a["_event_id"] for a in got]
    assert len(ids) == len(set(ids)), "an alert event reached the coordinators twice"
    contents = [(tuple(sorted(r["code"] for r in a["reasons"])), a["updated_at"]) for a in got]
    assert len(contents) == len(set(contents)), f"the same alert update was raised twice: {contents}"
