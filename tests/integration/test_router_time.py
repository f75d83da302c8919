"""The router judges keys at a time no sender controls: the broker's append time on the events topic
(LogAppendTime). A revoked or retired key gets nothing delivered once its change is in force, however
the event is dated, and a signed time far from the broker's is refused as ``time_skew``."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.integration.buskit import Bus, RegistryChange
from tests.integration.buskit import RouterProcess as Router
from tests.kit import DemoDomain

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bus(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Bus:
    """A domain issued two days ago, so that an event can be signed a day back with valid keys."""
    home = Path(tmp_path_factory.mktemp("rtime-domain")) / ".lianfang"
    domain = DemoDomain.create(home, now=datetime.now(UTC) - timedelta(days=2), lifetime=timedelta(days=90))
    return Bus.create(kafka_bootstrap, f"t-rtime-{datetime.now(UTC):%H%M%S%f}.", domain)


@pytest.fixture(scope="module")
def router(bus: Bus, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Router]:
    log = Path(tmp_path_factory.mktemp("router-time")) / "router.log"
    worker = Router.started(bus, log)
    yield worker
    worker.stop()


def _letter_reasons(bus: Bus, values: set[bytes]) -> dict[bytes, str]:
    """The dead-letter reason of each of these values, once each has one."""
    letters = bus.wait_for(
        lambda: len(dl := bus.letters_of(values)) >= len(values) and dl,
        what="dead letters",
    )
    return {r.value: dict(r.headers)["lianfang_reason"].decode() for r in letters}


def _with_sign_keys(bus: Bus, changes: dict[str, dict[str, Any]]) -> RegistryChange:
    """The next registry version with the signing keys of some participants changed."""
    doc = bus.domain.registry.document
    participants = []
    for p in doc.participants:
        if p.id in changes:
            keys = [k.model_copy(update=changes[p.id]) if k.use == "sign" else k for k in p.keys]
            p = p.model_copy(update={"keys": keys})
        participants.append(p)
    return RegistryChange.sign(
        bus.domain, doc.model_copy(update={"version": doc.version + 1, "participants": participants})
    )


def test_a_signed_time_far_from_the_broker_s_append_time_is_refused_as_time_skew(
    bus: Bus, router: Router
) -> None:
    now = datetime.now(UTC)
    backdated = bus.seal(time=now - timedelta(days=1), phone="13900000101")
    ahead = bus.seal(time=now + timedelta(minutes=10), phone="13900000102")
    on_time = bus.seal(phone="13900000103")
    bus.publish([backdated, ahead, on_time])
    reasons = _letter_reasons(bus, {backdated.value, ahead.value})
    assert reasons == {backdated.value: "time_skew", ahead.value: "time_skew"}
    assert router.metric("lianfang_router_deadletters_total", reason="time_skew") == 2
    bus.wait_for(lambda: bus.inbox_ids()["police"].get(on_time.header.id) == 1, what="the on-time event")


def test_a_revoked_or_retired_key_s_event_dated_a_second_before_the_change_is_refused_once_it_is_published(
    bus: Bus, router: Router
) -> None:
    """Runs last in this module: it publishes a registry with justice's key revoked and trade_union's
    retired."""
    changed_at = datetime.now(UTC)
    change = _with_sign_keys(
        bus,
        {
            "justice": {"status": "revoked", "revoked_at": changed_at},
            "trade_union": {"status": "retired", "valid_until": changed_at},
        },
    )
    bus.produce([(b"registry", change.data)], topic=bus.names.registry)
    version = change.registry.version
    bus.wait_for(lambda: router.metric("lianfang_registry_version", service="router") == version, 60, "v2")

    just_before = changed_at - timedelta(seconds=1)
    revoked = bus.seal("justice", time=just_before, category="domestic_violence", phone="13900000104")
    retired = bus.seal(
        "trade_union",
        time=just_before,
        category="employment_discrimination",
        town=None,
        phone="13900000105",
    )
    bus.publish([revoked, retired])
    reasons = _letter_reasons(bus, {revoked.value, retired.value})
    assert reasons == {revoked.value: "key_revoked", retired.value: "key_expired"}
    delivered = bus.inbox_ids()
    assert not any(counts.get(revoked.header.id) for counts in delivered.values())
    assert not any(counts.get(retired.header.id) for counts in delivered.values())
