"""What the hub tells /metrics about its RocksDB stores' memory: each kind summed over the open stores,
a store closed meanwhile counting nothing, and the property names RocksDB really answers (a store of
the hub's own options on disk, no Kafka)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
from faust.stores.rocksdb import RocksDBOptions
from prometheus_client import CollectorRegistry

from services.hub.app import HubSettings, rocksdb_options
from services.hub.metrics import HubMetrics
from services.hub.rocksdb_memory import LEVEL0, PINNED, PROPERTIES, StoresMemory, memory_of

pytestmark = pytest.mark.unit


class FakeStore:
    """A store that answers its properties from a dict (missing ones: None, as RocksDB's unknown)."""

    def __init__(self, values: Mapping[str, int]) -> None:
        self.values = values

    def property_int_value(self, name: str) -> int | None:
        return self.values.get(name)


class ClosedStore:
    def property_int_value(self, name: str) -> int | None:
        raise Exception("DB instance already closed")  # rocksdict's DbClosedError is an Exception


def store(memtables: int, block_cache: int, table_readers: int) -> FakeStore:
    return FakeStore(
        {
            PROPERTIES["memtables"]: memtables,
            PROPERTIES["block_cache"]: block_cache,
            PROPERTIES["table_readers"]: table_readers,
        }
    )


def test_each_kind_is_summed_over_every_open_store() -> None:
    memory = memory_of([store(2048, 87, 0), store(133_120, 1_045_615, 62_219), store(1, 2, 3)])
    assert memory == StoresMemory(
        {"memtables": 135_169, "block_cache": 1_045_704, "table_readers": 62_222}, read=3, unread=0
    )


def test_the_files_awaiting_compaction_are_summed_beside_the_bytes() -> None:
    memory = memory_of(
        [FakeStore({**store(1, 2, 3).values, LEVEL0: 4}), FakeStore({**store(1, 2, 3).values, LEVEL0: 3})]
    )
    assert (memory.level0_files, memory.by_kind["memtables"]) == (7, 2)


def test_the_blocks_in_use_are_summed_apart_from_the_kinds_they_are_part_of() -> None:
    pinned = FakeStore({**store(1, 500, 3).values, PINNED: 400})
    memory = memory_of([pinned, store(1, 100, 3)])
    assert (memory.by_kind["block_cache"], memory.pinned) == (600, 400)


def test_no_open_store_sums_to_zero_of_each_kind() -> None:
    assert memory_of([]) == StoresMemory(dict.fromkeys(PROPERTIES, 0), read=0, unread=0)


def test_a_store_closed_while_read_counts_nothing_and_the_others_still_count() -> None:
    memory = memory_of([store(10, 20, 30), ClosedStore(), store(1, 2, 3)])
    assert memory.by_kind == {"memtables": 11, "block_cache": 22, "table_readers": 33}
    assert (memory.read, memory.unread) == (2, 1)


def test_a_store_that_fails_on_its_last_property_counts_none_of_its_kinds() -> None:
    class FailsLast(FakeStore):
        def property_int_value(self, name: str) -> int | None:
            if name == PROPERTIES["table_readers"]:
                raise Exception("closed between two reads")
            return super().property_int_value(name)

    half = FailsLast(store(1000, 1000, 1000).values)
    assert memory_of([half, store(1, 2, 3)]).by_kind == {"memtables": 1, "block_cache": 2, "table_readers": 3}


def test_a_property_rocksdb_does_not_report_counts_zero() -> None:
    memory = memory_of([FakeStore({PROPERTIES["memtables"]: 5})])
    assert memory.by_kind == {"memtables": 5, "block_cache": 0, "table_readers": 0}
    assert memory.read == 1


def test_a_store_with_the_hub_s_options_reports_each_kind_and_its_memtables_grow_with_writes(
    tmp_path: Path,
) -> None:
    # faust's own opening of a store (rocksdict driver), with the options the hub gives each table.
    db = RocksDBOptions(**rocksdb_options(HubSettings()), use_rocksdict=True).open(tmp_path / "victims-0.db")
    try:
        empty = memory_of([db])
        for i in range(2000):
            db[i.to_bytes(8, "big")] = bytes(700)
        written = memory_of([db])
        assert empty.read == written.read == 1
        assert written.by_kind["memtables"] > empty.by_kind["memtables"]
        assert written.by_kind["block_cache"] > 0  # the cache's own entry, before any block is read
        db.flush()  # a file on disk: its index and filter blocks are held by its table reader
        assert memory_of([db]).by_kind["table_readers"] > 0
        # flushed to level 0, not compacted (an earlier flush of a full memtable may finish meanwhile)
        assert memory_of([db]).level0_files >= max(1, written.level0_files)
        idle = memory_of([db]).pinned  # the cache's own entry
        it = db.iter()  # an open iterator holds the block it stands on
        it.seek_to_first()
        assert memory_of([db]).pinned > idle
        del it
        assert memory_of([db]).pinned == idle
    finally:
        db.close()
    assert memory_of([db]) == StoresMemory(dict.fromkeys(PROPERTIES, 0), read=0, unread=1)


def test_a_sample_is_exported_by_kind_with_the_stores_it_read() -> None:
    registry = CollectorRegistry()
    metrics = HubMetrics(registry)
    metrics.set_rocksdb_memory(
        StoresMemory(
            {"memtables": 300, "block_cache": 200, "table_readers": 100},
            read=9,
            unread=1,
            pinned=50,
            level0_files=6,
        )
    )
    for kind, value in (("memtables", 300), ("block_cache", 200), ("table_readers", 100)):
        assert registry.get_sample_value("lianfang_hub_rocksdb_memory_bytes", {"kind": kind}) == value
    assert registry.get_sample_value("lianfang_hub_rocksdb_block_cache_pinned_bytes") == 50
    assert registry.get_sample_value("lianfang_hub_rocksdb_stores_open") == 9
    assert registry.get_sample_value("lianfang_hub_rocksdb_level0_files") == 6
