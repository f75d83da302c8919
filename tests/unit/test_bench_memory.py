"""The benchmarks' memory runs: how a service's RSS over a run becomes its figures, the growth over the
second half and the straight line from it to the target's 1,000,000 events."""

from __future__ import annotations

import pytest

from tests.bench import harness
from tests.bench.harness import MB, BenchContext, BenchError, KafkaSource, RssTrack

pytestmark = pytest.mark.unit


def _ctx(*, quick: bool = False) -> BenchContext:
    return BenchContext("bench_test", quick, 1, 0, KafkaSource(None))


def test_the_growth_is_measured_over_the_events_after_the_first_look_past_half() -> None:
    assert harness.growth_per_event(10_000, (5_200.0, 100 * MB), 100 * MB + 4_800 * 30) == 30.0


def test_a_first_look_past_half_that_came_too_late_gives_no_growth() -> None:
    assert harness.growth_per_event(10_000, (7_600.0, 100 * MB), 101 * MB) is None


def test_the_number_of_events_comes_from_the_environment_else_the_modules_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(harness.MEMORY_EVENTS_ENV, raising=False)
    assert harness.memory_events(_ctx(), 10_000, 2_000) == 10_000
    assert harness.memory_events(_ctx(quick=True), 10_000, 2_000) == 2_000
    monkeypatch.setenv(harness.MEMORY_EVENTS_ENV, "1,000,000")
    assert harness.memory_events(_ctx(quick=True), 10_000, 2_000) == 1_000_000


@pytest.mark.parametrize("raw", ["many", "1"])
def test_a_number_of_events_that_is_not_one_or_too_small_is_refused(
    monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv(harness.MEMORY_EVENTS_ENV, raw)
    with pytest.raises(BenchError, match=harness.MEMORY_EVENTS_ENV):
        harness.memory_events(_ctx(), 10_000, 2_000)


def test_a_tracked_run_reports_rss_started_as_the_baseline_and_extrapolates_its_growth() -> None:
    # started, the looks past 25, 50 and 75 %, end, peak
    rss = iter([90 * MB, 95 * MB, 100 * MB, 105 * MB, 110 * MB, 111 * MB])
    track = RssTrack("hub", 10_000, lambda peak=False: next(rss))
    track.started()
    track.look(2_000)  # before a quarter: nothing read
    track.look(2_500)
    track.look(5_000)
    track.look(6_000)  # after the look past half: nothing read
    track.look(7_500)
    track.finished()
    ctx = _ctx()
    started, after = track.results(ctx, started="once started", after="after 10,000")
    assert (started.case, started.median, started.baseline) == ("hub RSS, started", 90.0, True)
    assert (after.case, after.metric, after.median) == ("hub RSS after the memory run", "MB", 110.0)
    growth = 10 * MB / 5_000
    at_target = (110 * MB + growth * 990_000) / MB
    assert f"grew {growth:.0f} B an event, which would give {at_target:.0f} MB at 1,000,000" in ctx.notes[-1]
    assert [round(g) for g, _, _ in track.growth()] == [round(5 * MB / 2_500)] * 3


def test_a_growth_that_slows_down_shows_between_the_looks() -> None:
    rss = iter([90 * MB, 100 * MB, 104 * MB, 106 * MB, 107 * MB, 107 * MB])
    track = RssTrack("gateway", 4_000, lambda peak=False: next(rss))
    track.started()
    for done in (1_000, 2_000, 3_000):
        track.look(done)
    track.finished()
    assert track.growth() == [
        (4 * MB / 1_000, 0.25, 0.5),
        (2 * MB / 1_000, 0.5, 0.75),
        (MB / 1_000, 0.75, 1.0),
    ]


def test_one_look_past_several_shares_reads_the_rss_once_for_all_of_them() -> None:
    reads: list[bool] = []

    def rss(peak: bool = False) -> int:
        reads.append(peak)
        return 100 * MB

    track = RssTrack("router", 1_000, rss)
    track.look(800)
    assert len(reads) == 1
    assert set(track.looks) == {0.25, 0.5, 0.75}


def test_without_proc_a_tracked_run_reports_no_figure_and_says_so() -> None:
    track = RssTrack("gateway", 100, lambda peak=False: None)
    track.started()
    track.finished()
    ctx = _ctx()
    assert track.results(ctx, started="s", after="a") == []
    assert "not measured" in ctx.notes[-1]
