"""The heap watch (services.kernel.heapwatch): its settings, the report it makes of a snapshot's
statistics; really started in this process, a report that names the line that allocated; and each
service's entry point starting it."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import tracemalloc
from dataclasses import dataclass

import pytest
from pydantic import ValidationError

from services.kernel import allocator, heapwatch
from services.kernel.errors import UsageError
from services.kernel.heapwatch import HeapwatchSettings, Tally, report, short_path, tally
from tests.workers import REPO

pytestmark = pytest.mark.unit

REPO_ROOT = "/srv/lianfang"
STDLIB = "/usr/lib/python3.11"
ROOTS = (REPO_ROOT, STDLIB)


@dataclass(frozen=True)
class Frame:
    filename: str
    lineno: int


@dataclass(frozen=True)
class Statistic:
    """What tracemalloc's ``Statistic`` has: frames oldest first, bytes and blocks."""

    traceback: tuple[Frame, ...]
    size: int
    count: int


def stat(size: int, count: int, *frames: tuple[str, int]) -> Statistic:
    """A statistic of ``frames`` given most recent first, as a report prints them."""
    return Statistic(tuple(Frame(f, n) for f, n in reversed(frames)), size, count)


# --------------------------------------------------------------------------- settings


def test_the_watch_is_off_by_default_and_starting_it_then_does_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LIANFANG_TRACEMALLOC_EVERY_S", raising=False)
    monkeypatch.delenv("LIANFANG_TRACEMALLOC_FRAMES", raising=False)
    assert HeapwatchSettings.from_env() == HeapwatchSettings(every_s=0, frames=1)
    was_tracing = tracemalloc.is_tracing()
    assert heapwatch.start() is None
    assert tracemalloc.is_tracing() == was_tracing


def test_the_settings_are_read_from_the_environment_and_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIANFANG_TRACEMALLOC_EVERY_S", "60")
    monkeypatch.setenv("LIANFANG_TRACEMALLOC_FRAMES", "3")
    settings = HeapwatchSettings.from_env()
    assert (settings.every_s, settings.frames) == (60.0, 3)
    with pytest.raises(ValidationError):
        settings.every_s = 1  # type: ignore[misc]


BAD = {
    "a negative interval": ("LIANFANG_TRACEMALLOC_EVERY_S", "-5"),
    "an interval that is not a number": ("LIANFANG_TRACEMALLOC_EVERY_S", "often"),
    "an infinite interval": ("LIANFANG_TRACEMALLOC_EVERY_S", "inf"),
    "no frames": ("LIANFANG_TRACEMALLOC_FRAMES", "0"),
    "a fractional number of frames": ("LIANFANG_TRACEMALLOC_FRAMES", "1.5"),
}


@pytest.mark.parametrize(("variable", "value"), BAD.values(), ids=BAD.keys())
def test_a_bad_setting_is_a_usage_error_naming_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(UsageError, match=f"^the heap watch's settings: {variable}: "):
        heapwatch.start()
    assert not tracemalloc.is_tracing()


# --------------------------------------------------------------------------- the pure core

PATHS = {
    "a library's file is cut after site-packages": (
        "/opt/venv/lib/python3.11/site-packages/aiokafka/consumer/fetcher.py",
        "aiokafka/consumer/fetcher.py",
    ),
    "the repository's file is cut after its root": (
        f"{REPO_ROOT}/services/router/app.py",
        "services/router/app.py",
    ),
    "the standard library's file is cut after its folder": (
        f"{STDLIB}/asyncio/events.py",
        "asyncio/events.py",
    ),
    "a file elsewhere is kept whole": ("/tmp/probe.py", "/tmp/probe.py"),
    "code without a file is kept as it is": ("<string>", "<string>"),
}


@pytest.mark.parametrize(("path", "short"), PATHS.values(), ids=PATHS.keys())
def test_paths_are_shortened(path: str, short: str) -> None:
    assert short_path(path, ROOTS) == short


