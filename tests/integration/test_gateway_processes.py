"""A gateway of two processes on one port, on a real broker with the router: both processes accept leads,
each delivered once; an inbox read is answered by whichever process the connection reaches (the second
hands it to the first); /metrics holds both processes' samples by slot; a process killed is started
again, and SIGTERM to the gateway stops them all. The slots' shared memory of requests is tested
without Kafka in tests/unit/test_gateway_processes.py."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.integration.buskit import Bus
from tests.integration.test_gateway import (
    GatewayProcess,
    RouterProcess,
    _delivered_exactly_once,
    lead_body,
    sent_by_a_new_gateway,
)
from tests.kit import DemoDomain
from tests.workers import free_port

pytestmark = pytest.mark.integration

SLOTS = ("0", "1")


class TwoProcesses(GatewayProcess):
    """``python -m services.gateway`` with ``LIANFANG_GATEWAY_PROCESSES=2``."""

    def __init__(self, bus: Bus, spool: Path, log: Path, **env: str) -> None:
        super().__init__(bus, spool, log, LIANFANG_GATEWAY_PROCESSES="2", **env)

    def by_slot(self, name: str, **labels: str) -> dict[str, float]:
        """One series' value in each slot that reports it, by slot."""
        values = self.metrics() or {}
        want = [f'{k}="{v}"' for k, v in labels.items()]
        out = {}
        for series, value in values.items():
            if series.startswith(name + "{") and all(w in series for w in want):
                slot = series.split('slot="', 1)[1].split('"', 1)[0]
                out[slot] = out.get(slot, 0.0) + value
        return out

    def wait_ready(self, bus: Bus) -> None:
        bus.wait_for(
            lambda: (
                self.alive()
                and tuple(sorted(self.by_slot("lianfang_gateway_outbox_depth", participant="police")))
                == SLOTS
            ),
            90,
            f"both gateway processes:\n{self.tail()}",
        )

    def post_until_both_accept(self, at_least: int, phones: str, name: str) -> set[str]:
        """Leads posted, each on a connection of its own (the kernel gives it to one of the two), until
        both processes accepted some and ``at_least`` in all; their event ids."""
        ids: set[str] = set()
        deadline = time.monotonic() + 120
        while len(self.by_slot("lianfang_gateway_events_accepted_total")) < 2 or len(ids) < at_least:
            assert time.monotonic() < deadline, f"one process took every connection: {self.tail()}"
            status, answer = self.post(lead_body(f"{phones}{len(ids):02d}", name=name))
            assert status == 202, answer
            ids.add(answer["event_id"])
        return ids

    def children(self) -> set[int]:
        """The pids of the processes the gateway started (Linux /proc)."""
        found: set[int] = set()
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            text = (task / "children").read_text().split()
            found.update(int(pid) for pid in text)
        return found


def _running(pids: set[int]) -> list[int]:
    """Those of ``pids`` still running (Linux /proc; a zombie, exited but not yet reaped, is not)."""
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in {"Z", "X"}:
            alive.append(pid)
    return alive


@pytest.fixture(scope="module")
def bus(kafka_bootstrap: str, live_domain: DemoDomain) -> Bus:
    return Bus.create(kafka_bootstrap, f"t-gwp-{datetime.now(UTC):%H%M%S%f}.", live_domain)


