"""The clock every service reads: a function returning an aware UTC ``datetime``.

Components take a :data:`Clock` so that tests can pass a fixed or stepping one; production passes
:func:`utcnow`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

__all__ = ["Clock", "utcnow"]

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """Now, as an aware UTC ``datetime``."""
    return datetime.now(UTC)
