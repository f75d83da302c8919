"""The fuzz targets of tests/fuzz, run briefly with fixed seeds: no record value, envelope body or export
file, however malformed, raises anything but a ``LianfangError``. Hypothesis generates structured
inputs (any JSON in any header or section field, any rows in any encoding); atheris then mutates bytes
guided by coverage, a few seconds a target. ``make fuzz`` runs the same targets for a million inputs."""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as fixed_seed
from hypothesis import strategies as st

from schemas.events import EVENT_MODELS
from services.hub.ids import alert_id_for
from services.hub.rules import observe
from services.hub.state import Observation, VictimState
from services.importers.errors import FileFormatError
from services.importers.reader import ENCODINGS
from services.importers.spec import format_names, load_format
from services.kernel.errors import MalformedError
from tests.fuzz.run import fuzz
from tests.fuzz.targets import TARGETS, Target, build, run_one
from tests.unit.test_hub_rules import CFG, VICTIM, day, lead, run

pytestmark = pytest.mark.unit

SEED = 20261101
BRIEF = settings(database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True)


@pytest.fixture(scope="module")
def targets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Target]:
    return build(tmp_path_factory.mktemp("fuzz"))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=24),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def edited(draw: st.DrawFn, document: Any) -> Any:
    """``document`` with some of its fields, at any depth, replaced by any JSON, removed or added to."""
    if isinstance(document, dict):
        out = {}
        for key, value in document.items():
            action = draw(st.sampled_from(["keep", "keep", "keep", "edit", "replace", "drop"]))
            if action == "keep":
                out[key] = value
            elif action == "edit":
                out[key] = draw(edited(value))
            elif action == "replace":
                out[key] = draw(json_values)
        if draw(st.booleans()):
            out[draw(st.text(max_size=12))] = draw(json_values)
        return out
    if isinstance(document, list):
        return [draw(edited(item)) for item in document]
    return draw(st.one_of(st.just(document), json_values))


@st.composite
def envelope_bodies(draw: st.DrawFn, seeds: tuple[bytes, ...]) -> bytes:
    head, _, sections = draw(st.sampled_from(seeds)).partition(b"\n")
    new_head = json.dumps(draw(edited(json.loads(head))), ensure_ascii=draw(st.booleans())).encode()
    new_sections = json.dumps(draw(edited(json.loads(sections)))).encode()
    return new_head + b"\n" + new_sections


@fixed_seed(SEED)
@BRIEF
@given(data=st.data())
def test_a_signed_envelope_with_any_json_in_any_field_never_stops_the_router_or_a_recipient(
    targets: dict[str, Target], data: st.DataObject
) -> None:
    target = targets["router_signed"]
    run_one(target, data.draw(envelope_bodies(target.seeds)))


@st.composite
def record_values(draw: st.DrawFn, seeds: tuple[bytes, ...]) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=512))
    value = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(value) - 1))
        value[at : at + draw(st.integers(0, 8))] = draw(st.binary(max_size=8))
    return bytes(value)


@fixed_seed(SEED)
@settings(BRIEF, max_examples=500)
@given(data=st.data())
def test_any_bytes_as_a_record_value_never_stop_the_router(
    targets: dict[str, Target], data: st.DataObject
) -> None:
    target = targets["router_raw"]
    run_one(target, data.draw(record_values(target.seeds)))


cells = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["", "是", "否", "未成年", "2026-10-31", "2026年10月31日 08:30", "110101201001011234"]),
    st.integers(-5, 200).map(str),
    st.dates().map(str),
)


