"""The import ledger: which rows a participant has imported, so that importing a file again (or a later
export that repeats rows) publishes nothing twice.

One SQLite file per participant, ``<home>/imports/<participant>.sqlite`` (WAL, ``synchronous=FULL``).
An entry is keyed by a keyed digest of (participant, format, emit, the row's identity) — the identity
being the format's key columns (工单编号, 警情编号, 案号) or else the row's whole mapped content — and
holds the event id published for it and a digest of the row's content (to tell "changed since it was
imported"). It holds no personal data: the digests are HMAC-SHA256 under a random secret kept in the
ledger, so a guessable identity (a case number) cannot be confirmed from the file or from the bus.

Each row's event id is derived from the same keyed digest (a UUIDv8), so it is the same every time the
row is imported. That is what makes the write order crash-safe:

1. look the row up in the ledger; found: skip it;
2. publish with the derived event id — the SDK seals the event and commits it to its outbox;
   if the outbox already holds (or has sent) that id, it refuses with ``ConflictError``: a previous
   run published the row and stopped before step 3, so the row is counted as already imported;
3. record the row in the ledger (committed in batches; a crash loses at most the last batch, which
   step 2 recognizes on the next run).

An import does steps 2 and 3 a batch of rows at a time (:mod:`services.importers.engine`): every event
of the batch is sealed, the outbox stores them all with one commit, and only then are they recorded
here and this ledger committed; a crash in between is the case of step 2.

What is left: the ledger and the outbox are two files, not one transaction, and the recognition in
step 2 needs the outbox's memory of sent ids (its ``sent`` table, kept indefinitely). If the ledger
file is lost, its secret goes with it and rows get new ids: they are published again. If the outbox
file is lost between a crash and the re-run, the re-published copy has the old id but other bytes
(sealing is randomized), and the router's replay window refuses it as a replay for as long as that
window lasts (7 days by default). Keep ``<home>/imports`` and ``<home>/outbox`` together.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from services.kernel.errors import TransportError
from services.store import sqlite

SECRET_BYTES: Final = 32
COMMIT_EVERY: Final = 200
COMMIT_SECONDS: Final = 2.0

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (
    name   TEXT PRIMARY KEY,
    value  BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS imported (
    key          TEXT PRIMARY KEY,
    event_id     TEXT NOT NULL UNIQUE,
    content      TEXT NOT NULL,
    format       TEXT NOT NULL,
    emit         TEXT NOT NULL,
    event_type   TEXT NOT NULL,
    file         TEXT NOT NULL,
    line         INTEGER NOT NULL,
    imported_at  REAL NOT NULL,
    recovered    INTEGER NOT NULL DEFAULT 0
);
"""


@dataclass(frozen=True, slots=True)
class Entry:
    key: str
    event_id: str
    content: str
    file: str
    line: int
    recovered: bool


def ledger_path(home: Path, participant: str) -> Path:
    return home / "imports" / f"{participant}.sqlite"


class Ledger:
    """One participant's import ledger. Not thread-safe; one import at a time per process."""

    def __init__(self, path: Path | None, *, participant: str, copy_of: Path | None = None) -> None:
        """``path=None`` keeps the ledger in memory: empty, or a copy of the ledger file ``copy_of``
        (a dry run sees what was imported before and changes nothing on disk)."""
        self.participant = participant
        self.path = path
        try:
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._db = sqlite.connect(path, schema=SCHEMA, copy_of=copy_of)
            self._secret = self._load_secret()
        except sqlite3.Error as e:
            raise TransportError(f"cannot open the import ledger {path or copy_of}: {e}") from e
        self._pending = 0
        self._last_commit = time.monotonic()
        self._in_tx = False

    @classmethod
    def open(cls, home: Path, participant: str) -> Ledger:
        return cls(ledger_path(home, participant), participant=participant)

    @classmethod
    def open_for_dry_run(cls, home: Path, participant: str) -> Ledger:
        """An in-memory copy of the participant's ledger (to report rows imported before), or an
        empty one; nothing a dry run does reaches the file."""
        path = ledger_path(home, participant)
        return cls(None, participant=participant, copy_of=path if path.exists() else None)

    def _load_secret(self) -> bytes:
        row = self._db.execute("SELECT value FROM meta WHERE name = 'secret'").fetchone()
        if row is not None:
            return bytes(row[0])
        secret = os.urandom(SECRET_BYTES)
        self._db.execute("INSERT INTO meta (name, value) VALUES ('secret', ?)", (secret,))
        return secret

    # -- digests and ids

    def _mac(self, *parts: str) -> str:
        message = "\x00".join([self.participant, *parts]).encode("utf-8")
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def key(self, fmt: str, emit: str, identity: str) -> str:
        return self._mac("key", fmt, emit, identity)

    def content_digest(self, fmt: str, content: str) -> str:
        return self._mac("content", fmt, content)

    @staticmethod
    def event_id(key: str) -> str:
        """A UUIDv8 (RFC 9562, custom) from the row's key: the same row always gets the same id."""
        raw = bytearray(hashlib.sha256(b"lianfang-import-event-id\x00" + key.encode()).digest()[:16])
        raw[6] = (raw[6] & 0x0F) | 0x80
        raw[8] = (raw[8] & 0x3F) | 0x80
        return str(uuid.UUID(bytes=bytes(raw)))

    # -- entries

    def get(self, key: str) -> Entry | None:
        row = self._db.execute(
            "SELECT key, event_id, content, file, line, recovered FROM imported WHERE key = ?", (key,)
        ).fetchone()
        return None if row is None else Entry(row[0], row[1], row[2], row[3], int(row[4]), bool(row[5]))

    def add(
        self,
        *,
        key: str,
        event_id: str,
        content: str,
        fmt: str,
        emit: str,
        event_type: str,
        file: str,
        line: int,
        recovered: bool = False,
    ) -> None:
        """Record a published row; committed with the batch (see the module's crash-safety notes)."""
        if not self._in_tx:
            self._db.execute("BEGIN IMMEDIATE")
            self._in_tx = True
        self._db.execute(
            "INSERT OR IGNORE INTO imported (key, event_id, content, format, emit, event_type, file, line,"
            " imported_at, recovered) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (key, event_id, content, fmt, emit, event_type, file, line, time.time(), int(recovered)),
        )
        self._pending += 1
        if self._pending >= COMMIT_EVERY or time.monotonic() - self._last_commit >= COMMIT_SECONDS:
            self.commit()

    def commit(self) -> None:
        if self._in_tx:
            self._db.execute("COMMIT")
            self._in_tx = False
        self._pending = 0
        self._last_commit = time.monotonic()

    def count(self, fmt: str | None = None) -> int:
        if fmt is None:
            return int(self._db.execute("SELECT COUNT(*) FROM imported").fetchone()[0])
        return int(self._db.execute("SELECT COUNT(*) FROM imported WHERE format = ?", (fmt,)).fetchone()[0])

    def close(self) -> None:
        self.commit()
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
