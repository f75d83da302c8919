"""The batch importers' pure parts: each format's mapping of a sample row, value maps, encodings, and
per-row errors that name the line and the column but never the data."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from services import cli
from services.importers import values
from services.importers.engine import DryRun, Summary, run_import
from services.importers.errors import FileFormatError
from services.importers.ledger import Ledger
from services.importers.mapping import Filtered, Mapper, Publication, Rejected
from services.importers.progress import Progress
from services.importers.reader import ExportFile, detect_encoding
from services.importers.spec import FormatSpec, fold, format_names, load_format
from services.kernel.pseudonym import Pseudonymizer, PseudonymKey, pseudonymize
from services.sdk.deferred import Recording
from tests.samples import generate as samples

pytestmark = pytest.mark.unit

SAMPLES = Path(samples.__file__).resolve().parent
NOW = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
KEY = PseudonymKey(version=1, secret=b"\x05" * 32)
AS = {
    "hotline_12338": "womens_federation",
    "police": "police",
    "hospital": "health",
    "school": "education",
    "court": "court",
    "mediation": "mediation.renhe",
}


def _ids(emit: str) -> str:
    return {
        "lead": "0190d0d0-0000-7000-8000-000000000001",
        "request": "0190d0d0-0000-7000-8000-000000000002",
    }.get(emit, "0190d0d0-0000-7000-8000-0000000000ff")


def mapped(
    fmt: str, file: str, line: int, participant: str | None = None
) -> list[Publication] | Filtered | Rejected:
    """The mapping's result for the row that starts on ``line`` of a sample file."""
    spec = load_format(fmt)
    with ExportFile.open(SAMPLES / file, spec) as export:
        row = next(r for r in export.lines() if r.number == line)
    assert row.cells is not None, row.problem
    mapper = Mapper(spec, participant=participant or AS[fmt], pseudonymizer=KEY, now=NOW)
    return mapper.map_row(row.cells, _ids)


def only_lead(result: object) -> dict[str, Any]:
    assert isinstance(result, list), result
    assert result[0].lead is not None
    return result[0].lead


def run_file(path: Path, fmt: str, participant: str | None = None) -> tuple[Summary, list[str]]:
    reports: list[str] = []
    with ExportFile.open(path, load_format(fmt)) as export:
        summary = run_import(
            export,
            participant=participant or AS[fmt],
            publisher=DryRun(),
            ledger=Ledger(None, participant=participant or AS[fmt]),
            now=NOW,
            report=reports.append,
        )
    return summary, reports


# --------------------------------------------------------------------------- the format files


def test_the_six_formats_load_and_name_what_they_publish() -> None:
    assert format_names() == ["court", "hospital", "hotline_12338", "mediation", "police", "school"]
    assert load_format("police").event_types() == ["lead.reported", "lead.action_taken"]
    assert load_format("court").event_types() == ["protection_order.requested", "protection_order.decided"]
    assert load_format("hospital").file == "jsonl"


