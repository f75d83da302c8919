"""The router on a real broker: every event ends in exactly the inboxes the policy names, or in the
dead-letter topic with its reason, never twice and never lost, with one worker or two, across SIGKILL."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType

from schemas.envelope import MAX_RECORD_BYTES
from schemas.registry import RegistryDocument
from services.audit.chain import AuditEntry, Signer, next_entry, parse_line, principal, verify_lines
from services.bus.cluster import load_specs
from services.kernel import envelope, jsonx, policy, topics
from services.kernel.keystore import Keystore
from services.kernel.registry import sign_document
from tests.integration.buskit import Bus
from tests.integration.buskit import RouterProcess as Router
from tests.kit import CONTENT, DemoDomain, header, rewrite_body

pytestmark = pytest.mark.integration


def _signed(domain: DemoDomain, doc: RegistryDocument) -> bytes:
    keys: dict[str, Any] = {}
    for store in domain.trust.root_keystores()[:2]:
        keys.update(store.signing)
    return sign_document(doc, keys)


def _expected_inboxes(bus: Bus, sealed: envelope.SealedRecord) -> set[str]:
    return set().union(*policy.recipients(bus.domain.registry.document.policy, sealed.header).values())


def _delivered_exactly_once(bus: Bus, sealed: list[envelope.SealedRecord]) -> bool:
    """True once every event sits exactly once in each inbox it belongs to and nowhere else.
    Raises at the first duplicate or misdelivery (waiting longer cannot repair those)."""
    got = bus.inbox_ids()
    complete = True
    for record in sealed:
        expected = _expected_inboxes(bus, record)
        for participant, counts in got.items():
            n = counts.get(record.header.id, 0)
            assert n <= 1, f"{record.header.id} reached {participant} {n} times"
            assert participant in expected or n == 0, f"{record.header.id} reached {participant} wrongly"
            if participant in expected and n == 0:
                complete = False
    return complete


# --------------------------------------------------------------------------- one router for the module


@pytest.fixture(scope="module")
def bus(kafka_bootstrap: str, live_domain: DemoDomain) -> Bus:
    return Bus.create(kafka_bootstrap, f"t-router-{datetime.now(UTC):%H%M%S%f}.", live_domain)


@pytest.fixture(scope="module")
def router(bus: Bus, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Router]:
    log = Path(tmp_path_factory.mktemp("router")) / "router.log"
    worker = Router.started(bus, log)
    yield worker
    worker.stop()


def test_a_minor_a_dv_and_an_employment_lead_reach_exactly_the_inboxes_the_policy_names(
    bus: Bus, router: Router
) -> None:
    minor = bus.seal(category="sexual_assault", minor=True, urgency="immediate", phone="13900000001")
    dv = bus.seal(category="domestic_violence", town="mapo", phone="13900000002")
    work = bus.seal("womens_federation", category="employment_discrimination", town=None, phone="13900000003")
    bus.publish([minor, dv, work])

    bus.wait_for(lambda: _delivered_exactly_once(bus, [minor, dv, work]), what="deliveries")
    got = bus.inbox_ids()
    holders = {
        record.header.id: {p for p, counts in got.items() if counts.get(record.header.id)}
        for record in (minor, dv, work)
    }
    assert holders[minor.header.id] == {
        "police",
        "procuratorate",
        "civil_affairs",
        "womens_federation",
        "health",
        "hub",
    }
    assert holders[dv.header.id] == {"police", "womens_federation", "mediation.mapo", "hub"}
    assert holders[work.header.id] == {"hrss", "trade_union", "womens_federation", "procuratorate", "hub"}


def test_an_inbox_copy_is_the_original_record_with_its_key_and_cloudevents_headers(
    bus: Bus, router: Router
) -> None:
    sealed = bus.seal(phone="13900000009")
    bus.publish([sealed])
    bus.wait_for(lambda: _delivered_exactly_once(bus, [sealed]), what="delivery")
    copies = [
        r
        for r in bus.read_all([bus.names.inbox("police")])[bus.names.inbox("police")]
        if dict(r.headers).get("ce_id") == sealed.header.id.encode()
    ]
    assert len(copies) == 1
    assert copies[0].value == sealed.value
    assert copies[0].key == sealed.key
    assert dict(copies[0].headers)["ce_type"] == b"lead.reported"


def _reason_cases(bus: Bus) -> dict[str, tuple[bytes | None, bytes]]:
    """One record per reason the router can see, keyed by the reason it must be dead-lettered with."""
    d = bus.domain
    good = bus.seal(phone="13900000010")
    stranger = Keystore.generate("stranger")
    rogue = Keystore("police", signing={}, encryption=dict(d.keys("police").encryption))
    rogue_kid = rogue.add_signing_key()
    unknown_key = envelope.seal(
        header(id=envelope.new_event_id(), time=datetime.now(UTC), subject=good.header.subject),
        CONTENT,
        registry=d.registry,
        signer=rogue,
        signing_kid=rogue_kid,
    )
    not_permitted = bus.seal(
        "education", type="protection_order.decided", schema="protection_order.decided/1", phone="13900000011"
    )
    mismatch = rewrite_body(
        bus.seal(phone="13900000012").value,
        lambda h, s: (h, {**s, "details": {**s["details"], "recipients": s["details"]["recipients"][:-1]}}),
        d.keys("police"),
    )
    replayed_id = envelope.new_event_id()
    replayed = bus.seal(phone="13900000013", id=replayed_id)
    replay = bus.seal(phone="13900000013", id=replayed_id)  # same id, other bytes: a replay, not a retry
    return {
        "malformed": (b"k", b"not an envelope"),
        "too_large": (b"k", b"x" * (MAX_RECORD_BYTES + 1)),
        "unknown_sender": (
            good.key,
            rewrite_body(
                good.value,
                lambda h, s: (h.replace(b"urn:lianfang:police", b"urn:lianfang:stranger"), s),
                stranger,
            ),
        ),
        "unknown_key": (unknown_key.key, unknown_key.value),
        "bad_signature": (
            good.key,
            rewrite_body(good.value, lambda h, s: (h.replace(b'"urgent"', b'"routine"'), s)),
        ),
        "not_permitted": (not_permitted.key, not_permitted.value),
        "policy_mismatch": (good.key, mismatch),
        "replay": (replayed.key, replayed.value),
        "replay ": (replay.key, replay.value),  # the second one is the replay
    }


def _other_partition(bus: Bus, key: bytes) -> int:
    """A partition of the events topic other than the one the producers' partitioner gives ``key``."""
    n = bus.partitions(bus.names.events)
    return (topics.partition_for(key, n) + 1) % n


