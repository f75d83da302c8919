"""Thin Kafka administration shared by every service: the declarative topic list (``deploy/topics.toml``)
expanded for a registry and a cluster size and created, the ACLs applied, the cluster id, and the
producer settings every writer uses.

Kafka errors are translated into :class:`~services.kernel.errors.TransportError` here, at the edge.
"""

from __future__ import annotations

import contextlib
import time
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer
from kafka import errors as kafka_errors
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.protocol.metadata import MetadataRequest

from services.bus.security import KafkaSecuritySettings, kafka_python_kwargs, load_security
from services.kernel import acls
from services.kernel.errors import MalformedError, TransportError

# Producer settings every Lianfang writer uses: nothing is acknowledged until all in-sync replicas
# have it, and retries cannot duplicate or reorder records of one partition.
DURABLE_PRODUCER: dict[str, Any] = {"acks": "all", "enable_idempotence": True}

BACKGROUND_BOOTSTRAP_TIMEOUT_MS = 5_000
"""How long a background sender's producer (outbox drainer, audit shipper, dead-letter writer) waits
for a first broker when it is created; kafka-python's default is 30 s. The senders retry anyway, so a
short wait costs nothing during an outage and lets them stop within seconds when asked (a client's
close, a service's SIGTERM) instead of sitting out a half-minute connection attempt."""


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
) -> dict[str, int]:
    """Create the topics that do not exist yet and wait until every broker lists every one; returns how
    many partitions each has (a topic that existed keeps its own count: the caller compares).

    ``security``: how to log in (``None``: the ``LIANFANG_KAFKA_*`` environment); creating topics
    needs the operator on a secured broker, or a principal allowed to create these names.
    """
    specs = list(topics)
    with _admin(bootstrap, security) as admin:
        try:
            if specs:  # one request for all: the controller creates them together (one each: ~40 ms each)
                answer = admin.create_topics(
                    {
                        s.name: {
                            "num_partitions": s.partitions,
                            "replication_factor": s.replication,
                            "configs": s.configs,
                        }
                        for s in specs
                    },
                    raise_errors=False,
                )
                raise_unless_created_or_existing(answer)
            return _wait_for_topics(admin, [s.name for s in specs], timeout_s)
        except KafkaError as e:
            raise TransportError(f"creating topics on {bootstrap} failed: {e}") from e


def raise_unless_created_or_existing(answer: Mapping[str, Any]) -> None:
    """Raise the first error a create-topics answer names, other than "already exists"."""
    for topic in answer.get("topics", []):
        code = topic.get("error_code", 0)
        if code not in (0, TopicAlreadyExistsError.errno):
            error = kafka_errors.for_code(code)
            raise error(f"{topic.get('name')}: {topic.get('error_message') or error.__name__}")


def wait_for_topics(
    bootstrap: str,
    names: Iterable[str],
    *,
    timeout_s: float = 30.0,
    security: KafkaSecuritySettings | None = None,
) -> dict[str, int]:
    """Wait until every broker lists every topic of ``names`` with a leader for each partition (a
    :class:`TransportError` naming the missing ones after ``timeout_s``); returns how many partitions
    each has. Creates nothing: for a service that needs topics the operator creates."""
    with _admin(bootstrap, security) as admin:
        try:
            return _wait_for_topics(admin, list(names), timeout_s)
        except KafkaError as e:
            raise TransportError(f"describing topics on {bootstrap} failed: {e}") from e


@contextlib.contextmanager
def _admin(bootstrap: str, security: KafkaSecuritySettings | None) -> Iterator[KafkaAdminClient]:
    auth = kafka_python_kwargs(security if security is not None else load_security())
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="lianfang-admin", **auth)
    except KafkaError as e:
        raise TransportError(f"cannot reach Kafka at {bootstrap}: {e}") from e
    try:
        yield admin
    finally:
        admin.close()


def _wait_for_topics(admin: KafkaAdminClient, names: list[str], timeout_s: float) -> dict[str, int]:
    # Every broker is asked, not one: a broker applies a new topic to the metadata it serves a moment
    # after the controller created it, and a client may ask any broker. Tens of milliseconds on an idle
    # machine, longer under load: a client asking in between is told the topic does not exist.
    deadline = time.monotonic() + timeout_s
    missing = set(names)
    found: dict[str, int] = {}
    while time.monotonic() < deadline:
        listed = [_ready_partitions(topics) for topics in _metadata_of_every_broker(admin, sorted(missing))]
        for name in list(missing):
            counts = {broker.get(name) for broker in listed}
            if listed and None not in counts and len(counts) == 1:
                found[name] = counts.pop() or 0
                missing.discard(name)
        if not missing:
            return found
        time.sleep(0.1)  # poll interval inside a deadline loop
    raise TransportError(f"topics not ready within {timeout_s:.0f} s: {sorted(missing)}")


