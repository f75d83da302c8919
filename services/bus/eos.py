"""Exactly-once consume → transform → produce on Kafka transactions, with per-partition state.

A worker has one transactional producer (id ``<group>.worker-<name>``: the ``worker_id`` it is
given, kept across the process's restarts, else a random name kept across its restarts within the
process). A poll's records, of every partition it returned, are handled in one
transaction holding the outputs, the changes to each partition ``p``'s state (written to partition
``p`` of a compacted state topic) and the consumed offsets, so after any crash the outputs, the states
and the positions agree. Readers of the outputs use ``isolation_level="read_committed"``.

The consumer group fences a worker it dropped (KIP-447, :mod:`services.bus.groupfence`): the offsets
join the transaction with the worker's group generation and member id, which the group coordinator
refuses from a worker no longer in the current generation, so that worker's transaction aborts; and a
partition's new owner reads its committed offset with ``require_stable``, waiting for the previous
owner's transaction to end, before it loads the partition's state and starts.

Stopping (:meth:`TransactionalRunner.stop`, on SIGTERM) lets the batch in flight commit for a few
seconds, then cancels it, and every close that talks to Kafka (the abort, the producer, the consumer)
waits a bounded time: a worker whose broker is gone must still exit. What it leaves open on the broker
is aborted by the broker after :data:`TRANSACTION_TIMEOUT_MS` (or at once by this worker's producer if
the worker restarts first), so giving up on a close loses nothing.

Why not faust-streaming's ``exactly_once``: it derives the transactional id from the *destination*
topic's partition and topic group, so it holds only when every output is co-partitioned with the input
and subscribed by the app; the router's outputs (one inbox per participant, dead letters) are not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import ConsumerStoppedError, IllegalOperation, KafkaError

from services.bus import groupfence, offsetfetch
from services.bus.security import KafkaSecuritySettings, aiokafka_kwargs, load_security
from services.kernel import topics
from services.kernel.errors import TransportError

log = logging.getLogger("lianfang.eos")

# What a lost broker looks like from aiokafka: its own errors, a socket error, or a request that timed
# out. Each restarts the worker; anything else (but the client's own state errors below) is a bug and
# ends it.
_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (KafkaError, OSError, TimeoutError)

# What aiokafka raises, besides its KafkaErrors, when a fault has moved its state under a call: a
# producer whose sender died (fenced by the partition's next owner, or told something it does not
# retry) refuses a send with IllegalOperation, and its transaction state machine asserts each
# transition. Raised from inside aiokafka, these are the client's failure, not a bug of ours.
_CLIENT_STATE_ERRORS: tuple[type[BaseException], ...] = (
    IllegalOperation,
    ConsumerStoppedError,
    AssertionError,
    KeyError,
    asyncio.InvalidStateError,
)

# Sealed records are ~5 KB: aiokafka's default 16 KiB batch would carry three of them. A larger
# batch cut the transactional relay's CPU per record by about 3x in the router benchmark.
PRODUCER_BATCH_BYTES = 1024 * 1024

STOP_GRACE_S = 5.0
"""After :meth:`TransactionalRunner.stop`, how long the batch in flight may take to commit before it
is cancelled (a healthy broker commits in milliseconds; a lost one never answers)."""

CLOSE_TIMEOUT_S = 5.0
"""How long one close that needs Kafka (a transaction's abort, a producer's or the consumer's stop) may
take before it is given up: aiokafka retries these for as long as no broker answers."""

SESSION_TIMEOUT_MS = 10_000
"""How long the group waits for a worker's heartbeat before it drops the worker and rebalances: the time
a dead worker's partitions wait for another. The heartbeats are a task on the worker's loop (one every
second): any stretch the loop is held for (:mod:`services.bus.looplag` measures it) counts against it.
A partitions' set-up does not: the loop does it after the assignment, heartbeats going on."""

REBALANCE_TIMEOUT_MS = 120_000
"""How long a worker may take to rejoin its group in a rebalance (finish its batch)."""

TRANSACTION_TIMEOUT_MS = 10_000
"""How long the broker lets a transaction of this worker stay open before it aborts it: how long a
worker that died mid-batch, and is not started again under its ``worker_id``, holds back the
``read_committed`` readers of every partition its open transaction wrote, and the partitions' next
owner (which waits for it to end). The broker looks for
such transactions every ``transaction.abort.timed.out.transaction.cleanup.interval.ms`` (10 s by
default; the brokers deploy/ configures: 1 s). A batch takes milliseconds; one that takes longer is
aborted, and the worker restarts and does it again."""

STABLE_OFFSETS_TIMEOUT_S = 60.0
"""How long a worker waits for a partition's previous owner's transaction to end before it gives up
(and restarts): the transaction timeout, the broker's clean-up interval and a margin."""


@dataclass(frozen=True, slots=True)
class Output:
    """A record to write in the same transaction as the input's offset."""

    topic: str
    value: bytes | None
    key: bytes | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


@dataclass
class PartitionState:
    """The state of one source partition: string keys to bytes values, mirrored in the state topic."""

    partition: int
    data: MutableMapping[str, bytes] = field(default_factory=dict)
    """What is committed; a service may pass a compact mapping (the router's :mod:`services.router.seen`)."""
    pending: dict[str, bytes | None] = field(default_factory=dict)
    # What each put of the batch replaced in ``pending`` (key, had it, its old value), so one record's
    # changes can be undone without copying the whole batch's changes per record.
    _undo: list[tuple[str, bool, bytes | None]] = field(default_factory=list)

    def get(self, key: str) -> bytes | None:
        if key in self.pending:
            return self.pending[key]
        return self.data.get(key)

    def put(self, key: str, value: bytes | None) -> None:
        """Set (or with ``None`` delete) a key; it is written and applied when the batch commits."""
        self._undo.append((key, key in self.pending, self.pending.get(key)))
        self.pending[key] = value

    def savepoint(self) -> int:
        """A mark to :meth:`rollback` to: forgets the puts made after it (e.g. of a refused record)."""
        return len(self._undo)

    def rollback(self, savepoint: int) -> None:
        while len(self._undo) > savepoint:
            key, had, old = self._undo.pop()
            if had:
                self.pending[key] = old
            else:
                self.pending.pop(key, None)

    def keys(self) -> Iterable[str]:
        return [k for k in {*self.data, *self.pending} if self.get(k) is not None]

    def _apply(self) -> None:
        for key, value in self.pending.items():
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = value
        self._discard()

    def _discard(self) -> None:
        self.pending.clear()
        self._undo.clear()


Handler = Callable[[Any, PartitionState], Awaitable[list[Output]]]
"""Called for each record (an aiokafka ``ConsumerRecord``) with its partition's state."""

BatchHook = Callable[[PartitionState], list[Output]]
"""Called once per batch after the records (e.g. to prune old state); may ``put`` and return outputs."""


class TransactionalRunner:
    """Runs one worker of a consumer group; several workers of one group share the partitions."""

    RESTART_BACKOFF_S = 1.0
    MAX_RESTART_BACKOFF_S = 30.0

    def __init__(
        self,
        *,
        bootstrap: str,
        group_id: str,
        source: str,
        state_topic: str,
        handler: Handler,
        after_batch: BatchHook | None = None,
        store: Callable[[], MutableMapping[str, bytes]] = dict,
        max_batch: int = 500,
        worker_id: str | None = None,
        paused: Callable[[], bool] | None = None,
        client_id: str = "lianfang",
        security: KafkaSecuritySettings | None = None,
        on_restart: Callable[[], None] | None = None,
        on_commit: Callable[[int], None] | None = None,
        session_timeout_ms: int = SESSION_TIMEOUT_MS,
    ) -> None:
        self.bootstrap = bootstrap
        self.session_timeout_ms = session_timeout_ms  # at least the broker's group.min.session.timeout.ms
        # How every client of this worker logs in (None: the LIANFANG_KAFKA_* environment).
        self._auth = aiokafka_kwargs(security if security is not None else load_security())
        self.group_id = group_id
        self.source = source
        self.state_topic = state_topic
        self.handler = handler
        self.after_batch = after_batch
        self.store = store  # makes each partition's committed state
        self.max_batch = max_batch
        self.paused = paused
        self.client_id = client_id
        # One transactional id for the life of this runner (and, given a worker_id, across the
        # process's restarts): a restart aborts what the previous run left open at once (its
        # producer's start fences the old one). Two live workers must not share one: each start of
        # one would fence the other.
        self.transactional_id = f"{group_id}.worker-{worker_id or uuid.uuid4().hex[:16]}"
        self.worker_id = worker_id or None  # also its static membership of the group (see _run_once)
        self.producer: AIOKafkaProducer | None = None
        self.states: dict[TopicPartition, PartitionState] = {}
        self.consumer: AIOKafkaConsumer | None = None
        self.stopping = asyncio.Event()
        self.restarts = 0
        self.on_restart = on_restart
        self.on_commit = on_commit  # told each committed transaction's count of source records
        # Wall-clock time the loop last came back from Kafka (a poll answered, a batch committed): a
        # worker restarting over and over, or stuck in a transaction, stops moving it (a stall).
        self.progressed_at = time.time()
        # Partitions the group assigned whose producers and states are not set up yet (the loop sets
        # them up: see _assign).
        self._unready: set[TopicPartition] = set()
        # A rebalance callback may run while a batch awaits I/O: it waits for the batch to finish.
        self._lock = asyncio.Lock()
        # The consumer whose rebalance callbacks may change the partitions (None between two).
        self._live: AIOKafkaConsumer | None = None

    # -- partitions come and go

    def _assign(self, tps: Iterable[TopicPartition], consumer: AIOKafkaConsumer) -> None:
        """Note the partitions the group assigned; the loop sets them up (:meth:`_set_up_assigned`).

        Not here: aiokafka sends no heartbeat from the JoinGroup until this callback returns (it stops
        its heartbeat task for the rejoin and starts it again after the callback), so a set-up longer
        than the session timeout (one transactional producer and one state read a partition, seconds
        each on a loaded machine) had the group drop the worker as soon as it had joined, and every
        rejoin set them up again: a worker could flap for as long as the load lasted. The rebalance
        timeout does not help: it bounds the join, not the time after it. docs/faults.md has the
        figures. (aiokafka also logs and swallows an exception raised here: the partition would
        stay assigned with no state.)"""
        if consumer is not self._live:  # stopping: its partitions are no longer its own
            return
        self._unready.update(tp for tp in tps if tp not in self.states)

    async def _set_up_assigned(self) -> dict[TopicPartition, int | None]:
        """Set up every assigned partition that is not yet: read its committed offset once no
        transaction holds one open (a previous owner that the group dropped may still be committing
        a batch: its transaction commits or aborts first), then load its state (what that transaction
        committed included). Starts the worker's transactional producer first if it has none. Returns
        the partitions set up, each with its committed offset (None: nothing committed yet):
        :meth:`_start_from` moves there.

        The states are loaded side by side: each is mostly waiting for the broker. Meanwhile the
        consumer's heartbeats go on, and a revocation waits (for the lock). A failure (the broker
        went away) is raised to the loop, which restarts the worker; the partitions set up before it
        are forgotten with the others at the end of the run."""
        if not self._unready:
            return {}
        assert self.consumer is not None
        consumer = self.consumer
        async with self._lock:
            assigned = consumer.assignment()
            self._unready &= assigned
            tps = sorted(self._unready, key=lambda tp: (tp.topic, tp.partition))
            if not tps:
                return {}
            started = time.monotonic()
            if self.producer is None:
                self.producer = await self._start_producer()
            committed = await self._committed(consumer, tps)
            loading = (self._load_state(tp.partition) for tp in tps)
            results = await asyncio.gather(*loading, return_exceptions=True)
            failure: BaseException | None = None
            for tp, result in zip(tps, results, strict=True):
                if isinstance(result, BaseException):
                    failure = failure or result
                    continue
                self.states[tp] = result
                self._unready.discard(tp)
                log.info("partition %s assigned: %d state keys", tp, len(result.data))
            if failure is not None:
                raise failure
            log.info("%d partitions set up in %.1f s", len(tps), time.monotonic() - started)
            return {tp: committed.get(tp) for tp in tps}

    def _start_from(
        self, committed: dict[TopicPartition, int | None], fetched: dict[TopicPartition, list[Any]]
    ) -> dict[TopicPartition, list[Any]]:
        """Move the consumer to the committed offset of each partition just set up, and return the
        batch without what was fetched of them before (from a position aiokafka read without waiting
        for open transactions). With nothing committed, the partition goes back to the first record
        fetched of it: never skipped."""
        assert self.consumer is not None
        for tp, offset in committed.items():
            records = fetched.get(tp)
            start = offset if offset is not None else records[0].offset if records else None
            if start is not None:
                self.consumer.seek(tp, start)
        return {tp: records for tp, records in fetched.items() if records and tp not in committed}

    async def _committed(
        self, consumer: AIOKafkaConsumer, tps: list[TopicPartition]
    ) -> dict[TopicPartition, int | None]:
        """The group's committed offsets of ``tps`` once no transaction holds one open."""
        return await groupfence.stable_committed(
            consumer, self.group_id, tps, timeout_s=STABLE_OFFSETS_TIMEOUT_S
        )

    async def _start_producer(self) -> AIOKafkaProducer:
        """Start the worker's transactional producer: InitProducerId aborts what an earlier run of
        this worker left open."""
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            transactional_id=self.transactional_id,
            transaction_timeout_ms=TRANSACTION_TIMEOUT_MS,
            enable_idempotence=True,
            acks="all",
            client_id=self.client_id,
            linger_ms=2,
            max_batch_size=PRODUCER_BATCH_BYTES,
            partitioner=topics.partitioner,
            **self._auth,
        )
        try:
            await producer.start()
        except BaseException:
            with contextlib.suppress(*_TRANSPORT_ERRORS):
                await producer.stop()
            raise
        return producer

    async def _revoke(self, tps: Iterable[TopicPartition] | None, consumer: AIOKafkaConsumer | None) -> None:
        """Forget the states of ``tps``; with None (the loop, ending a worker's run: ``consumer`` is
        None too), of every partition, and stop the producer. ``consumer`` is the one whose callback
        asks. A batch in flight commits before (the lock)."""
        async with self._lock:
            if consumer is not None and consumer is not self._live:
                return
            if tps is None:
                self.states.clear()
                self._unready.clear()
                producer, self.producer = self.producer, None
                if producer is not None:
                    await _bounded(producer.stop(), "stopping the producer")
                return
            for tp in tps:
                self._unready.discard(tp)
                self.states.pop(tp, None)

    async def _load_state(self, partition: int) -> PartitionState:
        """Read partition ``partition`` of the state topic (committed records only) to its end."""
        state = PartitionState(partition, self.store())
        tp = TopicPartition(self.state_topic, partition)
        reader = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            isolation_level="read_committed",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **self._auth,
        )
        await reader.start()
        try:
            reader.assign([tp])
            # An explicit seek: aiokafka's seek_to_beginning can lose a race with the offset reset
            # that assign() starts (the default, "latest"), leaving the reader at the end: the state
            # would be read as empty, and the replay window would forget every id it had seen.
            begin = (await reader.beginning_offsets([tp]))[tp]
            end = (await reader.end_offsets([tp]))[tp]
            reader.seek(tp, begin)
            while await reader.position(tp) < end:
                batch = await reader.getmany(tp, timeout_ms=1000)
                for record in batch.get(tp, []):
                    key = record.key.decode() if record.key else ""
                    if record.value is None:
                        state.data.pop(key, None)
                    else:
                        state.data[key] = record.value
        finally:
            await reader.stop()
        return state

    # -- the loop

    async def run(self) -> None:
        """Work until :meth:`stop`. A Kafka failure (a broker gone mid-transaction, a send refused)
        aborts the batch's transaction and starts the worker afresh after a back-off: it rejoins
        the group, fences its old producers and reloads the state, so the batch is redone from the
        last committed offset. ``restarts`` counts these."""
        backoff: float | None = None
        while not self.stopping.is_set():
            progressed = self.progressed_at
            try:
                await self._until_stopped(self._run_once())
                return
            except TransportError as e:
                if self.stopping.is_set():
                    log.info("%s worker stopped; its last batch was not committed: %s", self.group_id, e)
                    return
                self.restarts += 1
                if self.on_restart is not None:
                    self.on_restart()
                backoff = restart_backoff(
                    backoff,
                    worked=self.progressed_at != progressed,
                    first=self.RESTART_BACKOFF_S,
                    most=self.MAX_RESTART_BACKOFF_S,
                )
                log.warning("%s worker restarts in %.0f s after: %s", self.group_id, backoff, e)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), backoff)

    async def _until_stopped(self, work: Awaitable[None]) -> None:
        """Run ``work`` until it ends; once :meth:`stop` is called, give it :data:`STOP_GRACE_S` to end
        by itself (the loop checks ``stopping`` between batches), then cancel it: a batch waiting on a
        broker that is gone would wait for ever. Its clean-up is bounded (:func:`_bounded`)."""
        task = asyncio.ensure_future(work)
        stopped = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait([task, stopped], return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                done, _ = await asyncio.wait([task], timeout=STOP_GRACE_S)
                if not done:
                    log.warning(
                        "%s worker: the batch in flight did not commit within %.0f s of the stop "
                        "(no broker answers?): cancelling it",
                        self.group_id, STOP_GRACE_S,
                    )  # fmt: skip
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                    return
            await task
        finally:
            stopped.cancel()
            if not task.done():  # this coroutine itself was cancelled
                task.cancel()

    async def _run_once(self) -> None:
        runner = self

        class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
            async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
                await runner._revoke(revoked, consumer)

            async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
                runner._assign(assigned, consumer)

        offsetfetch.install()  # committed offsets as the group's coordinator holds them
        self.consumer = consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group_id,
            client_id=self.client_id,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=1_000,
            # How long the group waits for the members to rejoin: one whose batch in flight, or whose
            # revocation (stopping producers), takes a while is not dropped for it.
            rebalance_timeout_ms=REBALANCE_TIMEOUT_MS,
            max_poll_records=self.max_batch,
            # A named worker is a static member of its group (KIP-345): started again after a crash
            # under its name, it takes its partitions back at once, where a new member waits for the
            # group to drop the dead one (the session timeout: about 10 s of routing stopped). It does
            # not leave the group when it stops: its partitions wait the session timeout for another.
            group_instance_id=self.worker_id,
            **self._auth,
        )
        self._live = consumer
        try:
            # Inside the try: a broker that is down when the worker (re)starts is a restart after a
            # back-off, not the end of the process.
            await self.consumer.start()
            self.consumer.subscribe([self.source], listener=Listener())
            while not self.stopping.is_set():
                if self.paused is not None and self.paused():
                    await self._wait_while_paused()
                batches = await self.consumer.getmany(timeout_ms=500, max_records=self.max_batch)
                committed = await self._set_up_assigned()
                await self._process_all(self._start_from(committed, batches))
                self.progressed_at = time.time()
        except Exception as e:
            if not is_client_failure(e):
                raise  # a bug: it ends the worker
            if not isinstance(e, _TRANSPORT_ERRORS):
                log.error("%s worker: the Kafka client failed from within", self.group_id, exc_info=e)
            raise TransportError(f"Kafka failed under the {self.group_id} worker: {e!r}") from e
        finally:
            # From here on a rebalance callback of this consumer (one waiting for the batch's lock,
            # or one its stop lets finish) changes nothing: it used to set up producers and states
            # after they were cleared, which the next run took for its own (skipping their set-up)
            # though the partitions' next owner had fenced them in between.
            self._live = None
            with contextlib.suppress(*_TRANSPORT_ERRORS):  # the producer of a failed txn may fail to stop
                await self._revoke(None, None)
            self.producer = None
            self.states.clear()
            await _bounded(self.consumer.stop(), "stopping the consumer")

    async def _wait_while_paused(self) -> None:
        """Stop fetching, but keep polling (to stay in the group), while ``paused()`` holds."""
        assert self.consumer is not None
        assert self.paused is not None
        while self.paused() and not self.stopping.is_set():
            self._start_from(await self._set_up_assigned(), {})  # fence the previous owners meanwhile
            self.consumer.pause(*self.consumer.assignment())
            fetched = await self.consumer.getmany(timeout_ms=500)
            self.progressed_at = time.time()
            # A partition assigned after the pause call is not paused yet: rewind what it returned.
            for tp, records in fetched.items():
                if records:
                    self.consumer.seek(tp, records[0].offset)
        self.consumer.resume(*self.consumer.assignment())

    async def _process_all(self, batches: dict[TopicPartition, list[Any]]) -> None:
        """A poll's records, of every partition set up, in one transaction; those of a partition not
        ready (not set up yet, or revoked) are rewound, never skipped.

        One transaction a poll, not one a partition: at the rates the bus carries a poll returns a
        record or two of each partition, and every transaction costs the client and the broker its
        round trips and its markers whatever it carries (docs/decisions.md, "Kafka transactions:
        one a poll")."""
        if not batches:
            return
        rewind = False
        async with self._lock:
            ready: dict[TopicPartition, list[Any]] = {}
            for tp, records in batches.items():
                if tp in self.states and self.producer is not None:
                    ready[tp] = records
                elif self.consumer is not None and tp in self.consumer.assignment():
                    # Fetched before our assignment callback ran (or after a revocation): never skip
                    # records; rewind so they are fetched again once the partition is set up.
                    self.consumer.seek(tp, records[0].offset)
                    rewind = True
            if ready:
                await self._transact(ready)
        if rewind:
            await asyncio.sleep(0.05)  # let the pending assignment callback run

    async def _transact(self, batches: dict[TopicPartition, list[Any]]) -> None:
        """``batches`` (each partition set up) in one transaction. Called with the lock held."""
        producer = self.producer
        assert producer is not None
        assert self.consumer is not None
        states = [self.states[tp] for tp in batches]
        # aiokafka, unlike the Java client, commits a transaction even when one of its sends
        # failed (a batch the broker refused for good, e.g. InvalidTxnState after a restart): the
        # offsets would commit without that output. So every delivery is awaited before the commit,
        # and a failed one aborts the transaction instead.
        deliveries: list[asyncio.Future[Any]] = []
        committing = False
        await producer.begin_transaction()
        try:
            outputs: list[Output] = []
            for state, records in zip(states, batches.values(), strict=True):
                for record in records:
                    outputs.extend(await self.handler(record, state))
                if self.after_batch is not None:
                    outputs.extend(self.after_batch(state))
            await _send(producer, outputs, deliveries)
            for state in states:
                changes = [Output(self.state_topic, v, k.encode()) for k, v in state.pending.items()]
                await _send(producer, changes, deliveries, partition=state.partition)
            # The offsets join the transaction only once every output is delivered. A Kafka broker
            # checks each transactional write (a produce, an offset commit) with the transaction
            # coordinator first, and of two checks of one producer waiting at once it drops the
            # older one: offsets sent beside the batch's produce requests had those refused with
            # NOT_ENOUGH_REPLICAS (or the offsets with a coordinator error) and retried after 100 ms.
            # docs/decisions.md, "Kafka transactions", has the evidence.
            await _delivered(deliveries)
            # As the member the group knows now: if it has dropped this worker (and given these
            # partitions to another), the offsets are refused and the whole transaction aborts.
            await groupfence.send_offsets(
                producer,
                {tp: records[-1].offset + 1 for tp, records in batches.items()},
                self.group_id,
                groupfence.Member.of(self.consumer),
            )
            committing = True
            await producer.commit_transaction()
        except BaseException as e:
            # Not committed: forget the batch's state changes. The worker starts afresh (run())
            # from the last committed offsets with the last committed states. A commit that failed
            # is not aborted (as aiokafka's transaction context does); an abort that cannot reach
            # a broker is given up: the broker aborts it after the transaction timeout, or the
            # worker's next producer at its start.
            for state in states:
                state._discard()
            _forget(deliveries)
            _forget_batches(producer)
            if producer._txn_manager.is_fatal_error():
                # The producer's sender died (fenced, or told something aiokafka does not retry):
                # it cannot abort, and it refuses the batch's next send with IllegalOperation, not a
                # KafkaError.
                cause = _fatal_cause(producer)
                if isinstance(e, Exception) and not isinstance(e, _TRANSPORT_ERRORS) and cause is not None:
                    raise TransportError(f"the producer of {self.transactional_id} failed: {cause!r}") from e
            elif not committing:
                await _bounded(producer.abort_transaction(), "aborting the transaction")
            raise
        for state in states:
            state._apply()
        if self.on_commit is not None:
            self.on_commit(sum(len(records) for records in batches.values()))

    def source_partitions(self) -> int:
        """How many partitions the source topic has, from the consumer's metadata (a record was just
        fetched from it, so the metadata is there; if not, Kafka failed us)."""
        partitions = self.consumer.partitions_for_topic(self.source) if self.consumer is not None else None
        if not partitions:
            raise TransportError(f"no metadata for {self.source}: its partitions are unknown")
        return len(partitions)

    def stop(self) -> None:
        self.stopping.set()


