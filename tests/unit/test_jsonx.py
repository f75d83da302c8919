"""The one strict JSON parser and the one canonical encoding of signed bytes."""

from __future__ import annotations

import pytest

from services.kernel import jsonx
from services.kernel.errors import MalformedError

pytestmark = pytest.mark.unit

REFUSED = {
    "NaN is refused": b'{"score": NaN}',
    "Infinity is refused": b'{"score": Infinity}',
    "negative Infinity is refused": b"[-Infinity]",
    "a key given twice is refused": b'{"a": 1, "a": 1}',
    "a key given twice in a nested object is refused": b'{"a": {"b": 1, "b": 2}}',
    "bytes that are not UTF-8 are refused": b'{"a": "\xff"}',
    "text that is not JSON is refused": b"{",
    "nesting deeper than the parser can follow is refused": b"[" * 100_000,
}


@pytest.mark.parametrize("data", REFUSED.values(), ids=REFUSED.keys())
def test_strict_json_refuses(data: bytes) -> None:
    with pytest.raises(MalformedError, match=r"^\[malformed\] "):
        jsonx.strict_json(data, what="the test input")


def test_strict_json_reads_what_compact_json_writes() -> None:
    value = {"b": [1, 2.5, None, True], "a": "联防 ✓", "c": {"z": -1, "y": ""}}
    assert jsonx.strict_json(jsonx.compact_json(value), what="a round trip") == value


def test_compact_json_is_compact_sorted_utf8_without_newlines() -> None:
    encoded = jsonx.compact_json({"b": 1, "a": "联\n"})
    assert encoded == '{"a":"联\\n","b":1}'.encode()


def test_a_refusal_names_the_rule_and_never_repeats_the_senders_key_or_value() -> None:
    """A sender chooses its keys; refusals reach logs and dead-letter headers."""
    with pytest.raises(MalformedError) as refused:
        jsonx.strict_json('{"张三 110101199003077777": 1, "张三 110101199003077777": 2}'.encode(), what="x")
    assert "repeats a key" in str(refused.value)
    assert "张三" not in str(refused.value)
    assert "110101199003077777" not in str(refused.value)


def test_the_event_contracts_parse_by_the_same_rules_without_importing_the_services() -> None:
    import subprocess
    import sys

    probe = "import schemas.events, sys; print(sorted(m for m in sys.modules if m.startswith('services')))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