def _spec(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "x",
        "title": "x",
        "file": "csv",
        "produces": "lead",
        "participants": ["police"],
        "date_formats": ["%Y-%m-%d"],
        "split": "、",
        "field": [{"column": "类别", "to": "category"}],
        "maps": {"category": {"家暴": "domestic_violence"}},
    }
    data.update(overrides)
    return data


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"field": [{"column": "A", "to": "victim.shoe_size"}]}, "unknown target 'victim.shoe_size'"),
        ({"maps": {"category": {"家暴": "domestic_abuse"}}}, "not one of the vocabulary"),
        ({"field": [{"column": "A", "to": "category", "map": "nope"}]}, "no map named 'nope'"),
        ({"key": ["案号"]}, "key column '案号' is not a mapped column"),
        ({"defaults": {"victim": {"eye_colour": "x"}}}, "unknown target 'victim.eye_colour'"),
        ({"field": [{"to": "category"}]}, "either `column` or `columns`"),
        (
            {"maps": {"yes_no": {"是": "yes"}}, "field": [{"column": "A", "to": "minor_flag"}]},
            "unknown target",
        ),
    ],
)
def test_a_mistake_in_a_format_file_is_refused_when_it_is_loaded(
    overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        FormatSpec.model_validate(_spec(**overrides))


def test_a_yes_no_map_must_map_to_booleans() -> None:
    data = _spec(field=[{"column": "A", "to": "requests_joint_meeting"}], maps={"yes_no": {"是": "yes"}})
    with pytest.raises(ValidationError, match="must map to true or false"):
        FormatSpec.model_validate(data)


# --------------------------------------------------------------------------- a sample row of each format


def test_a_hotline_call_becomes_a_lead_with_the_vocabulary_of_the_catalogue() -> None:
    lead = only_lead(mapped("hotline_12338", "hotline_12338.csv", 2))
    assert lead["category"] == "domestic_violence"
    assert lead["channel"] == "hotline_12338"
    assert lead["town"] == "houshayu"  # 后沙峪镇
    assert lead["occurred_at"] == "2026-09-30T19:04:00+08:00"  # 2026/09/30 19:04, Beijing time
    assert lead["victim"] == {
        "name": "赵某某",
        "sex": "female",
        "age": 41,
        "id_number": "110113198412220405",
        "phone": "13821990431",
        "is_minor": False,
    }
    assert lead["minor"] is False
    assert lead["suspects"] == [{"name": "杨某", "relationship": "spouse", "is_minor": False}]
    assert lead["risk_indicators"] == ["substance_abuse", "child_present"]  # 酗酒、儿童在场
    assert lead["requests_joint_meeting"] is False
    assert lead["narrative"].startswith("来电人称丈夫酒后多次殴打")
    assert "reporter_contact" not in lead


def test_a_hotline_caller_who_asks_for_a_joint_meeting_says_so_in_the_lead() -> None:
    lead = only_lead(mapped("hotline_12338", "hotline_12338.csv", 3))
    assert lead["requests_joint_meeting"] is True
    assert lead["risk_indicators"] == ["strangulation", "threats_to_kill", "escalation"]


def test_a_police_incident_with_a_warning_letter_is_a_lead_and_an_action_that_follows_it() -> None:
    result = mapped("police", "police.csv", 2)
    assert isinstance(result, list)
    lead, action = result
    data = lead.lead
    assert data is not None
    assert data["channel"] == "police_call"  # 报警方式 110
    assert data["town"] == "yangzhen"  # 杨镇: a one-character short name is not used, the full name is
    assert data["reporter_contact"] == "李某 13889152447"
    assert data["victim"]["id_number"] == "110113195812070561"
    assert data["victim"]["age"] == 67
    assert data["suspects"] == [
        {"name": "郭某某", "id_number": "110113198405134533", "relationship": "spouse", "is_minor": False}
    ]
    assert action.event_type == "lead.action_taken"
    assert action.event is not None
    assert action.event.model_dump(mode="json") == {
        "schema_version": 1,
        "lead_id": lead.event_id,
        "action": "warning_letter",
        "taken_at": "2026-08-19T19:37:00+08:00",
        "note": None,
    }
    assert action.context is not None
    assert action.context.lead_id == lead.event_id
    assert action.context.subject == pseudonymize(KEY, id_number="110113195812070561")
    assert action.urgency == lead.urgency == "urgent"


def test_a_police_word_for_a_category_extends_the_shared_map() -> None:
    lead = only_lead(mapped("police", "police.csv", 3))  # 殴打家庭成员, the suspect is the victim's son
    assert lead["category"] == "domestic_violence"
    assert lead["suspects"][0]["relationship"] == "relative"
    assert lead["victim"]["sex"] == "male"


def test_a_hospital_report_joins_its_description_and_names_the_doctor_as_reporter() -> None:
    lead = only_lead(mapped("hospital", "hospital.jsonl", 1))
    assert lead["channel"] == "hospital"
    assert lead["category"] == "domestic_violence"
    assert lead["town"] == "nanfaxin"
    assert lead["occurred_at"] == "2026-10-05T07:50:00+08:00"
    assert (
        lead["narrative"]
        == "伤情描述：左眼眶软组织挫伤，颈部可见指压痕。患者自述被丈夫掐颈。\n初步诊断：面部软组织挫伤"
    )
    assert lead["reporter_contact"] == "北京市顺义区医院 急诊科 李某医生"
    assert lead["victim"]["age"] == 42  # a JSON number
    assert lead["suspects"] == [{"name": "李某某", "relationship": "spouse", "is_minor": False}]


def test_a_hospital_visit_without_a_suspicion_is_not_a_lead() -> None:
    assert isinstance(mapped("hospital", "hospital.jsonl", 3), Filtered)  # 疑似家暴/性侵: 否


def test_a_school_report_is_about_a_minor_pupil_and_involves_the_school() -> None:
    lead = only_lead(mapped("school", "school.csv", 2))
    assert lead["channel"] == "school"
    assert lead["school_related"] is True
    assert lead["minor"] is True
    assert lead["victim"]["birth_date"] == "2012-02-04"
    assert lead["victim"]["age"] == 14
    assert lead["category"] == "domestic_violence"  # 疑似家暴
    assert lead["suspects"][0]["relationship"] == "parent"  # 父亲
    assert lead["reporter_contact"] == "顺义区第一中学 何某老师 13805158072"


def test_a_pupil_without_an_id_number_is_identified_by_name_and_birth_date() -> None:
    lead = only_lead(mapped("school", "school.csv", 4))
    assert "id_number" not in lead["victim"]
    assert lead["victim"]["birth_date"]


def test_a_court_case_with_a_ruling_is_a_request_and_a_decision_that_refers_to_it() -> None:
    result = mapped("court", "court.csv", 2)
    assert isinstance(result, list)
    request, decision = result
    assert request.event is not None
    assert decision.event is not None
    assert request.event.model_dump(mode="json") == {
        "schema_version": 1,
        "lead_id": None,
        "victim_pseudonym": pseudonymize(KEY, id_number="110113198008224340"),
        "respondent_pseudonym": pseudonymize(KEY, phone="13895695864"),  # no ID number: the phone
        "urgent": True,
        "requested_at": "2026-09-22T00:00:00+08:00",
        "grounds": "被申请人长期实施家庭暴力，近期持刀威胁，申请人面临现实危险。",
    }
    assert request.urgency == "urgent"
    assert decision.event.model_dump(mode="json") == {
        "schema_version": 1,
        "request_id": request.event_id,
        "granted": True,
        "decided_at": "2026-09-22T00:00:00+08:00",
        "valid_until": "2027-03-23T00:00:00+08:00",  # ahead of the clock: an expiry may be
        "terms": ["禁止被申请人实施家庭暴力", "禁止被申请人骚扰、跟踪、接触申请人及其相关近亲属"],
    }
    assert decision.context is not None
    assert decision.context.lead_id == request.event_id
    assert decision.context.category == "domestic_violence"
    assert decision.context.town == "yangzhen"


def test_a_refused_application_is_decided_without_terms_and_a_pending_or_withdrawn_one_is_only_requested() -> (
    None
):
    refused = mapped("court", "court.csv", 4)
    assert isinstance(refused, list)
    assert refused[1].event is not None
    assert refused[1].event.model_dump(mode="json")["granted"] is False
    for line in (5, 6):  # 裁定结果 empty (pending), 撤回 (withdrawn)
        result = mapped("court", "court.csv", line)
        assert isinstance(result, list)
        assert [p.emit for p in result] == ["request"]


def test_a_mediation_case_without_a_town_is_in_the_rooms_own_town() -> None:
    lead = only_lead(mapped("mediation", "mediation_gb18030.csv", 2))
    assert lead["town"] == "renhe"  # 镇街 empty; imported as mediation.renhe
    assert lead["channel"] == "community"  # 来源: 社区转介
    assert lead["category"] == "domestic_violence"
    assert lead["occurred_at"] == "2026-10-11T00:00:00+08:00"  # 2026年10月11日
    assert lead["victim"] == {
        "name": "吴某某",
        "sex": "female",
        "age": 62,
        "phone": "13899757228",
        "is_minor": False,
    }
    assert lead["narrative"].splitlines()[0] == "纠纷类型：婚姻纠纷"
    assert lead["suspects"] == [{"name": "陈某某", "relationship": "spouse", "is_minor": False}]


def test_a_mediation_case_without_domestic_violence_is_not_a_lead() -> None:
    assert isinstance(mapped("mediation", "mediation_gb18030.csv", 3), Filtered)


# --------------------------------------------------------------------------- value maps


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("是", True), ("否", False), (" 是 ", True), ("Y", True), ("ｙｅｓ", True), ("无", False), ("√", True)],
)
def test_yes_and_no_are_read_in_the_ways_exports_write_them(raw: str, expected: bool) -> None:
    assert values.mapped(raw, load_format("hotline_12338").maps["yes_no"], "yes_no") is expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2024/03/05 14:20", "2024-03-05T14:20:00+08:00"),
        ("2024-03-05", "2024-03-05T00:00:00+08:00"),
        ("2024-3-5 9:05", "2024-03-05T09:05:00+08:00"),
        ("2024年3月5日", "2024-03-05T00:00:00+08:00"),
        ("2024年3月5日 14:20", "2024-03-05T14:20:00+08:00"),
        ("20240305", "2024-03-05T00:00:00+08:00"),
        ("２０２４－０３－０５", "2024-03-05T00:00:00+08:00"),  # full-width
        ("2024-03-05T06:20:00+00:00", "2024-03-05T06:20:00+00:00"),  # ISO 8601 with its zone
    ],
)
def test_dates_in_the_usual_export_formats_are_beijing_time(raw: str, expected: str) -> None:
    formats = load_format("hotline_12338").date_formats
    assert values.moment(raw, formats, now=NOW).isoformat() == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("2024/13/45", "not a date"),
        ("昨天", "not a date"),
        ("2027-01-01", "in the future"),
        ("1899-01-01", "1900"),
    ],
)
def test_a_date_that_cannot_be_right_is_refused(raw: str, reason: str) -> None:
    with pytest.raises(values.CellError, match=reason):
        values.moment(raw, load_format("hotline_12338").date_formats, now=NOW)


