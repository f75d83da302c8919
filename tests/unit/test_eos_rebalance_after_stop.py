"""A rebalance callback of a consumer the worker is stopping changes nothing, without Kafka. One that
waited for the failed batch's lock used to set up producers and states after the run had cleared
them; the next run took them for its own (skipping their set-up: the state read after the previous
owner's last commit) though the partitions' next owner had moved on in between, and the first send of
one ended the worker."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from services.bus import eos
from services.bus.eos import Output, PartitionState
from services.kernel.errors import TransportError
from tests.kit import BatchSending, offline_runner

pytestmark = pytest.mark.unit

FIRST, LATE = TopicPartition("events", 0), TopicPartition("events", 1)


class FakeProducer(BatchSending):
    """A transactional producer whose sends the broker refuses; it logs its start."""

    started: ClassVar[list[str]] = []

    def __init__(self, *, transactional_id: str, **_: Any) -> None:
        self.transactional_id = transactional_id
        self._txn_manager = SimpleNamespace(is_fatal_error=lambda: False)

    async def start(self) -> None:
        self.started.append(self.transactional_id)

    async def stop(self) -> None:
        pass

    async def begin_transaction(self) -> None:
        pass

    async def abort_transaction(self) -> None:
        pass

    async def send(self, *_: Any, **__: Any) -> asyncio.Future[None]:
        refused: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        refused.set_exception(KafkaConnectionError("the broker went away"))
        return refused


class FakeConsumer:
    """Assigns FIRST on the first poll. Its stop waits for the rebalance callbacks it started, as
    aiokafka's waits for its coordination task, and with ``rebalance_on_stop`` it completes a rejoin
    (FIRST and LATE) first, as that task may."""

    rebalance_on_stop = False

    def __init__(self, **_: Any) -> None:
        self.listener: Any = None
        self.callbacks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        pass

    def subscribe(self, _topics: list[str], *, listener: Any) -> None:
        self.listener = listener

    async def getmany(self, **_: Any) -> dict[TopicPartition, list[Any]]:
        await self.listener.on_partitions_assigned({FIRST})
        return {FIRST: [SimpleNamespace(partition=0, offset=0, value=b"v", key=None)]}

    def rebalance(self, assigned: set[TopicPartition]) -> None:
        self.callbacks.append(asyncio.create_task(self.listener.on_partitions_assigned(assigned)))

    def assignment(self) -> set[TopicPartition]:
        return {FIRST}

    def seek(self, _tp: TopicPartition, _offset: int) -> None:
        pass  # every poll returns the same record anyway

    async def stop(self) -> None:
        if self.rebalance_on_stop:
            await self.listener.on_partitions_assigned({FIRST, LATE})
        await asyncio.gather(*self.callbacks)


@pytest.mark.parametrize(
    "on_stop",
    [False, True],
    ids=["a callback that waited for the failed batch", "a callback the consumer's stop lets finish"],
)
def test_an_assignment_of_a_consumer_being_stopped_sets_up_nothing_for_the_next_run(
    monkeypatch: pytest.MonkeyPatch, on_stop: bool
) -> None:
    monkeypatch.setattr(eos, "AIOKafkaProducer", FakeProducer)
    monkeypatch.setattr(eos, "AIOKafkaConsumer", FakeConsumer)
    monkeypatch.setattr(FakeProducer, "started", [])
    monkeypatch.setattr(FakeConsumer, "rebalance_on_stop", on_stop)

    async def handle(_record: Any, _state: PartitionState) -> list[Output]:
        assert isinstance(runner.consumer, FakeConsumer)
        if not on_stop:
            runner.consumer.rebalance({FIRST, LATE})  # the group rebalances while the batch is in flight
        return [Output("out", b"v")]

    runner = offline_runner(handle)

    async def empty_state(partition: int) -> PartitionState:
        return PartitionState(partition)

    async def nothing_committed(
        _consumer: Any, tps: list[TopicPartition]
    ) -> dict[TopicPartition, int | None]:
        return dict.fromkeys(tps)

    runner._load_state = empty_state  # type: ignore[method-assign]
    runner._committed = nothing_committed  # type: ignore[method-assign]
    with pytest.raises(TransportError, match="went away"):
        asyncio.run(runner._run_once())
    assert runner.producer is None, "the next run would take it for its own"
    assert runner.states == {}, "the next run would take these for its own"
    assert runner._unready == set(), "the stopped consumer's late callback left partitions to set up"
    assert FakeProducer.started == [runner.transactional_id], (
        "the stopped consumer's late callback set one up"
    )