def _resigned(bus: Bus, phone: str, **changes: object) -> tuple[bytes, bytes]:
    """A police insider edits a valid event's clear header and signs it again; keyed by its subject,
    as a producer keys it. Returns (key, value)."""
    sealed = bus.seal(phone=phone)

    def edit(h: bytes, s: object) -> tuple[bytes, object]:
        return jsonx.compact_json({**json.loads(h), **changes}), s

    value = rewrite_body(sealed.value, edit, bus.domain.keys("police"))
    return str(changes.get("subject", sealed.header.subject)).encode(), value


def _letters(bus: Bus, values: set[bytes]) -> list[Any]:
    """The dead letters of these values, once there is one for each."""
    return bus.wait_for(
        lambda: len(dl := bus.letters_of(values)) >= len(values) and dl,
        what="dead letters",
    )


def test_each_reason_code_the_router_sees_reaches_the_deadletter_topic_with_that_code(
    bus: Bus, router: Router
) -> None:
    cases = _reason_cases(bus)
    bus.produce(cases.values())
    misplaced = bus.seal(phone="13900000016")
    bus.produce([(misplaced.key, misplaced.value)], partition=_other_partition(bus, misplaced.key))
    ours = {value for _key, value in cases.values()} | {misplaced.value}
    expected = Counter(reason.strip() for reason in cases) - Counter({"replay": 1})  # the first copy routes
    expected["misplaced"] = 1
    letters = bus.wait_for(
        lambda: len(dl := bus.letters_of(ours)) >= expected.total() and dl,
        what="dead letters",
    )
    reasons = Counter(dict(r.headers)["lianfang_reason"].decode() for r in letters)
    assert reasons == expected
    by_reason = {dict(r.headers)["lianfang_reason"].decode(): r for r in letters}
    malformed = by_reason["malformed"]
    headers = dict(malformed.headers)
    assert (malformed.value, headers["lianfang_value_bytes"]) == (b"", b"15"), "not an envelope: no copy"
    assert by_reason["bad_signature"].value in ours, "an envelope's letter carries the original bytes"
    assert headers["lianfang_source_topic"] == bus.names.events.encode()
    assert int(headers["lianfang_source_offset"]) >= 0
    assert datetime.fromisoformat(headers["lianfang_deadlettered_at"].decode()) <= datetime.now(UTC)
    assert router.metric("lianfang_router_deadletters_total", reason="bad_signature") >= 1


