"""The hub's inbox in batches: woken by records, not by a clock.

faust's ``Stream.noack_take(max_, within)`` waits for a full buffer with a timeout of ``within`` in a
loop: an idle hub woke every 5 ms (its default window) to find nothing, 200 times a second, and each
wake-up made three tasks and an ``asyncio.wait`` (mode's ``wait_first``): the event loop's thread
used about 6 % of a CPU with no record in sight (the benchmark machine on a slow evening), and the
same wake-ups ran in every gap between records under load. :func:`batches` keeps its contract
(events in order, at most ``max_`` a batch, acknowledged by hand, so a batch that fails is not
acknowledged) with another timing:

- an empty stream waits for its first record and nothing else (no timer);
- a batch waits at most ``within`` after its *first* record for more, or until it holds ``max_``; a
  batch whose first record arrived longer ago than that (records that came while the previous batch
  was handled) is handed over at once;
- records keep arriving while a batch is handled, into the next batch (up to ``max_``; then the
  stream waits for room), so the wait between two batches under load is the handling, not a window.

It hangs a processor on the stream and consumes the stream passively, as ``noack_take`` does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import faust

__all__ = ["batches"]


async def batches(stream: faust.Stream[Any], max_: int, within: float) -> AsyncIterator[list[Any]]:
    """The stream's events in batches (see the module): the caller acknowledges each batch's events."""
    if max_ < 1 or within < 0:
        raise ValueError("a batch holds at least one record and waits a time that is not negative")
    loop = asyncio.get_running_loop()
    buffer: list[Any] = []
    first_at = 0.0  # loop time of the buffer's first record
    arrived = asyncio.Event()  # the buffer has a record
    ready = asyncio.Event()  # the buffer is full, or its window is over
    room = asyncio.Event()  # the buffer may take another record
    room.set()

    async def add(value: Any) -> Any:
        nonlocal first_at
        while len(buffer) >= max_:  # the batch in hand is full: the stream waits for room
            room.clear()
            if await stream.wait_for_stopped(room.wait()):
                return value  # stopping: the record stays unacknowledged, read again after a restart
        event = stream.current_event
        if event is None:
            raise RuntimeError("a record reached the inbox batches without its event")
        if not buffer:
            first_at = loop.time()
            arrived.set()
        buffer.append(event)
        if len(buffer) >= max_:
            ready.set()
        return value

    acks = stream.enable_acks
    stream.enable_acks = False  # acknowledged by hand, once handled
    stream.add_processor(add)
    stream._enable_passive(aiter(stream.channel))  # type: ignore[arg-type]  # the stream runs in the background
    try:
        while not stream.should_stop:
            if not buffer and await stream.wait_for_stopped(arrived.wait()):
                break
            ready.clear()
            left = first_at + within - loop.time()
            if left > 0 and len(buffer) < max_:
                timer = loop.call_later(left, ready.set)
                try:
                    await ready.wait()
                finally:
                    timer.cancel()
            batch = buffer[:]
            buffer.clear()
            arrived.clear()
            room.set()
            yield batch
    finally:
        stream.enable_acks = acks
        stream._processors.remove(add)
