"""The runner sets a partition up after the group assigned it (aiokafka sends no heartbeat during the
assignment callback), so it may already hold records of it fetched from a position aiokafka read
without waiting for the previous owner's open transaction. Without Kafka: those records are fetched
again from the committed offset the set-up read once that transaction ended, none skipped and none
handled twice."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition

from services.bus import eos
from services.bus.eos import Output, PartitionState
from tests.kit import BatchSending, offline_runner

pytestmark = pytest.mark.unit

FIRST = TopicPartition("events", 0)
OFFSETS = [0, 1, 2, 3]


class FakeProducer(BatchSending):
    """A transactional producer every send and commit of which succeeds."""

    def __init__(self, **_: Any) -> None:
        self._txn_manager = SimpleNamespace(is_fatal_error=lambda: False)
        self.transactional_id = "g.worker-test"

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def begin_transaction(self) -> None:
        pass

    async def commit_transaction(self) -> None:
        pass

    async def send_offsets_to_transaction(self, *_: Any) -> None:
        pass

    async def send(self, *_: Any, **__: Any) -> asyncio.Future[None]:
        sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        sent.set_result(None)
        return sent


class FakeConsumer:
    """One partition of four records: its first poll assigns it and returns them all at once (as a
    fetch that ran during the callback); later polls return what lies past the position."""

    def __init__(self, **_: Any) -> None:
        self.listener: Any = None
        self.position = 0
        self.polls = 0
        self._coordinator = SimpleNamespace(generation=1, member_id="worker-a", _group_instance_id=None)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def subscribe(self, _topics: list[str], *, listener: Any) -> None:
        self.listener = listener

    async def getmany(self, **_: Any) -> dict[TopicPartition, list[Any]]:
        self.polls += 1
        if self.polls == 1:
            await self.listener.on_partitions_assigned({FIRST})
        assert self.polls < 10, "the worker never came back for the records it dropped"
        records = [
            SimpleNamespace(partition=0, offset=o, value=b"v", key=None) for o in OFFSETS[self.position :]
        ]
        self.position = len(OFFSETS)
        return {FIRST: records} if records else {}

    def seek(self, _tp: TopicPartition, offset: int) -> None:
        self.position = offset

    def assignment(self) -> set[TopicPartition]:
        return {FIRST}


@pytest.mark.parametrize(
    ("committed", "handled"),
    [(None, OFFSETS), (2, [2, 3])],
    ids=[
        "with nothing committed the records fetched before the set-up are handled after it, none skipped",
        "records the previous owner committed after they were fetched are not handled again",
    ],
)
def test_a_partition_set_up_after_its_records_were_fetched_starts_from_its_committed_offset(
    monkeypatch: pytest.MonkeyPatch, committed: int | None, handled: list[int]
) -> None:
    monkeypatch.setattr(eos, "AIOKafkaProducer", FakeProducer)
    monkeypatch.setattr(eos, "AIOKafkaConsumer", FakeConsumer)
    seen: list[int] = []

    async def handle(record: Any, _state: PartitionState) -> list[Output]:
        seen.append(record.offset)
        if record.offset == OFFSETS[-1]:
            runner.stop()
        return [Output("out", b"v")]

    runner = offline_runner(handle)

    async def empty_state(partition: int) -> PartitionState:
        return PartitionState(partition)

    async def stable_committed(_consumer: Any, tps: list[TopicPartition]) -> dict[TopicPartition, int | None]:
        return dict.fromkeys(tps, committed)  # what the previous owner had committed when its txn ended

    runner._load_state = empty_state  # type: ignore[method-assign]
    runner._committed = stable_committed  # type: ignore[method-assign]
    asyncio.run(runner._run_once())
    assert seen == handled
