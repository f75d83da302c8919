"""Subject pseudonyms: who an event is about, without saying who.

Every event carries the subject (the victim) as a pseudonym of one canonical identifier — the resident
ID number, else a passport or travel permit, else a phone number, else name and birth date. It is the
Kafka key (per-subject order) and what the hub correlates on, so the same person must give the same
pseudonym however an agency typed the identifier; hence the normalization below (full-width characters,
spaces and separators, lower-case x, 15-digit first-generation ID numbers, +86 and 0086).

Nothing a person typed refuses a lead (:func:`identify`): an identifier that stays invalid is flagged
(a closed vocabulary, :data:`schemas.events.IdentifierFlag`) and the subject falls back to the next
valid one; the person's other valid identifiers travel as ``links`` beside the subject, so the hub
links leads that were keyed by different identifiers of one person.

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
from typing import Any, Final, Literal, Protocol, get_args

from schemas.events import IdentifierFlag
from services.kernel.errors import UsageError

__all__ = [
    "MAX_LINKS",
    "MAX_PSEUDONYM_KEY_VERSION",
    "PSEUDONYM_PATTERN",
    "PSEUDONYM_SECRET_LENGTH",
    "EpochPseudonyms",
    "IdProblem",
    "Identified",
    "Identifier",
    "IdentifierKind",
    "ProblemReason",
    "PseudonymKey",
    "Pseudonymizer",
    "canonical_id_number",
    "canonical_name_birth",
    "canonical_phone",
    "canonical_travel_document",
    "canonical_unlinked",
    "flag_identifiers",
    "id_check_digit",
    "id_number_check_digit_ok",
    "identify",
    "identify_person",
    "new_pseudonym_key",
    "normalize_subject",
    "oblivious_pseudonym",
    "oprf_input",
    "pseudonym",
    "pseudonym_epochs",
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
_DOC: Final = "doc:"
_AS_GIVEN: Final = "asgiven:"
_UNLINKED: Final = "unlinked:"
_KINDS: Final = (_CNID, _PHONE, _NAMEBIRTH, _DOC, _AS_GIVEN, _UNLINKED)

# GB 11643-1999 check digit: ISO 7064 MOD 11-2 over the first 17 digits.
_ID_WEIGHTS: Final = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK: Final = "10X98765432"
_ID_SHAPE: Final = re.compile(r"[0-9]{17}[0-9X]")

# What people type inside numbers: dashes (also the full-width and long ones NFKC leaves), dots, slashes,
# middle dots and parentheses; whitespace is removed separately.
_SEPARATORS: Final = re.compile(r"[\-\u2010-\u2015\u2212.\u00b7/()]")
_MOBILE: Final = re.compile(r"(?:\+86|0086|86)?(1[3-9][0-9]{9})")
# Area code: 0 and 2-3 digits (010, 0755); then a 7-8 digit local number.
_LANDLINE: Final = re.compile(r"0[1-9][0-9]{8,10}")
_LANDLINE_WITH_COUNTRY: Final = re.compile(r"(?:\+86|0086)([1-9][0-9]{8,10})")
_TRAVEL_DOCUMENT: Final = re.compile(r"[A-Z0-9]{5,20}")

# The separator in transliterated names (阿依古丽·买买提) is typed with many look-alike dots.
_NAME_DOTS: Final = str.maketrans(dict.fromkeys("\u30fb\u2022\u2027\u2219\u22c5", "\u00b7"))


def id_check_digit(first17: str) -> str:
    """The GB 11643-1999 check digit (``0``-``9`` or ``X``) for the first 17 digits of an ID number."""
    if len(first17) != 17 or not first17.isascii() or not first17.isdigit():
        raise UsageError("a check digit is computed over exactly 17 ASCII digits")
    total = sum(int(digit) * weight for digit, weight in zip(first17, _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11]


def _clean(raw: str) -> str:
    """NFKC-folded (full-width digits and letters become ASCII), upper-cased, without whitespace or the
    separators people type inside numbers (``-``, ``.``, ``/``, ``·``, parentheses)."""
    return _SEPARATORS.sub("", "".join(unicodedata.normalize("NFKC", raw).split())).upper()


IdProblem = Literal["shape", "birth_date", "check_digit"]
"""Why a resident ID number is not valid: not 18 (or 15) characters of digits and a final digit or X,
a birth date that is not a real date from 1900 on, or a check digit that does not match (mistyped)."""


def _id_number(raw: str) -> tuple[str, IdProblem | None]:
    """The cleaned 18-character number (a 15-digit first-generation number converted) and what is wrong
    with it, if anything."""
    number = _clean(raw)
    if len(number) == 15 and number.isascii() and number.isdigit():
        # First generation (GB 11643-1989): the year has two digits, all in the 1900s, and no check
        # digit. The second generation inserts "19" and appends the check digit.
        number = number[:6] + "19" + number[6:]
        number += id_check_digit(number)
    if _ID_SHAPE.fullmatch(number) is None:
        return number, "shape"
    year, month, day = int(number[6:10]), int(number[10:12]), int(number[12:14])
    try:
        date(year, month, day)
    except ValueError:
        return number, "birth_date"
    if year < 1900:
        return number, "birth_date"
    if id_check_digit(number[:17]) != number[17]:
        return number, "check_digit"
    return number, None


def canonical_id_number(raw: str) -> str:
    """``cnid:`` and the 18-character resident ID number (居民身份证号码), checked and upper-cased.

    Full-width characters are folded (NFKC), whitespace and separators are removed anywhere, so
    ``１１０１…ｘ`` and ``110101-19900307-123X`` are accepted; a 15-digit first-generation number is
    converted to its 18-character form. The birth date must be a real date from 1900 on. A wrong check
    digit is accepted here (see :func:`id_number_check_digit_ok`); :func:`identify` treats it as
    unverified and falls back to the person's other identifiers.
    """
    number, problem = _id_number(raw)
    if problem == "shape":
        raise UsageError("a resident ID number must be 17 digits followed by a digit or X (or 15 digits)")
    if problem == "birth_date":
        raise UsageError(
            "the resident ID number's birth date (characters 7-14) is not a real date from 1900 on"
        )
    return _CNID + number


def id_number_check_digit_ok(canonical: str) -> bool:
    """Whether a ``cnid:`` identifier's check digit matches its first 17 digits (GB 11643-1999).

    False means the number was probably mistyped: :func:`identify` does not use it as an identifier.
    """
    number = canonical.removeprefix(_CNID)
    return _ID_SHAPE.fullmatch(number) is not None and id_check_digit(number[:17]) == number[17]


def canonical_phone(raw: str) -> str:
    """``phone:`` and the digits of a mainland mobile (11 digits) or landline (area code with its 0).

    Spaces, dashes, dots, slashes and parentheses are removed and full-width characters folded; a
    ``+86``, ``0086`` or ``86`` country prefix is dropped from mobiles (and ``+86``/``0086`` from a
    landline, whose area code then regains its 0), so ``+86 138 0000 0000`` and ``138-0000-0000``
    agree, as do ``+86 10 1234 5678`` and ``010-12345678``.
    """
    digits = _clean(raw)
    if not digits.isascii():
        raise UsageError("a phone number may contain only digits, spaces, dashes, parentheses and '+86'")
    mobile = _MOBILE.fullmatch(digits)
    if mobile is not None:
        return _PHONE + mobile.group(1)
    if _LANDLINE.fullmatch(digits) is not None:
        return _PHONE + digits
    abroad = _LANDLINE_WITH_COUNTRY.fullmatch(digits)
    if abroad is not None:
        return _PHONE + "0" + abroad.group(1)
    raise UsageError(
        "the phone number is neither a mainland mobile (11 digits starting 13-19, optionally with +86) "
        "nor a landline with its area code (such as 010-12345678 or 0755-1234567)"
    )


def canonical_travel_document(raw: str) -> str:
    """``doc:`` and the number of a passport or travel permit (护照, 港澳/台湾通行证, 回乡证, …),
    upper-cased, without spaces or separators: 5 to 20 letters and digits with at least 3 digits.

    The document's type is not part of it: Chinese documents carry their type in their letters (E, C,
    L, H, M, …), and two documents of different countries sharing a number is left to chance.
    """
    number = _clean(raw)
    if _TRAVEL_DOCUMENT.fullmatch(number) is None or sum(c.isdigit() for c in number) < 3:
        raise UsageError("a passport or travel permit number is 5 to 20 letters and digits")
    return _DOC + number


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


def canonical_unlinked(token: str) -> str:
    """``unlinked:<token>``: the subject of a lead that names no valid identifier and nothing specific
    enough to keep as given. ``token`` is unique to the lead (its event id), so the lead is delivered
    under a pseudonym of its own and linked to nobody."""
    if not token or not token.isascii():
        raise UsageError("an unlinked subject needs a token of ASCII characters (the event id)")
    return _UNLINKED + token


def _as_date(value: object) -> date:
    # Importers parse dates from text; a string or a datetime slipping through must not hash differently.
    if isinstance(value, datetime):
        return value.date()
    if not isinstance(value, date):
        raise UsageError("a birth date must be a datetime.date")
    return value


IdentifierKind = Literal["id_number", "travel_document", "phone", "name_birth"]
"""The kinds of identifier, strongest first: the order in which :func:`identify` picks a subject."""

ProblemReason = Literal["shape", "birth_date", "check_digit", "none_valid"]
"""Why an identifier was not used (``none_valid``: the person has no valid identifier at all)."""

MAX_LINKS: Final = 4
"""At most this many other identifiers of a person travel as ``links`` beside its subject."""

_MIN_AS_GIVEN: Final = 8  # letters and digits an invalid identifier needs to be kept as the subject
_MIN_DISTINCT_AS_GIVEN: Final = 5  # and different ones among them
_FLAG_OF: Final[dict[str, IdentifierFlag]] = {
    "id_number": "id_number_invalid",
    "travel_document": "travel_document_invalid",
    "phone": "phone_invalid",
}


@dataclass(frozen=True, slots=True)
class Identifier:
    """One valid identifier of a person: its kind and its canonical form (for :class:`Pseudonymizer`)."""

    kind: IdentifierKind
    canonical: str


@dataclass(frozen=True, slots=True)
class Identified:
    """What a person's identifiers come to (:func:`identify`).

    ``identifiers``: the valid ones, strongest first, without repeats. ``subject``: the canonical
    identifier the person's pseudonym is computed from: the strongest valid one; when none is valid,
    the first invalid one as given (``asgiven:<kind>:<cleaned>``, when it is made of at least 8 ASCII
    letters and digits, 5 of them different, so that the same typo links but neither a placeholder nor
    free text does), else
    ``None`` (the caller uses :func:`canonical_unlinked`). ``links``: the other valid identifiers (at
    most :data:`MAX_LINKS`), whose pseudonyms travel beside the subject so that the hub links the
    person's leads. ``flags``: what recipients should check, a closed vocabulary
    (:data:`schemas.events.IdentifierFlag`). ``problems``: (kind, reason) of each identifier not used,
    for a metric; never a value.
    """

    identifiers: tuple[Identifier, ...]
    subject: str | None
    flags: tuple[IdentifierFlag, ...]
    problems: tuple[tuple[IdentifierKind | Literal["subject"], ProblemReason], ...]

    @property
    def links(self) -> tuple[str, ...]:
        """The canonical identifiers of the person's other valid identifiers, at most :data:`MAX_LINKS`."""
        return tuple(i.canonical for i in self.identifiers if i.canonical != self.subject)[:MAX_LINKS]

    @property
    def canonicals(self) -> tuple[str, ...]:
        """The subject then the links: every canonical identifier to pseudonymize, in one batch."""
        return ((self.subject,) if self.subject is not None else ()) + self.links


