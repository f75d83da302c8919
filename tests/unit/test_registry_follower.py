"""The registry follower: which offered registries a process takes (the pure decision), what it exports,
and that reading the registry topic survives a broker that is away."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from kafka import TopicPartition
from kafka.errors import KafkaConnectionError
from prometheus_client import CollectorRegistry

from schemas.registry import RegistryDocument
from services.bus.registry_follower import RegistryFollower, RegistryInForce, RegistryMetrics
from services.bus.security import KafkaSecuritySettings
from services.kernel.errors import UsageError
from services.kernel.registry import Registry, judge_update, sign_document
from tests.kit import NOW, DemoDomain

pytestmark = pytest.mark.unit


def _signed(domain: DemoDomain, doc: RegistryDocument, roots: int = 2) -> bytes:
    keys: dict[str, Any] = {}
    for store in domain.trust.root_keystores()[:roots]:
        keys.update(store.signing)
    return sign_document(doc, keys)


def _version(domain: DemoDomain, version: int, **changes: Any) -> RegistryDocument:
    return domain.registry.document.model_copy(update={"version": version, **changes})


def _current(domain: DemoDomain, version: int = 5) -> Registry:
    data = _signed(domain, _version(domain, version))
    return Registry.from_bytes(data, trusted_roots=domain.trust.trusted_roots(), now=NOW)


@dataclass(frozen=True)
class Offer:
    name: str
    data: Callable[[DemoDomain], bytes]
    reason: str
    counted: bool


OFFERS = [
    Offer(
        "a newer version signed by two roots is taken", lambda d: _signed(d, _version(d, 6)), "newer", False
    ),
    Offer("an older version is refused as older", lambda d: _signed(d, _version(d, 4)), "older", False),
    Offer(
        "the version in force is refused as the same version",
        lambda d: _signed(d, _version(d, 5)),
        "same_version",
        False,
    ),
    Offer(
        "a newer version signed by one root of the two needed is refused as a bad signature",
        lambda d: _signed(d, _version(d, 6), roots=1),
        "bad_signature",
        True,
    ),
    Offer(
        "a newer version edited after signing is refused as a bad signature",
        lambda d: _signed(d, _version(d, 6)).replace(b'"version": 6', b'"version": 7'),
        "bad_signature",
        True,
    ),
    Offer(
        "bytes that are no registry are refused as malformed", lambda d: b"hello\nworld", "malformed", True
    ),
    Offer(
        "a newer version that has expired is refused as expired",
        lambda d: _signed(d, _version(d, 6, issued=NOW - timedelta(days=9), expires=NOW - timedelta(days=1))),
        "registry_expired",
        True,
    ),
    Offer(
        "an older version that has expired is refused as older, not counted",
        lambda d: _signed(d, _version(d, 2, issued=NOW - timedelta(days=9), expires=NOW - timedelta(days=1))),
        "older",
        False,
    ),
]


@pytest.mark.parametrize("offer", OFFERS, ids=[o.name for o in OFFERS])
def test_an_offered_registry_is_judged_against_the_one_in_force(domain: DemoDomain, offer: Offer) -> None:
    current = _current(domain)
    decision = judge_update(current, offer.data(domain), trusted_roots=domain.trust.trusted_roots(), now=NOW)
    assert decision.reason == offer.reason, decision.detail
    assert decision.taken == (offer.reason == "newer")
    assert decision.untrusted == offer.counted
    if decision.registry is not None:
        assert decision.registry.version == 6


@pytest.mark.parametrize("offer", OFFERS, ids=[o.name for o in OFFERS])
def test_the_registry_in_force_changes_and_counts_refusals_as_judged(
    domain: DemoDomain, offer: Offer
) -> None:
    metrics = RegistryMetrics.of(CollectorRegistry())
    held = RegistryInForce(
        _current(domain),
        trusted_roots=domain.trust.trusted_roots(),
        clock=lambda: NOW,
        metrics=metrics,
        service="hub",
    )
    held.offer(offer.data(domain))
    assert held.current.version == (6 if offer.reason == "newer" else 5)
    assert metrics.version.labels("hub")._value.get() == held.current.version
    refused = metrics.rejected.labels("hub", offer.reason)._value.get()
    assert refused == (1 if offer.counted else 0)


def test_the_registry_in_force_exports_its_version_issue_and_expiry_times(domain: DemoDomain) -> None:
    prometheus = CollectorRegistry()
    metrics = RegistryMetrics.of(prometheus)
    RegistryInForce(_current(domain), metrics=metrics, service="console")
    document = domain.registry.document
    assert prometheus.get_sample_value("lianfang_registry_version", {"service": "console"}) == 5
    expiry = prometheus.get_sample_value("lianfang_registry_expiry_timestamp_seconds", {"service": "console"})
    issued = prometheus.get_sample_value("lianfang_registry_issued_timestamp_seconds", {"service": "console"})
    assert (expiry, issued) == (document.expires.timestamp(), document.issued.timestamp())


def test_services_sharing_a_prometheus_registry_share_the_registry_series() -> None:
    prometheus = CollectorRegistry()
    assert RegistryMetrics.of(prometheus) is RegistryMetrics.of(prometheus)
    assert RegistryMetrics.of(None) is not RegistryMetrics.of(None)


def test_a_registry_in_force_without_trusted_roots_takes_no_update(domain: DemoDomain) -> None:
    held = RegistryInForce(_current(domain))
    with pytest.raises(UsageError, match="no trusted roots"):
        held.offer(_signed(domain, _version(domain, 6)))
    with pytest.raises(UsageError, match="trusted roots"):
        RegistryFollower(held, bootstrap="x", topic="t", security=KafkaSecuritySettings())


# --------------------------------------------------------------------------- the follower's thread


@dataclass
class Record:
    value: bytes | None
    key: bytes | None = b"registry"


class FakeConsumer:
    """One partition holding ``records``; :meth:`poll` hands out what is left, one at a time."""

    def __init__(self, records: list[bytes]) -> None:
        self.records = records
        self.at = 0
        self.closed = False

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.tp = partitions[0]

    def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        self.at = 0

    def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {p: len(self.records) for p in partitions}

    def position(self, partition: TopicPartition) -> int:
        return self.at

    def poll(self, timeout_ms: int = 0) -> dict[TopicPartition, list[Any]]:
        if self.at >= len(self.records):
            time.sleep(0.01)  # an idle poll waits a little, as a broker's would
            return {}
        self.at += 1
        return {self.tp: [Record(self.records[self.at - 1])]}

    def close(self) -> None:
        self.closed = True


def _wait(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_the_follower_retries_with_back_off_while_the_broker_is_away_then_takes_the_newer_registry(
    domain: DemoDomain, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING", logger="lianfang.registry")
    held = RegistryInForce(_current(domain), trusted_roots=domain.trust.trusted_roots(), clock=lambda: NOW)
    topic = [_signed(domain, _version(domain, 4)), _signed(domain, _version(domain, 6))]
    attempts: list[float] = []

    def connect() -> FakeConsumer:
        attempts.append(time.monotonic())
        if len(attempts) <= 3:
            raise KafkaConnectionError()
        return FakeConsumer(topic)

    follower = RegistryFollower(
        held, bootstrap="x", topic="t", security=KafkaSecuritySettings(), min_backoff_s=0.1, consumer=connect
    ).start()
    try:
        assert follower.catch_up(10)
        assert held.current.version == 6
        assert follower.failures == 3
    finally:
        follower.stop()
    delays = [float(r.getMessage().rsplit("retrying in ", 1)[1].split()[0]) for r in caplog.records]
    assert delays == [0.1, 0.2, 0.4], "the delay between attempts doubles"
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert all(gap >= delay for gap, delay in zip(gaps, delays, strict=True)), "each delay is waited out"


def test_a_read_that_fails_midway_reconnects_and_keeps_following(domain: DemoDomain) -> None:
    held = RegistryInForce(_current(domain), trusted_roots=domain.trust.trusted_roots(), clock=lambda: NOW)
    consumers: list[FakeConsumer] = []
    broken = threading.Event()

    class Breaking(FakeConsumer):
        def poll(self, timeout_ms: int = 0) -> dict[TopicPartition, list[Any]]:
            if not broken.is_set():
                broken.set()
                raise KafkaConnectionError()
            return super().poll(timeout_ms)

    def connect() -> FakeConsumer:
        consumers.append(Breaking([_signed(domain, _version(domain, 7))]))
        return consumers[-1]

    follower = RegistryFollower(
        held, bootstrap="x", topic="t", security=KafkaSecuritySettings(), min_backoff_s=0.01, consumer=connect
    ).start()
    try:
        _wait(lambda: held.current.version == 7, "v7 after the reconnect")
        assert len(consumers) == 2
        assert consumers[0].closed
    finally:
        follower.stop()


def test_a_catch_up_asked_for_a_refusal_a_newer_registry_lifts_takes_what_arrived_meanwhile(
    domain: DemoDomain,
) -> None:
    held = RegistryInForce(_current(domain), trusted_roots=domain.trust.trusted_roots(), clock=lambda: NOW)
    records: list[bytes] = []
    follower = RegistryFollower(
        held,
        bootstrap="x",
        topic="t",
        security=KafkaSecuritySettings(),
        consumer=lambda: FakeConsumer(records),
    ).start()
    try:
        assert follower.catch_up(10)
        assert not follower.newer_registry_for("unknown_key")
        records.append(_signed(domain, _version(domain, 6)))
        assert follower.newer_registry_for("unknown_key")
        assert held.current.version == 6
    finally:
        follower.stop()
    assert not follower.catch_up(1), "a stopped follower catches up with nothing"


def test_after_a_connection_that_worked_the_back_off_starts_again_from_its_shortest_delay(
    domain: DemoDomain, caplog: pytest.LogCaptureFixture
) -> None:
    held = RegistryInForce(_current(domain), trusted_roots=domain.trust.trusted_roots(), clock=lambda: NOW)
    attempts: list[int] = []

    class FailsAfterOnePoll(FakeConsumer):
        def poll(self, timeout_ms: int = 0) -> dict[TopicPartition, list[Any]]:
            if self.at >= len(self.records):
                raise KafkaConnectionError()
            return super().poll(timeout_ms)

    def connect() -> FakeConsumer:
        attempts.append(1)
        if len(attempts) in (1, 2, 3):
            raise KafkaConnectionError()
        return FailsAfterOnePoll([_signed(domain, _version(domain, 6))])

    caplog.set_level("WARNING", logger="lianfang.registry")
    follower = RegistryFollower(
        held, bootstrap="x", topic="t", security=KafkaSecuritySettings(), min_backoff_s=0.1, consumer=connect
    ).start()
    try:
        _wait(lambda: len(attempts) >= 6, "six attempts")
    finally:
        follower.stop()
    delays = [float(r.getMessage().rsplit("retrying in ", 1)[1].split()[0]) for r in caplog.records]
    assert delays[:5] == [0.1, 0.2, 0.4, 0.1, 0.1], "three failed connections, then two that had read"
    assert held.current.version == 6