def test_the_blocks_of_tracemalloc_importlib_and_the_watch_itself_are_left_out() -> None:
    sites = tally(
        [
            stat(100, 1, (tracemalloc.__file__, 558)),
            stat(200, 2, ("<frozen importlib._bootstrap_external>", 729)),
            stat(300, 3, ("<frozen importlib._bootstrap>", 241)),
            stat(400, 4, (heapwatch.__file__, 10)),
            stat(500, 5, (f"{REPO_ROOT}/services/hub/app.py", 7)),
        ],
        roots=ROOTS,
    )
    assert sites == {(("services/hub/app.py", 7),): (500, 5)}


def test_a_site_of_several_frames_lists_the_most_recent_first_and_is_left_out_only_by_that_frame() -> None:
    sites = tally(
        [
            stat(
                64, 1, (f"{REPO_ROOT}/services/kernel/jsonx.py", 30), ("<frozen importlib._bootstrap>", 241)
            ),
            stat(
                32, 1, ("<frozen importlib._bootstrap>", 241), (f"{REPO_ROOT}/services/kernel/jsonx.py", 30)
            ),
        ],
        roots=ROOTS,
    )
    assert sites == {(("services/kernel/jsonx.py", 30), ("<frozen importlib._bootstrap>", 241)): (64, 1)}


def test_sites_whose_shortened_paths_coincide_are_summed() -> None:
    sites = tally(
        [
            stat(10, 1, ("/a/site-packages/faust/app.py", 3)),
            stat(20, 2, ("/b/site-packages/faust/app.py", 3)),
        ],
        roots=ROOTS,
    )
    assert sites == {(("faust/app.py", 3),): (30, 3)}


def site(path: str, line: int) -> tuple[tuple[str, int], ...]:
    return ((path, line),)


FIRST: Tally = {
    site("services/router/app.py", 10): (10 * 1024, 10),
    site("aiokafka/fetcher.py", 20): (500 * 1024, 50),
    site("faust/streams.py", 30): (40 * 1024, 4),
}
NOW: Tally = {
    site("services/router/app.py", 10): (12 * 1024, 9),  # grew in bytes though it has a block fewer
    site("aiokafka/fetcher.py", 20): (600 * 1024, 60),
    site("faust/streams.py", 30): (20 * 1024, 2),  # shrank: not growth
    site("services/router/seen.py", 40): (3 * 1024, 30),  # new since the baseline
}


def test_the_report_lists_the_sites_grown_most_then_the_largest_with_the_totals_and_their_change() -> None:
    text = report(
        at_s=900.4,
        first_at_s=60.2,
        traced=2**20 + 635 * 1024,  # the sites' 635 KiB and 1 MiB left out
        rss=(80 * 2**20, 86 * 2**20),
        overhead=7 * 2**20,
        took_s=0.123,
        first=FIRST,
        now=NOW,
    )
    assert text.splitlines() == [
        "heap at 900 s, change since 60 s in brackets: traced 0.6 MiB (+0.1), RSS 86.0 MiB (+6.0); "
        "left out 1.0 MiB, tracemalloc's own 7.0 MiB, snapshot 0.12 s",
        "  grown most (15):",
        "    aiokafka/fetcher.py:20 +100.0 KiB (+10)",
        "    services/router/seen.py:40 +3.0 KiB (+30)",
        "    services/router/app.py:10 +2.0 KiB (-1)",
        "  largest now (5):",
        "    aiokafka/fetcher.py:20 600.0 KiB (60)",
        "    faust/streams.py:30 20.0 KiB (2)",
        "    services/router/app.py:10 12.0 KiB (9)",
        "    services/router/seen.py:40 3.0 KiB (30)",
    ]


SMAPS = """\
55d0c0000000-55d0c0400000 rw-p 00000000 00:00 0                          [heap]
Size:               4096 kB
Rss:                3000 kB
7f0000000000-7f0000100000 rw-p 00000000 00:00 0
Size:               1024 kB
Rss:                1020 kB
7f0000100000-7f0000200000 rw-p 00000000 00:00 0
Size:               1024 kB
Rss:                 512 kB
7f0000200000-7f0004200000 rw-p 00000000 00:00 0
Size:              65536 kB
Rss:                2048 kB
7f1000000000-7f1000300000 r-xp 00000000 08:01 1234                       /usr/lib/x86_64-linux-gnu/libcrypto.so.3
Size:               3072 kB
Rss:                1500 kB
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
Rss:                  40 kB
"""


