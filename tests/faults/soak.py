"""The soak: the whole pipeline for a while, with faults of the catalogue injected at random (a fixed
seed), then the figures.

    python -m tests.faults.soak --minutes 30 --seed 1     # make soak SOAK_MINUTES=30 SEED=1 (root)

It prints the leads offered, accepted, delivered, duplicated and lost, the alerts, the p99 latency
from acceptance to the first inbox copy, each service's resident memory at the start and the end (and
at rest, once the load stopped and the hub drained), the restarts of each service (its process, killed
by the soak; inside it: the router's runners and the hub's agents as their /metrics count them,
``lianfang_router_worker_restarts_total`` and ``lianfang_hub_agent_restarts_total``), and every fault
with its time to recover. The exit status is 0 only when nothing was lost or duplicated.

``--trace-memory SECONDS`` sets ``LIANFANG_TRACEMALLOC_EVERY_S`` for every service it starts
(:mod:`services.kernel.heapwatch`): each logs, every SECONDS, the Python allocation sites grown most
since its first snapshot; the reports are in the services' logs, kept in ``.run/soak/<time>/``.
Tracing slows the services, so such a run's latencies and recoveries are not comparable to others.

Every memory sample the report is read from is kept beside the logs, one JSON object a line
(``.run/soak/<time>/memory.jsonl``: :func:`samples_jsonl`), to read a service's memory against its other
figures after the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from services.kernel import allocator, topics
from tests.faults.bed import KAFKA_HOSTS, RESTART_COUNTERS, ROUTERS, Bed, Check
from tests.kit import DemoDomain
from tests.workers import REPO

SERVICES = (*ROUTERS, "hub", "gateway")


def _kill_broker(bed: Bed, rng: random.Random, hold: float) -> str:
    node = rng.randint(1, 3)
    bed.kill_broker(node)
    time.sleep(hold)  # the fault lasts this long
    bed.restart_broker(node)
    return f"SIGKILL of broker {node}, restart after {hold:.0f} s"


def _kill_controller(bed: Bed, rng: random.Random, hold: float) -> str:
    node = bed.active_controller()
    bed.kill_broker(node)
    time.sleep(hold)  # the fault lasts this long
    bed.restart_broker(node)
    return f"SIGKILL of the active controller (node {node}), restart after {hold:.0f} s"


def _partition(hosts: tuple[str, ...]) -> Callable[[Bed, random.Random, float], str]:
    def fault(bed: Bed, rng: random.Random, hold: float) -> str:
        host = rng.choice(hosts)
        bed.lab.cut(host)
        time.sleep(hold)  # the fault lasts this long
        bed.lab.heal(host)
        return f"partition isolating {host} for {hold:.0f} s"

    return fault


def _lossy_agency(bed: Bed, rng: random.Random, hold: float) -> str:
    bed.lab.impair("agency", rate_kbit=256, loss_percent=10)
    time.sleep(hold)  # the fault lasts this long
    bed.lab.restore("agency")
    return f"agency link at 256 kbit/s, 10 % loss, for {hold:.0f} s"


def _full_disk(bed: Bed, rng: random.Random, hold: float) -> str:
    node = rng.randint(1, 3)
    bed.move_broker_to_tmpfs(node)
    try:
        bed.idle(5)  # the load goes on to the moved broker
        what = bed.fill_broker_disk(node)
        time.sleep(hold)  # the fault lasts this long
        bed.free_broker_disk(node)
    finally:
        bed.move_broker_to_disk(node)
    return f"full disk on broker {node} ({what}), space freed after {hold:.0f} s, restart"


def _kill_service(bed: Bed, rng: random.Random, hold: float) -> str:
    service = rng.choice(SERVICES)
    bed.kill(service)
    bed.restart(service)
    return f"SIGKILL of {service}, restarted"


CATALOGUE: tuple[Callable[[Bed, random.Random, float], str], ...] = (
    _kill_broker,
    _kill_controller,
    _partition(KAFKA_HOSTS),
    _partition(ROUTERS),
    _lossy_agency,
    _full_disk,
    _kill_service,
    _kill_service,
)


@dataclass(frozen=True, slots=True)
class MemorySample:
    """One service's resident memory at a moment of the soak: minutes since the start, its process id
    (a SIGKILLed service comes back as a new process, whose memory starts again), and the bytes; for the
    hub, what its RocksDB stores held then (:func:`rocksdb_bytes`), to tell how much of it they are; and
    jemalloc's counters (:func:`malloc_counters`), to tell live allocations from pages kept; and the
    file-backed share of the RSS (code of the interpreter and its libraries, paged in as it first runs)."""

    minute: float
    pid: int
    rss: int
    rocksdb: int | None = None
    malloc: Mapping[str, int] | None = None  # jemalloc's counters (malloc_counters), where it runs on it
    file: int | None = None  # of the RSS, the file-backed pages (RssFile: code and data read from files)
    level0: int | None = None  # the hub's RocksDB files awaiting compaction (level0_files)


def rocksdb_bytes(metrics: Mapping[str, float] | None) -> int | None:
    """The hub's ``lianfang_hub_rocksdb_memory_bytes`` summed over its kinds, from a scrape of its
    /metrics; None without a scrape or before the hub's first sample of its stores."""
    if metrics is None:
        return None
    kinds = [v for series, v in metrics.items() if series.startswith("lianfang_hub_rocksdb_memory_bytes{")]
    return int(sum(kinds)) if kinds else None


