"""How the exactly-once runner handles one poll's batches, without Kafka: the batches of every
partition set up go in one transaction of the worker's producer, whose offsets carry the worker's
group membership (KIP-447) and join it only after every output is delivered; a failure aborts the
whole transaction and forgets every partition's changes. Also: the producers' partitioner puts a
keyed record where Kafka's default partitioner does."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from services.bus import eos, groupfence
from services.bus.eos import Output, PartitionState, TransactionalRunner
from services.kernel import topics
from tests.kit import BatchSending, offline_runner

pytestmark = pytest.mark.unit

SOURCE = "events"


class FakeProducer(BatchSending):
    """A transactional producer that logs what happens; ``fail`` makes its first send fail;
    ``delivery_s`` is how long a sent record waits for the broker's acknowledgement (logged)."""

    def __init__(self, log: list[str], *, fail: bool = False, delivery_s: float = 0.0) -> None:
        self.log = log
        self.fail = fail
        self.delivery_s = delivery_s
        self.sent: list[tuple[str, bytes | None]] = []
        self.offsets: list[tuple[dict[Any, Any], Any]] = []  # each commit's offsets, and as whom
        self._txn_manager = SimpleNamespace(is_fatal_error=lambda: False, lianfang_member=None)

    async def begin_transaction(self) -> None:
        self.log.append("begin")

    async def commit_transaction(self) -> None:
        await asyncio.sleep(0.01)  # the commit's round trip
        self.log.append("commit")

    async def abort_transaction(self) -> None:
        self.log.append("abort")

    async def send(self, topic: str, value: bytes | None, **_: Any) -> asyncio.Future[None]:
        await asyncio.sleep(0)  # a send may yield, as aiokafka's does
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.fail:
            future.set_exception(OSError("the broker refused the batch"))
        elif self.delivery_s:
            self.sent.append((topic, value))
            asyncio.get_running_loop().call_later(self.delivery_s, self._deliver, future)
        else:
            self.sent.append((topic, value))
            future.set_result(None)
        return future

    def _deliver(self, future: asyncio.Future[None]) -> None:
        self.log.append("delivered")
        future.set_result(None)

    async def send_offsets_to_transaction(self, offsets: dict[Any, Any], group: str) -> None:
        self.log.append("offsets")
        self.offsets.append((dict(offsets), self._txn_manager.lianfang_member))


async def _copy(record: Any, state: PartitionState) -> list[Output]:
    state.put(f"seen:{record.offset}", b"1")
    return [Output("out", record.value)]


def _consumer(assigned: set[TopicPartition], *, generation: int = 7, member_id: str = "worker-a") -> Any:
    seeks: list[tuple[TopicPartition, int]] = []
    return SimpleNamespace(
        assignment=lambda: assigned,
        seek=lambda tp, offset: seeks.append((tp, offset)),
        seeks=seeks,
        _coordinator=SimpleNamespace(generation=generation, member_id=member_id, _group_instance_id=None),
    )


def _runner(
    producer: FakeProducer, partitions: list[int], **membership: Any
) -> tuple[TransactionalRunner, dict[int, TopicPartition]]:
    runner = offline_runner(_copy, source=SOURCE)
    tps = {p: TopicPartition(SOURCE, p) for p in partitions}
    runner.producer = producer  # type: ignore[assignment]
    runner.consumer = _consumer(set(tps.values()), **membership)
    for p, tp in tps.items():
        runner.states[tp] = PartitionState(p)
    return runner, tps


def _records(partition: int, n: int, first: int = 0) -> list[Any]:
    return [
        SimpleNamespace(partition=partition, offset=i, value=b"v%d" % i, key=None)
        for i in range(first, first + n)
    ]


