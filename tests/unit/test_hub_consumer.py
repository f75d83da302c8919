"""The hub's faust consumer counts as a gap only the offsets no record was delivered for, so one commit
round commits every transaction acknowledged so far; and it reads its partitions again from their
committed offsets when records at a partition's head were handed on and never acknowledged. Pure:
faust's consumer object is built but never started, with no broker; its fetch loop's calls are made
here as the loop makes them, or its own fetch loop runs over records given in place of aiokafka's."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import faust
import pytest

from services.hub.consumer import FETCH_MAX_WAIT_MS, GapSafeConsumer, HubApp

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


async def kafka_consumer_settings(app_class: type[faust.App]) -> tuple[str, int]:
    """The isolation level and fetch wait of the aiokafka consumer the app's worker would start."""
    consumer: Any = consumer_of(app_class)
    kafka = consumer._new_consumer_thread()._create_worker_consumer(consumer.transport)
    try:
        return str(kafka._isolation_level), int(kafka._fetch_max_wait_ms)
    finally:
        await kafka._client.close()


def test_the_hub_s_kafka_consumer_waits_at_most_100_ms_a_fetch_where_faust_s_waits_1500() -> None:
    assert FETCH_MAX_WAIT_MS == 100
    assert asyncio.run(kafka_consumer_settings(HubApp))[1] == 100
    assert asyncio.run(kafka_consumer_settings(faust.App))[1] == 1500, (
        "faust's own: if it changes, look again"
    )


def test_the_hub_s_kafka_consumer_reads_committed_records_only_where_faust_s_reads_uncommitted() -> None:
    assert asyncio.run(kafka_consumer_settings(HubApp))[0] == "read_committed"
    assert asyncio.run(kafka_consumer_settings(faust.App))[0] == "read_uncommitted", (
        "faust's own without exactly_once: if it changes, look again"
    )


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


def test_gaps_added_past_overlapping_and_below_the_commit_leave_the_tree_faust_would_leave() -> None:
    # (from, to) as the fetch loop calls it: to is the next record's offset, never in the gap.
    calls = [(103, 104), (107, 108), (105, 109), (120, 125), (121, 123), (95, 101), (130, 130), (124, 131)]
    hub, theirs = consumer_of(HubApp), consumer_of(faust.App)
    for consumer in (hub, theirs):
        consumer._committed_offset[TP] = 99  # type: ignore[attr-defined]

    def intervals(consumer: object) -> list[tuple[int, int]]:
        return sorted((g.begin, g.end) for g in consumer._gap[TP])  # type: ignore[attr-defined]

    for begin, end in calls:
        asyncio.run(hub._add_gap(TP, begin, end))  # type: ignore[attr-defined]
        # faust's own counts the offset it is given in the gap: given the one before the record.
        asyncio.run(theirs._add_gap(TP, begin, end - 1))  # type: ignore[attr-defined]
        assert intervals(hub) == intervals(theirs), (begin, end)
    assert intervals(hub) == [(100, 101), (103, 104), (105, 109), (120, 131)]


def test_a_record_read_but_not_yet_acknowledged_is_not_committed_through_the_gap_before_it() -> None:
    consumer = consumer_of(HubApp)
    asyncio.run(read_and_acknowledge(consumer, [100, 101, 102], committed=100))
    # The fetch loop reads 104 after the marker at 103 and records the gap; its agent is still on it.
    asyncio.run(consumer._add_gap(TP, 103, 104))  # type: ignore[attr-defined]

    assert commit_round(consumer) == 103
    assert commit_round(consumer) is None


def record(offset: int) -> SimpleNamespace:
    """What aiokafka's fetcher gives faust for one record of the hub's inbox."""
    return SimpleNamespace(
        topic=TP.topic,
        partition=TP.partition,
        offset=offset,
        timestamp=None,
        timestamp_type=0,
        headers=[],
        key=b"k",
        value=b"v",
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=1,
    )