async def _send(
    producer: AIOKafkaProducer,
    outputs: Iterable[Output],
    deliveries: list[asyncio.Future[Any]],
    *,
    partition: int | None = None,
) -> None:
    """Send ``outputs`` in record batches built here, one for each topic partition they go to (more
    past the producer's batch size), each partition's records in their order; ``deliveries`` gets
    each batch's acknowledgement. ``partition`` puts them all there; else each goes where the
    producer's own partitioner would put it (:func:`services.kernel.topics.partitioner`).

    Not ``producer.send`` a record: that makes a future, asks the partitioner and finds the batch to
    append to for every record, and resolves each future when the broker answers. The router writes
    six records an event (four inbox copies, an audit entry, the replay window's id): built batches
    cut its CPU an event by a fifth, the transactional relay's by nearly a third
    (docs/performance.md, "Batches built by the runner").

    What ``send`` did that this does not: it refused a record over the producer's
    ``max_request_size`` before sending (here the broker refuses the batch: the transaction aborts
    either way, and the router dead-letters a record over its limit before this); it stamped each
    record when sent (here, when its batch is built, after the handler ran for the whole batch)."""
    runs: dict[tuple[str, int], list[Output]] = {}
    placing: dict[str, tuple[list[int], list[int]]] = {}
    for out in outputs:
        where = partition
        if where is None:
            known = placing.get(out.topic)
            if known is None:
                every = sorted(await producer.partitions_for(out.topic))
                available = sorted(producer.client.cluster.available_partitions_for_topic(out.topic) or ())
                known = placing[out.topic] = (every, available)
            where = topics.partitioner(out.key, *known)
        runs.setdefault((out.topic, where), []).append(out)
    for (topic, where), run in runs.items():
        batch = producer.create_batch()
        for out in run:
            if batch.append(timestamp=None, key=out.key, value=out.value, headers=out.headers) is None:
                deliveries.append(await producer.send_batch(batch, topic, partition=where))
                batch = producer.create_batch()  # a batch's first record always fits
                batch.append(timestamp=None, key=out.key, value=out.value, headers=out.headers)
        deliveries.append(await producer.send_batch(batch, topic, partition=where))