def test_a_polls_partitions_commit_in_one_transaction_with_each_partitions_next_offset() -> None:
    log: list[str] = []
    producer = FakeProducer(log)
    runner, tps = _runner(producer, [0, 1])
    asyncio.run(runner._process_all({tps[0]: _records(0, 3), tps[1]: _records(1, 2, first=10)}))
    assert log == ["begin", "offsets", "commit"], log
    assert [offsets for offsets, _ in producer.offsets] == [{tps[0]: 3, tps[1]: 12}]
    # Unkeyed, the copies go to partitions of "out" at random, and Kafka orders records only within one.
    assert sorted(v for topic, v in producer.sent if topic == "out") == [b"v0", b"v1", b"v10", b"v11", b"v2"]
    assert runner.states[tps[0]].get("seen:2") == b"1"
    assert runner.states[tps[1]].get("seen:11") == b"1"
    assert not runner.states[tps[0]].pending


def test_the_offsets_are_committed_as_the_group_member_the_worker_is_now() -> None:
    producer = FakeProducer([])
    runner, tps = _runner(producer, [0], generation=12, member_id="worker-b")
    asyncio.run(runner._process_all({tps[0]: _records(0, 1)}))
    assert [member for _, member in producer.offsets] == [groupfence.Member(12, "worker-b")]


def test_a_worker_the_group_has_forgotten_commits_nothing_and_forgets_the_batchs_state() -> None:
    """aiokafka forgets its generation and member id once a heartbeat hears the group dropped it; a
    commit without them would be one the group coordinator does not fence."""
    log: list[str] = []
    runner, tps = _runner(FakeProducer(log), [0], generation=-1, member_id="")
    with pytest.raises(groupfence.NotAGroupMemberError):
        asyncio.run(runner._process_all({tps[0]: _records(0, 2)}))
    assert log == ["begin", "abort"], log
    assert runner.states[tps[0]].get("seen:0") is None


def test_each_committed_transaction_is_told_with_its_count_of_source_records_and_an_aborted_one_is_not() -> (
    None
):
    told: list[int] = []
    runner, tps = _runner(FakeProducer([]), [0, 1])
    runner.on_commit = told.append
    asyncio.run(runner._process_all({tps[0]: _records(0, 3), tps[1]: _records(1, 2, first=10)}))
    assert told == [5]
    failing, tps = _runner(FakeProducer([], fail=True), [0])
    failing.on_commit = told.append
    with pytest.raises(OSError, match="refused"):
        asyncio.run(failing._process_all({tps[0]: _records(0, 2)}))
    assert told == [5]


def test_a_failed_send_aborts_the_whole_poll_and_forgets_every_partitions_state() -> None:
    log: list[str] = []
    runner, tps = _runner(FakeProducer(log, fail=True), [0, 1])
    with pytest.raises(OSError, match="refused"):
        asyncio.run(runner._process_all({tps[0]: _records(0, 2), tps[1]: _records(1, 2)}))
    assert log == ["begin", "abort"], log
    assert runner.states[tps[0]].get("seen:0") is None
    assert runner.states[tps[1]].get("seen:0") is None


def test_a_batchs_offsets_join_its_transaction_only_after_every_output_was_delivered() -> None:
    """A broker checks each transactional write with the transaction coordinator and, of two checks of
    one producer waiting at once, refuses the older: offsets sent while the batch's produce request
    waits for its check got that request refused (NOT_ENOUGH_REPLICAS) and retried."""
    log: list[str] = []
    runner, tps = _runner(FakeProducer(log, delivery_s=0.01), [0])
    asyncio.run(runner._process_all({tps[0]: _records(0, 3)}))
    assert log.count("delivered") == 6, log  # three outputs and three state records
    assert log.index("offsets") > max(i for i, line in enumerate(log) if line == "delivered"), log
    assert log[-1] == "commit", log


