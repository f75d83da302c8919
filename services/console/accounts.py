"""Console accounts: a small SQLite file in the trust-domain folder, passwords hashed with Argon2id.

Each account row keeps the PHC string of its password (``$argon2id$v=19$m=..,t=..,p=..$salt$hash``,
so the cost parameters travel with the hash), the count of failed attempts since the last success and,
after ``max_failures`` failures in a row, the time until which the account is locked. A locked account
refuses every password, the right one too, and attempts while locked do not extend the lock (that would
let anyone keep a coordinator out for ever). Nothing here logs or returns a password.

Each account has one role (:mod:`services.console.roles`). Accounts made before roles existed were all
coordinators' and become ``coordinator`` when the file is first opened by this version.

Sign-ins run in parallel, so the lock-out is kept in transactions around the KDF, never across it: an
attempt is counted as a failure *before* its password is checked, and one that finds the count spent
locks the account without checking anything. However many attempts run at once, at most
``max_failures`` passwords are checked between two locks. A success clears the count.

Every refused attempt costs one KDF: an unknown name, a locked account and a spent count check the
password against a dummy hash of :data:`PASSWORD_KDF`'s cost, so timing does not tell which names exist
or are locked.

New hashes use one lane (:data:`PASSWORD_KDF`): OpenSSL runs a multi-lane Argon2id on a process-wide
thread pool that deadlocks when two run at once (``services/kernel/crypto.py``). Hashes made with more
lanes still verify (one at a time) and are re-hashed with one lane at their next sign-in.
"""

from __future__ import annotations

import re
import secrets
import sqlite3
import threading
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final, Literal

from services.console.roles import Role, check_role, role_or_none
from services.kernel import crypto
from services.kernel.clock import Clock, utcnow
from services.kernel.errors import UsageError
from services.kernel.keystore import KdfParams
from services.store import sqlite

__all__ = [
    "MAX_PASSWORD",
    "MIN_PASSWORD",
    "PASSWORD_KDF",
    "Account",
    "AccountStore",
    "LoginResult",
    "accounts_path",
    "check_name",
    "check_password",
    "generate_password",
]

MIN_PASSWORD: Final = 12
MAX_PASSWORD: Final = 1024
_NAME: Final = re.compile(r"[\w.@-]{1,64}")
_SALT_BYTES: Final = 16
_HASH_BYTES: Final = 32
_PHC: Final = re.compile(r"\$argon2id\$v=19\$m=(\d+),t=(\d+),p=(\d+)\$")

