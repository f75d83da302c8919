"""The C allocator of a long-running service: how many malloc arenas it may use, and when freed memory
goes back to the operating system.

glibc's malloc keeps memory a process has freed, to reuse it: after a peak (a batch of records in
flight, 64 request threads each with its own arena, a hub's tables restored from their changelogs) the
resident memory stays at the peak's level, and with up to 8 arenas a core each thread's peak is kept
apart. Each long-running service calls :func:`configure` once, first thing, before it starts threads:

1. ``mallopt(M_ARENA_MAX, arena_max)`` caps the arenas, so the threads share a few heaps;
2. ``malloc_trim(0)`` every ``trim_interval_s`` (a daemon thread) hands the free pages of every arena
   back to the OS; a service may also call :meth:`Allocator.trim` after a known peak (the hub does,
   when its tables' recovery is complete).

Where the C library is not glibc (musl, macOS) nothing is done, and a debug line says so once. The
decision (:func:`plan`) is pure; :class:`Glibc` is the thin edge over ``ctypes``.

**jemalloc, preloaded.** glibc's heaps fragment over hours of Kafka batches, reconnections and
rebalances: under the soak's faults a router's resident memory still rose 6 MiB in its second quarter
of an hour with the cap and the trims. jemalloc (Debian's ``libjemalloc2``) returns freed memory by
itself, after ``dirty_decay_ms`` (10 s by default); under the same soak the services grew half as
much or less, one router in one run two thirds as much (docs/faults.md, runs J and K), never nothing.
An allocator must be in the process before it starts, so the launchers add :func:`preload_env` to each
service's environment: ``lianfang run`` and ``lianfang serve all`` (:func:`services.cli.bus.supervise`),
the soak's hosts, and the image (``LD_PRELOAD`` in its Containerfile, so ``lianfang serve router`` in a
pod too). A process running on jemalloc needs no arena cap and no trims: :func:`configure` sees it
(jemalloc's ``mallctl`` is there) and leaves glibc alone.

**Python's small objects too.** Python keeps its objects of up to 512 bytes in arenas of its own
(pymalloc, 1 MiB each, mapped by Python itself, not by ``malloc``) and gives an arena back only when
every object in it is gone: after a rebalance or a batch in flight a few long-lived objects keep whole
arenas. With jemalloc preloaded, the routers' and the gateway's growth under the soak's faults was all
there (docs/faults.md, run L). So with the preload comes ``PYTHONMALLOC=malloc`` (unless the
environment sets ``PYTHONMALLOC`` itself): Python's objects live in jemalloc, which hands free pages
back one at a time; the routers and the gateway were then flat (run M), for some 5 % more CPU by the
medians, within this machine's noise (docs/operations.md).

**Its counters on /metrics.** On jemalloc, :func:`configure` exports ``lianfang_malloc_bytes{counter}``
(:class:`JemallocCollector`): live allocations, resident pages, dirty and muzzy pages kept, read at each
scrape; beside the RSS they tell which of the three a growth is (the soak prints them a service).

Environment (:class:`MallocSettings`):

- ``LIANFANG_MALLOC_ARENA_MAX``: most malloc arenas (default 2; 0 leaves glibc's own, 8 a core)
- ``LIANFANG_MALLOC_TRIM_INTERVAL_S``: seconds between two ``malloc_trim(0)`` (default 30; 0: never,
  not even after a peak)
- ``LIANFANG_MALLOC_PRELOAD``: the allocator the launchers preload into a service: ``auto`` (default:
  jemalloc where the system has it, glibc's own where not), ``none``, or a library's path or soname
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import platform
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "JEMALLOC",
    "Allocator",
    "Glibc",
    "Jemalloc",
    "JemallocCollector",
    "MallocSettings",
    "Plan",
    "configure",
    "export_counters",
    "plan",
    "preload_env",
    "preloaded",
    "system_jemalloc",
]

log = logging.getLogger("lianfang.allocator")

M_ARENA_MAX = -8
"""``mallopt``'s parameter for the most arenas (glibc's ``malloc.h``)."""


class MallocSettings(BaseSettings):
    """The C allocator's settings, the same for every service. Environment: ``LIANFANG_MALLOC_<NAME>``."""

    model_config = SettingsConfigDict(
        env_prefix="LIANFANG_MALLOC_", frozen=True, extra="ignore", hide_input_in_errors=True
    )

    arena_max: int = Field(
        default=2, ge=0, description="most glibc malloc arenas the process's threads share; 0: glibc's own"
    )
    trim_interval_s: float = Field(
        default=30.0,
        ge=0,
        description="seconds between two malloc_trim(0), freed memory back to the OS; 0: never",
    )
    preload: str = Field(
        default="auto",
        min_length=1,
        description="the malloc library the launchers preload into each service: auto (jemalloc where "
        "the system has it), none (glibc's own), or a library's path or soname",
    )


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What :func:`configure` does: ``arena_max`` for ``mallopt`` (``None``: leave it), a trim every
    ``trim_interval_s`` (``None``: never); ``skipped`` says why nothing is done, if it is not."""

    arena_max: int | None = None
    trim_interval_s: float | None = None
    skipped: str | None = None


JEMALLOC = "jemalloc"
"""The library name :func:`preload_env` looks up for ``auto`` (``libjemalloc.so.2`` on Debian)."""


def plan(settings: MallocSettings, *, libc: str, jemalloc: bool = False) -> Plan:
    """The calls to make for ``settings`` with the C library ``libc`` (``platform.libc_ver()``'s name:
    ``"glibc"``, or ``""`` where Python cannot tell, as on musl and macOS); ``jemalloc``: whether the
    process runs on a preloaded jemalloc, which leaves glibc's malloc unused."""
    if jemalloc:
        return Plan(skipped="jemalloc is the process's allocator (preloaded): glibc's malloc left alone")
    if libc != "glibc":
        return Plan(
            skipped=f"the C library is {libc or 'not glibc'}: malloc arenas and trimming left as they are"
        )
    return Plan(
        arena_max=settings.arena_max or None,
        trim_interval_s=settings.trim_interval_s or None,
    )


