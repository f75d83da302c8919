"""Pseudonyms: what the oblivious pseudonymizer costs an adapter and an import, and what one service process
on one core gives, each figure beside its baseline in one run. No Kafka.

The service is ``python -m services.pseudonymizer`` in a child process pinned to one CPU
(``sched_setaffinity`` before it starts), its rate limit lifted, over loopback HTTP; it writes its audit
entry (fsync'd) for every request as in production. The callers run in this process.

- ``pseudonym cost per lead``: a lead needs two pseudonyms (victim and suspect, both with a phone).
  Baseline: the keyed HMAC of older domains (:func:`services.kernel.pseudonym.pseudonym`), two calls.
  Then :class:`~services.pseudonymizer.client.ObliviousPseudonymizer` asking the service, one request a
  lead (as the gateway and ``publish_lead`` do), and one request for ``BATCH_LEADS`` leads (as an import
  and the outbox's drainer do): blind, sign the request, the service's work, verify the proof, unblind.
  Every identifier is new (no cache hit).
- ``import``: a 12338 hotline export of ``ROWS`` generated rows. Baselines: the reader alone (decode,
  split, map columns), the whole import with the keyed HMAC (no service: what an import costs besides
  the pseudonyms), and the batched import below with the client's arithmetic in the importing process.
  Then ``run_import`` with an SDK client (drainer not started: up to the fsync'd outbox write) whose
  pseudonyms come from the service, in batches of :data:`~services.importers.engine.BATCH_ROWS` rows,
  the client's arithmetic in a process of its own (the importers' row of the targets table, as
  ``lianfang import`` runs it up to the durable outbox; the process is started once, before the runs),
  and with one request a row (batch of 1, ``ROW_BY_ROW`` rows).
- ``service``: closed loop, ``CONCURRENCY`` requests in flight, pre-signed bodies of 1 and of 256
  blinded elements: evaluations/s of the one core. Open loop: single-element requests sent on a fixed
  schedule of ``RATE`` a second whatever the answers (no coordinated omission: latency runs from each
  request's scheduled time), for ``OPEN_S`` seconds: p50 and p99 and the rate achieved.

On a shared machine (the benchmarks, the broker of other benchmarks, other work) these figures are noisy:
compare rows of one run, not runs of different days.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import Executor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.bench.harness import REPO_ROOT, BenchContext, BenchError, Result, per_second
from tests.bench.targets import IMPORT_CASE

LEADS_FULL, LEADS_QUICK = 300, 100
BATCH_LEADS = 256
ROWS_FULL, ROWS_QUICK = 3_000, 600  # long enough that the first batch's wait is a small part of it
ROW_BY_ROW_FULL, ROW_BY_ROW_QUICK = 600, 200  # the import with one request a row is slow: fewer rows
CLOSED_FULL, CLOSED_QUICK = 400, 150  # single-element requests per run; 256-element: a tenth
OPEN_S_FULL, OPEN_S_QUICK = 3.0, 1.0
RATE = 1_000
CONCURRENCY = 16
SENDER = "police"
START_DEADLINE_S = 60.0


# --------------------------------------------------------------------------- the service


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Setup:
    """A demo domain whose registry names the pseudonymizer, and the service serving it on one CPU."""

    def __init__(self) -> None:
        from services import trust
        from services.kernel.keystore import KdfParams

        self.tmp = Path(tempfile.mkdtemp(prefix="lianfang-bench-pseudonymizer-"))
        self.home = self.tmp / "home"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.now = datetime.now(UTC)
        self.domain = trust.init_domain(
            self.home, now=self.now, kdf=KdfParams.for_tests(), pseudonymizer_url=self.url
        )
        self.registry = self.domain.registry(self.now)
        self.keys = self.domain.keystore(SENDER)
        self.cpu = sorted(os.sched_getaffinity(0))[-1]
        env = {
            **os.environ,
            "LIANFANG_HOME": str(self.home),
            "LIANFANG_BOOTSTRAP": "",
            "LIANFANG_PSEUDONYMIZER_PORT": str(self.port),
            "LIANFANG_PSEUDONYMIZER_SPOOL_DIR": str(self.tmp / "spool"),
            "LIANFANG_PSEUDONYMIZER_RATE_PER_S": "1000000000",
        }
        cpu = self.cpu
        self.log = (self.tmp / "pseudonymizer.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.pseudonymizer"],
            cwd=REPO_ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),  # noqa: PLW1509 - before exec, no threads
        )
        deadline = time.monotonic() + START_DEADLINE_S
        while not self._serving():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"the pseudonymizer did not start: see {self.tmp / 'pseudonymizer.log'}")
            time.sleep(0.1)  # polling with a deadline

    def _serving(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/v1/key", timeout=1):
                return True
        except OSError:
            return False

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the service process has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def asker(self, in_flight: int = 1, work: Any = None) -> Any:
        from prometheus_client import CollectorRegistry

        from services.pseudonymizer.client import ClientMetrics, ObliviousPseudonymizer

        return ObliviousPseudonymizer(
            keystore=self.keys,
            registry=lambda: self.registry,
            metrics=ClientMetrics(CollectorRegistry()),
            in_flight=in_flight,
            work=work,
        )

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _phones(start: int, n: int) -> Iterator[str]:
    for i in range(start, start + n):
        yield f"13{i % 10}{i:08d}"[:11]


# --------------------------------------------------------------------------- pseudonym cost per lead


def _per_lead(ctx: BenchContext, setup: Setup, leads: int) -> list[Result]:
    from services.kernel.pseudonym import new_pseudonym_key, normalize_subject, pseudonym

    counter = iter(range(10**9))

    def fresh() -> list[list[str]]:
        """``leads`` leads' two canonical identifiers, none asked for before in this run."""
        first = next(counter) * leads * 2
        phones = list(_phones(first, leads * 2))
        return [
            [normalize_subject(phone=phones[2 * i]), normalize_subject(phone=phones[2 * i + 1])]
            for i in range(leads)
        ]

    key = new_pseudonym_key(1)

    def hmac_run() -> float:
        batch = fresh()
        start = time.perf_counter()
        for pair in batch:
            for canonical in pair:
                pseudonym(key, canonical)
        return time.perf_counter() - start

    def oprf_each() -> float:
        asker, batch = setup.asker(), fresh()
        start = time.perf_counter()
        for pair in batch:
            asker.pseudonyms(pair)
        return time.perf_counter() - start

    def oprf_batched() -> float:
        asker, batch = setup.asker(), fresh()
        start = time.perf_counter()
        for at in range(0, len(batch), BATCH_LEADS):
            asker.pseudonyms([c for pair in batch[at : at + BATCH_LEADS] for c in pair])
        return time.perf_counter() - start

    us = 1_000_000 / leads
    notes = "two pseudonyms a lead (victim and suspect)"
    return [
        ctx.result(
            "keyed HMAC (older domains)",
            "µs/lead",
            [s * us for s in ctx.measure("hmac", hmac_run)],
            baseline=True,
            notes=notes,
        ),
        ctx.result(
            "OPRF, one request a lead",
            "µs/lead",
            [s * us for s in ctx.measure("oprf each", oprf_each)],
            notes=notes,
        ),
        ctx.result(
            f"OPRF, {BATCH_LEADS} leads a request",
            "µs/lead",
            [s * us for s in ctx.measure("oprf batched", oprf_batched)],
            notes=notes,
        ),
    ]