PASSWORD_KDF: Final = KdfParams(iterations=3, lanes=1, memory_cost_kib=65536)
"""Argon2id for console passwords: RFC 9106's second recommended option (64 MiB, 3 passes) on one lane.
Lanes only let the defender use more cores; an attacker's work per guess (memory times passes) is the
same. On one lane the KDF never touches OpenSSL's thread pool, so sign-ins run in parallel without the
multi-lane deadlock; measured on two shared cores: 0.16 s a sign-in, against 0.12 s with four lanes."""

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS accounts (
    name          TEXT PRIMARY KEY,
    phc           TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    failures      INTEGER NOT NULL DEFAULT 0,
    locked_until  TEXT,
    last_login    TEXT,
    role          TEXT NOT NULL DEFAULT 'coordinator'
);
"""


def accounts_path(home: Path) -> Path:
    """Where a trust domain keeps its console accounts."""
    return home / "console" / "accounts.sqlite"


def check_name(name: str) -> str:
    """The account name in its stored form (NFKC); letters, digits, ``_ . @ -``, at most 64."""
    normal = unicodedata.normalize("NFKC", name).strip()
    if not _NAME.fullmatch(normal):
        raise UsageError("an account name is 1 to 64 letters, digits or the characters _ . @ - (no spaces)")
    return normal


def check_password(password: str) -> str:
    """The password in the form that is hashed (NFC, so input methods agree); refuses weak lengths."""
    normal = unicodedata.normalize("NFC", password)
    if len(normal) < MIN_PASSWORD:
        raise UsageError(f"a password has at least {MIN_PASSWORD} characters")
    if len(normal) > MAX_PASSWORD:
        raise UsageError(f"a password has at most {MAX_PASSWORD} characters")
    return normal


def generate_password() -> str:
    """A random password of 20 URL-safe characters (120 bits)."""
    return secrets.token_urlsafe(15)


@dataclass(frozen=True, slots=True)
class LoginResult:
    """What a sign-in attempt came to. ``name`` is set only when it names an existing account."""

    outcome: Literal["ok", "bad_credentials", "locked"]
    name: str | None = None
    locked_until: datetime | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


@dataclass(frozen=True, slots=True)
class Account:
    """What an administrator sees of an account: never its hash."""

    name: str
    role: Role | None  # None: a role this version does not know, which grants nothing
    locked_until: datetime | None
    last_login: datetime | None


class AccountStore:
    """The accounts file. Thread-safe: sign-ins run in worker threads (the KDF takes a while)."""

    def __init__(
        self,
        path: Path,
        *,
        kdf: KdfParams | None = None,
        max_failures: int = 5,
        lockout: timedelta = timedelta(minutes=15),
        clock: Clock | None = None,
    ) -> None:
        if max_failures < 1 or lockout <= timedelta(0):
            raise UsageError("lock-out needs at least one failure and a positive duration")
        self.path = path
        self.kdf = kdf or PASSWORD_KDF
        self.max_failures = max_failures
        self.lockout = lockout
        self.clock = clock or utcnow
        self._lock = threading.Lock()
        self._db = sqlite.connect(path, schema=SCHEMA, private=True)
        self._dummy: str | None = None
        with sqlite.transaction(self._db, self._lock) as db:
            columns = {row[1] for row in db.execute("PRAGMA table_info(accounts)")}
            if "role" not in columns:  # a file from before roles: its accounts were coordinators
                db.execute("ALTER TABLE accounts ADD COLUMN role TEXT NOT NULL DEFAULT 'coordinator'")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- hashing

    def _hash(self, password: str) -> str:
        return crypto.argon2id_phc(
            password.encode("utf-8"),
            salt=secrets.token_bytes(_SALT_BYTES),
            length=_HASH_BYTES,
            iterations=self.kdf.iterations,
            lanes=self.kdf.lanes,
            memory_kib=self.kdf.memory_cost_kib,
        )

    @staticmethod
    def _matches(password: str, phc: str) -> bool:
        return len(password) <= MAX_PASSWORD and crypto.argon2id_verify_phc(password.encode("utf-8"), phc)

    def _needs_rehash(self, phc: str) -> bool:
        """True when the stored hash costs less memory or fewer passes than this store's parameters, or
        has more lanes at no more cost (it is then re-hashed at the next sign-in; a cheaper store never
        downgrades a hash)."""
        found = _PHC.match(phc)
        if found is None:
            return False
        memory, iterations, lanes = (int(x) for x in found.groups())
        weaker = memory < self.kdf.memory_cost_kib or iterations < self.kdf.iterations
        no_stronger = memory <= self.kdf.memory_cost_kib and iterations <= self.kdf.iterations
        return weaker or (lanes != self.kdf.lanes and no_stronger)

    # -- accounts

    def create(self, name: str, password: str, *, role: Role | None = None, replace: bool = False) -> str:
        """Add an account with ``role`` (``coordinator`` when not given: what every account was before
        roles; ``lianfang console adduser`` always asks for one), or, with ``replace``, set a new
        password (and the role, when given) and unlock it; returns its name."""
        name = check_name(name)
        if role is not None:
            role = check_role(role)
        phc = self._hash(check_password(password))
        now = _iso(self.clock())
        with sqlite.transaction(self._db, self._lock) as db:
            exists = db.execute("SELECT 1 FROM accounts WHERE name = ?", (name,)).fetchone()
            if exists and not replace:
                raise UsageError(f"account {name!r} exists; pass --replace to set a new password")
            db.execute(
                "INSERT INTO accounts (name, phc, created_at, role) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET phc = excluded.phc, failures = 0, locked_until = NULL,"
                " role = COALESCE(?, role)",
                (name, phc, now, role or "coordinator", role),
            )
        return name

    def set_role(self, name: str, role: Role) -> None:
        """Give an account another role; it applies to its next request (sessions are not kept)."""
        role = check_role(role)
        with sqlite.transaction(self._db, self._lock) as db:
            if db.execute("UPDATE accounts SET role = ? WHERE name = ?", (role, name)).rowcount != 1:
                raise UsageError(f"no console account {name!r} in {self.path}")

    def role_of(self, name: str) -> Role | None:
        """The account's role, or None when there is no such account (any more)."""
        with self._lock:
            row = self._db.execute("SELECT role FROM accounts WHERE name = ?", (name,)).fetchone()
        return role_or_none(str(row[0])) if row is not None else None

    def accounts(self) -> list[Account]:
        with self._lock:
            rows = self._db.execute(
                "SELECT name, role, locked_until, last_login FROM accounts ORDER BY name"
            ).fetchall()
        now = self.clock()
        found = []
        for name, role, locked, last in rows:
            until = _parse(locked)
            found.append(
                Account(
                    name=str(name),
                    role=role_or_none(str(role)),
                    locked_until=until if until is not None and now < until else None,
                    last_login=_parse(last),
                )
            )
        return found

    def names(self) -> list[str]:
        with self._lock:
            return [row[0] for row in self._db.execute("SELECT name FROM accounts ORDER BY name")]

    def exists(self, name: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM accounts WHERE name = ?", (name,)).fetchone() is not None

    def unlock(self, name: str) -> None:
        with sqlite.transaction(self._db, self._lock) as db:
            db.execute("UPDATE accounts SET failures = 0, locked_until = NULL WHERE name = ?", (name,))

    def verify(self, name: str, password: str) -> LoginResult:
        """Check a sign-in: count it, check the password, then settle the count (see the module's
        docstring). Safe to call from many threads at once."""
        try:
            name = check_name(name)
        except UsageError:
            name = ""
        candidate = unicodedata.normalize("NFC", password)
        started = self._begin(name)
        if isinstance(started, LoginResult):  # unknown, locked or spent: the same cost, nothing checked
            self._matches(candidate, self._dummy_phc())
            return started
        if self._matches(candidate, started):
            rehash = self._hash(candidate) if self._needs_rehash(started) else None
            return self._succeed(name, rehash)
        return self._fail(name)

    def _begin(self, name: str) -> str | LoginResult:
        """Count an attempt before its check: the stored hash to check against, or why nothing is."""
        now = self.clock()
        with sqlite.transaction(self._db, self._lock) as db:
            row = db.execute(
                "SELECT phc, failures, locked_until FROM accounts WHERE name = ?", (name,)
            ).fetchone()
            if row is None:
                return LoginResult("bad_credentials")
            phc, failures, locked = str(row[0]), int(row[1]), _parse(row[2])
            if locked is not None and now < locked:
                return LoginResult("locked", name, locked)
            if locked is not None:  # a lock that has run out starts a new count
                failures = 0
            if failures >= self.max_failures:  # spent by attempts still being checked, or cut short
                until = now + self.lockout
                db.execute(
                    "UPDATE accounts SET failures = 0, locked_until = ? WHERE name = ?", (_iso(until), name)
                )
                return LoginResult("locked", name, until)
            db.execute(
                "UPDATE accounts SET failures = ?, locked_until = NULL WHERE name = ?", (failures + 1, name)
            )
        return phc

    def _succeed(self, name: str, rehash: str | None) -> LoginResult:
        now = self.clock()
        with sqlite.transaction(self._db, self._lock) as db:
            locked = self._locked(db, name, now)
            if locked is not None:  # locked while this password was checked: the right one too
                return LoginResult("locked", name, locked)
            db.execute(
                "UPDATE accounts SET failures = 0, locked_until = NULL, last_login = ?,"
                " phc = COALESCE(?, phc) WHERE name = ?",
                (_iso(now), rehash, name),
            )
        return LoginResult("ok", name)

    def _fail(self, name: str) -> LoginResult:
        now = self.clock()
        with sqlite.transaction(self._db, self._lock) as db:
            locked = self._locked(db, name, now)
            if locked is not None:
                return LoginResult("locked", name, locked)
            row = db.execute("SELECT failures FROM accounts WHERE name = ?", (name,)).fetchone()
            if row is not None and int(row[0]) >= self.max_failures:
                until = now + self.lockout
                db.execute(
                    "UPDATE accounts SET failures = 0, locked_until = ? WHERE name = ?", (_iso(until), name)
                )
                return LoginResult("locked", name, until)
        return LoginResult("bad_credentials", name)

    @staticmethod
    def _locked(db: sqlite3.Connection, name: str, now: datetime) -> datetime | None:
        row = db.execute("SELECT locked_until FROM accounts WHERE name = ?", (name,)).fetchone()
        until = _parse(row[0]) if row is not None else None
        return until if until is not None and now < until else None

    def _dummy_phc(self) -> str:
        if self._dummy is None:
            self._dummy = self._hash(secrets.token_urlsafe(16))
        return self._dummy


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat()


def _parse(value: object) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) and value else None
