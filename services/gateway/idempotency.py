"""The gateway's durable memory of requests it accepted: (participant, key) → body digest and event id.

The key is the request's ``Idempotency-Key``, or, when it has none, its signature (so that a captured
request replayed within the signature's freshness window returns the first answer instead of making a
second event). SQLite in WAL mode with ``synchronous=FULL``, beside the outboxes.

The order makes a crash at any point safe: the event id is *reserved* (committed to disk) before the
event is sealed into the outbox, and marked *accepted* after. A retry that finds a reservation that
was never marked re-publishes under the reserved id: the outbox refuses a second copy of an id, so the
event exists once whether or not the first attempt reached the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Hashable
from dataclasses import dataclass
from pathlib import Path

from services.store import sqlite

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    participant TEXT NOT NULL,
    key         TEXT NOT NULL,
    digest      TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    accepted    INTEGER NOT NULL DEFAULT 0,
    created     REAL NOT NULL,
    PRIMARY KEY (participant, key)
);
CREATE INDEX IF NOT EXISTS requests_created ON requests (created);
"""


@dataclass(frozen=True, slots=True)
class Remembered:
    digest: str
    event_id: str
    accepted: bool


class IdempotencyStore:
    """Thread-safe; one gateway process per file (the gateway holds a lock on its spool folder)."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite.connect(path, schema=SCHEMA)
        # Writes of concurrent requests share one commit (one fsync); each returns once its own is on disk.
        self._commits = sqlite.GroupCommit(self._db, self._lock)
        # Lookups read a connection of their own: in WAL mode it sees every committed reservation
        # without waiting for the writer's lock, which a commit in flight holds through its fsync.
        # (A request holds its key's lock from lookup to answer, and its writes are committed before.)
        self._reads = sqlite.connect(path, schema=SCHEMA)
        self._reads_lock = threading.Lock()

    def lookup(self, participant: str, key: str) -> Remembered | None:
        with self._reads_lock:
            row = self._reads.execute(
                "SELECT digest, event_id, accepted FROM requests WHERE participant = ? AND key = ?",
                (participant, key),
            ).fetchone()
        return None if row is None else Remembered(row[0], row[1], bool(row[2]))

    def reserve(self, participant: str, key: str, digest: str, event_id: str) -> Remembered:
        """Remember the id for this key (durably) unless the key is taken; return what is remembered."""
        now = time.time()

        def insert(db: sqlite3.Connection) -> tuple[str, str, int]:
            db.execute(
                "INSERT OR IGNORE INTO requests (participant, key, digest, event_id, accepted, created)"
                " VALUES (?, ?, ?, ?, 0, ?)",
                (participant, key, digest, event_id, now),
            )
            row: tuple[str, str, int] = db.execute(
                "SELECT digest, event_id, accepted FROM requests WHERE participant = ? AND key = ?",
                (participant, key),
            ).fetchone()
            return row

        remembered = self._commits.run(insert)
        return Remembered(remembered[0], remembered[1], bool(remembered[2]))

    def release(self, participant: str, key: str, event_id: str) -> None:
        """Forget a reservation whose event never reached the outbox (its request was refused)."""
        self._commits.run(
            lambda db: db.execute(
                "DELETE FROM requests WHERE participant = ? AND key = ? AND event_id = ? AND accepted = 0",
                (participant, key, event_id),
            )
        )

    def mark_accepted(self, participant: str, key: str) -> None:
        self._commits.run(
            lambda db: db.execute(
                "UPDATE requests SET accepted = 1 WHERE participant = ? AND key = ?", (participant, key)
            )
        )

    def prune(
        self, *, keys_older_than_s: float, signatures_older_than_s: float, now: float | None = None
    ) -> int:
        """Forget Idempotency-Keys older than the first age (a retry after that makes a new event) and
        signatures older than the second (by then the gateway refuses them as stale anyway)."""
        at = now if now is not None else time.time()
        with self._lock:
            keys = self._db.execute(
                "DELETE FROM requests WHERE key LIKE 'key:%' AND created < ?", (at - keys_older_than_s,)
            ).rowcount
            signatures = self._db.execute(
                "DELETE FROM requests WHERE key LIKE 'sig:%' AND created < ?", (at - signatures_older_than_s,)
            ).rowcount
        return int(keys + signatures)

    def close(self) -> None:
        with self._lock:
            self._db.close()
        with self._reads_lock:
            self._reads.close()


class KeyedLocks:
    """One asyncio lock per key, dropped when nobody holds or waits for it: concurrent requests with
    the same idempotency key run one after the other, so the second sees the first one's answer."""

    def __init__(self) -> None:
        self._locks: dict[Hashable, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)
