"""The hub benchmark's baseline: a faust agent on the hub's inbox that only decodes each record.

``python -m tests.bench.faust_decode`` reads the hub's settings from the environment (the same
``LIANFANG_HUB_*`` variables, so the same topic, partitions and faust options as the hub), and per
record only parses the envelope's frame and clear header (:func:`services.kernel.envelope.parse`:
size check, DSSE frame, base64 body, header model). No signature, no opening, no table, no send.
It counts records in ``lianfang_bench_decoded_total`` on its ``/metrics``, which the benchmark polls
as it polls the hub's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import faust
from prometheus_client import Counter

from services.bus import metrics_endpoint
from services.hub.app import HubSettings, faust_options
from services.kernel import envelope, ids, topics
from services.kernel.errors import UntrustedInputError

DECODED = "lianfang_bench_decoded"


def create_app(settings: HubSettings) -> faust.App:
    app = faust.App(settings.app_id, store="memory://", **faust_options(settings))
    inbox = app.topic(
        topics.TopicNames(settings.topic_prefix).inbox(ids.HUB),
        partitions=settings.partitions,
        key_serializer="raw",
        value_serializer="raw",
    )
    decoded = Counter(DECODED, "Inbox records whose frame and clear header were parsed.", ["result"])

    @app.agent(inbox)
    async def decode(stream: faust.StreamT[Any]) -> AsyncIterator[None]:
        async for event in stream.events():
            try:
                envelope.parse(event.message.value)
                decoded.labels("ok").inc()
            except UntrustedInputError:
                decoded.labels("malformed").inc()
            yield None

    @app.task  # type: ignore[untyped-decorator]
    async def serve_metrics() -> None:
        metrics_endpoint.start(settings)

    return app


if __name__ == "__main__":
    settings = HubSettings()
    (settings.data_dir / settings.worker_name).mkdir(parents=True, exist_ok=True)
    worker = faust.Worker(create_app(settings), loglevel=settings.log_level, redirect_stdouts=False)
    worker.execute_from_commandline()
