"""Pseudonymizer key epochs with the real service following the real registry topic. A rotation: during the
transition clients get the new pseudonym and the one the old key gave, both verified, and a lead the SDK
publishes reaches the hub keyed by the new one and linking the old one; once the roots end
the transition the service destroys the old key file and refuses old-epoch evaluations, and clients get
only the new pseudonym. A sealed-key domain moving over: the HMAC pseudonym is the previous one, and once
the registry drops the sealed key the client holds it no more."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from schemas.envelope import EnvelopeHeader
from schemas.registry import RegistryDocument
from services import trust
from services.kernel import crypto, envelope, ids
from services.kernel.pseudonym import EpochPseudonyms, normalize_subject
from services.kernel.registry import Registry
from services.pseudonymizer import core
from services.pseudonymizer.client import ObliviousPseudonymizer, PseudonymizerUnavailableError
from services.sdk.client import Client
from services.trust import admin
from tests.integration.buskit import Bus, PseudonymizerProcess, RegistryChange, RouterProcess
from tests.kit import DemoDomain
from tests.workers import Worker, free_port

pytestmark = pytest.mark.integration

PORT = free_port()
PEOPLE = [normalize_subject(phone="13700005678"), normalize_subject(id_number="11010519491231002X")]


@pytest.fixture(scope="module")
def bus(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Bus:
    home = Path(tmp_path_factory.mktemp("epochs")) / ".lianfang"
    domain = DemoDomain.create(home, now=datetime.now(UTC), pseudonymizer_url=f"http://127.0.0.1:{PORT}")
    return Bus.create(kafka_bootstrap, f"t-epochs-{datetime.now(UTC):%H%M%S%f}.", domain)


@pytest.fixture(scope="module")
def pseudonymizer(bus: Bus, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    worker = PseudonymizerProcess.started(bus, Path(tmp_path_factory.mktemp("pseudonymizer")), PORT)
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def router(bus: Bus, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    worker = RouterProcess.started(bus, Path(tmp_path_factory.mktemp("router")) / "router.log")
    yield worker
    worker.stop()


def published_during(bus: Bus, registry: Registry, router: RouterProcess, tmp_path: Path) -> EnvelopeHeader:
    """A lead the SDK publishes under ``registry``, as the hub's inbox receives it: its clear header."""
    bus.wait_for(
        lambda: router.metric("lianfang_registry_version", service="router") == registry.version,
        60,
        f"the router's registry v{registry.version}",
    )
    with Client(
        keystore=bus.domain.keys("police"),
        registry=registry,
        bootstrap=bus.bootstrap,
        outbox_path=tmp_path / "police.sqlite",
        topic_prefix=bus.prefix,
    ) as police:
        event_id = police.publish_lead(
            {
                "category": "domestic_violence",
                "channel": "police_call",
                "town": "renhe",
                "victim": {"name": "孙某某", "phone": "137-0000-5678", "is_minor": False, "sex": "female"},
                "minor": False,
                "risk_indicators": ["threats_to_kill"],
                "narrative": "……",
                "requests_joint_meeting": False,
            }
        )
        assert police.flush(60)
    inbox = bus.names.inbox(ids.HUB)

    def delivered() -> bytes | None:
        records = bus.read_all([inbox])[inbox]
        return next((r.value for r in records if dict(r.headers)["ce_id"].decode() == event_id), None)

    value = bus.wait_for(delivered, 90, "the lead in the hub's inbox")
    return envelope.verify(value, registry=registry, now=datetime.now(UTC)).header


def client(bus: Bus, registry: Registry) -> ObliviousPseudonymizer:
    return ObliviousPseudonymizer(keystore=bus.domain.keys("court"), registry=lambda: registry)


def publish(bus: Bus, document: RegistryDocument) -> Registry:
    change = RegistryChange.sign(bus.domain, document)
    bus.produce([(b"registry", change.data)], topic=bus.names.registry)
    return change.registry


