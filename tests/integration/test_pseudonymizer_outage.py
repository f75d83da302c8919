"""Leads through an outage of the pseudonymizer, on the real broker with the real pseudonymizer, router and
gateway processes: while the service is stopped, the SDK and the gateway accept leads (ids, 202) and
nothing reaches Kafka, and the outbox file holds no identifier in clear; once it is started, every lead
reaches its recipients exactly once, under the pseudonym the service gives, in the order accepted."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from services.kernel import envelope, ids, policy
from services.kernel.pseudonym import normalize_subject
from services.sdk.client import Client
from services.sdk.metrics import SdkMetrics
from tests.integration.buskit import Bus, PseudonymizerProcess, RouterProcess
from tests.integration.test_gateway import GatewayProcess
from tests.kit import DemoDomain, until
from tests.workers import Worker, free_port

pytestmark = pytest.mark.integration

PORT = free_port()
NAME, ID_NUMBER = "欧阳某某", "11010519491231002X"
FIRST, SECOND = "13712340001", "13712340002"


@pytest.fixture(scope="module")
def bus(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Bus:
    home = Path(tmp_path_factory.mktemp("outage")) / ".lianfang"
    domain = DemoDomain.create(home, now=datetime.now(UTC), pseudonymizer_url=f"http://127.0.0.1:{PORT}")
    return Bus.create(kafka_bootstrap, f"t-outage-{datetime.now(UTC):%H%M%S%f}.", domain)


@pytest.fixture(scope="module")
def router(bus: Bus, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    worker = RouterProcess.started(bus, Path(tmp_path_factory.mktemp("router")) / "router.log")
    yield worker
    worker.stop()


def start_pseudonymizer(bus: Bus, folder: Path) -> Worker:
    return PseudonymizerProcess.started(bus, folder, PORT)


def a_lead(phone: str, narrative: str) -> dict[str, Any]:
    return {
        "category": "domestic_violence",
        "channel": "police_call",
        "town": "renhe",
        "victim": {"name": NAME, "phone": phone, "is_minor": False, "sex": "female"},
        "suspects": [{"name": "某某", "id_number": ID_NUMBER, "is_minor": False, "relationship": "spouse"}],
        "minor": False,
        "risk_indicators": ["threats_to_kill"],
        "narrative": narrative,
        "requests_joint_meeting": False,
    }


def subject_of(bus: Bus, phone: str) -> str:
    return bus.domain.pseudonymizer_key().pseudonyms([normalize_subject(phone=phone)])[0]


def hub_inbox(bus: Bus) -> list[Any]:
    return bus.read_all([bus.names.inbox(ids.HUB)])[bus.names.inbox(ids.HUB)]


def on_the_events_topic(bus: Bus, event_ids: set[str]) -> set[str]:
    records = bus.read_all([bus.names.events])[bus.names.events]
    return {dict(r.headers).get("ce_id", b"").decode() for r in records} & event_ids


def delivered_once(bus: Bus, event_ids: set[str]) -> bool:
    """Every event exactly once in each inbox of its recipients (checked from its clear header)."""
    records = bus.read_all([bus.names.events])[bus.names.events]
    headers = {h.id: h for h in (envelope.parse(r.value)[4] for r in records) if h.id in event_ids}
    if set(headers) != event_ids:
        return False
    got = bus.inbox_ids()
    for event_id, header in headers.items():
        expected = set().union(*policy.recipients(bus.domain.registry.document.policy, header).values())
        for participant in expected:
            n = got.get(participant, {}).get(event_id, 0)
            assert n <= 1, f"{event_id} reached {participant} {n} times"
            if n == 0:
                return False
    return True


def test_sdk_leads_wait_encrypted_through_an_outage_and_arrive_once_each_in_order(
    bus: Bus, router: RouterProcess, tmp_path: Path
) -> None:
    registry = CollectorRegistry()
    metrics = SdkMetrics(registry)
    police = Client(
        keystore=bus.domain.keys("police"),
        registry=bus.domain.registry,
        bootstrap=bus.bootstrap,
        outbox_path=tmp_path / "police.sqlite",
        topic_prefix=bus.prefix,
        metrics=metrics,
    )
    pseudonymizer: Worker | None = None
    try:
        leads = [(FIRST, "第一次报警。"), (SECOND, "另一人。"), (FIRST, "第二次报警。")]
        event_ids = [police.publish_lead(a_lead(phone, narrative)) for phone, narrative in leads]
        assert len(set(event_ids)) == 3
        assert police.outbox.waiting() == 3
        # The drainer has tried the service (and backed off) at least twice: still nothing on Kafka.
        until(lambda: metrics.waiting_failures.labels("unavailable")._value.get() >= 2, "two tries", 30)
        assert police.flush(timeout=0.5) is False
        assert on_the_events_topic(bus, set(event_ids)) == set()
        assert registry.get_sample_value("lianfang_outbox_waiting_for_pseudonyms") == 3
        spool = b"".join(p.read_bytes() for p in tmp_path.glob("police.sqlite*"))
        for clear in (NAME, FIRST, SECOND, ID_NUMBER, "报警"):
            assert clear.encode() not in spool, "an identifier or the narrative is on disk in clear"

        pseudonymizer = start_pseudonymizer(bus, tmp_path)
        assert police.flush(timeout=90)
        assert police.outbox.waiting() == 0
        assert registry.get_sample_value("lianfang_outbox_waiting_for_pseudonyms") == 0
    finally:
        police.close()
        if pseudonymizer is not None:
            pseudonymizer.stop()

    bus.wait_for(lambda: delivered_once(bus, set(event_ids)), 90, "every lead delivered once")
    keyed = {dict(r.headers)["ce_id"].decode(): r for r in hub_inbox(bus)}
    assert keyed[event_ids[0]].key.decode() == subject_of(bus, FIRST)
    assert keyed[event_ids[1]].key.decode() == subject_of(bus, SECOND)
    assert keyed[event_ids[2]].key.decode() == subject_of(bus, FIRST)
    first, third = keyed[event_ids[0]], keyed[event_ids[2]]
    assert first.partition == third.partition
    assert first.offset < third.offset, "one person's leads keep the order they were accepted in"


def test_a_gateway_request_during_an_outage_answers_202_and_the_lead_arrives_after(
    bus: Bus, router: RouterProcess, tmp_path: Path
) -> None:
    gateway = GatewayProcess(bus, tmp_path / "spool", tmp_path / "gateway.log", served="police")
    pseudonymizer: Worker | None = None
    try:
        gateway.wait_ready(bus)
        event = a_lead("13712340003", "网关转来。")
        body = json.dumps({"type": "lead.reported", "event": event}, ensure_ascii=False).encode()
        status, answer = gateway.post(body, idempotency_key="outage-1")
        assert status == 202, answer
        event_id = answer["event_id"]
        assert gateway.metric("lianfang_outbox_waiting_for_pseudonyms") == 1
        assert on_the_events_topic(bus, {event_id}) == set()
        again = gateway.post(body, idempotency_key="outage-1")
        assert again == (202, {"event_id": event_id}), "a retry is the same acceptance"

        pseudonymizer = start_pseudonymizer(bus, tmp_path)
        bus.wait_for(lambda: delivered_once(bus, {event_id}), 90, "the gateway's lead delivered once")
        keyed = {dict(r.headers)["ce_id"].decode(): r for r in hub_inbox(bus)}
        assert keyed[event_id].key.decode() == subject_of(bus, "13712340003")
        bus.wait_for(
            lambda: gateway.metric("lianfang_outbox_waiting_for_pseudonyms") == 0, 30, "the gauge back at 0"
        )
    finally:
        gateway.stop()
        if pseudonymizer is not None:
            pseudonymizer.stop()
