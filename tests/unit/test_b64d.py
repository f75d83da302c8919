"""The one strict base64 decoder every wire value goes through (``crypto.b64d``)."""

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


def _stdlib(text: str) -> bytes | None:
    """What the standard library's strict decoder gives, None where it refuses."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return None


@settings(max_examples=2000, deadline=None)
@given(NEAR_BASE64)
def test_b64d_refuses_and_decodes_exactly_what_the_standard_librarys_strict_decoder_does(text: str) -> None:
    try:
        decoded: bytes | None = crypto.b64d(text, what="a value")
    except MalformedError:
        decoded = None
    assert decoded == _stdlib(text)


def test_b64d_checks_the_length_and_names_the_value_never_its_text() -> None:
    with pytest.raises(MalformedError, match="must be 32 bytes, got 3"):
        crypto.b64d("AAAA", what="a key", length=32)
    with pytest.raises(MalformedError, match=r"^\[malformed\] a key is not valid base64") as refused:
        crypto.b64d("张三==", what="a key")
    assert "张三" not in str(refused.value)