def test_a_rotation_links_old_and_new_pseudonyms_for_its_transition_then_destroys_the_old_key(
    bus: Bus, pseudonymizer: Worker, router: RouterProcess, tmp_path: Path
) -> None:
    before = client(bus, bus.domain.registry).pseudonyms(PEOPLE)
    assert all(p.startswith("p1.") for p in before)

    # The roots rotate: the next key beside the old one, a registry naming both, on the topic.
    new_key = trust.create_pseudonymizer_key(bus.domain.home, 2, name=core.key_file_name(2))
    rotation = admin.rotate_pseudonymizer(
        bus.domain.registry.document,
        version=2,
        public=crypto.b64e(new_key.key.public),
        transition_until=datetime.now(UTC) + timedelta(days=373),
        now=datetime.now(UTC),
        lifetime=timedelta(days=90),
    )
    transition = publish(bus, rotation.document)
    bus.wait_for(
        lambda: pseudonymizer.metric("lianfang_pseudonymizer_key_version", role="previous") == 1,
        60,
        "the pseudonymizer to serve the previous key beside the new one",
    )
    during = client(bus, transition).epochs(PEOPLE)
    assert [e.previous for e in during] == before
    assert [e.current for e in during] == new_key.pseudonyms(PEOPLE)
    assert all(e.current.startswith("p2.") for e in during)
    # A lead the SDK publishes meanwhile is keyed by the new pseudonym and links the old one.
    header = published_during(bus, transition, router, tmp_path)
    assert (header.subject, header.links) == (during[0].current, [during[0].previous])

    # The roots end the transition: the service destroys the old key and refuses to evaluate under it.
    old_file = bus.domain.home / trust.PSEUDONYMIZER_KEY
    assert old_file.exists()
    end = admin.end_pseudonymizer_transition(
        transition.document, now=datetime.now(UTC), lifetime=timedelta(days=90), force=True
    )
    after = publish(bus, end.document)
    bus.wait_for(lambda: not old_file.exists(), 60, "the old key file to be destroyed")
    assert pseudonymizer.metric("lianfang_pseudonymizer_keys_destroyed_total", outcome="destroyed") == 1
    assert pseudonymizer.metric("lianfang_pseudonymizer_key_version", role="previous") == 0
    assert "pseudonymizer key v1 destroyed" in pseudonymizer.tail(200)
    assert client(bus, after).epochs(PEOPLE) == [EpochPseudonyms(e.current, None) for e in during]
    for behind in (transition, bus.domain.registry):
        with pytest.raises(PseudonymizerUnavailableError) as caught:
            client(bus, behind).epochs(PEOPLE)
        assert caught.value.code == "key_not_named"
    assert (bus.domain.home / "pseudonymizer" / core.key_file_name(2)).exists()


SEALED_PORT = free_port()


@pytest.fixture(scope="module")
def sealed_bus(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Bus:
    home = Path(tmp_path_factory.mktemp("sealed")) / ".lianfang"
    domain = DemoDomain.create(home, now=datetime.now(UTC))  # an older domain: a sealed HMAC key
    return Bus.create(kafka_bootstrap, f"t-migrate-{datetime.now(UTC):%H%M%S%f}.", domain)


def test_a_sealed_key_domain_moves_to_the_pseudonymizer_linking_hmac_pseudonyms_then_drops_the_key(
    sealed_bus: Bus, tmp_path: Path
) -> None:
    bus = sealed_bus
    hmac_key = bus.domain.pseudonym_key()
    worker = Worker(
        "services.pseudonymizer",
        {
            "LIANFANG_BOOTSTRAP": bus.bootstrap,
            "LIANFANG_HOME": str(bus.domain.home),
            "LIANFANG_PSEUDONYMIZER_PORT": str(SEALED_PORT),
            "LIANFANG_PSEUDONYMIZER_TOPIC_PREFIX": bus.prefix,
            "LIANFANG_PSEUDONYMIZER_SPOOL_DIR": str(tmp_path / "spool"),
        },
        tmp_path / "pseudonymizer.log",
        port=SEALED_PORT,
        what="the pseudonymizer",
    )
    try:
        bus.wait_for(lambda: worker.metrics() is not None, 60, "the pseudonymizer to serve")
        # 1. The roots name the pseudonymizer, one version above the sealed key, which stays.
        key = trust.create_pseudonymizer_key(bus.domain.home, 2, name=core.key_file_name(2))
        migration = admin.migrate_to_pseudonymizer(
            bus.domain.registry.document,
            key.role(f"http://127.0.0.1:{SEALED_PORT}"),
            transition_until=datetime.now(UTC) + timedelta(days=373),
            now=datetime.now(UTC),
            lifetime=timedelta(days=90),
        )
        migrating = publish(bus, migration.document)
        bus.wait_for(
            lambda: worker.metric("lianfang_pseudonymizer_key_version", role="current") == 2,
            60,
            "the pseudonymizer to serve the key the registry names",
        )
        during = client(bus, migrating).epochs(PEOPLE)
        assert [e.current for e in during] == key.pseudonyms(PEOPLE)
        assert [e.previous for e in during] == hmac_key.pseudonyms(PEOPLE)

        # 2. The roots end the transition: no sealed key in the registry, nor in the client's memory.
        end = admin.end_pseudonymizer_transition(
            migrating.document, now=datetime.now(UTC), lifetime=timedelta(days=90), force=True
        )
        after = publish(bus, end.document)
        assert after.document.pseudonym_key is None
        bus.wait_for(
            lambda: worker.metric("lianfang_registry_version", service="pseudonymizer") == after.version,
            60,
            "the pseudonymizer to report the registry it took on its /metrics",
        )
        assert worker.total("lianfang_audit_ship_failures_total") == 0, "its audit chain is reported"
        assert any(s.startswith("lianfang_audit_unshipped_bytes{") for s in worker.metrics() or {})
        asker = client(bus, migrating)
        asker.epochs(PEOPLE[:1])
        assert asker._sealed == hmac_key
        asker.registry = lambda: after
        assert asker.epochs(PEOPLE) == [EpochPseudonyms(e.current, None) for e in during]
        assert asker._sealed is None
    finally:
        worker.stop()
