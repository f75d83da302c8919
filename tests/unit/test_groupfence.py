"""KIP-447's requests as :mod:`services.bus.groupfence` writes and reads them, without Kafka: the
TxnOffsetCommit v3 request carries the member's generation and id in Kafka's flexible layout, an
OffsetFetch v7 answer says which offsets are committed and whether a transaction holds one open, and a
consumer that has forgotten its membership gives no member to commit as."""

from __future__ import annotations

from io import BytesIO
from types import SimpleNamespace

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import NotCoordinatorForGroupError, TopicAuthorizationFailedError
from aiokafka.structs import OffsetAndMetadata

from services.bus import groupfence

pytestmark = pytest.mark.unit


def test_a_txn_offset_commit_v3_carries_the_members_generation_and_id_and_reads_back_the_same() -> None:
    member = groupfence.Member(12, "worker-b")
    request = groupfence.txn_offset_commit(
        "g.worker-1",
        group_id="g",
        producer_id=7,
        producer_epoch=3,
        member=member,
        offsets={
            TopicPartition("events", 1): OffsetAndMetadata(41, ""),
            TopicPartition("events", 0): OffsetAndMetadata(9, ""),
        },
    ).build(groupfence.TxnOffsetCommitRequestV3)
    wire = request.encode()
    assert wire[:11] == b"\x0bg.worker-1"  # a compact string: its length + 1 as a varint
    read = groupfence.TxnOffsetCommitRequestV3.SCHEMA.decode(BytesIO(wire))
    transactional_id, group, producer_id, epoch, generation, member_id, instance, topics, tags = read
    assert (transactional_id, group, producer_id, epoch) == ("g.worker-1", "g", 7, 3)
    assert (generation, member_id, instance) == (12, "worker-b", None)
    assert topics == [("events", [(0, 9, -1, "", {}), (1, 41, -1, "", {})], {})]
    assert tags == {}


def _answer(partitions: list[tuple[int, int, int]], error_code: int = 0) -> SimpleNamespace:
    return SimpleNamespace(
        topics=[("events", [(p, offset, -1, "", code, {}) for p, offset, code in partitions], {})],
        error_code=error_code,
    )


def test_an_offset_fetch_answer_gives_each_committed_offset_and_none_where_nothing_is_committed() -> None:
    error, offsets, unstable = groupfence.read_offsets(_answer([(0, 17, 0), (1, -1, 0)]))
    assert (error, unstable) == (0, False)
    assert offsets == {TopicPartition("events", 0): 17, TopicPartition("events", 1): None}


def test_an_offset_fetch_answer_says_when_a_transaction_holds_a_partitions_offset_open() -> None:
    _, _, unstable = groupfence.read_offsets(
        _answer([(0, 17, 0), (1, -1, groupfence.UNSTABLE_OFFSET_COMMIT)])
    )
    assert unstable


def test_an_offset_fetch_answer_with_a_group_error_gives_it_whatever_its_partitions_say() -> None:
    """The broker may repeat a group error (its coordinator moved) on each partition: that is a reason
    to look the coordinator up again, not a partition's failure."""
    moved = NotCoordinatorForGroupError.errno
    assert groupfence.read_offsets(_answer([(0, -1, moved)], error_code=moved)) == (moved, {}, False)


def test_an_offset_fetch_answer_with_another_partition_error_raises_it() -> None:
    with pytest.raises(TopicAuthorizationFailedError):
        groupfence.read_offsets(_answer([(0, -1, TopicAuthorizationFailedError.errno)]))


@pytest.mark.parametrize(("generation", "member_id"), [(-1, ""), (-1, "worker-a"), (4, "")])
def test_a_consumer_that_has_forgotten_its_membership_gives_no_member_to_commit_as(
    generation: int, member_id: str
) -> None:
    """aiokafka resets both on the first heartbeat that hears the group dropped it; offsets committed
    without them (generation -1) are ones the group coordinator does not fence."""
    consumer = SimpleNamespace(
        _coordinator=SimpleNamespace(generation=generation, member_id=member_id, _group_instance_id=None)
    )
    with pytest.raises(groupfence.NotAGroupMemberError):
        groupfence.Member.of(consumer)  # type: ignore[arg-type]


def test_a_consumer_in_its_group_commits_as_its_generation_and_member_id() -> None:
    consumer = SimpleNamespace(
        _coordinator=SimpleNamespace(generation=4, member_id="worker-a", _group_instance_id=None)
    )
    assert groupfence.Member.of(consumer) == groupfence.Member(4, "worker-a")  # type: ignore[arg-type]
