"""Subject pseudonyms: normalization of identifiers and the keyed hash. Synthetic identifiers only."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from datetime import date
from typing import get_args

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from schemas.events import IdentifierFlag
from services.kernel.errors import UsageError
from services.kernel.pseudonym import (
    MAX_LINKS,
    PSEUDONYM_PATTERN,
    PseudonymKey,
    canonical_phone,
    canonical_travel_document,
    canonical_unlinked,
    flag_identifiers,
    id_check_digit,
    id_number_check_digit_ok,
    identify,
    identify_person,
    new_pseudonym_key,
    normalize_subject,
    pseudonym,
    pseudonymize,
)

pytestmark = pytest.mark.unit

FIXED_KEY = PseudonymKey(version=1, secret=b"\x01" * 32)
PATTERN = re.compile(r"^p[0-9]+\.[A-Za-z0-9_-]{43}$")

# Written out by hand from GB 11643-1999 so the module's check digit is checked independently.
WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
CHECK = "10X98765432"


def with_check_digit(first17: str) -> str:
    return first17 + CHECK[sum(int(d) * w for d, w in zip(first17, WEIGHTS, strict=True)) % 11]


ID_ENDING_X = "11010119850512007X"  # region 110101, born 1985-05-12, sequence 007
ID_ENDING_DIGIT = with_check_digit("11010119900307123")  # = 110101199003071233


def reference_pseudonym(secret: bytes, version: int, canonical: str) -> str:
    mac = hmac.new(secret, b"lianfang-subject-v1\x00" + canonical.encode("utf-8"), hashlib.sha256).digest()
    return f"p{version}." + base64.urlsafe_b64encode(mac).decode().rstrip("=")


def test_the_synthetic_ids_have_the_check_digits_the_standard_gives() -> None:
    assert with_check_digit(ID_ENDING_X[:17]) == ID_ENDING_X
    assert ID_ENDING_DIGIT == "110101199003071233"
    assert id_check_digit(ID_ENDING_X[:17]) == "X"
    assert id_check_digit(ID_ENDING_DIGIT[:17]) == "3"


def test_a_known_answer_with_a_fixed_key_matches_an_independent_hmac() -> None:
    canonical = normalize_subject(id_number=ID_ENDING_DIGIT)
    assert canonical == "cnid:110101199003071233"
    expected = "p1.CGsxFqY0R9zoJjf3RQslfNQUIKz2AzSZ4fMP0bgCuuY"
    assert reference_pseudonym(b"\x01" * 32, 1, canonical) == expected
    assert pseudonym(FIXED_KEY, canonical) == expected
    assert pseudonymize(FIXED_KEY, id_number=ID_ENDING_DIGIT) == expected


def test_an_id_ending_in_x_and_in_lower_case_x_give_the_same_pseudonym() -> None:
    upper = pseudonymize(FIXED_KEY, id_number=ID_ENDING_X)
    lower = pseudonymize(FIXED_KEY, id_number=ID_ENDING_X.lower())
    assert upper == lower
    assert normalize_subject(id_number=ID_ENDING_X.lower()) == "cnid:" + ID_ENDING_X


def test_full_width_digits_and_surrounding_whitespace_normalize() -> None:
    full_width = ID_ENDING_X.translate(str.maketrans("0123456789X", "０１２３４５６７８９Ｘ"))
    assert normalize_subject(id_number=f"\u3000 {full_width}\t\n") == "cnid:" + ID_ENDING_X
    assert normalize_subject(id_number=full_width.replace("Ｘ", "ｘ")) == "cnid:" + ID_ENDING_X


@pytest.mark.parametrize(
    ("number", "reason"),
    [
        pytest.param(with_check_digit("11010119900230123"), "birth_date", id="the 30th of February"),
        pytest.param(with_check_digit("11010118991231123"), "birth_date", id="a birth year before 1900"),
        pytest.param(ID_ENDING_X[:17], "shape", id="seventeen characters"),
        pytest.param("11010119850512O07X", "shape", id="a letter O for a zero"),
        pytest.param(ID_ENDING_X[:17] + "3", "check_digit", id="a wrong check digit"),
    ],
)
def test_an_invalid_id_number_is_flagged_and_the_subject_falls_back_to_the_phone(
    number: str, reason: str
) -> None:
    identified = identify(id_number=number, phone="13800000000")
    assert identified.subject == "phone:13800000000"
    assert identified.links == ()
    flag = "id_number_unverified" if reason == "check_digit" else "id_number_invalid"
    assert identified.flags == (flag,)
    assert identified.problems == (("id_number", reason),)
    assert normalize_subject(id_number=number, phone="13800000000") == "phone:13800000000"
    assert number not in repr(identified.problems) + repr(identified.flags)


def test_a_normalize_subject_with_only_an_invalid_identifier_is_refused_without_echoing_it() -> None:
    number = with_check_digit("11010119900230123")
    with pytest.raises(UsageError, match="invalid") as caught:
        normalize_subject(id_number=number)
    assert number not in str(caught.value)
    assert number[:14] not in str(caught.value)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("110101850512007", id="fifteen digits"),
        pytest.param("１１０１０１８５０５１２００７", id="fifteen full-width digits"),
        pytest.param("110101 850512 007", id="fifteen digits with spaces"),
    ],
)
def test_a_first_generation_number_becomes_its_eighteen_character_form(raw: str) -> None:
    # 110101-850512-007: born 1985-05-12; "19" goes into the year and the check digit is computed.
    assert normalize_subject(id_number=raw) == "cnid:" + ID_ENDING_X
    assert identify(id_number=raw).flags == ()


def test_a_first_generation_number_with_an_impossible_birth_date_is_flagged() -> None:
    assert identify(id_number="110101850230007", phone="13800000000").flags == ("id_number_invalid",)


@pytest.mark.parametrize(
    "raw",
    [
        "110101-19850512-007X",
        "110101.19850512.007x",
        "110101/19850512/007X",
        "１１０１０１－１９８５０５１２－００７ｘ",
        "(110101) 19850512 007 X",
    ],
)
def test_separators_inside_an_id_number_are_removed(raw: str) -> None:
    assert normalize_subject(id_number=raw) == "cnid:" + ID_ENDING_X


@pytest.mark.parametrize(
    "raw",
    [
        "+86 138 0000 0000",
        "138-0000-0000",
        "8613800000000",
        "008613800000000",
        "(+86) 138 0000 0000",
        "0086-138-0000-0000",
        "１３８　００００　００００",
        "+86 138.0000.0000",
        "138–0000–0000",
    ],
)
def test_every_way_of_writing_a_mobile_gives_one_pseudonym(raw: str) -> None:
    assert normalize_subject(phone=raw) == "phone:13800000000"
    assert pseudonymize(FIXED_KEY, phone=raw) == pseudonymize(FIXED_KEY, phone="13800000000")


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("010-12345678", "phone:01012345678"),
        ("(0755) 1234567", "phone:07551234567"),
        ("０７５５－１２３４５６７８", "phone:075512345678"),
        ("+86 10 1234 5678", "phone:01012345678"),
        ("0086 (755) 1234-5678", "phone:075512345678"),
    ],
)
def test_a_landline_keeps_its_area_code_and_loses_its_punctuation(raw: str, canonical: str) -> None:
    assert canonical_phone(raw) == canonical


@pytest.mark.parametrize(
    "raw", ["12800000000", "1380000000", "+1 415 555 0100", "400-123-4567", "138 0000 0000 转 12"]
)
def test_a_phone_that_is_neither_mobile_nor_landline_is_flagged_and_not_echoed(raw: str) -> None:
    with pytest.raises(UsageError, match="phone number") as caught:
        canonical_phone(raw)
    assert raw not in str(caught.value)
    identified = identify(phone=raw, name="张三", birth_date=date(1990, 3, 7))
    assert identified.subject == "namebirth:张三|1990-03-07"
    assert identified.flags == ("phone_invalid",)
    assert identified.problems == (("phone", "shape"),)


def test_the_id_number_takes_precedence_over_phone_and_name() -> None:
    both = pseudonymize(FIXED_KEY, id_number=ID_ENDING_X, phone="13800000000", name="张三", birth_date=None)
    assert both == pseudonymize(FIXED_KEY, id_number=ID_ENDING_X)
    assert both != pseudonymize(FIXED_KEY, phone="13800000000")


def test_the_phone_takes_precedence_over_name_and_birth_date() -> None:
    canonical = normalize_subject(phone="13800000000", name="张三", birth_date=date(1990, 3, 7))
    assert canonical == "phone:13800000000"


def test_blank_identifiers_count_as_absent() -> None:
    assert normalize_subject(id_number="  ", phone="", name="张三", birth_date=date(1990, 3, 7)) == (
        "namebirth:张三|1990-03-07"
    )


@pytest.mark.parametrize("name", ["张三", "张 三", " 张\u3000三 ", "张\t三"])
def test_the_name_and_birth_fallback_ignores_spaces(name: str) -> None:
    assert normalize_subject(name=name, birth_date=date(1990, 3, 7)) == "namebirth:张三|1990-03-07"


def test_the_name_fallback_folds_latin_case_full_width_and_name_dots() -> None:
    birth = date(2012, 1, 2)
    assert normalize_subject(name="Ｍａｒｙ Smith", birth_date=birth) == "namebirth:marysmith|2012-01-02"
    assert normalize_subject(name="阿依古丽・买买提", birth_date=birth) == normalize_subject(
        name="阿依古丽·买买提", birth_date=birth
    )


@pytest.mark.parametrize(
    "identifiers",
    [
        pytest.param({}, id="nothing at all"),
        pytest.param({"name": "张三"}, id="a name without a birth date"),
        pytest.param({"birth_date": date(1990, 3, 7)}, id="a birth date without a name"),
        pytest.param({"name": "  ", "birth_date": date(1990, 3, 7)}, id="a blank name"),
    ],
)
def test_without_a_usable_identifier_normalization_is_refused(identifiers: dict[str, object]) -> None:
    with pytest.raises(UsageError, match="identif"):
        normalize_subject(**identifiers)  # type: ignore[arg-type]


def test_different_key_versions_give_different_pseudonyms_with_the_version_in_the_prefix() -> None:
    secret = b"\x01" * 32
    one = pseudonymize(PseudonymKey(version=1, secret=secret), id_number=ID_ENDING_X)
    two = pseudonymize(PseudonymKey(version=2, secret=secret), id_number=ID_ENDING_X)
    rotated = pseudonymize(new_pseudonym_key(2), id_number=ID_ENDING_X)
    assert one.startswith("p1.")
    assert two.startswith("p2.")
    assert rotated.startswith("p2.")
    assert rotated != two
    assert one.split(".", 1)[1] == two.split(".", 1)[1]  # the version is a label; the key is what differs


def test_a_keys_repr_has_no_secret() -> None:
    key = new_pseudonym_key(7)
    for text in (repr(key), str(key), f"{key}"):
        assert "version=7" in text
        assert key.secret.hex() not in text
        assert repr(key.secret) not in text
        assert base64.b64encode(key.secret).decode() not in text


@pytest.mark.parametrize(
    ("version", "secret"),
    [
        (1, b"\x01" * 31),
        (1, b"\x01" * 33),
        (-1, b"\x01" * 32),
        (True, b"\x01" * 32),
        (1_000_000_000, b"\x01" * 32),
    ],
)
def test_a_key_of_the_wrong_shape_is_refused(version: int, secret: bytes) -> None:
    with pytest.raises(UsageError):
        PseudonymKey(version=version, secret=secret)


def test_a_raw_identifier_is_not_hashed_without_normalization() -> None:
    with pytest.raises(UsageError, match="normalize_subject"):
        pseudonym(FIXED_KEY, ID_ENDING_X)


def test_the_published_pattern_is_the_one_pseudonyms_match() -> None:
    assert PATTERN.pattern == PSEUDONYM_PATTERN


synthetic_ids = st.builds(
    lambda born, sequence: with_check_digit(f"110101{born:%Y%m%d}{sequence:03d}"),
    st.dates(min_value=date(1900, 1, 1), max_value=date(2025, 12, 31)),
    st.integers(min_value=0, max_value=999),
)


@given(number=synthetic_ids, version=st.integers(min_value=0, max_value=10_000))
def test_normalizing_a_valid_id_is_idempotent_and_its_pseudonym_has_the_published_shape(
    number: str, version: int
) -> None:
    canonical = normalize_subject(id_number=number)
    assert canonical == "cnid:" + number
    assert normalize_subject(id_number=canonical.removeprefix("cnid:")) == canonical
    assert normalize_subject(id_number=number.lower()) == canonical
    key = PseudonymKey(version=version, secret=b"\x01" * 32)
    value = pseudonym(key, canonical)
    assert PATTERN.fullmatch(value)
    assert value == reference_pseudonym(key.secret, version, canonical)


@given(
    number=synthetic_ids, position=st.integers(min_value=0, max_value=17), digit=st.sampled_from("0123456789")
)
def test_changing_one_digit_of_a_valid_id_is_never_taken_for_the_person_and_always_flagged(
    number: str, position: int, digit: str
) -> None:
    altered = number[:position] + digit + number[position + 1 :]
    assume(altered != number)
    # MOD 11-2 catches every single-character substitution; some also break the birth date. Either way
    # the number is not used to link, the lead keeps its phone as subject, and recipients are told.
    identified = identify(id_number=altered, phone="13800000000")
    assert identified.subject == "phone:13800000000"
    assert identified.flags[0] in {"id_number_unverified", "id_number_invalid"}
    flagged = flag_identifiers({"name": "甲", "id_number": altered}, identified)
    assert flagged["id_number"] == altered  # kept as given
    assert flagged["identifier_flags"] == list(identified.flags)


@pytest.mark.parametrize(
    "number",
    [
        pytest.param(ID_ENDING_X[:17] + "3", id="a wrong check digit"),
        pytest.param(ID_ENDING_DIGIT[:-1] + "X", id="X where a digit belongs"),
    ],
)
def test_an_id_number_with_a_wrong_check_digit_is_kept_as_given_and_flagged_unverified(number: str) -> None:
    assert not id_number_check_digit_ok("cnid:" + number)
    identified = identify_person({"name": "甲", "id_number": number})
    assert identified.subject == "asgiven:id_number:" + number
    assert identified.flags == ("id_number_unverified", "no_valid_identifier")
    flagged = flag_identifiers({"name": "甲", "id_number": number}, identified)
    assert flagged == {
        "name": "甲",
        "id_number": number,
        "id_number_unverified": True,
        "identifier_flags": ["id_number_unverified", "no_valid_identifier"],
    }


def test_a_correct_id_number_is_not_flagged() -> None:
    assert id_number_check_digit_ok("cnid:" + ID_ENDING_X)
    identified = identify_person({"name": "甲", "id_number": ID_ENDING_X})
    assert flag_identifiers({"name": "甲", "id_number": ID_ENDING_X}, identified) == {
        "name": "甲",
        "id_number": ID_ENDING_X,
    }


def test_every_valid_identifier_of_a_person_is_a_link_beside_the_strongest() -> None:
    identified = identify_person(
        {
            "name": "张三",
            "id_number": ID_ENDING_X.lower(),
            "travel_document": "e 1234 5678",
            "phone": "+86 138-0000-0000",
            "birth_date": "1985-05-12",
        }
    )
    assert identified.subject == "cnid:" + ID_ENDING_X
    assert identified.links == ("doc:E12345678", "phone:13800000000", "namebirth:张三|1985-05-12")
    assert identified.canonicals == (identified.subject, *identified.links)
    assert identified.flags == ()


def test_a_mistyped_id_number_links_by_the_phone_that_the_correct_one_links() -> None:
    right = identify(id_number=ID_ENDING_X, phone="13800000000")
    wrong = identify(id_number=ID_ENDING_X[:16] + "8X", phone="138 0000 0000")
    assert right.links == ("phone:13800000000",)
    assert wrong.subject == "phone:13800000000"
    assert wrong.flags == ("id_number_unverified",)


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        pytest.param({"travel_document": "E12345678"}, "doc:E12345678", id="a passport"),
        pytest.param({"travel_document": "ｃ１２３４５６７８"}, "doc:C12345678", id="a full-width permit"),
        pytest.param({"travel_document": "CA 123-4567"}, "doc:CA1234567", id="a permit with separators"),
        pytest.param({"id_number": "H12345678"}, "doc:H12345678", id="a home-return permit as id_number"),
    ],
)
def test_passports_and_travel_permits_identify_a_person(given: dict[str, str], canonical: str) -> None:
    identified = identify_person({"name": "甲", **given})
    assert identified.subject == canonical
    assert identified.flags == ()


def test_a_travel_document_of_the_wrong_shape_is_flagged() -> None:
    identified = identify(travel_document="E1", phone="13800000000")
    assert identified.subject == "phone:13800000000"
    assert identified.flags == ("travel_document_invalid",)
    with pytest.raises(UsageError, match="passport"):
        canonical_travel_document("护照")


@pytest.mark.parametrize(
    "given",
    [
        pytest.param({"name": "王某"}, id="a name alone"),
        pytest.param({"name": "王某", "phone": "0"}, id="a phone too short to keep"),
        pytest.param({"name": "王某", "id_number": "000000000000000000"}, id="a placeholder ID number"),
        pytest.param({"name": "王某", "phone": "123123123123"}, id="a placeholder phone"),
        pytest.param({"name": "王某", "phone": "本人拒绝提供电话号码"}, id="free text for a phone"),
    ],
)
def test_a_person_with_nothing_specific_gets_no_subject_and_is_flagged(given: dict[str, str]) -> None:
    identified = identify_person(given)
    assert identified.subject is None
    assert identified.links == ()
    assert "no_valid_identifier" in identified.flags
    assert identified.problems[-1] == ("subject", "none_valid")


def test_an_unlinked_subject_is_made_of_the_event_id() -> None:
    assert canonical_unlinked("0190a0a0-0000-7000-8000-000000000000") == (
        "unlinked:0190a0a0-0000-7000-8000-000000000000"
    )
    assert pseudonym(FIXED_KEY, canonical_unlinked("a")) != pseudonym(FIXED_KEY, canonical_unlinked("b"))
    with pytest.raises(UsageError):
        canonical_unlinked("")


def test_the_same_identifier_twice_is_one_identifier() -> None:
    identified = identify(id_number="H12345678", travel_document="h 1234 5678")
    assert identified.identifiers == (identified.identifiers[0],)
    assert identified.links == ()


@given(
    id_number=st.none() | st.text(max_size=40),
    phone=st.none() | st.text(max_size=40),
    travel_document=st.none() | st.text(max_size=40),
    name=st.none() | st.text(max_size=20),
    birth_date=st.none() | st.dates(min_value=date(1900, 1, 1), max_value=date(2030, 12, 31)),
)
def test_whatever_a_person_typed_identify_answers_without_raising(
    id_number: str | None,
    phone: str | None,
    travel_document: str | None,
    name: str | None,
    birth_date: date | None,
) -> None:
    identified = identify(
        id_number=id_number, phone=phone, travel_document=travel_document, name=name, birth_date=birth_date
    )
    assert set(identified.flags) <= set(get_args(IdentifierFlag))
    assert len(identified.links) <= MAX_LINKS
    assert identified.subject not in identified.links
    assert len(set(identified.canonicals)) == len(identified.canonicals)
    for canonical in identified.canonicals:
        pseudonym(FIXED_KEY, canonical)  # every one is a canonical identifier
    assert (identified.subject is None) == (
        "no_valid_identifier" in identified.flags and not identified.canonicals
    )
