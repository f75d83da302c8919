"""Regression: the router's transactions met NotEnoughReplicasError on a single node.

With one replica and ``min.insync.replicas=1`` no ISR can be too small. The refusals came from the
broker's transaction verification: a partition leader checks each transactional write with the
transaction coordinator, keeps one check a producer waiting, and refuses the older of two (a produce
hears NOT_ENOUGH_REPLICAS). The runner sent a batch's offsets (a transactional offset commit, checked
the same way) while the batch's produce request still waited for its check. It now sends them once
every output is delivered (docs/decisions.md, "Kafka transactions").
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic

from services.bus.eos import Output, PartitionState, TransactionalRunner
from tests.integration.buskit import run_worker_until

pytestmark = pytest.mark.integration

BATCHES = 80
"""One transaction each. Before the fix, on a busy two-core machine, one transaction in 10 to 20 had
its produce request refused (this test counted 42 refused partition writes)."""


class _Refusals(logging.Handler):
    """Keeps aiokafka's warnings about a partition write the broker refused as NotEnoughReplicas."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "NotEnoughReplicas" in record.getMessage():
            self.lines.append(record.getMessage())


def test_a_workers_transactions_on_one_node_have_no_write_refused_as_not_enough_replicas(
    kafka_bootstrap: str,
) -> None:
    suffix = uuid.uuid4().hex[:8]
    source, state, out = f"t-nerr-in-{suffix}", f"t-nerr-state-{suffix}", f"t-nerr-out-{suffix}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(source, 1, 1), NewTopic(state, 1, 1), NewTopic(out, 6, 1)])
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for i in range(BATCHES):
        producer.send(source, key=b"k", value=b"%d" % i)
    producer.flush(timeout=30)
    producer.close()
    handled: list[bytes] = []

    async def fan_out(record: Any, state_: PartitionState) -> list[Output]:
        # Like a routed event: copies to several partitions and a state record, in one transaction.
        state_.put(f"seen:{record.offset}", b"1")
        handled.append(record.value)
        return [Output(out, record.value, b"key-%d" % k) for k in range(12)]

    runner = TransactionalRunner(
        bootstrap=kafka_bootstrap,
        group_id=f"t-nerr-group-{suffix}",
        source=source,
        state_topic=state,
        handler=fan_out,
        max_batch=1,  # one transaction per record
    )
    refusals = _Refusals()
    sender_log = logging.getLogger("aiokafka.producer.sender")
    sender_log.addHandler(refusals)
    try:
        asyncio.run(run_worker_until(runner, lambda: len(handled) >= BATCHES, "every record handled", 300))
    finally:
        sender_log.removeHandler(refusals)
    assert len(handled) >= BATCHES
    assert refusals.lines == [], f"{len(refusals.lines)} partition writes refused, e.g. {refusals.lines[0]}"