def preload_library(settings: MallocSettings, *, found: str | None) -> str | None:
    """The library to preload for ``settings`` (``None``: glibc's own malloc); ``found`` is what the
    system has for :data:`JEMALLOC` (``None`` where it has none), used for ``auto``."""
    choice = settings.preload.strip()
    if choice == "none":
        return None
    if choice == "auto":
        return found
    return choice


PYTHON_ON_MALLOC = "malloc"
"""The ``PYTHONMALLOC`` a preloaded allocator comes with: Python's small objects in ``malloc`` (so in
jemalloc), not in pymalloc's own 1 MiB arenas, which go back to the OS only when wholly empty."""


def with_preload(env: Mapping[str, str], library: str | None) -> dict[str, str]:
    """What to add to ``env`` so that a process started with it loads ``library`` first and keeps
    Python's small objects in it: an ``LD_PRELOAD`` that keeps what ``env`` preloads already, and
    ``PYTHONMALLOC=malloc`` unless ``env`` chose a ``PYTHONMALLOC`` of its own; nothing for ``None``."""
    if library is None:
        return {}
    added: dict[str, str] = {}
    present = env.get("LD_PRELOAD", "").replace(":", " ").split()
    if library not in present:
        added["LD_PRELOAD"] = " ".join([library, *present])
    if "PYTHONMALLOC" not in env:
        added["PYTHONMALLOC"] = PYTHON_ON_MALLOC
    return added


@functools.cache
def system_jemalloc() -> str | None:
    """The system's jemalloc (its soname, ``libjemalloc.so.2`` on Debian), or ``None``; looked up once
    a process (``find_library`` runs ``ldconfig -p``: some milliseconds)."""
    return ctypes.util.find_library(JEMALLOC)


