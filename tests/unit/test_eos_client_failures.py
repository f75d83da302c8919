"""Which failures restart an exactly-once worker, without Kafka: a Kafka client's failure (a transport
error, or one of aiokafka's own state errors a fault causes, such as the ``IllegalOperation`` of a
producer fenced in the middle of a batch) restarts it; a bug of ours still ends it."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import IllegalOperation, KafkaConnectionError, ProducerFenced
from aiokafka.producer.transaction_manager import TransactionManager

from services.bus import eos
from services.bus.eos import Output, PartitionState, TransactionalRunner, is_client_failure
from services.kernel.errors import TransportError
from tests.kit import BatchSending, FakeBatch, offline_runner

pytestmark = pytest.mark.unit


def _raised(action: Callable[[], Any]) -> BaseException:
    """What ``action`` raises (run in an event loop: aiokafka makes futures as it starts)."""

    async def run() -> None:
        result = action()
        if asyncio.iscoroutine(result):
            await result

    try:
        asyncio.run(run())
    except BaseException as e:
        return e
    raise AssertionError("nothing was raised")


def _begin_twice() -> None:
    txn = TransactionManager("g.worker-0", 60_000)
    txn.set_pid_and_epoch(1, 0)
    txn.begin_transaction()
    txn.begin_transaction()  # asserts IN_TRANSACTION -> IN_TRANSACTION


async def _offsets_outside_a_transaction() -> None:
    producer = AIOKafkaProducer(bootstrap_servers="198.18.0.1:9", transactional_id="g.events.0")
    await producer.send_offsets_to_transaction({TopicPartition("events", 0): 1}, "g")


def _our_assertion() -> None:
    raise AssertionError("a check of ours")


def _our_key_error() -> None:
    _ = {}["missing"]


CASES: dict[str, tuple[Callable[[], BaseException], bool]] = {
    "a Kafka error is the client's failure": (lambda: KafkaConnectionError("gone"), True),
    "a socket error is the client's failure": (lambda: ConnectionResetError("reset"), True),
    "a timeout is the client's failure": (lambda: TimeoutError(), True),
    "an assertion of aiokafka's transaction states is the client's failure": (
        lambda: _raised(_begin_twice),
        True,
    ),
    "the IllegalOperation of a producer no longer in a transaction is the client's failure": (
        lambda: _raised(_offsets_outside_a_transaction),
        True,
    ),
    "an assertion of our own code is a bug": (lambda: _raised(_our_assertion), False),
    "a KeyError of our own code is a bug": (lambda: _raised(_our_key_error), False),
    "an assertion never raised (no traceback) is a bug": (lambda: AssertionError("made, not raised"), False),
    "a ValueError is a bug wherever it was raised": (lambda: ValueError("bad"), False),
}


@pytest.mark.parametrize(("make", "expected"), CASES.values(), ids=CASES.keys())
def test_a_failure_is_the_clients_or_a_bug(make: Callable[[], BaseException], expected: bool) -> None:
    assert is_client_failure(make()) is expected


class FencedMidBatch(BatchSending):
    """A transactional producer (aiokafka's transaction states) whose sender dies of a fencing right
    after the transaction's first record batch is sent, as a worker's does when the partition's next
    owner starts its producer while this one is mid-batch; like aiokafka's, it then refuses the next
    batch (here the partition's state changes) with IllegalOperation, checking once a batch."""

    def __init__(self) -> None:
        self._txn_manager = TransactionManager("g.worker-0", 60_000)
        self._txn_manager.set_pid_and_epoch(1, 0)
        self.aborted = False

    async def begin_transaction(self) -> None:
        self._txn_manager.begin_transaction()

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> asyncio.Future[None]:
        if not self._txn_manager.is_in_transaction():
            raise IllegalOperation("Can't send messages while not in transaction")
        delivered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        delivered.set_result(None)
        self._txn_manager.fatal_error(ProducerFenced())
        return delivered

    async def abort_transaction(self) -> None:
        self.aborted = True


async def _copy(record: Any, state: PartitionState) -> list[Output]:
    state.put(f"seen:{record.offset}", b"1")
    return [Output("out", record.value)]


def _runner() -> TransactionalRunner:
    runner = offline_runner(_copy)
    runner.RESTART_BACKOFF_S = 0.0
    return runner


def test_a_producer_fenced_mid_batch_is_a_transport_failure_naming_the_fencing() -> None:
    runner = _runner()
    tp = TopicPartition("events", 0)
    records = [SimpleNamespace(partition=0, offset=i, value=b"v%d" % i, key=None) for i in range(2)]

    async def batch() -> FencedMidBatch:
        producer = FencedMidBatch()
        runner.producer = producer  # type: ignore[assignment]
        runner.consumer = SimpleNamespace(assignment=lambda: {tp})  # type: ignore[assignment]
        runner.states[tp] = PartitionState(0)
        with pytest.raises(TransportError, match="ProducerFenced") as raised:
            await runner._process_all({tp: records})
        assert isinstance(raised.value.__cause__, IllegalOperation)
        return producer

    producer = asyncio.run(batch())
    assert not producer.aborted, "a fenced producer cannot abort"
    assert not runner.states[tp].pending, "the batch's state changes are forgotten"


class _FailingConsumer:
    """Stands in for the worker's consumer: its start raises what ``failure`` raises."""

    failure: Callable[[], None] = staticmethod(_our_assertion)

    def __init__(self, **_: Any) -> None:
        pass

    async def start(self) -> None:
        type(self).failure()

    async def stop(self) -> None:
        pass


def test_a_state_error_raised_inside_aiokafka_restarts_the_worker_and_is_counted(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_FailingConsumer, "failure", staticmethod(_begin_twice))
    monkeypatch.setattr(eos, "AIOKafkaConsumer", _FailingConsumer)
    runner = _runner()
    counted: list[int] = []
    runner.on_restart = lambda: counted.append(1)

    async def until_it_restarted_twice() -> None:
        task = asyncio.create_task(runner.run())
        deadline = asyncio.get_running_loop().time() + 10
        while runner.restarts < 2:
            assert not task.done(), "the worker ended on the client's state error"
            assert asyncio.get_running_loop().time() < deadline, "the worker did not restart twice in 10 s"
            await asyncio.sleep(0.01)  # the poll interval inside the deadline
        runner.stop()
        await asyncio.wait_for(task, timeout=10)

    asyncio.run(until_it_restarted_twice())
    assert len(counted) >= 2
    logged = [r for r in caplog.records if r.name == "lianfang.eos" and r.exc_info]
    assert logged, "the client's state error is logged with its traceback"
    assert "failed from within" in logged[0].getMessage()


def test_a_bug_of_ours_still_ends_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_FailingConsumer, "failure", staticmethod(_our_assertion))
    monkeypatch.setattr(eos, "AIOKafkaConsumer", _FailingConsumer)
    runner = _runner()
    with pytest.raises(AssertionError, match="a check of ours"):
        asyncio.run(asyncio.wait_for(runner.run(), timeout=10))
    assert runner.restarts == 0


def test_a_fenced_producers_unsent_batches_leave_no_failure_for_asyncio_to_log() -> None:
    reported: list[str] = []

    async def fenced_with_batches_unsent() -> None:
        asyncio.get_running_loop().set_exception_handler(
            lambda _loop, context: reported.append(context["message"])
        )
        producer = AIOKafkaProducer(bootstrap_servers="198.18.0.1:9")  # never started: no broker needed
        accumulator = producer._message_accumulator
        for partition in (0, 1):
            batch = producer.create_batch()
            batch.append(timestamp=None, key=b"k", value=b"v", headers=[])
            sent = await accumulator.add_batch(batch, TopicPartition("out", partition), 1.0)
            sent.add_done_callback(lambda f: f.exception())  # the runner awaits each delivery
        accumulator.fail_all(ProducerFenced())  # what aiokafka does when a fencing ends the sender
        eos._forget_batches(producer)
        del producer, accumulator, batch, sent
        gc.collect()

    asyncio.run(fenced_with_batches_unsent())
    gc.collect()
    assert [message for message in reported if "never retrieved" in message] == []
