"""aiokafka's reading of a group's committed offsets heeds the answer's group-level error. Pure: the
coordinator's request step is given the broker's answer; aiokafka's own parsing of it runs as is."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition, errors
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.protocol.commit import OffsetFetchResponse_v3

from services.bus import offsetfetch

pytestmark = pytest.mark.unit

TP = TopicPartition("t.lianfang.inbox.hub.v1", 0)


def answer(*, error_code: int, offset: int | None = None) -> OffsetFetchResponse_v3:
    topics = [] if offset is None else [(TP.topic, [(TP.partition, offset, "", 0)])]
    return OffsetFetchResponse_v3(throttle_time_ms=0, topics=topics, error_code=error_code)


class Coordinator:
    """Enough of aiokafka's group coordinator for its offset reading: the broker's answer is given."""

    group_id = "t.hub"
    _do_fetch_commit_offsets = GroupCoordinator._do_fetch_commit_offsets

    def __init__(self, response: OffsetFetchResponse_v3, *, checked: bool = True) -> None:
        async def send(_self: Any, _request: Any) -> OffsetFetchResponse_v3:
            return response

        self.send = offsetfetch._checked(send) if checked else send
        self.dead = 0

    async def _send_req(self, request: Any) -> Any:
        return await self.send(self, request)

    def coordinator_dead(self) -> None:
        self.dead += 1

    def committed(self) -> Any:
        return asyncio.run(self._do_fetch_commit_offsets([TP]))


def test_aiokafka_alone_reads_a_not_the_coordinator_answer_as_nothing_committed() -> None:
    """Why the check is installed: when this fails, aiokafka heeds the group error itself."""
    coordinator = Coordinator(answer(error_code=errors.NotCoordinatorForGroupError.errno), checked=False)
    assert coordinator.committed() == {}


def test_a_not_the_coordinator_answer_raises_a_retriable_error_and_forgets_the_coordinator() -> None:
    coordinator = Coordinator(answer(error_code=errors.NotCoordinatorForGroupError.errno))
    with pytest.raises(errors.NotCoordinatorForGroupError) as raised:
        coordinator.committed()
    assert raised.value.retriable
    assert coordinator.dead == 1


def test_offsets_still_loading_raise_a_retriable_error_and_keep_the_coordinator() -> None:
    coordinator = Coordinator(answer(error_code=errors.GroupLoadInProgressError.errno))
    with pytest.raises(errors.GroupLoadInProgressError):
        coordinator.committed()
    assert coordinator.dead == 0


def test_an_answer_without_a_group_error_is_read_as_aiokafka_reads_it() -> None:
    assert Coordinator(answer(error_code=0, offset=4844)).committed()[TP].offset == 4844
    assert Coordinator(answer(error_code=0, offset=-1)).committed() == {}  # nothing committed yet


def test_installing_twice_wraps_aiokafka_s_request_step_once() -> None:
    before = GroupCoordinator._send_req
    try:
        offsetfetch.install()
        once = GroupCoordinator._send_req
        offsetfetch.install()
        assert GroupCoordinator._send_req is once
        assert getattr(once, "__wrapped__", None) in (before, getattr(before, "__wrapped__", None))
    finally:
        GroupCoordinator._send_req = before  # type: ignore[method-assign]
