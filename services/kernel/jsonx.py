"""The one strict JSON parser and the one canonical JSON encoding.

- :func:`strict_json` reads bytes from outside (records, registry files, keystores, request bodies)
  by the rules of :mod:`schemas.strict_json` (which the contracts use too); a refusal is a
  :class:`~services.kernel.errors.MalformedError`.
- :func:`compact_json` writes the bytes that are signed, hashed or authenticated: compact, sorted
  keys, UTF-8. Known-answer vectors pin it (``tests/vectors``); changing it breaks every signature.

Pure: bytes in, values out.
"""

from __future__ import annotations

import json
from typing import Any

from schemas import strict_json as strict_json_rules
from services.kernel.errors import MalformedError

__all__ = ["compact_json", "strict_json"]


def strict_json(data: bytes, *, what: str) -> Any:
    """Parse UTF-8 JSON by the rules of :mod:`schemas.strict_json` (no duplicate keys, no NaN or
    infinities); a refusal is a :class:`MalformedError` naming ``what`` and the rule, never the input."""
    try:
        return strict_json_rules.loads(data)
    except ValueError as e:
        raise MalformedError(f"{what} is not valid JSON: {e}") from e


def compact_json(value: Any) -> bytes:
    """The one JSON encoding we write: compact, sorted keys, UTF-8, no raw newlines."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode("utf-8")