def level0_files(metrics: Mapping[str, float] | None) -> int | None:
    """The hub's ``lianfang_hub_rocksdb_level0_files`` from a scrape of its /metrics: its stores' files
    awaiting compaction, each holding memory its byte gauge does not count; None where not read."""
    if metrics is None or "lianfang_hub_rocksdb_level0_files" not in metrics:
        return None
    return int(metrics["lianfang_hub_rocksdb_level0_files"])


MALLOC_SERIES = f'{allocator.MALLOC_BYTES}{{counter="'


def malloc_counters(metrics: Mapping[str, float] | None) -> dict[str, int] | None:
    """A service's jemalloc counters by name (``lianfang_malloc_bytes{counter}``,
    :class:`services.kernel.allocator.JemallocCollector`) from a scrape of its /metrics; None without a
    scrape or where the service does not run on jemalloc."""
    if metrics is None:
        return None
    found = {
        series[len(MALLOC_SERIES) : -len('"}')]: int(value)
        for series, value in metrics.items()
        if series.startswith(MALLOC_SERIES)
    }
    return found or None


def hub_inbox_lag(metrics: Mapping[str, float] | None) -> dict[int, float] | None:
    """The hub group's lag on its inbox (end minus committed offset) per partition, from a scrape of the
    hub's /metrics (``lianfang_consumer_lag``, sampled every ``lag_interval_s``); None without a scrape
    or a sample. A hub that keeps up commits within a few offsets of the end."""
    if metrics is None:
        return None
    lag = {}
    for series, value in metrics.items():
        if series.startswith("lianfang_consumer_lag{") and ".inbox." in series:
            found = re.search(r'partition="(\d+)"', series)
            if found:
                lag[int(found.group(1))] = value
    return dict(sorted(lag.items())) or None


def hub_drained(lag: Mapping[int, float] | None, tail: Mapping[int, int] | None = None) -> bool:
    """Whether the hub committed every inbox partition past its last record (None: never read, so not
    shown). ``tail``: per partition, the offsets after its last record, which no consumer commits past
    until a record follows: the router writes the inbox in transactions, one producer per source
    partition, so a partition ends in one commit marker or several (transactions that interleave
    end with their markers after the last record), or in a transaction aborted when a router worker
    was killed or fenced (its records and its marker). Without it, one offset (a marker)."""
    if not lag:
        return False
    return all(v <= max(1, (tail or {}).get(p, 1)) for p, v in lag.items())


def settled_hub_lag(
    read_lag: Callable[[], dict[int, float] | None],
    read_tail: Callable[[], dict[int, int]],
    timeout: float = 60,
) -> tuple[dict[int, float] | None, dict[int, int]]:
    """The hub's inbox lag and its partitions' tails once it is drained, or the last ones read after
    ``timeout`` seconds: after the load stops, the hub's own alerts still come back through its inbox,
    and its group commits every second."""
    deadline = time.monotonic() + timeout
    lag, tail = read_lag(), read_tail()
    while not hub_drained(lag, tail) and time.monotonic() < deadline:
        time.sleep(0.5)  # poll interval inside a deadline loop
        lag, tail = read_lag(), read_tail()
    return lag, tail