# --------------------------------------------------------------------------- import rows/s


def _import(ctx: BenchContext, setup: Setup, rows: int, row_by_row: int) -> list[Result]:
    from prometheus_client import CollectorRegistry

    from services.importers import engine
    from services.importers.ledger import Ledger
    from services.importers.reader import ExportFile
    from services.importers.spec import load_format
    from services.kernel.pseudonym import new_pseudonym_key
    from services.pseudonymizer.client import work_process
    from services.sdk.client import Client
    from services.sdk.metrics import SdkMetrics
    from tests.samples import generate

    spec = load_format("hotline_12338")
    runs = iter(range(10**9))

    def export(rows: int = rows) -> Path:
        """A hotline export of ``rows`` rows nobody imported yet (new people every run)."""
        n = next(runs)
        path = setup.tmp / f"hotline-{n}.csv"
        people = generate.People(seed=1000 + n)
        text = generate.csv_text(generate.HOTLINE_HEADER, generate.hotline_rows(people, rows))
        path.write_text("\ufeff" + text, encoding="utf-8")
        return path

    def reader_run() -> float:
        path = export()
        start = time.perf_counter()
        with ExportFile.open(path, spec) as exported:
            for _line in exported.lines():
                pass
        return time.perf_counter() - start

    def import_run(
        batch_rows: int, *, keyed: bool = False, rows: int = rows, work: Executor | None = None
    ) -> float:
        path, n = export(rows), next(runs)
        home = setup.tmp / f"import-{n}"
        client = Client(
            keystore=setup.keys,
            registry=setup.registry,
            bootstrap="",
            outbox_path=home / "outbox.sqlite",
            start=False,
            # As `lianfang import` sets up its client: as many requests in flight as batches asked ahead,
            # their arithmetic in a process of its own.
            pseudonymizer=new_pseudonym_key(1) if keyed else setup.asker(engine.ASK_AHEAD, work),
            metrics=SdkMetrics(CollectorRegistry()),
        )
        ledger = Ledger.open(home, "womens_federation")
        saved, engine.BATCH_ROWS = engine.BATCH_ROWS, batch_rows  # type: ignore[misc]
        try:
            with ExportFile.open(path, spec) as exported:
                start = time.perf_counter()
                summary = engine.run_import(
                    exported,
                    participant="womens_federation",
                    publisher=client,
                    ledger=ledger,
                    now=datetime.now(UTC),
                    report=lambda _line: None,
                )
                seconds = time.perf_counter() - start
        finally:
            engine.BATCH_ROWS = saved  # type: ignore[misc]
            ledger.close()
            client.close()
        if summary.stopped or summary.imported + summary.rejected != rows:
            raise BenchError(f"the import did not go through: {summary}")
        return seconds

    setup.keys = setup.domain.keystore("womens_federation")
    pool = work_process()
    try:
        started = time.perf_counter()
        pool.submit(int).result()  # an import starts its process once; these runs share one
        ctx.note(
            f"import: the process for the pseudonymizer client's arithmetic started in "
            f"{time.perf_counter() - started:.2f} s, once, before the runs (as once an import)"
        )
        batched = engine.BATCH_ROWS
        notes = f"{rows:,} hotline_12338 rows; SDK up to the fsync'd outbox write"
        return [
            ctx.result(
                "reader alone",
                "rows/s",
                per_second(ctx.measure("reader", reader_run), rows),
                baseline=True,
                notes="decode, split, map columns",
            ),
            ctx.result(
                "import, keyed HMAC (older domains)",
                "rows/s",
                per_second(ctx.measure("import keyed", lambda: import_run(batched, keyed=True)), rows),
                baseline=True,
                notes=notes + "; no service: what the import costs besides the pseudonyms",
            ),
            ctx.result(
                "import, pseudonyms batched, arithmetic in the importing process",
                "rows/s",
                per_second(ctx.measure("import batched here", lambda: import_run(batched)), rows),
                baseline=True,
                notes=f"{notes}; {batched} rows a batch; as {IMPORT_CASE!r} without its work process",
            ),
            ctx.result(
                IMPORT_CASE,
                "rows/s",
                per_second(ctx.measure("import batched", lambda: import_run(batched, work=pool)), rows),
                notes=f"{notes}; {batched} rows a batch, the client's arithmetic in a process of its own; "
                "the targets' importers row",
            ),
            ctx.result(
                "import, one request a row",
                "rows/s",
                per_second(
                    ctx.measure("import per row", lambda: import_run(1, rows=row_by_row, work=pool)),
                    row_by_row,
                ),
                notes=f"{row_by_row:,} hotline_12338 rows; SDK up to the fsync'd outbox write",
            ),
        ]
    finally:
        pool.shutdown()
        setup.keys = setup.domain.keystore(SENDER)