def test_an_event_whose_subject_is_not_a_pseudonym_is_dead_lettered_and_the_router_keeps_routing_the_leads_after_it(
    bus: Bus, router: Router
) -> None:
    hostile = [_resigned(bus, "13900000030", subject="张三"), _resigned(bus, "13900000031", subject="a b")]
    n = bus.partitions(bus.names.events)
    target = topics.partition_for(hostile[0][0], n)
    phones = (f"1390001{i:04d}" for i in range(10_000))
    same_partition = (p for p in phones if topics.partition_for(bus.domain.subject(p).encode(), n) == target)
    leads = [bus.seal(phone=next(same_partition)) for _ in range(3)]  # behind the hostile one
    bus.produce(hostile)
    bus.publish(leads)

    bus.wait_for(lambda: _delivered_exactly_once(bus, leads), what="the leads after the hostile events")
    letters = _letters(bus, {value for _key, value in hostile})
    assert {dict(r.headers)["lianfang_reason"] for r in letters} == {b"malformed"}
    assert [r.value for r in letters] == [b"", b""], "a name in the clear is not kept for 180 days"
    assert router.alive(), router.tail()


def test_a_record_that_unpacks_to_megabytes_is_dead_lettered_as_too_large_and_the_router_keeps_routing(
    bus: Bus, router: Router
) -> None:
    """A hostile producer's compressed batch passes the broker's size limit (it counts the batch as
    sent) and unpacks at the router to far more than any record may be, or than a dead letter could
    hold: copied into its dead letter, it failed the transaction again and again."""
    lead = bus.seal(phone="13900000040")
    n = bus.partitions(bus.names.events)
    key = lead.key
    huge = b"\0" * (8 * MAX_RECORD_BYTES)  # 4 MiB of zeros: a few KiB gzipped
    producer = KafkaProducer(
        bootstrap_servers=bus.bootstrap, compression_type="gzip", max_request_size=16 * MAX_RECORD_BYTES
    )
    try:
        producer.send(bus.names.events, key=key, value=huge, partition=topics.partition_for(key, n)).get(30)
    finally:
        producer.close()
    bus.publish([lead])  # behind it on its partition

    bus.wait_for(lambda: _delivered_exactly_once(bus, [lead]), what="the lead behind the huge record")
    (letter,) = _letters(bus, {huge})
    headers = dict(letter.headers)
    assert (headers["lianfang_reason"], letter.value) == (b"too_large", b"")
    assert headers["lianfang_value_bytes"] == str(len(huge)).encode()
    assert router.alive(), router.tail()


