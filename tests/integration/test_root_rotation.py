"""Trust that stays current, on a real broker: a root rotation reaches a running router and an SDK client
without a restart and only the new roots sign after it; a restarted router never goes below the newest
registry it trusted; a wrap for a revoked encryption key is never sealed, nor delivered."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import PolicyViolationError

from schemas.registry import RegistryDocument
from services import trust
from services.kernel import policy
from services.kernel.errors import UsageError
from services.kernel.keystore import Keystore
from services.kernel.registry import Registry, sign_document
from services.sdk.client import Client
from tests.integration.buskit import Bus, RouterProcess
from tests.kit import DemoDomain

pytestmark = pytest.mark.integration

LEAD = {
    "category": "domestic_violence",
    "channel": "police_call",
    "town": "renhe",
    "victim": {"name": "张某某", "phone": "13700000003", "is_minor": False},
    "minor": False,
    "risk_indicators": ["threats_to_kill"],
    "narrative": "丈夫威胁要杀死她。",
    "requests_joint_meeting": False,
}


@pytest.fixture
def bus(kafka_bootstrap: str, tmp_path: Path) -> Bus:
    """A domain of its own: these tests rotate its roots and leave records of it in its home."""
    domain = DemoDomain.create(tmp_path / ".lianfang", now=datetime.now(UTC))
    return Bus.create(kafka_bootstrap, f"t-roots-{datetime.now(UTC):%H%M%S%f}.", domain)


@pytest.fixture
def router(bus: Bus, tmp_path: Path) -> Iterator[RouterProcess]:
    worker = RouterProcess.started(bus, tmp_path / "router.log")
    yield worker
    worker.stop()


def _keys(*stores: Keystore) -> dict[str, Any]:
    return {kid: key for store in stores for kid, key in store.signing.items()}


def _next(domain: DemoDomain, version: int, **changes: Any) -> RegistryDocument:
    now = datetime.now(UTC)
    return domain.registry.document.model_copy(
        update={"version": version, "issued": now, "expires": now + timedelta(days=30), **changes}
    )


def _version(worker: RouterProcess) -> float | None:
    return worker.metric("lianfang_registry_version", service="router")


def _refused(worker: RouterProcess, reason: str) -> float:
    return worker.metric("lianfang_registry_updates_rejected_total", service="router", reason=reason) or 0.0


def _deleted(admin: KafkaAdminClient, partition: TopicPartition) -> bool:
    """Delete every record of ``partition``; False while the broker has not applied the new cleanup
    policy yet (a config change takes effect a moment after it is acknowledged)."""
    try:
        admin.delete_records({partition: -1})
    except PolicyViolationError:
        return False
    return True


def test_a_root_rotation_reaches_a_running_router_and_sdk_client_and_only_the_new_roots_sign_after_it(
    bus: Bus, router: RouterProcess, tmp_path: Path
) -> None:
    d = bus.domain
    r1 = d.trust.root_keystores()
    r2 = []
    for holder in ("court", "procuratorate", "justice"):
        store = Keystore(trust.ROOT_PREFIX + holder)
        store.add_signing_key()
        r2.append(store)
    roots2 = trust.roots_of(r2, threshold=2)
    with Client.open(
        participant="police",
        home=d.home,
        bootstrap=bus.bootstrap,
        topic_prefix=bus.prefix,
        outbox_path=tmp_path / "police.sqlite",
    ) as police:
        v2 = sign_document(_next(d, 2, roots=roots2), _keys(*r1[:2], *r2[:2]))
        bus.produce([(b"registry", v2)], topic=bus.names.registry)
        bus.wait_for(lambda: _version(router) == 2 and police.registry.version == 2, 60, "the rotation")

        # The old roots alone put themselves back: refused by both, as not signed by the roots in force.
        back = sign_document(_next(d, 3, roots=d.trust.trusted_roots()), _keys(*r1[:2]))
        bus.produce([(b"registry", back)], topic=bus.names.registry)
        bus.wait_for(lambda: _refused(router, "bad_signature") >= 1, 60, "the old roots' v3 to be refused")
        assert _version(router) == 2

        v3 = sign_document(_next(d, 3, roots=roots2), _keys(*r2[:2]))
        bus.produce([(b"registry", v3)], topic=bus.names.registry)
        bus.wait_for(lambda: _version(router) == 3 and police.registry.version == 3, 60, "the new roots' v3")
        assert police.registry.document.roots == roots2
        assert police.in_force.trusted_roots == roots2


def test_after_a_restart_a_router_refuses_a_registry_older_than_the_newest_it_trusted(
    bus: Bus, tmp_path: Path
) -> None:
    d = bus.domain
    signers = _keys(*d.trust.root_keystores()[:2])
    v2 = sign_document(_next(d, 2), signers)
    v3 = sign_document(_next(d, 3), signers)
    worker = RouterProcess.started(bus, tmp_path / "router-1.log")
    try:
        bus.produce([(b"registry", v2), (b"registry", v3)], topic=bus.names.registry)
        bus.wait_for(lambda: _version(worker) == 3, 60, "v3 in force")
    finally:
        worker.stop()
    # Whoever administers Kafka removes v3 from the topic (a compacted topic must allow deletion first)
    # and re-publishes the older, validly signed v2 there; HOME/registry.json still holds v1.
    admin = KafkaAdminClient(bootstrap_servers=bus.bootstrap)
    try:
        topic = ConfigResource(
            ConfigResourceType.TOPIC, bus.names.registry, {"cleanup.policy": "compact,delete"}
        )
        admin.alter_configs([topic])
        bus.wait_for(lambda: _deleted(admin, TopicPartition(bus.names.registry, 0)), 30, "v3 deleted")
    finally:
        admin.close()
    bus.produce([(b"registry", v2)], topic=bus.names.registry)
    # The deletion took the timestamp statement too; the timestamp service's next one names v3.
    bus.stamp(
        registry=Registry.from_bytes(v3, trusted_roots=d.registry.document.roots, now=datetime.now(UTC))
    )

    restarted = RouterProcess.started(bus, tmp_path / "router-2.log")
    try:
        assert _version(restarted) == 3, "it starts from the newest registry it trusted, not HOME's v1"
        sealed = bus.seal(phone="13700000001")
        bus.publish([sealed])
        bus.wait_for(
            lambda: (restarted.total("lianfang_router_events_routed_total") or 0) >= 1, 60, "routing on v3"
        )
        assert _version(restarted) == 3, "the older v2 on the topic is not taken"
        assert "refused" in restarted.tail(200)
    finally:
        restarted.stop()


def test_a_wrap_for_a_revoked_encryption_key_is_dead_lettered_and_the_sdk_refuses_to_seal_to_it(
    bus: Bus, router: RouterProcess, tmp_path: Path
) -> None:
    d = bus.domain
    sealed = bus.seal(phone="13700000002")  # sealed to the women's federation's key before the revocation
    assert "womens_federation" in set().union(
        *policy.recipients(d.registry.document.policy, sealed.header).values()
    )
    now = datetime.now(UTC)
    participants = []
    for p in d.registry.document.participants:
        if p.id == "womens_federation":
            keys = [
                k.model_copy(update={"status": "revoked", "revoked_at": now}) if k.use == "encrypt" else k
                for k in p.keys
            ]
            p = p.model_copy(update={"keys": keys})
        participants.append(p)
    revocation = sign_document(_next(d, 2, participants=participants), _keys(*d.trust.root_keystores()[:2]))
    with Client.open(
        participant="police",
        home=d.home,
        bootstrap=bus.bootstrap,
        topic_prefix=bus.prefix,
        outbox_path=tmp_path / "police.sqlite",
    ) as police:
        bus.produce([(b"registry", revocation)], topic=bus.names.registry)
        bus.wait_for(lambda: _version(router) == 2 and police.registry.version == 2, 60, "the revocation")
        with pytest.raises(UsageError, match="cannot seal to 'womens_federation'"):
            police.publish_lead(LEAD)
    bus.publish([sealed])
    (letter,) = bus.wait_for(
        lambda: [r for r in bus.deadletters() if r.value == sealed.value], 60, "the dead letter"
    )
    assert dict(letter.headers)["lianfang_reason"] == b"encryption_key_revoked"
    assert sealed.header.id not in bus.inbox_ids().get("womens_federation", {})


def test_a_key_rotated_with_lianfang_keys_and_put_on_the_bus_with_registry_publish_reaches_a_running_router(
    bus: Bus, router: RouterProcess
) -> None:
    def lianfang(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "services", *argv, "--home", str(bus.domain.home)],
            capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip

    before = _version(router)
    rotated = lianfang("keys", "rotate", "--as", "health")
    assert rotated.returncode == 0, rotated.stderr
    published = lianfang("registry", "publish", "--bootstrap", bus.bootstrap, "--topic-prefix", bus.prefix)
    assert published.returncode == 0, published.stderr
    assert f"registry v{int(before or 0) + 1} published" in published.stdout
    bus.wait_for(lambda: _version(router) == (before or 0) + 1, 30, "the router on the published version")


def test_registry_publish_refuses_a_registry_its_roots_did_not_sign(bus: Bus, tmp_path: Path) -> None:
    forged = tmp_path / "forged.json"
    data = (bus.domain.home / "registry.json").read_bytes()
    assert b'"version": 1,' in data
    forged.write_bytes(data.replace(b'"version": 1,', b'"version": 9,', 1))  # the signed bytes changed
    result = subprocess.run(
        [sys.executable, "-m", "services", "registry", "publish", str(forged), "--home", str(bus.domain.home),
         "--bootstrap", bus.bootstrap, "--topic-prefix", bus.prefix],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert "bad_signature" in result.stderr, result.stderr
    on_topic = bus.read_all([bus.names.registry])[bus.names.registry]
    assert forged.read_bytes() not in [r.value for r in on_topic], "nothing reached the topic"
