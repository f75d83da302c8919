"""The one strict JSON parser and the one canonical JSON encoding.

- :func:`strict_json` reads bytes from outside (records, registry files, keystores, request bodies):
  UTF-8 only, no duplicate keys (two parsers could each take a different one of the duplicates), no
  ``NaN`` or infinities (JSON has no such numbers and they slip past range checks). Anything else is a
  :class:`~services.kernel.errors.MalformedError`.
- :func:`compact_json` writes the bytes that are signed, hashed or authenticated: compact, sorted
  keys, UTF-8. Known-answer vectors pin it (``tests/vectors``); changing it breaks every signature.

Pure: bytes in, values out.
"""

from __future__ import annotations

import json
from typing import Any

from services.kernel.errors import MalformedError

__all__ = ["compact_json", "strict_json"]


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            # Two parsers could each take a different one of the duplicates: refuse instead of guessing.
            raise MalformedError(f"a JSON object repeats the key {key!r} (duplicate keys are ambiguous)")
        result[key] = value
    return result


def _no_constants(name: str) -> Any:
    raise MalformedError(f"JSON constant {name} is not allowed")


def strict_json(data: bytes, *, what: str) -> Any:
    """Parse UTF-8 JSON, refusing duplicate keys, NaN/Infinity and invalid UTF-8."""
    try:
        text = data.decode("utf-8")
        return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants)
    except MalformedError:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise MalformedError(f"{what} is not valid JSON ({type(e).__name__})") from e


def compact_json(value: Any) -> bytes:
    """The one JSON encoding we write: compact, sorted keys, UTF-8, no raw newlines."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode("utf-8")
