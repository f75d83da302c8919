"""The event loop's lag: how much later than asked a task ran, which is how long the Kafka consumer's
heartbeats waited."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from services.bus import looplag

pytestmark = pytest.mark.unit

HELD_S = 0.5


@pytest.mark.parametrize(
    ("asked_at", "woke_at", "lag"),
    [(10.0, 10.25, 0.0), (10.0, 10.2, 0.0), (10.0, 12.75, 2.5)],
    ids=["on time", "early (never a negative lag)", "held 2.5 s"],
)
def test_the_lag_is_how_much_later_than_asked_the_loop_woke(
    asked_at: float, woke_at: float, lag: float
) -> None:
    assert looplag.lateness(asked_at, 0.25, woke_at) == pytest.approx(lag)


def _busy(seconds: float) -> None:
    """Hold the caller's thread (and so its event loop) with CPU work for ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_a_loop_held_by_blocking_work_is_measured_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    lags: list[float] = []

    async def hold_the_loop() -> None:
        watcher = asyncio.create_task(looplag.watch(lags.append, interval_s=0.01, warn_s=HELD_S * 0.8))
        deadline = time.monotonic() + 10
        while not lags:
            assert time.monotonic() < deadline, "the watcher measured nothing"
            await asyncio.sleep(0.01)  # poll interval inside a deadline loop
        _busy(HELD_S)  # CPU work in the loop, as a big batch's verification
        while max(lags) < HELD_S * 0.8:
            assert time.monotonic() < deadline, f"no lag near {HELD_S} s measured: {max(lags)}"
            await asyncio.sleep(0.01)  # poll interval inside a deadline loop
        watcher.cancel()

    with caplog.at_level(logging.WARNING, logger="lianfang.looplag"):
        asyncio.run(hold_the_loop())
    assert HELD_S * 0.8 <= max(lags) < HELD_S + 5
    assert any("the event loop was held for" in r.getMessage() for r in caplog.records)
