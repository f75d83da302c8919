"""The one strict JSON parser and the one canonical encoding of signed bytes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.kernel import jsonx
from services.kernel.errors import MalformedError

pytestmark = pytest.mark.unit


def _mutated(data: bytes) -> st.SearchStrategy[bytes]:
    """``data`` with one byte replaced, dropped or doubled: JSON that is almost right."""
    if not data:
        return st.just(data)
    return st.tuples(
        st.integers(0, len(data) - 1), st.sampled_from(b'{}[]",:\\ 0e-.nNuIt'), st.integers(0, 2)
    ).map(lambda t: data[: t[0]] + (bytes([t[1]]), b"", data[t[0] : t[0] + 1] * 2)[t[2]] + data[t[0] + 1 :])


REFUSED = {
    "NaN is refused": b'{"score": NaN}',
    "Infinity is refused": b'{"score": Infinity}',
    "negative Infinity is refused": b"[-Infinity]",
    "a key given twice is refused": b'{"a": 1, "a": 1}',
    "a key given twice in a nested object is refused": b'{"a": {"b": 1, "b": 2}}',
    "bytes that are not UTF-8 are refused": b'{"a": "\xff"}',
    "text that is not JSON is refused": b"{",
    "nesting deeper than the parser can follow is refused": b"[" * 100_000,
    "nesting 300 levels deep is refused (jiter follows about 200)": b"[" * 300 + b"]" * 300,
    "a lone surrogate escape is refused": b'{"a": "\\ud800"}',
    "a byte order mark is refused": b"\xef\xbb\xbf{}",
    "an integer of more than 4,300 digits is refused": b"[" + b"7" * 4301 + b"]",
    "a trailing comma is refused": b'{"a": 1,}',
    "text after the value is refused": b'{"a": 1} {}',
}


@pytest.mark.parametrize("data", REFUSED.values(), ids=REFUSED.keys())
def test_strict_json_refuses(data: bytes) -> None:
    with pytest.raises(MalformedError, match=r"^\[malformed\] "):
        jsonx.strict_json(data, what="the test input")


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES)
def test_strict_json_reads_every_value_as_pythons_json_reads_it(value: Any) -> None:
    for data in (jsonx.compact_json(value), json.dumps(value, indent=1).encode()):
        assert jsonx.strict_json(data, what="a value") == json.loads(data)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=40), JSON_VALUES.map(jsonx.compact_json).flatmap(_mutated)))
def test_what_strict_json_reads_python_s_json_reads_alike_so_it_is_never_laxer(data: bytes) -> None:
    try:
        value = jsonx.strict_json(data, what="fuzz")
    except MalformedError:
        return
    assert json.loads(data) == value


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES.map(jsonx.compact_json), st.data())
def test_json_with_bytes_that_are_not_utf8_anywhere_is_refused_as_not_utf8(
    data: bytes, draw: st.DataObject
) -> None:
    at = draw.draw(st.integers(0, len(data)))
    broken = (
        data[:at]
        + draw.draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"\x80"]))
        + data[at:]
    )
    with pytest.raises(MalformedError, match="the bytes are not UTF-8"):
        jsonx.strict_json(broken, what="x")


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
