"""Which lines of Python code hold more memory as a long-running service runs: an opt-in diagnostic.

A service's resident memory can grow for reasons its own state does not explain (buffers of a client
library, caches, fragments kept by the allocator). With ``LIANFANG_TRACEMALLOC_EVERY_S`` set, each
service started through :func:`start` (right after :func:`services.kernel.allocator.configure`) runs
``tracemalloc`` and a daemon thread that, every ``every_s`` seconds:

1. takes a snapshot and groups its blocks by allocation site (a line, or ``frames`` lines of the
   call stack), leaving out the blocks of ``tracemalloc`` itself, of ``importlib`` and of this module;
2. keeps the first such grouping, taken ``every_s`` after start so that start-up is left out, as the
   baseline (only the sites' totals, about 200 B a site, not the snapshot: a tuple a live block);
3. from the second on, logs one report at WARNING (:func:`report`): the memory of the sites and the
   process's RSS now and their change since the baseline, what was left out, what tracemalloc itself
   uses, how long the snapshot took, the 15 sites grown most since the baseline and the 5 largest now.

A report holds only file names, line numbers, sizes and counts, never an object's contents: the logs
must never hold personal data or keys. Paths are cut to what follows ``site-packages/``, the
repository or the standard library.

Only what goes through Python's allocator is traced: memory a C library takes from malloc itself
(RocksDB, OpenSSL) is not, so an RSS that grows beside a flat traced total points there, or at memory
the allocators keep (:mod:`services.kernel.allocator`).

Off by default, and then nothing is started and nothing costs anything. Tracing costs every
allocation of a Python object time and memory (``docs/operations.md`` has the figures): it is for a
soak or a probe, not for production.

Environment (:class:`HeapwatchSettings`):

- ``LIANFANG_TRACEMALLOC_EVERY_S``: seconds between two snapshots (default 0: off)
- ``LIANFANG_TRACEMALLOC_FRAMES``: frames of the call stack a site is told by (default 1, its line)
"""

from __future__ import annotations

import fnmatch
import logging
import re
import sysconfig
import threading
import time
import tracemalloc
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.kernel.allocator import JEMALLOC_STATS, Jemalloc
from services.kernel.errors import UsageError

__all__ = [
    "EXCLUDED",
    "HeapwatchSettings",
    "Site",
    "Tally",
    "Watch",
    "growth",
    "largest",
    "report",
    "resident_by_kind",
    "rss_bytes",
    "short_path",
    "start",
    "tally",
]

log = logging.getLogger("lianfang.heapwatch")

GROWN = 15
"""How many sites a report lists by growth since the baseline."""
LARGEST = 5
"""How many sites a report lists by size now."""
MAX_FRAMES = 100

EXCLUDED = re.compile(
    "|".join(
        fnmatch.translate(p) for p in (tracemalloc.__file__, "<frozen importlib.*>", "<unknown>", __file__)
    )
)
"""The files whose blocks a report leaves out: its own tools and the imports. Compiled once, here: a
pattern compiled while the watch runs would show as growth of ``re``'s cache."""

ROOTS = (
    str(Path(__file__).resolve().parents[2]),  # the repository
    sysconfig.get_paths()["stdlib"],
)
"""Folders cut from the front of a path (after ``site-packages/``, which is cut wherever it is)."""

Site = tuple[tuple[str, int], ...]
"""An allocation site: ``(file, line)`` frames, the most recent first, the paths shortened."""
Tally = dict[Site, tuple[int, int]]
"""Bytes and blocks allocated at each site and alive when the snapshot was taken."""


class HeapwatchSettings(BaseSettings):
    """The heap watch's settings, the same for every service. Environment: ``LIANFANG_TRACEMALLOC_<NAME>``."""

    model_config = SettingsConfigDict(
        env_prefix="LIANFANG_TRACEMALLOC_", frozen=True, extra="ignore", hide_input_in_errors=True
    )

    every_s: float = Field(
        default=0.0,
        ge=0,
        allow_inf_nan=False,
        description="seconds between two snapshots, each after the first reported; 0: off, nothing traced",
    )
    frames: int = Field(
        default=1,
        ge=1,
        le=MAX_FRAMES,
        description="frames of the call stack kept for each block: 1, its line; more cost more memory",
    )

    @classmethod
    def from_env(cls) -> HeapwatchSettings:
        """The settings from the environment; a bad one is a ``UsageError`` that names its variable."""
        try:
            return cls()
        except ValidationError as e:
            problems = "; ".join(
                f"LIANFANG_TRACEMALLOC_{'.'.join(map(str, err['loc'])).upper()}: {err['msg']}"
                for err in e.errors(include_input=False, include_url=False)
            )
            raise UsageError(f"the heap watch's settings: {problems}") from e


