"""Every long-running service stops when told to, broker or no broker: with their broker killed under
them, a router with a batch in flight, an idle router, the gateway, the hub and the pseudonymizer each
exit on SIGTERM within a bound, with status 0 (no producer, consumer, transaction or registry follower
may hold the shutdown hostage to a broker that is gone). One broker serves them all: it is started
once, and killed once."""

from __future__ import annotations

import signal
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from deploy.kafka.local import running
from tests.integration.buskit import Bus, PseudonymizerProcess
from tests.integration.buskit import RouterProcess as Router
from tests.kit import DemoDomain
from tests.workers import Worker, free_port

pytestmark = pytest.mark.integration

STOP_BOUND_S = 30.0
"""How long a service may take to exit after SIGTERM without a broker: the router's Kafka clients' close
timeouts (:data:`services.bus.eos.CLOSE_TIMEOUT_S`), the hub's stop deadline
(:data:`services.hub.app.STOP_DEADLINE_S`), with room for a loaded machine."""

IN_FLIGHT_EVENTS, IN_FLIGHT_ROUTED = 2000, 50
"""The busy router's backlog, and how much of it it has routed when the broker dies."""

IDLE_EVENTS = 20


def _serving(worker: Worker, metric: str, **labels: str) -> bool:
    """Whether ``worker`` serves ``metric`` on /metrics yet (raising, with its log, if it has exited)."""
    worker.check_alive()
    return worker.metric(metric, **labels) is not None


def _spawned(bus: Bus, folder: Path, service: str, env: dict[str, str]) -> Worker:
    """``python -m services.<service>`` on ``bus`` with /metrics on a free port (``env`` may name it as
    ``{port}``), just started."""
    port = free_port()
    return Worker(
        f"services.{service}",
        {
            "LIANFANG_BOOTSTRAP": bus.bootstrap,
            "LIANFANG_HOME": str(bus.domain.home),
            **{name: value.format(port=port) for name, value in env.items()},
        },
        folder / f"{service}.log",
        port=port,
        what=f"the {service}",
    )


def _gateway(bus: Bus, folder: Path) -> Worker:
    env = {
        "LIANFANG_GATEWAY_PARTICIPANTS": "police,womens_federation,health",
        "LIANFANG_GATEWAY_PORT": "{port}",
        "LIANFANG_GATEWAY_SPOOL_DIR": str(folder / "gateway-spool"),
        "LIANFANG_GATEWAY_TOPIC_PREFIX": bus.prefix,
    }
    return _spawned(bus, folder, "gateway", env)


def _hub(bus: Bus, folder: Path) -> Worker:
    env = {
        "LIANFANG_HUB_TOPIC_PREFIX": bus.prefix,
        "LIANFANG_HUB_APP_ID": f"{bus.prefix}hub",
        "LIANFANG_HUB_DATA_DIR": str(folder / "hub-data"),
        "LIANFANG_HUB_METRICS_PORT": "{port}",
    }
    return _spawned(bus, folder, "hub", env)


def _routed(bus: Bus, router: Router, events: int) -> bool:
    """Whether ``router`` has routed ``events`` leads (raising, with its log, if it has exited)."""
    router.check_alive()
    return (router.metric("lianfang_router_events_routed_total", type="lead.reported") or 0) >= events


def _exit_statuses(workers: dict[str, Worker], bound: float) -> dict[str, tuple[int | None, float]]:
    """SIGTERM every worker at once and poll until each has exited or ``bound`` passes: per worker its
    status (None if it still runs) and the seconds it took."""
    started = time.monotonic()
    for worker in workers.values():
        worker.proc.send_signal(signal.SIGTERM)
    took: dict[str, tuple[int | None, float]] = {}
    deadline = started + bound
    while len(took) < len(workers) and time.monotonic() < deadline:
        for name, worker in workers.items():
            if name not in took and worker.proc.poll() is not None:
                took[name] = (worker.proc.returncode, time.monotonic() - started)
        time.sleep(0.1)  # poll interval inside the deadline
    for name in workers.keys() - took.keys():
        took[name] = (None, time.monotonic() - started)
    return took


def test_every_service_whose_broker_died_exits_on_sigterm_within_the_bound_with_status_0(
    tmp_path: Path,
) -> None:
    port = free_port()
    domain = DemoDomain.create(
        tmp_path / ".lianfang", now=datetime.now(UTC), pseudonymizer_url=f"http://127.0.0.1:{port}"
    )
    with running(tmp_path / "kafka", discard=True) as cluster:
        busy = Bus.create(cluster.bootstrap, "t-stop-busy.", domain)
        idle = Bus.create(cluster.bootstrap, "t-stop-idle.", domain)
        busy.publish([busy.seal(phone=f"132{i:08d}") for i in range(IN_FLIGHT_EVENTS)])
        idle.publish([idle.seal(phone=f"133{i:08d}") for i in range(IDLE_EVENTS)])
        workers: dict[str, Worker] = {}
        try:
            # All but the busy router start at once (their start-ups overlap); the busy router last,
            # so that its batch is still in flight when the broker dies.
            workers["pseudonymizer"] = PseudonymizerProcess.spawned(busy, tmp_path, port)
            workers["gateway"] = _gateway(busy, tmp_path)
            workers["hub"] = _hub(busy, tmp_path)
            idle_router = Router(idle, domain.home, tmp_path / "router-idle.log", f"{idle.prefix}router")
            workers["idle router"] = idle_router
            ready = {
                "pseudonymizer": lambda: _serving(workers["pseudonymizer"], "process_start_time_seconds"),
                "gateway": lambda: _serving(
                    workers["gateway"], "lianfang_gateway_outbox_depth", participant="police"
                ),
                "hub": lambda: _serving(workers["hub"], "lianfang_hub_events_observed_total"),
                "idle router": lambda: _routed(idle, idle_router, IDLE_EVENTS),
            }
            for name, check in ready.items():
                busy.wait_for(check, 90, f"the {name} to serve")
            busy_router = Router(busy, domain.home, tmp_path / "router-busy.log", f"{busy.prefix}router")
            workers["router with a batch in flight"] = busy_router
            busy.wait_for(
                lambda: _routed(busy, busy_router, IN_FLIGHT_ROUTED),
                90,
                f"the busy router to have routed {IN_FLIGHT_ROUTED} events",
            )
            cluster.kill_node(1)
            routed = busy_router.metric("lianfang_router_events_routed_total", type="lead.reported") or 0
            assert routed < IN_FLIGHT_EVENTS, (
                f"the busy router had routed all {IN_FLIGHT_EVENTS} events before the broker died: "
                "no batch was in flight (raise IN_FLIGHT_EVENTS)"
            )
            took = _exit_statuses(workers, STOP_BOUND_S)
            for name, (status, seconds) in took.items():
                print(f"\n[stop] {name}: exited {status} in {seconds:.1f} s after SIGTERM without a broker")
            still = [name for name, (status, _) in took.items() if status is None]
            assert not still, "\n".join(
                f"the {name} still ran {STOP_BOUND_S:.0f} s after SIGTERM without a broker:\n{workers[name].tail()}"
                for name in still
            )
            failed = {name: status for name, (status, _) in took.items() if status != 0}
            assert not failed, "\n".join(
                f"the {name} exited {status}:\n{workers[name].tail()}" for name, status in failed.items()
            )
            for name in ("router with a batch in flight", "idle router"):
                assert "stopped on SIGTERM" in workers[name].log.read_text(), workers[name].tail()
        finally:
            for worker in workers.values():
                worker.kill()  # only if it still runs: the test has failed then
