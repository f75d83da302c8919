"""The exactly-once runner stops when told to, without Kafka: a batch that waits on a broker for ever is
cancelled after the grace period, a close that never ends is given up, and a healthy batch that ends
within the grace is not cancelled."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from services.bus import eos
from services.bus.eos import PartitionState, TransactionalRunner
from tests.kit import offline_runner

pytestmark = pytest.mark.unit


async def _nothing(_record: Any, _state: PartitionState) -> list[Any]:
    return []


def _runner() -> TransactionalRunner:
    return offline_runner(_nothing, source="s")


def test_a_stop_cancels_a_batch_that_waits_on_a_lost_broker_after_the_grace_period(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(eos, "STOP_GRACE_S", 0.2)
    runner = _runner()
    cancelled: list[bool] = []

    async def wait_for_ever() -> None:
        try:
            await asyncio.Event().wait()  # a commit no broker will ever answer
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    runner._run_once = wait_for_ever  # type: ignore[method-assign]

    async def main() -> float:
        asyncio.get_running_loop().call_later(0.05, runner.stop)
        started = time.monotonic()
        await asyncio.wait_for(runner.run(), 10)
        return time.monotonic() - started

    took = asyncio.run(main())  # the wait_for fails the test if the batch is never cancelled
    assert cancelled == [True]
    assert took >= eos.STOP_GRACE_S, "cancelled only once the grace period had passed"
    assert runner.restarts == 0, "a stop is not a restart"


def test_a_batch_that_ends_within_the_grace_period_is_not_cancelled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eos, "STOP_GRACE_S", 5.0)
    runner = _runner()
    finished: list[bool] = []

    async def one_more_batch() -> None:
        await runner.stopping.wait()
        await asyncio.sleep(0.05)  # the batch in flight commits after the stop arrived
        finished.append(True)

    runner._run_once = one_more_batch  # type: ignore[method-assign]

    async def main() -> None:
        asyncio.get_running_loop().call_later(0.05, runner.stop)
        await asyncio.wait_for(runner.run(), 10)

    asyncio.run(main())
    assert finished == [True]


def test_a_close_that_never_ends_is_given_up_after_the_close_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eos, "CLOSE_TIMEOUT_S", 0.1)

    async def main() -> float:
        started = time.monotonic()
        await asyncio.wait_for(eos._bounded(asyncio.Event().wait(), "stopping a producer"), 10)
        return time.monotonic() - started

    assert asyncio.run(main()) >= eos.CLOSE_TIMEOUT_S, "given up once the close timeout had passed"


def test_a_close_whose_own_task_was_cancelled_inside_it_does_not_end_the_worker() -> None:
    async def close_that_lets_a_cancellation_out() -> None:
        raise asyncio.CancelledError  # aiokafka's consumer.stop() after a failed fetch

    async def main() -> str:
        await eos._bounded(close_that_lets_a_cancellation_out(), "stopping the consumer")
        return "went on"

    assert asyncio.run(main()) == "went on"
