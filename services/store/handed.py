"""The event ids an inbox reader's caller has finished, so that it hands each event out once.

The router delivers each event id once, but a reader can still meet an id twice: Kafka re-delivers
what was finished but not yet committed when the reader died, and a copy of an event can reach an
inbox twice at different offsets. An id is written once the caller is done with the event (the SDK's
caller asks for the next, a webhook's receiver answers 2xx), so an event in hand at a crash is handed
out again; the gateway's inbox writes it when it first returns the event (its client's cursor is the
client's own commit, and an older cursor gets the same page again). Every inbox reader (the SDK's, the
gateway's inbox and webhooks) keeps one of these stores beside its other state: the id, where it was
first read (partition and offset) and when. An id is forgotten once it is older than the router's
replay window (plus its allowed clock skew): the router refuses an event that old, so no new copy of it
can arrive.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Final

from services.store import sqlite as store

__all__ = ["KEEP", "HandedOut"]

KEEP: Final = timedelta(days=7, minutes=5)
"""The router's replay window and its allowed clock skew (``services.kernel.envelope.ReplayWindow``)."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS handed (
    event_id  TEXT PRIMARY KEY,
    partition INTEGER NOT NULL,
    "offset"  INTEGER NOT NULL,
    at        REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS handed_at ON handed (at);
"""

PRUNE_EVERY_S: Final = 3600.0


class HandedOut:
    """Thread-safe; one reader per file. ``path=None`` keeps the ids in memory (tests).

    Lookups read a connection of their own (the file is in WAL mode): a lookup does not wait for a
    write in flight in another thread (its commit's fsync), and sees every write committed before it."""

    def __init__(
        self,
        path: Path | None,
        *,
        keep: timedelta = KEEP,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._lock = threading.Lock()
        self._db = store.connect(path, schema=SCHEMA)
        self._read_lock = self._lock if path is None else threading.Lock()
        self._reads = self._db if path is None else store.connect(path, schema=SCHEMA)
        self.keep_s = keep.total_seconds()
        self._now = now
        self._pruned = 0.0
        self.prune()

    def first(self, event_id: str) -> tuple[int, int] | None:
        """Where the event was first finished (partition, offset), or None if it never was."""
        with self._read_lock:  # every row fetched: no statement left open to hold an old snapshot
            rows = self._reads.execute(
                'SELECT partition, "offset" FROM handed WHERE event_id = ?', (event_id,)
            ).fetchall()
        return (int(rows[0][0]), int(rows[0][1])) if rows else None

    def remember(self, event_id: str, partition: int, offset: int) -> bool:
        """Record that the caller finished the event read at ``partition``/``offset`` (on disk when this
        returns); False when its id was finished before (the first place is kept)."""
        now = self._now()
        if now - self._pruned > PRUNE_EVERY_S:
            self.prune()
        with store.transaction(self._db, self._lock) as tx:
            cursor = tx.execute(
                'INSERT OR IGNORE INTO handed (event_id, partition, "offset", at) VALUES (?, ?, ?, ?)',
                (event_id, partition, offset, now),
            )
            return cursor.rowcount == 1

    def reported(self, partition: int, offset: int) -> bool:
        """Whether a problem record about the record at ``partition``/``offset`` was written already."""
        return self.first(_problem_key(partition, offset)) is not None

    def remember_reported(self, partition: int, offset: int) -> None:
        """Record that the problem record about the record at ``partition``/``offset`` is written."""
        self.remember(_problem_key(partition, offset), partition, offset)

    def prune(self) -> int:
        """Forget ids handed out longer ago than ``keep``; returns how many."""
        now = self._now()
        self._pruned = now
        with store.transaction(self._db, self._lock) as tx:
            return tx.execute("DELETE FROM handed WHERE at < ?", (now - self.keep_s,)).rowcount

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM handed").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
        if self._reads is not self._db:
            with self._read_lock:
                self._reads.close()


def _problem_key(partition: int, offset: int) -> str:
    """Problem records are remembered beside event ids; no event id starts with ``@``."""
    return f"@{partition}:{offset}"
