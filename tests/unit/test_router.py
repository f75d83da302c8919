"""The router's per-record handling without Kafka: a hostile participant's record is dead-lettered with
its reason code and never stops the router; what reaches an inbox carries only headers the router
derived from the verified envelope. Each adversarial row names its attack."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError
from hypothesis import given
from hypothesis import strategies as st
from kafka.partitioner.default import murmur2 as kafka_murmur2
from prometheus_client import CollectorRegistry

from services.audit.chain import next_entry, verify_lines
from services.bus.eos import Output, PartitionState
from services.bus.registry_follower import RegistryInForce
from services.kernel import envelope, jsonx, topics
from services.kernel.errors import REASON_CODES, ReasonCode, TransportError, UntrustedInputError
from services.kernel.registry import Registry
from services.router import app, core
from services.router.metrics import RouterMetrics
from tests.kit import NOW, DemoDomain, header, rewrite_body

pytestmark = pytest.mark.unit

PARTITIONS = 12
EVENTS = "lianfang.events.v1"


@dataclass
class Record:
    """What the router reads from aiokafka: the fields of a ``ConsumerRecord`` it uses."""

    value: bytes
    key: bytes | None
    partition: int
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    topic: str = EVENTS
    offset: int = 7
    timestamp: int = int(NOW.timestamp() * 1000)  # when the broker took it (ms)
    timestamp_type: int = app.LOG_APPEND_TIME


def _sealed(d: DemoDomain, phone: str = "13800000000", **fields: Any) -> envelope.SealedRecord:
    fields.setdefault("subject", d.subject(phone))
    return envelope.seal(header(**fields), _content(), registry=d.registry, signer=d.keys("police"))


def _content() -> dict[str, dict[str, Any]]:
    return {"triage": {"category": "domestic_violence"}, "details": {"narrative": "..."}}


def _placed(value: bytes, key: bytes, **extra: Any) -> Record:
    """A record where the producers' default partitioner puts it."""
    return Record(value, key, topics.partition_for(key, PARTITIONS), **extra)


def _resigned(d: DemoDomain, **changes: object) -> Record:
    """A police insider edits the clear header and signs again; the key stays the original subject."""
    sealed = _sealed(d, phone="13800000001")

    def edit(h: bytes, s: object) -> tuple[bytes, object]:
        return jsonx.compact_json({**json.loads(h), **changes}), s

    return _placed(rewrite_body(sealed.value, edit, d.keys("police")), sealed.key)


def _keyed_by_subject(d: DemoDomain, subject: str) -> Record:
    """As above, with the Kafka key set to the forged subject, as a producer would key it."""
    record = _resigned(d, subject=subject)
    return _placed(record.value, subject.encode())


def _misplaced(d: DemoDomain) -> Record:
    sealed = _sealed(d, phone="13800000002")
    right = topics.partition_for(sealed.key, PARTITIONS)
    return Record(sealed.value, sealed.key, (right + 1) % PARTITIONS)


@dataclass
class Case:
    name: str
    reason: ReasonCode
    build: Callable[[DemoDomain], Record]


CASES = [
    Case(
        "a record that unpacks to megabytes is dead-lettered as too_large, without its bytes",
        "too_large",
        lambda d: _placed(b"\0" * (4 * envelope.MAX_RECORD_BYTES), b"k"),
    ),
    Case(
        "a subject in Chinese characters is dead-lettered as malformed",
        "malformed",
        lambda d: _keyed_by_subject(d, "张三"),
    ),
    Case(
        "a subject with a space is dead-lettered as malformed",
        "malformed",
        lambda d: _keyed_by_subject(d, "a b"),
    ),
    Case(
        "an unknown clear-header field is dead-lettered as malformed",
        "malformed",
        lambda d: _resigned(d, victim_phone="13800000000"),
    ),
    Case(
        "a copy of a valid event on another partition is dead-lettered as misplaced", "misplaced", _misplaced
    ),
    Case(
        "a valid event under another Kafka key is dead-lettered as malformed",
        "malformed",
        lambda d: _placed(_sealed(d, phone="13800000003").value, b"another key"),
    ),
    Case(
        "an event dated a day before it reached the bus is dead-lettered as time_skew",
        "time_skew",
        lambda d: _placed_at(_sealed(d, phone="13800000013"), NOW + timedelta(days=1)),
    ),
    Case(
        "an event dated ten minutes after it reached the bus is dead-lettered as time_skew",
        "time_skew",
        lambda d: _placed_at(_sealed(d, phone="13800000014", time=NOW + timedelta(minutes=10)), NOW),
    ),
]


