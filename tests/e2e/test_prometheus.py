"""A real Prometheus (Debian's ``prometheus`` package) scrapes a running pipeline on loopback: a router
and a hub as subprocesses on their own topics, and an agency's SDK client in this process. The test
sends leads and a malformed record, then asks Prometheus's HTTP API for the series the dashboard and
the alerts read, polling each with a deadline until it holds a plausible value.

Prometheus loads the rules of deploy/prometheus/rules, so recording rules and alert states are checked
on real series too.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, start_http_server

from services.sdk.client import Client
from services.sdk.metrics import SdkMetrics
from tests.integration.buskit import Bus, HubProcess, RouterProcess
from tests.kit import DemoDomain
from tests.workers import free_port

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "rules"
DAY = 86400.0


class Prometheus:
    """A Prometheus server on a free loopback port, scraping ``targets`` (job -> port) every second."""

    def __init__(self, binary: str, workdir: Path, targets: dict[str, int]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "prometheus.log"
        config = {  # JSON is YAML: no YAML library needed
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES / "recording.yml"), str(RULES / "alerts.yml")],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
                for job, port in targets.items()
            ],
        }
        config_file = workdir / "prometheus.yml"
        config_file.write_text(json.dumps(config, indent=2))
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config_file}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n{self.tail()}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def query(self, promql: str) -> list[Sample]:
        """An instant query through the HTTP API (/api/v1/query)."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return [Sample(r["metric"], float(r["value"][1])) for r in body["data"]["result"]]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@dataclass(frozen=True)
class Sample:
    labels: dict[str, str]
    value: float


@dataclass
class Pipeline:
    bus: Bus
    router: RouterProcess
    hub: HubProcess
    police: Client
    prometheus: Prometheus
    group: str

    def lead(self, phone: str, **overrides: Any) -> str:
        data: dict[str, Any] = {
            "category": "domestic_violence",
            "channel": "police_call",
            "town": "houshayu",
            "victim": {"name": "周某某", "phone": phone, "is_minor": False},
            "minor": False,
            "risk_indicators": [],
            "narrative": "家庭纠纷。",
            "requests_joint_meeting": False,
            **overrides,
        }
        event_id = self.police.publish_lead(data)
        assert self.police.flush(30), "Kafka did not acknowledge the lead within 30 s"
        return event_id

    def eventually(
        self, promql: str, check: Callable[[list[Sample]], bool], what: str, timeout: float = 120
    ) -> list[Sample]:
        """Poll ``promql`` until ``check(result)`` holds; fail with the last result and the logs."""
        last: list[Sample] = []

        def holds() -> bool:
            nonlocal last
            last = self.prometheus.query(promql)
            return check(last)

        try:
            self.bus.wait_for(holds, timeout, what)
        except AssertionError as e:
            raise AssertionError(
                f"{e}\nlast result of {promql}: {last}\n--- router\n{self.router.tail(15)}\n"
                f"--- hub\n{self.hub.tail(15)}\n--- prometheus\n{self.prometheus.tail(15)}"
            ) from None
        return last


def total(result: list[Sample]) -> float:
    return sum(s.value for s in result)


def values(result: list[Sample]) -> list[float]:
    return [s.value for s in result]


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        pytest.fail(
            "prometheus is not installed (Debian's prometheus package). "
            "Run `make deps` (or `apt-get install prometheus`), then run the tests again.",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="module")
