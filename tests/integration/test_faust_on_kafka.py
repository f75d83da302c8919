"""A faust-streaming agent with a RocksDB table runs on the real broker and keeps state across restarts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer

from services.bus.cluster import DURABLE_PRODUCER, TopicSpec, ensure_topics
from tests.conftest import Unique

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


class Worker:
    """One faust worker process of the counter app, its log in a file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.integration.faust_counter_app", "worker", "-l", "info"],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
                pytest.fail(f"faust worker ignored SIGTERM for {timeout} s; log: {self.log}")
        return self.proc.returncode


class Counts:
    """Reads the app's output topic: the latest count the table reached for each key."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
        self.latest: dict[str, int] = {}

    def wait_for(self, expected: dict[str, int], worker: Worker, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for records in self.consumer.poll(timeout_ms=500).values():
                for r in records:
                    self.latest[r.key.decode()] = int(r.value)
            if all(self.latest.get(k) == v for k, v in expected.items()):
                return
            if worker.proc.poll() is not None:
                pytest.fail(f"faust worker exited with {worker.proc.returncode}; log: {worker.log}")
        pytest.fail(f"counts {self.latest} never reached {expected}; worker log: {worker.log}")


@pytest.fixture
def counter_env(kafka_bootstrap: str, unique: Unique, tmp_path: Path) -> dict[str, str]:
    source, output = unique("source"), unique("counts")
    ensure_topics(kafka_bootstrap, [TopicSpec(source), TopicSpec(output)])
    return {
        **os.environ,
        "COUNTER_BOOTSTRAP": kafka_bootstrap,
        "COUNTER_APP_ID": unique("counter-app"),
        "COUNTER_DATADIR": str(tmp_path / "faust-data"),
        "COUNTER_SOURCE": source,
        "COUNTER_OUTPUT": output,
    }


def _send(bootstrap: str, topic: str, keys: list[str]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, **DURABLE_PRODUCER)
    for key in keys:
        producer.send(topic, key=key.encode(), value=b"lead")
    producer.flush()
    producer.close()


def test_a_faust_agent_counts_records_in_a_rocksdb_table_and_the_counts_survive_a_worker_restart(
    kafka_bootstrap: str, counter_env: dict[str, str], tmp_path: Path
) -> None:
    source, output = counter_env["COUNTER_SOURCE"], counter_env["COUNTER_OUTPUT"]
    counts = Counts(kafka_bootstrap, output)
    log = tmp_path / "worker.log"

    first = Worker(counter_env, log)
    try:
        _send(kafka_bootstrap, source, ["alice"] * 5 + ["bob"] * 3)
        counts.wait_for({"alice": 5, "bob": 3}, first)
    finally:
        assert first.stop() == 0, f"first worker did not stop cleanly; log: {log}"

    rocksdb_files = list(Path(counter_env["COUNTER_DATADIR"]).rglob("CURRENT"))
    assert rocksdb_files, "the table was not kept in a RocksDB store"

    second = Worker(counter_env, log)
    try:
        _send(kafka_bootstrap, source, ["alice", "carol"])
        counts.wait_for({"alice": 6, "carol": 1}, second)
    finally:
        second.stop()
        counts.consumer.close()
