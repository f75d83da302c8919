"""The gateway's durable memory of requests it accepted: (participant, key) → body digest and event id.

The key is the request's ``Idempotency-Key``, or, when it has none, its signature (so that a captured
request replayed within the signature's freshness window returns the first answer instead of making a
second event). SQLite in WAL mode with ``synchronous=FULL``, beside the outboxes.

The order makes a crash at any point safe: the event id is *reserved* (committed to disk) before the
event is sealed into the outbox, and marked *accepted* after. A retry that finds a reservation that
was never marked re-publishes under the reserved id: the outbox refuses a second copy of an id, so the
event exists once whether or not the first attempt reached the outbox.

Several gateway processes (``LIANFANG_GATEWAY_PROCESSES``) share one store, and each reservation
records the *slot* (the process) whose outbox the event goes to. Only that slot may complete it: an
outbox refuses a second copy of its own ids, not another outbox's, so another slot answers 409
``in_progress``. :meth:`IdempotencyStore.adopt` hands the reservations of slots that no longer run to
slot 0, which drains their spools.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from services.store import sqlite

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    participant TEXT NOT NULL,
    key         TEXT NOT NULL,
    digest      TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    accepted    INTEGER NOT NULL DEFAULT 0,
    created     REAL NOT NULL,
    slot        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (participant, key)
);
CREATE INDEX IF NOT EXISTS requests_created ON requests (created);
"""
_ADD_SLOT = "ALTER TABLE requests ADD COLUMN slot INTEGER NOT NULL DEFAULT 0"
"""A store written before there were slots: its every reservation is slot 0's (one process's, whose
spool is slot 0's)."""
BUSY_TIMEOUT_MS: Final = 10_000
"""How long a write waits for another gateway process's transaction on the store (each is one
group commit: milliseconds)."""


@dataclass(frozen=True, slots=True)
class Remembered:
    digest: str
    event_id: str
    accepted: bool
    slot: int = 0


class IdempotencyStore:
    """Thread-safe, and shared by the processes of one gateway (SQLite's WAL across processes on one
    machine): ``slot`` is this process's."""

    def __init__(self, path: Path, *, slot: int = 0) -> None:
        self.slot = slot
        self._lock = threading.Lock()
        self._db = _connect(path)
        # Writes of concurrent requests share one commit (one fsync); each returns once its own is on disk.
        self._commits = sqlite.GroupCommit(self._db, self._lock)
        # Lookups read a connection of their own: in WAL mode it sees every committed reservation
        # without waiting for the writer's lock, which a commit in flight holds through its fsync.
        # (A request holds its key's lock from lookup to answer, and its writes are committed before.)
        self._reads = _connect(path)
        self._reads_lock = threading.Lock()

    def lookup(self, participant: str, key: str) -> Remembered | None:
        with self._reads_lock:
            row = self._reads.execute(_SELECT, (participant, key)).fetchone()
        return None if row is None else Remembered(row[0], row[1], bool(row[2]), row[3])

    def reserve(self, participant: str, key: str, digest: str, event_id: str) -> Remembered:
        """Remember the id for this key (durably) as this slot's, unless the key is taken (by this
        process or another); return what is remembered."""
        now = time.time()

        def insert(db: sqlite3.Connection) -> tuple[str, str, int, int]:
            db.execute(
                "INSERT OR IGNORE INTO requests (participant, key, digest, event_id, accepted, created, slot)"
                " VALUES (?, ?, ?, ?, 0, ?, ?)",
                (participant, key, digest, event_id, now, self.slot),
            )
            row: tuple[str, str, int, int] = db.execute(_SELECT, (participant, key)).fetchone()
            return row

        remembered = self._commits.run(insert)
        return Remembered(remembered[0], remembered[1], bool(remembered[2]), remembered[3])

    def adopt(self, running: int, *, sent: Callable[[int, str, str], bool | None]) -> Adopted:
        """Slot 0's work when the gateway starts with ``running`` processes: the reservations not yet
        accepted of every slot from ``running`` up (a gateway that ran more processes before) become
        slot 0's, so a retry completes them here, and slot 0 drains those slots' outboxes. One whose
        event is in its slot's outbox already (``sent(slot, participant, event_id)``: the crash came
        between the outbox and the mark) is marked accepted instead: re-published into slot 0's
        outbox, it would be sent twice. One ``sent`` cannot tell (None: its participant is not served
        now, its outbox not opened) is left as it is."""

        def move(db: sqlite3.Connection) -> Adopted:
            rows = db.execute(
                "SELECT participant, key, event_id, slot FROM requests WHERE accepted = 0 AND slot >= ?",
                (running,),
            ).fetchall()
            accepted = moved = 0
            for participant, key, event_id, slot in rows:
                known = sent(slot, participant, event_id)
                if known is None:
                    continue
                if known:
                    db.execute(
                        "UPDATE requests SET accepted = 1 WHERE participant = ? AND key = ?",
                        (participant, key),
                    )
                    accepted += 1
                else:
                    db.execute(
                        "UPDATE requests SET slot = 0 WHERE participant = ? AND key = ?", (participant, key)
                    )
                    moved += 1
            return Adopted(accepted=accepted, moved=moved)

        return self._commits.run(move)

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


@dataclass(frozen=True, slots=True)
class Adopted:
    """What :meth:`IdempotencyStore.adopt` did with the reservations of slots no longer running."""

    accepted: int  # found in their slot's outbox: marked accepted
    moved: int  # not there: slot 0's now, for the retry to complete


_SELECT: Final = "SELECT digest, event_id, accepted, slot FROM requests WHERE participant = ? AND key = ?"


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite.connect(path, schema=SCHEMA)
    db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    if not _has_slot(db):
        with contextlib.suppress(sqlite3.OperationalError):  # another process added it meanwhile?
            db.execute(_ADD_SLOT)
        if not _has_slot(db):
            db.close()
            raise sqlite3.OperationalError(f"{path} lacks the slot column and it could not be added")
    return db


def _has_slot(db: sqlite3.Connection) -> bool:
    return "slot" in {row[1] for row in db.execute("PRAGMA table_info(requests)")}


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