@st.composite
def export_files(draw: st.DrawFn) -> bytes:
    """A format and an encoding (the target's first two bytes), then a file with some of the format's
    columns (and others) in any order and rows of any cells."""
    fmt = draw(st.sampled_from(format_names()))
    spec = load_format(fmt)
    encoding = draw(st.sampled_from(ENCODINGS))
    columns = draw(st.lists(st.sampled_from(spec.columns()) | st.text(max_size=6), max_size=12))
    rows = draw(st.lists(st.lists(cells, max_size=len(columns) + 2), max_size=6))
    if spec.file == "jsonl":
        lines = [
            json.dumps({c: draw(cells | json_values) for c in columns}, ensure_ascii=False) for _ in rows
        ]
        text = "\n".join(lines)
    else:
        out = io.StringIO()
        writer = csv.writer(out, delimiter=spec.delimiter)
        writer.writerow(columns)
        writer.writerows(rows)
        text = out.getvalue()
    codec = draw(st.sampled_from(["utf-8", "utf-8-sig", "gb18030"]))
    head = bytes([format_names().index(fmt), ENCODINGS.index(encoding)])
    return head + text.encode(codec, "surrogatepass" if codec != "gb18030" else "replace")


@fixed_seed(SEED)
@settings(BRIEF, max_examples=300)
@given(data=export_files())
def test_an_export_file_of_any_rows_in_any_encoding_never_stops_an_import(
    targets: dict[str, Target], data: bytes
) -> None:
    run_one(targets["importer"], data)


@pytest.mark.parametrize("name", TARGETS)
def test_coverage_guided_fuzzing_for_a_few_seconds_finds_no_crash(name: str, tmp_path: Path) -> None:
    outcome = fuzz(
        name, runs=20_000, max_seconds=4, seed=1, artifacts=tmp_path / "artifacts", scratch=tmp_path
    )
    assert outcome.crashes == 0, outcome.log[-4000:]
    assert outcome.inputs > 100, outcome.log[-4000:]


def test_the_contract_lets_the_projects_own_errors_through_and_nothing_else() -> None:
    def raising(error: Exception) -> Target:
        def one(_data: bytes) -> None:
            raise error

        return Target("raising", one, ())

    run_one(raising(MalformedError("bad")), b"")
    run_one(raising(FileFormatError("empty")), b"")
    with pytest.raises(KeyError):
        run_one(raising(KeyError("x")), b"")


# The hub opens what a registered sender sealed: a triage section that passed its event's schema on the
# sender's side, or not (another SDK, another version). Its rules must take any of it.
_OFFSETS = st.sampled_from([timezone(timedelta(hours=h, minutes=59)) for h in (-24, -1, 0, 23)] + [UTC])
instants = st.one_of(
    st.datetimes(timezones=_OFFSETS),
    # the edges of what Python holds, where a far offset moves the instant outside it in UTC
    st.datetimes(max_value=datetime(1, 1, 2), timezones=_OFFSETS),
    st.datetimes(min_value=datetime(9999, 12, 30), timezones=_OFFSETS),
).map(datetime.isoformat)
deadlines = st.lists(st.fixed_dictionaries({"owner": st.text(max_size=8), "due_at": instants}), max_size=3)
triage_values = st.one_of(instants, json_values, deadlines)


@st.composite
def observations(draw: st.DrawFn) -> Observation:
    event_type = draw(st.sampled_from(sorted(EVENT_MODELS)))
    fields = sorted(EVENT_MODELS[event_type].TRIAGE_FIELDS)
    triage = {name: draw(triage_values) for name in draw(st.lists(st.sampled_from(fields), unique=True))}
    if draw(st.integers(0, 3)):  # most name the victim's open alert
        triage["alert_id"] = alert_id_for(VICTIM, 1)
    return Observation(
        event_id=str(uuid.UUID(int=draw(st.integers(0, 2**128 - 1)))),
        event_type=event_type,
        sender=draw(st.sampled_from(["police", "coordinators", "court", "hub"])),
        time=day(draw(st.floats(0.01, 30))),
        subject=VICTIM,
        urgency=draw(st.sampled_from(["immediate", "urgent", "routine"])),
        recipients=frozenset({"hub", "coordinators"}),
        refs=(),
        triage=triage,
    )


@fixed_seed(SEED)
@settings(BRIEF, max_examples=600)
@given(events=st.lists(observations(), min_size=1, max_size=4))
def test_any_triage_of_any_event_type_with_any_times_never_stops_the_hubs_rules(
    events: list[Observation],
) -> None:
    state, _ = run([lead(1, day(0), pj=True)])
    for obs in events:
        state, _ = observe(state, obs, CFG)
        assert state is not None
        VictimState.from_json(state.to_json())
