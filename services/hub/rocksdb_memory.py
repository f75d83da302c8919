"""What the hub's RocksDB stores hold in memory, as RocksDB counts it, for
``lianfang_hub_rocksdb_memory_bytes``: pure, over any object that reads RocksDB's integer properties (a
rocksdict ``Rdict``; a fake in the unit tests).

Each store (one partition of one table) reports, by kind:

- ``memtables``: what was written and not yet flushed to a file, with the memtables being flushed or
  kept pinned (``rocksdb.size-all-mem-tables``). It grows in blocks of an eighth of the write buffer
  and falls at each flush: at most two write buffers a store (:func:`services.hub.app.rocksdb_options`).
- ``block_cache``: blocks of the files read back (``rocksdb.block-cache-usage``), up to the cache's
  capacity. Each store has a cache of its own (faust makes one a store), so the sum counts none twice.
- ``table_readers``: the index and filter blocks of the store's files, held outside the block cache
  (``rocksdb.estimate-table-readers-mem``): a few bytes a key, with no bound but the keys.

Nothing read here is personal data: byte counts and a file count a store.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

Kind = Literal["memtables", "block_cache", "table_readers"]

PROPERTIES: Mapping[Kind, str] = {
    "memtables": "rocksdb.size-all-mem-tables",
    "block_cache": "rocksdb.block-cache-usage",
    "table_readers": "rocksdb.estimate-table-readers-mem",
}
"""Each kind's RocksDB property, in bytes."""

PINNED = "rocksdb.block-cache-pinned-usage"
"""Of ``block_cache``, the blocks in use (a read in flight or an open iterator holds them), which the
cache cannot evict: only they can take a cache past its capacity. Counted apart, not as a kind: it is
part of ``block_cache`` already."""


LEVEL0 = "rocksdb.num-files-at-level0"
"""Files flushed to level 0 and not yet compacted. In one measurement RocksDB kept a few hundred KiB
for each such file that none of the properties above counts, and gave it back at compaction (one store
alone, on jemalloc: 55.0 MiB of live allocations beyond the kinds with 0 - 2 such files, 60.3 with 14,
55.2 after compaction; docs/faults.md, run Y). In the hub under the soak, the memory outside the
kinds did not follow this count (run Z). Counted apart, beside the bytes."""


class Store(Protocol):
    """A RocksDB database that reads its own integer properties, as ``rocksdict.Rdict`` does."""

    def property_int_value(self, name: str) -> int | None: ...


@dataclass(frozen=True)
class StoresMemory:
    """The memory of a worker's stores, summed by kind; ``read`` stores counted, ``unread`` ones that
    raised (closed meanwhile: a store faust let go of in a rebalance) and counted nothing."""

    by_kind: Mapping[Kind, int]
    read: int
    unread: int
    pinned: int = 0  # of by_kind["block_cache"], the blocks in use (PINNED)
    level0_files: int = 0  # files awaiting compaction (LEVEL0), summed over the stores read


def memory_of(stores: Iterable[Store]) -> StoresMemory:
    """Sum each kind over ``stores``. A store counts all its kinds or none: one that raises on any of
    them counts as unread (rocksdict raises its ``DbClosedError`` for a closed database, a bare
    ``Exception`` for RocksDB's own errors, so any ``Exception``). A property RocksDB does not report
    (``None``) counts 0."""
    totals: dict[Kind, int] = dict.fromkeys(PROPERTIES, 0)
    read = unread = pinned = level0 = 0
    for store in stores:
        try:
            values = {kind: store.property_int_value(name) or 0 for kind, name in PROPERTIES.items()}
            in_use = store.property_int_value(PINNED) or 0
            files = store.property_int_value(LEVEL0) or 0
        except Exception:
            unread += 1
            continue
        read += 1
        pinned += in_use
        level0 += files
        for kind, value in values.items():
            totals[kind] += value
    return StoresMemory(totals, read, unread, pinned, level0)
