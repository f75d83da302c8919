"""Forgiving identifiers on the real broker, with the real pseudonymizer, router and hub processes: a lead
whose ID number was mistyped is delivered, flagged, keyed by the phone, and linked by the hub to the
same person's lead from another agency, which gave the correct ID number and the same phone; a lead
whose only identifier is invalid is still delivered, flagged."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from services.kernel.pseudonym import normalize_subject
from services.sdk.client import Client
from tests.integration.buskit import Bus, HubProcess, PseudonymizerProcess, RouterProcess
from tests.integration.test_hub import Alerts
from tests.kit import DemoDomain
from tests.workers import Worker, free_port

pytestmark = pytest.mark.integration

PORT = free_port()
ID_NUMBER = "11010119850512007X"  # synthetic: region 110101, born 1985-05-12, a valid check digit
MISTYPED = "11010119850512008X"  # one digit off: the check digit no longer matches
PHONE = "13700005678"


@pytest.fixture(scope="module")
def bus(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Bus:
    home = Path(tmp_path_factory.mktemp("linking")) / ".lianfang"
    domain = DemoDomain.create(home, now=datetime.now(UTC), pseudonymizer_url=f"http://127.0.0.1:{PORT}")
    return Bus.create(kafka_bootstrap, f"t-link-{datetime.now(UTC):%H%M%S%f}.", domain)


@pytest.fixture(scope="module")
def services(bus: Bus, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Worker, HubProcess]]:
    folder = Path(tmp_path_factory.mktemp("linking-services"))
    pseudonymizer = PseudonymizerProcess.started(bus, folder, PORT)
    router: RouterProcess | None = None
    hub: HubProcess | None = None
    try:
        router = RouterProcess.started(bus, folder / "router.log")
        hub = HubProcess(bus, folder / "hub.log", folder / "hub-data")
        bus.wait_for(lambda: hub.metric("lianfang_hub_events_observed_total") is not None, 90, "hub start")
        yield pseudonymizer, hub
    finally:
        for worker in (hub, router, pseudonymizer):
            if worker is not None:
                worker.stop()


def client(bus: Bus, participant: str, tmp_path: Path) -> Client:
    return Client(
        keystore=bus.domain.keys(participant),
        registry=bus.domain.registry,
        bootstrap=bus.bootstrap,
        outbox_path=tmp_path / f"{participant}.sqlite",
        topic_prefix=bus.prefix,
    )


def a_lead(channel: str, **victim: Any) -> dict[str, Any]:
    return {
        "category": "domestic_violence",
        "channel": channel,
        "town": "renhe",
        "victim": {"name": "孙某某", "is_minor": False, "sex": "female", **victim},
        "minor": False,
        "risk_indicators": [],
        "narrative": "……",
        "requests_joint_meeting": False,
    }


def publish(bus: Bus, participant: str, tmp_path: Path, lead: dict[str, Any]) -> str:
    sender = client(bus, participant, tmp_path)
    try:
        event_id = sender.publish_lead(lead)
        assert sender.flush(60)
        return event_id
    finally:
        sender.close()


def opened_by(bus: Bus, participant: str, tmp_path: Path, event_ids: set[str]) -> dict[str, Any]:
    """The events of ``event_ids`` as ``participant`` opens them from its inbox."""
    reader = client(bus, participant, tmp_path / f"reader-{participant}")
    found: dict[str, Any] = {}
    try:

        def arrived() -> bool:
            for opened in reader.inbox(timeout=0.5):
                found[opened.header.id] = opened
            return event_ids <= set(found)

        bus.wait_for(arrived, 90, f"{participant} to receive {len(event_ids)} lead(s)")
    finally:
        reader.close()
    return found


def test_a_mistyped_id_number_is_delivered_flagged_and_linked_to_the_same_persons_lead_by_phone(
    bus: Bus, services: tuple[Worker, HubProcess], tmp_path: Path
) -> None:
    pseudonymizer, hub = services
    (tmp_path / "reader-police").mkdir()
    correct = publish(bus, "police", tmp_path, a_lead("police_call", id_number=ID_NUMBER, phone=PHONE))
    mistyped = publish(
        bus, "health", tmp_path, a_lead("hospital", id_number=MISTYPED, phone=f"+86 {PHONE[:3]}-{PHONE[3:]}")
    )
    key = bus.domain.pseudonymizer_key()
    by_id, by_phone = key.pseudonyms([normalize_subject(id_number=ID_NUMBER), normalize_subject(phone=PHONE)])

    # Both delivered (police reads every DV lead in its district), the second keyed by the phone and
    # flagged in its sealed details; the first names the phone's pseudonym as a link in its header.
    opened = opened_by(bus, "police", tmp_path, {correct, mistyped})
    first, second = opened[correct], opened[mistyped]
    assert (first.header.subject, first.header.links) == (by_id, [by_phone])
    assert (second.header.subject, second.header.links) == (by_phone, [])
    victim = second.sections["details"]["victim"]
    assert victim["id_number"] == MISTYPED  # kept as given
    assert victim["identifier_flags"] == ["id_number_unverified"]
    assert victim["id_number_unverified"] is True
    assert "identifier_flags" not in first.sections["details"]["victim"]  # written only when used
    # One batched request per lead: the police lead's subject and link were evaluated together.
    assert pseudonymizer.metric("lianfang_pseudonymizer_evaluations_total", participant="police") == 2
    assert pseudonymizer.metric("lianfang_pseudonymizer_evaluations_total", participant="health") == 1
    assert pseudonymizer.metric("lianfang_pseudonymizer_batch_size_count") == 2  # two requests in all

    # The hub links them: the several-agencies rule fires once for the person, naming both leads.
    alerts = Alerts(bus, tmp_path, clock=lambda: datetime.now(UTC))
    try:
        canonical = min(by_id, by_phone)
        [alert] = alerts.wait_for(canonical, lambda found: len(found) >= 1)
    finally:
        alerts.client.close()
    assert [reason["code"] for reason in alert["reasons"]] == ["convergence"]
    assert set(alert["related_events"]) == {correct, mistyped}
    assert {"police", "health"} <= set(alert["agencies_involved"])
    assert hub.metric("lianfang_hub_linked_events_total") == 1


def test_a_lead_whose_only_identifier_is_invalid_is_delivered_and_flagged(
    bus: Bus, services: tuple[Worker, HubProcess], tmp_path: Path
) -> None:
    (tmp_path / "reader-police").mkdir()
    event_id = publish(bus, "health", tmp_path, a_lead("hospital", phone="138-0000"))
    opened = opened_by(bus, "police", tmp_path, {event_id})[event_id]
    victim = opened.sections["details"]["victim"]
    assert victim["phone"] == "138-0000"
    assert victim["identifier_flags"] == ["phone_invalid", "no_valid_identifier"]
    assert opened.header.links == []
