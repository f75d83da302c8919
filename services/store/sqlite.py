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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["connect", "transaction"]


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