def _placed_at(sealed: envelope.SealedRecord, appended: datetime) -> Record:
    """A sealed event the broker took at ``appended`` (LogAppendTime)."""
    record = _placed(sealed.value, sealed.key)
    record.timestamp = int(appended.timestamp() * 1000)
    return record


@dataclass
class Harness:
    router: app.Router
    metrics: RouterMetrics
    states: dict[int, PartitionState] = field(default_factory=dict)

    def state(self, partition: int) -> PartitionState:
        return self.states.setdefault(partition, PartitionState(partition))

    def handle(self, record: Record) -> list[Output]:
        return asyncio.run(self.router.handle(record, self.state(record.partition)))

    def deadlettered(self, reason: str) -> float:
        return self.metrics.deadlettered.labels(reason)._value.get()  # type: ignore[no-any-return]


@pytest.fixture
def harness(domain: DemoDomain) -> Harness:
    metrics = RouterMetrics(CollectorRegistry())
    holder = RegistryInForce.from_domain(
        domain.trust,
        service="router",
        metrics=metrics.registry_in_force,
        clock=lambda: NOW,
        allow_expired=True,
    )
    router = app.Router(app.RouterSettings(home=domain.home), holder, metrics, lambda: NOW)
    router.partitions = lambda: PARTITIONS
    return Harness(router, metrics)


def _reason(outputs: list[Output]) -> str:
    (letter,) = [o for o in outputs if o.topic == EVENTS.replace("events", "deadletter")]
    return dict(letter.headers)["lianfang_reason"].decode()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_a_hostile_record_is_dead_lettered_with_its_reason_and_counted(
    domain: DemoDomain, harness: Harness, case: Case
) -> None:
    record = case.build(domain)
    outputs = harness.handle(record)
    assert _reason(outputs) == case.reason
    assert not [o for o in outputs if ".inbox." in o.topic]
    assert harness.deadlettered(case.reason) == 1
    letter = next(o for o in outputs if "deadletter" in o.topic)
    if case.reason in app.UNREAD_REASONS:  # not an envelope: maybe plain text, maybe megabytes
        headers = dict(letter.headers)
        assert (letter.value, letter.key) == (b"", None)
        assert headers["lianfang_key_bytes"] == str(len(record.key or b"")).encode()
        assert headers["lianfang_value_bytes"] == str(len(record.value)).encode()
        assert headers["lianfang_value_sha256"] == hashlib.sha256(record.value).hexdigest().encode()
    else:
        assert letter.value == record.value, "a dead letter carries the original bytes"


def test_a_dead_letter_never_carries_a_key_longer_than_any_subject(
    domain: DemoDomain, harness: Harness
) -> None:
    sealed = _sealed(domain, phone="13800000019")
    huge = b"\0" * (4 * envelope.MAX_RECORD_BYTES)  # a key is the sender's to choose, and compresses
    forged = rewrite_body(sealed.value, lambda h, s: (h.replace(b'"urgent"', b'"routine"'), s))
    outputs = harness.handle(_placed(forged, huge))  # its signature is checked before its key
    assert _reason(outputs) == "bad_signature"
    letter = next(o for o in outputs if "deadletter" in o.topic)
    assert letter.value == forged, "a signed envelope's letter keeps its bytes"
    assert letter.key is None
    assert dict(letter.headers)["lianfang_key_bytes"] == str(len(huge)).encode()


def test_every_reason_code_is_counted_from_the_start() -> None:
    metrics = RouterMetrics(CollectorRegistry())
    for reason in REASON_CODES:
        assert metrics.deadlettered.labels(reason)._value.get() == 0
    assert {"misplaced", "internal"} <= set(REASON_CODES)


def test_producer_kafka_headers_never_reach_an_inbox(domain: DemoDomain, harness: Harness) -> None:
    sealed = _sealed(domain, phone="13800000004")
    planted = [("ce_victim_name", "张某某".encode()), ("id_number", b"110101199003071234"), *sealed.headers]
    outputs = harness.handle(_placed(sealed.value, sealed.key, headers=planted))
    copies = [o for o in outputs if ".inbox." in o.topic]
    assert copies
    for copy in copies:
        assert copy.headers == [*envelope.kafka_headers(sealed.header), envelope.accepted_header(NOW)]
        assert copy.value == sealed.value
        assert copy.key == sealed.key