@pytest.mark.parametrize(
    ("raw", "town"),
    [("仁和镇", "renhe"), ("仁和", "renhe"), ("renhe", "renhe"), ("北京市顺义区仁和镇", "renhe"),
     ("杨镇", "yangzhen"), ("胜利街道", "shengli"), (" 胜利 ", "shengli"), ("大孙各庄", "dasungezhuang")],
)  # fmt: skip
def test_towns_are_found_by_their_chinese_name_short_name_or_id(raw: str, town: str) -> None:
    assert values.town(raw) == town


@pytest.mark.parametrize("raw", ["朝阳区", "杨", "张", "仁和村"])
def test_a_place_outside_the_district_or_a_one_character_stub_is_not_a_town(raw: str) -> None:
    with pytest.raises(values.CellError, match="not a town"):
        values.town(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("110113198412220405", "110113198412220405"), ("１１０１１３１９８４１２２２０４０５", "110113198412220405"),
     ("110113 19841222 0405", "110113198412220405")],
)  # fmt: skip
def test_id_numbers_are_checked_and_normalized(raw: str, expected: str) -> None:
    assert values.id_number(raw) == expected


def test_a_first_generation_id_number_is_imported_in_its_eighteen_character_form() -> None:
    assert values.id_number("110113841222040") == "110113198412220405"


