"""The console's memory across restarts: the inbox records as they came (still sealed and signed) and
the ids of the events the console published itself.

The SDK commits an inbox offset once the console asks for the next record, so a record is written here
before that; at start the console verifies and opens every stored record again, with the coordinators'
keys, to rebuild its :class:`~services.console.view.CaseView`. Case content is thus never at rest in
clear: the file holds what the bus holds. Writes are idempotent by event id.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, get_args

from services.console.view import OwnAction, OwnKind
from services.store import sqlite

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS records (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id  TEXT NOT NULL UNIQUE,
    value     BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS own_actions (
    event_id  TEXT PRIMARY KEY,
    kind      TEXT NOT NULL,
    alert_id  TEXT NOT NULL,
    subject   TEXT NOT NULL,
    at        TEXT NOT NULL,
    user      TEXT NOT NULL
);
"""


class ViewStore:
    """One SQLite file in the console's data folder. Thread-safe."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite.connect(path, schema=SCHEMA, private=True)
        # The inbox reader and the coordinators' requests write at once: concurrent writes share one
        # commit (one fsync); each call still returns only once its own row is on disk.
        self._commits = sqlite.GroupCommit(self._db, self._lock)

    @property
    def commits(self) -> int:
        """Transactions that committed writes (several concurrent writes share one)."""
        return self._commits.commits

    def add_record(self, event_id: str, value: bytes) -> bool:
        """Keep an inbox record; False when one with this id is already kept."""

        def insert(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                "INSERT OR IGNORE INTO records (event_id, value) VALUES (?, ?)", (event_id, value)
            )
            return cursor.rowcount == 1

        return self._commits.run(insert)

    def records(self) -> Iterator[bytes]:
        """Every kept record, in the order it arrived."""
        with self._lock:
            rows = self._db.execute("SELECT value FROM records ORDER BY seq").fetchall()
        for (value,) in rows:
            yield bytes(value)

    def add_own(self, action: OwnAction) -> None:
        row = (
            action.event_id,
            action.kind,
            action.alert_id,
            action.subject,
            action.at.astimezone(UTC).isoformat(),
            action.user,
        )

        def insert(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT OR IGNORE INTO own_actions (event_id, kind, alert_id, subject, at, user)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                row,
            )

        self._commits.run(insert)

    def own_actions(self) -> list[OwnAction]:
        with self._lock:
            rows = self._db.execute(
                "SELECT event_id, kind, alert_id, subject, at, user FROM own_actions ORDER BY at"
            ).fetchall()
        kinds: tuple[OwnKind, ...] = get_args(OwnKind)
        return [
            OwnAction(
                event_id=r[0],
                kind=next(k for k in kinds if k == r[1]),
                alert_id=r[2],
                subject=r[3],
                at=datetime.fromisoformat(r[4]),
                user=r[5],
            )
            for r in rows
            if r[1] in kinds
        ]

    def close(self) -> None:
        with self._lock:
            self._db.close()