# --------------------------------------------------------------------------- pure core


class FrameLike(Protocol):
    @property
    def filename(self) -> str: ...
    @property
    def lineno(self) -> int: ...


class StatisticLike(Protocol):
    """What :func:`tally` reads of a ``tracemalloc.Statistic``: its frames, oldest first, and totals."""

    @property
    def traceback(self) -> Sequence[FrameLike]: ...
    @property
    def size(self) -> int: ...
    @property
    def count(self) -> int: ...


def short_path(path: str, roots: Sequence[str] = ROOTS) -> str:
    """``path`` after its last ``site-packages/``, else relative to the first of ``roots`` it lies in,
    else as it is (``<string>``, a frozen module)."""
    _, found, after = path.rpartition("site-packages/")
    if found:
        return after
    for root in roots:
        prefix = root.rstrip("/") + "/"
        if path.startswith(prefix):
            return path[len(prefix) :]
    return path


def tally(
    stats: Iterable[StatisticLike],
    *,
    roots: Sequence[str] = ROOTS,
    excluded: re.Pattern[str] = EXCLUDED,
) -> Tally:
    """Each site's bytes and blocks, from a snapshot's statistics. A block whose most recent frame is in
    a file ``excluded`` matches is left out; sites whose shortened paths coincide are summed."""
    sites: Tally = {}
    paths: dict[str, str] = {}  # one string a file, shared by its sites: a baseline is kept for hours
    for stat in stats:
        frames = list(stat.traceback)
        if frames and excluded.match(frames[-1].filename):
            continue
        site = tuple(
            (paths.get(f.filename) or paths.setdefault(f.filename, short_path(f.filename, roots)), f.lineno)
            for f in reversed(frames)
        )
        size, count = sites.get(site, (0, 0))
        sites[site] = (size + stat.size, count + stat.count)
    return sites


def growth(first: Tally, now: Tally, n: int = GROWN) -> list[tuple[Site, int, int]]:
    """The ``n`` sites whose bytes grew most from ``first`` to ``now``, with the growth in bytes and in
    blocks; only sites that grew."""
    grown = [
        (site, size - first.get(site, (0, 0))[0], count - first.get(site, (0, 0))[1])
        for site, (size, count) in now.items()
    ]
    grown = [g for g in grown if g[1] > 0]
    grown.sort(key=lambda g: (-g[1], g[0]))
    return grown[:n]


def largest(now: Tally, n: int = LARGEST) -> list[tuple[Site, int, int]]:
    """The ``n`` sites holding the most bytes now, with their bytes and blocks."""
    ranked = sorted(now.items(), key=lambda item: (-item[1][0], item[0]))
    return [(site, size, count) for site, (size, count) in ranked[:n]]


MAPPING_KINDS = ("brk heap", "anon 1 MiB", "anon other", "files", "other")
"""How :func:`resident_by_kind` splits resident memory: glibc's main heap (``[heap]``, grown with brk);
anonymous mappings of exactly 1 MiB (pymalloc's arenas, in CPython 3.10 and later); other anonymous
mappings (glibc's other arenas, its mmapped large blocks, thread stacks, C libraries' own mmaps, and
pymalloc's arenas too where the kernel merged neighbours into one mapping: a soak's router had 14 MiB
of single arenas and some 20 MiB more in 2 to 4 MiB mappings, all resident); file
mappings (the program's and its libraries' code and data, mapped files); the rest (``[stack]``, ...)."""

_MAPPING = re.compile(r"^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$")


