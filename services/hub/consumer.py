"""faust's Kafka consumer with its gap bookkeeping corrected: the hub's app builds its consumer from here.

faust commits, per partition, the offsets its agents acknowledged, up to the first one missing. An
offset no record is ever delivered for (a transaction's commit marker, a compacted-away record) would
stop that forever, so the fetch loop records each jump in the offsets it reads as a *gap*, counted as
done. faust-streaming 0.15 records the jump from read offset ``r`` to the next record at ``o`` as the
offsets ``r + 1`` to ``o`` *inclusive*: the record's own offset is counted twice, once as a gap and
once when its agent acknowledges it. Its commit step takes the first run of consecutive offsets in the
sorted list, and a repeated number ends a run, so one commit round commits no further than one
transaction of the router's (each ends in a marker). Under steady load a round rarely has more than
one transaction to commit; after a restart or a burst it has hundreds, committed one per round (one
per second) while more arrive: the group's lag grows without bound, and so do faust's lists of
acknowledged offsets (soaks after faults showed it: ``docs/faults.md``).

:class:`GapSafeConsumer` records the gap as ``r + 1`` to ``o - 1``: exactly the offsets no record was
delivered for. A record is then counted done only when its agent acknowledges it, as before, and a
round commits every transaction acknowledged so far. :class:`HubApp` is a ``faust.App`` whose
transport builds it.

It can also read its partitions again from their committed offsets while it runs. faust commits
nothing more of a partition whose acknowledged offsets start past the offset after its last commit:
records were handed on and never acknowledged. A soak at 20 leads a second with broker faults left a
restarted hub's inbox partition so for 20 minutes, records at its head never acknowledged nor read
again, their victims never alerted (``docs/faults.md``; the cause inside faust not found).
:meth:`GapSafeConsumer.unacknowledged_head` tells such a partition, and
:meth:`GapSafeConsumer.read_again_from_committed` does what faust does after a rebalance: the fetch
loop stopped, every partition sought back to its committed offset, the loop resumed. What was applied
already is applied again as a restart would (the hub's state drops events it has seen).
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka

READ_AGAIN_TIMEOUT_S = 30.0
"""How long :meth:`GapSafeConsumer.read_again_from_committed` waits for the fetch loop to hand on the
record it holds and stop (a record waits while its agent's buffer is full)."""


class GapSafeConsumer(faust_aiokafka.Consumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._parked = asyncio.Event()  # the fetch loop waits for the flow to resume

    async def _wait_next_records(self, timeout: float) -> Any:  # noqa: ASYNC109 (faust's signature)
        if not self.flow_active:
            self._parked.set()
        return await super()._wait_next_records(timeout)

    def unacknowledged_head(self, tp: Any) -> bool:
        """Whether faust holds acknowledged offsets (or gaps) of ``tp`` that start past the offset
        after its last commit: it commits nothing more of ``tp`` until the records before them are
        acknowledged (faust's own test, in ``_new_offset``)."""
        committed = self._committed_offset.get(tp)
        firsts = [min(acked)] if (acked := self._acked.get(tp)) else []
        if gaps := self._gap.get(tp):
            firsts.append(min(gap.begin for gap in gaps))
        return committed is not None and bool(firsts) and min(firsts) - committed > 1

    async def read_again_from_committed(self, wait_s: float = READ_AGAIN_TIMEOUT_S) -> bool:
        """Seek every partition back to its committed offset with the fetch loop stopped, as faust
        does after a rebalance; False, and nothing done, while a rebalance runs or when one starts
        meanwhile (its own seek reads again from the committed offsets, and its recovery lets the fetch
        loop go on), or when the fetch loop did not stop within ``wait_s``."""
        app = self.app
        rebalances = app.rebalancing_count

        def undisturbed() -> bool:
            return not app.rebalancing and app.rebalancing_count == rebalances

        if not self.flow_active or not undisturbed():
            return False
        self._parked.clear()
        self.stop_flow()
        try:
            try:
                await asyncio.wait_for(self._parked.wait(), wait_s)
            except TimeoutError:
                return False
            if not undisturbed():
                return False
            await self.perform_seek()
            return True
        finally:
            if undisturbed():
                self.resume_flow()

    async def _add_gap(self, tp: Any, offset_from: int, offset_to: int) -> None:
        """Called as ``_add_gap(tp, read + 1, next_record)``; faust counts ``offset_to`` in the gap,
        so pass the offset before the record: only offsets without a record become a gap."""
        await super()._add_gap(tp, offset_from, offset_to - 1)


class GapSafeTransport(faust_aiokafka.Transport):
    Consumer = GapSafeConsumer


class HubApp(faust.App):
    """A faust app whose consumer is a :class:`GapSafeConsumer` (faust's own producer, tables and
    agents otherwise)."""

    def _new_transport(self) -> Any:
        return GapSafeTransport(self.conf.broker_consumer, self)
