"""The hub's faust consumer counts as a gap only the offsets no record was delivered for, so one commit
round commits every transaction acknowledged so far. Pure: faust's consumer object is built but never
started; its fetch loop's calls are made here as the loop makes them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import faust
import pytest

from services.hub.consumer import GapSafeConsumer, HubApp

pytestmark = pytest.mark.unit

TP = faust.types.TP("lianfang.inbox.hub.v1", 0)


def router_transactions(first: int, count: int, records: int = 3) -> Iterator[int]:
    """The offsets of ``count`` transactions of ``records`` records each from ``first``, each
    followed by its commit marker (an offset no consumer is given)."""
    for t in range(count):
        start = first + t * (records + 1)
        yield from range(start, start + records)


def consumer_of(app_class: type[faust.App]) -> object:
    app = app_class("t-hub", broker="kafka://127.0.0.1:9", store="memory://", web_enabled=False)
    return app.consumer


async def read_and_acknowledge(consumer: object, offsets: list[int], committed: int) -> None:
    """What faust's fetch loop and the hub's agents do with ``offsets`` after a restart at
    ``committed``: each jump in the offsets read is a gap; each record is then acknowledged."""
    c: object = consumer
    c._committed_offset[TP] = committed  # type: ignore[attr-defined]
    read = None
    for offset in offsets:
        if read is not None and offset - read > 1 and read:
            await c._add_gap(TP, read + 1, offset)  # type: ignore[attr-defined]
        c._acked[TP].append(offset)  # type: ignore[attr-defined]
        c._acked_index[TP].add(offset)  # type: ignore[attr-defined]
        read = offset


def commit_round(consumer: object) -> int | None:
    new = consumer._new_offset(TP)  # type: ignore[attr-defined]
    if new is not None:
        consumer._committed_offset[TP] = new  # type: ignore[attr-defined]
    return new  # type: ignore[no-any-return]


def test_the_hub_app_builds_its_consumer_from_the_gap_safe_class() -> None:
    assert type(consumer_of(HubApp)) is GapSafeConsumer


def test_one_commit_round_commits_a_backlog_of_fifty_transactions_to_its_end() -> None:
    consumer = consumer_of(HubApp)
    offsets = list(router_transactions(100, 50))
    asyncio.run(read_and_acknowledge(consumer, offsets, committed=100))

    assert commit_round(consumer) == offsets[-1] + 1
    assert consumer._acked[TP] == []  # type: ignore[attr-defined]


def test_faust_s_own_consumer_still_commits_such_a_backlog_one_transaction_per_round() -> None:
    """Why the hub carries :class:`GapSafeConsumer`: when this fails, faust has fixed its gaps and
    the class can go."""
    consumer = consumer_of(faust.App)
    asyncio.run(read_and_acknowledge(consumer, list(router_transactions(100, 50)), committed=100))

    assert [commit_round(consumer) for _ in range(3)] == [105, 109, 113]


def test_the_gap_before_a_record_holds_only_the_offsets_no_record_was_delivered_for() -> None:
    consumer = consumer_of(HubApp)
    asyncio.run(read_and_acknowledge(consumer, [100, 101, 102, 106], committed=100))

    gaps = consumer._gap[TP]  # type: ignore[attr-defined]
    assert sorted((g.begin, g.end) for g in gaps) == [(103, 106)]  # 103, 104, 105: not 106


def test_a_record_read_but_not_yet_acknowledged_is_not_committed_through_the_gap_before_it() -> None:
    consumer = consumer_of(HubApp)
    asyncio.run(read_and_acknowledge(consumer, [100, 101, 102], committed=100))
    # The fetch loop reads 104 after the marker at 103 and records the gap; its agent is still on it.
    asyncio.run(consumer._add_gap(TP, 103, 104))  # type: ignore[attr-defined]

    assert commit_round(consumer) == 103
    assert commit_round(consumer) is None
