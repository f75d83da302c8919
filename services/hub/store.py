"""The hub's RocksDB store: faust's own, opened so that a store reopened keeps the options it is given.

rocksdict (0.3.29, the driver faust uses here) opening a database that already exists reads its column
families' options back from the database's files, and a block cache is not among what those files
can hold: a store reopened after a restart got RocksDB's default cache, 8 MiB, instead of the hub's
(``rocksdb_block_cache_mb``, 256 KiB), nine stores 72 MiB where ``rocksdb_memory_bound`` counts 2.25.
A restarted hub's memory grew with it for as long as it ran (docs/faults.md, run U). Naming the default
column family with the options given keeps them. faust chooses a store by its URL's scheme;
:func:`register` adds :data:`SCHEME` for :class:`Store`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import rocksdict
from faust import stores
from faust.stores import rocksdb

__all__ = ["SCHEME", "HubRocksDBOptions", "Store", "register"]

SCHEME = "lianfang-rocksdb"
"""The store URL scheme of the hub's tables (``lianfang-rocksdb://``)."""


class HubRocksDBOptions(rocksdb.RocksDBOptions):
    """faust's RocksDB options, whose :meth:`open` hands them to the default column family as well."""

    def open(self, path: Path, *, read_only: bool = False) -> Any:
        if not self.use_rocksdict:  # python-rocksdb, which faust can use instead, keeps them
            return super().open(path, read_only=read_only)
        options = self.as_options()
        access = (
            rocksdict.AccessType.read_write() if self.ttl is None else rocksdict.AccessType.with_ttl(self.ttl)
        )
        db = rocksdict.Rdict(
            str(path), options=options, column_families={"default": options}, access_type=access
        )
        db.set_read_options(rocksdict.ReadOptions())
        return db


class Store(rocksdb.Store):
    """faust's RocksDB store of a table (a database a partition), opened by :class:`HubRocksDBOptions`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rocksdb_options = HubRocksDBOptions(**(self.options or {}), use_rocksdict=self.use_rocksdict)


def register() -> str:
    """Make :data:`SCHEME` name :class:`Store` for faust (once is enough; again does nothing); the URL
    of a store of that kind."""
    stores.STORES.aliases[SCHEME] = f"{__name__}:Store"
    return f"{SCHEME}://"
