"""A small benchmark harness: discover ``bench_*.py`` modules, run them against one Kafka, report.

Each benchmark is a module ``tests/bench/bench_<name>.py`` exposing ``run(ctx: BenchContext) ->
list[Result]``. One that measures a service's resident memory also exposes ``memory(ctx: BenchContext)
-> list[Result]``, its memory case alone, which ``--memory`` runs instead of ``run`` (modules without
one are left out); ``run`` includes it. The harness gives it a :class:`BenchContext` (where Kafka is, how many runs, unique
names, topic creation) and prints the results as a table grouped by benchmark, with baselines marked;
it also writes them, with the environment, to ``bench-results/<benchmark>-<UTC stamp>.json`` and
``bench-results/latest.json``. The report ends with one table of the performance targets
(:mod:`tests.bench.targets`), which ``latest.json`` holds under ``targets``.

Kafka comes from ``LIANFANG_BOOTSTRAP`` when it is set. Otherwise the harness starts one local broker
(``deploy.kafka.local``) the first time a benchmark asks for ``ctx.bootstrap`` -- so benchmarks of pure
code never pay for it -- and stops it, removing its data, when the run ends.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import importlib.metadata
import itertools
import json
import os
import pkgutil
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

from tests.bench import targets
from tests.workers import Worker, cpu_seconds

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO_ROOT / "bench-results"
BENCH_PACKAGE = "tests.bench"
BENCH_PREFIX = "bench_"
DEFAULT_RUNS = 5
DEFAULT_WARMUP = 1
QUICK_RUNS = 3
TOPIC_READY_TIMEOUT_S = 30.0
# Versions recorded with every result, when installed: the clients the figures depend on.
PACKAGES = (
    "lianfang",
    "kafka-python",
    "crc32c",
    "aiokafka",
    "confluent-kafka",
    "faust-streaming",
    "cryptography",
)
MEMORY_EVENTS_ENV = "LIANFANG_BENCH_MEMORY_EVENTS"
"""How many events a memory case puts through its service (each module has its own default)."""
MEMORY_TARGET_EVENTS = 1_000_000  # what the memory target is stated for; runs extrapolate to it
MB = 1024 * 1024


class BenchError(RuntimeError):
    """A benchmark could not be set up or did not see what it expected; the message says which."""


# --------------------------------------------------------------------------- results and timing


@dataclass(frozen=True, slots=True)
class Result:
    """One row of the report: a case, a metric and the spread of that metric over the timed runs.

    ``baseline`` marks rows that measure a raw client or primitive, which Lianfang's own figures are
    compared against.
    """

    benchmark: str
    case: str
    metric: str
    median: float
    min: float
    max: float
    n_runs: int
    baseline: bool = False
    notes: str = ""

    @classmethod
    def from_values(
        cls,
        benchmark: str,
        case: str,
        metric: str,
        values: list[float],
        *,
        baseline: bool = False,
        notes: str = "",
    ) -> Result:
        """Summarize the per-run values of one metric (median, min, max)."""
        if not values:
            raise BenchError(f"{benchmark}: no values for {case} / {metric}")
        return cls(
            benchmark=benchmark,
            case=case,
            metric=metric,
            median=statistics.median(values),
            min=min(values),
            max=max(values),
            n_runs=len(values),
            baseline=baseline,
            notes=notes,
        )


def measure(
    fn: Callable[[], float | None],
    runs: int,
    warmup: int,
    *,
    on_run: Callable[[str], None] | None = None,
    on_done: Callable[[float], None] | None = None,
) -> list[float]:
    """Call ``fn`` ``warmup`` times untimed-for-the-report, then ``runs`` times; return seconds per run.

    The call is timed with ``time.perf_counter``. A function that must leave its own set-up out of the
    figure (connecting, joining a group) times itself and returns the seconds it measured; that value
    is then used instead of the time of the whole call. ``on_run`` gets a label such as ``"run 2/5"``
    before each call, ``on_done`` the seconds after it (progress display).
    """
    seconds: list[float] = []
    plan = [f"warm-up {i}/{warmup}" for i in range(1, warmup + 1)]
    plan += [f"run {i}/{runs}" for i in range(1, runs + 1)]
    for n, label in enumerate(plan):
        if on_run is not None:
            on_run(label)
        start = time.perf_counter()
        returned = fn()
        elapsed = time.perf_counter() - start if returned is None else returned
        if on_done is not None:
            on_done(elapsed)
        if n >= warmup:
            seconds.append(elapsed)
    return seconds


def per_second(seconds: list[float], amount: float) -> list[float]:
    """Turn per-run durations into rates: ``amount`` (records, bytes) per second of each run."""
    return [amount / s for s in seconds]


# --------------------------------------------------------------------------- where Kafka is


class KafkaSource:
    """The Kafka every benchmark of one run uses: ``LIANFANG_BOOTSTRAP``, or one local broker.

    The local broker is started lazily, on the first request, and stopped (its data removed) by
    :meth:`close`.
    """

    def __init__(self, bootstrap: str | None) -> None:
        self._bootstrap = bootstrap or None
        self.origin = "LIANFANG_BOOTSTRAP" if self._bootstrap else "not used"
        self._stack = contextlib.ExitStack()
        self._broker_pids: list[int] = []

    @property
    def used(self) -> bool:
        return self._bootstrap is not None

    def bootstrap(self) -> str:
        if self._bootstrap is None:
            from deploy.kafka.local import LocalKafkaError, running

            data_dir = Path(tempfile.mkdtemp(prefix="lianfang-bench-kafka-"))
            self._stack.callback(shutil.rmtree, data_dir, ignore_errors=True)
            progress("harness: starting a local Kafka broker for this run …")
            try:
                cluster = self._stack.enter_context(running(data_dir))
            except LocalKafkaError as e:
                raise BenchError(
                    f"could not start a local Kafka broker: {e}\n"
                    "  or: point the benchmarks at a running one with LIANFANG_BOOTSTRAP=host:port"
                ) from e
            self._bootstrap = cluster.bootstrap
            self._broker_pids = [node.pid for node in cluster.nodes if node.pid is not None]
            self.origin = "local broker started by the harness"
            progress(f"harness: local Kafka broker at {self._bootstrap}")
        return self._bootstrap

    def broker_cpu_seconds(self) -> float | None:
        """User + system CPU of the broker so far, if the harness started it (else ``None``)."""
        if not self._broker_pids:
            return None
        return sum(cpu_seconds(pid) for pid in self._broker_pids)

    def describe(self) -> str:
        return f"{self._bootstrap} ({self.origin})" if self._bootstrap else "not used"

    def close(self) -> None:
        self._stack.close()


# --------------------------------------------------------------------------- the context


@dataclass
class BenchContext:
    """What a benchmark gets from the harness.

    ``quick`` asks for a smoke-sized run: use :meth:`scale` to pick record counts. ``runs`` and
    ``warmup`` are already reduced for quick runs.
    """

    benchmark: str
    quick: bool
    runs: int
    warmup: int
    kafka: KafkaSource
    memory_only: bool = False
    """``--memory``: the harness calls the module's ``memory`` instead of its ``run``."""
    notes: list[str] = field(default_factory=list)
    _topics: list[str] = field(default_factory=list)

    @property
    def bootstrap(self) -> str:
        """Kafka bootstrap servers (starts the harness's local broker on first use)."""
        return self.kafka.bootstrap()

    def unique(self, name: str) -> str:
        """A name no other run uses, legal as a Kafka topic or group: ``lianfang-bench-<bench>-<name>-<hex>``.

        Dots and underscores are replaced by dashes (Kafka warns about topics that mix them).
        """
        bench = self.benchmark.removeprefix(BENCH_PREFIX)
        raw = f"lianfang-bench-{bench}-{name}-{uuid.uuid4().hex[:8]}"
        return re.sub(r"[^a-zA-Z0-9-]+", "-", raw)

    def scale(self, full: int, quick: int) -> int:
        """Pick a size: ``full`` normally, ``quick`` under ``--quick``."""
        return quick if self.quick else full

    def note(self, text: str) -> None:
        """A remark printed under this benchmark's table and kept in the JSON (e.g. a skipped client)."""
        self.notes.append(text)
        progress(f"{self.benchmark}: {text}")

    def progress(self, text: str) -> None:
        progress(f"{self.benchmark}: {text}")

    def measure(self, case: str, fn: Callable[[], float | None]) -> list[float]:
        """:func:`measure` with this context's runs and warm-up, reporting progress to stderr."""
        prefix = f"{self.benchmark}: {case}"

        def on_run(label: str) -> None:
            print(f"{prefix} {label} …", end="", file=sys.stderr, flush=True)

        def on_done(seconds: float) -> None:
            print(f" {seconds:.3f} s", file=sys.stderr, flush=True)

        try:
            return measure(fn, self.runs, self.warmup, on_run=on_run, on_done=on_done)
        except BaseException:
            print(file=sys.stderr, flush=True)  # end the half-written progress line
            raise

    def result(
        self, case: str, metric: str, values: list[float], *, baseline: bool = False, notes: str = ""
    ) -> Result:
        """A :class:`Result` of this benchmark from per-run values."""
        return Result.from_values(self.benchmark, case, metric, values, baseline=baseline, notes=notes)

    def create_topic(
        self,
        name: str,
        *,
        partitions: int = 1,
        replication: int = 1,
        configs: dict[str, str] | None = None,
        timeout_s: float = TOPIC_READY_TIMEOUT_S,
    ) -> str:
        """Create a topic with a unique name (the broker does not auto-create) and return its name.

        Returns once every partition has a leader in the broker's metadata, polling with a deadline.
        The topic is deleted when the benchmark ends.
        """
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        topic = self.unique(name)
        try:
            admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="lianfang-bench")
        except KafkaError as e:
            raise BenchError(f"cannot reach Kafka at {self.bootstrap}: {e}") from e
        try:
            spec = {"num_partitions": partitions, "replication_factor": replication}
            admin.create_topics({topic: {**spec, "configs": configs or {}}})
            self._topics.append(topic)
            _wait_for_topic(admin, topic, partitions, timeout_s)
        except KafkaError as e:
            raise BenchError(f"creating topic {topic} on {self.bootstrap} failed: {e}") from e
        finally:
            admin.close()
        return topic

    def close(self) -> None:
        """Delete the topics this benchmark created (best effort: a shared broker stays tidy)."""
        if not self._topics:
            return
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        try:
            admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="lianfang-bench")
            try:
                admin.delete_topics(self._topics)
            finally:
                admin.close()
        except KafkaError as e:
            progress(f"{self.benchmark}: could not delete topics {self._topics}: {e}")
        self._topics.clear()