def resident_by_kind(smaps: str) -> dict[str, int]:
    """The resident bytes of each of :data:`MAPPING_KINDS`, from the text of ``/proc/<pid>/smaps``."""
    kinds = dict.fromkeys(MAPPING_KINDS, 0)
    kind, size_kib = "other", 0
    for line in smaps.splitlines():
        mapping = _MAPPING.match(line)
        if mapping:
            name, size_kib = mapping.group(1), 0
            if name == "[heap]":
                kind = "brk heap"
            elif name.startswith("/"):
                kind = "files"
            else:
                kind = "anon" if not name else "other"
        elif line.startswith("Size:"):
            size_kib = int(line.split()[1])
        elif line.startswith("Rss:"):
            if kind == "anon":
                kind = "anon 1 MiB" if size_kib == 1024 else "anon other"
            kinds[kind] += int(line.split()[1]) * 1024
    return kinds


def outside_jemalloc(mappings: Mapping[str, int], jemalloc: Mapping[str, int]) -> int:
    """The resident anonymous bytes that jemalloc does not account for: thread stacks, C libraries' own
    mmaps, and pymalloc's arenas where Python keeps its small objects itself (not under
    ``PYTHONMALLOC=malloc``, as the launchers start services on jemalloc). jemalloc's ``resident`` is
    an upper bound of its own, so this is a lower bound."""
    return mappings.get("anon 1 MiB", 0) + mappings.get("anon other", 0) - jemalloc.get("resident", 0)


def _site(site: Site) -> str:
    return " < ".join(f"{path}:{line}" for path, line in site) or "?"


def _mib(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**20:.1f} MiB"


def _bytes(sites: Tally) -> int:
    return sum(size for size, _ in sites.values())


def _change(now: int | None, then: int | None) -> str:
    return "" if now is None or then is None else f" ({(now - then) / 2**20:+.1f})"


def _each(names: Sequence[str], then: Mapping[str, int], now: Mapping[str, int]) -> str:
    """``name MiB (+change)`` for each of ``names``, from their bytes ``then`` and ``now``."""
    return ", ".join(
        f"{name} {_mib(now.get(name, 0))}{_change(now.get(name, 0), then.get(name, 0))}" for name in names
    )


def report(
    *,
    at_s: float,
    first_at_s: float,
    traced: int,
    rss: tuple[int | None, int | None],
    overhead: int,
    took_s: float,
    first: Tally,
    now: Tally,
    mappings: tuple[Mapping[str, int], Mapping[str, int]] | None = None,
    jemalloc: tuple[Mapping[str, int], Mapping[str, int]] | None = None,
) -> str:
    """The report of a snapshot taken ``at_s`` seconds after start against the baseline ``first`` taken
    at ``first_at_s``. A header line: the bytes of the sites and the RSS ``(then, now)`` (``None`` where
    the OS does not tell it), each with its change; what the sites leave out of the ``traced`` total
    (imports, tracemalloc, this watch and its baseline); tracemalloc's own tables; and the seconds the
    snapshot took (it holds the GIL, so the service waits for part of it). Then the resident memory of
    each kind of mapping (``mappings``: then and now, :func:`resident_by_kind`) with its change, which
    tells growth outside Python's objects apart: kept by an allocator, or taken by a C library. On
    jemalloc, its counters then and now (``jemalloc``: :meth:`~services.kernel.allocator.Jemalloc.stats`):
    what the program holds against what the allocator keeps resident. Then a line a site
    (``file:line +KiB (+blocks)``, its callers after ``<`` when more than one frame is kept)."""
    counted, counted_first = _bytes(now), _bytes(first)
    lines = [
        f"heap at {at_s:.0f} s, change since {first_at_s:.0f} s in brackets: "
        f"traced {_mib(counted)}{_change(counted, counted_first)}, "
        f"RSS {_mib(rss[1])}{_change(rss[1], rss[0])}; "
        f"left out {_mib(traced - counted)}, tracemalloc's own {_mib(overhead)}, snapshot {took_s:.2f} s",
    ]
    if mappings is not None:
        lines.append("  resident by mapping: " + _each(MAPPING_KINDS, *mappings))
    if jemalloc is not None:
        line = "  jemalloc: " + _each(JEMALLOC_STATS, *jemalloc)
        if mappings is not None:  # where Python runs on pymalloc, its arenas are most of it
            before, after = (outside_jemalloc(m, j) for m, j in zip(mappings, jemalloc, strict=True))
            line += f"; anonymous outside jemalloc {_mib(after)}{_change(after, before)}"
        lines.append(line)
    lines.append(f"  grown most ({GROWN}):")
    grown = growth(first, now)
    lines += [f"    {_site(s)} {size / 1024:+.1f} KiB ({count:+d})" for s, size, count in grown]
    if not grown:
        lines.append("    nothing")
    lines.append(f"  largest now ({LARGEST}):")
    lines += [f"    {_site(s)} {size / 1024:.1f} KiB ({count})" for s, size, count in largest(now)]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the edge