def missing_by_partition(subjects: list[str], hub_tail: Mapping[int, int] | None) -> str:
    """How many of the victims without an alert each partition of the hub's inbox holds (their leads
    are keyed by the victim's pseudonym), to tell one partition the hub stopped applying from leads
    missed everywhere; empty when none is missing or the partitions are not known."""
    if not subjects or not hub_tail:
        return ""
    held = Counter(topics.partition_for(subject.encode(), len(hub_tail)) for subject in subjects)
    return " (by hub inbox partition: " + ", ".join(f"{p}: {n}" for p, n in sorted(held.items())) + ")"


def memory_series(samples: list[MemorySample], every_min: float = 5.0) -> str:
    """The samples at each ``every_min`` mark (the first sample at or after it) and the last, as
    ``minute:MiB``; a process restarted since the mark before is marked ``(new process)``, a sample
    taken while the service was down (0 bytes) is left out, and the RocksDB stores' share, where read,
    follows in MiB (``RocksDB 5.6``). Flat memory reads as a flat row for each process."""
    kept = [s for s in samples if s.rss > 0]
    if not kept:
        return "no sample"
    picked: list[MemorySample] = []
    mark = 0.0
    for sample in kept:
        if sample.minute >= mark:
            picked.append(sample)
            mark = (sample.minute // every_min + 1) * every_min
    if picked[-1] is not kept[-1]:
        picked.append(kept[-1])
    parts = []
    for before, sample in zip([None, *picked], picked, strict=False):
        new = before is not None and before.pid != sample.pid
        part = f"{sample.minute:.0f}:{sample.rss / 2**20:.0f}{' (new process)' if new else ''}"
        if sample.rocksdb is not None:
            files = f", {sample.level0} level-0 files" if sample.level0 is not None else ""
            part += f" (RocksDB {sample.rocksdb / 2**20:.1f}{files})"
        parts.append(part)
    return "  ".join(parts)


FLAT_MIB = 2.0
"""The most a process's memory in use may grow over the second half of its life (MiB) for the soak to
call it flat: a process that leaks keeps growing as it did in its first half; one whose memory levels off
does not. A process must have lived :data:`FLAT_MIN_MINUTES` for a verdict.

In use is the RSS less what is bounded by something other than the work done: the hub's RocksDB stores
(memtables and caches fill up to the bound their options set), and, on jemalloc, the pages it keeps
beyond its live allocations (freed pages it returns after its decay time, slabs part-used: bounded by
the process's peak of live memory) and the pages read in from files (bounded by the files). Those
swing by several MiB from one sample to the next (run W's router-2: live allocations -0.7 MiB over its
second half, jemalloc's kept pages +4.9), which the RSS alone would read as a leak. The RSS growth is
printed beside it."""

FLAT_MIN_MINUTES = 10.0


def _level(life: list[MemorySample], minute: float, of: Callable[[MemorySample], int]) -> float:
    """The memory of a process around ``minute``: the median of its samples nearest to it (3 where it
    has 9 or more, fewer where it has fewer), so one sample caught at a peak does not decide the row."""
    width = max(1, min(3, len(life) // 3))
    nearest = sorted(life, key=lambda s: abs(s.minute - minute))[:width]
    return statistics.median(of(s) for s in nearest)


def longest_process_growth(samples: list[MemorySample]) -> str:
    """How the memory of the service's longest-lived process moved over the first and the second half
    of its life, in MiB, and whether it is flat (:data:`FLAT_MIB`): a process whose memory levels off
    grows less in its second half than in its first; one that leaks grows as much (or more). For the
    hub, the growth outside its RocksDB stores follows, and decides. Samples taken while the service was
    down are left out, and so is a restarted process's first sample (it may have been taken while the
    process started)."""
    lives: dict[int, list[MemorySample]] = {}
    for sample in samples:
        if sample.rss > 0:
            lives.setdefault(sample.pid, []).append(sample)
    for pid, life in list(lives.items())[1:]:  # a restarted process's first sample may catch it starting
        lives[pid] = life[1:]
    lives = {pid: life for pid, life in lives.items() if life}
    if not lives:
        return "no sample"
    life = max(lives.values(), key=lambda kept: kept[-1].minute - kept[0].minute)
    first, last = life[0], life[-1]
    if len(life) < 3 or last.minute - first.minute <= 0:
        return f"longest process sampled {len(life)} time(s): too short to tell"
    middle = (first.minute + last.minute) / 2

    def halves(kept: list[MemorySample], of: Callable[[MemorySample], int]) -> tuple[float, float]:
        start, mid, end = (_level(kept, m, of) for m in (first.minute, middle, last.minute))
        return (mid - start) / 2**20, (end - mid) / 2**20

    grown = halves(life, lambda s: s.rss)
    line = (
        f"longest process {first.minute:.0f}-{last.minute:.0f} min: "
        f"{grown[0]:+.1f} MiB in its first half, {grown[1]:+.1f} MiB in its second"
    )
    read = [s for s in life if s.rocksdb is not None]  # the hub's, once it has read its stores
    if len(read) >= 3:
        grown = halves(read, lambda s: s.rss - (s.rocksdb or 0))
        line += f"; outside RocksDB {grown[0]:+.1f}, {grown[1]:+.1f}"
    on_jemalloc = [
        s
        for s in (read if len(read) >= 3 else life)
        if s.malloc and {"allocated", "resident"} <= s.malloc.keys()
    ]
    if len(on_jemalloc) >= 3:
        line += f" ({_where_it_grew(on_jemalloc, halves)})"
        grown = halves(on_jemalloc, _in_use)
        line += f"; in use {grown[0]:+.1f}, {grown[1]:+.1f}"
    if last.minute - first.minute < FLAT_MIN_MINUTES:
        return line + f" (under {FLAT_MIN_MINUTES:.0f} min: flat or not, too short to tell)"
    return line + (f": flat (at most {FLAT_MIB:+.1f})" if grown[1] <= FLAT_MIB else ": NOT flat")


def _in_use(sample: MemorySample) -> int:
    """The RSS less the hub's RocksDB stores, the pages jemalloc keeps beyond its live allocations and
    the file-backed pages where read (:data:`FLAT_MIB`); for a sample with jemalloc's counters."""
    malloc = sample.malloc or {}
    kept = malloc.get("resident", 0) - malloc.get("allocated", 0)
    return sample.rss - (sample.rocksdb or 0) - kept - (sample.file or 0)


def at_rest_line(samples: list[MemorySample], rest: MemorySample) -> str:
    """A process's memory once the load stopped and the hub drained (``rest``), against its own samples
    under load: at its start and at the last one. What only holds work in flight (records fetched,
    events buffered, batches pending) is given back at rest; what leaks is not. In use
    (:func:`_in_use`) where jemalloc's counters were read, else the RSS (outside RocksDB for the hub);
    in MiB. A process restarted since its last sample under load has nothing to compare with."""
    if rest.rss == 0:
        return "not running at that moment"
    life = [s for s in samples if s.pid == rest.pid and s.rss > 0]
    if life and next(s.pid for s in samples if s.rss > 0) != rest.pid:
        life = life[1:]  # a restarted process's first sample may catch it starting
    if not life:
        return f"RSS {rest.rss / 2**20:.1f} MiB, a process started since the last sample under load"
    jemalloc = all(s.malloc and {"allocated", "resident"} <= s.malloc.keys() for s in [*life, rest])
    what = "in use" if jemalloc else "RSS" if rest.rocksdb is None else "outside RocksDB"
    of = _in_use if jemalloc else _outside_rocksdb
    start, last = (_level(life, m, of) for m in (life[0].minute, life[-1].minute))
    line = (
        f"{what} {of(rest) / 2**20:.1f} MiB at minute {rest.minute:.0f}: "
        f"{(of(rest) - start) / 2**20:+.1f} since its start (minute {life[0].minute:.0f}), "
        f"{(of(rest) - last) / 2**20:+.1f} since its last samples under load"
    )
    if jemalloc:
        live = _level(life, life[0].minute, _live)
        line += f" (live allocations {(_live(rest) - live) / 2**20:+.1f} since its start)"
    return line


def _outside_rocksdb(sample: MemorySample) -> int:
    """The RSS less the hub's RocksDB stores where read."""
    return sample.rss - (sample.rocksdb or 0)


def _live(sample: MemorySample) -> int:
    """jemalloc's live allocations less the hub's RocksDB stores' count of their own."""
    return (sample.malloc or {}).get("allocated", 0) - (sample.rocksdb or 0)


def _where_it_grew(
    life: list[MemorySample],
    halves: Callable[[list[MemorySample], Callable[[MemorySample], int]], tuple[float, float]],
) -> str:
    """The growth just measured (the RSS, outside RocksDB where the samples read it), split by jemalloc's
    counters and the kernel's, each ``first half, second half`` in MiB: live allocations
    (``allocated``, less RocksDB's count of its own), pages jemalloc keeps beyond them (``resident -
    allocated``: dirty pages, slabs part-used, its metadata), file-backed pages (``RssFile``: code and
    data paged in from the interpreter's and libraries' files as they first run; the kernel may drop
    them, and they are bounded by the files' size) and the rest (the RSS less both: thread stacks,
    libraries' own mappings). The parts add up to the growth."""

    def counter(sample: MemorySample, name: str) -> int:
        return (sample.malloc or {}).get(name, 0)

    parts: dict[str, Callable[[MemorySample], int]] = {
        "live allocations": _live,
        "kept by jemalloc": lambda s: counter(s, "resident") - counter(s, "allocated"),
    }
    if all(s.file is not None for s in life):
        parts["file-backed"] = lambda s: s.file or 0
        parts["the rest"] = lambda s: s.rss - counter(s, "resident") - (s.file or 0)
    else:
        parts["outside jemalloc"] = lambda s: s.rss - counter(s, "resident")
    return ", ".join(
        f"{name} {grown[0]:+.1f}, {grown[1]:+.1f}"
        for name, of in parts.items()
        for grown in [halves(life, of)]
    )


@dataclass(frozen=True)
class SelfExit:
    """A service whose process ended though the soak did not kill it: a crash. The soak starts it again
    (as a supervisor would) and fails."""

    service: str
    minute: float
    code: int | None


@dataclass
class SoakResult:
    offered: int
    check: Check
    p99_s: float
    faults: list[tuple[str, float]] = field(default_factory=list)
    rss_start: dict[str, int] = field(default_factory=dict)
    rss_end: dict[str, int] = field(default_factory=dict)
    memory: dict[str, list[MemorySample]] = field(default_factory=dict)
    process_restarts: dict[str, int] = field(default_factory=dict)
    inside_restarts: dict[str, float] = field(default_factory=dict)  # runner or agent restarts
    exits: list[SelfExit] = field(default_factory=list)  # services that ended without being told
    hub_lag: dict[int, float] | None = None  # the hub's inbox lag per partition once the load is drained
    hub_tail: dict[int, int] | None = None  # per partition, the offsets after its last record
    # each service once the load stopped and the hub drained (at_rest_line)
    at_rest: dict[str, MemorySample] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        c = self.check
        return not (
            c.lost or c.duplicated or c.missing_alerts or c.duplicate_alerts or self.exits
        ) and hub_drained(self.hub_lag, self.hub_tail)

    def lines(self) -> list[str]:
        c = self.check
        out = [
            f"offered {self.offered}  accepted {c.accepted}  delivered {c.delivered}  "
            f"duplicated {len(c.duplicated)}  lost {len(c.lost)}",
            f"alerts {c.alerts}  missing alerts {len(c.missing_alerts)}{missing_by_partition(c.missing_alerts, self.hub_tail)}"
            f"  duplicate alerts {len(c.duplicate_alerts)}",
            f"p99 latency (accepted -> first inbox copy) {self.p99_s:.2f} s",
        ]
        for name in self.rss_start:
            end = self.rss_end.get(name, 0)
            out.append(
                f"RSS {name:<8} start {self.rss_start[name] / 2**20:7.1f} MiB  "
                + (f"end {end / 2**20:7.1f} MiB" if end else "end: not running at that moment")
            )
        for name, samples in self.memory.items():
            out.append(f"RSS {name:<8} over time (MiB): {memory_series(samples)}")
            out.append(f"RSS {name:<8} {longest_process_growth(samples)}")
            if name in self.at_rest:
                out.append(f"RSS {name:<8} at rest: {at_rest_line(samples, self.at_rest[name])}")
        for name in self.rss_start:
            inside = RESTART_COUNTERS.get(name)
            line = f"restarts {name:<8} process {self.process_restarts.get(name, 0)}"
            if inside is not None:
                what = "runner" if "router" in inside else "agents"
                line += f"  {what} {self.inside_restarts.get(name, 0):.0f} ({inside})"
            out.append(line)
        for name in self.rss_start:
            mine = [e for e in self.exits if e.service == name]
            out.append(
                f"exits by itself {name:<8} {len(mine)}"
                + "".join(f"  (minute {e.minute:.0f}, code {e.code})" for e in mine)
            )
        out.append(
            "hub inbox lag at the end (end - committed offset): "
            + (
                ", ".join(
                    f"partition {p} {lag:.0f}" + (f" (tail {self.hub_tail[p]})" if self.hub_tail else "")
                    for p, lag in self.hub_lag.items()
                )
                + (
                    "  (drained)"
                    if hub_drained(self.hub_lag, self.hub_tail)
                    else "  (NOT drained: commits fell behind)"
                )
                if self.hub_lag
                else "not read"
            )
        )
        for fault, recovered in self.faults:
            out.append(f"fault: {fault}: recovered in {recovered:.1f} s")
        return out


def service_env(*, trace_memory_s: float = 0) -> dict[str, str]:
    """What the soak adds to each service's environment: the heap watch every ``trace_memory_s``
    seconds (none when 0)."""
    return {"LIANFANG_TRACEMALLOC_EVERY_S": f"{trace_memory_s:g}"} if trace_memory_s else {}


def soak(
    tmp: Path,
    *,
    minutes: float,
    seed: int,
    rate: float = 4.0,
    trace_memory_s: float = 0,
    faults_on: bool = True,
    log: Callable[[str], None] = print,
) -> SoakResult:
    rng = random.Random(seed)
    domain = DemoDomain.create(tmp / ".lianfang", now=datetime.now(UTC))
    bed = Bed(tmp, domain, rate=rate, seed=seed, service_env=service_env(trace_memory_s=trace_memory_s))
    bed.up()
    try:
        rss_start = {name: bed.workers[name].rss_bytes() for name in SERVICES}
        began = time.monotonic()
        memory: dict[str, list[MemorySample]] = {name: [] for name in SERVICES}

        def take_samples() -> dict[str, MemorySample]:
            minute = (time.monotonic() - began) / 60
            taken = {}
            for name in SERVICES:
                worker = bed.workers[name]
                scraped = worker.metrics()
                taken[name] = MemorySample(
                    minute,
                    worker.proc.pid,
                    worker.rss_bytes(),
                    rocksdb_bytes(scraped) if name == "hub" else None,
                    malloc_counters(scraped),
                    worker.file_bytes(),
                    level0_files(scraped) if name == "hub" else None,
                )
            return taken

        def sample_memory() -> None:
            for name, sample in take_samples().items():
                memory[name].append(sample)

        exits: list[SelfExit] = []

        def restart_the_crashed() -> None:
            """Any service that ended by itself: logged with the end of its log, counted, started again."""
            for name in SERVICES:
                worker = bed.workers[name]
                if worker.alive():
                    continue
                minute = (time.monotonic() - began) / 60
                exits.append(SelfExit(name, minute, worker.proc.returncode))
                log(
                    f"{name} exited by itself (code {worker.proc.returncode}) at minute {minute:.0f}; its log ends:"
                )
                log(worker.tail(30))
                bed.restart(name)

        faults: list[tuple[str, float]] = []
        deadline = time.monotonic() + minutes * 60
        while time.monotonic() < deadline:
            restart_the_crashed()
            sample_memory()
            bed.idle(rng.uniform(10, 30))  # steady load between faults
            if time.monotonic() >= deadline or not faults_on:
                continue
            fault = rng.choice(CATALOGUE)
            what = fault(bed, rng, rng.uniform(5, 20))
            recovered = bed.recover(time.monotonic())
            faults.append((what, recovered))
            log(f"fault: {what}: recovered in {recovered:.1f} s")
            restart_the_crashed()
        restart_the_crashed()
        inside_restarts = {name: bed.restarts_inside(name) for name in RESTART_COUNTERS}
        sample_memory()
        rss_end = {name: bed.workers[name].rss_bytes() for name in SERVICES}
        counts = bed.stop_load()
        check = bed.check()
        hub_lag, hub_tail = settled_hub_lag(
            lambda: hub_inbox_lag(bed.workers["hub"].metrics()), lambda: bed.tally.tail("hub")
        )
        at_rest = take_samples()  # no load, the hub drained: what each process holds without work in flight
        latencies = sorted(bed.latencies())
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else float("nan")
        return SoakResult(
            offered=int(counts["offered"]),
            check=check,
            p99_s=p99,
            faults=faults,
            rss_start=rss_start,
            rss_end=rss_end,
            memory=memory,
            process_restarts=dict(bed.restarts),
            inside_restarts=inside_restarts,
            exits=exits,
            hub_lag=hub_lag,
            hub_tail=hub_tail,
            at_rest=at_rest,
        )
    finally:
        bed.down()


def samples_jsonl(
    memory: Mapping[str, list[MemorySample]], at_rest: Mapping[str, MemorySample] | None = None
) -> str:
    """Every memory sample of a run, one JSON object a line, each with its service's name, whether it
    was taken at rest (the load stopped, the hub drained) and the fields of :class:`MemorySample`
    (bytes, minutes; null where not read), in the order they were taken."""
    rows = [
        {"service": name, "at_rest": False, **dataclasses.asdict(s)}
        for name, samples in memory.items()
        for s in samples
    ]
    rows += [
        {"service": name, "at_rest": True, **dataclasses.asdict(s)} for name, s in (at_rest or {}).items()
    ]
    rows.sort(key=lambda row: row["minute"])
    return "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)


def keep_logs(tmp: Path, to: Path) -> None:
    """Copy every ``*.log`` under the run's directory to ``to`` (its relative path kept)."""
    for path in tmp.rglob("*.log"):
        target = to / path.relative_to(tmp)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds (0: off)")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rate", type=float, default=4.0, help="leads a second")
    parser.add_argument(
        "--trace-memory",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="each service logs its Python allocation sites grown most, every SECONDS (tracemalloc; slows "
        "them); 0, the default: off",
    )
    parser.add_argument(
        "--no-faults",
        action="store_true",
        help="the steady load alone, no fault injected: the baseline to read a soak's memory against",
    )
    return parser.parse_args(argv)


def _stop_on_signal(signum: int, _frame: object) -> None:
    """SIGTERM or SIGINT: end the run through its ``finally`` blocks, which take the bed down (processes,
    namespaces, links, a broker's tmpfs) and keep the logs; a second signal waits for that."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    print(f"soak: stopped by {signal.Signals(signum).name}; taking the bed down", file=sys.stderr, flush=True)
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Also SIGINT: a soak started in the background (`... &`) inherits SIGINT ignored.
    signal.signal(signal.SIGTERM, _stop_on_signal)
    signal.signal(signal.SIGINT, _stop_on_signal)
    logs = REPO / ".run" / "soak" / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    with tempfile.TemporaryDirectory(prefix="lianfang-soak-") as tmp:
        try:
            result = soak(
                Path(tmp),
                minutes=args.minutes,
                seed=args.seed,
                rate=args.rate,
                trace_memory_s=args.trace_memory,
                faults_on=not args.no_faults,
            )
        finally:  # the services' and brokers' logs outlive the run's data
            keep_logs(Path(tmp), logs)
        print(f"logs: {logs}")
    logs.mkdir(parents=True, exist_ok=True)
    (logs / "memory.jsonl").write_text(samples_jsonl(result.memory, result.at_rest))
    for line in result.lines():
        print(line)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
