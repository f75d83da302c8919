"""The local Kafka launcher says exactly what is missing or wrong, and never trusts a partial download."""

from __future__ import annotations

import socket
import stat
from pathlib import Path

import pytest

from deploy.kafka import local
from deploy.kafka.local import LocalKafka, LocalKafkaError

pytestmark = pytest.mark.unit


def test_a_taken_port_is_named_with_the_fix() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(LocalKafkaError, match=rf"(?s)127\.0\.0\.1:{port} is already taken.*fix:"):
            local.ensure_port_free(port)


def test_missing_maven_is_reported_with_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local.shutil, "which", lambda _name: None)
    with pytest.raises(LocalKafkaError, match=r"(?s)Maven .* not found.*apt-get install maven"):
        local.find_maven()


def test_missing_java_is_reported_with_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local.shutil, "which", lambda _name: None)
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(LocalKafkaError, match=r"(?s)Java 17 or newer.*fix: install it"):
        local.find_java()


def _fake_mvn(tmp_path: Path, script: str) -> str:
    mvn = tmp_path / "mvn"
    mvn.write_text("#!/bin/sh\n" + script)
    mvn.chmod(mvn.stat().st_mode | stat.S_IEXEC)
    return str(mvn)


def test_a_failed_jar_download_keeps_nothing_and_says_what_maven_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "JARS_ROOT", tmp_path / "jars")
    # A Maven that writes one jar, then fails as if the network dropped mid-download.
    script = (
        'for a in "$@"; do case "$a" in -DoutputDirectory=*) d="${a#-DoutputDirectory=}";; esac; done\n'
        'mkdir -p "$d" && touch "$d/kafka_2.13-4.1.1.jar"\n'
        "echo 'Could not transfer artifact org.apache.kafka:kafka-clients'; exit 1\n"
    )
    monkeypatch.setattr(local, "find_maven", lambda: _fake_mvn(tmp_path, script))
    with pytest.raises(
        LocalKafkaError, match=r"(?s)fetching the Kafka jars with Maven failed.*Could not transfer"
    ):
        local.fetch_jars(quiet=True)
    assert not local.jars_dir().exists()
    assert list((tmp_path / "jars").iterdir()) == []


def test_a_completed_download_is_reused_without_running_maven(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "JARS_ROOT", tmp_path / "jars")
    script = (
        'for a in "$@"; do case "$a" in -DoutputDirectory=*) d="${a#-DoutputDirectory=}";; esac; done\n'
        'mkdir -p "$d" && touch "$d/kafka_2.13-4.1.1.jar"\n'
    )
    monkeypatch.setattr(local, "find_maven", lambda: _fake_mvn(tmp_path, script))
    first = local.fetch_jars(quiet=True)
    assert (first / "COMPLETE").is_file()

    def no_maven() -> str:
        raise AssertionError("Maven must not run again once the jars are complete")

    monkeypatch.setattr(local, "find_maven", no_maven)
    assert local.fetch_jars(quiet=True) == first


def test_a_folder_without_the_complete_marker_is_not_taken_for_the_jars(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "JARS_ROOT", tmp_path / "jars")
    local.jars_dir().mkdir(parents=True)
    (local.jars_dir() / "kafka_2.13-4.1.1.jar").touch()
    monkeypatch.setattr(local, "find_maven", lambda: _fake_mvn(tmp_path, "echo offline; exit 1\n"))
    with pytest.raises(LocalKafkaError, match="fetching the Kafka jars with Maven failed"):
        local.fetch_jars(quiet=True)


def test_three_nodes_replicate_three_times_and_need_two_in_sync_replicas(tmp_path: Path) -> None:
    cluster = LocalKafka.plan(tmp_path, nodes=3)
    props = cluster._properties(cluster.nodes[0])
    assert "default.replication.factor=3" in props
    assert "min.insync.replicas=2" in props
    assert "controller.quorum.voters=1@127.0.0.1:" in props
    assert "process.roles=broker,controller" in props


