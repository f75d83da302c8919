"""Revoked encryption keys: nothing is sealed to them, and the router does not deliver wraps for them."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from services.kernel import envelope, topics
from services.kernel.envelope import ReplayWindow
from services.kernel.errors import EncryptionKeyRevokedError, UsageError
from services.kernel.registry import Registry
from services.router import core
from tests.kit import CONTENT, NOW, DemoDomain, header

pytestmark = pytest.mark.unit

PARTITIONS = 12


def _with_encryption_keys_revoked(domain: DemoDomain, participant: str, at: datetime) -> Registry:
    doc = domain.registry.document
    participants = []
    for p in doc.participants:
        if p.id == participant:
            keys = [
                k.model_copy(update={"status": "revoked", "revoked_at": at}) if k.use == "encrypt" else k
                for k in p.keys
            ]
            p = p.model_copy(update={"keys": keys})
        participants.append(p)
    return Registry(doc.model_copy(update={"participants": participants}))


def _sealed_before(domain: DemoDomain) -> envelope.SealedRecord:
    """A lead police sealed to the women's federation (among others) while its key was still good."""
    return envelope.seal(
        header(subject=domain.subject()), CONTENT, registry=domain.registry, signer=domain.keys("police")
    )


def _decide(sealed: envelope.SealedRecord, registry: Registry, now: datetime) -> core.Route:
    return core.decide(
        sealed.value,
        sealed.key,
        partition=topics.partition_for(sealed.key, PARTITIONS),
        partitions=PARTITIONS,
        registry=registry,
        now=now,
        replay=ReplayWindow(),
    )


def test_the_router_refuses_a_wrap_for_an_encryption_key_revoked_by_now_with_its_own_reason(
    domain: DemoDomain,
) -> None:
    sealed = _sealed_before(domain)
    revoked = _with_encryption_keys_revoked(domain, "womens_federation", at=NOW + timedelta(minutes=1))
    with pytest.raises(EncryptionKeyRevokedError, match=r"^\[encryption_key_revoked\].*'womens_federation'"):
        _decide(sealed, revoked, NOW + timedelta(minutes=2))


def test_a_key_revoked_from_a_later_time_still_receives_wraps_until_then(domain: DemoDomain) -> None:
    sealed = _sealed_before(domain)
    revoked = _with_encryption_keys_revoked(domain, "womens_federation", at=NOW + timedelta(minutes=5))
    assert "womens_federation" in _decide(sealed, revoked, NOW + timedelta(minutes=2)).recipients


def test_a_recipient_still_opens_what_was_delivered_before_its_key_was_revoked(domain: DemoDomain) -> None:
    sealed = _sealed_before(domain)
    revoked = _with_encryption_keys_revoked(domain, "womens_federation", at=NOW + timedelta(minutes=1))
    opened = envelope.verify_and_open(
        sealed.value,
        registry=revoked,
        now=NOW + timedelta(minutes=2),
        keystore=domain.keys("womens_federation"),
    )
    assert opened.header.id == sealed.header.id


def test_a_writer_refuses_to_seal_to_a_recipient_whose_encryption_keys_are_all_revoked(
    domain: DemoDomain,
) -> None:
    revoked = _with_encryption_keys_revoked(domain, "womens_federation", at=NOW - timedelta(minutes=1))
    with pytest.raises(UsageError, match=r"cannot seal to 'womens_federation'.*revoked.*lianfang keys new"):
        envelope.seal(
            header(subject=domain.subject()), CONTENT, registry=revoked, signer=domain.keys("police")
        )