def _wait_for_topic(admin: Any, topic: str, partitions: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    state = "not described yet"
    while time.monotonic() < deadline:
        described = {t.get("name"): t for t in admin.describe_topics([topic])}
        info = described.get(topic)
        if info is None:
            state = "missing from metadata"
        elif info.get("error_code", 0) != 0:
            state = f"error code {info['error_code']}"
        else:
            parts = info.get("partitions") or []
            led = [p for p in parts if p.get("error_code", 0) == 0 and p.get("leader_id", -1) >= 0]
            if len(led) == partitions:
                return
            state = f"{len(led)} of {partitions} partitions have a leader"
        time.sleep(0.05)  # poll interval inside a deadline loop
    raise BenchError(f"topic {topic} not ready within {timeout_s:.0f} s ({state})")


# --------------------------------------------------------------------------- memory


def memory_events(ctx: BenchContext, full: int, quick: int) -> int:
    """The memory case's number of events: ``LIANFANG_BENCH_MEMORY_EVENTS``, else ``full`` (``quick``
    under ``--quick``)."""
    raw = os.environ.get(MEMORY_EVENTS_ENV)
    if raw is None:
        return ctx.scale(full, quick)
    try:
        n = int(raw.replace("_", "").replace(",", ""))
    except ValueError as e:
        raise BenchError(f"{MEMORY_EVENTS_ENV}={raw!r} is not a number of events") from e
    if n < 2:
        raise BenchError(f"{MEMORY_EVENTS_ENV}={raw!r}: a memory run needs at least 2 events")
    return n


def growth_per_event(events: int, half: tuple[float, int], end: int) -> float | None:
    """Bytes of RSS an event over the second half of a memory run: ``half`` is (events done, RSS) at the
    first look past half of ``events``, ``end`` the RSS after all of them. None when that look came so
    late that under a quarter of the run was left to measure the growth over."""
    done, rss = half
    if events - done < events / 4:
        return None
    return (end - rss) / (events - done)


MEMORY_LOOKS_AT = (0.25, 0.5, 0.75)
"""Where a memory run reads the RSS on the way (shares of its events): the growth between these looks
says whether it slows down (caches and buffers filling to their bounds) or goes on."""


@dataclass
class RssTrack:
    """A service's resident memory over a memory run of ``events`` events: once started (:meth:`started`),
    at the first look past each of :data:`MEMORY_LOOKS_AT` (:meth:`look`, called with the events done so
    far as often as the run checks its progress) and once all are done (:meth:`finished`, before the
    process stops). ``rss`` reads the process's RSS, or its peak with ``peak=True``
    (``tests.workers.Worker.rss_bytes``)."""

    service: str
    events: int
    rss: Callable[..., int | None]
    start: int | None = None
    looks: dict[float, tuple[float, int]] = field(default_factory=dict)
    """(events done, RSS) at the first look past each share of :data:`MEMORY_LOOKS_AT`."""
    end: int | None = None
    peak: int | None = None

    def started(self) -> None:
        self.start = self.rss()

    def look(self, done: float) -> None:
        due = [at for at in MEMORY_LOOKS_AT if at not in self.looks and done >= at * self.events]
        if due and (rss := self.rss()) is not None:
            for at in due:
                self.looks[at] = (done, rss)

    def finished(self) -> None:
        self.end, self.peak = self.rss(), self.rss(peak=True)

    def growth(self) -> list[tuple[float, float, float]]:
        """Bytes of RSS an event between successive looks and from the last to the end, each with the
        shares of the run it was measured over; empty before :meth:`finished`."""
        if self.end is None:
            return []
        points = [self.looks[at] for at in MEMORY_LOOKS_AT if at in self.looks] + [(self.events, self.end)]
        return [
            ((b - a) / (m - n), n / self.events, m / self.events)
            for (n, a), (m, b) in itertools.pairwise(points)
            if m > n
        ]

    def results(self, ctx: BenchContext, *, started: str, after: str) -> list[Result]:
        """The figures ``<service> RSS, started`` (the baseline) and ``<service> RSS after the memory run``
        (MB), and a note with the peak, the growth between the looks and a straight line from the
        growth over the second half to :data:`MEMORY_TARGET_EVENTS`; ``started`` and ``after`` say what
        each figure is. Nothing without /proc."""
        start, end, peak = self.start, self.end, self.peak
        if start is None or end is None or peak is None:
            ctx.note(f"memory: no /proc on this system: the {self.service}'s RSS is not measured")
            return []
        n = self.events
        half = self.looks.get(0.5)
        growth = None if half is None else growth_per_event(n, half, end)
        steps = self.growth()
        slope = ""
        if steps:
            slope += "; growth in B an event over " + ", ".join(
                f"{100 * a:.0f}-{100 * b:.0f} % of the events {per_event:.0f}" for per_event, a, b in steps
            )
        if growth is not None:
            at_target = (end + growth * (MEMORY_TARGET_EVENTS - n)) / MB
            slope += (
                f"; over the second half it grew {growth:.0f} B an event, which would give {at_target:.0f} MB "
                f"at {MEMORY_TARGET_EVENTS:,} events (an extrapolation, not a measurement: set "
                f"{MEMORY_EVENTS_ENV}={MEMORY_TARGET_EVENTS} to measure it)"
            )
        ctx.note(
            f"memory: {self.service} RSS {start / MB:.1f} MB {started}, {end / MB:.1f} MB {after} "
            f"(peak {peak / MB:.1f} MB){slope}"
        )
        return [
            ctx.result(f"{self.service} RSS, started", "MB", [start / MB], baseline=True, notes=started),
            ctx.result(f"{self.service} RSS after the memory run", "MB", [end / MB], notes=after),
        ]


def wait_for_group(
    bootstrap: str, group: str, members: int, workers: Sequence[Worker], timeout_s: float
) -> None:
    """Wait until consumer group ``group`` is stable with ``members`` members (its workers started and
    joined), raising if one of ``workers`` exits meanwhile or ``timeout_s`` passes."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="lianfang-bench")
    except KafkaError as e:
        raise BenchError(f"cannot reach Kafka at {bootstrap}: {e}") from e
    deadline = time.monotonic() + timeout_s
    state: object = "not described yet"
    try:
        while time.monotonic() < deadline:
            for w in workers:
                w.check_alive()
            try:
                info = admin.describe_groups([group]).get(group) or {}
            except KafkaError as e:
                info, state = {}, repr(e)
            if info:
                state = info.get("group_state", info.get("state"))
                if state == "Stable" and len(info.get("members") or []) == members:
                    return
            time.sleep(0.05)  # poll interval inside a deadline loop
    finally:
        admin.close()
    raise BenchError(f"group {group} not stable with {members} members in time ({state})")


# --------------------------------------------------------------------------- discovery


def discover(substring: str | None = None, *, memory: bool = False) -> list[tuple[str, ModuleType]]:
    """Import the ``bench_*`` modules of this package, sorted by name, filtered by ``substring``; with
    ``memory``, only those that have a memory case (a ``memory`` function)."""
    package = importlib.import_module(BENCH_PACKAGE)
    names = sorted(
        m.name
        for m in pkgutil.iter_modules(package.__path__)
        if m.name.startswith(BENCH_PREFIX) and (substring is None or substring in m.name)
    )
    found = []
    for name in names:
        module = importlib.import_module(f"{BENCH_PACKAGE}.{name}")
        if not callable(getattr(module, "run", None)):
            raise BenchError(f"{module.__file__} has no run(ctx: BenchContext) -> list[Result]")
        if memory and not callable(getattr(module, "memory", None)):
            continue
        found.append((name, module))
    return found


# --------------------------------------------------------------------------- environment and output


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment(
    started: dt.datetime, kafka: KafkaSource, *, quick: bool, runs: int, warmup: int
) -> dict[str, Any]:
    versions = {}
    for package in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    return {
        "started_utc": started.isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "kafka": kafka.describe(),
        "git": _git_commit(),
        "quick": quick,
        "runs": runs,
        "warmup": warmup,
        "packages": versions,
    }


@dataclass
class Outcome:
    """What one benchmark module produced: rows, notes and, if it failed, the error."""

    benchmark: str
    results: list[Result]
    notes: list[str]
    seconds: float
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "seconds": round(self.seconds, 3),
            "error": self.error,
            "notes": self.notes,
            "results": [asdict(r) for r in self.results],
        }


def fmt(value: float) -> str:
    """A figure with as many digits as are worth reading."""
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def header(env: dict[str, Any]) -> str:
    return (
        f"Lianfang benchmarks · {env['started_utc']} · Python {env['python']} · "
        f"Kafka {env['kafka']} · {env['cpu_count']} CPUs"
        + (" · --quick" if env["quick"] else "")
        + (f" · git {env['git']}" if env.get("git") else "")
    )


def render(env: dict[str, Any], outcomes: list[Outcome]) -> str:
    """The report: a header line, then one table per benchmark with its notes."""
    lines = [header(env)]
    for outcome in outcomes:
        lines += ["", f"{outcome.benchmark}  ({outcome.seconds:.1f} s)"]
        rows = [
            (
                r.case + (" (baseline)" if r.baseline else ""),
                r.metric,
                fmt(r.median),
                f"[{fmt(r.min)} – {fmt(r.max)}]",
                str(r.n_runs),
            )
            for r in outcome.results
        ]
        if rows:
            titles = ("case", "metric", "median", "[min – max]", "runs")
            widths = [max(len(c) for c in col) for col in zip(titles, *rows, strict=False)]
            aligns = ("<", "<", ">", ">", ">")
            for row in [titles, *rows]:
                cells = (f"{c:{a}{w}}" for c, a, w in zip(row, aligns, widths, strict=True))
                lines.append("  " + "  ".join(cells).rstrip())
        seen: set[tuple[str, str]] = set()
        case_notes = []
        for r in outcome.results:
            if r.notes and (r.case, r.notes) not in seen:
                seen.add((r.case, r.notes))
                case_notes.append(f"  · {r.case}: {r.notes}")
        lines += [f"  · {n}" for n in outcome.notes] + case_notes
        if outcome.error:
            lines.append(f"  FAILED: {outcome.error}")
    return "\n".join(lines)


def write_json(env: dict[str, Any], outcomes: list[Outcome], stamp: str) -> list[Path]:
    """One file per benchmark with a UTC stamp, and ``latest.json`` with every benchmark of the run."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    written = []
    for outcome in outcomes:
        path = RESULTS_DIR / f"{outcome.benchmark}-{stamp}.json"
        path.write_text(json.dumps({"environment": env, **outcome.as_json()}, indent=2) + "\n")
        written.append(path)
    latest = RESULTS_DIR / "latest.json"
    benchmarks = [o.as_json() for o in outcomes]
    body = {"environment": env, "benchmarks": benchmarks, "targets": targets.evaluate(benchmarks)}
    latest.write_text(json.dumps(body, indent=2) + "\n")
    written.append(latest)
    return written


# --------------------------------------------------------------------------- the command


def _run_one(name: str, module: ModuleType, ctx: BenchContext) -> Outcome:
    start = time.perf_counter()
    try:
        results = list(module.memory(ctx) if ctx.memory_only else module.run(ctx))
        error = None
    except Exception as e:  # one failing benchmark is reported; the others still run
        traceback.print_exc()
        results, error = [], f"{type(e).__name__}: {e}"
    finally:
        with contextlib.suppress(Exception):
            ctx.close()
    return Outcome(name, results, ctx.notes, time.perf_counter() - start, error)


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit so the local broker is stopped, not orphaned."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench",
        description="Run the Lianfang benchmarks (tests/bench/bench_*.py) and report their figures.",
    )
    parser.add_argument("-k", metavar="SUBSTRING", help="only benchmarks whose module name contains it")
    parser.add_argument("--quick", action="store_true", help="fewer records and runs (smoke test)")
    parser.add_argument(
        "--runs", type=int, help=f"timed runs per case (default {DEFAULT_RUNS}, quick {QUICK_RUNS})"
    )
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, help="untimed warm-up runs per case")
    parser.add_argument(
        "--memory",
        action="store_true",
        help=f"only the memory cases (the services' RSS after {MEMORY_EVENTS_ENV} events)",
    )
    args = parser.parse_args(argv)
    runs = args.runs or (QUICK_RUNS if args.quick else DEFAULT_RUNS)
    if runs < 1 or args.warmup < 0:
        parser.error("--runs must be at least 1 and --warmup at least 0")

    benchmarks = discover(args.k, memory=args.memory)
    if not benchmarks:
        what = "benchmark module with a memory case" if args.memory else "benchmark module"
        print(f"no {what} matches -k {args.k!r}", file=sys.stderr)
        return 2
    started = dt.datetime.now(dt.UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    kafka = KafkaSource(os.environ.get("LIANFANG_BOOTSTRAP"))
    outcomes: list[Outcome] = []
    with _sigterm_as_exit():
        try:
            for name, module in benchmarks:
                ctx = BenchContext(name, args.quick, runs, args.warmup, kafka, memory_only=args.memory)
                outcomes.append(_run_one(name, module, ctx))
            env = environment(started, kafka, quick=args.quick, runs=runs, warmup=args.warmup)
        finally:
            kafka.close()
    print(render(env, outcomes))
    print(targets.render(targets.evaluate(o.as_json() for o in outcomes)))
    for path in write_json(env, outcomes, stamp):
        progress(f"harness: wrote {path.relative_to(REPO_ROOT)}")
    return 1 if any(o.error for o in outcomes) else 0
