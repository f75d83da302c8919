"""Subject pseudonyms: who an event is about, without saying who.

Every event carries the subject (the victim) as a pseudonym: a keyed HMAC-SHA256 of one canonical
identifier — the resident ID number, else a phone number, else name and birth date. It is the Kafka key
(per-subject order) and what the hub correlates on, so the same person must give the same pseudonym
however an agency typed the identifier; hence the normalization below.

Why keyed: a Chinese resident ID number has little entropy — a 6-digit region code, a birth date and a
3-digit sequence plus a check digit — so an unkeyed hash is reversed by enumerating a few billion
candidates, far fewer for a known district and age. Phone numbers and names with birth dates are no
better. The pseudonym key is therefore a secret, versioned and distributed sealed to participants by the
trust registry; it must never be published, logged or put in a header.

Oblivious pseudonyms (a domain whose registry names a pseudonymizer): the adapter blinds
:func:`oprf_input` of the canonical identifier, the pseudonymizer evaluates it with a key only it holds
(RFC 9497 VOPRF, :mod:`services.kernel.oprf`), and :func:`oblivious_pseudonym` turns the verified output
into the same ``p<version>.`` format. Nobody can compute one offline, so a pseudonym in a Kafka key or
header gives a dictionary attack nothing to run against. Both ways meet in :class:`Pseudonymizer`.

Nothing here echoes an identifier in an error message: identifiers are personal data.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Final, Protocol

from services.kernel.errors import UsageError

__all__ = [
    "MAX_PSEUDONYM_KEY_VERSION",
    "PSEUDONYM_PATTERN",
    "PSEUDONYM_SECRET_LENGTH",
    "PseudonymKey",
    "Pseudonymizer",
    "canonical_id_number",
    "canonical_name_birth",
    "canonical_phone",
    "flag_unverified_id",
    "id_check_digit",
    "id_number_check_digit_ok",
    "new_pseudonym_key",
    "normalize_subject",
    "oblivious_pseudonym",
    "oprf_input",
    "pseudonym",
    "pseudonymize",
]

PSEUDONYM_SECRET_LENGTH: Final = 32
MAX_PSEUDONYM_KEY_VERSION: Final = 999_999_999
"""Nine digits at most, as the wire schema's pseudonym pattern allows."""
PSEUDONYM_PATTERN: Final = r"^p[0-9]+\.[A-Za-z0-9_-]{43}$"
"""What :func:`pseudonym` returns: ``p<key version>.`` and 43 unpadded base64url characters."""

_DOMAIN: Final = b"lianfang-subject-v1\x00"
_OPRF_DOMAIN: Final = b"lianfang-subject-oprf-v1\x00"
_OUTPUT_DOMAIN: Final = b"lianfang-pseudonym-oprf-v1\x00"
_CNID: Final = "cnid:"
_PHONE: Final = "phone:"
_NAMEBIRTH: Final = "namebirth:"
_KINDS: Final = (_CNID, _PHONE, _NAMEBIRTH)

# GB 11643-1999 check digit: ISO 7064 MOD 11-2 over the first 17 digits.
_ID_WEIGHTS: Final = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK: Final = "10X98765432"
_ID_SHAPE: Final = re.compile(r"[0-9]{17}[0-9X]")

_PHONE_SEPARATORS: Final = re.compile(r"[\s\-()]")
_MOBILE: Final = re.compile(r"(?:\+86|0086|86)?(1[3-9][0-9]{9})")
# Area code: 0 and 2-3 digits (010, 0755); then a 7-8 digit local number.
_LANDLINE: Final = re.compile(r"0[1-9][0-9]{8,10}")

# The separator in transliterated names (阿依古丽·买买提) is typed with many look-alike dots.
_NAME_DOTS: Final = str.maketrans(dict.fromkeys("\u30fb\u2022\u2027\u2219\u22c5", "\u00b7"))


