"""The C allocator's set-up (services.kernel.allocator): which calls the settings and the platform ask
for, and, in a real process on this machine's glibc (the services' Linux), that the arena cap and the
trim take effect."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from pydantic import ValidationError

from services.kernel import allocator
from services.kernel.allocator import MallocSettings, Plan, configure, plan, preload_library, with_preload
from tests.workers import REPO

pytestmark = pytest.mark.unit

PLANS = {
    "the defaults cap the arenas at 2 and trim every 30 s": (
        MallocSettings(),
        "glibc",
        Plan(arena_max=2, trim_interval_s=30.0),
    ),
    "an arena cap of 0 leaves glibc's own": (
        MallocSettings(arena_max=0, trim_interval_s=5),
        "glibc",
        Plan(arena_max=None, trim_interval_s=5.0),
    ),
    "a trim interval of 0 turns trimming off": (
        MallocSettings(arena_max=4, trim_interval_s=0),
        "glibc",
        Plan(arena_max=4, trim_interval_s=None),
    ),
    "without glibc (musl, macOS) nothing is done": (
        MallocSettings(),
        "",
        Plan(skipped="the C library is not glibc: malloc arenas and trimming left as they are"),
    ),
}


@pytest.mark.parametrize(("settings", "libc", "expected"), PLANS.values(), ids=PLANS.keys())
def test_the_plan_follows_the_settings_and_the_c_library(
    settings: MallocSettings, libc: str, expected: Plan
) -> None:
    assert plan(settings, libc=libc) == expected


def test_a_process_on_a_preloaded_jemalloc_leaves_glibc_s_malloc_alone() -> None:
    assert plan(MallocSettings(), libc="glibc", jemalloc=True) == Plan(
        skipped="jemalloc is the process's allocator (preloaded): glibc's malloc left alone"
    )


PRELOADS = {
    "auto takes the jemalloc the system has": ("auto", "libjemalloc.so.2", "libjemalloc.so.2"),
    "auto without a jemalloc keeps glibc's malloc": ("auto", None, None),
    "none keeps glibc's malloc though jemalloc is there": ("none", "libjemalloc.so.2", None),
    "a path is taken as it is": ("/opt/lib/libtcmalloc.so", "libjemalloc.so.2", "/opt/lib/libtcmalloc.so"),
}


@pytest.mark.parametrize(("choice", "found", "expected"), PRELOADS.values(), ids=PRELOADS.keys())
def test_the_library_to_preload_follows_the_setting_and_what_the_system_has(
    choice: str, found: str | None, expected: str | None
) -> None:
    assert preload_library(MallocSettings(preload=choice), found=found) == expected


def test_the_preload_goes_first_keeps_what_was_preloaded_and_is_not_added_twice() -> None:
    on_malloc = {"PYTHONMALLOC": "malloc"}
    assert with_preload({}, "libjemalloc.so.2") == {"LD_PRELOAD": "libjemalloc.so.2", **on_malloc}
    assert with_preload({"LD_PRELOAD": "/a.so:/b.so"}, "libjemalloc.so.2") == {
        "LD_PRELOAD": "libjemalloc.so.2 /a.so /b.so",
        **on_malloc,
    }
    assert with_preload({"LD_PRELOAD": "/a.so libjemalloc.so.2"}, "libjemalloc.so.2") == on_malloc
    assert with_preload({"LD_PRELOAD": "/a.so"}, None) == {}


def test_a_preload_puts_pythons_small_objects_in_it_unless_the_environment_chose_otherwise() -> None:
    assert with_preload({}, "libjemalloc.so.2")["PYTHONMALLOC"] == "malloc"
    assert with_preload({"PYTHONMALLOC": "pymalloc"}, "libjemalloc.so.2") == {
        "LD_PRELOAD": "libjemalloc.so.2"
    }
    assert "PYTHONMALLOC" not in with_preload({}, None)


ON_WHICH = (
    "import sys; from services.kernel import allocator; "
    "print(allocator.preloaded(), allocator.configure().glibc is None); sys._debugmallocstats()"
)
PYMALLOC_STATS = "Small block threshold"
"""The first line of ``sys._debugmallocstats()`` under pymalloc; without it Python prints only its free lists."""


def _run_with(env: dict[str, str], program: str) -> subprocess.CompletedProcess[str]:
    """``program`` in a new Python started with ``env`` (and no preload or ``PYTHONMALLOC`` of ours)."""
    clean = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "PYTHONMALLOC")}
    return subprocess.run(
        [sys.executable, "-c", program],
        cwd=REPO,
        env={**clean, "LIANFANG_MALLOC_TRIM_INTERVAL_S": "0", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def _allocator_of_a_service_started_with(env: dict[str, str]) -> str:
    """``"<on jemalloc> <glibc left alone> <small objects in pymalloc>"`` for a process started with ``env``."""
    done = _run_with(env, ON_WHICH)
    return f"{done.stdout.strip()} {PYMALLOC_STATS in done.stderr}"


def test_a_service_started_with_the_launchers_preload_runs_on_jemalloc_without_pymalloc_and_one_without_on_both() -> (
    None
):
    # jemalloc is a runtime package (deploy/system-deps.sh installs libjemalloc2 for make run and make test)
    added = allocator.preload_env(MallocSettings(), env={})
    assert added, "no jemalloc found on this machine: deploy/system-deps.sh installs libjemalloc2"
    assert _allocator_of_a_service_started_with(added) == "True True False"
    assert _allocator_of_a_service_started_with(
        allocator.preload_env(MallocSettings(preload="none"), env={})
    ) == ("False False True")


def test_the_settings_are_read_from_the_environment_and_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIANFANG_MALLOC_ARENA_MAX", "3")
    monkeypatch.setenv("LIANFANG_MALLOC_TRIM_INTERVAL_S", "12.5")
    settings = MallocSettings()
    assert (settings.arena_max, settings.trim_interval_s) == (3, 12.5)
    with pytest.raises(ValidationError):
        settings.arena_max = 1  # type: ignore[misc]


def test_negative_settings_are_refused() -> None:
    with pytest.raises(ValidationError):
        MallocSettings(arena_max=-1)
    with pytest.raises(ValidationError):
        MallocSettings(trim_interval_s=-1)


def test_without_glibc_configure_does_nothing_and_its_trim_is_a_no_op(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    memory = configure(MallocSettings(trim_interval_s=0.01))
    memory.trim()
    assert memory.glibc is None
    assert memory.trims == 0


# Run in a fresh interpreter: an arena cap binds only arenas not yet made, and each test needs its own.
ARENAS = textwrap.dedent(
    """
    import ctypes, threading
    from services.kernel import allocator

    allocator.configure()
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    started = threading.Barrier(12)
    done = threading.Event()

    def thread():
        libc.malloc(4096)  # this thread's first malloc: glibc gives it an arena
        started.wait()
        done.wait()

    threads = [threading.Thread(target=thread) for _ in range(11)]
    for t in threads:
        t.start()
    started.wait()
    libc.malloc_stats()  # one "Arena N:" block a malloc arena, on stderr
    done.set()
    """
)


def _arenas(env: dict[str, str]) -> int:
    done = subprocess.run(
        [sys.executable, "-c", ARENAS],
        cwd=REPO,
        env={**os.environ, "LIANFANG_MALLOC_TRIM_INTERVAL_S": "0", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return len(re.findall(r"^Arena \d+:", done.stderr, re.MULTILINE))


def test_a_process_configured_with_an_arena_cap_of_2_has_at_most_2_arenas_among_11_threads() -> None:
    assert _arenas({"LIANFANG_MALLOC_ARENA_MAX": "2"}) == 2
    assert _arenas({"LIANFANG_MALLOC_ARENA_MAX": "0"}) > 2  # glibc's own: an arena a thread, up to 8 a core


TRIM = textwrap.dedent(
    """
    import ctypes, os, sys, time
    from services.kernel import allocator

    def rss():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))

    memory = allocator.configure()
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(1024) for _ in range(40_000)]
    for p in blocks:
        ctypes.memset(p, 1, 1024)  # touched: resident
    # Measured before the frees: on a loaded machine a trim may run while they go on, and give back part
    # of the memory before a reading taken after them.
    touched = rss()
    for i, p in enumerate(blocks):
        if i % 64 != 63:  # every 64th kept: the freed 40 MB stay inside the heap, not at its top
            libc.free(p)
    deadline = time.monotonic() + float(sys.argv[1])
    # Polling until the trim thread has returned from a trim that gave the memory back (its count goes
    # up after the trim: the RSS alone may drop first), or the deadline.
    while (rss() > touched - 20 * 2**20 or memory.trims == 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    print(touched - rss(), memory.trims)
    """
)


def _trimmed(env: dict[str, str], wait_s: float) -> tuple[int, int]:
    done = subprocess.run(
        [sys.executable, "-c", TRIM, str(wait_s)],
        cwd=REPO,
        env={**os.environ, "LIANFANG_MALLOC_ARENA_MAX": "0", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    released, trims = done.stdout.split()
    return int(released), int(trims)


def test_a_process_configured_to_trim_hands_the_memory_it_freed_back_to_the_os() -> None:
    released, trims = _trimmed({"LIANFANG_MALLOC_TRIM_INTERVAL_S": "0.2"}, wait_s=30)
    assert trims >= 1
    assert released > 20 * 2**20
    released, trims = _trimmed({"LIANFANG_MALLOC_TRIM_INTERVAL_S": "0"}, wait_s=1)
    assert trims == 0
    assert released < 20 * 2**20


EXPORTED = (
    "import prometheus_client\n"
    "from services.kernel import allocator\n"
    "allocator.configure()\n"
    "allocator.configure()  # once a process, however often it is called\n"
    "block = bytearray(32 * 2**20)\n"
    "families = [m for m in prometheus_client.REGISTRY.collect() if m.name == 'lianfang_malloc_bytes']\n"
    "values = {s.labels['counter']: s.value for m in families for s in m.samples}\n"
    "print(len(families), sorted(values), values.get('allocated', 0) >= 32 * 2**20,\n"
    "      values.get('resident', 0) >= values.get('allocated', 1))\n"
)


def _exported_by_a_process_started_with(env: dict[str, str]) -> str:
    return _run_with(env, EXPORTED).stdout.strip()


def test_a_service_on_jemalloc_exports_its_counters_once_and_one_on_glibc_exports_none() -> None:
    added = allocator.preload_env(MallocSettings(), env={})
    assert added, "no jemalloc found on this machine: deploy/system-deps.sh installs libjemalloc2"
    counters = sorted(allocator.JEMALLOC_STATS)
    assert _exported_by_a_process_started_with(added) == f"1 {counters} True True"
    assert _exported_by_a_process_started_with({}) == "0 [] False False"


class _Mallctl:
    """A stand-in for jemalloc's ``mallctl``: the values by name it writes into the caller's size_t."""

    def __init__(self, values: dict[bytes, int]) -> None:
        self.values = values

    def __call__(self, name: bytes, old: Any, _size: Any, _new: Any, _newlen: int) -> int:
        if name == b"epoch":
            return 0
        if name not in self.values:
            return 2  # ENOENT, as jemalloc answers a name it does not have
        old._obj.value = self.values[name]  # old: ctypes.byref of the caller's c_size_t
        return 0


def test_jemalloc_s_page_counters_are_given_in_bytes_and_a_build_without_statistics_gives_none() -> None:
    values = {f"stats.{name}".encode(): 1000 + i for i, name in enumerate(allocator.JEMALLOC_STATS)}
    values |= {b"arenas.page": 4096, b"stats.arenas.4096.pdirty": 3, b"stats.arenas.4096.pmuzzy": 2}
    stats = allocator.Jemalloc(_Mallctl(values)).stats()
    assert stats is not None
    assert (stats["allocated"], stats["dirty"], stats["muzzy"]) == (1000, 3 * 4096, 2 * 4096)
    assert allocator.Jemalloc(_Mallctl({b"arenas.page": 4096})).stats() is None