def _given(value: object) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def identify(
    *,
    id_number: str | None = None,
    phone: str | None = None,
    name: str | None = None,
    birth_date: date | None = None,
    travel_document: str | None = None,
) -> Identified:
    """Every identifier of a person, normalized; the invalid ones flagged, never refused.

    Strongest first: the resident ID number (an ``id_number`` that starts with a letter and has the
    shape of a passport or permit number is taken as one, since the field holds "an identity document
    number"), the passport or travel permit, the phone, the name with the birth date. Blank strings count
    as not given (exports leave empty cells). A name without a birth date identifies nobody and is not a
    problem. Nothing here echoes a value.
    """
    valid: list[Identifier] = []
    problems: list[tuple[IdentifierKind | Literal["subject"], ProblemReason]] = []
    flags: set[IdentifierFlag] = set()
    as_given: list[str] = []

    def invalid(kind: IdentifierKind, reason: ProblemReason, cleaned: str) -> None:
        problems.append((kind, reason))
        flags.add("id_number_unverified" if reason == "check_digit" else _FLAG_OF[kind])
        # Kept as given only when specific enough that the same typo again means the same person: a
        # placeholder (00000000, 123123123) would merge strangers.
        # Only a number is kept, never free text (不详, 无法联系).
        signs = cleaned.removeprefix("+")
        number_like = signs.isascii() and signs.isalnum()
        if number_like and len(signs) >= _MIN_AS_GIVEN and len(set(signs)) >= _MIN_DISTINCT_AS_GIVEN:
            as_given.append(f"{_AS_GIVEN}{kind}:{cleaned}")

    documents = [d for d in (_given(travel_document),) if d is not None]
    if (raw_id := _given(id_number)) is not None:
        number, problem = _id_number(raw_id)
        if problem == "shape" and number[:1].isascii() and number[:1].isalpha():
            documents.insert(0, raw_id)  # a passport or permit number typed where the ID number goes
        elif problem is None:
            valid.append(Identifier("id_number", _CNID + number))
        else:
            invalid("id_number", problem, number)
    for raw_doc in documents:
        try:
            valid.append(Identifier("travel_document", canonical_travel_document(raw_doc)))
        except UsageError:
            invalid("travel_document", "shape", _clean(raw_doc))
    if (raw_phone := _given(phone)) is not None:
        try:
            valid.append(Identifier("phone", canonical_phone(raw_phone)))
        except UsageError:
            invalid("phone", "shape", _clean(raw_phone))
    if (named := _given(name)) is not None and birth_date is not None:
        valid.append(Identifier("name_birth", canonical_name_birth(named, birth_date)))
    unique = tuple({i.canonical: i for i in reversed(valid)}.values())[::-1]
    subject = unique[0].canonical if unique else (as_given[0] if as_given else None)
    if not unique:
        flags.add("no_valid_identifier")
        problems.append(("subject", "none_valid"))
    order = get_args(IdentifierFlag)
    return Identified(
        identifiers=unique,
        subject=subject,
        flags=tuple(sorted(flags, key=order.index)),
        problems=tuple(problems),
    )


