"""The performance targets, one row per criterion, judged from the figures of one benchmark run.

``make bench`` ends with this table, and ``bench-results/latest.json`` holds it under ``targets``: a
list of objects with exactly ``name``, ``figure``, ``baseline``, ``target`` and ``met``. A row's name
starts with the number of its item (1 group commit ... 7 memory) and says the unit; ``figure`` is the
measured median (``None`` when this run did not measure it: another ``-k``, a failed benchmark, or no
benchmark measures it yet), ``baseline`` the figure it is compared with in the same run (``None`` when
there is none), ``target`` the bound as text (``">= 3000"``), and ``met`` whether the figure is within
it (never true without a figure). Nothing is carried over from an earlier run.

``python -m tests.bench.targets [PATH]`` prints the table of a finished run (``bench-results/latest.json``
by default) as Markdown, as the README's performance section shows it.
"""

from __future__ import annotations

import argparse
import json
import operator
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Figures = Mapping[tuple[str, str, str], float]
"""Medians of one run by (benchmark, case, metric)."""

Bound = Literal[">=", "<="]
_COMPARE: dict[Bound, Callable[[float, float], bool]] = {">=": operator.ge, "<=": operator.le}
TARGET_FIELDS = ("name", "figure", "baseline", "target", "met")

ENVELOPE = "bench_envelope"
ROUTER = "bench_router"
HUB = "bench_hub"
ADAPTERS = "bench_adapters"
PSEUDONYMIZER = "bench_pseudonymizer"
IMPORT_CASE = "import, pseudonyms batched (as lianfang import)"
SIGNATURE_ONLY = "aiohttp signature check only, 32 in flight"
"""The gateway's baseline case in ``bench_adapters`` (:mod:`tests.bench.gateway_baseline`)."""
"""The importers' case of ``bench_pseudonymizer``: an import needs the pseudonymizer service, which that
benchmark runs (pinned to one CPU); Kafka delivery after the outbox is the drainer's, measured by the SDK
case of ``bench_adapters``."""
US = 1_000_000


