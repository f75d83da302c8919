"""The secured broker (TLS, SASL/SCRAM-SHA-512, StandardAuthorizer) with ACLs generated from the registry.

This module starts its own secure single-node broker through ``deploy.kafka.local`` (the session broker
is plain), creates the bus's topics as the operator and applies :func:`services.kernel.acls.generate`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import (
    AuthorizationError,
    KafkaError,
    TopicAuthorizationFailedError,
)

from deploy.kafka.local import LocalKafka, ProbeAuth, ProbeAuthError, metadata_broker_count, running
from services.audit.chain import verify_lines
from services.audit.kafka import kafka_sink, read_topic
from services.audit.trail import AuditTrail
from services.bus.cluster import apply_acls
from services.bus.security import KafkaSecuritySettings, kafka_python_kwargs
from services.kernel import acls
from services.kernel.topics import AUDIT, EVENTS, inbox

pytestmark = pytest.mark.integration

PARTICIPANTS = ["police", "education", "hub"]
QUICK = {"request_timeout_ms": 8000, "bootstrap_timeout_ms": 2000, "reconnect_backoff_max_ms": 500}
"""A refused client gives up after 2 s of bootstrap attempts (each refused): the refusal tests wait that long."""


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    data = Path(tmp_path_factory.mktemp("secure-kafka"))
    with running(data, secure=True, users=[*PARTICIPANTS, "router"], discard=True) as cluster:
        admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap, **_kwargs(cluster, "operator"))
        try:
            names = [EVENTS, AUDIT, *(inbox(p) for p in PARTICIPANTS)]
            admin.create_topics([NewTopic(n, 1, 1) for n in names])
        finally:
            admin.close()
        apply_acls(cluster.bootstrap, acls.generate(PARTICIPANTS), _security(cluster, "operator"))
        yield cluster


def _security(cluster: LocalKafka, user: str, password: str | None = None) -> KafkaSecuritySettings:
    return KafkaSecuritySettings(
        security_protocol="SASL_SSL",
        sasl_username=user,
        sasl_password=password if password is not None else cluster.password(user),  # type: ignore[arg-type]
        ca_file=cluster.ca_file,
    )


def _kwargs(cluster: LocalKafka, user: str, password: str | None = None) -> dict[str, Any]:
    return kafka_python_kwargs(_security(cluster, user, password))


def _consume_one(consumer: KafkaConsumer, deadline_s: float = 20.0) -> list[bytes]:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            return [r.value for r in records]
    return []


def test_the_broker_files_hold_secrets_only_for_their_owner(secure: LocalKafka) -> None:
    assert secure.credentials_file.stat().st_mode & 0o077 == 0
    assert secure.tls.keystore.stat().st_mode & 0o077 == 0
    assert (secure.data_dir / "node-1" / "server.properties").stat().st_mode & 0o077 == 0
    assert secure.password("operator") not in repr(secure)


def test_a_client_without_credentials_is_refused(secure: LocalKafka) -> None:
    with pytest.raises(KafkaError):
        admin = KafkaAdminClient(bootstrap_servers=secure.bootstrap, **QUICK)
        admin.list_topics()


def test_a_tls_client_without_sasl_is_refused(secure: LocalKafka) -> None:
    with pytest.raises(KafkaError):
        admin = KafkaAdminClient(
            bootstrap_servers=secure.bootstrap,
            security_protocol="SSL",
            ssl_cafile=str(secure.ca_file),
            **QUICK,
        )
        admin.list_topics()


def test_a_wrong_password_is_refused(secure: LocalKafka) -> None:
    host, port = secure.bootstrap.split(":")
    with pytest.raises(ProbeAuthError, match="invalid credentials"):
        metadata_broker_count(host, int(port), auth=ProbeAuth("police", "not-the-password", secure.ca_file))
    assert metadata_broker_count(
        host, int(port), auth=ProbeAuth("police", secure.password("police"), secure.ca_file)
    )
    with pytest.raises(KafkaError):  # kafka-python: the login fails on every bootstrap attempt
        admin = KafkaAdminClient(
            bootstrap_servers=secure.bootstrap, **_kwargs(secure, "police", "not-the-password"), **QUICK
        )
        admin.list_topics()


def test_education_cannot_read_the_police_inbox(secure: LocalKafka) -> None:
    consumer = KafkaConsumer(
        bootstrap_servers=secure.bootstrap,
        group_id=acls.participant_group("education"),
        enable_auto_commit=False,
        **_kwargs(secure, "education"),
    )
    try:
        consumer.assign([TopicPartition(inbox("police"), 0)])
        with pytest.raises(TopicAuthorizationFailedError):
            _consume_one(consumer, 15)
    finally:
        consumer.close()


def test_education_cannot_join_the_police_consumer_group(secure: LocalKafka) -> None:
    consumer = KafkaConsumer(
        inbox("education"),
        bootstrap_servers=secure.bootstrap,
        group_id=acls.participant_group("police"),
        **_kwargs(secure, "education"),
    )
    try:
        with pytest.raises(AuthorizationError):
            _consume_one(consumer, 15)
    finally:
        consumer.close()


@pytest.mark.parametrize("target", PARTICIPANTS)
def test_education_cannot_write_any_inbox(secure: LocalKafka, target: str) -> None:
    producer = KafkaProducer(
        bootstrap_servers=secure.bootstrap, max_block_ms=10_000, **_kwargs(secure, "education")
    )
    try:
        with pytest.raises(AuthorizationError):
            producer.send(inbox(target), b"forged").get(timeout=15)
    finally:
        producer.close()


def test_police_writes_events_and_reads_its_own_inbox_that_the_router_wrote(secure: LocalKafka) -> None:
    police = KafkaProducer(bootstrap_servers=secure.bootstrap, acks="all", **_kwargs(secure, "police"))
    router = KafkaProducer(bootstrap_servers=secure.bootstrap, acks="all", **_kwargs(secure, "router"))
    marker = uuid.uuid4().hex.encode()
    try:
        police.send(EVENTS, key=b"p0.subject", value=b"event " + marker).get(timeout=15)
        router.send(inbox("police"), key=b"p0.subject", value=b"delivered " + marker).get(timeout=15)
    finally:
        police.close()
        router.close()
    consumer = KafkaConsumer(
        inbox("police"),
        bootstrap_servers=secure.bootstrap,
        group_id=acls.participant_group("police"),
        auto_offset_reset="earliest",
        **_kwargs(secure, "police"),
    )
    try:
        values = _consume_one(consumer)
    finally:
        consumer.close()
    assert any(marker in v for v in values)


def test_the_operator_can_create_topics(secure: LocalKafka) -> None:
    name = f"t-operator-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=secure.bootstrap, **_kwargs(secure, "operator"))
    try:
        admin.create_topics([NewTopic(name, 1, 1)])
        assert name in admin.list_topics()
    finally:
        admin.close()


def test_a_participant_cannot_create_topics(secure: LocalKafka) -> None:
    admin = KafkaAdminClient(bootstrap_servers=secure.bootstrap, **_kwargs(secure, "education"))
    try:
        with pytest.raises(KafkaError):
            admin.create_topics([NewTopic(f"t-edu-{uuid.uuid4().hex[:8]}", 1, 1)])
    finally:
        admin.close()


def test_an_audit_chain_on_the_secure_topic_verifies_and_an_edit_is_caught(secure: LocalKafka) -> None:
    publish, close = kafka_sink(secure.bootstrap, AUDIT, _security(secure, "police"))
    try:
        trail = AuditTrail("police", publish=publish)
        for i in range(3):
            trail.append("open_section", object=f"0190f2a0-0000-7000-8000-{i:012d}")
    finally:
        close()
    lines = read_topic(secure.bootstrap, AUDIT, _security(secure, "operator"))
    assert [r.ok for r in verify_lines(lines).chains] == [True]
    edited = [*lines]
    edited[1] = edited[1].replace(b'"open_section"', b'"console_view"')
    results = verify_lines(edited).chains
    assert [(r.ok, r.bad_seq) for r in results] == [(False, 1)]
