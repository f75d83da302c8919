"""Sessions and CSRF tokens of the console, kept in memory (a restart signs everyone out).

- A session is named by a random 256-bit token in an HttpOnly, SameSite=Strict cookie; the table keeps
  only the token's SHA-256, so a memory dump of the table does not give working cookies. A session ends
  after ``idle`` without a request, after ``maximum`` in any case, or at sign-out.
- CSRF: the synchronizer-token pattern. Each session has its own random token, put into every form; a
  POST must send it back. Before sign-in there is no session, so the sign-in form carries a token bound
  to a random pre-session cookie with an HMAC under a per-process key (login CSRF).

Comparisons are constant-time. Nothing here does I/O; the clock is injected.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

from services.kernel.clock import Clock, utcnow

__all__ = ["CSRF_FIELD", "PreSession", "Session", "Sessions", "same_token"]

CSRF_FIELD: Final = "_csrf"
"""The form field (and ``X-CSRF-Token`` header) that carries the token."""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


def same_token(expected: str, given: str | None) -> bool:
    """Constant-time equality of two tokens; a missing or empty one never matches."""
    if not given or not expected:
        return False
    return hmac.compare_digest(expected.encode("ascii", "replace"), given.encode("ascii", "replace"))


@dataclass(slots=True)
class Session:
    user: str
    csrf: str = field(repr=False)
    created: datetime
    seen: datetime


class Sessions:
    """The live sessions, by token digest. Thread-safe."""

    def __init__(
        self,
        *,
        idle: timedelta = timedelta(minutes=30),
        maximum: timedelta = timedelta(hours=12),
        clock: Clock | None = None,
    ) -> None:
        if idle <= timedelta(0) or maximum <= timedelta(0):
            raise ValueError("session lifetimes must be positive")
        self.idle = idle
        self.maximum = maximum
        self.clock = clock or utcnow
        self._by_digest: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, user: str) -> tuple[str, Session]:
        """A new session for ``user``: returns the cookie token (shown once) and the session."""
        token = secrets.token_urlsafe(32)
        now = self.clock()
        session = Session(user=user, csrf=secrets.token_urlsafe(32), created=now, seen=now)
        with self._lock:
            self._prune(now)
            self._by_digest[_digest(token)] = session
        return token, session

    def get(self, token: str | None, *, touch: bool = True) -> Session | None:
        """The live session of a cookie token, or None. ``touch`` counts this as activity."""
        if not token:
            return None
        now = self.clock()
        digest = _digest(token)
        with self._lock:
            session = self._by_digest.get(digest)
            if session is None:
                return None
            if self._expired(session, now):
                del self._by_digest[digest]
                return None
            if touch:
                session.seen = now
            return session

    def drop(self, token: str | None) -> None:
        if token:
            with self._lock:
                self._by_digest.pop(_digest(token), None)

    def count(self) -> int:
        with self._lock:
            self._prune(self.clock())
            return len(self._by_digest)

    def _expired(self, session: Session, now: datetime) -> bool:
        return now - session.seen >= self.idle or now - session.created >= self.maximum

    def _prune(self, now: datetime) -> None:
        for digest in [d for d, s in self._by_digest.items() if self._expired(s, now)]:
            del self._by_digest[digest]


class PreSession:
    """CSRF tokens for the sign-in form, bound to a pre-session cookie by an HMAC under a process key."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)

    @staticmethod
    def new_id() -> str:
        return secrets.token_urlsafe(24)

    def token(self, pre_id: str) -> str:
        mac = hmac.new(self._key, b"lianfang-console/login\0" + pre_id.encode("ascii", "replace"), "sha256")
        return mac.hexdigest()

    def check(self, pre_id: str | None, given: str | None) -> bool:
        if not pre_id:
            return False
        return same_token(self.token(pre_id), given)
