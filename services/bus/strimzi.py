"""The bus's topics and ACLs as Strimzi resources: ``KafkaTopic`` and ``KafkaUser`` (``lianfang k8s``).

The same data as ``lianfang topics apply`` / ``acls apply`` (:func:`services.bus.cluster.load_specs`,
:func:`services.kernel.principals.deployment_rules`), written for Strimzi's topic and user operators
instead of sent to a broker. Pure: specs and rules in, resource dicts out.

Kubernetes names allow lower-case letters, digits, ``-`` and ``.``; a topic keeps its name in
``spec.topicName``, but a ``KafkaUser``'s name *is* its SCRAM user name, so a principal with ``_``
(``womens_federation``) logs in on Strimzi as :func:`user_name` of it (``womens-federation``), and its
ACLs name that principal. Nothing in the bus ties a Kafka principal to a participant id: the
participant is proven by its signature, the principal only decides what the connection may touch.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from typing import Any, Final

from services.bus.cluster import TopicSpec
from services.kernel.acls import AclRule

API_VERSION: Final = "kafka.strimzi.io/v1beta2"
CLUSTER_LABEL: Final = "strimzi.io/cluster"
_NOT_IN_A_NAME = re.compile(r"[^a-z0-9.-]")

_RESOURCE = {"TOPIC": "topic", "GROUP": "group", "TRANSACTIONAL_ID": "transactionalId", "CLUSTER": "cluster"}
_PATTERN = {"LITERAL": "literal", "PREFIXED": "prefix"}
_OPERATION = {
    "READ": "Read",
    "WRITE": "Write",
    "CREATE": "Create",
    "DELETE": "Delete",
    "ALTER": "Alter",
    "DESCRIBE": "Describe",
    "DESCRIBE_CONFIGS": "DescribeConfigs",
    "ALTER_CONFIGS": "AlterConfigs",
}


def resource_name(name: str) -> str:
    """A Kubernetes object name for a topic or principal: lower case, ``_`` → ``-``."""
    return _NOT_IN_A_NAME.sub("-", name.lower())


def user_name(principal: str) -> str:
    """The SCRAM user (and ``KafkaUser`` name) of ``User:<name>`` or ``<name>`` on Strimzi."""
    return resource_name(principal.removeprefix("User:"))


def _metadata(name: str, cluster: str, namespace: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {CLUSTER_LABEL: cluster}}
    if namespace:
        meta["namespace"] = namespace
    return meta


def kafka_topics(
    specs: Iterable[TopicSpec], *, cluster: str, namespace: str | None = None
) -> list[dict[str, Any]]:
    """One ``KafkaTopic`` per topic, its real name in ``spec.topicName``."""
    return [
        {
            "apiVersion": API_VERSION,
            "kind": "KafkaTopic",
            "metadata": _metadata(resource_name(spec.name), cluster, namespace),
            "spec": {
                "topicName": spec.name,
                "partitions": spec.partitions,
                "replicas": spec.replication,
                "config": dict(sorted(spec.configs.items())),
            },
        }
        for spec in specs
    ]


def kafka_users(
    rules: Iterable[AclRule], *, cluster: str, namespace: str | None = None, principals: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """One ``KafkaUser`` (SCRAM-SHA-512, simple authorization) per principal of ``rules``, plus any in
    ``principals`` that has no rule (a login that may do nothing yet)."""
    by_user: dict[str, dict[tuple[str, str, str], list[str]]] = defaultdict(lambda: defaultdict(list))
    for rule in sorted(rules):
        key = (_RESOURCE[rule.resource], rule.name, _PATTERN[rule.pattern])
        by_user[user_name(rule.principal)][key].append(_OPERATION[rule.operation])
    for principal in principals:
        by_user.setdefault(user_name(principal), defaultdict(list))
    users = []
    for name, grants in sorted(by_user.items()):
        acls = []
        for (kind, target, pattern), operations in sorted(grants.items()):
            resource: dict[str, Any] = {"type": kind}
            if kind != "cluster":
                resource |= {"name": target, "patternType": pattern}
            acls.append(
                {"resource": resource, "operations": sorted(operations), "host": "*", "type": "allow"}
            )
        users.append(
            {
                "apiVersion": API_VERSION,
                "kind": "KafkaUser",
                "metadata": _metadata(name, cluster, namespace),
                "spec": {
                    "authentication": {"type": "scram-sha-512"},
                    "authorization": {"type": "simple", "acls": acls},
                },
            }
        )
    return users


def rules_of(users: Iterable[dict[str, Any]]) -> set[tuple[str, str, str, str, str]]:
    """The ACL rules ``users`` grant, as ``(principal, resource, pattern, name, operation)`` in Kafka's
    terms: to compare with what ``lianfang acls apply`` creates on a broker."""
    resource = {v: k for k, v in _RESOURCE.items()}
    pattern = {v: k for k, v in _PATTERN.items()}
    operation = {v: k for k, v in _OPERATION.items()}
    out = set()
    for user in users:
        principal = f"User:{user['metadata']['name']}"
        for acl in user["spec"]["authorization"]["acls"]:
            res = acl["resource"]
            for op in acl["operations"]:
                out.add(
                    (
                        principal,
                        resource[res["type"]],
                        pattern[res["patternType"]],
                        res["name"],
                        operation[op],
                    )
                )
    return out