def test_a_single_node_sets_internal_topics_to_one_replica_and_no_rebalance_delay(tmp_path: Path) -> None:
    cluster = LocalKafka.plan(tmp_path, nodes=1)
    props = cluster._properties(cluster.nodes[0])
    for line in (
        "offsets.topic.replication.factor=1",
        "transaction.state.log.replication.factor=1",
        "share.coordinator.state.topic.replication.factor=1",
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=false",
    ):
        assert line in props
    assert all("0.0.0.0" not in line for line in props.splitlines()), "listeners must stay on loopback"


def test_only_one_or_three_nodes_can_be_planned(tmp_path: Path) -> None:
    with pytest.raises(LocalKafkaError, match="1 or 3 nodes"):
        LocalKafka.plan(tmp_path, nodes=2)


def test_a_cluster_id_never_starts_with_a_dash_that_the_storage_tool_would_read_as_an_option() -> None:
    """Regression: one id in 64 started with "-" and formatting failed with "expected one argument"."""
    ids = [local.new_cluster_id() for _ in range(2000)]
    assert not any(i.startswith("-") for i in ids)
    assert all(len(i) == 22 for i in ids)


def _formatted(folder: Path, nodes: int, marker: str | None) -> None:
    """A data folder as the storage tool leaves it, without the layout file (as before it existed)."""
    for node_id in range(1, nodes + 1):
        (folder / f"node-{node_id}" / "data").mkdir(parents=True)
        (folder / f"node-{node_id}" / "data" / "meta.properties").write_text("version=1\n")
        if marker is not None:
            (folder / f"node-{node_id}" / "security").write_text(marker + "\n")


def test_each_layout_has_a_data_folder_of_its_own_by_default() -> None:
    folders = {local.default_data_dir(n, secure=s) for n in (1, 3) for s in (True, False)}
    assert len(folders) == 4
    assert local.default_data_dir(1, secure=True) == Path(".run/kafka-1node-secure")
    assert local.default_data_dir(3, secure=False) == Path(".run/kafka-3node-plain")


@pytest.mark.parametrize(
    ("formatted", "marker", "wanted", "found_text"),
    [
        (1, "plaintext", local.Layout(3, secure=False), "single-node plaintext"),
        (3, "secure", local.Layout(1, secure=True), "3-node secured"),
        (1, "secure", local.Layout(1, secure=False), "single-node secured"),
        (1, "plaintext", local.Layout(1, secure=True), "single-node plaintext"),
        (1, None, local.Layout(1, secure=True), "single-node plaintext"),
    ],
    ids=[
        "single-node data asked for three nodes",
        "three-node data asked for one node",
        "secured data asked to start plain",
        "plain data asked to start secured",
        "a folder from before the security marker counts as plain",
    ],
)
def test_data_of_another_layout_stops_the_start_with_one_line_naming_the_fix(
    tmp_path: Path, formatted: int, marker: str | None, wanted: local.Layout, found_text: str
) -> None:
    _formatted(tmp_path, formatted, marker)
    with pytest.raises(LocalKafkaError) as raised:
        local.check_layout(tmp_path, wanted)
    message = str(raised.value)
    assert "\n" not in message
    assert f"holds a {found_text} cluster, not the {wanted.describe()} one" in message
    assert (
        f"fix: start it from its own folder ({local.default_data_dir(wanted.nodes, secure=wanted.secure)}"
        in message
    )


def test_data_of_the_same_layout_or_no_data_starts(tmp_path: Path) -> None:
    local.check_layout(tmp_path / "empty", local.Layout(3, secure=True))
    _formatted(tmp_path / "three", 3, "secure")
    local.check_layout(tmp_path / "three", local.Layout(3, secure=True))


def test_the_recorded_layout_is_what_a_folder_holds(tmp_path: Path) -> None:
    (tmp_path / local.LAYOUT_FILE).write_text('{"nodes": 3, "secure": true}\n')
    assert local.formatted_layout(tmp_path) == local.Layout(3, secure=True)
