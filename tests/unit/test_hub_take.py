"""The hub's inbox batches (services/hub/take.py): woken by records, at most ``max_`` a batch, at most
``within`` after a batch's first record. The stream here is a stand-in for the few parts of a faust
stream the batches use; the hub's integration tests run them on faust and Kafka."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from services.hub import take

pytestmark = pytest.mark.unit

LOOP_TURNS = 20


@dataclass(frozen=True)
class _Event:
    value: int


class _Stream:
    """What :func:`take.batches` uses of a faust stream; :meth:`feed` plays faust's passive drainer."""

    def __init__(self) -> None:
        self.enable_acks = True
        self._processors: list[Any] = []
        self.current_event: _Event | None = None
        self.should_stop = False
        self.channel = self
        self.waits = 0  # calls of wait_for_stopped: each one a wake-up of mode's wait_first
        self.passive = False
        self._stop = asyncio.Event()

    def __aiter__(self) -> _Stream:  # handed to the passive drainer, which feed() plays
        return self

    async def __anext__(self) -> Any:
        raise StopAsyncIteration

    def add_processor(self, processor: Any) -> None:
        self._processors.append(processor)

    def _enable_passive(self, _channel: Any) -> None:
        self.passive = True

    async def wait_for_stopped(self, awaitable: Any) -> bool:
        self.waits += 1
        waited = asyncio.ensure_future(awaitable)
        stopped = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait([waited, stopped], return_when=asyncio.FIRST_COMPLETED)
        waited.cancel()
        stopped.cancel()
        return self._stop.is_set()

    async def feed(self, value: int) -> None:
        self.current_event = _Event(value)
        for processor in self._processors:
            await processor(value)

    def stop(self) -> None:
        self.should_stop = True
        self._stop.set()


class _Taker:
    """The batches consumed in a task: each batch's values and the loop time it was handed over."""

    def __init__(
        self, stream: _Stream, max_: int, within: float, *, hold: asyncio.Event | None = None
    ) -> None:
        self.got: list[tuple[list[int], float]] = []
        self.hold = hold
        self.task = asyncio.ensure_future(self._run(take.batches(stream, max_, within)))  # type: ignore[arg-type]

    async def _run(self, batches: AsyncIterator[list[Any]]) -> None:
        async for batch in batches:
            self.got.append(([event.value for event in batch], asyncio.get_running_loop().time()))
            if self.hold is not None:
                await self.hold.wait()

    async def until(self, count: int, deadline_s: float = 5.0) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline_s
        while len(self.got) < count:
            assert loop.time() < end, f"{len(self.got)} batches of {count} in {deadline_s} s: {self.got}"
            await asyncio.sleep(0.001)  # polls within a deadline


def test_a_lone_record_is_handed_over_once_its_window_is_over() -> None:
    asyncio.run(_a_lone_record_is_handed_over_once_its_window_is_over())


async def _a_lone_record_is_handed_over_once_its_window_is_over() -> None:
    stream = _Stream()
    taker = _Taker(stream, max_=10, within=0.05)
    await asyncio.sleep(0)
    fed_at = asyncio.get_running_loop().time()
    await stream.feed(1)
    await taker.until(1)
    assert taker.got[0][0] == [1]
    assert taker.got[0][1] - fed_at >= 0.05
    stream.stop()
    await taker.task


def test_an_idle_stream_waits_once_for_its_first_record_not_once_a_window() -> None:
    asyncio.run(_an_idle_stream_waits_once_for_its_first_record_not_once_a_window())


async def _an_idle_stream_waits_once_for_its_first_record_not_once_a_window() -> None:
    stream = _Stream()
    taker = _Taker(stream, max_=10, within=0.005)
    await asyncio.sleep(0.2)  # idle time: forty windows of 5 ms
    assert stream.waits == 1
    assert taker.got == []
    await stream.feed(1)
    await taker.until(1)
    stream.stop()
    await taker.task


def test_a_full_batch_is_handed_over_without_waiting_for_its_window() -> None:
    asyncio.run(_a_full_batch_is_handed_over_without_waiting_for_its_window())


async def _a_full_batch_is_handed_over_without_waiting_for_its_window() -> None:
    stream = _Stream()
    taker = _Taker(stream, max_=3, within=60.0)
    await asyncio.sleep(0)
    for value in range(3):
        await stream.feed(value)
    await taker.until(1)
    assert taker.got[0][0] == [0, 1, 2]
    stream.stop()
    await taker.task


def test_records_that_arrive_while_a_batch_is_handled_make_the_next_batch_in_order() -> None:
    asyncio.run(_records_that_arrive_while_a_batch_is_handled_make_the_next_batch_in_order())


async def _records_that_arrive_while_a_batch_is_handled_make_the_next_batch_in_order() -> None:
    stream = _Stream()
    hold = asyncio.Event()
    taker = _Taker(stream, max_=3, within=0.01, hold=hold)
    await asyncio.sleep(0)
    await stream.feed(0)
    await taker.until(1)
    for value in (1, 2):  # while batch [0] is being handled
        await stream.feed(value)
    await asyncio.sleep(0.02)  # older than the window by the time the handling ends
    hold.set()
    for _ in range(LOOP_TURNS):  # turns of the event loop, no time: a timer of the window would not fire
        await asyncio.sleep(0)
    # Its first record's window was over: handed over without a second wait.
    assert [values for values, _ in taker.got] == [[0], [1, 2]]
    stream.stop()
    await taker.task


def test_the_stream_waits_for_room_when_a_batch_is_full() -> None:
    asyncio.run(_the_stream_waits_for_room_when_a_batch_is_full())


async def _the_stream_waits_for_room_when_a_batch_is_full() -> None:
    stream = _Stream()
    hold = asyncio.Event()
    taker = _Taker(stream, max_=2, within=0.0, hold=hold)
    await asyncio.sleep(0)
    await stream.feed(0)
    await taker.until(1)  # [0] handed over and held
    await stream.feed(1)
    await stream.feed(2)  # the next batch is full
    third = asyncio.ensure_future(stream.feed(3))
    await asyncio.sleep(0.01)
    assert not third.done()
    hold.set()
    await third
    await taker.until(3)
    assert [values for values, _ in taker.got] == [[0], [1, 2], [3]]
    stream.stop()
    await taker.task


def test_the_stream_gets_its_acks_and_processors_back_when_the_batches_end() -> None:
    asyncio.run(_the_stream_gets_its_acks_and_processors_back_when_the_batches_end())


async def _the_stream_gets_its_acks_and_processors_back_when_the_batches_end() -> None:
    stream = _Stream()
    taker = _Taker(stream, max_=5, within=0.01)
    await asyncio.sleep(0)
    assert (stream.enable_acks, len(stream._processors), stream.passive) == (False, 1, True)
    stream.stop()
    await taker.task
    assert (stream.enable_acks, stream._processors) == (True, [])


def test_a_batch_of_nothing_or_a_negative_window_is_refused() -> None:
    asyncio.run(_a_batch_of_nothing_or_a_negative_window_is_refused())


async def _a_batch_of_nothing_or_a_negative_window_is_refused() -> None:
    stream = _Stream()
    for max_, within in ((0, 0.1), (1, -0.1)):
        with pytest.raises(ValueError, match="at least one record"):
            await anext(take.batches(stream, max_, within))  # type: ignore[arg-type]
