"""A worker's transactions fenced by its consumer group's generation (Kafka's KIP-447), which aiokafka
0.14 does not send.

With one transactional producer a worker instead of one a source partition, the producer's id no
longer fences the partition's previous owner: a worker the group dropped (a long pause, a network
partition) but which does not know it yet keeps its producer, and its next commit would deliver a
batch the partition's new owner delivers too. KIP-447 closes that with the group's own fence, in two
requests:

- **TxnOffsetCommit v3** carries the committing member's generation and member id. The group
  coordinator refuses offsets from a member that is no longer in the group's current generation
  (ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID, FENCED_INSTANCE_ID), so the zombie's transaction cannot
  commit its offsets: the runner aborts it, with its outputs. :func:`install` makes aiokafka's producer
  send v3 for every producer given a member (:func:`send_offsets`); any other producer still sends v0.
- **OffsetFetch v7** with ``require_stable``: the coordinator answers UNSTABLE_OFFSET_COMMIT for a
  partition while a transaction that committed offsets for it is still open, so the partition's new
  owner waits for the previous owner's transaction to commit or abort before it reads where to start
  (:func:`stable_committed`), instead of reading around it.

Request and answer layouts follow Kafka's message definitions (``TxnOffsetCommitRequest.json`` v3,
``OffsetFetchRequest.json`` v7: flexible versions, compact strings and arrays, tagged fields).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka import errors as kerrors
from aiokafka.client import ConnectionGroup
from aiokafka.producer import sender as aiokafka_sender
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    Boolean,
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Int64,
    Schema,
    TaggedFields,
)

from services.bus import offsetfetch
from services.kernel.errors import TransportError

__all__ = ["Member", "NotAGroupMemberError", "install", "send_offsets", "stable_committed"]

# Kafka's error codes aiokafka 0.14 has no class for.
FENCED_INSTANCE_ID = 82
UNSTABLE_OFFSET_COMMIT = 88

# A member's commit refused because the group has moved on without it: this worker is a zombie.
_NOT_A_MEMBER = frozenset(
    {kerrors.IllegalGenerationError.errno, kerrors.UnknownMemberIdError.errno, FENCED_INSTANCE_ID}
)

STABLE_RETRY_S = 0.05
"""How long :func:`stable_committed` waits before asking again while a transaction holds offsets open."""


class NotAGroupMemberError(TransportError):
    """A transaction's offsets were refused, by the group coordinator or before they were sent: the
    committing worker is no longer a member of the group's current generation (the group dropped it
    and gave its partitions away). Abort the transaction; the worker rejoins."""


@dataclass(frozen=True, slots=True)
class Member:
    """Who commits: the consumer group member (and its generation) whose batch the offsets end."""

    generation_id: int
    member_id: str
    group_instance_id: str | None = None

    @classmethod
    def of(cls, consumer: AIOKafkaConsumer) -> Member:
        """The consumer's current membership (aiokafka keeps it on its group coordinator). Raises
        :class:`NotAGroupMemberError` when it has none: aiokafka forgets its generation and member id
        as soon as a heartbeat hears that the group dropped it, and a transactional commit without
        them (generation -1, as aiokafka's v0 sends) is one the group coordinator does not fence."""
        coordinator = consumer._coordinator
        generation = int(getattr(coordinator, "generation", -1))
        member_id = str(getattr(coordinator, "member_id", ""))
        if generation < 0 or not member_id:
            raise NotAGroupMemberError("this worker is not a member of its group now: it commits nothing")
        return cls(generation, member_id, getattr(coordinator, "_group_instance_id", None))


# -- the wire: TxnOffsetCommit v3


class TxnOffsetCommitResponseV3(Response):  # type: ignore[misc]
    API_KEY = 28
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                (
                    "partitions",
                    CompactArray(("partition_index", Int32), ("error_code", Int16), ("tags", TaggedFields)),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class TxnOffsetCommitRequestV3(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 28
    API_VERSION = 3
    RESPONSE_TYPE = TxnOffsetCommitResponseV3
    SCHEMA = Schema(
        ("transactional_id", CompactString("utf-8")),
        ("group_id", CompactString("utf-8")),
        ("producer_id", Int64),
        ("producer_epoch", Int16),
        ("generation_id", Int32),
        ("member_id", CompactString("utf-8")),
        ("group_instance_id", CompactString("utf-8")),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                (
                    "partitions",
                    CompactArray(
                        ("partition_index", Int32),
                        ("committed_offset", Int64),
                        ("committed_leader_epoch", Int32),
                        ("committed_metadata", CompactString("utf-8")),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class TxnOffsetCommitV3(Request[TxnOffsetCommitRequestV3]):  # type: ignore[misc]
    API_KEY = 28

    def __init__(self, fields: tuple[Any, ...]) -> None:
        self._fields = fields

    def build(self, request_struct_class: type[TxnOffsetCommitRequestV3]) -> TxnOffsetCommitRequestV3:
        return request_struct_class(*self._fields)


def txn_offset_commit(
    transactional_id: str,
    *,
    group_id: str,
    producer_id: int,
    producer_epoch: int,
    member: Member,
    offsets: Mapping[TopicPartition, Any],
) -> TxnOffsetCommitV3:
    """The v3 request committing ``offsets`` (aiokafka's ``OffsetAndMetadata`` values) as ``member``."""
    by_topic: dict[str, list[tuple[int, int, int, str, dict[int, bytes]]]] = defaultdict(list)
    for tp, offset in sorted(offsets.items()):
        by_topic[tp.topic].append((tp.partition, offset.offset, -1, offset.metadata, {}))
    return TxnOffsetCommitV3(
        (
            transactional_id,
            group_id,
            producer_id,
            producer_epoch,
            member.generation_id,
            member.member_id,
            member.group_instance_id,
            [(topic, partitions, {}) for topic, partitions in by_topic.items()],
            {},
        )
    )


class _MemberTxnOffsetCommitHandler(aiokafka_sender.TxnOffsetCommitHandler):  # type: ignore[misc]
    """aiokafka's handler, sending v3 with the member :func:`send_offsets` noted on the producer's
    transaction manager; a refusal for membership ends the transaction in an abortable error."""

    def create_request(self) -> Any:
        txn = self._sender._txn_manager
        member: Member | None = getattr(txn, "lianfang_member", None)
        if member is None:
            return super().create_request()
        return txn_offset_commit(
            txn.transactional_id,
            group_id=self._group_id,
            producer_id=txn.producer_id,
            producer_epoch=txn.producer_epoch,
            member=member,
            offsets=self._offsets,
        )

    def handle_response(self, resp: Any) -> Any:
        if not isinstance(resp, TxnOffsetCommitResponseV3):
            return super().handle_response(resp)
        codes = {code for _topic, partitions, _ in resp.topics for _p, code, _ in partitions}
        refused = sorted(codes & _NOT_A_MEMBER)
        if refused:
            txn = self._sender._txn_manager
            member = getattr(txn, "lianfang_member", None)
            generation = member.generation_id if member is not None else "?"
            error = NotAGroupMemberError(
                f"the group {self._group_id} refused this worker's offsets (error {refused[0]}): it is no "
                f"longer a member of generation {generation}"
            )
            txn.error_transaction(error)
            return None
        # The rest as aiokafka reads v0's answer: the same topics, partitions and error codes.
        resp.errors = [(name, [(p, code) for p, code, _ in parts]) for name, parts, _ in resp.topics]
        return super().handle_response(resp)


def install() -> None:
    """Make aiokafka's producers send TxnOffsetCommit v3 when :func:`send_offsets` gave them a member;
    once, however often it is called."""
    if aiokafka_sender.TxnOffsetCommitHandler is not _MemberTxnOffsetCommitHandler:
        aiokafka_sender.TxnOffsetCommitHandler = _MemberTxnOffsetCommitHandler


async def send_offsets(
    producer: AIOKafkaProducer, offsets: Mapping[TopicPartition, int], group_id: str, member: Member
) -> None:
    """``producer.send_offsets_to_transaction`` as ``member`` of ``group_id``: the group coordinator
    takes them only from a member of its current generation. Raises :class:`NotAGroupMemberError`
    (abort the transaction) when it refuses them."""
    install()
    txn = producer._txn_manager
    txn.lianfang_member = member
    try:
        await producer.send_offsets_to_transaction(dict(offsets), group_id)
    except NotAGroupMemberError:
        # aiokafka fails the transaction's end waiter with the same error; it is this one.
        waiter = txn.wait_for_transaction_end()
        if waiter is not None and waiter.done() and not waiter.cancelled():
            waiter.exception()
        raise


# -- the wire: OffsetFetch v7


class OffsetFetchResponseV7(Response):  # type: ignore[misc]
    API_KEY = 9
    API_VERSION = 7
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                (
                    "partitions",
                    CompactArray(
                        ("partition_index", Int32),
                        ("committed_offset", Int64),
                        ("committed_leader_epoch", Int32),
                        ("metadata", CompactString("utf-8")),
                        ("error_code", Int16),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("error_code", Int16),
        ("tags", TaggedFields),
    )


class OffsetFetchRequestV7(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 9
    API_VERSION = 7
    RESPONSE_TYPE = OffsetFetchResponseV7
    SCHEMA = Schema(
        ("group_id", CompactString("utf-8")),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                ("partition_indexes", CompactArray(Int32)),
                ("tags", TaggedFields),
            ),
        ),
        ("require_stable", Boolean),
        ("tags", TaggedFields),
    )


class OffsetFetchV7(Request[OffsetFetchRequestV7]):  # type: ignore[misc]
    API_KEY = 9

    def __init__(self, group_id: str, tps: list[TopicPartition]) -> None:
        by_topic: dict[str, list[int]] = defaultdict(list)
        for tp in sorted(tps):
            by_topic[tp.topic].append(tp.partition)
        self._fields: tuple[Any, ...] = (group_id, [(t, ps, {}) for t, ps in by_topic.items()], True, {})

    def build(self, request_struct_class: type[OffsetFetchRequestV7]) -> OffsetFetchRequestV7:
        return request_struct_class(*self._fields)


def read_offsets(response: Any) -> tuple[int, dict[TopicPartition, int | None], bool]:
    """An OffsetFetch v7 answer: its group error code, each partition's committed offset (None:
    nothing committed), and whether a partition was unstable (a transaction holds offsets open).
    With a group error the partitions are not read (the broker may repeat it on each of them);
    another error of a partition is raised as aiokafka's error for its code."""
    offsets: dict[TopicPartition, int | None] = {}
    unstable = False
    if response.error_code:
        return int(response.error_code), offsets, unstable
    for name, partitions, _ in response.topics:
        for partition, offset, _epoch, _metadata, code, _ in partitions:
            if code == UNSTABLE_OFFSET_COMMIT:
                unstable = True
            elif code:
                raise kerrors.for_code(code)(f"OffsetFetch of {name}[{partition}]")
            offsets[TopicPartition(name, partition)] = offset if offset >= 0 else None
    return int(response.error_code), offsets, unstable


async def stable_committed(
    consumer: AIOKafkaConsumer, group_id: str, tps: list[TopicPartition], *, timeout_s: float
) -> dict[TopicPartition, int | None]:
    """The committed offset of each of ``tps`` in ``group_id`` once no open transaction holds one
    (``require_stable``): a previous owner's transaction that committed offsets has committed or
    aborted by then (the broker aborts one left open after its transaction timeout). Retries while
    the coordinator moves or loads; raises :class:`TransportError` after ``timeout_s``."""
    coordinator = consumer._coordinator
    client = consumer._client
    deadline = time.monotonic() + timeout_s
    why = "no answer"
    while time.monotonic() < deadline:
        try:
            await asyncio.wait_for(
                coordinator.ensure_coordinator_known(), max(deadline - time.monotonic(), 0.1)
            )
            node = coordinator.coordinator_id
            response = await client.send(
                node, OffsetFetchV7(group_id, tps), group=ConnectionGroup.COORDINATION
            )
        except TimeoutError:
            why = "no group coordinator found"
            continue
        except kerrors.KafkaError as e:
            why = repr(e)
            coordinator.coordinator_dead()
            await asyncio.sleep(STABLE_RETRY_S)
            continue
        code, offsets, unstable = read_offsets(response)
        error = kerrors.for_code(code) if code else None
        if error is not None and issubclass(error, offsetfetch.COORDINATOR_GONE):
            coordinator.coordinator_dead()
            why = error.__name__
        elif error is kerrors.GroupLoadInProgressError:
            why = "the coordinator is loading"
        elif error is not None:
            raise error(f"OffsetFetch of group {group_id}")
        elif unstable:
            why = "a transaction holds offsets open"
        else:
            return offsets
        await asyncio.sleep(STABLE_RETRY_S)
    raise TransportError(f"no stable committed offsets of group {group_id} within {timeout_s:.0f} s: {why}")