@pytest.mark.parametrize(
    "raw",
    ["110113198402300405", "11011319841222040", " E1234 "],
    ids=["not a real date", "17 digits", "a passport"],
)
def test_an_id_number_the_checks_refuse_is_imported_as_given_for_the_sdk_to_flag(raw: str) -> None:
    assert values.id_number(raw) == raw.strip()


def test_a_phone_that_is_no_phone_number_is_imported_as_given_for_the_sdk_to_flag() -> None:
    assert values.phone(" 12 ") == "12"


def test_an_id_number_with_a_wrong_check_digit_is_imported_as_given() -> None:
    assert values.id_number("110113198412220406") == "110113198412220406"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("138-2199-0431", "13821990431"), ("+86 138 2199 0431", "13821990431"), ("010-69441234", "01069441234")],
)
def test_phones_are_normalized_to_their_digits(raw: str, expected: str) -> None:
    assert values.phone(raw) == expected


def test_ages_may_say_years() -> None:
    assert values.integer("34岁") == 34
    assert values.integer("１２") == 12
    with pytest.raises(values.CellError):
        values.integer("三十")


# --------------------------------------------------------------------------- errors name the line, not the data

ERRORS = {
    "hotline_12338_with_errors.csv": {
        6: "年龄 disagrees with the birth date",  # its ID number's check digit is wrong too: not refused
        8: "问题类别 has a value that is not in the 'category' map",
        9: "来电时间 is not a date",
        10: "来电人姓名 is empty",
        11: "年龄 disagrees with the birth date",
        12: "所在镇街 is not a town or street of the district",
    },
    "police_with_errors.csv": {
        7: "警情类别 has a value that is not in the 'category' map",
        8: "发案地点所属镇街 is empty",
        9: "接警时间 is not a date",
    },
    "hospital_with_errors.jsonl": {
        5: "年龄 is not a single value",
        6: "就诊时间 is not a date",
        7: "患者姓名 is missing",
        8: "is not valid JSON",
    },
    "school_with_errors.csv": {
        5: "线索类别 has a value that is not in the 'category' map",
        6: "发现情况 is empty",
        7: "年龄 disagrees with the birth date",
    },
    "court_with_errors.csv": {
        2: "valid_until must be later than decided_at (裁定日期 = decided_at, 有效期至 = valid_until)",
        3: "裁定结果 is empty, but the row has the other half of a ruling",
        4: "the applicant has no identifier: give 申请人身份证号 or 申请人电话",
        5: "申请事由 is empty",
        6: "裁定结果 has a value that is not in the 'decision' map",
    },
    "mediation_with_errors_gb18030.csv": {
        2: "是否涉及家暴 has a value that is not in the 'yes_no' map",
    },
}
FORMAT_OF = {
    "hotline_12338_with_errors.csv": "hotline_12338",
    "police_with_errors.csv": "police",
    "hospital_with_errors.jsonl": "hospital",
    "school_with_errors.csv": "school",
    "court_with_errors.csv": "court",
    "mediation_with_errors_gb18030.csv": "mediation",
}


