"""Thin Kafka I/O shared by every service: topic creation and producer/consumer settings.

Kafka errors are translated into :class:`~services.kernel.errors.TransportError` here, at the edge.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from services.kernel.errors import TransportError
from services.kernel.kafka_security import KafkaSecuritySettings, kafka_python_kwargs, load_security

# Producer settings every Lianfang writer uses: nothing is acknowledged until all in-sync replicas
# have it, and retries cannot duplicate or reorder records of one partition.
DURABLE_PRODUCER: dict[str, Any] = {"acks": "all", "enable_idempotence": True}


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """One topic as it must exist: partitions, replication and topic-level configs."""

    name: str
    partitions: int = 1
    replication: int = 1
    configs: dict[str, str] = field(default_factory=dict)


def ensure_topics(
    bootstrap: str,
    topics: Iterable[TopicSpec],
    *,
    timeout_s: float = 30.0,
    security: KafkaSecuritySettings | None = None,
) -> None:
    """Create the topics that do not exist yet and wait until every one is in the metadata.

    ``security``: how to log in (``None``: the ``LIANFANG_KAFKA_*`` environment); creating topics
    needs the operator on a secured broker.
    """
    specs = list(topics)
    auth = kafka_python_kwargs(security if security is not None else load_security())
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="lianfang-admin", **auth)
    except KafkaError as e:
        raise TransportError(f"cannot reach Kafka at {bootstrap}: {e}") from e
    try:
        for spec in specs:
            new = NewTopic(spec.name, spec.partitions, spec.replication, topic_configs=spec.configs)
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([new])
        _wait_for_topics(admin, [s.name for s in specs], timeout_s)
    except KafkaError as e:
        raise TransportError(f"creating topics on {bootstrap} failed: {e}") from e
    finally:
        admin.close()


def _wait_for_topics(admin: KafkaAdminClient, names: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    missing = set(names)
    while time.monotonic() < deadline:
        described = admin.describe_topics(sorted(missing))
        for topic in described:
            partitions = topic.get("partitions") or []
            leaders = [p.get("leader_id", p.get("leader", -1)) for p in partitions]
            if topic.get("error_code", 0) == 0 and leaders and all(x >= 0 for x in leaders):
                missing.discard(topic.get("name") or topic.get("topic"))
        if not missing:
            return
        time.sleep(0.1)  # poll interval inside a deadline loop
    raise TransportError(f"topics not ready within {timeout_s:.0f} s: {sorted(missing)}")


def cluster_id(bootstrap: str, security: KafkaSecuritySettings | None = None) -> str:
    """The id of the Kafka cluster at ``bootstrap`` (from a metadata response; any login may ask)."""
    auth = kafka_python_kwargs(security if security is not None else load_security())
    try:
        consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id="lianfang-cluster-id", **auth)
    except KafkaError as e:
        raise TransportError(f"cannot reach Kafka at {bootstrap}: {e}") from e
    try:
        consumer.topics()  # one metadata round trip
        # kafka-python keeps the metadata it received in its client's ClusterMetadata.
        found = consumer._client.cluster.cluster_id
    except KafkaError as e:
        raise TransportError(f"reading the cluster id of {bootstrap} failed: {e}") from e
    finally:
        consumer.close()
    if not found:
        raise TransportError(f"Kafka at {bootstrap} did not say its cluster id")
    return str(found)
