"""Freshness statements (the timestamp role): which statements a process takes, and when it is fresh."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry

from schemas.registry import RegistryDocument
from services import trust
from services.bus.freshness import FreshnessInForce, FreshnessMetrics
from services.bus.registry_follower import RegistryInForce
from services.kernel import freshness
from services.kernel.keystore import Keystore
from services.kernel.registry import Registry, sign_document
from tests.kit import NOW, DemoDomain

pytestmark = pytest.mark.unit


def _signed(domain: DemoDomain, doc: RegistryDocument) -> Registry:
    keys: dict[str, Any] = {}
    for store in domain.trust.root_keystores()[:2]:
        keys.update(store.signing)
    return Registry.from_bytes(sign_document(doc, keys), trusted_roots=domain.trust.trusted_roots(), now=NOW)


def _stamp_keys(domain: DemoDomain) -> dict[str, Ed25519PrivateKey]:
    return dict(domain.trust.timestamp_keystore().signing)


def _stamp(domain: DemoDomain, registry: Registry | None = None, **kwargs: Any) -> bytes:
    kwargs.setdefault("now", NOW)
    return freshness.sign_statement(registry or domain.registry, _stamp_keys(domain), **kwargs)


def _other_key() -> dict[str, Ed25519PrivateKey]:
    store = Keystore("timestamp")
    kid = store.add_signing_key()
    return {kid: store.signing[kid]}


@dataclass(frozen=True)
class Offer:
    name: str
    data: Callable[[DemoDomain], bytes]
    reason: str


OFFERS = [
    Offer("a statement signed by the delegated timestamp key is taken", lambda d: _stamp(d), "newer"),
    Offer(
        "a statement signed by a key the registry does not delegate is refused as unknown_key",
        lambda d: freshness.sign_statement(d.registry, _other_key(), now=NOW),
        "unknown_key",
    ),
    Offer(
        "a statement signed by a participant's key is refused as unknown_key",
        lambda d: freshness.sign_statement(d.registry, dict(d.keys("police").signing), now=NOW),
        "unknown_key",
    ),
    Offer(
        "a statement whose payload was edited after signing is refused as bad_signature",
        lambda d: _stamp(d).replace(b'"registry_version":1', b'"registry_version":9'),
        "bad_signature",
    ),
    Offer(
        "a statement with no signature line is refused as malformed",
        lambda d: _stamp(d).split(b"\n", 1)[1],
        "malformed",
    ),
    Offer(
        "a statement signed as another payload type is refused as malformed",
        lambda d: _stamp(d).replace(b"freshness.v1", b"registry.v1", 1),
        "malformed",
    ),
    Offer(
        "a statement over the size cap is refused as too_large",
        lambda d: _stamp(d) + b" " * 5000,
        "too_large",
    ),
]


@pytest.mark.parametrize("case", OFFERS, ids=[c.name for c in OFFERS])
def test_an_offered_statement(case: Offer, domain: DemoDomain) -> None:
    decision = freshness.judge_statement(None, case.data(domain), domain.registry)
    assert decision.reason == case.reason, decision.detail
    assert (decision.statement is not None) == (case.reason == "newer")


def test_a_statement_issued_no_later_than_the_one_held_is_not_taken(domain: DemoDomain) -> None:
    held = freshness.judge_statement(None, _stamp(domain), domain.registry).statement
    decision = freshness.judge_statement(
        held, _stamp(domain, now=NOW - timedelta(minutes=1)), domain.registry
    )
    assert decision.reason == "older"
    assert not decision.untrusted


def _assess(domain: DemoDomain, data: bytes | None, registry: Registry, at: timedelta) -> freshness.Freshness:
    statement = None if data is None else freshness.verify_statement(data, domain.registry.document.timestamp)
    return freshness.assess(registry, statement, NOW + at)


def test_a_process_with_an_unexpired_statement_for_its_registry_is_fresh_until_the_statement_expires(
    domain: DemoDomain,
) -> None:
    result = _assess(domain, _stamp(domain), domain.registry, timedelta(minutes=9))
    assert result.fresh
    assert result.fresh_until == NOW + freshness.DEFAULT_VALID_FOR


def test_a_process_without_a_statement_is_not_fresh(domain: DemoDomain) -> None:
    assert _assess(domain, None, domain.registry, timedelta(0)).state == "missing"


def test_a_process_whose_statement_expired_is_stale(domain: DemoDomain) -> None:
    assert _assess(domain, _stamp(domain), domain.registry, timedelta(minutes=10)).state == "stale"


def test_a_statement_naming_a_newer_registry_tells_the_process_it_is_behind(domain: DemoDomain) -> None:
    newer = _signed(domain, domain.registry.document.model_copy(update={"version": 2}))
    result = _assess(domain, _stamp(domain, newer), domain.registry, timedelta(0))
    assert result.state == "behind"
    assert "v2" in result.detail


def test_a_process_holding_a_newer_registry_than_the_statement_names_is_fresh(domain: DemoDomain) -> None:
    newer = _signed(domain, domain.registry.document.model_copy(update={"version": 2}))
    assert _assess(domain, _stamp(domain), newer, timedelta(0)).fresh


def test_a_statement_naming_another_registry_of_the_same_version_is_a_conflict(domain: DemoDomain) -> None:
    other = _signed(domain, domain.registry.document.model_copy(update={"expires": NOW + timedelta(days=3)}))
    assert _assess(domain, _stamp(domain, other), domain.registry, timedelta(0)).state == "conflict"


def test_a_registry_that_delegates_no_timestamp_role_cannot_be_fresh(domain: DemoDomain) -> None:
    bare = _signed(domain, domain.registry.document.model_copy(update={"version": 2, "timestamp": None}))
    assert _assess(domain, _stamp(domain), bare, timedelta(0)).state == "no_role"


def test_after_the_roots_rotate_the_timestamp_key_a_statement_of_the_old_key_no_longer_counts(
    domain: DemoDomain,
) -> None:
    new_key = _other_key()
    store = Keystore("timestamp")
    store.signing.update(new_key)
    rotated = _signed(
        domain,
        domain.registry.document.model_copy(
            update={"version": 2, "timestamp": trust.timestamp_role([store])}
        ),
    )
    assert _assess(domain, _stamp(domain), rotated, timedelta(0)).state == "untrusted"
    by_new_key = freshness.sign_statement(rotated, new_key, now=NOW)
    statement = freshness.verify_statement(by_new_key, rotated.document.timestamp)
    assert freshness.assess(rotated, statement, NOW).fresh


def test_the_holder_counts_a_refused_statement_by_reason_and_exports_its_expiry(domain: DemoDomain) -> None:
    prom = CollectorRegistry()
    held = FreshnessInForce(
        RegistryInForce(domain.registry, service="router"),
        clock=lambda: NOW,
        metrics=FreshnessMetrics.of(prom),
    )
    assert not held.ok()
    held.offer(freshness.sign_statement(domain.registry, _other_key(), now=NOW))
    assert (
        prom.get_sample_value(
            "lianfang_freshness_statements_rejected_total", {"service": "router", "reason": "unknown_key"}
        )
        == 1
    )
    assert not held.ok()
    held.offer(_stamp(domain))
    assert held.ok()
    assert held.fresh_until == NOW + freshness.DEFAULT_VALID_FOR
    assert prom.get_sample_value("lianfang_freshness_fresh", {"service": "router"}) == 1
    assert (
        prom.get_sample_value("lianfang_freshness_expiry_timestamp_seconds", {"service": "router"})
        == (NOW + freshness.DEFAULT_VALID_FOR).timestamp()
    )


def test_a_holder_that_does_not_require_freshness_works_without_a_statement_and_says_so(
    domain: DemoDomain, caplog: pytest.LogCaptureFixture
) -> None:
    held = FreshnessInForce(
        RegistryInForce(domain.registry, service="hub"), required=False, clock=lambda: NOW
    )
    assert held.ok()
    assert not held.status().fresh
    assert "NOT required" in caplog.text