def preload_env(
    settings: MallocSettings | None = None, env: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The variables a launcher adds to a service's environment (``env``: the one it starts from, the
    launcher's own when ``None``) to run it on the allocator ``settings`` choose. Empty where glibc's
    own malloc is chosen, or ``auto`` finds no jemalloc (a debug line says so)."""
    settings = settings or MallocSettings()
    auto = settings.preload.strip() == "auto"
    library = preload_library(settings, found=system_jemalloc() if auto else None)
    if library is None and auto:
        log.debug("no jemalloc on this system (Debian: libjemalloc2): services run on glibc's malloc")
    return with_preload(os.environ if env is None else env, library)


JEMALLOC_STATS = ("allocated", "active", "metadata", "resident", "retained", "dirty", "muzzy")
"""jemalloc's counters :meth:`Jemalloc.stats` reads, in bytes: ``allocated``, what the program holds in
live allocations; ``active``, the pages those use; ``metadata``, jemalloc's own bookkeeping;
``resident``, what it has mapped and resident (all of the above, and its dirty pages); ``retained``,
what it keeps mapped but not resident; ``dirty`` and ``muzzy``, the freed pages its arenas keep before
they decay back to the OS (``dirty_decay_ms``, 10 s by default; ``muzzy_decay_ms``, 0). Allocated flat
with resident growing: memory the allocator keeps; allocated growing: memory some code holds (Python's
objects, which tracemalloc sees, or a C library's)."""

ALL_ARENAS = 4096
"""``MALLCTL_ARENAS_ALL``: the index under ``stats.arenas.`` that sums every arena."""

_PAGES = {"dirty": f"stats.arenas.{ALL_ARENAS}.pdirty", "muzzy": f"stats.arenas.{ALL_ARENAS}.pmuzzy"}
"""The counters jemalloc keeps in pages (times ``arenas.page``), by name in :data:`JEMALLOC_STATS`."""


class Jemalloc:
    """A preloaded jemalloc's control call (``mallctl``), through ``ctypes`` on the process's symbols;
    :meth:`load` gives ``None`` where the process runs on another allocator."""

    def __init__(self, mallctl: Any) -> None:
        self._mallctl = mallctl
        self._mallctl.argtypes = [
            ctypes.c_char_p,
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_size_t),
            ctypes.c_void_p,
            ctypes.c_size_t,
        ]
        self._mallctl.restype = ctypes.c_int

    @classmethod
    def load(cls) -> Jemalloc | None:
        mallctl = getattr(ctypes.CDLL(None), "mallctl", None)
        return None if mallctl is None else cls(mallctl)

    def _read(self, name: str) -> int | None:
        value, size = ctypes.c_size_t(0), ctypes.c_size_t(ctypes.sizeof(ctypes.c_size_t))
        if self._mallctl(name.encode(), ctypes.byref(value), ctypes.byref(size), None, 0) != 0:
            return None
        return value.value

    def stats(self) -> dict[str, int] | None:
        """:data:`JEMALLOC_STATS` now, in bytes; ``None`` where its build keeps no statistics."""
        epoch = ctypes.c_uint64(1)  # writing the epoch refreshes the counters jemalloc caches
        if self._mallctl(b"epoch", None, None, ctypes.byref(epoch), ctypes.sizeof(epoch)) != 0:
            return None
        page = self._read("arenas.page")
        stats: dict[str, int] = {}
        for name in JEMALLOC_STATS:
            value = self._read(_PAGES.get(name, f"stats.{name}"))
            if value is None or page is None:
                return None
            stats[name] = value * page if name in _PAGES else value
        return stats


MALLOC_BYTES = "lianfang_malloc_bytes"
"""The gauge :class:`JemallocCollector` exports, a series a counter of :data:`JEMALLOC_STATS`."""


class JemallocCollector:
    """``lianfang_malloc_bytes{counter}`` on the service's /metrics: jemalloc's counters, read at each
    scrape (a few ``mallctl`` calls). Beside ``process_resident_memory_bytes`` they tell a growth
    apart: live allocations (``allocated``), pages the allocator keeps (``resident`` minus
    ``allocated``), or memory outside it (the RSS minus ``resident``: thread stacks, libraries' own
    mappings). Nothing personal: byte counts."""

    def __init__(self, jemalloc: Jemalloc) -> None:
        self._jemalloc = jemalloc

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            MALLOC_BYTES,
            "jemalloc's counters, in bytes: allocated (live allocations), active (their pages), metadata, "
            "resident (mapped and resident, dirty pages included), retained (mapped, not resident), dirty "
            "and muzzy (freed pages kept until they decay)",
            labels=["counter"],
        )
        for name, value in (self._jemalloc.stats() or {}).items():
            family.add_metric([name], value)
        yield family


