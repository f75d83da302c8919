"""Run a service as if its broker listed new topics late: ``python -m tests.integration.late_metadata
<module>`` runs ``python -m <module>`` with aiokafka patched so that a topic this process created does
not appear in the metadata its clients read until ``LIANFANG_TEST_METADATA_LAG_S`` seconds later.

A real broker does this for a moment: it serves a new topic in its metadata only after the controller
created it, tens of milliseconds on an idle machine and longer under load. Here the moment is long and
certain, so a test can show what a service does when it falls into it, every time, not by the timing
luck of a loaded machine. Topics created by another process (or before this one started) are listed
at once, as a broker lists them once it has applied their creation.
"""

from __future__ import annotations

import os
import runpy
import sys
import time
from typing import Any

from aiokafka import AIOKafkaClient
from aiokafka.cluster import ClusterMetadata

CREATE_TOPICS = 19  # the Kafka protocol's API key of CreateTopics
LAG_S = float(os.environ.get("LIANFANG_TEST_METADATA_LAG_S", "30"))
_created: dict[str, float] = {}  # topic -> when this process created it (monotonic)


def _listed_late(topic: str) -> bool:
    created = _created.get(topic)
    return created is not None and time.monotonic() - created < LAG_S


class _WithoutNewTopics:
    """A metadata response without the topics this process created less than ``LAG_S`` ago."""

    def __init__(self, response: Any) -> None:
        self._response = response

    def __getattr__(self, name: str) -> Any:
        return getattr(self._response, name)

    @property
    def topics(self) -> list[Any]:
        return [t for t in self._response.topics if not _listed_late(t[1])]  # (error, name, ...)


_send = AIOKafkaClient.send
_update = ClusterMetadata.update_metadata


async def _send_noting_creations(self: AIOKafkaClient, node_id: Any, request: Any, **kwargs: Any) -> Any:
    response = await _send(self, node_id, request, **kwargs)
    if getattr(response, "API_KEY", None) == CREATE_TOPICS:
        for topic, code, *_ in response.topic_errors:
            if code == 0:
                _created[topic] = time.monotonic()
    return response


def _update_late(self: ClusterMetadata, metadata: Any) -> Any:
    return _update(self, _WithoutNewTopics(metadata))


if __name__ == "__main__":
    AIOKafkaClient.send = _send_noting_creations  # type: ignore[method-assign]
    ClusterMetadata.update_metadata = _update_late  # type: ignore[method-assign]
    module, sys.argv = sys.argv[1], [sys.argv[1], *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
