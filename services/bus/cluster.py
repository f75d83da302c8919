"""Thin Kafka administration shared by every service: the declarative topic list (``deploy/topics.toml``)
expanded for a registry and a cluster size and created, the ACLs applied, the cluster id, and the
producer settings every writer uses.

Kafka errors are translated into :class:`~services.kernel.errors.TransportError` here, at the edge.
"""

from __future__ import annotations

import contextlib
import time
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from services.bus.security import KafkaSecuritySettings, kafka_python_kwargs, load_security
from services.kernel import acls
from services.kernel.errors import MalformedError, TransportError

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


TOPICS_FILE = Path(__file__).resolve().parents[2] / "deploy" / "topics.toml"


def load_specs(
    participants: Iterable[str], *, brokers: int, path: Path = TOPICS_FILE, prefix: str = ""
) -> list[TopicSpec]:
    """Every topic of the list, ``{participant}`` expanded, replication fitted to ``brokers``.

    ``prefix`` renames every topic (tests give each run its own namespace on a shared broker).
    """
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise MalformedError(f"cannot read the topic list {path}: {e}") from e
    default_rf = data.get("defaults", {}).get("replication", "auto")
    specs = []
    for topic in data.get("topic", []):
        rf_setting = topic.get("replication", default_rf)
        rf = min(3, brokers) if rf_setting == "auto" else int(rf_setting)
        configs = {k: str(v) for k, v in topic.get("config", {}).items()}
        if rf >= 3:
            configs.setdefault("min.insync.replicas", "2")
        names = (
            [topic["name"].format(participant=p) for p in participants]
            if "{participant}" in topic["name"]
            else [topic["name"]]
        )
        specs += [TopicSpec(prefix + name, int(topic["partitions"]), rf, configs) for name in names]
    return specs


def broker_count(bootstrap: str, security: KafkaSecuritySettings | None = None) -> int:
    """How many brokers the cluster has (``security``: ``None`` is the ``LIANFANG_KAFKA_*`` environment)."""
    auth = kafka_python_kwargs(security if security is not None else load_security())
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="lianfang-topics", **auth)
        try:
            return len(admin.describe_cluster()["brokers"])
        finally:
            admin.close()
    except KafkaError as e:
        raise TransportError(f"cannot reach Kafka at {bootstrap}: {e}") from e


def apply_topics(
    bootstrap: str,
    participants: Iterable[str],
    *,
    prefix: str = "",
    security: KafkaSecuritySettings | None = None,
) -> list[TopicSpec]:
    """Create every topic of the list that does not exist yet; returns the specs applied.

    ``security`` logs in (``None``: the ``LIANFANG_KAFKA_*`` environment); on a secured broker only the
    operator may create topics.
    """
    security = security if security is not None else load_security()
    specs = load_specs(participants, brokers=broker_count(bootstrap, security), prefix=prefix)
    ensure_topics(bootstrap, specs, security=security)
    return specs


def acl_of(rule: acls.AclRule) -> Any:
    """The kafka-python ``ACL`` object of one rule."""
    from kafka.admin import (  # noqa: PLC0415 - only the operator's command needs these
        ACL,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        ResourcePattern,
        ResourceType,
    )

    pattern = ResourcePattern(ResourceType[rule.resource], rule.name, ACLResourcePatternType[rule.pattern])
    return ACL(rule.principal, "*", ACLOperation[rule.operation], ACLPermissionType.ALLOW, pattern)


def apply_acls(bootstrap: str, rules: Iterable[acls.AclRule], security: KafkaSecuritySettings) -> int:
    """Create ``rules`` on the cluster (existing identical rules are kept); returns how many were sent.

    ``security`` must log in as a super user (the operator): only it may alter ACLs.
    """
    acls = [acl_of(r) for r in rules]
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap, client_id="lianfang-acls", **kafka_python_kwargs(security)
        )
    except KafkaError as e:
        raise TransportError(f"cannot reach Kafka at {bootstrap} to apply ACLs: {e}") from e
    try:
        result = admin.create_acls(acls) if acls else {"failed": []}
    except KafkaError as e:
        raise TransportError(f"creating ACLs on {bootstrap} failed: {e}") from e
    finally:
        admin.close()
    failed = result.get("failed") or []
    if failed:
        raise TransportError(
            f"{len(failed)} of {len(acls)} ACLs were refused by {bootstrap}, first: {failed[0]!r}; "
            "ACLs can only be created by a super user (the operator)"
        )
    return len(acls)