# --------------------------------------------------------------------------- the service itself


def _bodies(setup: Setup, elements: int, count: int) -> list[tuple[bytes, dict[str, str]]]:
    """``count`` signed evaluation requests of ``elements`` blinded elements each (valid for minutes)."""
    from services.gateway import httpsig
    from services.kernel import crypto, envelope, jsonx, oprf
    from services.kernel.pseudonym import normalize_subject, oprf_input
    from services.pseudonymizer import core

    url = setup.url + "/v1/evaluate"
    now = datetime.now(UTC)
    kid = envelope.choose_signing_kid(setup.keys, setup.registry, now)
    out = []
    phones = _phones(5_000_000 + 100_000 * elements, elements * count)
    for _ in range(count):
        blinded = [
            oprf.blind(oprf_input(normalize_subject(phone=next(phones))), core.MODE) for _ in range(elements)
        ]
        body = jsonx.compact_json({"elements": [crypto.b64e(b.element) for b in blinded]})
        headers = {"Content-Type": "application/json"}
        headers.update(
            httpsig.sign_request(
                "POST",
                url,
                headers=headers,
                body=body,
                key=setup.keys.signing_key(kid),
                keyid=kid,
                created=int(now.timestamp()),
            )
        )
        out.append((body, headers))
    return out