def test_the_router_routes_the_next_record_after_a_bug_in_the_decision(
    domain: DemoDomain, harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = core.decide
    bad = _sealed(domain, phone="13800000005")

    def buggy(value: bytes, key: bytes | None, **kwargs: Any) -> core.Route:
        if value == bad.value:
            raise KeyError("a bug")
        return real(value, key, **kwargs)

    monkeypatch.setattr(core, "decide", buggy)
    assert _reason(harness.handle(_placed(bad.value, bad.key))) == "internal"
    assert harness.deadlettered("internal") == 1
    good = _sealed(domain, phone="13800000006")
    assert [o for o in harness.handle(_placed(good.value, good.key)) if ".inbox." in o.topic]


def test_a_failing_audit_step_dead_letters_the_record_and_forgets_its_id(
    domain: DemoDomain, harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = harness.router.audit.record

    def failing(state: PartitionState, action: Any, now: Any, **kwargs: Any) -> Output:
        if action == "route":
            raise ValueError("the audit step failed")
        return real(state, action, now, **kwargs)

    monkeypatch.setattr(harness.router.audit, "record", failing)
    sealed = _sealed(domain, phone="13800000007")
    outputs = harness.handle(_placed(sealed.value, sealed.key))
    assert _reason(outputs) == "internal"
    assert [o.topic for o in outputs if "audit" in o.topic], "the dead letter has its audit entry"
    record = _placed(sealed.value, sealed.key)
    seen = app.SeenIds(harness.state(record.partition))
    assert sealed.header.id not in seen, "an undelivered event is not remembered"
    monkeypatch.setattr(harness.router.audit, "record", real)
    assert [o for o in harness.handle(_placed(sealed.value, sealed.key)) if ".inbox." in o.topic]


def test_a_record_is_dead_lettered_even_when_its_audit_entry_cannot_be_made(
    domain: DemoDomain, harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(*args: Any, **kwargs: Any) -> Output:
        raise ValueError("the audit step failed")

    monkeypatch.setattr(harness.router.audit, "record", failing)
    outputs = harness.handle(Record(b"not an envelope", b"k", 0))
    assert [o.topic for o in outputs] == ["lianfang.deadletter.v1"]
    assert _reason(outputs) == "malformed"


def test_a_bug_met_on_a_record_is_logged_by_its_type_and_frames_never_its_message(
    domain: DemoDomain, harness: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    quoted = "subject 张三 13800000000 does not parse"  # a message quoting what it met

    def failing(*args: Any, **kwargs: Any) -> core.Route:
        raise ValueError(quoted)

    monkeypatch.setattr(core, "decide", failing)
    sealed = _sealed(domain, phone="13800000018")
    assert _reason(harness.handle(_placed(sealed.value, sealed.key))) == "internal"
    logged = "\n".join(r.getMessage() + str(r.exc_info or "") for r in caplog.records)
    assert "ValueError" in logged
    assert "in failing" in logged, "where it happened"
    assert "张三" not in logged
    assert "13800000000" not in logged


@pytest.mark.parametrize("error", [KafkaConnectionError(), TransportError("the broker went away")])
def test_a_kafka_failure_is_not_dead_lettered_but_raised_to_the_runner_that_restarts_on_it(
    domain: DemoDomain, harness: Harness, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    def failing(*args: Any, **kwargs: Any) -> core.Route:
        raise error

    monkeypatch.setattr(core, "decide", failing)
    sealed = _sealed(domain, phone="13800000008")
    with pytest.raises(type(error)):
        harness.handle(_placed(sealed.value, sealed.key))
    assert harness.deadlettered("internal") == 0


def test_a_copy_on_another_partition_is_refused_although_that_partition_never_saw_the_event(
    domain: DemoDomain, harness: Harness
) -> None:
    sealed = _sealed(domain, phone="13800000009")
    original = _placed(sealed.value, sealed.key)
    assert [o for o in harness.handle(original) if ".inbox." in o.topic]
    other = (original.partition + 1) % PARTITIONS  # its replay window never saw the event
    assert _reason(harness.handle(Record(sealed.value, sealed.key, other))) == "misplaced"
    assert sealed.header.id not in app.SeenIds(harness.state(other))


@pytest.mark.parametrize(
    ("key", "partition"),
    [(b"", 681), (b"a", 524), (b"ab", 434), (b"abc", 107), (b"123456789", 566), (b"\x00 ", 742)],
)
def test_the_partition_of_a_key_is_the_one_kafkas_java_producer_gives_it(key: bytes, partition: int) -> None:
    # Partitions of 1000 that Kafka's Java DefaultPartitioner gives these keys (murmur2).
    assert topics.partition_for(key, 1000) == partition


@given(st.binary(max_size=80))
def test_the_keys_hash_is_kafka_pythons_murmur2_for_any_bytes(key: bytes) -> None:
    assert topics.murmur2(key) == kafka_murmur2(key)


def test_a_rollback_forgets_exactly_the_puts_after_its_savepoint() -> None:
    state = PartitionState(0, data={"kept": b"1"})
    state.put("a", b"first")
    mark = state.savepoint()
    state.put("a", b"second")
    state.put("b", b"new")
    state.put("kept", None)
    state.rollback(mark)
    assert state.pending == {"a": b"first"}
    assert state.get("kept") == b"1"
    assert state.get("b") is None


LATER = NOW + timedelta(hours=1)  # the demo keys are valid from NOW


def _revoked_police(d: DemoDomain, **changes: object) -> Registry:
    """The demo registry with police's signing keys changed (revoked or retired at some time)."""
    doc = d.registry.document
    participants = [
        p.model_copy(
            update={"keys": [k.model_copy(update=changes) if k.use == "sign" else k for k in p.keys]}
        )
        if p.id == "police"
        else p
        for p in doc.participants
    ]
    return Registry(doc.model_copy(update={"participants": participants}))


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"status": "revoked", "revoked_at": LATER}, "key_revoked"),
        ({"status": "retired", "valid_until": LATER}, "key_expired"),
    ],
    ids=["revoked", "retired"],
)
def test_an_event_dated_a_second_before_its_key_was_revoked_or_retired_is_refused_when_it_reached_the_bus_after(
    domain: DemoDomain, changes: dict[str, object], reason: str
) -> None:
    sealed = _sealed(domain, phone="13800000015", time=LATER - timedelta(seconds=1))
    with pytest.raises(UntrustedInputError) as raised:
        core.decide(
            sealed.value,
            sealed.key,
            partition=topics.partition_for(sealed.key, PARTITIONS),
            partitions=PARTITIONS,
            registry=_revoked_police(domain, **changes),
            now=LATER + timedelta(seconds=2),
            replay=envelope.ReplayWindow(),
            appended_at=LATER + timedelta(seconds=1),
        )
    assert raised.value.reason == reason


def test_an_event_that_reached_the_bus_before_its_key_was_revoked_is_routed_with_that_time(
    domain: DemoDomain,
) -> None:
    sealed = _sealed(domain, phone="13800000016", time=LATER - timedelta(seconds=2))
    route = core.decide(
        sealed.value,
        sealed.key,
        partition=topics.partition_for(sealed.key, PARTITIONS),
        partitions=PARTITIONS,
        registry=_revoked_police(domain, status="revoked", revoked_at=LATER),
        now=LATER + timedelta(hours=1),  # routed an hour later, after the revocation
        replay=envelope.ReplayWindow(),
        appended_at=LATER - timedelta(seconds=1),
    )
    assert envelope.accepted_at(list(route.headers)) == LATER - timedelta(seconds=1)


def test_a_record_the_broker_did_not_stamp_is_judged_at_the_router_s_clock(
    domain: DemoDomain, harness: Harness
) -> None:
    sealed = _sealed(domain, phone="13800000017")
    record = _placed(sealed.value, sealed.key)
    record.timestamp_type = 0  # CreateTime: the producer's to choose
    record.timestamp = 0
    copies = [o for o in harness.handle(record) if ".inbox." in o.topic]
    assert copies
    assert envelope.accepted_at(copies[0].headers) == NOW


def test_a_batchs_audit_entries_are_proven_by_the_one_checkpoint_its_transaction_signs(
    domain: DemoDomain, harness: Harness
) -> None:
    router = harness.router
    router.audit.signer = app.router_signer(domain.home, domain.registry, NOW)
    assert router.audit.signer is not None
    lines: list[bytes] = []

    def batch(phones: list[str]) -> None:
        for phone in phones:
            sealed = _sealed(domain, phone=phone)
            record = Record(sealed.value, sealed.key, 0)  # one partition: one chain (misplaced or not)
            lines.extend(o.value or b"" for o in harness.handle(record) if o.topic == router.names.audit)
        state = harness.state(0)
        sealed_lines = [o.value or b"" for o in router.after_batch(state)]
        assert len(sealed_lines) == 1, "one signature for the batch: a checkpoint of its head"
        lines.extend(sealed_lines)
        state._apply()

    batch(["13800000101", "13800000102", "13800000103"])
    head = router.audit.head(harness.state(0))
    assert head is not None
    hostile = next_entry(head, actor=head.actor, action="route", at=NOW, object="made-up").to_line()
    lines.append(hostile)  # another participant appends under the router's chain, unsigned
    batch(["13800000104", "13800000105"])
    assert router.after_batch(harness.state(0)) == [], "no new entry, no new checkpoint"

    def keys(participant: str, kid: str, at: datetime) -> bytes:
        return domain.registry.signing_key(participant, kid, at=at)

    report = verify_lines(lines, keys=keys, require_checkpoint=True)
    (chain,) = report.chains
    assert chain.ok, str(chain)
    assert (chain.entries, chain.unproven, chain.checkpoints_verified) == (5, 0, 2), str(chain)
    assert [(s.position, s.kind) for s in report.set_aside] == [(5, "unsigned")]