def _cells_of(path: Path, encoding: str) -> list[tuple[int, list[str]]]:
    """Every row's cells with the line it starts on (for checking that reports do not repeat them)."""
    text = path.read_bytes().decode(encoding).lstrip("\ufeff")
    if path.suffix == ".jsonl":
        out = []
        for number, line in enumerate(text.splitlines(), start=1):
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                out.append((number, [line]))
                continue
            out.append((number, [str(v) for v in data.values() if v not in (None, True, False)]))
        return out
    reader = csv.reader(io.StringIO(text, newline=""))
    rows = []
    for cells in reader:
        rows.append((reader.line_num, cells))
    return rows


@pytest.mark.parametrize("file", list(ERRORS))
def test_each_bad_row_is_reported_by_line_with_its_reason_and_the_good_rows_still_import(file: str) -> None:
    summary, reports = run_file(SAMPLES / file, FORMAT_OF[file])
    expected = ERRORS[file]
    by_line = {int(r.split(":")[0].removeprefix("line ")): r for r in reports}
    assert set(by_line) == set(expected), reports
    for line, fragment in expected.items():
        assert fragment in by_line[line], by_line[line]
    assert summary.rejected == len(expected)
    assert summary.imported + summary.filtered + summary.rejected == summary.rows


@pytest.mark.parametrize("file", list(ERRORS))
def test_no_report_repeats_a_cell_of_the_file(file: str) -> None:
    """Names, ID numbers, phones, dates and narratives stay out of the reports; only column names and
    the words of the format's value maps (家庭暴力, 是) may appear in them."""
    spec = load_format(FORMAT_OF[file])
    words = {fold(column) for column in spec.columns()} | {k for m in spec.maps.values() for k in m}
    _summary, reports = run_file(SAMPLES / file, FORMAT_OF[file])
    text = "\n".join(reports)
    encoding = "gb18030" if "gb18030" in file else "utf-8"
    checked = 0
    for line, cells in _cells_of(SAMPLES / file, encoding):
        if line == 1 and file.endswith(".csv"):
            continue  # the header
        for cell in (c.strip() for c in cells):
            if len(cell) < 2 or fold(cell) in words or (cell.isdigit() and len(cell) <= 3):
                continue
            checked += 1
            assert cell not in text, f"a report repeats a cell of {file}"
    assert checked > 20


# --------------------------------------------------------------------------- encodings and headers


