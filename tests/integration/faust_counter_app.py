"""A small faust-streaming app for the Foundation tests: counts records per key in a RocksDB table.

Run as a worker process by the test (``python -m tests.integration.faust_counter_app worker``) with
its topics, data folder and broker in the environment; every count it reaches goes to an output
topic so the test can see the table's state from outside.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import faust

BOOTSTRAP = os.environ["COUNTER_BOOTSTRAP"]
APP_ID = os.environ["COUNTER_APP_ID"]

app = faust.App(
    APP_ID,
    broker=f"kafka://{BOOTSTRAP}",
    store="rocksdb://",
    datadir=os.environ["COUNTER_DATADIR"],
    topic_partitions=1,
    topic_replication_factor=1,
    web_enabled=False,
    # Test-sized timeouts so a restart rejoins the group quickly.
    broker_session_timeout=6.0,
    broker_heartbeat_interval=1.0,
    broker_commit_every=1,
    broker_commit_interval=0.2,
    consumer_auto_offset_reset="earliest",
    producer_acks=-1,
)

source = app.topic(os.environ["COUNTER_SOURCE"], key_serializer="raw", value_serializer="raw")
counts_out = app.topic(os.environ["COUNTER_OUTPUT"], key_serializer="raw", value_serializer="raw")
counts = app.Table("counts", default=int, partitions=1, key_type=str, value_type=int)


@app.agent(source)
async def count(stream: faust.StreamT[Any]) -> AsyncIterator[None]:
    async for key, _value in stream.items():
        name = key.decode()
        counts[name] += 1
        await counts_out.send(key=key, value=str(counts[name]).encode())
        yield None


if __name__ == "__main__":
    app.main()