def test_producer_kafka_headers_never_reach_an_inbox(bus: Bus, router: Router) -> None:
    sealed = bus.seal(phone="13900000050")
    planted = [("victim_name", "张某某".encode()), ("ce_id_number", b"110101199003071234")]
    bus.publish([dataclasses.replace(sealed, headers=[*sealed.headers, *planted])])
    bus.wait_for(lambda: _delivered_exactly_once(bus, [sealed]), what="delivery")
    inboxes = [bus.names.inbox(p) for p in sorted(_expected_inboxes(bus, sealed))]
    copies = [r for records in bus.read_all(inboxes).values() for r in records if r.value == sealed.value]
    assert len(copies) == len(inboxes)
    for copy in copies:
        *mirrored, accepted = list(copy.headers)
        assert mirrored == envelope.kafka_headers(sealed.header)
        assert accepted[0] == envelope.ACCEPTED_AT_HEADER  # the broker's append time, the router's word
        accepted_at = envelope.accepted_at([accepted])
        assert accepted_at is not None
        assert abs(accepted_at - sealed.header.time) < timedelta(minutes=5)


def test_a_copy_of_an_event_on_another_partition_is_refused_as_misplaced(bus: Bus, router: Router) -> None:
    sealed = bus.seal(phone="13900000060")
    bus.publish([sealed])
    bus.wait_for(lambda: _delivered_exactly_once(bus, [sealed]), what="the original's delivery")
    bus.produce([(sealed.key, sealed.value)], partition=_other_partition(bus, sealed.key))
    letters = _letters(bus, {sealed.value})
    assert [dict(r.headers)["lianfang_reason"] for r in letters] == [b"misplaced"]
    assert _delivered_exactly_once(bus, [sealed]), "the copy reached no inbox"
    assert (router.metric("lianfang_router_deadletters_total", reason="misplaced") or 0) >= 1


def test_an_unknown_clear_header_field_is_dead_lettered(bus: Bus, router: Router) -> None:
    key, value = _resigned(bus, "13900000070", victim_phone="13800000000")
    bus.produce([(key, value)])
    letters = _letters(bus, {value})
    assert [dict(r.headers)["lianfang_reason"] for r in letters] == [b"malformed"]
    assert b"13800000000" not in b"".join(v for r in letters for _k, v in r.headers)
    inboxes = [bus.names.inbox(p) for p in bus.domain.registry.participant_ids()]
    assert not [r for records in bus.read_all(inboxes).values() for r in records if r.value == value]


def test_every_routing_decision_is_an_entry_of_a_signed_audit_chain_per_partition(
    bus: Bus, router: Router
) -> None:
    routed = bus.seal(category="domestic_violence", town="mapo", phone="13900000015")
    bus.publish([routed])
    bus.produce([(b"k", b"not an envelope either")])
    bus.wait_for(lambda: _delivered_exactly_once(bus, [routed]), what="delivery")

    def entries() -> list[AuditEntry]:
        lines = [r.value for r in bus.read_all([bus.names.audit])[bus.names.audit]]
        items = [parse_line(line) for line in lines]
        return [i for i in items if isinstance(i, AuditEntry)]

    mine = bus.wait_for(
        lambda: [e for e in entries() if e.object == routed.header.id], what="the route entry"
    )
    (entry,) = mine
    assert entry.action == "route"
    assert entry.actor.startswith("router/")
    assert principal(entry.actor) == "router"
    assert entry.subject == routed.header.subject
    assert set(entry.to or ()) == _expected_inboxes(bus, routed)
    assert any(e.action == "deadletter" and (e.object or "").startswith(bus.names.events) for e in entries())

    registry = bus.domain.registry
    lines = [r.value for r in bus.read_all([bus.names.audit])[bus.names.audit]]
    results = verify_lines(lines, keys=lambda who, kid, at: registry.signing_key(who, kid, at=at)).chains
    assert results
    assert all(r.ok for r in results), [str(r) for r in results if not r.ok]
    assert all(r.checkpoints_verified >= 1 for r in results if (r.actor or "").startswith("router/"))
    # The router's entries are unsigned; the checkpoint its transaction ends with vouches for them all.
    assert all(r.unproven == 0 for r in results if (r.actor or "").startswith("router/"))