def test_a_gb18030_export_is_detected_and_reads_the_same_as_its_utf8_copy(tmp_path: Path) -> None:
    source = SAMPLES / "mediation_gb18030.csv"
    assert detect_encoding(source) == "gb18030"
    copy = tmp_path / "mediation_utf8.csv"
    copy.write_bytes(b"\xef\xbb\xbf" + source.read_bytes().decode("gb18030").encode("utf-8"))
    assert detect_encoding(copy) == "utf-8"
    gb, _ = run_file(source, "mediation")
    utf, _ = run_file(copy, "mediation")
    assert (gb.encoding, utf.encoding) == ("gb18030", "utf-8")
    assert (gb.imported, gb.filtered) == (utf.imported, utf.filtered) == (6, 6)


def test_a_gb18030_file_read_as_utf8_stops_before_importing_and_says_which_option_to_use() -> None:
    with pytest.raises(FileFormatError, match=r"not valid UTF-8.*--encoding gb18030"):
        ExportFile.open(SAMPLES / "mediation_gb18030.csv", load_format("mediation"), "utf-8")


def test_a_utf8_byte_order_mark_does_not_hide_the_first_column() -> None:
    assert (SAMPLES / "hotline_12338.csv").read_bytes().startswith(b"\xef\xbb\xbf")
    with ExportFile.open(SAMPLES / "hotline_12338.csv", load_format("hotline_12338")) as export:
        assert export.header[0] == "工单编号"
        assert "工单编号" not in export.unused_columns


def _write_csv(path: Path, header: list[str], rows: list[list[str]], encoding: str = "utf-8") -> Path:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    path.write_bytes(out.getvalue().encode(encoding))
    return path


def _hotline_rows() -> tuple[list[str], list[list[str]]]:
    text = (SAMPLES / "hotline_12338.csv").read_text(encoding="utf-8-sig")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    return rows[0], rows[1:]


def test_a_file_without_its_header_row_stops_the_import_and_quotes_none_of_its_first_row(
    tmp_path: Path,
) -> None:
    _header, rows = _hotline_rows()
    path = _write_csv(tmp_path / "calls.csv", rows[0], rows[1:])  # the first data row where the header goes
    with pytest.raises(FileFormatError, match=r"is its header row missing\?") as refused:
        ExportFile.open(path, load_format("hotline_12338"))
    quoted = [cell for cell in rows[0] if len(cell) > 1 and cell in str(refused.value)]
    assert quoted == [], "a caller's data in an error message reaches logs"


def test_a_header_without_a_required_column_stops_the_import_and_lists_the_columns(tmp_path: Path) -> None:
    header, rows = _hotline_rows()
    keep = [i for i, name in enumerate(header) if name != "来电时间"]
    path = _write_csv(tmp_path / "calls.csv", [header[i] for i in keep], [[r[i] for i in keep] for r in rows])
    with pytest.raises(
        FileFormatError, match="has no column 来电时间, which the hotline_12338 format requires"
    ):
        ExportFile.open(path, load_format("hotline_12338"))


def test_another_spelling_of_a_column_and_full_width_headers_are_recognized(tmp_path: Path) -> None:
    header, rows = _hotline_rows()
    renamed = {"身份证号": "身份证号码", "来电时间": " 来电时间 ", "所在镇街": "所在镇街\u3000"}
    header = [renamed.get(h, h) for h in header]
    path = _write_csv(tmp_path / "calls.csv", header, rows[:3])
    summary, reports = run_file(path, "hotline_12338")
    assert (summary.imported, reports) == (3, [])


def test_a_narrative_over_several_lines_keeps_the_line_numbers_of_later_rows_right(tmp_path: Path) -> None:
    header, rows = _hotline_rows()
    rows = [list(r) for r in rows[:3]]
    rows[0][header.index("事情经过")] = "第一行\n第二行\n第三行"
    rows[2][header.index("所在镇街")] = "亚特兰蒂斯"
    path = _write_csv(tmp_path / "calls.csv", header, rows)
    _summary, reports = run_file(path, "hotline_12338")
    assert len(reports) == 1
    assert reports[0].startswith("line 6: 所在镇街")  # header 1, row 2-4, row 5, row 6


