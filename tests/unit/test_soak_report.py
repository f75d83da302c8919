"""The soak's memory line: each service's resident memory over time, process by process, and the hub's
RocksDB stores' share of it; and its option that has each service report its Python allocation sites."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.kernel.topics import partition_for
from tests.faults.bed import Check, _mounts_under
from tests.faults.soak import (
    MemorySample,
    SoakResult,
    at_rest_line,
    hub_drained,
    hub_inbox_lag,
    level0_files,
    longest_process_growth,
    malloc_counters,
    memory_series,
    missing_by_partition,
    parse_args,
    rocksdb_bytes,
    samples_jsonl,
    service_env,
)
from tests.workers import REPO

pytestmark = pytest.mark.unit

MIB = 2**20


def test_the_samples_file_holds_every_sample_of_every_service_in_the_order_taken_and_those_at_rest() -> None:
    hub = [
        MemorySample(0.5, 9, 80 * MIB, 3 * MIB, {"allocated": 50 * MIB, "resident": 60 * MIB}, 20 * MIB, 4),
        MemorySample(1.5, 9, 81 * MIB, 3 * MIB, None, None, 7),
    ]
    router = [MemorySample(0.4, 7, 70 * MIB), MemorySample(1.4, 8, 71 * MIB)]
    rest = {"hub": MemorySample(2.5, 9, 79 * MIB)}
    rows = [json.loads(line) for line in samples_jsonl({"router-1": router, "hub": hub}, rest).splitlines()]
    assert [(r["service"], r["minute"], r["pid"], r["at_rest"]) for r in rows] == [
        ("router-1", 0.4, 7, False),
        ("hub", 0.5, 9, False),
        ("router-1", 1.4, 8, False),
        ("hub", 1.5, 9, False),
        ("hub", 2.5, 9, True),
    ]
    assert rows[1] == {
        "service": "hub",
        "at_rest": False,
        "minute": 0.5,
        "pid": 9,
        "rss": 80 * MIB,
        "rocksdb": 3 * MIB,
        "malloc": {"allocated": 50 * MIB, "resident": 60 * MIB},
        "file": 20 * MIB,
        "level0": 4,
    }
    assert rows[0]["rocksdb"] is None
    assert rows[0]["level0"] is None


def test_the_series_shows_one_sample_per_five_minutes_and_the_last() -> None:
    samples = [MemorySample(m, 7, int((100 + m) * MIB)) for m in (0, 0.5, 2, 5.2, 7, 10.1, 12)]
    assert memory_series(samples) == "0:100  5:105  10:110  12:112"


def test_a_restarted_service_is_marked_as_a_new_process_and_a_sample_while_it_was_down_is_left_out() -> None:
    samples = [
        MemorySample(0, 7, 100 * MIB),
        MemorySample(4, 7, 0),
        MemorySample(5, 8, 90 * MIB),
        MemorySample(10, 8, 95 * MIB),
    ]
    assert memory_series(samples) == "0:100  5:90 (new process)  10:95"


def test_a_service_never_sampled_running_says_so() -> None:
    assert memory_series([MemorySample(0, 7, 0)]) == "no sample"


def test_the_growth_line_compares_the_halves_of_the_longest_lived_process() -> None:
    samples = [
        MemorySample(0, 7, 100 * MIB),
        MemorySample(5, 7, 104 * MIB),
        MemorySample(6, 8, 0),
        MemorySample(6.5, 8, 13 * MIB),  # caught while it started: left out
        MemorySample(7, 8, 120 * MIB),
        MemorySample(17, 8, 130 * MIB),
        MemorySample(27, 8, 131 * MIB),
    ]
    assert longest_process_growth(samples) == (
        "longest process 7-27 min: +10.0 MiB in its first half, +1.0 MiB in its second: flat (at most +2.0)"
    )


def test_a_process_that_grows_as_much_in_its_second_half_as_in_its_first_is_not_flat() -> None:
    samples = [MemorySample(m, 7, int((100 + 0.5 * m) * MIB)) for m in range(0, 31, 1)]
    assert longest_process_growth(samples) == (
        "longest process 0-30 min: +7.0 MiB in its first half, +7.0 MiB in its second: NOT flat"
    )


def test_one_sample_caught_at_a_peak_does_not_decide_the_growth() -> None:
    samples = [MemorySample(m, 7, 100 * MIB) for m in range(0, 31, 1)]
    samples[-1] = MemorySample(30, 7, 110 * MIB)  # a batch in flight at the last sample
    assert longest_process_growth(samples).endswith("+0.0 MiB in its second: flat (at most +2.0)")


def test_the_hubs_growth_outside_its_rocksdb_stores_decides_whether_it_is_flat() -> None:
    # RocksDB's memtables fill up to their bound (+10 MiB); the rest of the hub stays level.
    samples = [MemorySample(m, 7, int((100 + m / 3) * MIB), int(m / 3 * MIB)) for m in range(0, 31, 1)]
    samples[0] = MemorySample(0, 7, 100 * MIB)  # before the hub's first reading of its stores
    assert longest_process_growth(samples) == (
        "longest process 0-30 min: +4.7 MiB in its first half, +4.7 MiB in its second; "
        "outside RocksDB +0.0, +0.0: flat (at most +2.0)"
    )


def test_on_jemalloc_the_growth_is_split_into_live_allocations_pages_kept_and_memory_outside_it() -> None:
    # RocksDB fills (+1/3 MiB a minute); jemalloc keeps 0.1 MiB more a minute; the rest stays level.
    # (Each end is the median of its 3 nearest samples: minutes 1, 15 and 29, so 14 minutes a half.)
    def hub_at(minute: int) -> MemorySample:
        rocksdb = minute / 3 * MIB
        allocated = 60 * MIB + rocksdb
        resident = allocated + (10 + 0.1 * minute) * MIB
        counters = {"allocated": int(allocated), "resident": int(resident)}
        return MemorySample(minute, 7, int(resident + 20 * MIB), int(rocksdb), counters)

    assert longest_process_growth([hub_at(m) for m in range(0, 31)]) == (
        "longest process 0-30 min: +6.1 MiB in its first half, +6.1 MiB in its second; "
        "outside RocksDB +1.4, +1.4 (live allocations +0.0, +0.0, kept by jemalloc +1.4, +1.4, "
        "outside jemalloc +0.0, +0.0); in use +0.0, +0.0: flat (at most +2.0)"
    )


def test_with_the_file_backed_pages_read_their_growth_is_told_apart_from_the_rest() -> None:
    # Library code paged in as it first runs: +0.1 MiB a minute of file-backed pages, nothing else.
    def at(minute: int) -> MemorySample:
        counters = {"allocated": 60 * MIB, "resident": 70 * MIB}
        file = int((30 + 0.1 * minute) * MIB)
        return MemorySample(minute, 7, 75 * MIB + file, None, counters, file)

    assert longest_process_growth([at(m) for m in range(0, 31)]) == (
        "longest process 0-30 min: +1.4 MiB in its first half, +1.4 MiB in its second "
        "(live allocations +0.0, +0.0, kept by jemalloc +0.0, +0.0, file-backed +1.4, +1.4, "
        "the rest +0.0, +0.0); in use +0.0, +0.0: flat (at most +2.0)"
    )


def _on_jemalloc(minute: int, *, live_mib: float, kept_mib: float, rest_mib: float = 20) -> MemorySample:
    allocated = int((60 + live_mib) * MIB)
    resident = allocated + int((10 + kept_mib) * MIB)
    counters = {"allocated": allocated, "resident": resident, "dirty": int(kept_mib * MIB)}
    return MemorySample(minute, 7, resident + int(rest_mib * MIB), None, counters, 30 * MIB)


def test_pages_jemalloc_keeps_after_a_burst_do_not_make_a_process_whose_live_memory_is_level_not_flat() -> (
    None
):
    # Run W's router-2: live allocations level, freed pages kept by jemalloc +0.4 MiB a minute.
    samples = [_on_jemalloc(m, live_mib=0, kept_mib=0.4 * m) for m in range(0, 31)]
    line = longest_process_growth(samples)
    assert line.startswith("longest process 0-30 min: +5.6 MiB in its first half, +5.6 MiB in its second ")
    assert line.endswith("; in use +0.0, +0.0: flat (at most +2.0)")


def test_live_allocations_that_keep_growing_are_not_flat_though_jemalloc_returns_pages_as_they_grow() -> None:
    # +0.3 MiB of live allocations a minute, pages kept shrinking as fast: the RSS stays level.
    samples = [_on_jemalloc(m, live_mib=0.3 * m, kept_mib=9 - 0.3 * m) for m in range(0, 31)]
    line = longest_process_growth(samples)
    assert line.startswith("longest process 0-30 min: +0.0 MiB in its first half, +0.0 MiB in its second ")
    assert line.endswith("; in use +4.2, +4.2: NOT flat")


def test_memory_that_grows_outside_jemalloc_is_in_use() -> None:
    samples = [_on_jemalloc(m, live_mib=0, kept_mib=0, rest_mib=20 + 0.2 * m) for m in range(0, 31)]
    assert longest_process_growth(samples).endswith("; in use +2.8, +2.8: NOT flat")


def test_memory_that_only_held_work_in_flight_is_given_back_at_rest() -> None:
    # Live allocations +0.1 MiB a minute under load, back to where the process started once drained.
    samples = [_on_jemalloc(m, live_mib=0.1 * m, kept_mib=0) for m in range(0, 31)]
    rest = _on_jemalloc(31, live_mib=0.2, kept_mib=3)
    assert at_rest_line(samples, rest) == (
        "in use 50.2 MiB at minute 31: +0.1 since its start (minute 0), -2.7 since its last samples under "
        "load (live allocations +0.1 since its start)"
    )


def test_memory_that_leaked_is_still_held_at_rest() -> None:
    samples = [_on_jemalloc(m, live_mib=0.1 * m, kept_mib=0) for m in range(0, 31)]
    rest = _on_jemalloc(31, live_mib=3.1, kept_mib=0)
    assert at_rest_line(samples, rest).endswith(
        "+3.0 since its start (minute 0), +0.2 since its last samples under load (live allocations +3.0 "
        "since its start)"
    )


def test_at_rest_a_restarted_process_is_read_from_its_second_sample_and_a_new_one_is_not_compared() -> None:
    first = [MemorySample(m, 7, 100 * MIB) for m in range(0, 5)]
    restarted = [MemorySample(5, 8, 20 * MIB)] + [MemorySample(m, 8, 110 * MIB) for m in range(6, 31)]
    rest = MemorySample(31, 8, 111 * MIB)
    assert at_rest_line(first + restarted, rest) == (
        "RSS 111.0 MiB at minute 31: +1.0 since its start (minute 6), +1.0 since its last samples under load"
    )
    assert at_rest_line(first + restarted, MemorySample(31, 9, 90 * MIB)) == (
        "RSS 90.0 MiB, a process started since the last sample under load"
    )
    assert at_rest_line(first, MemorySample(31, 7, 0)) == "not running at that moment"


def test_the_hub_at_rest_without_jemalloc_is_read_outside_its_rocksdb_stores() -> None:
    samples = [MemorySample(m, 7, 100 * MIB, 2 * MIB) for m in range(0, 31)]
    rest = MemorySample(31, 7, 104 * MIB, 5 * MIB)
    assert at_rest_line(samples, rest).startswith(
        "outside RocksDB 99.0 MiB at minute 31: +1.0 since its start"
    )


def test_jemalloc_s_counters_are_read_from_a_scrape_and_absent_where_the_service_is_not_on_it() -> None:
    scraped = {
        'lianfang_malloc_bytes{counter="allocated"}': 5.0,
        'lianfang_malloc_bytes{counter="dirty"}': 4096.0,
        "process_resident_memory_bytes": 9.0,
    }
    assert malloc_counters(scraped) == {"allocated": 5, "dirty": 4096}
    assert malloc_counters({"process_resident_memory_bytes": 9.0}) is None
    assert malloc_counters(None) is None


def test_a_process_that_lived_under_ten_minutes_gets_no_verdict() -> None:
    samples = [MemorySample(m, 7, 100 * MIB) for m in range(0, 4)]
    assert longest_process_growth(samples) == (
        "longest process 0-3 min: +0.0 MiB in its first half, +0.0 MiB in its second "
        "(under 10 min: flat or not, too short to tell)"
    )


def test_the_growth_line_says_when_no_process_lived_long_enough_to_tell() -> None:
    assert longest_process_growth([MemorySample(0, 7, 100 * MIB), MemorySample(5, 7, 101 * MIB)]) == (
        "longest process sampled 2 time(s): too short to tell"
    )
    assert longest_process_growth([MemorySample(0, 7, 0)]) == "no sample"


def test_trace_memory_sets_the_heap_watchs_interval_in_each_services_environment_and_is_off_by_default() -> (
    None
):
    args = parse_args(["--trace-memory", "60"])
    assert service_env(trace_memory_s=args.trace_memory) == {"LIANFANG_TRACEMALLOC_EVERY_S": "60"}
    assert service_env(trace_memory_s=parse_args(["--trace-memory", "2.5"]).trace_memory) == {
        "LIANFANG_TRACEMALLOC_EVERY_S": "2.5"
    }
    assert service_env(trace_memory_s=parse_args([]).trace_memory) == {}


def test_no_faults_runs_the_load_alone_and_faults_are_on_by_default() -> None:
    assert parse_args(["--no-faults"]).no_faults
    assert not parse_args([]).no_faults


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "often"])
def test_trace_memory_refuses_what_is_not_a_number_of_seconds(value: str) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--trace-memory", value])


def test_the_hub_s_series_shows_what_its_rocksdb_stores_held_beside_each_sample() -> None:
    samples = [
        MemorySample(0, 7, 99 * MIB, rocksdb=MIB // 10),
        MemorySample(5, 7, 102 * MIB, rocksdb=None),  # not read: the hub did not answer
        MemorySample(10, 8, 119 * MIB, rocksdb=int(5.6 * MIB)),
    ]
    assert memory_series(samples) == "0:99 (RocksDB 0.1)  5:102  10:119 (new process) (RocksDB 5.6)"


def test_the_hub_s_series_shows_its_rocksdb_files_awaiting_compaction_where_read() -> None:
    samples = [
        MemorySample(
            0, 7, 99 * MIB, rocksdb=MIB, level0=level0_files({"lianfang_hub_rocksdb_level0_files": 9.0})
        ),
        MemorySample(5, 7, 102 * MIB, rocksdb=2 * MIB, level0=level0_files({})),  # an older hub
    ]
    assert memory_series(samples) == "0:99 (RocksDB 1.0, 9 level-0 files)  5:102 (RocksDB 2.0)"
    assert level0_files(None) is None


def test_the_rocksdb_share_sums_every_kind_of_the_hub_s_gauge_and_is_unknown_without_it() -> None:
    scraped = {
        'lianfang_hub_rocksdb_memory_bytes{kind="memtables"}': 2_642_000.0,
        'lianfang_hub_rocksdb_memory_bytes{kind="block_cache"}': 3_135_000.0,
        'lianfang_hub_rocksdb_memory_bytes{kind="table_readers"}': 42_000.0,
        "lianfang_hub_rocksdb_memory_bound_bytes": 37_748_736.0,
        "lianfang_hub_rocksdb_stores_open": 9.0,
    }
    assert rocksdb_bytes(scraped) == 5_819_000
    assert rocksdb_bytes({"lianfang_hub_rocksdb_memory_bound_bytes": 37_748_736.0}) is None  # not sampled yet
    assert rocksdb_bytes(None) is None  # /metrics did not answer


def test_the_hub_s_inbox_lag_is_read_per_partition_from_its_lag_gauge_and_only_for_its_inbox() -> None:
    scraped = {
        'lianfang_consumer_lag{group="t.hub",partition="1",topic="t.lianfang.inbox.hub.v1"}': 972.0,
        'lianfang_consumer_lag{group="t.hub",partition="0",topic="t.lianfang.inbox.hub.v1"}': 1044.0,
        'lianfang_consumer_lag{group="t.hub",partition="0",topic="t.lianfang.clock.v1"}': 7.0,
        "lianfang_hub_rocksdb_stores_open": 9.0,
    }
    assert hub_inbox_lag(scraped) == {0: 1044.0, 1: 972.0}
    assert hub_inbox_lag({"lianfang_hub_rocksdb_stores_open": 9.0}) is None  # not sampled yet
    assert hub_inbox_lag(None) is None


def test_the_hub_counts_as_drained_only_with_every_partition_committed_past_its_last_record() -> None:
    assert hub_drained({0: 0.0, 1: 1.0, 2: 0.0})  # without tails: a transaction's marker may be last
    assert not hub_drained({0: 0.0, 1: 2.0, 2: 0.0})
    # partition 2 ends in the commit markers of three interleaved transactions, after its last record
    assert hub_drained({0: 1.0, 1: 1.0, 2: 3.0}, {0: 1, 1: 1, 2: 3})
    assert not hub_drained({0: 1.0, 1: 1.0, 2: 4.0}, {0: 1, 1: 1, 2: 3})
    assert not hub_drained({0: 1044.0, 1: 972.0}, {0: 1, 1: 1})
    assert not hub_drained(None)  # never read: not shown drained


def test_victims_without_an_alert_are_counted_by_the_hub_inbox_partition_their_leads_are_keyed_to() -> None:
    subjects = [f"p1.victim{i}" for i in range(30)]
    by = {p: sum(1 for s in subjects if partition_for(s.encode(), 3) == p) for p in range(3)}
    line = missing_by_partition(subjects, {0: 1, 1: 1, 2: 1})
    assert line == " (by hub inbox partition: " + ", ".join(f"{p}: {n}" for p, n in by.items() if n) + ")"
    assert missing_by_partition([], {0: 1}) == ""
    assert missing_by_partition(subjects, None) == ""


def test_a_soak_with_a_victim_left_without_an_alert_is_not_ok() -> None:
    def result(missing: list[str]) -> SoakResult:
        check = Check(
            accepted=2, delivered=2, lost=[], duplicated=[], alerts=2 - len(missing),
            missing_alerts=missing, duplicate_alerts=[],
        )  # fmt: skip
        return SoakResult(offered=2, check=check, p99_s=1.0, hub_lag={0: 0}, hub_tail={0: 0})

    assert result([]).ok
    assert not result(["p1.victim"]).ok
    assert "missing alerts 1 (by hub inbox partition: " in result(["p1.victim"]).lines()[1]


_STAND_IN = """
import sys, time
from pathlib import Path
import tests.faults.soak as soak