def test_resident_memory_is_split_into_brk_heap_pymalloc_sized_anonymous_other_anonymous_and_files() -> None:
    assert heapwatch.resident_by_kind(SMAPS) == {
        "brk heap": 3000 * 1024,
        "anon 1 MiB": (1020 + 512) * 1024,
        "anon other": 2048 * 1024,
        "files": 1500 * 1024,
        "other": 40 * 1024,
    }


def test_this_process_s_mappings_add_up_to_about_its_rss() -> None:
    kinds = heapwatch.resident_mappings()
    rss = heapwatch.rss_bytes()
    assert kinds is not None
    assert rss is not None
    assert abs(sum(kinds.values()) - rss) < 0.05 * rss, (kinds, rss)


ThenNow = tuple[dict[str, int], dict[str, int]]


def _second_line(*, mappings: ThenNow | None = None, jemalloc: ThenNow | None = None) -> str:
    """The line after the header of a report of :data:`FIRST` and :data:`NOW` with these counters."""
    text = report(
        at_s=900,
        first_at_s=60,
        traced=0,
        rss=(80 * 2**20, 83 * 2**20),
        overhead=0,
        took_s=0.1,
        first=FIRST,
        now=NOW,
        mappings=mappings,
        jemalloc=jemalloc,
    )
    return text.splitlines()[1]


def test_the_report_shows_each_kind_of_mapping_with_its_change() -> None:
    then = dict.fromkeys(heapwatch.MAPPING_KINDS, 2**20)
    now = {**then, "anon other": 4 * 2**20}
    assert _second_line(mappings=(then, now)) == (
        "  resident by mapping: brk heap 1.0 MiB (+0.0), anon 1 MiB 1.0 MiB (+0.0), "
        "anon other 4.0 MiB (+3.0), files 1.0 MiB (+0.0), other 1.0 MiB (+0.0)"
    )


def test_on_jemalloc_the_report_shows_what_the_program_holds_beside_what_the_allocator_keeps() -> None:
    then = {"allocated": 30 * 2**20, "active": 32 * 2**20, "metadata": 2**20, "resident": 40 * 2**20}
    then |= {"retained": 0, "dirty": 2**20, "muzzy": 0}
    now = {**then, "resident": 46 * 2**20, "retained": 2**20, "dirty": 7 * 2**20}
    assert _second_line(jemalloc=(then, now)) == (
        "  jemalloc: allocated 30.0 MiB (+0.0), active 32.0 MiB (+0.0), metadata 1.0 MiB (+0.0), "
        "resident 46.0 MiB (+6.0), retained 1.0 MiB (+1.0), dirty 7.0 MiB (+6.0), muzzy 0.0 MiB (+0.0)"
    )


def test_on_jemalloc_the_report_tells_the_anonymous_memory_outside_it_with_its_change() -> None:
    mappings_then = {
        **dict.fromkeys(heapwatch.MAPPING_KINDS, 0),
        "anon 1 MiB": 10 * 2**20,
        "anon other": 50 * 2**20,
    }
    mappings_now = {**mappings_then, "anon other": 58 * 2**20}
    jemalloc_then = {"allocated": 30 * 2**20, "active": 32 * 2**20, "resident": 40 * 2**20, "retained": 0}
    jemalloc_now = {**jemalloc_then, "resident": 41 * 2**20}
    text = heapwatch.report(
        at_s=120,
        first_at_s=60,
        traced=0,
        rss=(None, None),
        overhead=0,
        took_s=0,
        first={},
        now={},
        mappings=(mappings_then, mappings_now),
        jemalloc=(jemalloc_then, jemalloc_now),
    )
    assert text.splitlines()[2].endswith("; anonymous outside jemalloc 27.0 MiB (+7.0)")