def id_check_digit(first17: str) -> str:
    """The GB 11643-1999 check digit (``0``-``9`` or ``X``) for the first 17 digits of an ID number."""
    if len(first17) != 17 or not first17.isascii() or not first17.isdigit():
        raise UsageError("a check digit is computed over exactly 17 ASCII digits")
    total = sum(int(digit) * weight for digit, weight in zip(first17, _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11]


def canonical_id_number(raw: str) -> str:
    """``cnid:`` and the 18-character resident ID number (居民身份证号码), checked and upper-cased.

    Full-width characters are folded (NFKC) and whitespace is removed anywhere, so ``１１０１…ｘ`` and
    ``110101 19900307 123X`` are accepted. The birth date must be a real date from 1900 on; 15-digit
    first-generation numbers are refused. A wrong check digit is accepted (see
    :func:`id_number_check_digit_ok`).
    """
    number = "".join(unicodedata.normalize("NFKC", raw).split()).upper()
    if len(number) == 15 and number.isascii() and number.isdigit():
        raise UsageError(
            "the resident ID number has 15 digits (first generation); give the 18-character number"
        )
    if _ID_SHAPE.fullmatch(number) is None:
        raise UsageError("a resident ID number must be 17 digits followed by a digit or X")
    year, month, day = int(number[6:10]), int(number[10:12]), int(number[12:14])
    try:
        date(year, month, day)
    except ValueError:
        valid = False
    else:
        valid = year >= 1900
    if not valid:
        raise UsageError(
            "the resident ID number's birth date (characters 7-14) is not a real date from 1900 on"
        )
    # A wrong check digit is not refused: a mandatory report must not bounce because a clerk mistyped one
    # digit. The caller flags it (id_number_check_digit_ok) so that someone checks the number.
    return _CNID + number


def id_number_check_digit_ok(canonical: str) -> bool:
    """Whether a ``cnid:`` identifier's check digit matches its first 17 digits (GB 11643-1999).

    False means the number was probably mistyped: it is still pseudonymized as given, and the event says
    the number is unverified, since the same person typed correctly gets another pseudonym.
    """
    number = canonical.removeprefix(_CNID)
    return _ID_SHAPE.fullmatch(number) is not None and id_check_digit(number[:17]) == number[17]


def canonical_phone(raw: str) -> str:
    """``phone:`` and the digits of a mainland mobile (11 digits) or landline (area code with its 0).

    Spaces, dashes and parentheses are removed and full-width characters folded; a ``+86``, ``0086`` or
    ``86`` country prefix is dropped from mobiles, so ``+86 138 0000 0000`` and ``138-0000-0000`` agree.
    """
    digits = _PHONE_SEPARATORS.sub("", unicodedata.normalize("NFKC", raw))
    if not digits.isascii():
        raise UsageError("a phone number may contain only digits, spaces, dashes, parentheses and '+86'")
    mobile = _MOBILE.fullmatch(digits)
    if mobile is not None:
        return _PHONE + mobile.group(1)
    if _LANDLINE.fullmatch(digits) is not None:
        return _PHONE + digits
    raise UsageError(
        "the phone number is neither a mainland mobile (11 digits starting 13-19, optionally with +86) "
        "nor a landline with its area code (such as 010-12345678 or 0755-1234567)"
    )


def canonical_name_birth(name: str, birth_date: date) -> str:
    """``namebirth:<name>|<YYYY-MM-DD>``: the weakest identifier, used when there is no ID or phone.

    The name is NFKC-folded, stripped of all whitespace (``张 三`` is ``张三``) and case-folded, and
    the dots separating transliterated names are unified to ``·``.
    """
    day = _as_date(birth_date)
    folded = "".join(unicodedata.normalize("NFKC", name).split()).casefold().translate(_NAME_DOTS)
    if not folded:
        raise UsageError("the subject's name is empty")
    return f"{_NAMEBIRTH}{folded}|{day.isoformat()}"


def _as_date(value: object) -> date:
    # Importers parse dates from text; a string or a datetime slipping through must not hash differently.
    if isinstance(value, datetime):
        return value.date()
    if not isinstance(value, date):
        raise UsageError("a birth date must be a datetime.date")
    return value


def flag_unverified_id(person: Mapping[str, Any]) -> dict[str, Any]:
    """``person`` with ``id_number_unverified`` set when its resident ID number's check digit is wrong.

    Such a number is accepted as given (a mandatory report never bounces for one mistyped digit); the
    flag tells the recipients to check it, since the person's correct number has another pseudonym.
    """
    out = dict(person)
    raw = out.get("id_number")
    if isinstance(raw, str) and raw.strip():
        try:
            canonical = normalize_subject(id_number=raw)
        except UsageError:
            return out  # not a resident ID number at all: pseudonymizing it reports that
        if not id_number_check_digit_ok(canonical):
            out["id_number_unverified"] = True
    return out


def normalize_subject(
    *,
    id_number: str | None = None,
    phone: str | None = None,
    name: str | None = None,
    birth_date: date | None = None,
) -> str:
    """The canonical form of the strongest identifier given: ID number, else phone, else name + birth.

    Blank strings count as not given (exports leave empty cells). An identifier that is given but
    invalid raises :class:`UsageError` rather than falling back to a weaker one: a silent fallback would
    split one person across two pseudonyms. Messages never contain the identifier.
    """
    if id_number is not None and id_number.strip():
        return canonical_id_number(id_number)
    if phone is not None and phone.strip():
        return canonical_phone(phone)
    named = name if name is not None and name.strip() else None
    if named is not None and birth_date is not None:
        return canonical_name_birth(named, birth_date)
    if named is not None or birth_date is not None:
        raise UsageError(
            "a name identifies a subject only together with a birth date; give both, "
            "or a resident ID number or phone number"
        )
    raise UsageError(
        "no subject identifier given: give a resident ID number, a phone number, or name and birth date"
    )


class Pseudonymizer(Protocol):
    """What computes pseudonyms: the sealed key of an older domain (:class:`PseudonymKey`), or the
    client of the oblivious pseudonymizer (``services.pseudonymizer.client``)."""

    def pseudonyms(self, canonicals: Sequence[str]) -> list[str]:
        """The pseudonym of each canonical identifier (from :func:`normalize_subject`), in order."""
        ...


def _check_canonical(canonical: str) -> None:
    if not canonical.startswith(_KINDS):
        raise UsageError(
            "pseudonyms are computed from canonical identifiers; pass them through normalize_subject() first"
        )


@dataclass(frozen=True, slots=True)
class PseudonymKey:
    """One version of the district's pseudonym key: 32 secret bytes. Its repr hides the secret."""

    version: int
    secret: bytes

    def __post_init__(self) -> None:
        version_ok = isinstance(self.version, int) and not isinstance(self.version, bool)
        if not version_ok or not 0 <= self.version <= MAX_PSEUDONYM_KEY_VERSION:
            raise UsageError(f"a pseudonym key version is an integer from 0 to {MAX_PSEUDONYM_KEY_VERSION}")
        if not isinstance(self.secret, bytes) or len(self.secret) != PSEUDONYM_SECRET_LENGTH:
            raise UsageError(f"a pseudonym key secret must be exactly {PSEUDONYM_SECRET_LENGTH} bytes")

    def __repr__(self) -> str:
        return f"PseudonymKey(version={self.version}, secret=<redacted>)"

    __str__ = __repr__

    def pseudonyms(self, canonicals: Sequence[str]) -> list[str]:
        return [pseudonym(self, canonical) for canonical in canonicals]


def new_pseudonym_key(version: int) -> PseudonymKey:
    """A fresh random pseudonym key (os.urandom) with the given version."""
    return PseudonymKey(version=version, secret=os.urandom(PSEUDONYM_SECRET_LENGTH))


def pseudonym(key: PseudonymKey, canonical: str) -> str:
    """``p<version>.`` and the unpadded base64url HMAC-SHA256 of a canonical identifier.

    ``canonical`` must come from :func:`normalize_subject` (or a ``canonical_*`` function); raw input is
    refused, since hashing it would give a person as many pseudonyms as ways to type them.
    """
    _check_canonical(canonical)
    mac = hmac.new(key.secret, _DOMAIN + canonical.encode("utf-8"), hashlib.sha256).digest()
    return f"p{key.version}." + base64.urlsafe_b64encode(mac).decode("ascii").rstrip("=")


def pseudonymize(
    key: PseudonymKey,
    *,
    id_number: str | None = None,
    phone: str | None = None,
    name: str | None = None,
    birth_date: date | None = None,
) -> str:
    """Normalize the identifiers as :func:`normalize_subject` does, then return their pseudonym."""
    canonical = normalize_subject(id_number=id_number, phone=phone, name=name, birth_date=birth_date)
    return pseudonym(key, canonical)


def oprf_input(canonical: str) -> bytes:
    """The OPRF input of a canonical identifier: what an adapter blinds (domain-separated from the
    keyed HMAC's input, so the two kinds of pseudonym never share a value)."""
    _check_canonical(canonical)
    return _OPRF_DOMAIN + canonical.encode("utf-8")


def oblivious_pseudonym(version: int, output: bytes) -> str:
    """``p<version>.`` and the unpadded base64url SHA-256 of a verified OPRF output (64 bytes).

    The output already needs the pseudonymizer's key; hashing it (domain-separated) fits it to the
    pseudonym's one format (:data:`PSEUDONYM_PATTERN`), so the subject stays checkable as before.
    """
    if (
        not isinstance(version, int)
        or isinstance(version, bool)
        or not 0 <= version <= MAX_PSEUDONYM_KEY_VERSION
    ):
        raise UsageError(f"a pseudonymizer key version is an integer from 0 to {MAX_PSEUDONYM_KEY_VERSION}")
    if len(output) != 64:
        raise UsageError("an OPRF output is 64 bytes")
    digest = hashlib.sha256(_OUTPUT_DOMAIN + output).digest()
    return f"p{version}." + base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")
