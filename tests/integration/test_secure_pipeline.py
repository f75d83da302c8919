"""The whole pipeline on a secured broker: every service logs in as its own principal, and the ACLs
generated from the registry are all it is allowed.

This module starts its own single-node broker with TLS, SASL/SCRAM-SHA-512 and the StandardAuthorizer
(``deploy.kafka.local``), so default topic names, the router's group ``lianfang-router`` and the hub's
app id ``lianfang-hub`` are the ones :mod:`services.kernel.acls` assumes. The operator creates the
topics and the ACLs with the ``lianfang`` command; the router and the hub run as processes logged in as
``router`` and ``hub``; agencies publish and read with the SDK, or a gateway, logged in as themselves.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy.kafka.local import LocalKafka, running
from services.audit.chain import AuditEntry, parse_line, principal
from services.audit.kafka import KafkaSink, read_topic
from services.bus.security import KafkaSecuritySettings
from services.cli.audit import EXIT_CODES
from services.kernel import envelope
from services.kernel.errors import TransportError
from services.sdk.client import Client
from tests.integration.buskit import Bus, HubProcess, RouterProcess
from tests.integration.test_gateway import GatewayProcess, lead_body
from tests.kit import DemoDomain
from tests.workers import REPO, Worker, free_port

pytestmark = pytest.mark.integration

READERS = ["womens_federation", "mediation.nancai", "coordinators"]
USERS = ["router", "hub", "police", *READERS]


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    with running(
        Path(tmp_path_factory.mktemp("secure-pipeline-kafka")), secure=True, users=USERS, discard=True
    ) as cluster:
        yield cluster


def lianfang(cluster: LocalKafka, user: str, home: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """The ``lianfang`` command logged in as ``user`` through the ``LIANFANG_KAFKA_*`` environment."""
    return subprocess.run(
        [sys.executable, "-m", "services", "--home", str(home), *argv],
        cwd=REPO,
        env={**os.environ, **cluster.client_env(user)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def bus(secure: LocalKafka, live_domain: DemoDomain) -> Bus:
    """Topics and ACLs made by the operator with ``lianfang topics apply`` and ``lianfang acls apply``."""
    password = secure.password("operator")
    for argv in (("topics", "apply"), ("acls", "apply")):
        done = lianfang(secure, "operator", live_domain.home, *argv)
        assert done.returncode == 0, done.stderr
        assert password not in done.stdout + done.stderr
    assert "ACL rules for" in done.stdout
    assert "(as User:operator)" in done.stdout
    bus = Bus(secure.bootstrap, "", live_domain)
    bus.stamp(security=login(secure, "operator"))  # as a timestamp service would
    return bus


def login(cluster: LocalKafka, user: str) -> KafkaSecuritySettings:
    return KafkaSecuritySettings(
        security_protocol="SASL_SSL",
        sasl_username=user,
        sasl_password=cluster.password(user),  # type: ignore[arg-type]
        ca_file=cluster.ca_file,
    )


@pytest.fixture(scope="module")
def services(
    secure: LocalKafka, bus: Bus, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RouterProcess, HubProcess]]:
    tmp = Path(tmp_path_factory.mktemp("secure-services"))
    router = RouterProcess(
        bus, bus.domain.home, tmp / "router.log", group="lianfang-router", **secure.client_env("router")
    )
    # Logged in as ``hub``, with the default app id ``lianfang-hub`` that the ACLs name.
    hub = HubProcess(
        bus, tmp / "hub.log", tmp / "hub-data", LIANFANG_HUB_APP_ID="lianfang-hub", **secure.client_env("hub")
    )
    try:
        wait_for(lambda: router.metric("lianfang_registry_version", service="router"), 60, "router", router)
        wait_for(lambda: hub.metric("lianfang_hub_events_observed_total") is not None, 90, "hub", hub)
        yield router, hub
    finally:
        hub.stop()
        router.stop()


def wait_for(condition: Any, timeout: float, what: str, *watched: Worker) -> Any:
    """Poll ``condition()`` until truthy; fail early, with its log, if a watched service has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for service in watched:
            assert service.alive(), f"{what} exited ({service.proc.returncode}):\n{service.tail()}"
        value = condition()
        if value:
            return value
        time.sleep(0.3)  # poll interval inside a deadline loop
    tails = "\n".join(s.tail() for s in watched)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{tails}")


def client(cluster: LocalKafka, bus: Bus, participant: str, tmp: Path) -> Client:
    return Client(
        keystore=bus.domain.keys(participant),
        registry=bus.domain.registry,
        bootstrap=bus.bootstrap,
        outbox_path=tmp / f"{participant}.sqlite",
        security=login(cluster, participant),
    )


