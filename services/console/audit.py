"""The console's audit trail: who saw or did what, when — an append-only SQLite table.

Each row is one sign-in, sign-out, view of case content (the queue, an alert and its timeline, the
supervision page, a live-update subscription) or action (acknowledge, schedule, conclude). Rows name
accounts, alert ids, event ids and subject pseudonyms, never personal data or passwords. Triggers make
the table refuse UPDATE and DELETE, so the application cannot rewrite history. Each view of case content
is also an entry of the console's hash chain on ``lianfang.audit.v1`` (``docs/decisions.md``), which
also protects against whoever holds the file.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal, get_args

from services.kernel.clock import Clock, utcnow
from services.store import sqlite

__all__ = ["ACTIONS", "Action", "AuditLog", "AuditRow", "audit_path"]

Action = Literal[
    "login",
    "login_failed",
    "login_locked",
    "logout",
    "view_queue",
    "view_alert",
    "view_supervision",
    "live_updates",
    "acknowledge",
    "schedule",
    "conclude",
    "forbidden",
    "view_accounts",
    "view_record",
]
ACTIONS: Final[tuple[Action, ...]] = get_args(Action)

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS audit (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    at      TEXT NOT NULL,
    who     TEXT NOT NULL,
    action  TEXT NOT NULL,
    target  TEXT NOT NULL,
    detail  TEXT NOT NULL,
    remote  TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""


def audit_path(home: Path) -> Path:
    """Where a trust domain keeps the console's audit log."""
    return home / "console" / "audit.sqlite"


@dataclass(frozen=True, slots=True)
class AuditRow:
    seq: int
    at: datetime
    who: str
    action: str
    target: str
    detail: str
    remote: str


class AuditLog:
    """Append-only; every record is committed (synchronous=FULL) before the page is sent."""

    def __init__(self, path: Path, *, clock: Clock | None = None) -> None:
        self.path = path
        self.clock = clock or utcnow
        self._lock = threading.Lock()
        self._db = sqlite.connect(path, schema=SCHEMA, private=True)

    def record(self, who: str, action: Action, target: str = "", detail: str = "", remote: str = "") -> None:
        if action not in ACTIONS:
            raise ValueError(f"unknown audit action {action!r}")
        at = self.clock().astimezone(UTC).isoformat()
        with self._lock:
            self._db.execute(
                "INSERT INTO audit (at, who, action, target, detail, remote) VALUES (?, ?, ?, ?, ?, ?)",
                (at, who, action, target[:500], detail[:500], remote[:100]),
            )

    def rows(self, limit: int = 1000) -> list[AuditRow]:
        """The last ``limit`` rows, oldest first."""
        with self._lock:
            found = self._db.execute(
                "SELECT seq, at, who, action, target, detail, remote FROM audit ORDER BY seq DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [
            AuditRow(int(r[0]), datetime.fromisoformat(r[1]), r[2], r[3], r[4], r[5], r[6])
            for r in reversed(found)
        ]

    def close(self) -> None:
        with self._lock:
            self._db.close()