def pipeline(
    kafka_bootstrap: str,
    live_domain: DemoDomain,
    prometheus_binary: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Pipeline]:
    tmp = Path(tmp_path_factory.mktemp("prometheus-e2e"))
    bus = Bus.create(kafka_bootstrap, f"t-prom-{datetime.now(UTC):%H%M%S%f}.", live_domain)
    group = f"{bus.prefix}router"
    with contextlib.ExitStack() as stack:  # stops whatever started, in reverse order
        router = RouterProcess(
            bus, live_domain.home, tmp / "router.log", group, LIANFANG_ROUTER_LAG_INTERVAL_S="1"
        )
        stack.callback(router.stop)
        hub = HubProcess(bus, tmp / "hub.log", tmp / "hub-data", LIANFANG_HUB_TICK_INTERVAL_S="1")
        stack.callback(hub.stop)
        # The agency's SDK exposes its series from this process, as an agency system embedding it would.
        adapter_registry = CollectorRegistry()
        adapter_port = free_port()
        server, _thread = start_http_server(adapter_port, addr="127.0.0.1", registry=adapter_registry)
        stack.callback(server.server_close)
        stack.callback(server.shutdown)
        police = Client(
            keystore=live_domain.keys("police"),
            registry=live_domain.registry,
            bootstrap=kafka_bootstrap,
            outbox_path=tmp / "police.sqlite",
            topic_prefix=bus.prefix,
            metrics=SdkMetrics(adapter_registry),
        )
        stack.callback(police.close)
        jobs = {"lianfang-router": router.port, "lianfang-hub": hub.port, "lianfang-adapter": adapter_port}
        prometheus = Prometheus(prometheus_binary, tmp, jobs)
        stack.callback(prometheus.stop)
        bus.wait_for(prometheus.ready, 60, "prometheus ready")
        bus.wait_for(lambda: router.metric("lianfang_registry_version", service="router"), 60, "router start")
        bus.wait_for(lambda: hub.metric("lianfang_hub_events_observed_total") is not None, 120, "hub start")
        yield Pipeline(bus, router, hub, police, prometheus, group)


# --------------------------------------------------------------------------- the tests


def test_prometheus_scrapes_the_router_the_hub_and_the_adapter(pipeline: Pipeline) -> None:
    up = pipeline.eventually(
        'up{job=~"lianfang-.+"}', lambda r: values(r) == [1.0, 1.0, 1.0], "every target up"
    )
    assert {s.labels["job"] for s in up} == {
        "lianfang-router",
        "lianfang-hub",
        "lianfang-adapter",
    }
    # A service still starting at the first scrape puts LianfangServiceDown pending; it clears.
    pipeline.eventually('ALERTS{alertname="LianfangServiceDown"}', lambda r: r == [], "no service down")


def test_routed_leads_show_as_counts_a_rate_and_latency_percentiles(pipeline: Pipeline) -> None:
    p = pipeline
    p.lead("13600000001")
    p.lead("13600000002")
    p.eventually(
        'sum(lianfang_router_events_routed_total{job="lianfang-router",type="lead.reported"})',
        lambda r: total(r) >= 2,
        "the first two leads routed",
    )
    # A counter's series appears at its first increment: rate() sees what comes after that.
    p.lead("13600000003")
    p.eventually(
        'job_type:lianfang_router_events_routed:rate5m{job="lianfang-router",type="lead.reported"}',
        lambda r: total(r) > 0,
        "a routing rate above zero",
    )
    # A DV lead goes to police, the women's federation, the town's mediation room and the hub.
    p.eventually(
        "job_participant:lianfang_router_deliveries:rate5m > 0",
        lambda r: {"police", "womens_federation", "hub"} <= {s.labels["participant"] for s in r},
        "deliveries by participant",
    )
    quantiles = p.eventually(  # NaN while the window holds no observation
        'job:lianfang_router_event_to_routed_seconds:quantile5m{job="lianfang-router"}',
        lambda r: len(r) == 3 and all(math.isfinite(v) for v in values(r)),
        "p50, p90 and p99 of event time -> routed",
    )
    assert {s.labels["quantile"] for s in quantiles} == {"0.5", "0.9", "0.99"}
    assert all(0 <= v < 60 for v in values(quantiles)), quantiles
    published = p.eventually(
        'lianfang_adapter_events_published_total{job="lianfang-adapter"}',
        lambda r: total(r) >= 3,
        "the adapter's acknowledged events",
    )
    assert total(published) >= 3
    p.eventually(
        'lianfang_outbox_depth{job="lianfang-adapter"}', lambda r: values(r) == [0.0], "an empty outbox"
    )


