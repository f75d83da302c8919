"""The hub's RocksDB store keeps its options when a store is reopened (a restarted hub's), which
faust's own opening through rocksdict does not."""

from __future__ import annotations

from pathlib import Path

import pytest
from faust import stores
from faust.stores.rocksdb import RocksDBOptions

from services.hub import store
from services.hub.app import HubSettings, rocksdb_options

pytestmark = pytest.mark.unit

CAPACITY = "rocksdb.block-cache-capacity"


def _capacity_on_each_opening(options: RocksDBOptions, path: Path, times: int = 3) -> list[int | None]:
    seen = []
    for i in range(times):
        db = options.open(path)
        try:
            seen.append(db.property_int_value(CAPACITY))
            db[i.to_bytes(8, "big")] = bytes(100)
        finally:
            db.close()
    return seen


def test_a_store_reopened_keeps_the_hubs_block_cache(tmp_path: Path) -> None:
    wanted = int(HubSettings().rocksdb_block_cache_mb * 2**20)
    hub = store.HubRocksDBOptions(**rocksdb_options(HubSettings()), use_rocksdict=True)
    assert _capacity_on_each_opening(hub, tmp_path / "hub-0.db") == [wanted] * 3


def test_faust_s_own_opening_loses_the_block_cache_when_it_reopens_a_store(tmp_path: Path) -> None:
    # Why the hub has a store of its own: if rocksdict ever keeps the cache, this fails, and the
    # hub's store can go.
    faust_s = RocksDBOptions(**rocksdb_options(HubSettings()), use_rocksdict=True)
    first, *again = _capacity_on_each_opening(faust_s, tmp_path / "faust-0.db")
    assert first == int(HubSettings().rocksdb_block_cache_mb * 2**20)
    assert all(capacity != first for capacity in again)


def test_the_hubs_store_url_names_its_store_for_faust() -> None:
    url = store.register()
    assert stores.by_url(url) is store.Store
    assert store.register() == url  # registering again changes nothing
