"""How late a worker's event loop runs: a task that asks to wake every ``interval_s`` and records how
much later than asked it woke (the loop's lag).

A Kafka consumer of aiokafka heartbeats from a task on the worker's own loop: CPU work that holds the
loop (verifying a large batch, a slow callback) delays every heartbeat, and a loop held longer than
the session timeout gets the worker dropped from its group, which then rebalances. The lag says how
close a worker comes to that, on /metrics and in its log.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger("lianfang.looplag")

INTERVAL_S = 0.25
"""How often the watcher asks to wake: a lag is measured to about this resolution, at a negligible cost."""

WARN_S = 2.0
"""A lag from which the worker logs a warning (a fifth of the router's 10 s session timeout)."""


def lateness(asked_at: float, interval_s: float, woke_at: float) -> float:
    """How much later than ``asked_at + interval_s`` the loop woke (never below zero)."""
    return max(0.0, woke_at - asked_at - interval_s)


async def watch(
    observe: Callable[[float], None], *, interval_s: float = INTERVAL_S, warn_s: float = WARN_S
) -> None:
    """Measure the running loop's lag for ever (cancel the task to stop): each measurement goes to
    ``observe``, and one of ``warn_s`` or more is logged."""
    loop = asyncio.get_running_loop()
    while True:
        asked_at = loop.time()
        await asyncio.sleep(interval_s)  # the measurement itself: how late does this sleep end?
        lag = lateness(asked_at, interval_s, loop.time())
        observe(lag)
        if lag >= warn_s:
            log.warning(
                "the event loop was held for %.1f s: Kafka heartbeats waited as long (the group drops "
                "a worker that misses them for its session timeout)",
                lag,
            )