def identify_person(person: Mapping[str, Any]) -> Identified:
    """:func:`identify` over a person as a lead's ``victim`` or a suspect is given (a mapping whose
    ``birth_date`` may be an ISO date string; values of the wrong type are left to the schema)."""
    birth = person.get("birth_date")
    if isinstance(birth, str):
        try:
            birth = date.fromisoformat(birth)
        except ValueError:
            birth = None  # the schema reports it
    if isinstance(birth, datetime):
        birth = birth.date()
    return identify(
        id_number=_given(person.get("id_number")),
        phone=_given(person.get("phone")),
        name=_given(person.get("name")),
        birth_date=birth if isinstance(birth, date) else None,
        travel_document=_given(person.get("travel_document")),
    )


def flag_identifiers(person: Mapping[str, Any], identified: Identified) -> dict[str, Any]:
    """``person`` with ``identifier_flags`` set from ``identified`` (and ``id_number_unverified`` when
    the ID number's check digit is wrong), so that its recipients know what to check."""
    out = dict(person)
    if identified.flags:
        out["identifier_flags"] = list(identified.flags)
    if "id_number_unverified" in identified.flags:
        out["id_number_unverified"] = True
    return out


def normalize_subject(
    *,
    id_number: str | None = None,
    phone: str | None = None,
    name: str | None = None,
    birth_date: date | None = None,
    travel_document: str | None = None,
) -> str:
    """The canonical form of the strongest valid identifier given (:func:`identify`): ID number, else
    passport or travel permit, else phone, else name + birth date. An invalid identifier falls back to
    the next; :class:`UsageError` when none is valid. Messages never contain the identifier."""
    identified = identify(
        id_number=id_number, phone=phone, name=name, birth_date=birth_date, travel_document=travel_document
    )
    if identified.identifiers:
        return identified.identifiers[0].canonical
    if identified.problems[:-1]:
        raise UsageError("no valid subject identifier: every identifier given is invalid")
    if _given(name) is not None or birth_date is not None:
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


@dataclass(frozen=True, slots=True)
class EpochPseudonyms:
    """One identifier's pseudonym under the current key and, during a key transition, under the previous
    one (the pseudonymizer's previous key, or the sealed HMAC key of a domain moving to the
    pseudonymizer); ``previous`` is None outside a transition. A lead's subject is ``current``; its
    ``previous`` goes into the header's ``links`` so the hub carries the person's state over."""

    current: str
    previous: str | None = None


def pseudonym_epochs(pseudonymizer: Pseudonymizer, canonicals: Sequence[str]) -> list[EpochPseudonyms]:
    """Each identifier's :class:`EpochPseudonyms` from any pseudonymizer: one that knows epochs says
    both; any other (a sealed key with no transition, a test's key holder) has no previous epoch."""
    epochs = getattr(pseudonymizer, "epochs", None)
    if callable(epochs):
        found: list[EpochPseudonyms] = epochs(canonicals)
        return found
    return [EpochPseudonyms(p) for p in pseudonymizer.pseudonyms(canonicals)]


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
