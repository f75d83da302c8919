"""Types shared by every wire model: the strict base model, ids, pseudonyms and the closed vocabularies.

The vocabularies are ``Literal``s so that a value outside them is rejected at the edge and the JSON
Schema export lists them for agency systems written in other languages.
"""

from __future__ import annotations

import binascii
from typing import Annotated, Final, Literal, TypeVar

import pybase64
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

__all__ = [
    "PARTICIPANT_ID_PATTERN",
    "PSEUDONYM_PATTERN",
    "Category",
    "Channel",
    "EventId",
    "ParticipantId",
    "Pseudonym",
    "SchemaVersion",
    "Town",
    "UniqueList",
    "Urgency",
    "WireModel",
    "b64decode_strict",
    "b64encode",
]

_T = TypeVar("_T")


def b64decode_strict(text: str) -> bytes:
    """Standard base64 decoded strictly: the RFC 4648 alphabet, padding where it belongs, nothing else
    (no whitespace, no URL-safe characters), in libbase64's SIMD code: what
    ``base64.b64decode(..., validate=True)`` accepts, alike, less padding after a full quantum
    (``AAAA=``), which no encoder writes (``tests/unit/test_b64d.py``). Raises ``ValueError`` naming the
    rule, never the text."""
    try:
        return pybase64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):  # ValueError: text that is not ASCII
        raise ValueError("not standard base64 (its alphabet only, padded)") from None


def b64encode(data: bytes) -> str:
    """Standard base64 with padding, as text."""
    return pybase64.b64encode(data).decode("ascii")


class WireModel(BaseModel):
    """Base of every wire model: strict (no coercion), immutable, and unknown fields are an error.

    ``NaN`` and infinities are refused (JSON has no such numbers and they slip past range checks), and a
    validation error's text does not repeat the input, which may be personal data. JSON parsed into
    one leaves only its keys in pydantic-core's string cache (one for the whole process): the values,
    ids, pseudonyms and times seen once, would only fill it.
    """

    model_config = ConfigDict(
        strict=True,
        frozen=True,
        extra="forbid",
        allow_inf_nan=False,
        hide_input_in_errors=True,
        cache_strings="keys",
    )


PARTICIPANT_ID_PATTERN: Final = r"^[a-z][a-z_]*(\.[a-z0-9_]+)?$"
ParticipantId = Annotated[
    str,
    Field(
        pattern=PARTICIPANT_ID_PATTERN,
        max_length=64,
        description="参与方标识 / participant id, e.g. `police`, `mediation.town01`",
    ),
]

# "p<key version>." and the unpadded base64url of a 32-byte HMAC-SHA256 (services/kernel/pseudonym.py).
# Tighter than that module's PSEUDONYM_PATTERN on purpose: the version has no leading zeros and the last
# of the 43 characters carries only 4 bits, so one HMAC has exactly one spelling and the hub, which
# correlates by string equality, cannot be given two spellings of one person.
PSEUDONYM_PATTERN: Final = r"^p(0|[1-9][0-9]{0,8})\.[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]$"
Pseudonym = Annotated[
    str,
    Field(
        pattern=PSEUDONYM_PATTERN,
        description="当事人假名 / subject pseudonym: `p<key version>.` and a keyed HMAC-SHA256 in base64url",
    ),
]

EventId = Annotated[
    str,
    Field(
        pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
        description="事件标识 / id of an event: a UUID in canonical lower-case form",
    ),
]

Town = Annotated[
    str,
    Field(
        pattern=r"^[a-z0-9_]{1,32}$",
        description="镇街 / town or street (sub-district) id, as in `mediation.<town>`",
    ),
]

Category = Literal[
    "domestic_violence",  # 家庭暴力
    "sexual_assault",  # 性侵害
    "child_abuse",  # 虐待儿童
    "neglect_of_guardianship",  # 监护缺失 / 怠于履行监护职责
    "trafficking",  # 拐卖
    "employment_discrimination",  # 就业性别歧视
    "child_labour",  # 使用童工
    "other",  # 其他
]

Channel = Literal[
    "hotline_12338",  # 12338 妇女维权热线
    "walk_in",  # 来访
    "police_call",  # 110 报警
    "hospital",  # 医院
    "school",  # 学校
    "community",  # 社区、村居
    "online",  # 网络
]

Urgency = Literal["immediate", "urgent", "routine"]  # 立即 / 紧急 / 一般


def _integer_not_boolean(value: object) -> object:
    # A Literal[1] alone accepts JSON `true` and `1.0` (they compare equal to 1); a version is an integer.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("schema_version must be an integer")
    return value


SchemaVersion = BeforeValidator(_integer_not_boolean)
"""Put in ``Annotated[Literal[n], SchemaVersion]`` so that only the integer ``n`` is accepted."""


def _unique(items: list[_T]) -> list[_T]:
    # Items are strings or frozen models, hence hashable. The message names the position, not the value,
    # so that it never echoes personal data. The set alone says whether there is a repeat; the walk
    # finds where.
    if len(set(items)) == len(items):
        return items
    seen: set[_T] = set()
    for index, item in enumerate(items):
        if item in seen:
            raise ValueError(f"items must be unique; item {index} repeats an earlier one")
        seen.add(item)
    return items


UniqueList = Annotated[list[_T], AfterValidator(_unique), Field(json_schema_extra={"uniqueItems": True})]
"""A JSON array whose items may not repeat (a set with a stable order, so its bytes are reproducible)."""
