"""The audit trail's Kafka edges: :class:`KafkaSink` sends lines to the audit topic, :func:`read_topic`
reads the whole topic back for verification. Every Kafka failure is a :class:`TransportError`."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from services.audit.trail import Publish
from services.bus.cluster import BACKGROUND_BOOTSTRAP_TIMEOUT_MS, DURABLE_PRODUCER
from services.bus.security import KafkaSecuritySettings, kafka_python_kwargs
from services.kernel.errors import TransportError


class KafkaSink:
    """Sends audit lines to the audit topic (acks=all, idempotent), keyed by actor so one chain stays in
    one partition, in order. The producer is made on first use, so a sink can exist while the broker is
    away; every failure is a :class:`TransportError`."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        security: KafkaSecuritySettings | None = None,
        *,
        timeout_s: float = 30.0,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.security = security
        self.timeout_s = timeout_s
        self._producer: Any = None

    def _client(self) -> Any:
        if self._producer is None:
            extra = kafka_python_kwargs(self.security) if self.security is not None else {}
            try:
                self._producer = KafkaProducer(
                    bootstrap_servers=self.bootstrap,
                    client_id="lianfang-audit",
                    max_block_ms=int(self.timeout_s * 1000),
                    bootstrap_timeout_ms=BACKGROUND_BOOTSTRAP_TIMEOUT_MS,
                    **DURABLE_PRODUCER,
                    **extra,
                )
            except KafkaError as e:
                raise TransportError(
                    f"cannot reach Kafka at {self.bootstrap} for the audit trail: {e}"
                ) from e
        return self._producer

    def send(self, key: bytes, lines: Sequence[bytes]) -> None:
        """Send ``lines`` in order and return once the broker acknowledged every one."""
        producer = self._client()
        try:
            futures = [producer.send(self.topic, key=key, value=line) for line in lines]
            producer.flush(timeout=self.timeout_s)
            for future in futures:
                future.get(timeout=self.timeout_s)
        except KafkaError as e:
            raise TransportError(f"publishing audit entries to {self.topic} failed: {e}") from e

    def cluster(self) -> str:
        producer = self._client()
        try:
            producer.partitions_for(self.topic)  # fetches the metadata, which names the cluster
        except KafkaError as e:
            raise TransportError(f"no metadata for {self.topic} from {self.bootstrap}: {e}") from e
        # kafka-python keeps the metadata it received in the producer's ClusterMetadata.
        return str(producer._metadata.cluster_id or "")

    def __call__(self, key: bytes, value: bytes) -> None:
        self.send(key, [value])

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=5)
            self._producer = None


def kafka_sink(
    bootstrap: str, topic: str, security: KafkaSecuritySettings | None = None
) -> tuple[Publish, Callable[[], None]]:
    """A synchronous publisher of single lines to the audit topic and its close function."""
    sink = KafkaSink(bootstrap, topic, security)
    return sink, sink.close


def read_topic(
    bootstrap: str, topic: str, security: KafkaSecuritySettings | None = None, *, timeout_s: float = 30.0
) -> list[bytes]:
    """Every record of the audit topic, partition by partition, from the start to the current end."""
    extra = kafka_python_kwargs(security) if security is not None else {}
    lines: list[bytes] = []
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            client_id="lianfang-audit-verify",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # The router writes its entries in transactions: an aborted one's records are not entries.
            isolation_level="read_committed",
            **extra,
        )
    except KafkaError as e:
        raise TransportError(f"cannot reach Kafka at {bootstrap} to read {topic}: {e}") from e
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise TransportError(f"the audit topic {topic} does not exist or is not readable")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout_s
        by_partition: dict[int, list[bytes]] = {tp.partition: [] for tp in tps}
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TransportError(f"reading {topic} did not reach its end within {timeout_s:.0f} s")
            for tp, records in consumer.poll(timeout_ms=500).items():
                by_partition[tp.partition] += [r.value for r in records if r.value is not None]
        for p in sorted(by_partition):
            lines += by_partition[p]
    except KafkaError as e:
        raise TransportError(f"reading {topic} failed: {e}") from e
    finally:
        consumer.close()
    return lines


__all__ = ["KafkaSink", "kafka_sink", "read_topic"]