def restart_backoff(previous: float | None, *, worked: bool, first: float, most: float) -> float:
    """The pause before a worker's next restart: ``first`` for a first failure, or one after a run that
    worked (it came back from Kafka at least once: a new fault, not the same one again); else twice
    the previous pause, at most ``most``. A worker that kept the longest pause from its first faults
    would wait ``most`` after every later broker restart, however far apart."""
    if previous is None or worked:
        return first
    return min(previous * 2, most)


def is_client_failure(e: BaseException) -> bool:
    """Whether ``e`` is the Kafka client's failure, which a restart mends, rather than a bug of ours:
    a transport error, or one of :data:`_CLIENT_STATE_ERRORS` raised from inside aiokafka."""
    if isinstance(e, _TRANSPORT_ERRORS):
        return True
    if not isinstance(e, _CLIENT_STATE_ERRORS):
        return False
    tb = e.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__", "")
    return isinstance(module, str) and (module == "aiokafka" or module.startswith("aiokafka."))


def _fatal_cause(producer: AIOKafkaProducer) -> BaseException | None:
    """Why a producer in aiokafka's fatal state failed (what its sender died of), if it says."""
    waiter = producer._txn_manager.wait_for_transaction_end()
    if waiter is None or not waiter.done() or waiter.cancelled():
        return None
    cause: BaseException | None = waiter.exception()  # retrieved: not logged as never retrieved
    return cause


