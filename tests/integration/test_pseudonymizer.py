"""Oblivious pseudonyms on the real broker with the real pseudonymizer and router processes: two agencies'
reports about one person meet under one pseudonym that no keystore of the domain could have computed,
and the service's rate limit reaches an adapter as 429 with Retry-After, except for a participant the
operator gave a rate of its own."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from services import trust
from services.kernel import ids, oprf
from services.kernel.errors import MalformedError, UsageError
from services.kernel.pseudonym import PseudonymKey, normalize_subject, oblivious_pseudonym, oprf_input
from services.pseudonymizer.client import ObliviousPseudonymizer, PseudonymizerUnavailableError
from services.pseudonymizer.core import KEY_INFO, MODE
from services.sdk.client import Client
from tests.integration.buskit import Bus, PseudonymizerProcess, RouterProcess
from tests.kit import DemoDomain
from tests.workers import Worker, free_port

pytestmark = pytest.mark.integration

PORT = free_port()
GRANTED = "womens_federation"
"""The participant with a rate of its own (an import of the hotline's records); no other test asks as it."""


@pytest.fixture(scope="module")
def bus(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Bus:
    home = Path(tmp_path_factory.mktemp("oblivious")) / ".lianfang"
    domain = DemoDomain.create(home, now=datetime.now(UTC), pseudonymizer_url=f"http://127.0.0.1:{PORT}")
    return Bus.create(kafka_bootstrap, f"t-oprf-{datetime.now(UTC):%H%M%S%f}.", domain)


@pytest.fixture(scope="module")
def pseudonymizer(bus: Bus, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    folder = Path(tmp_path_factory.mktemp("pseudonymizer"))
    worker = PseudonymizerProcess.started(
        bus,
        folder,
        PORT,
        LIANFANG_PSEUDONYMIZER_RATE_PER_S="0.5",
        LIANFANG_PSEUDONYMIZER_BURST="16",
        LIANFANG_PSEUDONYMIZER_RATES=f"{GRANTED}=100000",
    )
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
    # Nor does any secret in a keystore, or any clear field on the bus, turn the identifier into this
    # pseudonym offline (the next test tries every construction an insider could).
    assert subject not in offline_attempts(bus, normalize_subject(phone="13700001234"), subject)


def _every_clear_value(bus: Bus) -> set[bytes]:
    """Every Kafka key and header value of every record on the events topic and every inbox."""
    participants = bus.domain.registry.participant_ids()
    topics = [bus.names.events, *(bus.names.inbox(p) for p in participants)]
    values: set[bytes] = set()
    for records in bus.read_all(topics).values():
        for record in records:
            if record.key:
                values.add(bytes(record.key))
            values.update(bytes(v) for _, v in record.headers if v)
    return values


def _candidate_secrets(bus: Bus) -> set[bytes]:
    """What an insider holding every participant's keystore and a copy of the bus could use as a key:
    every private key (signing and encryption, the router's included), every 32-byte clear value, and
    the SHA-256 of every clear value."""
    secrets: set[bytes] = set()
    for participant in bus.domain.registry.participant_ids():
        store = bus.domain.keys(participant)
        secrets.update(k.private_bytes_raw() for k in store.signing.values())
        secrets.update(k.private_bytes_raw() for k in store.encryption.values())
    for value in _every_clear_value(bus):
        secrets.add(hashlib.sha256(value).digest())
        if len(value) == 32:
            secrets.add(value)
    return secrets


def _constructions(secret: bytes, canonical: str, version: int) -> Iterator[str]:
    """Each way a secret could give a pseudonym: the old keyed HMAC, the OPRF with the secret as the
    key's seed (as the service's key file holds it) or as its scalar."""
    yield PseudonymKey(version=version, secret=secret).pseudonyms([canonical])[0]
    data = oprf_input(canonical)
    yield oblivious_pseudonym(
        version, oprf.evaluate(oprf.derive_key_pair(secret, KEY_INFO, MODE), data, MODE)
    )
    try:
        scalar_key = oprf.ServerKey.from_secret(secret)
    except (MalformedError, UsageError):
        return  # not a canonical non-zero scalar
    yield oblivious_pseudonym(version, oprf.evaluate(scalar_key, data, MODE))


def offline_attempts(bus: Bus, canonical: str, subject: str) -> set[str]:
    """Every pseudonym an insider computes for ``canonical`` without asking the service, under the
    subject's key version and with no key at all (a plain hash of the OPRF input)."""
    version = int(subject[1 : subject.index(".")])
    found = {oblivious_pseudonym(version, hashlib.sha512(oprf_input(canonical)).digest())}
    for secret in _candidate_secrets(bus):
        found.update(_constructions(secret, canonical, version))
    return found


def test_every_keystore_and_every_clear_field_on_the_bus_together_cannot_produce_a_pseudonym(
    bus: Bus, pseudonymizer: Worker, router: RouterProcess, tmp_path: Path
) -> None:
    police = client(bus, "police", tmp_path)
    try:
        event_id = police.publish_lead(a_lead("police_call", "13700005678"))
        assert police.flush(60)
    finally:
        police.close()

    def delivered() -> bytes | None:
        records = bus.read_all([bus.names.inbox(ids.HUB)])[bus.names.inbox(ids.HUB)]
        keys = {dict(r.headers)["ce_id"].decode(): r.key for r in records}
        return keys.get(event_id)

    subject = bus.wait_for(delivered, 90, "the lead in the hub's inbox").decode()
    canonical = normalize_subject(phone="13700005678")
    attempts = offline_attempts(bus, canonical, subject)
    assert len(attempts) > 2 * len(bus.domain.registry.participant_ids())  # the attack did run
    assert subject not in attempts
    # The same constructions with the one secret only the service holds (its key file's seed) do give
    # the subject: the attempts above would have found it had the bus or a keystore carried that seed.
    seed = base64.b64decode(json.loads((bus.domain.home / trust.PSEUDONYMIZER_KEY).read_bytes())["seed"])
    assert subject in set(_constructions(seed, canonical, int(subject[1 : subject.index(".")])))


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


def test_a_participant_given_a_rate_of_its_own_is_served_past_the_default_while_another_gets_429(
    bus: Bus, pseudonymizer: Worker
) -> None:
    def asker(participant: str) -> ObliviousPseudonymizer:
        return ObliviousPseudonymizer(
            keystore=bus.domain.keys(participant), registry=lambda: bus.domain.registry
        )

    granted, other = asker(GRANTED), asker("education")
    # Five bursts in a row: 80 evaluations, which at the default of 0.5 a second would take 128 s more.
    for burst in range(5):
        granted.pseudonyms([normalize_subject(phone=f"135000{burst}{i:04d}") for i in range(16)])
    other.pseudonyms([normalize_subject(phone=f"1340000{i:04d}") for i in range(16)])
    with pytest.raises(PseudonymizerUnavailableError) as caught:
        other.pseudonyms([normalize_subject(phone="13400009999")])
    assert (caught.value.code, caught.value.status) == ("rate_limited", 429)
    assert caught.value.retry_after >= 1
    assert pseudonymizer.metric("lianfang_pseudonymizer_evaluations_total", participant=GRANTED) == 80
    assert pseudonymizer.metric("lianfang_pseudonymizer_rate_per_second", participant=GRANTED) == 100_000
    assert pseudonymizer.metric("lianfang_pseudonymizer_default_rate_per_second") == 0.5
    assert pseudonymizer.metric("lianfang_pseudonymizer_rates_unmatched") == 0
    said = f"{GRANTED} has a rate of its own: 100000 evaluations/s (default 0.5)"
    bus.wait_for(lambda: said in pseudonymizer.log.read_text(), 10, "the rate in the start log")