def test_a_partition_not_set_up_yet_is_rewound_and_not_skipped() -> None:
    log: list[str] = []
    producer = FakeProducer(log)
    runner, tps = _runner(producer, [0])
    late = TopicPartition(SOURCE, 5)
    runner.consumer = _consumer({tps[0], late})
    asyncio.run(runner._process_all({tps[0]: _records(0, 1), late: _records(5, 3, first=40)}))
    assert runner.consumer.seeks == [(late, 40)]  # type: ignore[attr-defined]
    assert [offsets for offsets, _ in producer.offsets] == [{tps[0]: 1}]


@given(key=st.binary(min_size=1, max_size=64), partitions=st.integers(min_value=1, max_value=64))
def test_the_producers_partitioner_puts_a_keyed_record_where_kafkas_default_partitioner_does(
    key: bytes, partitions: int
) -> None:
    everyone = list(range(partitions))
    assert topics.partitioner(key, everyone, everyone) == DefaultPartitioner()(key, everyone, everyone)
    assert topics.partitioner(key, everyone, everyone) == topics.partition_for(key, partitions)


class SmallBatches:
    """A producer whose record batches hold ``room`` records; it logs each batch sent."""

    def __init__(self, room: int, partitions: int = 4, available: set[int] | None = None) -> None:
        self.room = room
        self.every = set(range(partitions))
        self.available = self.every if available is None else available
        self.sent: list[tuple[str, int, list[bytes | None]]] = []
        self.client = SimpleNamespace(
            cluster=SimpleNamespace(available_partitions_for_topic=lambda _: self.available)
        )

    async def partitions_for(self, _topic: str) -> set[int]:
        return self.every

    def create_batch(self) -> Any:
        records: list[bytes | None] = []

        def append(*, timestamp: Any, key: Any, value: bytes | None, headers: Any) -> object | None:
            if len(records) == self.room:
                return None
            records.append(value)
            return object()

        return SimpleNamespace(append=append, records=records)

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> asyncio.Future[None]:
        self.sent.append((topic, partition, list(batch.records)))
        delivered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        delivered.set_result(None)
        return delivered


def test_outputs_go_in_a_batch_a_partition_in_their_order_where_the_default_partitioner_puts_them() -> None:
    producer = SmallBatches(room=100)
    keys = [f"subject-{i}".encode() for i in range(12)]
    outputs = [Output(topic, f"{topic}/{k.decode()}".encode(), k) for k in keys for topic in ("a", "b")]
    deliveries: list[asyncio.Future[Any]] = []
    asyncio.run(eos._send(producer, outputs, deliveries))  # type: ignore[arg-type]

    everyone = [0, 1, 2, 3]
    expected: dict[tuple[str, int], list[bytes | None]] = {}
    for out in outputs:
        where = DefaultPartitioner()(out.key, everyone, everyone)
        expected.setdefault((out.topic, where), []).append(out.value)
    assert {(topic, p): values for topic, p, values in producer.sent} == expected
    assert len(producer.sent) == len(expected)  # one batch a partition
    assert len(deliveries) == len(producer.sent)


def test_a_partitions_records_past_a_batchs_room_go_in_the_next_batch_in_order() -> None:
    producer = SmallBatches(room=2)
    outputs = [Output("state", f"{i}".encode(), f"k{i}".encode()) for i in range(5)]
    deliveries: list[asyncio.Future[Any]] = []
    asyncio.run(eos._send(producer, outputs, deliveries, partition=7))  # type: ignore[arg-type]

    assert producer.sent == [("state", 7, [b"0", b"1"]), ("state", 7, [b"2", b"3"]), ("state", 7, [b"4"])]
    assert len(deliveries) == 3


def test_an_unkeyed_output_goes_to_a_partition_that_has_a_leader() -> None:
    producer = SmallBatches(room=100, partitions=4, available={2})
    outputs = [Output("deadletter", f"{i}".encode()) for i in range(20)]
    asyncio.run(eos._send(producer, outputs, []))  # type: ignore[arg-type]

    assert producer.sent == [("deadletter", 2, [f"{i}".encode() for i in range(20)])]
