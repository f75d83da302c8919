"""The short freeze window on a real broker: without a fresh timestamp statement the router pauses
(losing nothing) and the gateway answers 503; a statement by an undelegated key is refused and
counted; a statement naming a registry the process never received tells it that it is behind; the hub
holds its inbox records (nothing committed) and handles each once a statement arrives; an SDK client
following the registry reads nothing from its inbox until one does."""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from services.cli import main as cli_main
from services.kernel import envelope
from services.kernel.errors import RegistryStaleError, TransportError
from services.kernel.keystore import Keystore
from services.sdk.client import Client
from services.sdk.metrics import SdkMetrics
from tests.integration.buskit import Bus, HubProcess, RegistryChange, RouterProcess
from tests.integration.test_gateway import GatewayProcess, lead_body
from tests.integration.test_hub import Agency, Alerts, reasons, subject_of
from tests.kit import DemoDomain

pytestmark = pytest.mark.integration


def _bus(kafka_bootstrap: str, domain: DemoDomain, name: str) -> Bus:
    """A bus with no statement on it yet (as if no timestamp service ran)."""
    return Bus.create(kafka_bootstrap, f"t-{name}-{datetime.now(UTC):%H%M%S%f}.", domain, stamp=False)


@pytest.fixture
def router_on(tmp_path: Path) -> Iterator[Any]:
    started: list[RouterProcess] = []

    def start(bus: Bus, *, fresh: bool = False) -> RouterProcess:
        worker = RouterProcess(bus, bus.domain.home, tmp_path / "router.log", f"{bus.prefix}router")
        started.append(worker)
        bus.wait_for(
            lambda: worker.metric("lianfang_freshness_fresh", service="router") == (1 if fresh else 0),
            120,
            "the router to start",
        )
        if not fresh:  # the gauge is set once the worker holds its partitions and asks whether to pause
            bus.wait_for(lambda: worker.metric("lianfang_router_paused") == 1, 120, "the router to pause")
        return worker

    yield start
    for worker in started:
        worker.stop()


def _delivered_once(bus: Bus, sealed: list[envelope.SealedRecord]) -> bool:
    """Every event in the police inbox exactly once (each is a lead police reported)."""
    counts = bus.inbox_ids()["police"]
    assert all(counts[s.header.id] <= 1 for s in sealed), "an event reached police twice"
    return all(counts[s.header.id] == 1 for s in sealed)


def _undelegated_key() -> dict[str, Any]:
    store = Keystore("timestamp")
    kid = store.add_signing_key()
    return {kid: store.signing[kid]}


def test_a_router_without_a_fresh_statement_pauses_and_routes_every_waiting_event_once_one_arrives(
    kafka_bootstrap: str, live_domain: DemoDomain, router_on: Any
) -> None:
    bus = _bus(kafka_bootstrap, live_domain, "fresh-missing")
    worker = router_on(bus)
    assert worker.metric("lianfang_freshness_fresh", service="router") == 0
    waiting = [bus.seal(phone=f"1360000010{i}") for i in range(3)]
    bus.publish(waiting)

    # An expired statement leaves it paused: events wait, none is refused or delivered.
    bus.stamp(issued=datetime.now(UTC) - timedelta(minutes=20), valid_for=timedelta(minutes=10))
    bus.wait_for(
        lambda: worker.metric("lianfang_freshness_expiry_timestamp_seconds", service="router"),
        120,
        "the expired statement to be read",
    )
    assert worker.metric("lianfang_router_paused") == 1
    assert bus.inbox_ids()["police"] == {}
    assert bus.deadletters() == []
    assert "not known to be fresh (stale)" in worker.tail(400)

    bus.stamp()
    bus.wait_for(lambda: _delivered_once(bus, waiting), 120, "routing to resume with every waiting event")
    assert worker.metric("lianfang_router_paused") == 0
    assert worker.metric("lianfang_freshness_fresh", service="router") == 1
    assert bus.deadletters() == []


def test_a_statement_signed_by_a_key_the_registry_does_not_delegate_is_refused_and_counted(
    kafka_bootstrap: str, live_domain: DemoDomain, router_on: Any
) -> None:
    bus = _bus(kafka_bootstrap, live_domain, "fresh-forged")
    worker = router_on(bus)
    sealed = bus.seal(phone="13600000110")
    bus.publish([sealed])
    bus.stamp(keys=_undelegated_key())
    bus.wait_for(
        lambda: worker.metric(
            "lianfang_freshness_statements_rejected_total", service="router", reason="unknown_key"
        ),
        120,
        "the forged statement to be refused",
    )
    assert worker.metric("lianfang_router_paused") == 1
    assert bus.inbox_ids()["police"] == {}
    assert "freshness statement refused" in worker.tail(400)