def stand_in(tmp, **kw):
    try:
        Path(sys.argv[1], "started").touch()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.05)  # a soak's loop, waiting for the signal
    finally:
        Path(sys.argv[1], "taken down").touch()  # where the soak takes its bed down

soak.soak = stand_in
sys.exit(soak.main(["--minutes", "1"]))
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_ends_the_soak_through_the_teardown_of_its_bed_even_started_in_the_background(
    tmp_path: Path, signum: signal.Signals
) -> None:
    def like_a_background_job() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # what `cmd &` gives a job

    proc = subprocess.Popen(
        [sys.executable, "-c", _STAND_IN, str(tmp_path)],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=like_a_background_job,  # noqa: PLW1509 - the child runs no threads yet
    )
    deadline = time.monotonic() + 60
    while not (tmp_path / "started").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # poll interval inside a deadline loop
    assert (tmp_path / "started").exists(), proc.communicate()[1]
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert (tmp_path / "taken down").exists()
    assert proc.returncode == 128 + signum
    assert f"stopped by {signum.name}; taking the bed down" in err


def test_the_bed_finds_the_mounts_left_under_its_directory_deepest_first() -> None:
    """What its teardown unmounts: a full-disk fault cut short leaves a broker's tmpfs mounted."""
    found = _mounts_under(Path("/proc"))
    assert found[-1] == Path("/proc")
    assert all(Path("/proc") in point.parents for point in found[:-1])
    assert _mounts_under(REPO / "docs") == []


def test_the_report_reads_each_service_at_rest_after_its_memory_under_load() -> None:
    check = Check(
        accepted=1, delivered=1, lost=[], duplicated=[], alerts=1, missing_alerts=[], duplicate_alerts=[]
    )
    under_load = [MemorySample(m, 7, 100 * MIB) for m in range(0, 31)]
    result = SoakResult(
        offered=1,
        check=check,
        p99_s=1.0,
        memory={"hub": under_load, "gateway": under_load},
        at_rest={"hub": MemorySample(32, 7, 99 * MIB)},
    )
    lines = result.lines()
    hub = lines.index(next(line for line in lines if line.startswith("RSS hub      longest process")))
    assert lines[hub + 1] == (
        "RSS hub      at rest: RSS 99.0 MiB at minute 32: -1.0 since its start (minute 0), -1.0 since its "
        "last samples under load"
    )
    assert not any(line.startswith("RSS gateway  at rest") for line in lines)