@functools.cache
def export_counters(registry: CollectorRegistry = REGISTRY) -> bool:
    """Register :class:`JemallocCollector` on ``registry`` once, where the process runs on jemalloc;
    whether it did."""
    jemalloc = Jemalloc.load()
    if jemalloc is None or jemalloc.stats() is None:
        return False
    registry.register(JemallocCollector(jemalloc))
    return True


def preloaded() -> bool:
    """Whether this process runs on a preloaded jemalloc."""
    return Jemalloc.load() is not None


class Glibc:
    """glibc's allocator calls, through ``ctypes`` on the process's own C library."""

    def __init__(self) -> None:
        self._lib = ctypes.CDLL(None)
        self._lib.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        self._lib.mallopt.restype = ctypes.c_int
        self._lib.malloc_trim.argtypes = [ctypes.c_size_t]
        self._lib.malloc_trim.restype = ctypes.c_int

    def set_arena_max(self, n: int) -> bool:
        """``mallopt(M_ARENA_MAX, n)``; whether glibc took it."""
        return bool(self._lib.mallopt(M_ARENA_MAX, n))

    def trim(self) -> bool:
        """``malloc_trim(0)``: the free pages of every arena back to the OS; whether any were."""
        return bool(self._lib.malloc_trim(0))


class Allocator:
    """The allocator as :func:`configure` set it up: :meth:`trim` after a known peak."""

    def __init__(self, glibc: Glibc | None, chosen: Plan) -> None:
        self.glibc = glibc
        self.plan = chosen
        self.trims = 0

    def trim(self) -> None:
        """Hand the memory malloc keeps free back to the OS now (nothing where glibc is absent or
        trimming is off)."""
        if self.glibc is not None and self.plan.trim_interval_s is not None:
            self.glibc.trim()
            self.trims += 1

    def start_trimming(self) -> None:
        """A daemon thread that trims every ``trim_interval_s`` (none when it is off)."""
        interval = self.plan.trim_interval_s
        if self.glibc is None or interval is None:
            return

        def every_interval() -> None:
            while True:
                time.sleep(interval)
                self.trim()

        threading.Thread(target=every_interval, name="lianfang-malloc-trim", daemon=True).start()


def configure(settings: MallocSettings | None = None) -> Allocator:
    """Set the process's allocator up from ``settings`` (the environment's when ``None``): on jemalloc,
    export its counters on /metrics (:class:`JemallocCollector`); on glibc, cap its arenas and start the
    periodic trim. Call once, at start, before the service starts threads: an arena cap
    does not merge the arenas threads already have."""
    settings = settings or MallocSettings()
    libc, _ = platform.libc_ver()
    chosen = plan(settings, libc=libc, jemalloc=preloaded())
    export_counters()
    if chosen.skipped:
        log.debug("%s", chosen.skipped)
        return Allocator(None, chosen)
    glibc = Glibc()
    if chosen.arena_max is not None and not glibc.set_arena_max(chosen.arena_max):
        log.warning("glibc refused M_ARENA_MAX=%d: malloc arenas left as they are", chosen.arena_max)
    allocator = Allocator(glibc, chosen)
    allocator.start_trimming()
    return allocator