def test_a_statement_naming_a_registry_the_router_never_received_pauses_it_until_that_registry_arrives(
    kafka_bootstrap: str, live_domain: DemoDomain, router_on: Any
) -> None:
    bus = _bus(kafka_bootstrap, live_domain, "fresh-behind")
    bus.stamp()
    worker = router_on(bus, fresh=True)
    (kid,) = live_domain.keys("hrss").signing
    withheld = RegistryChange.revocation(live_domain, "hrss", kid)  # v2, not published yet
    bus.stamp(registry=withheld.registry)
    bus.wait_for(
        lambda: worker.metric("lianfang_router_paused") == 1, 120, "the router to notice it is behind"
    )
    assert "(behind)" in worker.tail(400)
    sealed = bus.seal(phone="13600000120")
    bus.publish([sealed])
    assert bus.inbox_ids()["police"] == {}

    bus.produce([(b"registry", withheld.data)], topic=bus.names.registry)
    bus.wait_for(lambda: _delivered_once(bus, [sealed]), 120, "routing to resume under the registry named")
    assert worker.metric("lianfang_registry_version", service="router") == withheld.registry.version


def _post(gateway: GatewayProcess, body: bytes) -> tuple[int, dict[str, str], Any]:
    headers = gateway.signed("POST", "/v1/events", body)
    request = urllib.request.Request(gateway.base + "/v1/events", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


def test_a_gateway_without_a_fresh_statement_answers_503_with_retry_after_and_accepts_once_one_arrives(
    kafka_bootstrap: str, live_domain: DemoDomain, tmp_path: Path
) -> None:
    bus = _bus(kafka_bootstrap, live_domain, "fresh-gw")
    gateway = GatewayProcess(bus, tmp_path / "spool", tmp_path / "gateway.log")
    try:
        gateway.wait_ready(bus)
        status, headers, problem = _post(gateway, lead_body("13600000130"))
        assert status == 503, problem
        assert headers["Retry-After"] == "30"
        assert headers["Content-Type"].startswith("application/problem+json")
        assert problem["type"].endswith("/registry-stale")
        assert "no freshness statement" in problem["detail"]
        assert gateway.metric("lianfang_freshness_fresh", service="gateway") == 0

        bus.stamp()
        bus.wait_for(
            lambda: gateway.metric("lianfang_freshness_fresh", service="gateway") == 1, 120, "a fresh gateway"
        )
        status, _headers, answer = _post(gateway, lead_body("13600000131"))
        assert status == 202, answer
    finally:
        gateway.stop()


def _hub_committed_past_every_record(bus: Bus) -> bool:
    inbox = bus.names.inbox("hub")
    committed = bus.inbox_commits(f"{bus.prefix}hub", "hub")
    return all(r.offset < committed.get(r.partition, 0) for r in bus.read_all([inbox])[inbox])


def test_a_hub_without_a_fresh_statement_holds_its_inbox_records_and_raises_the_alert_once_one_arrives(
    kafka_bootstrap: str, live_domain: DemoDomain, tmp_path: Path
) -> None:
    bus = _bus(kafka_bootstrap, live_domain, "fresh-hub")
    # The router is told not to wait, so the lead reaches the hub's inbox while the hub has no statement.
    router = RouterProcess(
        bus,
        live_domain.home,
        tmp_path / "router.log",
        f"{bus.prefix}router",
        LIANFANG_ROUTER_REQUIRE_FRESHNESS="false",
    )
    hubs = [HubProcess(bus, tmp_path / "hub.log", tmp_path / "hub-data")]
    alerts = Alerts(bus, tmp_path, clock=lambda: datetime.now(UTC))
    police = Agency(bus, "police", tmp_path)
    phone = "13600000140"
    subject = subject_of(bus, phone)

    def holds_the_lead(hub: HubProcess) -> None:
        """The hub holds the lead: no alert, nothing committed or dead-lettered, the log says why."""
        bus.wait_for(
            lambda: hub.metric("lianfang_hub_waiting_for_freshness", source="inbox") == 1,
            120,
            f"the hub to hold the lead:\n{hub.tail()}",
        )
        assert hub.metric("lianfang_freshness_fresh", service="hub") == 0
        assert hub.total("lianfang_hub_events_observed_total") == 0
        assert hub.total("lianfang_hub_alerts_total") == 0
        assert alerts.breaches_for(subject) == []
        assert alerts.by_subject.get(subject) is None
        assert bus.inbox_commits(f"{bus.prefix}hub", "hub") == {}
        assert bus.deadletters() == []
        assert "hub: registry v1 is not known to be fresh" in hub.tail(400)
        assert "waiting for a fresh timestamp statement" in hub.tail(400)

    try:
        bus.wait_for(lambda: hubs[0].metric("lianfang_freshness_required", service="hub") == 1, 120, "a hub")
        lead_id = police.lead(phone, datetime.now(UTC) - timedelta(hours=1), requests_joint_meeting=True)
        bus.wait_for(lambda: bus.inbox_ids()["hub"][lead_id] == 1, 120, "the lead in the hub's inbox")
        holds_the_lead(hubs[0])
        assert "not known to be fresh (missing)" in hubs[0].tail(400)

        # An expired statement changes nothing; nor does a crash: the restarted hub meets the lead again.
        bus.stamp(issued=datetime.now(UTC) - timedelta(minutes=20), valid_for=timedelta(minutes=10))
        bus.wait_for(
            lambda: hubs[0].metric("lianfang_freshness_expiry_timestamp_seconds", service="hub"),
            120,
            "the expired statement to be read",
        )
        holds_the_lead(hubs[0])
        hubs[0].kill()
        hubs.append(HubProcess(bus, tmp_path / "hub-restarted.log", tmp_path / "hub-data"))
        holds_the_lead(hubs[1])
        assert "not known to be fresh (stale)" in hubs[1].tail(400)

        hub = hubs[1]
        bus.stamp()
        got = alerts.wait_for(subject, bool, timeout=120)
        assert reasons(got) == {"professional_judgement"}
        # The hub commits past the lead (and past its own alert coming back through its inbox) ...
        bus.wait_for(lambda: _hub_committed_past_every_record(bus), 120, "the hub to commit its inbox")
        assert hub.metric("lianfang_hub_waiting_for_freshness", source="inbox") == 0
        assert hub.metric("lianfang_freshness_fresh", service="hub") == 1
        # ... having raised the alert exactly once: no record lost, none handled twice.
        assert hub.metric("lianfang_hub_events_observed_total", type="lead.reported") == 1
        assert hub.total("lianfang_hub_alerts_total") == 1
        assert bus.inbox_ids()["coordinators"] == Counter({got[0]["_event_id"]: 1})
        assert len(alerts.wait_for(subject, bool)) == 1
        assert bus.deadletters() == []
    finally:
        police.client.close()
        alerts.client.close()
        for hub in hubs:
            hub.stop()
        router.stop()


def test_an_inbox_reader_following_the_registry_reads_nothing_without_a_fresh_statement_and_every_event_once_one_arrives(
    kafka_bootstrap: str,
    live_domain: DemoDomain,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bus = _bus(kafka_bootstrap, live_domain, "fresh-sdk")
    sealed = bus.seal(phone="13600000150")
    bus.produce([(sealed.key, sealed.value)], topic=bus.names.inbox("police"), headers=sealed.headers)
    series = CollectorRegistry()
    metrics = SdkMetrics(series)

    def value(name: str, **labels: str) -> float | None:
        return series.get_sample_value(name, labels)

    client = Client.open(
        participant="police",
        home=live_domain.home,
        bootstrap=bus.bootstrap,
        outbox_path=tmp_path / "police.sqlite",
        topic_prefix=bus.prefix,
        metrics=metrics,
    )
    try:
        # A bounded read gives up after its timeout with a retryable error naming freshness.
        caplog.set_level(logging.INFO, logger="lianfang")
        with pytest.raises(RegistryStaleError) as raised:
            list(client.inbox(timeout=2))
        assert isinstance(raised.value, TransportError)
        assert raised.value.state == "missing"
        assert "not known to be fresh (missing" in str(raised.value)
        assert "inbox police: not read while registry v1 is not known to be fresh (missing)" in caplog.text
        assert "13600000150" not in caplog.text
        assert sealed.header.subject not in caplog.text
        assert value("lianfang_inbox_waiting_for_freshness") == 0
        assert value("lianfang_freshness_fresh", service="sdk") == 0
        assert value("lianfang_inbox_events_received_total", type=sealed.header.type) is None
        assert bus.inbox_commits(client.inbox_group, "police") == {}

        # `lianfang inbox` says so and exits non-zero, its own group committing nothing either.
        argv = ["inbox", "--as", "police", "--home", str(live_domain.home), "--bootstrap", bus.bootstrap]
        assert cli_main([*argv, "--topic-prefix", bus.prefix]) == 1
        assert "is not known to be fresh (missing" in capsys.readouterr().err

        # A following read waits, counted, and hands the event out once a fresh statement arrives.
        got: list[str] = []
        failed: list[BaseException] = []

        def read() -> None:
            try:
                got.extend(o.header.id for o in client.inbox(follow=True, max_records=1))
            except BaseException as e:  # reported to the test below
                failed.append(e)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        bus.wait_for(lambda: value("lianfang_inbox_waiting_for_freshness") == 1, 30, "the reader to wait")
        assert got == []
        bus.stamp()
        bus.wait_for(lambda: not reader.is_alive(), 60, "the reader to read the event")
        assert failed == []
        assert got == [sealed.header.id]
        assert value("lianfang_inbox_waiting_for_freshness") == 0
        assert value("lianfang_freshness_fresh", service="sdk") == 1
        assert "inbox police: registry v1 is fresh: reading" in caplog.text
        assert sum(bus.inbox_commits(client.inbox_group, "police").values()) == 1
    finally:
        client.close()
