"""ACLs generated from the registry: each participant reads only its own inbox; only the router writes any."""

from __future__ import annotations

import pytest

from services.bus import cluster
from services.kernel.acls import allows, generate
from services.kernel.topics import TopicNames, inbox
from services.simulator import district

pytestmark = pytest.mark.unit

PARTICIPANTS = [pid for pid, _zh, _en in district.participants()]
RULES = generate(PARTICIPANTS)
EVERYONE = [*PARTICIPANTS, "stranger"]
READERS = [p for p in PARTICIPANTS if p != "router"]


def test_education_cannot_read_the_police_inbox() -> None:
    assert not allows(RULES, "User:education", "READ", "TOPIC", inbox("police"))
    assert not allows(RULES, "User:education", "DESCRIBE", "TOPIC", inbox("police"))
    assert not allows(RULES, "User:education", "READ", "GROUP", "lianfang-inbox-police")


@pytest.mark.parametrize("participant", READERS)
def test_a_participant_reads_its_own_inbox_with_its_own_group_and_writes_events(participant: str) -> None:
    me = f"User:{participant}"
    assert allows(RULES, me, "READ", "TOPIC", inbox(participant))
    assert allows(RULES, me, "READ", "GROUP", f"lianfang-inbox-{participant}")
    assert allows(RULES, me, "READ", "GROUP", f"lianfang-inbox-{participant}.console")
    assert allows(RULES, me, "WRITE", "TOPIC", "lianfang.events.v1")
    assert not allows(RULES, me, "READ", "TOPIC", "lianfang.events.v1")


@pytest.mark.parametrize("participant", READERS)
def test_a_participant_may_report_an_unreadable_event_but_not_read_the_dead_letters(participant: str) -> None:
    me = f"User:{participant}"
    assert allows(RULES, me, "WRITE", "TOPIC", "lianfang.deadletter.v1")
    assert not allows(RULES, me, "READ", "TOPIC", "lianfang.deadletter.v1")


@pytest.mark.parametrize("reader", ["console", "cli", "webhook", "my-app"])
def test_every_inbox_reader_s_own_group_is_within_the_participant_s_prefix(reader: str) -> None:
    assert allows(RULES, "User:coordinators", "READ", "GROUP", f"lianfang-inbox-coordinators.{reader}")
    assert not allows(RULES, "User:police", "READ", "GROUP", f"lianfang-inbox-coordinators.{reader}")


@pytest.mark.parametrize("principal", EVERYONE)
def test_nobody_but_the_router_writes_an_inbox(principal: str) -> None:
    writes = [p for p in PARTICIPANTS if allows(RULES, f"User:{principal}", "WRITE", "TOPIC", inbox(p))]
    assert writes == (PARTICIPANTS if principal == "router" else [])


@pytest.mark.parametrize("principal", EVERYONE)
def test_nobody_reads_an_inbox_that_is_not_their_own(principal: str) -> None:
    reads = [p for p in PARTICIPANTS if allows(RULES, f"User:{principal}", "READ", "TOPIC", inbox(p))]
    assert reads == ([principal] if principal in READERS else [])


def test_a_participant_cannot_use_another_participants_group_even_by_prefix() -> None:
    # "mediation.li" would be a prefix of "mediation.liqiao" and "mediation.lisui": groups end in a dot.
    rules = generate(["mediation.li", "mediation.liqiao"])
    assert not allows(rules, "User:mediation.li", "READ", "GROUP", "lianfang-inbox-mediation.liqiao")
    assert not allows(rules, "User:mediation.li", "READ", "TOPIC", inbox("mediation.liqiao"))