def test_an_entry_police_forges_under_the_routers_actor_is_reported_forged_and_the_routers_chain_verifies(
    bus: Bus, router: Router
) -> None:
    """Every participant may append to the audit topic: police appends an entry, signed with its own
    valid key, to a router chain (the actor is predictable), and a line that does not parse."""
    routed = bus.seal(phone="13900000016")
    bus.publish([routed])
    registry = bus.domain.registry

    def genuine() -> list[AuditEntry]:
        lines = [r.value for r in bus.read_all([bus.names.audit])[bus.names.audit]]
        return [
            e for e in map(parse_line, lines) if isinstance(e, AuditEntry) and e.object == routed.header.id
        ]

    (head,) = bus.wait_for(genuine, what="the route entry")
    police = Signer.of(bus.domain.keys("police"), registry, datetime.now(UTC))
    forged = next_entry(
        head, actor=head.actor, action="route", at=datetime.now(UTC), object=head.object, signer=police
    )
    bus.produce([(head.actor.encode(), forged.to_line()), (head.actor.encode(), b'{"seq":')], bus.names.audit)

    lines = [r.value for r in bus.read_all([bus.names.audit])[bus.names.audit]]
    report = verify_lines(lines, keys=lambda who, kid, at: registry.signing_key(who, kid, at=at))
    assert report.status == "forged", [str(s) for s in report.set_aside]
    assert [(s.kind, s.actor, s.position) for s in report.set_aside] == [
        ("forged", head.actor, lines.index(forged.to_line()) + 1),
        ("unreadable", None, lines.index(b'{"seq":') + 1),
    ]
    (chain,) = [c for c in report.chains if c.actor == head.actor]
    assert chain.ok, str(chain)
    assert (chain.head_seq or 0) >= head.seq
    assert all(c.ok for c in report.chains), [str(c) for c in report.chains if not c.ok]


def test_a_byte_identical_copy_of_an_event_is_delivered_once_and_not_dead_lettered(
    bus: Bus, router: Router
) -> None:
    """A producer that retries after a lost acknowledgement sends the same bytes again."""
    sealed = bus.seal(phone="13900000014")
    bus.publish([sealed, sealed])
    bus.wait_for(lambda: (router.metric("lianfang_router_duplicates_total") or 0) >= 1, what="the duplicate")
    assert _delivered_exactly_once(bus, [sealed])
    assert not [r for r in bus.deadletters() if r.value == sealed.value]


def test_a_revocation_published_on_the_registry_topic_takes_effect_without_a_restart(
    bus: Bus, router: Router
) -> None:
    d = bus.domain
    now = datetime.now(UTC)
    doc = d.registry.document
    participants = []
    for p in doc.participants:
        if p.id == "justice":
            p = p.model_copy(
                update={
                    "keys": [
                        k.model_copy(update={"status": "revoked", "revoked_at": now})
                        if k.use == "sign"
                        else k
                        for k in p.keys
                    ]
                }
            )
        if p.id == "trade_union":
            p = p.model_copy(
                update={
                    "keys": [
                        k.model_copy(update={"status": "retired", "valid_until": now})
                        if k.use == "sign"
                        else k
                        for k in p.keys
                    ]
                }
            )
        participants.append(p)
    v2 = doc.model_copy(update={"version": doc.version + 1, "participants": participants})
    bus.produce([(b"registry", _signed(d, v2))], topic=bus.names.registry)
    bus.wait_for(lambda: router.metric("lianfang_registry_version", service="router") == v2.version, 60, "v2")

    revoked = bus.seal("justice", category="domestic_violence", phone="13900000020")
    retired = bus.seal("trade_union", category="employment_discrimination", town=None, phone="13900000021")
    bus.publish([revoked, retired])
    ours = {revoked.value, retired.value}
    letters = bus.wait_for(lambda: len(dl := bus.letters_of(ours)) >= 2 and dl, what="dead letters")
    assert {dict(r.headers)["lianfang_reason"] for r in letters} == {b"key_revoked", b"key_expired"}


def test_topics_come_from_the_declarative_list_with_their_partitions_and_compaction(bus: Bus) -> None:
    specs = {
        s.name: s for s in load_specs(bus.domain.registry.participant_ids(), brokers=1, prefix=bus.prefix)
    }
    admin = KafkaAdminClient(bootstrap_servers=bus.bootstrap)
    try:
        described = {t["name"]: t for t in admin.describe_topics(list(specs))}
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, bus.names.registry)])
    finally:
        admin.close()
    for name, spec in specs.items():
        assert len(described[name]["partitions"]) == spec.partitions, name
    assert len(described[bus.names.events]["partitions"]) == len(
        described[bus.names.router_replay]["partitions"]
    )
    assert "compact" in json.dumps(str(configs))


