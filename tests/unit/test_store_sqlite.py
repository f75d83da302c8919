"""The one way a SQLite store is opened and written."""

from __future__ import annotations

import sqlite3
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from services.store import sqlite
from tests.kit import until

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


# --------------------------------------------------------------------------- group commit


def _group_of_waiting_calls(
    tmp_path: Path, works: list[Callable[[sqlite3.Connection], object]]
) -> tuple[sqlite.GroupCommit, sqlite3.Connection, list[object]]:
    """A first call holds its commit open until every call of ``works`` is queued behind it; the
    outcomes (results or exceptions) of ``works`` in order."""
    db = sqlite.connect(tmp_path / "g.sqlite", schema=SCHEMA)
    commits = sqlite.GroupCommit(db, threading.RLock())
    started, release = threading.Event(), threading.Event()

    def first(tx: sqlite3.Connection) -> None:
        tx.execute("INSERT INTO t VALUES (0)")
        started.set()
        release.wait(10)

    outcomes: list[object] = [None] * len(works)

    def call(i: int) -> None:
        try:
            outcomes[i] = commits.run(works[i])
        except Exception as e:
            outcomes[i] = e

    leader = threading.Thread(target=commits.run, args=(first,))
    leader.start()
    until(started.is_set, "the first call leading a commit")
    others = [threading.Thread(target=call, args=(i,)) for i in range(len(works))]
    for t in others:
        t.start()
    until(lambda: commits.queued == len(works), "every call queued behind the first commit")
    release.set()
    for t in [leader, *others]:
        t.join(10)
    return commits, db, outcomes


def test_calls_queued_while_a_commit_is_in_flight_share_the_next_commit_and_each_gets_its_result(
    tmp_path: Path,
) -> None:
    def insert(x: int) -> Callable[[sqlite3.Connection], object]:
        return lambda tx: tx.execute("INSERT INTO t VALUES (?)", (x,)).rowcount

    commits, db, outcomes = _group_of_waiting_calls(tmp_path, [insert(x) for x in range(1, 8)])
    assert commits.commits == 2, "one commit for the first call, one for the seven queued behind it"
    assert outcomes == [1] * 7
    assert sorted(r[0] for r in db.execute("SELECT x FROM t")) == list(range(8))


def test_a_call_that_raises_in_a_shared_commit_undoes_its_own_work_alone(tmp_path: Path) -> None:
    def insert(x: int) -> Callable[[sqlite3.Connection], object]:
        return lambda tx: tx.execute("INSERT INTO t VALUES (?)", (x,)).rowcount

    def half_then_fail(tx: sqlite3.Connection) -> object:
        tx.execute("INSERT INTO t VALUES (99)")
        raise ValueError("this caller's data is wrong")

    commits, db, outcomes = _group_of_waiting_calls(tmp_path, [insert(1), half_then_fail, insert(2)])
    assert commits.commits == 2
    assert (outcomes[0], outcomes[2]) == (1, 1)
    assert isinstance(outcomes[1], ValueError)
    assert sorted(r[0] for r in db.execute("SELECT x FROM t")) == [0, 1, 2], "99 was rolled back alone"


def test_a_call_on_a_quiet_store_commits_at_once_in_its_own_transaction(tmp_path: Path) -> None:
    db = sqlite.connect(tmp_path / "q.sqlite", schema=SCHEMA)
    commits = sqlite.GroupCommit(db, threading.Lock())
    assert commits.run(lambda tx: tx.execute("INSERT INTO t VALUES (5)").rowcount) == 1
    assert commits.commits == 1
    other = sqlite3.connect(tmp_path / "q.sqlite")  # another connection sees it: committed
    assert other.execute("SELECT x FROM t").fetchall() == [(5,)]
    other.close()