async def _bounded(closing: Awaitable[Any], what: str) -> None:
    """Await a close that needs Kafka for at most :data:`CLOSE_TIMEOUT_S`; give it up (logged) after,
    or when the client fails (:func:`is_client_failure`)."""
    try:
        await asyncio.wait_for(closing, CLOSE_TIMEOUT_S)
    except TimeoutError:
        log.warning("%s took over %.0f s (no broker answers?): given up", what, CLOSE_TIMEOUT_S)
    except Exception as e:
        if not is_client_failure(e):
            raise
        log.debug("%s failed: %r", what, e)
    except asyncio.CancelledError:
        # aiokafka's consumer awaits the fetch tasks it cancels on stop and lets their CancelledError
        # out when one was sleeping after a failed fetch. Only a cancellation of this task goes on.
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
        log.debug("%s: a task it waited for was cancelled", what)


def _forget(deliveries: list[asyncio.Future[Any]]) -> None:
    """Take the failures of a batch given up as seen: asyncio logs every failed future nobody looked
    at as an error (with a fenced producer, one a record of the batch)."""
    for delivery in deliveries:
        if delivery.done():
            _seen(delivery)
        else:
            delivery.add_done_callback(_seen)


def _forget_batches(producer: AIOKafkaProducer) -> None:
    """Take as seen the failure of every batch the producer still holds. When a fatal error (a fencing)
    ends aiokafka's sender, it fails each batch it had not sent yet, and with it the batch's drain
    waiter, a future only a sender waiting for room in that batch awaits: asyncio would log each as
    an error ("Future exception was never retrieved") with the fencing's traceback. (A batch aiokafka
    retries after this gets a new waiter, not covered: at worst that line comes back.)"""
    # aiokafka's internals (0.14), read with defaults: on this path, already a failure's, a change in
    # them may bring back asyncio's error lines, but must not turn Kafka's failure into a crash.
    accumulator = getattr(producer, "_message_accumulator", None)  # None: a test's fake producer
    queues = getattr(accumulator, "_batches", {})
    held = [
        *(batch for queue in queues.values() for batch in queue),
        *getattr(accumulator, "_pending_batches", ()),
    ]
    _forget(
        [
            waiter
            for batch in held
            if isinstance(waiter := getattr(batch, "_drain_waiter", None), asyncio.Future)
        ]
    )


def _seen(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


async def _delivered(deliveries: list[asyncio.Future[Any]]) -> None:
    """Wait for every delivery; raise the first failure (after all have settled, so none is left
    with an exception nobody retrieved)."""
    if not deliveries:
        return
    results = await asyncio.gather(*deliveries, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