# --------------------------------------------------------------------------- routers of their own


def test_sigkill_of_a_router_under_load_loses_and_duplicates_nothing(
    kafka_bootstrap: str, live_domain: DemoDomain, tmp_path: Path
) -> None:
    bus = Bus.create(kafka_bootstrap, f"t-kill-{datetime.now(UTC):%H%M%S%f}.", live_domain)
    sealed = [
        bus.seal(category=("domestic_violence", "sexual_assault")[i % 2], phone=f"139{i:08d}")
        for i in range(1500)
    ]
    bus.publish(sealed)
    group = f"{bus.prefix}router"
    first = Router(bus, live_domain.home, tmp_path / "router-1.log", group)
    try:
        # Under load, and past its first commits: the counter moves as records are handled, before
        # their transactions (one a partition, side by side) commit.
        bus.wait_for(
            lambda: (
                (first.metric("lianfang_router_events_routed_total", type="lead.reported") or 0) >= 300
                and any(sum(c.values()) for c in bus.inbox_ids().values())
            ),
            what="the first worker to be under load",
        )
    finally:
        first.kill()
    routed_before_kill = sum(sum(c.values()) for c in bus.inbox_ids().values())
    assert routed_before_kill > 0, "the router was killed before it delivered anything"

    second = Router(bus, live_domain.home, tmp_path / "router-2.log", group)
    try:
        bus.wait_for(lambda: _delivered_exactly_once(bus, sealed), 180, "every event delivered once")
        assert bus.deadletters() == [], "a restart must not mistake its own redelivery for a replay"
        # The successor took over the replay window: an id seen before the kill is still refused.
        replay = bus.seal(phone="13900000000", id=sealed[0].header.id)
        bus.publish([replay])
        letters = bus.wait_for(lambda: bus.deadletters(), 90, "the replay's dead letter")
        assert [dict(r.headers)["lianfang_reason"] for r in letters] == [b"replay"]
    finally:
        second.stop()
    # Each partition's audit chain runs on across the kill: one route entry per event, none twice.
    lines = [r.value for r in bus.read_all([bus.names.audit])[bus.names.audit]]
    assert all(r.ok for r in verify_lines(lines).chains), [str(r) for r in verify_lines(lines).chains]
    routes = Counter(
        e.object for e in map(parse_line, lines) if isinstance(e, AuditEntry) and e.action == "route"
    )
    assert routes == Counter(s.header.id for s in sealed)


def test_two_router_workers_share_the_partitions_and_deliver_every_event_once(
    kafka_bootstrap: str, live_domain: DemoDomain, tmp_path: Path
) -> None:
    bus = Bus.create(kafka_bootstrap, f"t-scale-{datetime.now(UTC):%H%M%S%f}.", live_domain)
    group = f"{bus.prefix}router"
    workers = [Router(bus, live_domain.home, tmp_path / f"router-{i}.log", group) for i in (1, 2)]
    try:
        for w in workers:
            bus.wait_for(
                lambda w=w: w.metric("lianfang_registry_version", service="router"), 60, "worker start"
            )
        # Both in the group before any record exists: a worker that joins late finds the other has
        # routed everything (the test is about sharing, not about the race of joining).
        bus.wait_for(lambda: bus.group_members(group) == 2, 90, "both workers in the group")
        sealed = [bus.seal(phone=f"137{i:08d}") for i in range(400)]
        bus.publish(sealed)
        bus.wait_for(lambda: _delivered_exactly_once(bus, sealed), 120, "every event delivered once")
        shares = [w.metric("lianfang_router_events_routed_total", type="lead.reported") or 0 for w in workers]
    finally:
        for w in workers:
            w.stop()
    assert all(share > 0 for share in shares), f"both workers take work: {shares}"
    assert sum(shares) == len(sealed)


