"""What `lianfang k8s topics|users` writes for Strimzi is what `lianfang topics apply` / `acls apply`
create on a real secured broker: the same topics (partitions, replication, configs) and the same ACLs,
principals under their Kubernetes names."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType

from deploy.k8s.generate import district_ids
from deploy.kafka.local import LocalKafka, running
from services.bus import cluster, strimzi
from services.bus.security import KafkaSecuritySettings, kafka_python_kwargs
from services.kernel import principals

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalKafka, KafkaSecuritySettings]]:
    with running(Path(tmp_path_factory.mktemp("k8s-kafka")), secure=True, discard=True) as kafka:
        operator = KafkaSecuritySettings(
            security_protocol="SASL_SSL",
            sasl_username="operator",
            sasl_password=kafka.password("operator"),  # type: ignore[arg-type]
            ca_file=kafka.ca_file,
        )
        cluster.apply_topics(kafka.bootstrap, district_ids(), security=operator)
        cluster.apply_acls(kafka.bootstrap, principals.deployment_rules(district_ids()), operator)
        yield kafka, operator


def _admin(kafka: LocalKafka, operator: KafkaSecuritySettings) -> KafkaAdminClient:
    return KafkaAdminClient(bootstrap_servers=kafka.bootstrap, **kafka_python_kwargs(operator))


def test_the_kafka_topics_are_the_topics_topics_apply_created(
    applied: tuple[LocalKafka, KafkaSecuritySettings],
) -> None:
    kafka, operator = applied
    wanted = strimzi.kafka_topics(cluster.load_specs(district_ids(), brokers=1), cluster="lianfang")
    admin = _admin(kafka, operator)
    try:
        names = [t["spec"]["topicName"] for t in wanted]
        described = {t.get("name") or t.get("topic"): t for t in admin.describe_topics(names)}
        responses = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
    finally:
        admin.close()
    # {resource type: {topic: {key: {"value": ...}}}}, only the keys set on the topic (filter "modified")
    on_broker = {
        name: {key: str(data["value"] if isinstance(data, dict) else data) for key, data in keys.items()}
        for by_name in responses.values()
        for name, keys in by_name.items()
    }
    for topic in wanted:
        name, spec = topic["spec"]["topicName"], topic["spec"]
        partitions = described[name]["partitions"]
        assert len(partitions) == spec["partitions"], name
        assert {len(p.get("replica_nodes", p.get("replicas", ()))) for p in partitions} == {
            spec["replicas"]
        }, name
        assert on_broker[name] == spec["config"], name


def test_the_kafka_users_grant_the_acls_acls_apply_created(
    applied: tuple[LocalKafka, KafkaSecuritySettings],
) -> None:
    kafka, operator = applied
    admin = _admin(kafka, operator)
    try:
        found = cluster.acls_in_force(admin)
    finally:
        admin.close()
    on_broker: set[tuple[str, ...]] = {
        (
            f"User:{strimzi.user_name(acl.principal)}",
            acl.resource_pattern.resource_type.name,
            acl.resource_pattern.pattern_type.name,
            acl.resource_pattern.resource_name,
            acl.operation.name,
        )
        for acl in found
    }
    users: list[dict[str, Any]] = strimzi.kafka_users(
        principals.deployment_rules(district_ids()), cluster="lianfang"
    )
    assert strimzi.rules_of(users) == on_broker
    assert len(on_broker) > 500
