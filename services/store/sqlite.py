"""How every SQLite store of Lianfang is opened and written: one place for the durability settings.

The SDK outbox, the gateway's idempotency keys, the console's accounts, audit log and views and the
importers' ledger each keep one SQLite file. All of them open it the same way: autocommit (we say
``BEGIN IMMEDIATE`` ourselves), usable from the threads that hold the store's lock, WAL so readers do
not block the writer, and ``synchronous=FULL`` so that a committed transaction survives a power cut,
not only a crash of the process. This is an I/O edge, so it lives outside the pure kernel.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

__all__ = ["GroupCommit", "connect", "transaction"]

T = TypeVar("T")


def connect(
    path: Path | None, *, schema: str, private: bool = False, copy_of: Path | None = None
) -> sqlite3.Connection:
    """Open (creating if needed) the store at ``path`` and apply ``schema`` (``CREATE ... IF NOT EXISTS``).

    ``private`` makes the folder 0700 and the file 0600 before SQLite first writes it (the console's
    files hold password hashes, sessions and personal data). ``path=None`` keeps the store in memory,
    starting as a copy of the file ``copy_of`` when given (opened read-only, never changed).
    """
    if path is not None:
        if private:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not path.exists():  # created private before SQLite opens it
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(":memory:" if path is None else path, check_same_thread=False, isolation_level=None)
    try:
        if copy_of is not None:
            source = sqlite3.connect(f"{copy_of.resolve().as_uri()}?mode=ro", uri=True)
            try:
                source.backup(db)
            finally:
                source.close()
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(schema)
    except BaseException:
        db.close()
        raise
    return db


@contextlib.contextmanager
def transaction(
    db: sqlite3.Connection, lock: contextlib.AbstractContextManager[Any]
) -> Iterator[sqlite3.Connection]:
    """Hold ``lock`` and run the block in one ``BEGIN IMMEDIATE`` transaction: committed when the block
    ends, rolled back if it raises (the exception goes on)."""
    with lock:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


@dataclass(eq=False)
class _Work(Generic[T]):
    run: Callable[[sqlite3.Connection], T]
    done: bool = False
    result: T | None = None
    error: BaseException | None = None


class GroupCommit:
    """Group commit for one store: every call's work runs in a savepoint of one shared transaction, and
    one ``COMMIT`` (one fsync of the WAL under ``synchronous=FULL``) covers every call queued while the
    previous commit was in flight. A call returns only once the commit that holds its own work is on
    disk, with its own result or its own exception; a failing call rolls back its savepoint alone.

    There is no writer thread: the first caller to find no commit in flight leads one, taking the whole
    queue, and hands the lead to a waiting caller when it is done (so a leader is never kept serving
    others). Under no contention this is one transaction per call, as :func:`transaction`.
    """

    def __init__(self, db: sqlite3.Connection, lock: contextlib.AbstractContextManager[Any]) -> None:
        self._db = db
        self._lock = lock  # the store's lock: held for the whole transaction, as transaction() does
        self._queue: list[_Work[Any]] = []
        self._cond = threading.Condition()
        self._leading = False
        self.commits = 0  # transactions committed (for tests and benchmarks: calls per commit)

    @property
    def queued(self) -> int:
        """Calls waiting for the next commit."""
        with self._cond:
            return len(self._queue)

    def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work(db)`` inside a transaction shared with concurrent callers; its result once durable."""
        item: _Work[T] = _Work(work)
        with self._cond:
            self._queue.append(item)
            while not item.done:
                if self._leading:
                    self._cond.wait()
                    continue
                self._leading = True
                batch, self._queue = self._queue, []
                self._cond.release()
                try:
                    self._commit(batch)
                finally:
                    self._cond.acquire()
                    self._leading = False
                    self._cond.notify_all()
        if item.error is not None:
            raise item.error
        return item.result  # type: ignore[return-value]  # set when no error

    def _commit(self, batch: list[_Work[Any]]) -> None:
        """One transaction for ``batch``; marks each item done (with its result or error) after COMMIT."""
        try:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    for item in batch:
                        self._db.execute("SAVEPOINT work")
                        try:
                            item.result = item.run(self._db)
                        except Exception as e:  # this caller's fault or its data's: undo its work alone
                            self._db.execute("ROLLBACK TO work")
                            item.error = e
                        self._db.execute("RELEASE work")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
                self.commits += 1
        except BaseException as e:  # the transaction itself failed: nothing of the batch is on disk
            for item in batch:
                item.result, item.error = None, e
        for item in batch:
            item.done = True
