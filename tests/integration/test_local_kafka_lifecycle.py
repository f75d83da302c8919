"""`make kafka-up` / `make kafka-down`: a real broker comes up, answers, and leaves nothing behind."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy.kafka.local import LocalKafka, LocalKafkaError, metadata_broker_count

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _java_processes_for(data: Path) -> list[int]:
    """Pids of live Kafka nodes started with this data folder (read from /proc, zombies excluded)."""
    marker = f"-Dlianfang.data={data.resolve()}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmdline and b"kafka.Kafka" in cmdline and state != "Z":
            pids.append(int(proc.name))
    return pids


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploy.kafka", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_up_prints_a_loopback_bootstrap_that_answers_and_down_leaves_no_java_process(tmp_path: Path) -> None:
    data = tmp_path / "kafka"
    up = _cli("up", "--data", str(data))
    try:
        assert up.returncode == 0, up.stderr
        bootstrap = up.stdout.strip()
        host, port = bootstrap.split(":")
        assert host == "127.0.0.1"
        assert metadata_broker_count(host, int(port)) == 1
        assert _java_processes_for(data)
    finally:
        down = _cli("down", "--data", str(data))
    assert down.returncode == 0, down.stderr
    assert _java_processes_for(data) == []


def test_a_broker_that_misses_its_start_deadline_is_reported_and_not_left_running(tmp_path: Path) -> None:
    cluster = LocalKafka.plan(tmp_path / "slow")
    with pytest.raises(LocalKafkaError, match=r"did not answer a metadata request within 0 s"):
        cluster.start(timeout=0.01)
    assert _java_processes_for(tmp_path / "slow") == []


def test_up_on_a_taken_port_fails_with_the_fix_and_starts_nothing(tmp_path: Path) -> None:
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        up = _cli("up", "--data", str(tmp_path / "k"), "--port", str(port))
    assert up.returncode == 1
    assert f"127.0.0.1:{port} is already taken" in up.stderr
    assert _java_processes_for(tmp_path / "k") == []


def test_three_nodes_keep_accepting_acks_all_writes_with_one_node_down(tmp_path: Path) -> None:
    """The three-node mode the reliability tests build on: replication 3, min.insync.replicas 2."""
    from kafka import KafkaConsumer, KafkaProducer

    from deploy.kafka.local import running
    from services.bus.cluster import DURABLE_PRODUCER, TopicSpec, ensure_topics

    with running(tmp_path / "k3", nodes=3, discard=True) as cluster:
        assert len(_java_processes_for(tmp_path / "k3")) == 3
        ensure_topics(cluster.bootstrap, [TopicSpec("durable", partitions=3, replication=3)])
        cluster.kill_node(3)
        producer = KafkaProducer(
            bootstrap_servers=cluster.bootstrap, request_timeout_ms=20_000, **DURABLE_PRODUCER
        )
        sent = [producer.send("durable", key=str(i).encode(), value=b"lead") for i in range(50)]
        producer.flush()
        assert all(f.get(timeout=30).offset >= 0 for f in sent)
        producer.close()
        consumer = KafkaConsumer("durable", bootstrap_servers=cluster.bootstrap, auto_offset_reset="earliest")
        got = 0
        deadline = time.monotonic() + 60
        while got < 50 and time.monotonic() < deadline:
            got += sum(len(b) for b in consumer.poll(timeout_ms=500).values())
        consumer.close()
        assert got == 50
    assert _java_processes_for(tmp_path / "k3") == []


def test_three_nodes_on_single_node_data_stop_with_one_line_and_leave_the_data_usable(tmp_path: Path) -> None:
    """Regression: `make kafka-up NODES=3` after a single-node `make run` formatted two more nodes beside
    the single node's metadata log, died with UnexpectedAppendOffsetException, and the folder no longer
    started as a single node either."""
    data = tmp_path / "kafka"
    up = _cli("up", "--data", str(data))
    assert up.returncode == 0, up.stderr
    assert _cli("down", "--data", str(data)).returncode == 0
    three = _cli("up", "--data", str(data), "--nodes", "3")
    assert three.returncode == 1
    assert three.stderr.count("\n") == 1, three.stderr
    assert (
        "holds a single-node plaintext cluster, not the 3-node plaintext one asked for; fix:" in three.stderr
    )
    assert _java_processes_for(data) == []
    assert not (data / "node-2").exists()
    again = _cli("up", "--data", str(data))
    try:
        assert again.returncode == 0, again.stderr
        host, port = again.stdout.strip().split(":")
        assert metadata_broker_count(host, int(port)) == 1
    finally:
        _cli("down", "--data", str(data))
