"""The benchmark's summary of performance targets: a row per criterion with exactly the agreed fields,
judged from the figures of one run, and honest about what that run did not measure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.bench import targets

pytestmark = pytest.mark.unit


def _run(*rows: tuple[str, str, str, float]) -> list[dict[str, Any]]:
    benchmarks: dict[str, list[dict[str, Any]]] = {}
    for benchmark, case, metric, median in rows:
        benchmarks.setdefault(benchmark, []).append({"case": case, "metric": metric, "median": median})
    return [{"benchmark": b, "results": r} for b, r in benchmarks.items()]


def _row(rows: list[dict[str, Any]], starts: str) -> dict[str, Any]:
    (found,) = [r for r in rows if r["name"].startswith(starts)]
    return found


def test_every_row_has_exactly_the_agreed_fields_and_every_item_has_a_row() -> None:
    rows = targets.evaluate([])
    assert all(tuple(r) == targets.TARGET_FIELDS for r in rows)
    assert {r["name"].split(" ")[0] for r in rows} == {str(i) for i in range(1, 8)}


def test_a_run_that_measured_nothing_reports_no_figure_and_no_target_met() -> None:
    rows = targets.evaluate([])
    assert all(r["figure"] is None and r["met"] is False for r in rows)


def test_a_figure_within_its_bound_is_met_and_one_outside_is_not() -> None:
    fast = targets.evaluate(_run(("bench_envelope", "seal+sign (4 recipients)", "events/s", 3100.0)))
    slow = targets.evaluate(_run(("bench_envelope", "seal+sign (4 recipients)", "events/s", 2900.0)))
    assert _row(fast, "2 sealing: seal+sign")["met"] is True
    assert _row(slow, "2 sealing: seal+sign")["met"] is False
    assert _row(slow, "2 sealing: seal+sign")["figure"] == 2900.0


def test_the_router_row_is_the_ratio_to_the_relay_measured_in_the_same_run() -> None:
    rows = targets.evaluate(
        _run(
            ("bench_router", "router, 1 worker", "events/s", 758.0),
            ("bench_router", "aiokafka relay, 1 worker", "records/s", 1658.0),
        )
    )
    row = _row(rows, "3 router: router / aiokafka relay")
    assert row["figure"] == round(758 / 1658, 3)
    assert row["baseline"] == 1658.0
    assert row["met"] is False


def test_the_cost_per_extra_recipient_is_the_slope_from_one_to_eight_recipients() -> None:
    rows = targets.evaluate(
        _run(
            ("bench_envelope", "seal+sign (1 recipient)", "events/s", 5000.0),  # 200 µs
            ("bench_envelope", "seal+sign (8 recipients)", "events/s", 2500.0),  # 400 µs
        )
    )
    row = _row(rows, "2 sealing: cost of each extra recipient")
    assert row["figure"] == round(200 / 7, 3)
    assert row["met"] is True


def test_a_negative_cost_per_recipient_is_noise_and_not_a_target_met() -> None:
    rows = targets.evaluate(
        _run(
            ("bench_envelope", "seal+sign (1 recipient)", "events/s", 1000.0),
            ("bench_envelope", "seal+sign (8 recipients)", "events/s", 2000.0),
        )
    )
    row = _row(rows, "2 sealing: cost of each extra recipient")
    assert row["figure"] < 0
    assert row["met"] is False


def test_the_summary_table_says_not_measured_rather_than_a_number() -> None:
    text = targets.render(targets.evaluate([]))
    assert "not measured" in text
    assert text.count("\n  ") == len(targets.TARGETS) + 1  # titles, then one line a target


def test_the_hub_row_shows_the_decode_only_agent_of_the_same_run_as_its_baseline() -> None:
    rows = targets.evaluate(
        _run(
            ("bench_hub", "hub, 1 worker", "events/s", 1600.0),
            ("bench_hub", "faust decode-only agent, 1 worker", "records/s", 4200.0),
        )
    )
    row = _row(rows, "4 hub")
    assert (row["figure"], row["baseline"], row["met"]) == (1600.0, 4200.0, True)


def test_the_end_to_end_rows_are_the_p99_at_200_leads_a_second_and_the_share_of_alerts_received() -> None:
    case = "publish → alert at coordinators, 200 leads/s"
    rows = targets.evaluate(
        _run(
            ("bench_hub", case, "p99 ms", 180.0),
            ("bench_hub", case, "% alerts received", 99.5),
            ("bench_hub", "kafka-python produce → consume, 1 KiB", "p99 ms", 9.0),
        )
    )
    latency = _row(rows, "6 end to end: publish→alert p99")
    assert (latency["figure"], latency["baseline"], latency["met"]) == (180.0, 9.0, True)
    assert _row(rows, "6 end to end: alerts received")["met"] is False, "one alert missing fails it"


def test_the_importers_row_is_the_batched_import_beside_the_reader_alone_of_the_same_run() -> None:
    rows = targets.evaluate(
        _run(
            ("bench_pseudonymizer", targets.IMPORT_CASE, "rows/s", 1600.0),
            ("bench_pseudonymizer", "reader alone", "rows/s", 150_000.0),
            ("bench_pseudonymizer", "import, one request a row", "rows/s", 9000.0),
        )
    )
    row = _row(rows, "1 group commit: importers")
    assert (row["figure"], row["baseline"], row["met"]) == (1600.0, 150_000.0, True)


@pytest.mark.parametrize(
    ("benchmark", "service"),
    [("bench_router", "router"), ("bench_hub", "hub"), ("bench_adapters", "gateway")],
)
def test_each_services_memory_row_is_its_rss_after_the_memory_run_beside_its_rss_started(
    benchmark: str, service: str
) -> None:
    over = targets.evaluate(
        _run(
            (benchmark, f"{service} RSS after the memory run", "MB", 151.0),
            (benchmark, f"{service} RSS, started", "MB", 96.0),
        )
    )
    under = targets.evaluate(_run((benchmark, f"{service} RSS after the memory run", "MB", 149.0)))
    row = _row(over, f"7 memory: {service} RSS")
    assert (row["figure"], row["baseline"], row["met"]) == (151.0, 96.0, False)
    assert _row(under, f"7 memory: {service} RSS")["met"] is True


def test_the_markdown_table_has_a_row_per_target_and_says_not_measured_rather_than_a_number(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = targets.evaluate(_run(("bench_envelope", "seal+sign (4 recipients)", "events/s", 3100.0)))
    path = tmp_path / "latest.json"
    path.write_text(json.dumps({"environment": {}, "benchmarks": [], "targets": rows}))
    assert targets.main([str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 + len(targets.TARGETS)
    (sealing,) = [line for line in lines if line.startswith("| 2 sealing: seal+sign")]
    assert sealing.endswith(" | 3,100 | — | >= 3000 | yes |")
    assert all("not measured" in line for line in lines[2:] if "seal+sign" not in line)


def test_the_markdown_table_of_a_missing_result_says_to_run_the_benchmark_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert targets.main([str(tmp_path / "latest.json")]) == 2
    assert "run make bench first" in capsys.readouterr().err
