"""Shared principals (a gateway serving several agencies, the demo's simulator) get exactly the rights of
the participants they act for; and a `lianfang` command on a local cluster logs in as whom it acts for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.cli.local_kafka import LocalCluster, principal_for
from services.kernel import acls, principals
from services.kernel.errors import UsageError
from services.kernel.topics import inbox
from services.simulator import district

pytestmark = pytest.mark.unit

PARTICIPANTS = [pid for pid, _zh, _en in district.participants()]
SERVED = ["police", "womens_federation"]
RULES = principals.deployment_rules(PARTICIPANTS, {"gateway": SERVED})
GATEWAY = "User:gateway"


@pytest.mark.parametrize("participant", SERVED)
def test_a_gateway_reads_the_inboxes_of_the_participants_it_serves(participant: str) -> None:
    assert acls.allows(RULES, GATEWAY, "READ", "TOPIC", inbox(participant))
    assert acls.allows(RULES, GATEWAY, "READ", "GROUP", f"lianfang-inbox-{participant}.gateway")
    assert acls.allows(RULES, GATEWAY, "WRITE", "TOPIC", "lianfang.events.v1")


@pytest.mark.parametrize("participant", [p for p in PARTICIPANTS if p not in SERVED])
def test_a_gateway_reads_no_inbox_of_a_participant_it_does_not_serve(participant: str) -> None:
    assert not acls.allows(RULES, GATEWAY, "READ", "TOPIC", inbox(participant))
    assert not acls.allows(RULES, GATEWAY, "READ", "GROUP", f"lianfang-inbox-{participant}")


def test_a_gateway_gets_nothing_beyond_the_union_of_its_participants_rules() -> None:
    mine = {(r.resource, r.pattern, r.name, r.operation) for r in RULES if r.principal == GATEWAY}
    theirs = {(r.resource, r.pattern, r.name, r.operation) for p in SERVED for r in acls.participant_rules(p)}
    assert mine == theirs
    assert not acls.allows(RULES, GATEWAY, "WRITE", "TOPIC", inbox("police"))
    assert not acls.allows(RULES, GATEWAY, "READ", "TOPIC", "lianfang.events.v1")


def test_the_registry_rules_are_unchanged_by_a_shared_principal() -> None:
    assert [r for r in RULES if r.principal != GATEWAY] == acls.generate(PARTICIPANTS)


@pytest.mark.parametrize(
    ("shared", "message"),
    [
        ({"police": ["court"]}, "is a participant or the operator"),
        ({"operator": ["court"]}, "is a participant or the operator"),
        ({"gateway": ["nobody"]}, "cannot act for nobody"),
        ({"gateway": ["router"]}, "cannot act for router"),
    ],
    ids=[
        "a participant's name cannot be a shared principal",
        "the operator cannot be a shared principal",
        "a shared principal cannot act for a stranger",
        "a shared principal cannot act for the router",
    ],
)
def test_a_shared_principal_that_would_widen_someone_s_rights_is_refused(
    shared: dict[str, list[str]], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        principals.deployment_rules(PARTICIPANTS, shared)


@pytest.mark.parametrize(
    ("command", "kwargs", "principal"),
    [
        ("inbox", {"participant": "coordinators"}, "coordinators"),
        ("publish", {"participant": "police"}, "police"),
        ("import", {"participant": "court"}, "court"),
        ("simulate", {}, "simulator"),
        ("serve", {"service": "router"}, "router"),
        ("serve", {"service": "hub"}, "hub"),
        ("serve", {"service": "console"}, "coordinators"),
        ("serve", {"service": "gateway"}, "gateway"),
        ("serve", {"service": "pseudonymizer"}, "plc"),
        ("topics", {}, "operator"),
        ("acls", {}, "operator"),
        ("deadletter", {}, "operator"),
    ],
)
def test_a_command_on_a_local_cluster_logs_in_as_whom_it_acts_for(
    command: str, kwargs: dict[str, str], principal: str
) -> None:
    assert principal_for(command, **kwargs) == principal


def _cluster_folder(tmp_path: Path, *, secure: bool) -> Path:
    (tmp_path / "cluster.json").write_text(json.dumps({"secure": secure, "nodes": []}))
    (tmp_path / "bootstrap").write_text("127.0.0.1:9999\n")
    (tmp_path / "credentials.json").write_text(json.dumps({"operator": "op-pw", "police": "police-pw"}))
    return tmp_path


def test_a_secured_local_cluster_logs_in_over_sasl_ssl_with_the_principal_s_password(tmp_path: Path) -> None:
    env = LocalCluster.open(_cluster_folder(tmp_path, secure=True)).env("police")
    assert env == {
        "LIANFANG_BOOTSTRAP": "127.0.0.1:9999",
        "LIANFANG_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "LIANFANG_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "LIANFANG_KAFKA_SASL_USERNAME": "police",
        "LIANFANG_KAFKA_SASL_PASSWORD": "police-pw",
        "LIANFANG_KAFKA_CA_FILE": str(tmp_path.resolve() / "tls" / "ca.crt"),
    }
    assert "police-pw" not in repr(LocalCluster.open(tmp_path))


def test_a_principal_the_local_cluster_does_not_know_is_a_usage_error_naming_the_fix(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"no SCRAM user 'court'.*fix:"):
        LocalCluster.open(_cluster_folder(tmp_path, secure=True)).env("court")


def test_a_plain_local_cluster_connects_in_plaintext(tmp_path: Path) -> None:
    env = LocalCluster.open(_cluster_folder(tmp_path, secure=False)).env("police")
    assert env == {"LIANFANG_BOOTSTRAP": "127.0.0.1:9999", "LIANFANG_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}


def test_a_folder_without_a_running_cluster_is_a_usage_error_naming_the_fix(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"no local Kafka is running from .*fix: `make kafka-up`"):
        LocalCluster.open(tmp_path)