def rss_bytes() -> int | None:
    """The process's resident memory now (``VmRSS``), or ``None`` without ``/proc`` (macOS)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def resident_mappings() -> dict[str, int] | None:
    """:func:`resident_by_kind` of this process, or ``None`` without ``/proc/self/smaps``."""
    try:
        with open("/proc/self/smaps") as smaps:
            return resident_by_kind(smaps.read())
    except (OSError, ValueError, IndexError):
        return None


class Watch:
    """The running watch: its thread logs a report every ``every_s`` after the baseline."""

    def __init__(self, settings: HeapwatchSettings, *, owns_tracing: bool) -> None:
        self.every_s = settings.every_s
        self.key = "lineno" if settings.frames == 1 else "traceback"
        self.owns_tracing = owns_tracing
        self.reports = 0
        self.baseline = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lianfang-heapwatch", daemon=True)

    def start_thread(self) -> None:
        self._thread.start()

    def _reading(self) -> tuple[Tally, int, int | None]:
        """The sites now, the bytes traced and the RSS, read before the snapshot: the sites' tally, a
        few MiB while it lives, is the watch's, not the service's."""
        rss = rss_bytes()
        sites = tally(tracemalloc.take_snapshot().statistics(self.key))
        return sites, tracemalloc.get_traced_memory()[0], rss

    def _run(self) -> None:
        started = time.monotonic()
        if self._stop.wait(self.every_s):
            return
        first, _, _ = self._reading()
        rss_first = rss_bytes()  # with the baseline, which the watch keeps from now on
        mappings_first = resident_mappings()
        on_jemalloc = Jemalloc.load()
        jemalloc_first = None if on_jemalloc is None else on_jemalloc.stats()
        first_at = time.monotonic() - started
        self.baseline.set()
        while not self._stop.wait(self.every_s):
            try:
                began = time.monotonic()
                mappings = resident_mappings()  # before the snapshot, as the RSS
                jemalloc = None if on_jemalloc is None else on_jemalloc.stats()
                now, traced, rss = self._reading()
                took = time.monotonic() - began
                text = report(
                    at_s=time.monotonic() - started,
                    first_at_s=first_at,
                    traced=traced,
                    rss=(rss_first, rss),
                    overhead=tracemalloc.get_tracemalloc_memory(),
                    took_s=took,
                    first=first,
                    now=now,
                    mappings=None
                    if mappings_first is None or mappings is None
                    else (mappings_first, mappings),
                    jemalloc=None
                    if jemalloc_first is None or jemalloc is None
                    else (jemalloc_first, jemalloc),
                )
            except Exception:  # a diagnostic never ends the service; the trace is our code's, no data
                log.exception("heap report failed")
                continue
            log.warning("%s", text)
            self.reports += 1

    def stop(self) -> None:
        """End the thread, and the tracing if it started it (tests; a service keeps it to its end)."""
        self._stop.set()
        self._thread.join()
        if self.owns_tracing:
            tracemalloc.stop()


def start(settings: HeapwatchSettings | None = None) -> Watch | None:
    """Start tracing and the reporting thread when ``every_s`` is positive (the environment's settings
    when ``None``; a bad one raises :class:`UsageError`); ``None``, and nothing done, when it is off.
    Call once, first thing after the allocator: blocks allocated before tracing starts are not seen."""
    settings = settings or HeapwatchSettings.from_env()
    if not settings.every_s:
        return None
    already = tracemalloc.is_tracing()
    if already:  # PYTHONTRACEMALLOC, or python -X tracemalloc: its frames stay
        log.warning("tracemalloc was already on, with %d frames", tracemalloc.get_traceback_limit())
    else:
        tracemalloc.start(settings.frames)
    watch = Watch(settings, owns_tracing=not already)
    watch.start_thread()
    log.warning(
        "tracemalloc on: heap reports every %g s from %g s on; it slows the service: not for production",
        settings.every_s,
        2 * settings.every_s,
    )
    return watch