def test_a_row_with_more_cells_than_the_header_is_rejected(tmp_path: Path) -> None:
    header, rows = _hotline_rows()
    path = _write_csv(tmp_path / "calls.csv", header, [rows[0], [*rows[1], "多出来的"]])
    summary, reports = run_file(path, "hotline_12338")
    assert summary.rejected == 1
    assert reports == [f"line 3: has {len(header) + 1} cells but the header has {len(header)}"]


def test_an_empty_file_stops_before_importing(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(FileFormatError, match="is empty"):
        ExportFile.open(tmp_path / "empty.csv", load_format("police"))


# --------------------------------------------------------------------------- the samples and the progress line


def test_the_samples_are_what_their_generator_makes(tmp_path: Path) -> None:
    samples.generate(tmp_path)
    for name in samples.SAMPLES:
        assert (tmp_path / name).read_bytes() == (SAMPLES / name).read_bytes(), f"regenerate {name}"


def test_the_samples_id_numbers_are_for_the_district_with_correct_check_digits() -> None:
    numbers = []
    for name in ("hotline_12338.csv", "police.csv", "court.csv", "school.csv"):
        for _line, cells in _cells_of(SAMPLES / name, "utf-8"):
            numbers += [c for c in cells if len(c) == 18 and c[:6] == "110113"]
    assert len(numbers) > 40
    for number in numbers:
        assert values.id_number(number) == number


class FakeStream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def _clock(times: list[float]) -> Callable[[], float]:
    it = iter(times)
    last = [0.0]

    def now() -> float:
        last[0] = next(it, last[0])
        return last[0]

    return now


def test_the_progress_line_goes_in_place_on_a_terminal_and_every_n_rows_in_a_log() -> None:
    log = FakeStream(tty=False)
    progress = Progress(total_bytes=1000, stream=log, every=2, clock=_clock([0.0, 1.0, 2.0, 3.0, 4.0]))
    for rows in range(1, 5):
        progress.update(rows, rows * 250)
    lines = log.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("2 rows")
    assert "50%" in lines[0]
    assert "ETA" in lines[0]
    terminal = FakeStream(tty=True)
    progress = Progress(total_bytes=1000, stream=terminal, interval=0.0, clock=_clock([0.0, 1.0, 2.0, 3.0]))
    progress.update(1, 500)
    progress.message("line 2: 联系电话 is not a phone number")
    progress.update(2, 1000)
    progress.finish(2, 1000)
    text = terminal.getvalue()
    assert text.startswith("\r1 rows")
    assert "\r\x1b[Kline 2: 联系电话" in text
    assert text.endswith("\x1b[K\n")


# --------------------------------------------------------------------------- the command line


@pytest.fixture
def lianfang(domain: Any) -> Callable[..., tuple[int, str, str]]:
    """`lianfang` (services/cli/main.py registers the import commands) on the demo domain."""

    def run(*argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
        code = cli.main(["--home", str(domain.home), "--now", NOW.isoformat(), *argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def test_a_dry_run_reports_rejections_and_exits_1(
    lianfang: Callable[..., tuple[int, str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = lianfang(
        "import", "--dry-run", "--as", "police", "--format", "police", str(SAMPLES / "police_with_errors.csv"),
        capsys=capsys,
    )  # fmt: skip
    assert code == 1
    assert "dry run, nothing published" in out
    assert "rejected                3" in out
    assert "line 6:" not in err  # a suspect's ID number with a wrong check digit is imported, flagged


def test_a_clean_dry_run_exits_0(
    lianfang: Callable[..., tuple[int, str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _err = lianfang(
        "import", "--dry-run", "--as", "health", "--format", "hospital", str(SAMPLES / "hospital.jsonl"),
        capsys=capsys,
    )  # fmt: skip
    assert code == 0
    assert "would be imported       8" in out
    assert "not leads               4" in out


@pytest.mark.parametrize(
    ("argv", "file", "message"),
    [
        (
            ["--as", "womens_federation", "--format", "court"],
            "court.csv",
            "may not publish protection_order.decided",
        ),
        (["--as", "nobody", "--format", "police"], "police.csv", "'nobody' is not a participant"),
        (["--as", "police", "--format", "hotline_12338"], "police.csv", "has no column"),
        (["--as", "police", "--format", "police"], "missing.csv", "no file"),
    ],
)
def test_an_import_that_cannot_start_exits_2_and_says_why(
    lianfang: Callable[..., tuple[int, str, str]],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    file: str,
    message: str,
) -> None:
    code, _out, err = lianfang("import", "--dry-run", *argv, str(SAMPLES / file), capsys=capsys)
    assert code == 2
    assert message in err


def test_an_import_without_a_broker_address_exits_2(
    lianfang: Callable[..., tuple[int, str, str]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LIANFANG_BOOTSTRAP", raising=False)
    code, _out, err = lianfang(
        "import", "--as", "police", "--format", "police", str(SAMPLES / "police.csv"), capsys=capsys
    )
    assert code == 2
    assert "no Kafka bootstrap" in err


# --------------------------------------------------------------------------- the import's first pass

SAMPLE_FILES = {
    "hotline_12338.csv": "hotline_12338",
    "police.csv": "police",
    "hospital.jsonl": "hospital",
    "school.csv": "school",
    "court.csv": "court",
    "mediation_gb18030.csv": "mediation",
    **FORMAT_OF,
}


@pytest.mark.parametrize("file", list(SAMPLE_FILES))
def test_the_first_pass_asks_for_exactly_the_pseudonyms_mapping_the_row_asks_for(file: str) -> None:
    fmt = SAMPLE_FILES[file]
    spec = load_format(fmt)
    mapper = Mapper(spec, participant=AS[fmt], pseudonymizer=KEY, now=NOW)
    rows = 0
    with ExportFile.open(SAMPLES / file, spec) as export:
        for line in export.lines():
            if line.cells is None:
                continue
            read = mapper.read(line.cells)
            first, mapping = Recording(0), Recording(0)
            mapper.using(first).ask_pseudonyms(read, _ids("lead"))
            mapper.using(mapping).map_read(read, _ids)
            assert list(first.asked) == list(mapping.asked), f"line {line.number}"
            rows += bool(mapping.asked)
    assert rows  # some rows of every file name someone to pseudonymize


def test_an_import_reads_each_row_once(monkeypatch: pytest.MonkeyPatch) -> None:
    file, fmt = SAMPLES / "hotline_12338_with_errors.csv", "hotline_12338"
    with ExportFile.open(file, load_format(fmt)) as export:
        readable = sum(1 for line in export.lines() if line.cells is not None)
    reads = 0
    read = Mapper.read

    def counted(self: Mapper, row: Mapping[str, str]) -> Any:
        nonlocal reads
        reads += 1
        return read(self, row)

    monkeypatch.setattr(Mapper, "read", counted)
    summary, _ = run_file(file, fmt)
    assert summary.imported  # the file's good rows went through
    assert reads == readable


class _CountingKey:
    """A pseudonymizer that counts the calls made to it."""

    def __init__(self, key: Pseudonymizer) -> None:
        self.key, self.calls = key, 0

    def pseudonyms(self, canonicals: Sequence[str]) -> list[str]:
        self.calls += 1
        return self.key.pseudonyms(canonicals)


class _CountingDryRun(DryRun):
    """A dry run whose pseudonymizer counts the calls made to it."""

    def __init__(self) -> None:
        super().__init__()
        self.counting = _CountingKey(self._key)

    @property
    def pseudonymizer(self) -> Pseudonymizer:
        return self.counting


def test_a_victim_without_an_identifier_is_pseudonymized_in_the_batch_s_one_request(tmp_path: Path) -> None:
    header, rows = _hotline_rows()
    nameless = list(rows[0])
    for column in ("身份证号", "联系电话"):
        nameless[header.index(column)] = ""
    path = _write_csv(tmp_path / "hotline.csv", header, [nameless, *rows[1:]])
    publisher = _CountingDryRun()
    with ExportFile.open(path, load_format("hotline_12338")) as export:
        summary = run_import(
            export,
            participant="womens_federation",
            publisher=publisher,
            ledger=Ledger(None, participant="womens_federation"),
            now=NOW,
            report=lambda _line: None,
        )
    assert summary.imported == len(rows)  # the nameless victim's lead too, under a pseudonym of its own
    assert publisher.counting.calls == 1  # one request for the batch; none for that row on its own