def _ready_partitions(topics: list[dict[str, Any]]) -> dict[str, int]:
    """Of one broker's metadata: each topic that it lists with a leader for every partition, and how
    many partitions it has."""
    ready = {}
    for topic in topics:
        partitions = topic.get("partitions") or []
        leaders = [p.get("leader_id", p.get("leader", -1)) for p in partitions]
        if topic.get("error_code", 0) == 0 and leaders and all(x >= 0 for x in leaders):
            ready[str(topic.get("name") or topic.get("topic"))] = len(partitions)
    return ready


def _metadata_of_every_broker(admin: KafkaAdminClient, names: list[str]) -> list[list[dict[str, Any]]]:
    """The topics of ``names`` as each broker of the cluster lists them. kafka-python's public
    ``describe_topics`` asks one broker of its choosing; its connection manager, which knows every
    broker from the client's metadata, can ask each."""
    manager = admin._manager
    wanted = [MetadataRequest.MetadataRequestTopic(name=n) for n in names]

    async def ask_each() -> list[list[dict[str, Any]]]:
        answers = []
        for broker in manager.cluster.brokers():
            request = MetadataRequest(topics=wanted, allow_auto_topic_creation=False)
            response = await manager.send(request, node_id=broker.node_id)
            answers.append(response.to_dict()["topics"])
        return answers

    return list(manager.run(ask_each))


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


def apply_acls(
    bootstrap: str, rules: Iterable[acls.AclRule], security: KafkaSecuritySettings, *, timeout_s: float = 30.0
) -> int:
    """Create ``rules`` on the cluster (existing identical rules are kept) and wait until the broker
    lists them all; returns how many were sent.

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
        failed = result.get("failed") or []
        if failed:
            raise TransportError(
                f"{len(failed)} of {len(acls)} ACLs were refused by {bootstrap}, first: {failed[0]!r}; "
                "ACLs can only be created by a super user (the operator)"
            )
        _wait_for_acls(admin, acls, timeout_s)
    except KafkaError as e:
        raise TransportError(f"creating ACLs on {bootstrap} failed: {e}") from e
    finally:
        admin.close()
    return len(acls)


def _acl_key(acl: Any) -> tuple[str, ...]:
    pattern = acl.resource_pattern
    return (
        acl.principal,
        acl.host,
        acl.operation.name,
        acl.permission_type.name,
        pattern.resource_type.name,
        pattern.pattern_type.name,
        pattern.resource_name,
    )


def acls_in_force(admin: KafkaAdminClient) -> list[Any]:
    """Every ACL the broker ``admin`` asks applies now (kafka-python ``ACL`` objects)."""
    from kafka.admin import (  # noqa: PLC0415 - only the operator's command needs these
        ACLFilter,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        ResourcePatternFilter,
        ResourceType,
    )

    everything = ACLFilter(
        principal=None,
        host="*",
        operation=ACLOperation.ANY,
        permission_type=ACLPermissionType.ANY,
        resource_pattern=ResourcePatternFilter(ResourceType.ANY, None, ACLResourcePatternType.ANY),
    )
    found, error = admin.describe_acls(everything)
    if error is not None and getattr(error, "errno", 0) != 0:
        raise TransportError(f"listing the ACLs failed: {error}")
    return list(found)


def _wait_for_acls(admin: KafkaAdminClient, acls: list[Any], timeout_s: float) -> None:
    # A broker answers CreateAcls once the controller has committed them, and applies them to its own
    # authorizer a moment later, as it replays the metadata log (longer while it is busy creating
    # topics): a service started right after `acls apply` could be refused in between.
    want = {_acl_key(a) for a in acls}
    deadline = time.monotonic() + timeout_s
    while True:
        missing = want - {_acl_key(a) for a in acls_in_force(admin)}
        if not missing:
            return
        if time.monotonic() >= deadline:
            raise TransportError(
                f"{len(missing)} of {len(want)} ACLs created were still not in force after {timeout_s:.0f} s"
            )
        time.sleep(0.2)  # poll interval of a deadline loop