def test_the_router_reads_events_and_writes_dead_letters_and_its_own_transactions() -> None:
    r = "User:router"
    assert allows(RULES, r, "READ", "TOPIC", "lianfang.events.v1")
    assert allows(RULES, r, "READ", "GROUP", "lianfang-router")
    assert allows(RULES, r, "WRITE", "TOPIC", "lianfang.deadletter.v1")
    assert allows(RULES, r, "WRITE", "TOPIC", "lianfang.router.replay.v1")
    assert allows(RULES, r, "WRITE", "TRANSACTIONAL_ID", "lianfang-router.lianfang.events.v1.3")
    assert not allows(RULES, r, "READ", "TOPIC", inbox("police"))
    assert not allows(RULES, r, "WRITE", "TOPIC", "lianfang.events.v1")


def test_the_hub_reads_its_inbox_writes_events_and_owns_its_faust_topics() -> None:
    h = "User:hub"
    assert allows(RULES, h, "READ", "TOPIC", inbox("hub"))
    assert allows(RULES, h, "WRITE", "TOPIC", "lianfang.events.v1")
    assert allows(RULES, h, "CREATE", "TOPIC", "lianfang-hub-victims-changelog")
    assert allows(RULES, h, "READ", "GROUP", "lianfang-hub")
    assert allows(RULES, h, "WRITE", "TOPIC", "lianfang.hub.clock.v1")
    assert allows(RULES, h, "WRITE", "TOPIC", "lianfang.deadletter.v1")
    assert not allows(RULES, h, "READ", "TOPIC", inbox("coordinators"))
    assert not any(r.principal != h and r.name.startswith("lianfang-hub") for r in RULES)


def test_only_the_router_participants_and_the_timestamp_service_have_rules_and_nobody_has_cluster_rights() -> (
    None
):
    assert {r.principal for r in RULES} == {f"User:{p}" for p in PARTICIPANTS} | {"User:timestamp"}
    assert not [r for r in RULES if r.resource == "CLUSTER"]
    assert "User:operator" not in {r.principal for r in RULES}


def test_only_the_timestamp_service_and_the_operator_may_write_the_registry_topic() -> None:
    writers = {r.principal for r in RULES if r.operation == "WRITE" and r.name == "lianfang.registry.v1"}
    assert writers == {"User:timestamp"}
    assert allows(RULES, "User:timestamp", "READ", "TOPIC", "lianfang.registry.v1")
    assert not allows(RULES, "User:timestamp", "WRITE", "TOPIC", "lianfang.events.v1")


def test_a_topic_prefix_moves_every_rule_into_its_namespace() -> None:
    names = TopicNames("t-1.")
    rules = generate(["police", "hub"], names)
    assert allows(rules, "User:police", "READ", "TOPIC", "t-1." + inbox("police"))
    assert allows(rules, "User:router", "WRITE", "TOPIC", "t-1." + inbox("police"))
    assert not allows(rules, "User:router", "WRITE", "TOPIC", inbox("police"))
    assert allows(rules, "User:police", "READ", "GROUP", "t-1.lianfang-inbox-police")


def test_the_routers_registry_entry_gives_it_router_rules_only() -> None:
    rules = generate(["police", "router"])
    assert not allows(rules, "User:router", "READ", "TOPIC", inbox("router"))
    assert not allows(rules, "User:router", "WRITE", "TOPIC", "lianfang.events.v1")
    assert allows(rules, "User:router", "READ", "TOPIC", "lianfang.events.v1")
    assert allows(rules, "User:router", "WRITE", "TOPIC", "lianfang.audit.v1")


def test_rules_become_kafka_python_acls() -> None:
    from kafka.admin import ACLOperation, ACLResourcePatternType, ResourceType

    rule = next(r for r in RULES if r.pattern == "PREFIXED" and r.resource == "TOPIC")
    acl = cluster.acl_of(rule)
    assert acl.principal == rule.principal
    assert acl.operation == ACLOperation[rule.operation]
    assert acl.resource_pattern.resource_type == ResourceType.TOPIC
    assert acl.resource_pattern.pattern_type == ACLResourcePatternType.PREFIXED