@dataclass(frozen=True, slots=True)
class Target:
    """One criterion: how to get its figure and baseline from a run's medians, and its bound."""

    name: str
    bound: Bound
    limit: float
    figure: Callable[[Figures], float | None]
    baseline: Callable[[Figures], float | None] = lambda _: None
    minimum: float | None = None
    """A figure below this is noise, not a measurement (a cost cannot be negative): never met."""

    def row(self, figures: Figures) -> dict[str, Any]:
        figure = self.figure(figures)
        plausible = figure is not None and (self.minimum is None or figure >= self.minimum)
        met = plausible and figure is not None and _COMPARE[self.bound](figure, self.limit)
        return {
            "name": self.name,
            "figure": None if figure is None else round(figure, 3),
            "baseline": _rounded(self.baseline(figures)),
            "target": f"{self.bound} {self.limit:g}",
            "met": met,
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _get(benchmark: str, case: str, metric: str) -> Callable[[Figures], float | None]:
    return lambda f: f.get((benchmark, case, metric))


def _ratio(
    top: Callable[[Figures], float | None], bottom: Callable[[Figures], float | None]
) -> Callable[[Figures], float | None]:
    def ratio(f: Figures) -> float | None:
        a, b = top(f), bottom(f)
        return None if a is None or not b else a / b

    return ratio


def _us_per_extra_recipient(f: Figures) -> float | None:
    """The slope of seal+sign time from 1 to 8 recipients per section, in µs per recipient."""
    one = f.get((ENVELOPE, "seal+sign (1 recipient)", "events/s"))
    eight = f.get((ENVELOPE, "seal+sign (8 recipients)", "events/s"))
    if not one or not eight:
        return None
    return (US / eight - US / one) / 7


def _us_per(benchmark: str, case: str, metric: str, times: float = 1) -> Callable[[Figures], float | None]:
    def us(f: Figures) -> float | None:
        rate = f.get((benchmark, case, metric))
        return None if not rate else times * US / rate

    return us


TARGETS: tuple[Target, ...] = (
    Target(
        "1 group commit: SDK publish_lead from 8 threads (leads/s; baseline raw SQLite, one fsync a row)",
        ">=",
        3000,
        _get(ADAPTERS, "SDK publish_lead x8", "accepted/s"),
        _get(ADAPTERS, "raw SQLite insert", "rows/s"),
    ),
    Target(
        "1 group commit: importers, hotline rows to the fsync'd outbox (rows/s; baseline the reader alone)",
        ">=",
        1500,
        _get(PSEUDONYMIZER, IMPORT_CASE, "rows/s"),
        _get(PSEUDONYMIZER, "reader alone", "rows/s"),
    ),
    Target(
        "2 sealing: seal+sign, 4 recipients (events/s; baseline Ed25519 sign ops/s)",
        ">=",
        3000,
        _get(ENVELOPE, "seal+sign (4 recipients)", "events/s"),
        _get(ENVELOPE, "Ed25519 sign", "ops/s"),
    ),
    Target(
        "2 sealing: cost of each extra recipient (µs; baseline one X25519 DH µs)",
        "<=",
        30,
        _us_per_extra_recipient,
        _us_per(ENVELOPE, "X25519 DH", "ops/s"),
        minimum=0.0,
    ),
    Target(
        "2 sealing: verify+open, 4 recipients (events/s; baseline Ed25519 verify ops/s)",
        ">=",
        5000,
        _get(ENVELOPE, "verify+open (4 recipients)", "events/s"),
        _get(ENVELOPE, "Ed25519 verify", "ops/s"),
    ),
    Target(
        "3 router: router / aiokafka relay, 1 worker (ratio; baseline relay records/s)",
        ">=",
        0.70,
        _ratio(
            _get(ROUTER, "router, 1 worker", "events/s"),
            _get(ROUTER, "aiokafka relay, 1 worker", "records/s"),
        ),
        _get(ROUTER, "aiokafka relay, 1 worker", "records/s"),
    ),
    Target(
        "3 router: 2 workers / 1 worker on 3 partitions (ratio; baseline 1 worker events/s)",
        ">=",
        1.7,
        _ratio(
            _get(ROUTER, "router, 2 workers, 3 partitions", "events/s"),
            _get(ROUTER, "router, 1 worker, 3 partitions", "events/s"),
        ),
        _get(ROUTER, "router, 1 worker, 3 partitions", "events/s"),
    ),
    Target(
        "4 hub: events/s of 1 worker (baseline a decode-only faust agent, records/s)",
        ">=",
        1500,
        _get(HUB, "hub, 1 worker", "events/s"),
        _get(HUB, "faust decode-only agent, 1 worker", "records/s"),
    ),
    Target(
        "5 gateway: requests/s at 32 in flight (baseline an aiohttp handler that only checks the signature)",
        ">=",
        1500,
        _get(ADAPTERS, "gateway, 32 in flight", "requests/s"),
        _get(ADAPTERS, SIGNATURE_ONLY, "requests/s"),
    ),
    Target(
        "5 gateway: p99 ms at 32 in flight (baseline the same handler's)",
        "<=",
        100,
        _get(ADAPTERS, "gateway, 32 in flight", "p99 ms"),
        _get(ADAPTERS, SIGNATURE_ONLY, "p99 ms"),
    ),
    Target(
        "6 end to end: publish→alert p99 ms at 200 leads/s (make bench loads 10 s; 60 s with "
        "LIANFANG_BENCH_E2E_SECONDS=60; baseline kafka-python produce→consume p99 ms)",
        "<=",
        250,
        _get(HUB, "publish → alert at coordinators, 200 leads/s", "p99 ms"),
        _get(HUB, "kafka-python produce → consume, 1 KiB", "p99 ms"),
        minimum=0.0,
    ),
    Target(
        "6 end to end: alerts received of those expected at 200 leads/s (%)",
        ">=",
        100,
        _get(HUB, "publish → alert at coordinators, 200 leads/s", "% alerts received"),
    ),
    Target(
        "7 memory: router RSS after the memory run's events (MB; LIANFANG_BENCH_MEMORY_EVENTS, default "
        "10,000, the target's 1,000,000; baseline RSS started)",
        "<=",
        150,
        _get(ROUTER, "router RSS after the memory run", "MB"),
        _get(ROUTER, "router RSS, started", "MB"),
    ),
    Target(
        "7 memory: hub RSS after the memory run's leads drained (MB; make bench: the throughput case's "
        "leads; --memory: LIANFANG_BENCH_MEMORY_EVENTS, default 10,000; baseline RSS started)",
        "<=",
        150,
        _get(HUB, "hub RSS after the memory run", "MB"),
        _get(HUB, "hub RSS, started", "MB"),
    ),
    Target(
        "7 memory: gateway RSS after the memory run's requests accepted (MB; make bench: the gateway "
        "cases' requests; --memory: LIANFANG_BENCH_MEMORY_EVENTS, default 10,000; baseline RSS started)",
        "<=",
        150,
        _get(ADAPTERS, "gateway RSS after the memory run", "MB"),
        _get(ADAPTERS, "gateway RSS, started", "MB"),
    ),
    Target(
        "7 memory: router replay state (B per id; baseline the dict of strings it replaced)",
        "<=",
        40,
        _get(ROUTER, "replay state, compact (router)", "B per id"),
        _get(ROUTER, "replay state as a dict of strings", "B per id"),
        minimum=0.0,
    ),
)


def figures_of(benchmarks: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str, str], float]:
    """The medians of a run's benchmarks (their JSON form: ``benchmark`` and ``results``)."""
    return {
        (b["benchmark"], r["case"], r["metric"]): float(r["median"])
        for b in benchmarks
        for r in b.get("results", ())
    }


