"""aiokafka's reading of a group's committed offsets, made to heed the answer's group-level error.

Since OffsetFetch v2 (KIP-88) a broker that cannot answer for a group (it is not, or no longer, the
group's coordinator; its offsets are still loading) says so in one error code for the whole answer,
and may list no partition at all. aiokafka 0.14 reads only the partitions' own error codes: it takes
such an answer for "nothing committed", and keeps asking the same broker. Kafka's Java client, sarama
and librdkafka retry on it; pykafka had the same gap (its issue #958). We met it in a soak: after the
broker that was the hub group's coordinator lost its disk and came back, the hub's lag sampler read
no committed offset on any inbox partition, for 18 minutes, while the group committed every second;
its lag gauge showed the whole inbox as unread. The same reading starts every consumer of a group
after a rebalance: on such an answer it would start its partitions from ``auto_offset_reset`` (the
earliest offset everywhere here: every record read again, deduplicated, but the whole topic).

:func:`install` wraps the group coordinator's request step: an OffsetFetch answer carrying a group
error raises it, as a partition's error would, after marking the coordinator unknown when the broker
is not the coordinator. aiokafka's callers already retry such errors (after looking the coordinator up
again), so the committed offsets read are those the group's coordinator holds, or nothing is read.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import errors
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.protocol.commit import OffsetFetchRequest

__all__ = ["COORDINATOR_GONE", "group_error", "install"]

log = logging.getLogger("lianfang.offsetfetch")

COORDINATOR_GONE = (errors.NotCoordinatorForGroupError, errors.GroupCoordinatorNotAvailableError)
"""What a broker answers for a group whose coordinator it is not (now): look the coordinator up again."""


def group_error(response: Any) -> type[errors.KafkaError] | None:
    """The group-level error an OffsetFetch answer carries (v2 on), or None: no error, or a version
    without the field."""
    code = getattr(response, "error_code", 0)
    return errors.for_code(code) if code else None


def _checked(
    send: Callable[[GroupCoordinator, Any], Awaitable[Any]],
) -> Callable[[GroupCoordinator, Any], Awaitable[Any]]:
    @functools.wraps(send)
    async def send_req(self: GroupCoordinator, request: Any) -> Any:
        response = await send(self, request)
        if isinstance(request, OffsetFetchRequest):
            error = group_error(response)
            if error is not None:
                log.debug("OffsetFetch for group %s answered %s", self.group_id, error.__name__)
                if issubclass(error, COORDINATOR_GONE):
                    self.coordinator_dead()
                raise error()
        return response

    send_req.__lianfang_checked__ = True  # type: ignore[attr-defined]
    return send_req


def install() -> None:
    """Make every aiokafka group coordinator of this process heed OffsetFetch's group error; once,
    however often it is called."""
    current = GroupCoordinator._send_req
    if getattr(current, "__lianfang_checked__", False):
        return
    GroupCoordinator._send_req = _checked(current)
