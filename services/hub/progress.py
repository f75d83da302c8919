"""Whether the hub's agents make progress, for ``lianfang_hub_worker_progress_timestamp_seconds``: pure
bookkeeping, no faust and no Kafka.

An agent is *stuck* from the moment it takes a record until it has finished one: a record it hangs on
(a send no broker acknowledges) or fails on again and again keeps it stuck, however often it
handles it again. An agent waiting for records, or holding one while the worker is not fresh (that pause
has its own alert), is not stuck. The progress time is now while no agent is stuck, else the moment
the longest-stuck agent took its record.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class AgentProgress:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._stuck_since: dict[str, float] = {}

    def taken(self, agent: str) -> None:
        """``agent`` took a record to work on (a failure before :meth:`done` leaves it stuck)."""
        self._stuck_since.setdefault(agent, self._clock())

    def done(self, agent: str) -> None:
        """``agent`` finished a record: it is no longer stuck."""
        self._stuck_since.pop(agent, None)

    def at(self) -> float:
        """Unix time up to which every agent had finished the record it took."""
        return min(self._stuck_since.values(), default=self._clock())

    def stuck(self) -> list[str]:
        return sorted(self._stuck_since)