def evaluate(benchmarks: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per target, judged from the figures of ``benchmarks`` alone."""
    figures = figures_of(benchmarks)
    return [t.row(figures) for t in TARGETS]


def _cell(value: object) -> str:
    if value is None:
        return "not measured"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"
    return str(value)


def _cells(row: Mapping[str, Any]) -> tuple[str, str, str, str, str]:
    """A row's cells as the tables show them: target, figure, baseline, bound, met."""
    baseline = "—" if row["baseline"] is None else _cell(row["baseline"])
    return row["name"], _cell(row["figure"]), baseline, row["target"], _cell(row["met"])


def render(rows: list[dict[str, Any]]) -> str:
    """The summary table printed last by ``make bench``."""
    titles = ("target", "figure", "baseline", "bound", "met")
    cells = [_cells(r) for r in rows]
    widths = [max(len(c) for c in col) for col in zip(titles, *cells, strict=True)]
    aligns = ("<", ">", ">", "<", "<")
    lines = ["", "Performance targets, judged from this run alone (bench-results/latest.json: targets)"]
    for row in [titles, *cells]:
        lines.append(
            "  " + "  ".join(f"{c:{a}{w}}" for c, a, w in zip(row, aligns, widths, strict=True)).rstrip()
        )
    return "\n".join(lines)


def markdown(rows: list[dict[str, Any]]) -> str:
    """The same table as :func:`render`, in Markdown (the README's performance section)."""
    lines = ["| target | figure | baseline | bound | met |", "|---|--:|--:|---|---|"]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.targets", description=markdown.__doc__)
    parser.add_argument("path", nargs="?", type=Path, default=Path("bench-results/latest.json"))
    args = parser.parse_args(argv)
    try:
        rows = json.loads(args.path.read_text())["targets"]
    except FileNotFoundError:
        print(f"error: {args.path} not found. fix: run make bench first", file=sys.stderr)
        return 2
    except (ValueError, KeyError, TypeError):
        print(f"error: {args.path} holds no targets table (not a make bench result)", file=sys.stderr)
        return 2
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
