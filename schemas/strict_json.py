"""The rules for reading JSON that comes from outside: one place, for the contracts and the services.

UTF-8 only, no duplicate keys (two parsers could each take a different one of the duplicates), no
``NaN`` or infinities (JSON has no such numbers and they slip past range checks). A refusal is a
``ValueError`` whose message names the rule broken, never a key or a value of the input: the sender
chose those, and messages reach logs and dead-letter headers. Services call
:func:`services.kernel.jsonx.strict_json`, which turns the refusal into a ``MalformedError``.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["loads"]


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)  # built in C; fewer keys than pairs means a key came twice
    if len(result) != len(pairs):
        raise ValueError("a JSON object repeats a key (duplicate keys are ambiguous)")
    return result


def _no_constants(name: str) -> Any:
    raise ValueError(f"JSON constant {name} is not allowed")  # one of NaN, Infinity, -Infinity


# One decoder for every call: json.loads would build a new one each time it is given hooks.
_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants)


def loads(data: bytes) -> Any:
    """Parse UTF-8 JSON by the rules above; raises ``ValueError`` naming the rule broken."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("the bytes are not UTF-8") from None
    try:
        if text.startswith("\ufeff"):  # as json.loads refuses it
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        return _DECODER.decode(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e.msg} at position {e.pos})") from None
    except RecursionError:
        raise ValueError("JSON nested deeper than the parser follows") from None
