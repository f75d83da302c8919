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
"""

from __future__ import annotations

from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka


class GapSafeConsumer(faust_aiokafka.Consumer):
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
