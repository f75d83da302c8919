"""The hub worker's local tables: kept for the Kafka cluster they came from, dropped on another."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.hub.app import HubSettings, forget_tables_of_another_cluster

pytestmark = pytest.mark.unit


def test_tables_are_kept_on_their_cluster_and_dropped_on_another(tmp_path: Path) -> None:
    settings = HubSettings(data_dir=tmp_path, worker_name="hub-1")
    table = tmp_path / "hub-1" / "tables" / "victims.db"
    assert not forget_tables_of_another_cluster(settings, "cluster-a")  # first start: nothing to drop
    table.parent.mkdir(parents=True)
    table.write_bytes(b"rocksdb")
    assert not forget_tables_of_another_cluster(settings, "cluster-a")
    assert table.exists()
    assert forget_tables_of_another_cluster(settings, "cluster-b")
    assert not table.exists()
    assert (tmp_path / "hub-1").is_dir()
    assert (tmp_path / "hub-1.cluster-id").read_text().strip() == "cluster-b"


def test_tables_of_an_unrecorded_cluster_are_dropped(tmp_path: Path) -> None:
    settings = HubSettings(data_dir=tmp_path, worker_name="hub-1")
    table = tmp_path / "hub-1" / "victims.db"
    table.parent.mkdir(parents=True)
    table.write_bytes(b"rocksdb")
    assert forget_tables_of_another_cluster(settings, "cluster-a")
    assert not table.exists()
