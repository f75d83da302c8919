"""A router stops when told to, broker or no broker: SIGTERM ends the process within a bound, with
status 0 and a log line saying it stopped, also when its broker died under a batch in flight (no
producer, consumer or transaction may hold the shutdown hostage to a broker that is gone)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from deploy.kafka.local import running
from tests.integration.buskit import Bus
from tests.integration.buskit import RouterProcess as Router
from tests.kit import DemoDomain

pytestmark = pytest.mark.integration

STOP_BOUND_S = 30.0
"""How long a router may take to exit after SIGTERM without a broker: its Kafka clients' close
timeouts (:data:`services.bus.eos.CLOSE_TIMEOUT_S`) with room for a loaded machine."""


def _exits_within(worker: Router, bound: float) -> tuple[int | None, float]:
    """SIGTERM the worker and poll until it exits or ``bound`` passes: its status (None if it still
    runs) and the seconds it took."""
    started = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)
    deadline = started + bound
    while time.monotonic() < deadline:
        if worker.proc.poll() is not None:
            return worker.proc.returncode, time.monotonic() - started
        time.sleep(0.1)  # poll interval inside the deadline
    return None, time.monotonic() - started


@pytest.mark.parametrize(
    ("when", "events", "routed"),
    [("mid_batch", 2000, 50), ("idle", 20, 20)],
    ids=["with a batch in flight", "idle"],
)
def test_a_router_whose_broker_died_exits_on_sigterm_within_the_bound_with_status_0(
    live_domain: DemoDomain, tmp_path: Path, when: str, events: int, routed: int
) -> None:
    with running(tmp_path / "kafka") as cluster:
        bus = Bus.create(cluster.bootstrap, f"t-stop-{when}.", live_domain)
        bus.publish([bus.seal(phone=f"132{i:08d}") for i in range(events)])
        worker = Router.started(bus, tmp_path / "router.log")
        try:
            bus.wait_for(
                lambda: (
                    (worker.metric("lianfang_router_events_routed_total", type="lead.reported") or 0)
                    >= routed
                ),
                60,
                f"the router to have routed {routed} events",
            )
            cluster.kill_node(1)
            status, took = _exits_within(worker, STOP_BOUND_S)
            assert status is not None, (
                f"the router still ran {took:.0f} s after SIGTERM without a broker:\n{worker.tail()}"
            )
            print(f"\n[router stop] {when}: exited {status} in {took:.1f} s after SIGTERM without a broker")
            assert status == 0, f"the router exited {status}:\n{worker.tail()}"
            assert "stopped on SIGTERM" in worker.log.read_text(), worker.tail()
        finally:
            worker.kill()  # only if it still runs: the test has failed then
