"""Helpers for tests that run Lianfang services on the real broker: topics, publishing sealed events,
reading inboxes back, and service processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from services.bus import cluster
from services.bus.cluster import DURABLE_PRODUCER
from services.kernel import envelope, topics
from tests.kit import CONTENT, DemoDomain, header

REPO = Path(__file__).resolve().parents[2]


def _acknowledged(futures: list[Any]) -> None:
    """Raise unless Kafka acknowledged every send (kafka-python reports failures only on its futures)."""
    failed = [f.exception for f in futures if f.failed()]
    if failed:
        raise AssertionError(f"{len(failed)} of {len(futures)} test records were not produced: {failed[0]!r}")


@dataclass
class Bus:
    """One namespace of topics on the test broker (every topic of deploy/topics.toml, prefixed)."""

    bootstrap: str
    prefix: str
    domain: DemoDomain

    @classmethod
    def create(cls, bootstrap: str, prefix: str, domain: DemoDomain) -> Bus:
        cluster.apply_topics(bootstrap, domain.registry.participant_ids(), prefix=prefix)
        return cls(bootstrap, prefix, domain)

    @property
    def names(self) -> topics.TopicNames:
        return topics.TopicNames(self.prefix)

    def seal(
        self, sender: str = "police", *, phone: str = "13800000000", **fields: Any
    ) -> envelope.SealedRecord:
        """A sealed event at the current time about the subject with ``phone``."""
        fields.setdefault("source", f"urn:lianfang:{sender}")
        fields.setdefault("time", datetime.now(UTC))
        fields.setdefault("id", envelope.new_event_id())
        fields.setdefault("subject", self.domain.subject(phone))
        h = header(**fields)
        return envelope.seal(h, CONTENT, registry=self.domain.registry, signer=self.domain.keys(sender))

    def produce(self, records: Iterable[tuple[bytes | None, bytes]], topic: str | None = None) -> None:
        producer = KafkaProducer(
            bootstrap_servers=self.bootstrap, max_request_size=2_000_000, **DURABLE_PRODUCER
        )
        futures = [producer.send(topic or self.names.events, key=key, value=value) for key, value in records]
        producer.flush()
        producer.close()
        _acknowledged(futures)

    def publish(self, sealed: Iterable[envelope.SealedRecord]) -> list[str]:
        """Produce sealed events (with their CloudEvents headers); returns their ids once Kafka has
        acknowledged every one (a send that failed raises: a lost test input is not a lost event)."""
        producer = KafkaProducer(bootstrap_servers=self.bootstrap, **DURABLE_PRODUCER)
        ids = []
        futures = []
        for record in sealed:
            futures.append(
                producer.send(self.names.events, key=record.key, value=record.value, headers=record.headers)
            )
            ids.append(record.header.id)
        producer.flush()
        producer.close()
        _acknowledged(futures)
        return ids

    def read_all(self, topic_names: Iterable[str]) -> dict[str, list[Any]]:
        """Every committed record of these topics, up to their current end (read_committed)."""
        names = list(topic_names)
        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            isolation_level="read_committed",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        tps = [TopicPartition(t, p) for t in names for p in sorted(consumer.partitions_for_topic(t) or [])]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        out: dict[str, list[Any]] = {t: [] for t in names}
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {names} to their end")
            for tp, records in consumer.poll(timeout_ms=200).items():
                out[tp.topic].extend(records)
        consumer.close()
        return out

    def inbox_ids(self) -> dict[str, Counter[str]]:
        """For every participant, how many times each event id reached its inbox."""
        inboxes = {self.names.inbox(p): p for p in self.domain.registry.participant_ids()}
        result: dict[str, Counter[str]] = {}
        for topic, records in self.read_all(inboxes).items():
            result[inboxes[topic]] = Counter(dict(r.headers).get("ce_id", b"?").decode() for r in records)
        return result

    def deadletters(self) -> list[Any]:
        return self.read_all([self.names.deadletter])[self.names.deadletter]

    def wait_for(self, condition: Any, timeout: float = 90, what: str = "condition") -> Any:
        """Poll ``condition()`` until it returns something truthy, or fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            time.sleep(0.3)  # poll interval inside a deadline loop
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Service:
    """A Lianfang service in a child process, its output in a log file."""

    def __init__(self, module: str, env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", module],
                cwd=REPO,
                env={**os.environ, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, no final commit."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self, timeout: float = 60) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RouterProcess(Service):
    """A router worker process on a bus, with its /metrics on a free port."""

    def __init__(self, bus: Bus, home: Path, log: Path, group: str, **env: str) -> None:
        self.port = free_port()
        super().__init__(
            "services.router",
            {
                "LIANFANG_BOOTSTRAP": bus.bootstrap,
                "LIANFANG_HOME": str(home),
                "LIANFANG_ROUTER_TOPIC_PREFIX": bus.prefix,
                "LIANFANG_ROUTER_GROUP_ID": group,
                "LIANFANG_ROUTER_METRICS_PORT": str(self.port),
                **env,
            },
            log,
        )

    def metric(self, name: str, **labels: str) -> float | None:
        """The current value of one series, or None while the worker is not serving /metrics."""
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2).read().decode()
        except OSError:
            return None
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                series, _, value = line.rpartition(" ")
                values[series] = float(value)
        return values.get(f"{name}{{{want}}}" if want else name, 0.0)
