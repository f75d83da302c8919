"""The hub's topics on the real broker: made ready before its faust app starts, so a table write never
meets a changelog that the broker has not listed yet (:mod:`services.hub.prepare`), and a hub set up for
other partitions than its topics have refuses to start."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.integration.buskit import Bus
from tests.kit import DemoDomain
from tests.workers import Worker, free_port

pytestmark = pytest.mark.integration

METADATA_LAG_S = 60
"""How long a topic the hub creates stays out of its metadata: past the end of each test."""


class Hub(Worker):
    """A hub worker; with ``late_metadata``, its broker lists the topics it creates a minute late."""

    def __init__(self, bus: Bus, tmp: Path, *, late_metadata: bool = False, **env: str) -> None:
        port = free_port()
        module, args = (
            ("tests.integration.late_metadata", ["services.hub"]) if late_metadata else ("services.hub", [])
        )
        super().__init__(
            module,
            {
                "LIANFANG_BOOTSTRAP": bus.bootstrap,
                "LIANFANG_HOME": str(bus.domain.home),
                "LIANFANG_HUB_TOPIC_PREFIX": bus.prefix,
                "LIANFANG_HUB_APP_ID": f"{bus.prefix}hub",
                "LIANFANG_HUB_DATA_DIR": str(tmp / "hub-data"),
                "LIANFANG_HUB_TICK_INTERVAL_S": "0",
                "LIANFANG_HUB_METRICS_PORT": str(port),
                "LIANFANG_HUB_LAG_INTERVAL_S": "0",
                "LIANFANG_TEST_METADATA_LAG_S": str(METADATA_LAG_S),
                **env,
            },
            tmp / "hub.log",
            args=args,
            port=port,
            what="the hub",
        )


@pytest.fixture
def bus(kafka_bootstrap: str, live_domain: DemoDomain) -> Bus:
    return Bus.create(kafka_bootstrap, f"t-hub-topics-{datetime.now(UTC):%H%M%S%f}.", live_domain)


@pytest.fixture
def hub_late(bus: Bus, tmp_path: Path) -> Iterator[Hub]:
    hub = Hub(bus, tmp_path, late_metadata=True)
    try:
        bus.wait_for(
            lambda: hub.check_alive() or hub.metric("lianfang_hub_events_observed_total") is not None,
            90,
            "hub start",
        )
        yield hub
    finally:
        hub.stop()


def test_a_hub_whose_broker_lists_new_topics_late_saves_the_state_of_its_first_lead(
    bus: Bus, hub_late: Hub
) -> None:
    """Had the hub left its changelog topics for faust to create while starting, its group would have
    been assigned while they were unlisted, and faust would refuse the table write (PartitionsMismatch):
    the lead refused as ``internal``, its state lost."""
    lead = bus.seal("police", phone="13700008001")
    bus.produce([(lead.key, lead.value)], topic=bus.names.inbox("hub"))  # as the router delivers it

    def handled() -> float:
        hub_late.check_alive()
        observed = hub_late.metric("lianfang_hub_events_observed_total", type="lead.reported") or 0
        return observed + refused()

    def refused() -> float:
        return hub_late.total("lianfang_hub_events_rejected_total") or 0

    bus.wait_for(handled, 60, f"the hub to handle the lead:\n{hub_late.tail()}")
    assert refused() == 0, hub_late.tail()
    assert hub_late.metric("lianfang_hub_events_observed_total", type="lead.reported") == 1


def test_a_hub_set_up_for_other_partitions_than_its_inbox_has_refuses_to_start_and_says_why(
    bus: Bus, tmp_path: Path
) -> None:
    hub = Hub(bus, tmp_path, LIANFANG_HUB_PARTITIONS="2")
    try:
        deadline = time.monotonic() + 90
        while hub.alive() and time.monotonic() < deadline:
            time.sleep(0.2)  # poll interval inside a deadline loop
        assert not hub.alive(), f"the hub still runs:\n{hub.tail()}"
    finally:
        hub.stop()
    assert hub.proc.returncode == 2
    assert "the hub's partitions setting is 2" in hub.tail()
    assert f"{bus.names.inbox('hub')} has 3" in hub.tail()
