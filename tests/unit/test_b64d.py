"""The one strict base64 decoder every wire value goes through (``crypto.b64d``, the payload's model), and
the encoder: libbase64's SIMD code held to the standard library's answers, on short texts and on texts
long enough for its vector paths (32 and 64 characters a step)."""

from __future__ import annotations

import base64
import binascii

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.kernel import crypto
from services.kernel.errors import MalformedError

pytestmark = pytest.mark.unit

NEAR_BASE64 = st.text(alphabet="ABab09+/=\n -_é", max_size=16) | st.binary(max_size=12).map(
    lambda raw: base64.b64encode(raw).decode()
)


def _mutated(text: str) -> st.SearchStrategy[str]:
    """``text`` with one character replaced or inserted anywhere: base64 that is almost right."""
    return st.tuples(st.integers(0, len(text)), st.sampled_from("=\n -_é+/A"), st.booleans()).map(
        lambda t: text[: t[0]] + t[1] + text[t[0] + (1 if t[2] else 0) :]
    )


LONG_NEAR_BASE64 = st.binary(min_size=20, max_size=400).map(lambda raw: base64.b64encode(raw).decode())
LONG_NEAR_BASE64 = LONG_NEAR_BASE64 | LONG_NEAR_BASE64.flatmap(_mutated)


def _stdlib(text: str) -> bytes | None:
    """What the standard library's strict decoder gives, None where it refuses."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return None


def _agrees_with_the_standard_library(text: str) -> None:
    """Never laxer than the standard library's strict decoder (what b64d reads, it reads alike), and
    every text the standard encoder writes is read. Stricter only on padding past a full quantum
    (``AAAA=``), which the standard library lets through and no encoder writes."""
    try:
        decoded: bytes | None = crypto.b64d(text, what="a value")
    except MalformedError:
        decoded = None
    expected = _stdlib(text)
    if decoded is not None:
        assert decoded == expected
    elif expected is not None:
        assert base64.b64encode(expected).decode() != text, "a canonical encoding was refused"
        assert "=" in text


@settings(max_examples=2000, deadline=None)
@given(NEAR_BASE64)
def test_b64d_reads_what_the_standard_librarys_strict_decoder_reads_and_nothing_more(text: str) -> None:
    _agrees_with_the_standard_library(text)


@settings(max_examples=2000, deadline=None)
@given(LONG_NEAR_BASE64)
def test_b64d_agrees_with_the_standard_library_on_long_texts_with_a_fault_anywhere(text: str) -> None:
    _agrees_with_the_standard_library(text)


@pytest.mark.parametrize("text", ["AAAA=", "0000==", "AAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "AAAA==="])
def test_padding_after_a_full_quantum_is_refused_though_the_standard_library_reads_it(text: str) -> None:
    assert _stdlib(text) is not None
    with pytest.raises(MalformedError, match="not standard base64"):
        crypto.b64d(text, what="a value")


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_b64e_writes_what_the_standard_library_writes(raw: bytes) -> None:
    assert crypto.b64e(raw) == base64.b64encode(raw).decode()


def test_b64d_checks_the_length_and_names_the_value_never_its_text() -> None:
    with pytest.raises(MalformedError, match="must be 32 bytes, got 3"):
        crypto.b64d("AAAA", what="a key", length=32)
    with pytest.raises(MalformedError, match=r"^\[malformed\] a key is not standard base64") as refused:
        crypto.b64d("张三==", what="a key")
    assert "张三" not in str(refused.value)
