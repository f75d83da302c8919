"""Oblivious pseudonyms on the real broker with the real pseudonymizer and router processes: two agencies'
reports about one person meet under one pseudonym that no keystore of the domain could have computed,
and the service's rate limit reaches an adapter as 429 with Retry-After."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from services.kernel import ids
from services.kernel.errors import UsageError
from services.kernel.pseudonym import PseudonymKey, normalize_subject
from services.pseudonymizer.client import ObliviousPseudonymizer, PseudonymizerUnavailableError
from services.sdk.client import Client
from tests.integration.buskit import Bus, RouterProcess
from tests.kit import DemoDomain
from tests.workers import Worker, free_port

pytestmark = pytest.mark.integration

PORT = free_port()


@pytest.fixture(scope="module")
def bus(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Bus:
    home = Path(tmp_path_factory.mktemp("oblivious")) / ".lianfang"
    domain = DemoDomain.create(home, now=datetime.now(UTC), pseudonymizer_url=f"http://127.0.0.1:{PORT}")
    return Bus.create(kafka_bootstrap, f"t-oprf-{datetime.now(UTC):%H%M%S%f}.", domain)


@pytest.fixture(scope="module")
def pseudonymizer(bus: Bus, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    folder = Path(tmp_path_factory.mktemp("pseudonymizer"))
    worker = Worker(
        "services.pseudonymizer",
        {
            "LIANFANG_BOOTSTRAP": bus.bootstrap,
            "LIANFANG_HOME": str(bus.domain.home),
            "LIANFANG_PSEUDONYMIZER_PORT": str(PORT),
            "LIANFANG_PSEUDONYMIZER_TOPIC_PREFIX": bus.prefix,
            "LIANFANG_PSEUDONYMIZER_SPOOL_DIR": str(folder / "spool"),
            "LIANFANG_PSEUDONYMIZER_RATE_PER_S": "0.5",
            "LIANFANG_PSEUDONYMIZER_BURST": "16",
        },
        folder / "pseudonymizer.log",
        port=PORT,
        what="the pseudonymizer",
    )
    bus.wait_for(lambda: worker.metrics() is not None, 60, "the pseudonymizer to serve")
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def router(bus: Bus, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    worker = RouterProcess.started(bus, Path(tmp_path_factory.mktemp("router")) / "router.log")
    yield worker
    worker.stop()


def client(bus: Bus, participant: str, tmp_path: Path) -> Client:
    return Client(
        keystore=bus.domain.keys(participant),
        registry=bus.domain.registry,
        bootstrap=bus.bootstrap,
        outbox_path=tmp_path / f"{participant}.sqlite",
        topic_prefix=bus.prefix,
    )


def a_lead(channel: str, phone: str) -> dict[str, Any]:
    return {
        "category": "domestic_violence",
        "channel": channel,
        "town": "renhe",
        "victim": {"name": "孙某某", "phone": phone, "is_minor": False, "sex": "female"},
        "minor": False,
        "risk_indicators": ["threats_to_kill"],
        "narrative": "……",
        "requests_joint_meeting": False,
    }


def test_two_agencies_reports_about_one_person_meet_under_one_pseudonym_no_keystore_can_compute(
    bus: Bus, pseudonymizer: Worker, router: RouterProcess, tmp_path: Path
) -> None:
    police, health = client(bus, "police", tmp_path), client(bus, "health", tmp_path)
    try:
        first = police.publish_lead(a_lead("police_call", "+86 137 0000 1234"))
        second = health.publish_lead(a_lead("hospital", "137-0000-1234"))
        assert police.flush(60)
        assert health.flush(60)
    finally:
        police.close()
        health.close()

    def delivered() -> dict[str, bytes] | None:
        records = bus.read_all([bus.names.inbox(ids.HUB)])[bus.names.inbox(ids.HUB)]
        keys = {dict(r.headers)["ce_id"].decode(): r.key for r in records}
        return keys if {first, second} <= set(keys) else None

    keys = bus.wait_for(delivered, 90, "both leads in the hub's inbox")
    assert keys[first] == keys[second]
    subject = keys[first].decode()
    assert subject == bus.domain.pseudonymizer_key().pseudonyms([normalize_subject(phone="13700001234")])[0]
    assert pseudonymizer.metric("lianfang_pseudonymizer_evaluations_total", participant="health") == 1

    # Every keystore of the domain, the router's included, and the registry: no pseudonym secret.
    assert bus.domain.registry.document.pseudonym_key is None
    for participant in bus.domain.registry.participant_ids():
        with pytest.raises(UsageError):
            bus.domain.registry.pseudonym_key(participant, bus.domain.keys(participant).encryption)
    # Nor does any secret in a keystore turn the identifier into this pseudonym offline.
    canonical = normalize_subject(phone="13700001234")
    for participant in (ids.ROUTER, "police", "health"):
        store = bus.domain.keys(participant)
        for secret in [k.private_bytes_raw() for k in store.encryption.values()]:
            assert PseudonymKey(version=1, secret=secret).pseudonyms([canonical]) != [subject]


def test_an_adapter_over_the_services_rate_gets_429_with_retry_after_from_the_real_service(
    bus: Bus, pseudonymizer: Worker
) -> None:
    asker = ObliviousPseudonymizer(keystore=bus.domain.keys("court"), registry=lambda: bus.domain.registry)
    asker.pseudonyms([normalize_subject(phone=f"1360000{i:04d}") for i in range(16)])  # the whole burst
    with pytest.raises(PseudonymizerUnavailableError) as caught:
        asker.pseudonyms([normalize_subject(phone="13600009999")])
    assert caught.value.code == "rate_limited"
    assert caught.value.retry_after >= 1
    assert pseudonymizer.metric("lianfang_pseudonymizer_rejections_total", reason="rate_limited") == 1