async def _closed(url: str, bodies: list[tuple[bytes, dict[str, str]]], requests: int) -> float:
    import aiohttp

    left = iter(range(requests))
    failures: list[int] = []

    async def worker(session: aiohttp.ClientSession) -> None:
        for i in left:
            body, headers = bodies[i % len(bodies)]
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    failures.append(response.status)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as session:
        await session.get(url.replace("/v1/evaluate", "/v1/key"))
        start = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(CONCURRENCY)))
        seconds = time.perf_counter() - start
    if failures:
        raise BenchError(f"the service refused {len(failures)} request(s): {sorted(set(failures))}")
    return seconds


async def _open(
    url: str, bodies: list[tuple[bytes, dict[str, str]]], rate: float, seconds: float
) -> dict[str, Any]:
    """Send a request every 1/rate s for ``seconds``, whatever the answers; latency from each one's
    scheduled time."""
    import aiohttp

    latencies: list[float] = []
    failures: list[int] = []

    async def one(session: aiohttp.ClientSession, at: float, i: int) -> None:
        body, headers = bodies[i % len(bodies)]
        async with session.post(url, data=body, headers=headers) as response:
            await response.read()
            latencies.append(time.perf_counter() - at)
            if response.status != 200:
                failures.append(response.status)

    total = int(rate * seconds)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await session.get(url.replace("/v1/evaluate", "/v1/key"))
        start = time.perf_counter()
        tasks = []
        for i in range(total):
            at = start + i / rate
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)  # the open-loop schedule, not a wait for a result
            tasks.append(asyncio.create_task(one(session, at, i)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "achieved": total / elapsed,
        "failures": len(failures),
    }


def _service(ctx: BenchContext, setup: Setup, requests: int, open_s: float) -> list[Result]:
    url = setup.url + "/v1/evaluate"
    single = _bodies(setup, 1, 64)
    big = _bodies(setup, 256, 4)
    big_requests = max(4, requests // 10)
    cpu: dict[str, list[float]] = {"1": [], "256": []}

    def closed(bodies: list[tuple[bytes, dict[str, str]]], n: int, label: str) -> float:
        used = setup.cpu_seconds()
        seconds = asyncio.run(_closed(url, bodies, n))
        cpu[label].append((setup.cpu_seconds() - used) / seconds)
        return seconds

    one = ctx.measure("closed, 1 element", lambda: closed(single, requests, "1"))
    many = ctx.measure("closed, 256 elements", lambda: closed(big, big_requests, "256"))
    opened: list[dict[str, Any]] = []

    def open_run() -> float:
        opened.append(asyncio.run(_open(url, single, RATE, open_s)))
        return open_s

    ctx.measure(f"open loop {RATE}/s", open_run)
    timed = opened[ctx.warmup :]
    if any(o["failures"] for o in timed):
        ctx.note(f"open loop: {sum(o['failures'] for o in timed)} request(s) refused")

    def pinned(label: str) -> str:
        busy = max(cpu[label][ctx.warmup :] or cpu[label], default=0.0)
        load = os.getloadavg()[0]
        return (
            f"one CPU; the service was busy {busy:.2f} CPU s a second (the rest: waiting for that CPU or "
            f"for its audit fsync; load average {load:.1f})"
        )

    return [
        ctx.result(
            "service, 1 element a request", "evaluations/s", per_second(one, requests), notes=pinned("1")
        ),
        ctx.result(
            "service, 256 elements a request",
            "evaluations/s",
            per_second(many, big_requests * 256),
            notes=pinned("256"),
        ),
        ctx.result(
            f"service, open loop {RATE}/s offered",
            "p50 ms",
            [o["p50_ms"] for o in timed],
            notes="single-element requests",
        ),
        ctx.result(
            f"service, open loop {RATE}/s offered",
            "p99 ms",
            [o["p99_ms"] for o in timed],
            notes="latency from each request's scheduled time",
        ),
        ctx.result(f"service, open loop {RATE}/s offered", "achieved/s", [o["achieved"] for o in timed]),
    ]


def run(ctx: BenchContext) -> list[Result]:
    setup = Setup()
    try:
        ctx.note(
            f"the service pinned to CPU {setup.cpu} of {os.cpu_count()}, the callers in this process; "
            "a shared machine makes these figures noisy"
        )
        results = _per_lead(ctx, setup, ctx.scale(LEADS_FULL, LEADS_QUICK))
        results += _import(
            ctx, setup, ctx.scale(ROWS_FULL, ROWS_QUICK), ctx.scale(ROW_BY_ROW_FULL, ROW_BY_ROW_QUICK)
        )
        results += _service(
            ctx, setup, ctx.scale(CLOSED_FULL, CLOSED_QUICK), ctx.scale(OPEN_S_FULL, OPEN_S_QUICK)
        )
        return results
    finally:
        with contextlib.suppress(OSError):
            setup.close()