@pytest.fixture(scope="module")
def router(bus: Bus, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    worker = RouterProcess(bus, Path(tmp_path_factory.mktemp("router")) / "router.log")
    worker.wait_ready(bus)
    yield worker
    worker.stop()


@pytest.fixture
def gateway(bus: Bus, router: RouterProcess, tmp_path: Path) -> Iterator[TwoProcesses]:
    process = TwoProcesses(bus, tmp_path / "spool", tmp_path / "gateway.log")
    process.wait_ready(bus)
    yield process
    process.stop()


def test_both_processes_accept_leads_each_delivered_once_and_metrics_report_both_by_slot(
    bus: Bus, gateway: TwoProcesses
) -> None:
    ids = gateway.post_until_both_accept(8, "137000200", "钱某某")
    bus.wait_for(lambda: _delivered_exactly_once(bus, ids), 90, "every lead once")
    accepted = gateway.by_slot("lianfang_gateway_events_accepted_total", participant="police")
    assert sum(accepted.values()) == len(ids)
    assert sorted(gateway.by_slot("process_cpu_seconds_total")) == list(SLOTS)


def test_an_inbox_read_is_answered_by_either_process_the_second_handing_it_to_the_first(
    bus: Bus, gateway: TwoProcesses
) -> None:
    status, answer = gateway.post(lead_body("13700020100", name="冯某某"))
    assert status == 202
    event_id = answer["event_id"]
    bus.wait_for(lambda: _delivered_exactly_once(bus, {event_id}), 90, "delivery")

    pages = []
    deadline = time.monotonic() + 120
    while not gateway.by_slot("lianfang_gateway_requests_total", route="/v1/inbox").get("1"):
        assert time.monotonic() < deadline, "no inbox read reached the second process"
        path = "/v1/inbox?limit=500"
        status, page = gateway.request("GET", path, None, gateway.signed("GET", path, None))
        assert status == 200, page
        pages.append({e["header"]["id"] for e in page["events"]})
    assert all(event_id in ids for ids in pages), "every answer, by either process, holds the lead"
    served = gateway.by_slot("lianfang_gateway_inbox_events_served_total", participant="police")
    assert set(served) == {"0"}, "the first process alone reads the inbox"


def test_a_killed_process_is_started_again_and_sigterm_stops_every_process(
    bus: Bus, gateway: TwoProcesses
) -> None:
    before = gateway.children()
    assert len(before) == 2
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    bus.wait_for(lambda: len(gateway.children() - before) == 1, 60, f"a new process:\n{gateway.tail()}")
    gateway.wait_ready(bus)
    status, _ = gateway.post(lead_body("13700020200", name="陈某某"))
    assert status == 202

    running = gateway.children()
    gateway.proc.send_signal(signal.SIGTERM)
    assert gateway.proc.wait(timeout=60) == 0
    assert not _running(running), "a process outlived the gateway"


def test_a_sigkill_of_the_gateway_itself_stops_its_processes_and_a_gateway_started_again_serves(
    bus: Bus, router: RouterProcess, tmp_path: Path
) -> None:
    """The supervisor alone is killed (not its process group): its processes must not go on holding the
    port and the spools' locks."""
    spool = tmp_path / "spool"
    first = TwoProcesses(bus, spool, tmp_path / "first.log")
    try:
        first.wait_ready(bus)
        orphans = first.children()
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(timeout=30)
        bus.wait_for(
            lambda: not _running(orphans),
            60,
            "the processes of the killed gateway to stop",
        )
    finally:
        first.kill()
    second = TwoProcesses(bus, spool, tmp_path / "second.log")
    try:
        second.wait_ready(bus)
        status, answer = second.post(lead_body("13700020400", name="卫某某"))
        assert status == 202, answer
        bus.wait_for(lambda: _delivered_exactly_once(bus, {answer["event_id"]}), 90, "delivery")
    finally:
        second.stop()


def test_a_gateway_started_again_with_one_process_sends_what_both_processes_spools_held(
    bus: Bus, router: RouterProcess, tmp_path: Path
) -> None:
    """The two processes cannot reach Kafka at all, so what they accept is only in their spools (and
    they cannot read a timestamp statement: freshness is off for them)."""
    spool = tmp_path / "spool"
    dead = f"127.0.0.1:{free_port()}"
    two = TwoProcesses(
        bus, spool, tmp_path / "two.log", LIANFANG_BOOTSTRAP=dead, LIANFANG_GATEWAY_REQUIRE_FRESHNESS="false"
    )
    try:
        two.wait_ready(bus)
        ids = two.post_until_both_accept(6, "137000203", "褚某某")
        depth = two.by_slot("lianfang_gateway_outbox_depth", participant="police")
        assert depth.get("1", 0) > 0, depth
    finally:
        two.kill()
    sent_by_a_new_gateway(bus, spool, tmp_path / "one.log", ids)