def test_malformed_records_show_as_dead_letters_by_reason_and_put_the_alert_pending(
    pipeline: Pipeline,
) -> None:
    p = pipeline
    p.bus.produce([(b"not-a-subject", b"this is not an envelope")])
    p.eventually(
        'lianfang_router_deadletters_total{job="lianfang-router",reason="malformed"}',
        lambda r: total(r) >= 1,
        "a malformed dead letter",
    )
    p.bus.produce([(b"not-a-subject", b"{}")])
    p.eventually(
        'ALERTS{alertname="LianfangDeadLettersRising",reason="malformed",alertstate="pending"}',
        lambda r: total(r) == 1,
        "LianfangDeadLettersRising pending (it fires after 10 minutes)",
    )
    # Every reason's series exists from the start (at 0), so that rate() sees a reason's first letter.
    assert not p.prometheus.query('lianfang_router_deadletters_total{reason!="malformed"} > 0')
    assert p.prometheus.query('lianfang_router_deadletters_total{reason="bad_signature"} == 0')


def test_the_registry_version_is_1_and_its_expiry_is_weeks_away(pipeline: Pipeline) -> None:
    p = pipeline
    p.eventually(
        'lianfang_registry_version{job="lianfang-router",service="router"}',
        lambda r: values(r) == [1.0],
        "registry version 1",
    )
    left = p.eventually(
        'job_service:lianfang_registry_seconds_to_expiry:min{job="lianfang-router",service="router"}',
        lambda r: len(r) == 1,
        "seconds to the registry's expiry",
    )
    assert 14 * DAY < total(left) <= 91 * DAY  # the demo domain lives 90 days
    assert not p.prometheus.query('ALERTS{alertname=~"LianfangRegistry.+"}')
    assert values(p.prometheus.query('lianfang_router_paused{job="lianfang-router"}')) == [0.0]


def test_consumer_lag_covers_every_router_partition_and_drains_to_zero(pipeline: Pipeline) -> None:
    p = pipeline
    p.lead("13600000004")
    lag = p.eventually(
        f'lianfang_consumer_lag{{job="lianfang-router",group="{p.group}"}}',
        lambda r: len(r) == 12 and total(r) == 0,
        "12 partitions of lag, all drained",
    )
    assert {s.labels["topic"] for s in lag} == {p.bus.names.events}
    assert {int(s.labels["partition"]) for s in lag} == set(range(12))
    p.eventually(
        f'job_group_topic:lianfang_consumer_lag:sum{{group="{p.group}"}}',
        lambda r: values(r) == [0.0],
        "the recorded lag per group",
    )


def test_the_hub_observes_leads_raises_an_alert_and_reports_rates_per_agency(pipeline: Pipeline) -> None:
    p = pipeline
    p.lead("13600000005", requests_joint_meeting=True)
    p.eventually(
        'sum(lianfang_hub_events_observed_total{job="lianfang-hub",type="lead.reported"})',
        lambda r: total(r) > 0,
        "leads observed by the hub",
    )
    p.eventually(
        'lianfang_hub_alerts_total{job="lianfang-hub",rule="professional_judgement"}',
        lambda r: total(r) >= 1,
        "a joint-meeting alert for the reporter's request",
    )
    p.eventually("job:lianfang_hub_open_alerts:sum", lambda r: total(r) >= 1, "an open joint-meeting alert")
    # The reporter (police) is not among those that must act; the women's federation is. Its lead is
    # inside its deadline: received and pending, so it counts in no rate yet (pending is not failed).
    counts = p.eventually(
        'sum by (count) (lianfang_supervision_leads{job="lianfang-hub",agency="womens_federation"})',
        lambda r: any(s.labels["count"] == "received" and s.value >= 1 for s in r),
        "the women's federation's supervision counts",
    )
    by_count = {s.labels["count"]: s.value for s in counts}
    assert by_count.get("response_due", 0) == 0, by_count
    assert p.prometheus.query('agency_rate:lianfang_supervision_rate:ratio{agency="womens_federation"}') == []
