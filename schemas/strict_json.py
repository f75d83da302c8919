"""The rules for reading JSON that comes from outside: one place, for the contracts and the services.

UTF-8 only, no duplicate keys (two parsers could each take a different one of the duplicates), no
``NaN`` or infinities (JSON has no such numbers and they slip past range checks). A refusal is a
``ValueError`` whose message names the rule broken, never a key or a value of the input: the sender
chose those, and messages reach logs and dead-letter headers. Services call
:func:`services.kernel.jsonx.strict_json`, which turns the refusal into a ``MalformedError``.
"""

from __future__ import annotations

import re
from typing import Any

import jiter

__all__ = ["loads"]

_RULES = (
    ("duplicate key", "a JSON object repeats a key (duplicate keys are ambiguous)"),
    ("recursion limit", "JSON nested deeper than the parser follows"),
    ("number out of range", "a JSON number is out of range"),
)
"""jiter's refusals that break one of the rules above, by a phrase of its message, with the rule's words."""

_PLAIN = re.compile(r"[A-Za-z0-9 ,()\\-]+")
"""The words of a jiter message that may be repeated: letters, digits and punctuation, no quotes."""


def _reason(message: str, data: bytes) -> str:
    """The rule ``data`` broke, in words that repeat nothing of it (jiter's duplicate-key message quotes the
    key: the sender chose it). NaN and the infinities are told apart by reading again with them allowed,
    which costs only a refused input."""
    what, _, where = message.partition(" at line ")
    for phrase, rule in _RULES:
        if phrase in what:
            return rule
    try:
        jiter.from_json(data, allow_inf_nan=True, cache_mode=False)
    except ValueError:
        pass
    else:
        return "JSON constants NaN and Infinity are not allowed"
    position = f" at line {where}" if re.fullmatch(r"\d+ column \d+", where) else ""
    return f"not JSON ({what if _PLAIN.fullmatch(what) else 'unreadable'}{position})"


def loads(data: bytes) -> Any:
    """Parse UTF-8 JSON by the rules above; raises ``ValueError`` naming the rule broken.

    One pass of jiter, the parser inside pydantic-core, with duplicate keys caught where it meets them
    and its string cache off (a sender's strings, personal data among them, are not kept after the
    parse). It refuses what Python's ``json`` took beyond the rules too: a lone surrogate escape
    (``"\\ud800"``, which no UTF-8 text holds), a byte order mark, nesting deeper than about 200 levels."""
    try:
        return jiter.from_json(data, allow_inf_nan=False, catch_duplicate_keys=True, cache_mode=False)
    except ValueError as e:
        try:  # jiter refuses bytes that are not UTF-8 itself; said here in our words, on refusal only
            data.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("the bytes are not UTF-8") from None
        raise ValueError(_reason(str(e), data)) from None