def read_until(reader: Client, wanted: Any, timeout: float, *watched: Worker) -> envelope.Opened:
    """The first inbox event ``wanted(opened)`` accepts, read as that participant, within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for service in watched:
            assert service.alive(), f"a service exited:\n{service.tail()}"
        for opened in reader.inbox(timeout=1.0):
            if wanted(opened):
                return opened
    tails = "\n".join(s.tail() for s in watched)
    raise AssertionError(f"{reader.participant} never received the event\n{tails}")


LEAD: dict[str, Any] = {
    "category": "domestic_violence",
    "channel": "police_call",
    "town": "nancai",
    "victim": {"name": "孙某某", "phone": "13766665555", "is_minor": False, "sex": "female"},
    "minor": False,
    "risk_indicators": [],
    "narrative": "丈夫多次殴打, 邻居报警。",
    "requests_joint_meeting": True,  # professional judgement: the hub raises an alert at once
}


def test_a_lead_published_as_police_is_routed_opened_by_its_recipients_and_alerts_the_coordinators(
    secure: LocalKafka, bus: Bus, services: tuple[RouterProcess, HubProcess], tmp_path: Path
) -> None:
    router, hub = services
    with client(secure, bus, "police", tmp_path) as police:
        lead_id = police.publish_lead(LEAD)
        assert police.flush(60), f"the outbox did not drain: {police.drainer.last_error}"

    for participant in ("womens_federation", "mediation.nancai"):
        with client(secure, bus, participant, tmp_path) as reader:
            opened = read_until(reader, lambda o: o.header.id == lead_id, 90, router, hub)
        assert opened.header.sender == "police"
        assert opened.sections["details"]["victim"]["name"] == "孙某某", f"{participant} opens the lead"

    with client(secure, bus, "coordinators", tmp_path) as coordinators:
        alert = read_until(
            coordinators,
            lambda o: o.header.type == "joint_meeting.alert" and lead_id in o.header.refs,
            120,
            router,
            hub,
        )
    assert alert.header.sender == "hub"
    assert alert.header.subject == opened.header.subject
    assert {r["code"] for r in alert.sections["details"]["reasons"]} == {"professional_judgement"}

    dead = lianfang(secure, "operator", bus.domain.home, "deadletter", "list", "--json")
    assert (dead.returncode, dead.stdout) == (0, ""), dead.stderr


def test_publishing_routing_and_opening_each_land_in_a_verified_audit_chain_only_the_operator_reads(
    secure: LocalKafka, bus: Bus, services: tuple[RouterProcess, HubProcess], tmp_path: Path
) -> None:
    router, hub = services
    with client(secure, bus, "police", tmp_path) as police:
        lead_id = police.publish_lead({**LEAD, "requests_joint_meeting": False})
        assert police.flush(60), f"the outbox did not drain: {police.drainer.last_error}"
    with client(secure, bus, "womens_federation", tmp_path) as reader:
        read_until(reader, lambda o: o.header.id == lead_id, 90, router, hub)
    # Both clients are closed: their chains were signed at the head and shipped.

    def chains() -> dict[str, list[AuditEntry]]:
        by_actor: dict[str, list[AuditEntry]] = {}
        for line in read_topic(bus.bootstrap, bus.names.audit, login(secure, "operator")):
            item = parse_line(line)
            if isinstance(item, AuditEntry):
                by_actor.setdefault(item.actor, []).append(item)
        return by_actor

    def steps(found: dict[str, list[AuditEntry]]) -> dict[str, AuditEntry]:
        wanted = {
            "publish": ("police", lambda e: e.object == lead_id),
            "route": ("router", lambda e: e.object == lead_id),
            "open_section": ("womens_federation", lambda e: (e.object or "").startswith(lead_id + "/")),
            "hub": ("hub", lambda e: (e.object or "").startswith(lead_id + "/")),
        }
        got = {}
        for step, (who, match) in wanted.items():
            hits = [e for actor, es in found.items() if principal(actor) == who for e in es if match(e)]
            if hits:
                got[step] = hits[0]
        return got if len(got) == len(wanted) else {}

    got = wait_for(lambda: steps(chains()), 60, "the audit entries of the lead", router, hub)
    assert got["publish"].action == "publish"
    assert "womens_federation" in (got["route"].to or ())
    assert got["open_section"].object == f"{lead_id}/details+triage"
    assert got["hub"].action == "open_section"

    verified = lianfang(secure, "operator", bus.domain.home, "audit", "verify", "--bootstrap", bus.bootstrap)
    assert verified.returncode == 0, verified.stderr
    police_chain = next(line for line in verified.stdout.splitlines() if line.startswith("police/sdk-"))
    assert "0 signed checkpoint" not in police_chain, "a closed client signs its head"

    with pytest.raises(TransportError):
        read_topic(bus.bootstrap, bus.names.audit, login(secure, "police"), timeout_s=15)


def test_a_gateway_logged_in_as_police_publishes_and_serves_the_police_inbox(
    secure: LocalKafka, bus: Bus, services: tuple[RouterProcess, HubProcess], tmp_path: Path
) -> None:
    router, hub = services
    gateway = GatewayProcess(
        bus, tmp_path / "spool", tmp_path / "gateway.log", served="police", **secure.client_env("police")
    )
    try:
        gateway.wait_ready(bus)
        status, answer = gateway.post(lead_body("13766660001", town="nancai", name="吴某某"))
        assert status == 202, answer
        event_id = answer["event_id"]
        with client(secure, bus, "womens_federation", tmp_path) as reader:
            opened = read_until(reader, lambda o: o.header.id == event_id, 90, router, hub, gateway)
        assert opened.sections["details"]["victim"]["name"] == "吴某某"

        def in_police_inbox() -> bool:
            status, page = gateway.request(
                "GET", "/v1/inbox?limit=50", None, gateway.signed("GET", "/v1/inbox?limit=50", None)
            )
            assert status == 200, page
            return event_id in {e["header"]["id"] for e in page["events"]}

        wait_for(in_police_inbox, 60, "the lead in the police inbox through the gateway", gateway)
    finally:
        gateway.stop()


class ConsoleProcess(Worker):
    """The coordinator console logged in as ``coordinators``; /metrics on its own port."""

    def __init__(self, cluster: LocalKafka, home: Path, tmp: Path) -> None:
        port = free_port()
        super().__init__(
            "services.console",
            {
                **cluster.client_env("coordinators"),
                "LIANFANG_HOME": str(home),
                "LIANFANG_CONSOLE_DATA_DIR": str(tmp / "console-data"),
                "LIANFANG_CONSOLE_PORT": str(free_port()),
                "LIANFANG_CONSOLE_METRICS_PORT": str(port),
            },
            tmp / "console.log",
            port=port,
        )


def test_the_console_logged_in_as_the_coordinators_shows_the_hubs_alert(
    secure: LocalKafka, bus: Bus, services: tuple[RouterProcess, HubProcess], tmp_path: Path
) -> None:
    router, hub = services
    console = ConsoleProcess(secure, bus.domain.home, tmp_path)
    try:
        wait_for(lambda: console.metric("lianfang_console_inbox_up") == 1, 90, "the console", console)
        seen = console.metric("lianfang_console_inbox_events_total", type="joint_meeting.alert") or 0
        with client(secure, bus, "police", tmp_path) as police:
            police.publish_lead({**LEAD, "victim": {**LEAD["victim"], "phone": "13766660002"}})
            assert police.flush(60)
        wait_for(
            lambda: (
                (console.metric("lianfang_console_inbox_events_total", type="joint_meeting.alert") or 0)
                > seen
            ),
            120,
            "the alert in the console",
            router,
            hub,
            console,
        )
    finally:
        console.stop()


def test_an_edited_copy_of_an_audit_entry_on_the_topic_is_reported_forged_and_its_chain_still_verifies(
    secure: LocalKafka, bus: Bus, services: tuple[RouterProcess, HubProcess], tmp_path: Path
) -> None:
    """Whoever can write the topic (here the operator) can add records, but not unnoticed, and not to
    the genuine chain: the edited copy no longer matches the hash its writer signed. (Last in the
    module: the audit topic holds a forged record from here on.)"""
    with client(secure, bus, "police", tmp_path) as police:
        police.publish_lead({**LEAD, "requests_joint_meeting": False})
        assert police.flush(60)
        actor = police.trail.actor
    lines = wait_for(
        lambda: [
            line
            for line in read_topic(bus.bootstrap, bus.names.audit, login(secure, "operator"))
            if b'"publish"' in line and actor.encode() in line
        ],
        60,
        "the publish entry on the topic",
    )
    forged = lines[-1].replace(b'"publish"', b'"console_view"')
    seq = parse_line(lines[-1]).seq
    KafkaSink(bus.bootstrap, bus.names.audit, login(secure, "operator"))(actor.encode(), forged)

    verified = lianfang(secure, "operator", bus.domain.home, "audit", "verify", "--bootstrap", bus.bootstrap)
    assert verified.returncode == EXIT_CODES["forged"], verified.stderr
    assert f"FORGED entry seq {seq} claiming {actor}" in verified.stderr
    assert f"{actor}: ok," in verified.stdout
