"""The fault catalogue: each case a fault on the three-node cluster (replication 3,
``min.insync.replicas=2``) while an agency publishes a steady load of leads through the SDK and the
gateway (:mod:`tests.faults.bed`), then the guarantees over every lead accepted so far: none lost, none
twice in any inbox, one alert per victim, delivered once. Each case prints its time to recover: from
the end of the fault (the restart, the healed link) until every lead accepted before then was in all
its inboxes.

The cases share one pipeline, in order. ``make faults`` (``LIANFANG_FAULTS=all``) runs them;
``make test`` runs the lab's own test here and a three-minute soak (``test_soak.py``) that injects
these faults at random (``tests/faults/conftest.py``).
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.faults.bed import KAFKA_HOSTS, Bed
from tests.faults.netns import RANGE, Lab
from tests.kit import DemoDomain

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

LOAD_S = 20.0
"""Seconds of load before and during each fault."""


def test_the_lab_puts_each_host_in_its_own_namespace_on_test_addresses_and_nothing_leaves_the_machine() -> (
    None
):
    import ipaddress

    with Lab(["a", "b"]) as lab:
        a, b = lab["a"], lab["b"]
        assert a.netns != b.netns
        assert all(ipaddress.ip_address(h.address) in RANGE for h in (a, b))
        listener = b.call(lambda: _listen(b.address))
        try:
            assert a.call(lambda: _connects(b.address, listener.getsockname()[1]))
            lab.cut("b")
            assert not a.call(lambda: _connects(b.address, listener.getsockname()[1], timeout=1))
            lab.heal("b")
            assert a.call(lambda: _connects(b.address, listener.getsockname()[1], timeout=5))
        finally:
            listener.close()
        routes = subprocess.run(
            a.command(["ip", "route", "get", "192.0.2.1"]), capture_output=True, text=True, check=False
        )
        assert routes.returncode != 0, f"a host has a route off the lab: {routes.stdout}"
        assert "unreachable" in routes.stderr
        assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "0"
    assert not lab.exists()


def _listen(address: str) -> socket.socket:
    s = socket.socket()
    s.bind((address, 0))
    s.listen()
    return s


def _connects(address: str, port: int, timeout: float = 5) -> bool:
    try:
        socket.create_connection((address, port), timeout=timeout).close()
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------- the catalogue


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    tmp = Path(tmp_path_factory.mktemp("faults"))
    domain = DemoDomain.create(tmp / ".lianfang", now=datetime.now(UTC))
    b = Bed(tmp, domain, rate=4.0, seed=int(os.environ.get("SEED", "1")))
    b.up()
    try:
        yield b
    finally:
        b.down()


def _load(seconds: float) -> None:
    time.sleep(seconds)  # the load generator runs meanwhile: this is the fault's duration, not a wait


def _report(pipeline: Bed, fault: str, recovery_s: float) -> None:
    pipeline.workers["agency"].check_alive()
    check = pipeline.check()
    print(f"\n[fault] {fault}: recovered in {recovery_s:.1f} s; {check}")
    assert not check.lost, f"{fault}: accepted leads lost: {check.lost[:5]}"
    assert not check.duplicated, f"{fault}: leads in an inbox twice: {check.duplicated[:5]}"
    assert not check.duplicate_alerts, f"{fault}: duplicate alerts: {check.duplicate_alerts[:5]}"
    assert not check.missing_alerts, f"{fault}: victims without an alert: {check.missing_alerts[:5]}"
    assert check.accepted > 0


def test_sigkill_of_one_broker_then_its_restart_loses_and_duplicates_no_lead(pipeline: Bed) -> None:
    _load(LOAD_S / 2)
    pipeline.kill_broker(2)
    _load(LOAD_S)
    pipeline.restart_broker(2)
    _report(pipeline, "SIGKILL of broker 2, restart", pipeline.recover(time.monotonic()))


def test_sigkill_of_the_active_controller_then_its_restart_loses_and_duplicates_no_lead(
    pipeline: Bed,
) -> None:
    _load(LOAD_S / 2)
    leader = pipeline.active_controller()
    pipeline.kill_broker(leader)
    _load(LOAD_S)
    pipeline.restart_broker(leader)
    _report(
        pipeline,
        f"SIGKILL of the active controller (node {leader}), restart",
        pipeline.recover(time.monotonic()),
    )


def test_a_partition_isolating_one_broker_then_healing_loses_and_duplicates_no_lead(pipeline: Bed) -> None:
    _load(LOAD_S / 2)
    pipeline.lab.cut(KAFKA_HOSTS[0])
    _load(LOAD_S)
    pipeline.lab.heal(KAFKA_HOSTS[0])
    _report(pipeline, "partition isolating broker 1, healed", pipeline.recover(time.monotonic()))


def test_a_partition_isolating_a_router_worker_then_healing_loses_and_duplicates_no_lead(
    pipeline: Bed,
) -> None:
    _load(LOAD_S / 2)
    pipeline.lab.cut("router-1")
    _load(LOAD_S)
    pipeline.lab.heal("router-1")
    _report(pipeline, "partition isolating router-1, healed", pipeline.recover(time.monotonic()))


def test_a_slow_and_lossy_link_between_the_agency_and_the_cluster_loses_and_duplicates_no_lead(
    pipeline: Bed,
) -> None:
    _load(LOAD_S / 2)
    pipeline.lab.impair("agency", rate_kbit=256, loss_percent=10)
    _load(LOAD_S)
    pipeline.lab.restore("agency")
    _report(
        pipeline, "agency link at 256 kbit/s with 10 % loss, restored", pipeline.recover(time.monotonic())
    )


def test_a_full_disk_on_one_broker_then_space_freed_and_a_restart_loses_and_duplicates_no_lead(
    pipeline: Bed,
) -> None:
    """Broker 3's log directory on a small tmpfs (mounted here, unmounted after), filled by a file
    to within a few hundred KiB, so that the load fills the rest: Kafka takes the directory offline,
    and as it is the broker's only one, the broker stops. The other two keep every partition writable
    (min.insync.replicas=2). Then the file is removed and the broker restarted."""
    node = 3
    pipeline.move_broker_to_tmpfs(node)
    try:
        _load(LOAD_S / 2)
        what = pipeline.fill_broker_disk(node)
        _load(LOAD_S)  # two brokers carry the load meanwhile
        pipeline.free_broker_disk(node)
        _report(
            pipeline,
            f"full disk on broker {node} ({what}), space freed, restart",
            pipeline.recover(time.monotonic()),
        )
    finally:
        pipeline.move_broker_to_disk(node)


@pytest.mark.parametrize("service", ["router-1", "hub", "gateway"])
def test_sigkill_of_a_service_at_random_points_repeatedly_loses_and_duplicates_no_lead(
    pipeline: Bed, service: str
) -> None:
    rng = random.Random(f"{os.environ.get('SEED', '1')}-{service}")
    for _ in range(3):
        _load(rng.uniform(2, 8))
        pipeline.kill(service)
        pipeline.restart(service)
    _report(pipeline, f"SIGKILL of {service} 3 times at random points", pipeline.recover(time.monotonic()))


def test_a_gateway_of_two_processes_one_killed_at_random_points_then_one_process_again_loses_and_duplicates_no_lead(
    pipeline: Bed,
) -> None:
    """The gateway started again as two processes on its port; three times one of them is SIGKILLed (its
    supervisor starts it again), so a retry may reach the other while the killed one's request is in
    progress (409, retried with the same key). Then one process again, which sends what the second's
    spool held."""
    rng = random.Random(f"{os.environ.get('SEED', '1')}-gateway-processes")
    pipeline.kill("gateway")
    pipeline.gateway_processes = 2
    pipeline.restart("gateway")
    in_progress = float("nan")
    try:
        for _ in range(3):
            _load(rng.uniform(2, 8))
            pipeline.kill_gateway_process(rng)
        _load(rng.uniform(2, 8))
        series = pipeline.workers["gateway"].metrics() or {}
        in_progress = sum(
            v
            for k, v in series.items()
            if k.startswith("lianfang_gateway_rejections_total{") and 'reason="in_progress"' in k
        )
    finally:
        pipeline.kill("gateway")
        pipeline.gateway_processes = 1
        pipeline.restart("gateway")
    _report(
        pipeline,
        "SIGKILL of one of two gateway processes 3 times at random points, then one process "
        f"(409 in_progress answered by the processes running at the end: {in_progress:.0f})",
        pipeline.recover(time.monotonic()),
    )


def test_the_load_ends_with_every_offered_lead_accepted_and_the_outbox_drained(pipeline: Bed) -> None:
    counts = pipeline.stop_load()
    check = pipeline.check()
    print(f"\n[faults] offered {counts['offered']}, {check}")
    assert counts["drained"], "the agency's outbox did not drain"
    assert check.ok, str(check)
