"""The one way a SQLite store is opened and written."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest

from services.store import sqlite

pytestmark = pytest.mark.unit

SCHEMA = "CREATE TABLE IF NOT EXISTS t (x INTEGER);"


def test_a_store_is_opened_in_wal_mode_with_full_sync(tmp_path: Path) -> None:
    db = sqlite.connect(tmp_path / "new" / "s.sqlite", schema=SCHEMA)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    db.close()


def test_a_private_store_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "private" / "s.sqlite"
    sqlite.connect(path, schema=SCHEMA, private=True).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0


def test_a_transaction_that_raises_is_rolled_back_and_one_that_ends_is_committed(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    db = sqlite.connect(path, schema=SCHEMA)
    lock = threading.Lock()
    with pytest.raises(KeyError), sqlite.transaction(db, lock) as tx:
        tx.execute("INSERT INTO t VALUES (1)")
        raise KeyError("boom")
    with sqlite.transaction(db, lock) as tx:
        tx.execute("INSERT INTO t VALUES (2)")
    db.close()
    again = sqlite.connect(path, schema=SCHEMA)
    assert again.execute("SELECT x FROM t").fetchall() == [(2,)]
    assert not lock.locked()
    again.close()


def test_an_in_memory_store_starts_as_a_copy_and_leaves_the_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with sqlite.transaction(db := sqlite.connect(path, schema=SCHEMA), threading.Lock()) as tx:
        tx.execute("INSERT INTO t VALUES (1)")
    db.close()
    copy = sqlite.connect(None, schema=SCHEMA, copy_of=path)
    copy.execute("INSERT INTO t VALUES (2)")
    assert copy.execute("SELECT x FROM t ORDER BY x").fetchall() == [(1,), (2,)]
    copy.close()
    original = sqlite.connect(path, schema=SCHEMA)
    assert original.execute("SELECT x FROM t").fetchall() == [(1,)]
    original.close()
