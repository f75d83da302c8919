"""Kafka ACLs generated from the registry, as data: who may read and write which topic, group and id.

Pure: :func:`generate` takes participant ids and topic names and returns :class:`AclRule` values; the
same rules answer "may this principal do that?" offline (:func:`allows`, as Kafka's StandardAuthorizer
decides for ALLOW-only rules); :func:`services.bus.cluster.apply_acls` writes them to a cluster as the
operator.

The shape (``docs/topics.md`` lists it beside every topic):

- each participant ``User:<id>`` may WRITE ``lianfang.events.v1``, READ only ``lianfang.inbox.<id>.v1``
  with its own consumer groups (``lianfang-inbox-<id>`` and the prefix ``lianfang-inbox-<id>.``),
  READ the signed registry topic, WRITE its audit entries to ``lianfang.audit.v1`` and WRITE
  ``lianfang.deadletter.v1`` (its inbox readers' problem records about events they cannot open);
- the router (``User:router``) reads events and writes every inbox and the dead letters; its
  transactional ids and replay-state topic are its own (prefix ``<group>.``). It is in the registry
  for the key that signs its audit checkpoints, but no rule routes to it: it gets no participant rules;
- the hub (``User:hub``, also a participant) reads its inbox and writes events, and owns the faust
  internal topics, groups and its ``lianfang.hub.*`` topics;
- the timestamp service (``User:timestamp``) reads the registry topic and writes its freshness
  statements there (key ``timestamp``); a record it writes under the ``registry`` key would still
  have to verify against the roots;
- ``User:operator`` is a super user on the broker and needs no rule here.

Nobody but the router may write an inbox; nobody may read another participant's inbox.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from services.kernel import ids
from services.kernel.topics import TopicNames

if TYPE_CHECKING:
    from services.kernel.registry import Registry

ResourceKind = Literal["TOPIC", "GROUP", "TRANSACTIONAL_ID", "CLUSTER"]
PatternKind = Literal["LITERAL", "PREFIXED"]
Operation = Literal[
    "READ", "WRITE", "CREATE", "DELETE", "ALTER", "DESCRIBE", "DESCRIBE_CONFIGS", "ALTER_CONFIGS"
]

ROUTER_GROUP: Final = "lianfang-router"
HUB_APP_ID: Final = "lianfang-hub"
TIMESTAMP_PRINCIPAL: Final = "timestamp"
CLUSTER_NAME: Final = "kafka-cluster"
DEFAULT_NAMES: Final = TopicNames()

# Kafka: READ, WRITE, DELETE and ALTER each imply DESCRIBE; ALTER_CONFIGS implies DESCRIBE_CONFIGS.
_IMPLIES: Final[dict[str, frozenset[str]]] = {
    "DESCRIBE": frozenset({"DESCRIBE", "READ", "WRITE", "DELETE", "ALTER"}),
    "DESCRIBE_CONFIGS": frozenset({"DESCRIBE_CONFIGS", "ALTER_CONFIGS"}),
}


@dataclass(frozen=True, slots=True, order=True)
class AclRule:
    """One ALLOW rule: ``principal`` may do ``operation`` on the resource (from any host)."""

    principal: str
    resource: ResourceKind
    pattern: PatternKind
    name: str
    operation: Operation

    def matches(self, resource: ResourceKind, name: str) -> bool:
        if resource != self.resource:
            return False
        return name == self.name if self.pattern == "LITERAL" else name.startswith(self.name)


def user(name: str) -> str:
    return f"User:{name}"


def participant_group(participant: str, names: TopicNames = DEFAULT_NAMES) -> str:
    """The consumer group of a participant's inbox readers (``services.sdk.client``); each reader of
    one participant (console, ``lianfang inbox``, webhooks, an agency's application) adds ``.<reader>``."""
    return f"{names.prefix}lianfang-inbox-{participant}"


def inbox_prefix(names: TopicNames = DEFAULT_NAMES) -> str:
    """What every inbox topic's name starts with (``lianfang.inbox.``)."""
    return names.inbox("\0").split("\0", 1)[0]


def _rules(
    principal: str, resource: ResourceKind, pattern: PatternKind, name: str, *ops: Operation
) -> list[AclRule]:
    return [AclRule(principal, resource, pattern, name, op) for op in ops]


def participant_rules(participant: str, names: TopicNames = DEFAULT_NAMES) -> list[AclRule]:
    """Write events, read only its own inbox (own groups) and the registry; write audit entries and
    problem records (the dead-letter topic)."""
    me = user(participant)
    group = participant_group(participant, names)
    return [
        *_rules(me, "TOPIC", "LITERAL", names.events, "WRITE", "DESCRIBE"),
        *_rules(me, "TOPIC", "LITERAL", names.inbox(participant), "READ", "DESCRIBE"),
        *_rules(me, "TOPIC", "LITERAL", names.registry, "READ", "DESCRIBE"),
        *_rules(me, "TOPIC", "LITERAL", names.audit, "WRITE", "DESCRIBE"),
        *_rules(me, "TOPIC", "LITERAL", names.deadletter, "WRITE", "DESCRIBE"),
        *_rules(me, "GROUP", "LITERAL", group, "READ", "DESCRIBE"),
        *_rules(me, "GROUP", "PREFIXED", group + ".", "READ", "DESCRIBE"),
    ]


def router_rules(
    names: TopicNames = DEFAULT_NAMES, *, router: str = ids.ROUTER, group_id: str = ROUTER_GROUP
) -> list[AclRule]:
    """Read events and the registry, write every inbox and the dead letters, own its EOS state."""
    me = user(router)
    return [
        *_rules(me, "TOPIC", "LITERAL", names.events, "READ", "DESCRIBE"),
        *_rules(me, "TOPIC", "LITERAL", names.registry, "READ", "DESCRIBE"),
        *_rules(me, "TOPIC", "PREFIXED", inbox_prefix(names), "WRITE", "DESCRIBE"),
        *_rules(me, "TOPIC", "LITERAL", names.deadletter, "WRITE", "DESCRIBE"),
        *_rules(me, "TOPIC", "LITERAL", names.router_replay, "READ", "WRITE", "DESCRIBE"),
        *_rules(me, "TOPIC", "LITERAL", names.audit, "WRITE", "DESCRIBE"),
        *_rules(me, "GROUP", "LITERAL", group_id, "READ", "DESCRIBE"),
        *_rules(me, "GROUP", "PREFIXED", group_id + ".", "READ", "DESCRIBE"),
        # services.bus.eos: transactional id "<group>.worker-<random>".
        *_rules(me, "TRANSACTIONAL_ID", "PREFIXED", group_id + ".", "WRITE", "DESCRIBE"),
    ]


def hub_rules(
    names: TopicNames = DEFAULT_NAMES, *, hub: str = ids.HUB, app_id: str = HUB_APP_ID
) -> list[AclRule]:
    """Beyond its participant rules (which let it write the dead letters of the inbox records it cannot
    handle, as every participant's readers write theirs): its own topics and faust's internal ones."""
    me = user(hub)
    internal: list[Operation] = ["READ", "WRITE", "CREATE", "DESCRIBE", "DESCRIBE_CONFIGS"]
    return [
        *_rules(me, "TOPIC", "PREFIXED", names.prefix + "lianfang.hub.", "READ", "WRITE", "DESCRIBE"),
        *_rules(me, "TOPIC", "PREFIXED", app_id, *internal),
        *_rules(me, "GROUP", "PREFIXED", app_id, "READ", "DESCRIBE"),
        *_rules(me, "TRANSACTIONAL_ID", "PREFIXED", app_id, "WRITE", "DESCRIBE"),
    ]


def timestamp_rules(
    names: TopicNames = DEFAULT_NAMES, *, principal: str = TIMESTAMP_PRINCIPAL
) -> list[AclRule]:
    """Read the registry topic (to name the newest registry) and write statements to it."""
    return _rules(user(principal), "TOPIC", "LITERAL", names.registry, "READ", "WRITE", "DESCRIBE")


def generate(
    participants: Iterable[str],
    names: TopicNames = DEFAULT_NAMES,
    *,
    router: str = ids.ROUTER,
    router_group: str = ROUTER_GROUP,
    hub: str = ids.HUB,
    hub_app_id: str = HUB_APP_ID,
) -> list[AclRule]:
    """Every rule of a bus whose participants are ``participants``, sorted and without duplicates."""
    ids = list(dict.fromkeys(participants))
    rules: set[AclRule] = set()
    for pid in ids:
        if pid != router:  # the router's registry entry holds only the key of its audit checkpoints
            rules.update(participant_rules(pid, names))
    rules.update(router_rules(names, router=router, group_id=router_group))
    if hub in ids:
        rules.update(hub_rules(names, hub=hub, app_id=hub_app_id))
    rules.update(timestamp_rules(names))
    return sorted(rules)


def from_registry(registry: Registry, names: TopicNames = DEFAULT_NAMES, **kwargs: str) -> list[AclRule]:
    """:func:`generate` for the participants of a verified registry."""
    return generate(registry.participant_ids(), names, **kwargs)


def allows(
    rules: Iterable[AclRule], principal: str, operation: Operation, resource: ResourceKind, name: str
) -> bool:
    """Whether ALLOW-only ``rules`` grant ``operation`` on a resource (no super users, no wildcards)."""
    granting = _IMPLIES.get(operation, frozenset({operation}))
    return any(
        r.principal == principal and r.operation in granting and r.matches(resource, name) for r in rules
    )