async def stalled_then_read_again(
    read_again: bool, settle_s: float = 5, never_acknowledged: frozenset[int] = frozenset({101, 102, 103})
) -> tuple[list[int], list[int | None]]:
    """faust's own fetch loop (``_drain_messages``) over one inbox partition committed at 100, holding
    records 100-109 and fetched five at a time from the consumer's position. The records
    ``never_acknowledged`` (101-103, as the soak's stalled partition showed) are handed on and, the
    first time only, never acknowledged; every other record is acknowledged when handed on. Once all
    ten are handed on: a commit round, then :meth:`GapSafeConsumer.read_again_from_committed` if asked,
    then commit rounds until the ten are committed or ``settle_s`` have passed. Returns the offsets
    handed on and the rounds' commits."""
    consumer: Any = consumer_of(HubApp)  # in the running loop: mode's events belong to it
    position = {"at": 100}
    consumer._committed_offset[TP] = 100
    consumer._read_offset[TP] = 100  # as faust's seek to the committed offset leaves it
    dropped = set(never_acknowledged)
    handed: list[int] = []
    commits: list[int | None] = []
    fetcher = SimpleNamespace(_stopped=asyncio.Event())

    async def fetch(active_partitions: Any, wait_s: float) -> dict[Any, list[SimpleNamespace]]:
        batch = list(range(position["at"], 110))[:5]
        if batch:
            position["at"] = batch[-1] + 1
        else:
            await asyncio.sleep(0.01)  # the broker's fetch wait, shortened
        return {TP: [record(o) for o in batch]} if batch else {}

    async def seek_to_committed() -> dict[Any, int]:
        position["at"] = consumer._committed_offset[TP]
        return {TP: position["at"]}

    async def hand_on(message: Any) -> None:
        handed.append(message.offset)
        if message.offset in dropped:
            dropped.discard(message.offset)
        else:
            consumer.ack(message)

    async def until(condition: Callable[[], bool], seconds: float = 5) -> None:
        deadline = asyncio.get_running_loop().time() + seconds
        while not condition():
            if asyncio.get_running_loop().time() >= deadline:
                return
            await asyncio.sleep(0.01)  # poll interval inside a deadline loop

    consumer._getmany = lambda active_partitions, timeout: fetch(active_partitions, timeout)
    consumer._get_active_partitions = lambda: {TP}
    consumer.seek_to_committed = seek_to_committed
    consumer.highwater = lambda tp: 110
    consumer.callback = hand_on
    consumer.flow_active = True
    consumer.app.topics.acks_enabled_for = lambda topic: True
    loop = asyncio.create_task(consumer._drain_messages(fetcher))
    await until(lambda: len(handed) >= 10)
    commits.append(commit_round(consumer))
    assert consumer.unacknowledged_head(TP)
    if read_again:
        assert await consumer.read_again_from_committed(wait_s=5)
    await until(lambda: commit_round(consumer) == 110 or consumer._committed_offset[TP] == 110, settle_s)
    commits.append(consumer._committed_offset[TP])
    fetcher._stopped.set()
    await asyncio.wait_for(loop, 5)
    return handed, commits


def test_a_partition_whose_head_was_never_acknowledged_commits_again_once_read_again() -> None:
    handed, commits = asyncio.run(stalled_then_read_again(read_again=True))

    assert handed[:10] == list(range(100, 110))
    assert set(range(101, 110)) <= set(handed[10:])  # read again from the commit at 101
    assert commits == [101, 110]


def test_without_reading_again_such_a_partition_commits_nothing_more() -> None:
    handed, commits = asyncio.run(stalled_then_read_again(read_again=False, settle_s=1))

    assert handed == list(range(100, 110))
    assert commits == [101, 101]


def test_a_single_record_handed_on_and_never_acknowledged_is_not_committed_past() -> None:
    """faust alone commits 110 here: its head test lets one missing record at the committed offset
    through, and the lead in it is never applied."""
    handed, commits = asyncio.run(
        stalled_then_read_again(read_again=False, settle_s=1, never_acknowledged=frozenset({101}))
    )

    assert handed == list(range(100, 110))
    assert commits == [101, 101]


def test_a_single_record_never_acknowledged_is_applied_once_read_again() -> None:
    handed, commits = asyncio.run(
        stalled_then_read_again(read_again=True, never_acknowledged=frozenset({101}))
    )

    assert 101 in handed[10:]
    assert commits == [101, 110]


def test_records_acknowledged_out_of_order_are_committed_once_the_first_is_acknowledged() -> None:
    consumer: Any = consumer_of(HubApp)
    consumer.app.topics.acks_enabled_for = lambda topic: True
    consumer._committed_offset[TP] = 100
    messages = {o: consumer._to_message(TP, record(o)) for o in range(100, 104)}

    async def delivered(message: Any) -> None:
        return None

    consumer.callback = delivered
    for message in messages.values():
        asyncio.run(consumer.callback(message))
    for o in (101, 102, 103):
        consumer.ack(messages[o])

    assert commit_round(consumer) is None
    assert consumer.unacknowledged_head(TP)
    consumer.ack(messages[100])
    assert commit_round(consumer) == 104
    assert not consumer.unacknowledged_head(TP)


def test_a_partition_acknowledged_in_order_has_no_unacknowledged_head() -> None:
    consumer: Any = consumer_of(HubApp)
    asyncio.run(read_and_acknowledge(consumer, list(router_transactions(100, 5)), committed=100))

    assert not consumer.unacknowledged_head(TP)
    commit_round(consumer)
    assert not consumer.unacknowledged_head(TP)


def test_reading_again_leaves_a_rebalance_s_stopped_flow_alone() -> None:
    async def during_a_rebalance() -> tuple[bool, bool]:
        consumer: Any = consumer_of(HubApp)
        consumer.app.rebalancing = True  # faust stopped the flow; its recovery seeks and resumes it
        consumer.stop_flow()
        return await consumer.read_again_from_committed(wait_s=0.1), consumer.flow_active

    assert asyncio.run(during_a_rebalance()) == (False, False)