def test_an_expired_registry_pauses_routing_and_a_newer_one_resumes_it(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    issued = datetime.now(UTC) - timedelta(days=91)  # a 90-day registry that expired a day ago
    domain = DemoDomain.create(tmp_path / ".lianfang", now=issued)
    bus = Bus.create(kafka_bootstrap, f"t-pause-{datetime.now(UTC):%H%M%S%f}.", domain)
    worker = Router(bus, domain.home, tmp_path / "router.log", f"{bus.prefix}router")
    try:
        bus.wait_for(lambda: worker.metric("lianfang_router_paused") == 1, 60, "the router to pause")
        sealed = bus.seal(phone="13600000001")
        bus.publish([sealed])
        assert worker.metric("lianfang_router_paused") == 1
        assert bus.deadletters() == [], "events wait while the registry has expired; none is refused"

        now = datetime.now(UTC)
        fresh = domain.registry.document.model_copy(
            update={"version": 2, "issued": now, "expires": now + timedelta(days=30)}
        )
        bus.produce([(b"registry", _signed(domain, fresh))], topic=bus.names.registry)
        bus.wait_for(lambda: _delivered_exactly_once(bus, [sealed]), 60, "routing to resume")
        assert worker.metric("lianfang_router_paused") == 0
    finally:
        worker.stop()


def test_an_expired_registry_is_refused_as_an_update(bus: Bus, router: Router) -> None:
    d = bus.domain
    past = datetime.now(UTC) - timedelta(days=1)
    stale = d.registry.document.model_copy(
        update={"version": 99, "issued": past - timedelta(days=1), "expires": past}
    )
    bus.produce([(b"registry", _signed(d, stale))], topic=bus.names.registry)
    bus.wait_for(
        lambda: router.metric(
            "lianfang_registry_updates_rejected_total", service="router", reason="registry_expired"
        ),
        60,
        "the stale registry to be refused",
    )
    assert router.metric("lianfang_registry_version", service="router") < 99


def test_a_router_routes_again_after_the_broker_went_down_and_came_back(
    live_domain: DemoDomain, tmp_path: Path
) -> None:
    from deploy.kafka.local import running

    with running(tmp_path / "kafka", discard=True) as cluster:
        bus = Bus.create(cluster.bootstrap, "t-outage.", live_domain)
        worker = Router(bus, live_domain.home, tmp_path / "router.log", f"{bus.prefix}router")
        try:
            before = [bus.seal(phone=f"135{i:08d}") for i in range(50)]
            bus.publish(before)
            bus.wait_for(lambda: _delivered_exactly_once(bus, before), 90, "deliveries before the outage")
            during = [bus.seal(phone=f"133{i:08d}") for i in range(300)]
            failures: list[BaseException] = []

            def publish_during() -> None:
                try:
                    bus.publish(during)
                except BaseException as e:  # reported by the test thread below
                    failures.append(e)

            publisher = threading.Thread(target=publish_during)
            publisher.start()  # the router is mid-stream when the broker dies
            bus.wait_for(
                lambda: (
                    (worker.metric("lianfang_router_events_routed_total", type="lead.reported") or 0) > 60
                ),
                60,
                "the router to be busy",
            )
            cluster.kill_node(1)
            cluster.restart_node(1)
            publisher.join(timeout=150)
            assert not publisher.is_alive(), "the publisher did not finish within 150 s of the restart"
            assert not failures, f"the test's own publisher lost events in the outage: {failures[0]!r}"
            after = [bus.seal(phone=f"134{i:08d}") for i in range(50)]
            bus.publish(after)
            everything = before + during + after
            try:
                bus.wait_for(
                    lambda: _delivered_exactly_once(bus, everything), 240, "deliveries after the outage"
                )
            except AssertionError as e:
                routed = worker.metric("lianfang_router_events_routed_total", type="lead.reported")
                raise AssertionError(f"{e}; the router had routed {routed} events:\n{worker.tail()}") from e
        finally:
            worker.stop()