def test_jemalloc_s_counters_are_read_in_a_process_on_it_and_none_in_one_on_glibc() -> None:
    probe = (
        "from services.kernel import allocator\n"
        "on = allocator.Jemalloc.load()\n"
        "before = None if on is None else on.stats()\n"
        "block = bytearray(64 * 2**20)\n"
        "after = None if on is None else on.stats()\n"
        "print('none' if before is None or after is None else after['allocated'] - before['allocated'] >= 64 * 2**20)\n"
    )
    clean = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    on_jemalloc = allocator.preload_env(allocator.MallocSettings(), env={})
    assert on_jemalloc, "no jemalloc found on this machine: deploy/system-deps.sh installs libjemalloc2"
    for env, expected in ((on_jemalloc, "True"), ({}, "none")):
        done = subprocess.run(
            [sys.executable, "-c", probe],
            cwd=REPO,
            env={**clean, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert done.stdout.strip() == expected


def test_the_report_keeps_to_15_sites_grown_and_5_largest_and_says_when_nothing_grew() -> None:
    many: Tally = {site(f"m{i}.py", i): (i * 1024, i) for i in range(1, 31)}
    lines = report(
        at_s=2, first_at_s=1, traced=0, rss=(1, 1), overhead=0, took_s=0, first={}, now=many
    ).splitlines()
    assert lines[2] == "    m30.py:30 +30.0 KiB (+30)"
    assert lines.index("  largest now (5):") == 2 + 15
    assert len(lines) == 2 + 15 + 1 + 5
    lines = report(
        at_s=2, first_at_s=1, traced=0, rss=(1, 1), overhead=0, took_s=0, first=many, now=many
    ).splitlines()
    assert lines[1:3] == ["  grown most (15):", "    nothing"]


def test_a_site_of_several_frames_is_printed_most_recent_first_and_an_unknown_rss_as_a_question_mark() -> (
    None
):
    now: Tally = {(("services/kernel/jsonx.py", 30), ("services/router/app.py", 99)): (2048, 2)}
    lines = report(
        at_s=2, first_at_s=1, traced=2048, rss=(None, None), overhead=0, took_s=0, first={}, now=now
    ).splitlines()
    assert "RSS ?;" in lines[0]
    assert lines[2] == "    services/kernel/jsonx.py:30 < services/router/app.py:99 +2.0 KiB (+2)"


# --------------------------------------------------------------------------- really started


def test_a_started_watch_reports_the_line_that_allocated_after_its_baseline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert not tracemalloc.is_tracing()
    caplog.set_level(logging.WARNING, logger="lianfang.heapwatch")
    watch = heapwatch.start(HeapwatchSettings(every_s=0.2))
    assert watch is not None
    try:
        assert watch.baseline.wait(60)
        line = sys._getframe().f_lineno + 1
        kept = [bytearray(1024) for _ in range(4000)]  # about 4 MiB, alive until the end
        where = f"tests/unit/test_heapwatch.py:{line} +"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the first report after the baseline names the line
            if any(where in r.getMessage() for r in caplog.records):
                break
            time.sleep(0.05)
        reports = [r.getMessage() for r in caplog.records if r.getMessage().startswith("heap at ")]
        assert any(where in text for text in reports), reports[-1:] or "no report"
        assert len(kept) == 4000
    finally:
        watch.stop()
    assert not tracemalloc.is_tracing()


# --------------------------------------------------------------------------- wired into every service

ENTRY_POINTS = {
    "the router": ["-m", "services.router"],
    "the hub": ["-m", "services.hub"],
    "the gateway": ["-m", "services.gateway"],
    "the console": ["-m", "services.console"],
    "the pseudonymizer": ["-m", "services.pseudonymizer"],
    "the timestamp service": ["-m", "services.timestamp"],
    "lianfang serve": ["-m", "services", "serve", "router", "--bootstrap", "127.0.0.1:1"],
}


@pytest.mark.parametrize("argv", ENTRY_POINTS.values(), ids=ENTRY_POINTS.keys())
def test_each_service_starts_the_watch_first_and_stops_on_a_bad_setting_naming_it(argv: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, *argv],
        cwd=REPO,
        env={**os.environ, "LIANFANG_TRACEMALLOC_EVERY_S": "-1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "the heap watch's settings: LIANFANG_TRACEMALLOC_EVERY_S: " in done.stderr
