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

And it never commits past a record it handed on that was not acknowledged. faust's test for a
partition's head (``_new_offset``) is one off: it holds back a commit only when the first acknowledged
offset is *two or more* past the committed one, because its fetch loop leaves the committed offset
itself out of the gaps. So one record at the committed offset handed on and never acknowledged, with
the records after it acknowledged, was committed past and never applied: no error, no stall, a lead
lost. :class:`GapSafeConsumer` notes each offset it hands on and forgets it when its record is
acknowledged (or when the partition is sought or revoked: the records from the committed offset on
are read again); a commit that would pass the lowest such offset waits. The partition then stalls
instead, which the hub's commit watch sees and reads again from (above).

Its aiokafka consumer (:class:`HubConsumerThread`) reads committed records only, and its fetches wait
at the broker at most :data:`FETCH_MAX_WAIT_MS`, not faust's fixed 1.5 s. faust reads
``read_committed`` only under ``processing_guarantee="exactly_once"``, which the hub does not use; it
read the router's transactions into the hub's inbox before they were committed, and the records of
transactions the router then aborted (a worker killed mid-transaction, a send that failed). Read
committed, an aborted transaction's records are offsets no record is delivered for: gaps, as its
commit marker already was.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types.tuples import ack_lock

READ_AGAIN_TIMEOUT_S = 30.0
"""How long :meth:`GapSafeConsumer.read_again_from_committed` waits for the fetch loop to hand on the
record it holds and stop (a record waits while its agent's buffer is full)."""


class GapSafeConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return HubConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._handed_on: dict[Any, set[int]] = {}  # per partition: offsets handed on, not acknowledged
        super().__init__(*args, **kwargs)
        self._parked = asyncio.Event()  # the fetch loop waits for the flow to resume

    @property
    def callback(self) -> Callable[[Any], Awaitable[None]]:
        """What the fetch loop hands each record to (faust's conductor), with the record's offset
        noted first as handed on (for partitions of topics whose records are acknowledged)."""
        return self._hand_on

    @callback.setter
    def callback(self, deliver: Callable[[Any], Awaitable[None]]) -> None:
        async def hand_on(message: Any) -> None:
            if self.app.topics.acks_enabled_for(message.topic):
                with ack_lock:
                    self._handed_on.setdefault(message.tp, set()).add(message.offset)
            await deliver(message)

        self._hand_on = hand_on

    def ack(self, message: Any) -> bool:
        with ack_lock:
            done: bool = super().ack(message)
            if (handed := self._handed_on.get(message.tp)) is not None:
                handed.discard(message.offset)
            return done

    async def perform_seek(self) -> None:
        """faust's seek to the committed offsets: every record from them on is read again, so none of
        those handed on before is waited for."""
        with ack_lock:
            self._handed_on.clear()
        await super().perform_seek()

    async def on_partitions_revoked(self, revoked: set[Any]) -> None:
        with ack_lock:
            for tp in revoked:
                self._handed_on.pop(tp, None)
        await super().on_partitions_revoked(revoked)

    def _first_unacknowledged(self, tp: Any) -> int | None:
        """The lowest offset of ``tp`` handed on and not acknowledged, at or past its committed offset;
        offsets below it are forgotten here (a safety net: the commit never passes one, so none should be)."""
        committed = self._committed_offset.get(tp)
        with ack_lock:
            handed = self._handed_on.get(tp)
            if not handed:
                return None
            if committed is not None:
                handed.difference_update([o for o in handed if o < committed])
            return min(handed) if handed else None

    def _first_done(self, tp: Any) -> int | None:
        """The lowest offset of ``tp`` acknowledged or in a gap: where faust's next commit starts."""
        firsts = [min(acked)] if (acked := self._acked.get(tp)) else []
        if gaps := self._gap.get(tp):
            firsts.append(min(gap.begin for gap in gaps))
        return min(firsts) if firsts else None

    def _new_offset(self, tp: Any) -> int | None:
        """faust's next commit of ``tp``, unless it would pass a record handed on and not
        acknowledged: then none (the records after it stay acknowledged, committed with it)."""
        first_done = self._first_done(tp)
        waiting = self._first_unacknowledged(tp)
        if first_done is not None and waiting is not None and waiting < first_done:
            return None
        new: int | None = super()._new_offset(tp)
        return new

    async def _wait_next_records(self, timeout: float) -> Any:  # noqa: ASYNC109 (faust's signature)
        if not self.flow_active:
            self._parked.set()
        return await super()._wait_next_records(timeout)

    def unacknowledged_head(self, tp: Any) -> bool:
        """Whether faust holds acknowledged offsets (or gaps) of ``tp`` past records not acknowledged:
        they start past the offset after its last commit (faust's own test, in ``_new_offset``), or
        past a record handed on and not acknowledged (this class's). No more of ``tp`` is committed
        until the records before them are acknowledged."""
        committed = self._committed_offset.get(tp)
        first_done = self._first_done(tp)
        if committed is None or first_done is None:
            return False
        waiting = self._first_unacknowledged(tp)
        return first_done - committed > 1 or (waiting is not None and waiting < first_done)

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
        so only the offsets before the record become a gap here, without a record each.

        faust's own then rebuilds the partition's whole interval tree (``merge_overlaps``) for every
        gap, one a router transaction (its commit marker): about 4 % of the hub's CPU under load. A
        gap that overlaps none already there (each marker is past the last) is added as it is; one
        that does is merged as faust merges it, so the tree is the same either way."""
        committed = self._committed_offset[tp]
        begin = offset_from if committed is None else max(offset_from, committed + 1)
        end = offset_to  # exclusive: the record's own offset is not in the gap
        if begin >= end:
            return
        gaps = self._gap[tp]
        overlapping = gaps.overlaps_range(begin, end)
        gaps.addi(begin, end)
        if overlapping:
            gaps.merge_overlaps()


FETCH_MAX_WAIT_MS = 100
"""How long a fetch of the hub's consumer may wait at the broker for records to arrive. faust hard-codes
1,500 ms, and aiokafka keeps one fetch in flight per broker: a partition whose records were just handed
on is fetched again only once the fetch for the others (an idle suspects, serial, links or clock
partition) has come back, so routed leads waited about 1.2 s in the hub (p50 of the hub's hop at 100
alert-raising leads a second; 97 ms with this: ``docs/performance.md``). An idle hub then sends ten
fetches a second to each broker."""


class HubConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """faust's consumer thread, its worker's aiokafka consumer reading committed records only and
    waiting at most :data:`FETCH_MAX_WAIT_MS` a fetch."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # faust passes neither setting through; aiokafka reads both when ``start()`` builds its fetcher.
        consumer._isolation_level = "read_committed"
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        return consumer


class GapSafeTransport(faust_aiokafka.Transport):
    Consumer = GapSafeConsumer


class HubApp(faust.App):
    """A faust app whose consumer is a :class:`GapSafeConsumer` (faust's own producer, tables and
    agents otherwise)."""

    def _new_transport(self) -> Any:
        return GapSafeTransport(self.conf.broker_consumer, self)
