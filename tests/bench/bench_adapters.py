"""Adapters: the HTTP gateway under concurrent load and the SDK's publish throughput, beside raw Kafka
producers sending values of the same size, all in one run against one broker.

The workload: ``lead.reported`` leads of category ``domestic_violence`` (town ``renhe``, so 4 recipients),
each about a different victim (distinct phone numbers), with a narrative that makes the request's JSON
about 1 KiB. What each case times:

- ``gateway``: ``python -m services.gateway`` (serving police) in one process; a load generator, this
  module run as ``python -m tests.bench.bench_adapters load``, in another, keeping ``CONCURRENCY``
  signed ``POST /v1/events`` in flight over loopback (aiohttp, one connection each). Each request is
  signed when it is sent (RFC 9421, Ed25519) and needs the whole path: signature check, idempotency
  reservation (fsync), validation, pseudonyms, seal to 4 recipients, outbox write (fsync). Timed by
  the generator from its first request to its last 202; latency per request from send to response.
  Between runs the gateway's outbox is left to drain to Kafka (not timed). ``gateway, 2 processes``:
  the same at 32 in flight against ``LIANFANG_GATEWAY_PROCESSES=2`` (two processes on the port, one
  idempotency store), started after the one-process gateway stopped.
- ``SDK publish_lead``: one :class:`~services.sdk.client.Client` in this process, ``publish_lead`` N
  times (validate, pseudonymize, seal, outbox write with fsync), then ``flush`` until Kafka has acked
  every record (acks=all). Two figures: accepted/s (the publish loop) and in-Kafka/s (loop + flush).
- ``gateway RSS after the memory run`` (MB; its baseline ``gateway RSS, started``): the gateway's RSS
  once serving and after the last request of the gateway cases, with the growth over the second half
  (:class:`~tests.bench.harness.RssTrack`). ``python -m tests.bench --memory -k adapters`` runs a
  gateway alone through ``LIANFANG_BENCH_MEMORY_EVENTS`` requests (10,000 by default) at 32 in flight,
  in ``MEMORY_LOOKS`` runs of the load generator, its RSS read after each once its outbox drained.
- ``SDK inbox, one reader``: one :class:`~services.sdk.client.Client` of a recipient
  (``READER``) reading ``events`` sealed leads from its inbox (3 partitions) with ``inbox()``: verify,
  open, the handed-out id remembered (fsync), the audit line (fsync), offsets committed together;
  timed from the first event handed out to the last, a new reader group each run. Baselines on the
  same records: a kafka-python consumer polling one record at a time as the reader does, committing
  after each record (what the reader did before), and committing once at the end.
- the pseudonymizer the registry names runs in a process of its own (its per-participant rate limit
  lifted); a case fails rather than report a figure if any lead was deferred for want of its answer.
- baselines: kafka-python and aiokafka producing N values of the sealed records' size (random bytes,
  distinct 46-byte keys, 12 partitions as ``lianfang.events.v1``), acks=all with idempotence,
  timed from the first send to the end of flush.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.bench.harness import (
    MEMORY_EVENTS_ENV,
    REPO_ROOT,
    BenchContext,
    BenchError,
    Result,
    RssTrack,
    memory_events,
    per_second,
)
from tests.bench.sampler import Sampler
from tests.workers import rss_bytes

EVENTS_FULL = 1_000
EVENTS_QUICK = 300
REQUESTS_FULL = 800
REQUESTS_QUICK = 300
HEAVY_RUNS_CAP = 3  # the SDK and gateway cases take several seconds a run: keep `make bench` short
CONCURRENCY = 32
THREADS = 8  # SDK callers in one process
PARTITIONS = 12
SENDER = "police"
READER = "womens_federation"  # a recipient of the leads (town renhe)
INBOX_PARTITIONS = 3
TOWN = "renhe"
LINGER_MS = 2  # as the outbox's producer
START_DEADLINE_S = 60.0
DRAIN_DEADLINE_S = 120.0
LOAD_DEADLINE_S = 300.0
MEMORY_REQUESTS_FULL = 10_000  # the memory case alone (--memory); make bench measures the gateway cases
MEMORY_REQUESTS_QUICK = 2_000
MEMORY_LOOKS = 10  # load generator runs in the memory case, the gateway's RSS read after each
MEMORY_MIN_RATE = 20  # requests/s: a load generator run's deadline allows for a gateway this slow
CLIENT_ID = "lianfang-bench"
SAMPLE = os.environ.get("LIANFANG_BENCH_SAMPLE", "") not in ("", "0")
"""Sample the stacks of the gateway's and the SDK publishers' threads (:mod:`tests.bench.sampler`) and
note the top costs; the sampler takes the GIL every 2 ms, so the figures of such a run are not quoted."""
SAMPLED_TOP = 12


# --------------------------------------------------------------------------- the workload


def lead_event(i: int) -> dict[str, Any]:
    """A lead whose request body is about 1 KiB of JSON."""
    return {
        "category": "domestic_violence",
        "channel": "hotline_12338",
        "town": TOWN,
        "victim": {"name": "王秀兰", "phone": f"138{i:08d}", "is_minor": False, "sex": "female", "age": 36},
        "suspects": [
            {"name": "李建国", "phone": f"139{i:08d}", "is_minor": False, "relationship": "spouse", "age": 40}
        ],
        "minor": False,
        "risk_indicators": ["escalation", "threats_to_kill"],
        "narrative": "受害人拨打12338热线称其丈夫酒后对其实施殴打, 邻居多次听到争吵并报警, 受害人表示害怕回家。"
        * 6,
        "requests_joint_meeting": False,
        "reporter_contact": "12338 热线接线员 07 号",
    }


def request_body(i: int) -> bytes:
    return json.dumps({"type": "lead.reported", "event": lead_event(i)}, ensure_ascii=False).encode("utf-8")


# --------------------------------------------------------------------------- the load generator (child)


async def _load(
    url: str, keystore: Any, kid: str, first: int, requests: int, concurrency: int
) -> dict[str, Any]:
    import aiohttp

    from services.gateway.client import signed_headers

    bodies = [request_body(first + i) for i in range(requests)]
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    problems: dict[int, str] = {}  # one answer of each refusing status, to say why
    queue = iter(bodies)

    async def worker(session: aiohttp.ClientSession) -> None:
        for body in queue:
            headers = signed_headers(keystore, kid, "POST", url, body)
            sent = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as response:
                answer = await response.read()
                if response.status != 202:
                    problems.setdefault(response.status, answer.decode("utf-8", "replace")[:500])
                latencies.append(time.perf_counter() - sent)
                statuses[response.status] = statuses.get(response.status, 0) + 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await session.get(url.replace("/v1/events", "/v1/openapi.json"))  # connect before the clock starts
        start = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    latencies.sort()
    return {
        "seconds": seconds,
        "statuses": statuses,
        "problems": problems,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "request_bytes": statistics.median(len(b) for b in bodies),
    }


def load_main(argv: list[str]) -> int:
    from services import trust
    from services.gateway.webhooks import signing_kid

    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_adapters load")
    parser.add_argument("--url", required=True)
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--as", dest="participant", default=SENDER)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--requests", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    args = parser.parse_args(argv)
    domain = trust.open_domain(args.home)
    now = datetime.now(UTC)
    keystore = domain.keystore(args.participant)
    kid = signing_kid(keystore, domain.registry(now), now)
    result = asyncio.run(_load(args.url, keystore, kid, args.first, args.requests, args.concurrency))
    print(json.dumps(result))
    return 0


# --------------------------------------------------------------------------- helpers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _metric(port: int, name: str, labels: str = "") -> float | None:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return None
    series = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 30 s."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def _wait(condition: Callable[[], bool], deadline_s: float, what: str) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)  # poll interval inside a deadline loop
    raise BenchError(f"timed out after {deadline_s:.0f} s waiting for {what}")


class Setup:
    """A demo trust domain, the events topic under a prefix of its own, and a scratch folder."""

    def __init__(self, ctx: BenchContext) -> None:
        from services import trust
        from services.bus.cluster import TopicSpec, ensure_topics
        from services.kernel import topics
        from services.kernel.keystore import KdfParams

        self.tmp = Path(tempfile.mkdtemp(prefix="lianfang-bench-adapters-"))
        self.home = self.tmp / "home"
        self.now = datetime.now(UTC)
        self.pseudonymizer_url = f"http://127.0.0.1:{_free_port()}"
        self.domain = trust.init_domain(
            self.home, now=self.now, kdf=KdfParams.for_tests(), pseudonymizer_url=self.pseudonymizer_url
        )
        self.registry = self.domain.registry(self.now)
        self.pseudonymizer = self._start_pseudonymizer()
        self.prefix = ctx.unique("adapters") + "."
        names = topics.TopicNames(self.prefix)
        self.events_topic = names.events
        # The clients ship their audit chains to the audit topic in the background: it exists, so they
        # do not retry (and warn) for the whole case.
        ensure_topics(
            ctx.bootstrap, [TopicSpec(self.events_topic, PARTITIONS, 1), TopicSpec(names.audit, 1, 1)]
        )
        self.topics = [self.events_topic, names.audit]  # deleted by close()
        self.bootstrap = ctx.bootstrap

    def _start_pseudonymizer(self) -> subprocess.Popen[bytes]:
        """The pseudonymizer the registry names, in a process of its own (its per-participant rate
        limit lifted: the benchmark measures throughput, not the limiter)."""
        port = self.pseudonymizer_url.rsplit(":", 1)[1]
        env = {
            **os.environ,
            "LIANFANG_HOME": str(self.home),
            "LIANFANG_BOOTSTRAP": "",
            "LIANFANG_PSEUDONYMIZER_PORT": port,
            "LIANFANG_PSEUDONYMIZER_SPOOL_DIR": str(self.tmp / "pseudonymizer-spool"),
            "LIANFANG_PSEUDONYMIZER_RATE_PER_S": "1000000000",
        }
        log = (self.tmp / "pseudonymizer.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.pseudonymizer"],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

        def serving() -> bool:
            if proc.poll() is not None:
                raise BenchError(f"the pseudonymizer exited: see {self.tmp / 'pseudonymizer.log'}")
            try:
                with urllib.request.urlopen(self.pseudonymizer_url + "/v1/key", timeout=1):
                    return True
            except OSError:
                return False

        _wait(serving, START_DEADLINE_S, "the pseudonymizer")
        return proc

    def client(self, name: str, participant: str = SENDER, **options: Any) -> Any:
        """A client of ``participant`` with an outbox of its own and metrics of its own; ``options``
        as :class:`~services.sdk.client.Client` takes them."""
        from prometheus_client import CollectorRegistry

        from services.sdk.client import Client
        from services.sdk.metrics import SdkMetrics

        return Client(
            keystore=self.domain.keystore(participant),
            registry=self.registry,
            bootstrap=self.bootstrap,
            outbox_path=self.tmp / f"{name}.sqlite",
            topic_prefix=self.prefix,
            metrics=SdkMetrics(CollectorRegistry()),
            **options,
        )

    def holding_client(self, name: str) -> Any:
        """A client of ``SENDER`` that is not started: what it publishes stays sealed in its outbox."""
        return self.client(name, start=False)

    def sealed_size(self) -> int:
        """The size of a sealed lead as the SDK writes it (what every case puts on Kafka)."""
        client = self.holding_client("probe")
        try:
            client.publish_lead(lead_event(0))
            return len(client.outbox.pending()[0].value)
        finally:
            client.close()

    def close(self) -> None:
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        try:
            admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id=CLIENT_ID)
            try:
                admin.delete_topics(self.topics)
            finally:
                admin.close()
        except KafkaError:
            pass
        _terminate(self.pseudonymizer)
        shutil.rmtree(self.tmp, ignore_errors=True)


# --------------------------------------------------------------------------- cases


def _no_lead_deferred(deferred: float | None, where: str) -> None:
    """The figures are of leads pseudonymized while the caller waited: a lead that was deferred (the
    pseudonymizer did not answer) would make a publish cheaper than the path being measured."""
    if deferred:
        raise BenchError(f"{where}: {deferred:.0f} lead(s) were deferred; the pseudonymizer did not answer")


def _sampled_note(ctx: BenchContext, what: str, report: dict[str, Any]) -> None:
    def top(rows: list[tuple[str, float]]) -> str:
        return ", ".join(f"{name} {100 * share:.0f}%" for name, share in rows[:SAMPLED_TOP])

    ctx.note(
        f"sampled {what} ({report['samples']:,} samples, wall clock): own: {top(report['own'])}; "
        f"inclusive, Lianfang's own: {top([r for r in report['inclusive'] if r[0].startswith('services/')])}"
    )


def _load_run(url: str, home: Path, first: int, requests: int, concurrency: int) -> dict[str, Any]:
    """One run of the load generator against ``url``: every request answered 202, or a
    :class:`BenchError`. Its summary (seconds, p50_ms, p99_ms, ...)."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.bench.bench_adapters",
            "load",
            "--url",
            url,
            "--home",
            str(home),
            "--first",
            str(first),
            "--requests",
            str(requests),
            "--concurrency",
            str(concurrency),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=LOAD_DEADLINE_S + requests / MEMORY_MIN_RATE,
        check=False,
    )
    if out.returncode != 0:
        raise BenchError(f"the load generator failed:\n{out.stderr[-2000:]}")
    summary: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    if summary["statuses"] != {"202": requests}:
        raise BenchError(f"{url} answered {summary['statuses']}, not {requests} x 202: {summary['problems']}")
    return summary


class SignatureOnly:
    """The gateway's baseline, :mod:`tests.bench.gateway_baseline`: an aiohttp handler that only checks
    the request's signature and digest, in a process of its own, driven by the same load generator."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1/events"
        self.sent = 0
        with (setup.tmp / "gateway-baseline.log").open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.bench.gateway_baseline",
                    "--home",
                    str(setup.home),
                    "--port",
                    str(self.port),
                ],
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

        def serving() -> bool:
            if self.proc.poll() is not None:
                raise BenchError(f"the baseline server exited: see {setup.tmp / 'gateway-baseline.log'}")
            try:
                with urllib.request.urlopen(self.url.replace("/v1/events", "/v1/openapi.json"), timeout=1):
                    return True
            except OSError:
                return False

        try:
            _wait(serving, START_DEADLINE_S, "the baseline server")
        except BaseException:
            self.stop()
            raise

    def load(self, requests: int, concurrency: int) -> dict[str, Any]:
        first = self.sent
        self.sent += requests
        return _load_run(self.url, self.setup.home, first, requests, concurrency)

    def stop(self) -> None:
        _terminate(self.proc)


class Gateway:
    """``python -m services.gateway`` serving police on ``setup``'s domain and events topic (under the
    stack sampler with ``LIANFANG_BENCH_SAMPLE=1``), and the load generator's runs against it;
    ``processes`` is ``LIANFANG_GATEWAY_PROCESSES``."""

    def __init__(self, setup: Setup, *, processes: int = 1) -> None:
        self.setup = setup
        self.processes = processes
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1/events"
        self.sent = 0  # requests sent so far: the next run's first lead number
        env = {
            **os.environ,
            "LIANFANG_BOOTSTRAP": setup.bootstrap,
            "LIANFANG_HOME": str(setup.home),
            "LIANFANG_GATEWAY_PARTICIPANTS": SENDER,
            "LIANFANG_GATEWAY_PORT": str(self.port),
            "LIANFANG_GATEWAY_SPOOL_DIR": str(setup.tmp / f"gateway-spool-{processes}"),
            "LIANFANG_GATEWAY_PROCESSES": str(processes),
            "LIANFANG_GATEWAY_TOPIC_PREFIX": setup.prefix,
            # No timestamp service runs here: without this every request is a 503 registry_stale (the
            # check itself is an in-memory comparison; it costs the request nothing measurable).
            "LIANFANG_GATEWAY_REQUIRE_FRESHNESS": "false",
        }
        self.sampled = setup.tmp / "gateway.sampled.json"
        sampled = SAMPLE and processes == 1
        sampler = ["-m", "tests.bench.sampler", str(self.sampled), "services/gateway/"] if sampled else ["-m"]
        self.log = setup.tmp / f"gateway-{processes}.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, *sampler, "services.gateway"],
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            _wait(lambda: self.depth() is not None, START_DEADLINE_S, "the gateway")
        except BaseException:
            self.stop()
            raise

    def depth(self) -> float | None:
        """The outbox depth (summed over the processes, each of which reports it by ``slot``)."""
        return self.metric("lianfang_gateway_outbox_depth", f'participant="{SENDER}"')

    def metric(self, name: str, labels: str = "") -> float | None:
        if self.processes == 1:
            return _metric(self.port, name, labels)
        per_slot = [_metric(self.port, name, ",".join(filter(None, (labels, f'slot="{slot}"'))))
                    for slot in range(self.processes)]  # fmt: skip
        return None if None in per_slot else sum(v for v in per_slot if v is not None)

    def rss_bytes(self, *, peak: bool = False) -> int | None:
        return rss_bytes(self.proc.pid, peak=peak)

    def load(self, requests: int, concurrency: int) -> dict[str, Any]:
        """One run of the load generator: ``requests`` leads not sent before, all answered 202 (or a
        :class:`BenchError`); then the outbox left to drain to Kafka (not timed). Its summary."""
        if self.proc.poll() is not None:
            raise BenchError(f"the gateway exited with {self.proc.returncode}; see {self.log}")
        first = self.sent
        self.sent += requests
        summary = _load_run(self.url, self.setup.home, first, requests, concurrency)
        _wait(lambda: self.depth() == 0, DRAIN_DEADLINE_S, "the outbox")
        return summary

    def stop(self) -> None:
        _terminate(self.proc)


SIGNATURE_ONLY = f"aiohttp signature check only, {CONCURRENCY} in flight"


def _signature_only(ctx: BenchContext, setup: Setup, requests: int) -> list[Result]:
    """The gateway's baseline: the same load generator and requests against a handler that only
    checks the signature (:class:`SignatureOnly`)."""
    server = SignatureOnly(setup)
    summaries: list[dict[str, Any]] = []

    def one_run() -> float:
        summaries.append(server.load(requests, CONCURRENCY))
        return float(summaries[-1]["seconds"])

    try:
        seconds = ctx.measure(SIGNATURE_ONLY, one_run)
    finally:
        server.stop()
    timed = summaries[ctx.warmup :]
    notes = (
        f"the gateway cases' load generator and requests ({requests:,} a run, {CONCURRENCY} in flight); the "
        "handler parses Signature-Input, verifies the Ed25519 signature over the covered components and "
        "checks Content-Digest, then answers 202 (tests/bench/gateway_baseline.py): no pseudonyms, "
        "sealing, fsyncs or Kafka. Its figure is also the ceiling the load generator allows on this machine"
    )
    return [
        ctx.result(SIGNATURE_ONLY, "requests/s", per_second(seconds, requests), baseline=True, notes=notes),
        ctx.result(SIGNATURE_ONLY, "p50 ms", [s["p50_ms"] for s in timed], baseline=True, notes=notes),
        ctx.result(SIGNATURE_ONLY, "p99 ms", [s["p99_ms"] for s in timed], baseline=True, notes=notes),
    ]


def _gateway(ctx: BenchContext, setup: Setup, requests: int) -> list[Result]:
    """Its baseline (:func:`_signature_only`), then the gateway at 32 and at 1 request in flight, and
    its RSS from start to the last of those requests (the memory figures of ``make bench``)."""
    baseline = _signature_only(ctx, setup, requests)
    cases = (
        (f"gateway, {CONCURRENCY} in flight", CONCURRENCY, requests),
        ("gateway, 1 in flight", 1, max(50, requests // 5)),
    )
    gateway = Gateway(setup)
    total = (ctx.warmup + ctx.runs) * sum(n for _, _, n in cases)
    track = RssTrack("gateway", total, gateway.rss_bytes)
    track.started()
    try:
        results = []
        for case, concurrency, n in cases:
            results += _gateway_case(ctx, gateway, track, case, concurrency, n)
        track.finished()
        _no_lead_deferred(gateway.metric("lianfang_outbox_leads_deferred_total"), "the gateway")
    finally:
        gateway.stop()
        if SAMPLE and gateway.sampled.exists():
            _sampled_note(
                ctx,
                "gateway process, its request threads and event loop",
                json.loads(gateway.sampled.read_text()),
            )
    two = Gateway(setup, processes=2)
    try:
        results += _gateway_case(
            ctx, two, None, f"gateway, 2 processes, {CONCURRENCY} in flight", CONCURRENCY, requests
        )
        _no_lead_deferred(two.metric("lianfang_outbox_leads_deferred_total"), "the gateway of 2 processes")
    finally:
        two.stop()
    return (
        baseline
        + results
        + track.results(
            ctx,
            started="once started and serving (VmRSS of python -m services.gateway)",
            after=f"after accepting the {total:,} signed requests of the gateway cases (distinct victims)",
        )
    )


def _gateway_case(
    ctx: BenchContext, gateway: Gateway, track: RssTrack | None, case: str, concurrency: int, requests: int
) -> list[Result]:
    summaries: list[dict[str, Any]] = []

    def one_run() -> float:
        summaries.append(gateway.load(requests, concurrency))
        if track is not None:
            track.look(gateway.sent)
        return float(summaries[-1]["seconds"])

    seconds = ctx.measure(case, one_run)
    timed = summaries[ctx.warmup :]
    size = int(timed[0]["request_bytes"])
    notes = (
        f"{requests:,} signed POST /v1/events per run, {concurrency} in flight from a second process on "
        f"loopback; request body {size:,} B; 202 = sealed to 4 recipients, fsync'd in the outbox and "
        "in the audit file"
    ) + (f"; {gateway.processes} gateway processes on the port" if gateway.processes > 1 else "")
    return [
        ctx.result(case, "requests/s", per_second(seconds, requests), notes=notes),
        ctx.result(case, "p50 ms", [s["p50_ms"] for s in timed], notes=notes),
        ctx.result(case, "p99 ms", [s["p99_ms"] for s in timed], notes=notes),
    ]


def _gateway_memory(ctx: BenchContext, setup: Setup, requests: int) -> list[Result]:
    """A gateway's RSS from start to ``requests`` accepted signed requests, sent 32 in flight in
    ``MEMORY_LOOKS`` runs of the load generator, the RSS read after each (once the outbox drained)."""
    gateway = Gateway(setup)
    track = RssTrack("gateway", requests, gateway.rss_bytes)
    track.started()
    try:
        chunk = -(-requests // MEMORY_LOOKS)
        while gateway.sent < requests:
            gateway.load(min(chunk, requests - gateway.sent), CONCURRENCY)
            track.look(gateway.sent)
            ctx.progress(f"memory: {gateway.sent:,} of {requests:,} requests accepted")
        track.finished()
        _no_lead_deferred(gateway.metric("lianfang_outbox_leads_deferred_total"), "the gateway")
    finally:
        gateway.stop()
    return track.results(
        ctx,
        started="once started and serving (VmRSS of python -m services.gateway)",
        after=(
            f"after accepting {requests:,} signed requests ({MEMORY_EVENTS_ENV}; distinct victims, "
            f"{CONCURRENCY} in flight), its outbox drained to Kafka"
        ),
    )


def _sdk(ctx: BenchContext, setup: Setup, events: int) -> list[Result]:
    client = setup.client("sdk")
    accepted: list[float] = []
    counter = [0]

    def one_run() -> float:
        first = counter[0]
        counter[0] += events
        start = time.perf_counter()
        for i in range(first, first + events):
            client.publish_lead(lead_event(i))
        accepted.append(time.perf_counter() - start)
        if not client.flush(timeout=DRAIN_DEADLINE_S):
            raise BenchError(
                f"the outbox did not drain within {DRAIN_DEADLINE_S:.0f} s: {client.drainer.last_error}"
            )
        return time.perf_counter() - start

    try:
        seconds = ctx.measure("SDK publish_lead", one_run)
        _no_lead_deferred(client.metrics.deferred._value.get(), "SDK publish_lead")
    finally:
        client.close()
    notes = (
        f"{events:,} publish_lead per run in one thread (validate, pseudonymize, seal to 4, outbox insert "
        "with fsync, audit line with fsync), then flush(): the background drainer's acks=all producer"
    )
    return [
        ctx.result("SDK publish_lead", "accepted/s", per_second(accepted[ctx.warmup :], events), notes=notes),
        ctx.result("SDK publish_lead", "in Kafka/s", per_second(seconds, events), notes=notes),
    ]


def _sdk_threads(ctx: BenchContext, setup: Setup, events: int) -> list[Result]:
    """``THREADS`` threads share one client: concurrent outbox and audit writes share their fsyncs."""
    client = setup.client("sdk-threads")
    counter = [0]

    def one_run() -> float:
        first = counter[0]
        counter[0] += events
        per_thread = events // THREADS

        def publish(start_at: int) -> None:
            for i in range(start_at, start_at + per_thread):
                client.publish_lead(lead_event(i))

        threads = [threading.Thread(target=publish, args=(first + t * per_thread,)) for t in range(THREADS)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - start

    try:
        commits_before = client.outbox.commits
        sampler = Sampler(("services/sdk/client.py:publish_lead",)).start() if SAMPLE else None
        seconds = ctx.measure(f"SDK publish_lead x{THREADS}", one_run)
        if sampler is not None:
            sampler.stop()
            _sampled_note(ctx, f"SDK publish_lead x{THREADS}, the publishers' threads", sampler.report())
        runs = ctx.runs + ctx.warmup
        per_commit = runs * (events // THREADS) * THREADS / max(1, client.outbox.commits - commits_before)
        if not client.flush(timeout=DRAIN_DEADLINE_S):
            raise BenchError(f"the outbox did not drain within {DRAIN_DEADLINE_S:.0f} s")
        _no_lead_deferred(client.metrics.deferred._value.get(), f"SDK publish_lead x{THREADS}")
    finally:
        client.close()
    notes = (
        f"{events:,} publish_lead per run from {THREADS} threads on one client (each call returns once its "
        f"outbox row and audit line are fsync'd; concurrent calls share commits: {per_commit:.1f} leads "
        "per outbox commit); not including the drain to Kafka"
    )
    return [
        ctx.result(
            f"SDK publish_lead x{THREADS}",
            "accepted/s",
            per_second(seconds, (events // THREADS) * THREADS),
            notes=notes,
        )
    ]


def _raw_sqlite(ctx: BenchContext, setup: Setup, events: int, size: int) -> list[Result]:
    """The durability baseline: ``THREADS`` threads inserting rows of the sealed size into one SQLite file
    (WAL, synchronous=FULL), one transaction and so one fsync per row."""
    from services.store import sqlite

    db = sqlite.connect(setup.tmp / "raw.sqlite", schema="CREATE TABLE IF NOT EXISTS r (v BLOB);")
    lock = threading.Lock()
    value = os.urandom(size)

    def one_run() -> float:
        def insert() -> None:
            for _ in range(events // THREADS):
                with sqlite.transaction(db, lock) as tx:
                    tx.execute("INSERT INTO r VALUES (?)", (value,))

        threads = [threading.Thread(target=insert) for _ in range(THREADS)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - start

    try:
        seconds = ctx.measure("raw SQLite insert", one_run)
    finally:
        db.close()
    notes = (
        f"{THREADS} threads, rows of {size:,} B, WAL + synchronous=FULL, one transaction (one fsync) per row"
    )
    return [
        ctx.result(
            "raw SQLite insert",
            "rows/s",
            per_second(seconds, (events // THREADS) * THREADS),
            baseline=True,
            notes=notes,
        )
    ]


def _inbox_topic(ctx: BenchContext, setup: Setup, events: int) -> str:
    """``READER``'s inbox under the setup's prefix, holding ``events`` sealed leads addressed to it (the
    router's copies, produced straight into it)."""
    from kafka import KafkaProducer

    from services.bus.cluster import TopicSpec, ensure_topics
    from services.kernel import topics

    topic = topics.TopicNames(setup.prefix).inbox(READER)
    ensure_topics(ctx.bootstrap, [TopicSpec(topic, INBOX_PARTITIONS, 1)])
    setup.topics.append(topic)
    sender = setup.holding_client("inbox-sender")  # its sealed records are produced into the inbox
    try:
        for i in range(events):
            sender.publish_lead(lead_event(1_000_000 + i))
        sealed = sender.outbox.pending(limit=events)
    finally:
        sender.close()
    producer = KafkaProducer(bootstrap_servers=ctx.bootstrap, client_id=CLIENT_ID, acks="all")
    try:
        for record in sealed:
            producer.send(topic, key=record.key, value=record.value)
        producer.flush(timeout=DRAIN_DEADLINE_S)
    finally:
        producer.close()
    return topic


def _sdk_inbox(ctx: BenchContext, setup: Setup, events: int) -> list[Result]:
    _inbox_topic(ctx, setup, events)
    counter = [0]

    def one_run() -> float:
        counter[0] += 1
        reader = setup.client(f"reader-{counter[0]}", READER, reader=f"bench{counter[0]}", start=False)
        try:
            reading = reader.inbox(max_records=events, timeout=30)
            next(reading)  # group joined, first fetch done
            start = time.perf_counter()
            read = 1 + sum(1 for _ in reading)
            took = time.perf_counter() - start
        finally:
            reader.close()
        if read != events:
            raise BenchError(f"SDK inbox: read {read} of {events} events")
        return took * events / (events - 1)  # the time for all at the rate of the last events - 1

    seconds = ctx.measure("SDK inbox, one reader", one_run)
    notes = (
        f"{events:,} sealed leads in {READER}'s inbox ({INBOX_PARTITIONS} partitions); Client.inbox(): verify, "
        "open, handed-out id (fsync), audit line (fsync), offsets committed together; a new group each run"
    )
    return [ctx.result("SDK inbox, one reader", "events/s", per_second(seconds, events), notes=notes)]


def _raw_consume(ctx: BenchContext, setup: Setup, events: int, *, commit_each: bool) -> list[Result]:
    from kafka import KafkaConsumer

    from services.kernel import topics

    topic = topics.TopicNames(setup.prefix).inbox(READER)
    case = "kafka-python consume, commit after each" if commit_each else "kafka-python consume"

    def one_run() -> float:
        consumer = KafkaConsumer(
            topic,
            bootstrap_servers=ctx.bootstrap,
            client_id=CLIENT_ID,
            group_id=ctx.unique("inbox-raw"),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
        )
        try:
            read, start = 0, 0.0
            deadline = time.monotonic() + DRAIN_DEADLINE_S
            while read < events and time.monotonic() < deadline:
                batch = consumer.poll(timeout_ms=500, max_records=1)  # as the reader polls
                for records in batch.values():
                    for _ in records:
                        read += 1
                        if read == 1:
                            start = time.perf_counter()
                        if commit_each:
                            consumer.commit()
            took = time.perf_counter() - start
            if not commit_each:
                consumer.commit()
        finally:
            consumer.close()
        if read != events:
            raise BenchError(f"{case}: read {read} of {events} records")
        return took * events / (events - 1)

    seconds = ctx.measure(case, one_run)
    notes = (
        "poll one record, commit() after it (what the SDK reader did before)"
        if commit_each
        else "poll one record at a time as the reader does, one commit at the end"
    ) + "; the same records, a new group each run, timed from the first record"
    return [ctx.result(case, "records/s", per_second(seconds, events), baseline=True, notes=notes)]


def _raw_kafka_python(ctx: BenchContext, topic: str, events: int, size: int) -> list[Result]:
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=ctx.bootstrap,
        client_id=CLIENT_ID,
        acks="all",
        enable_idempotence=True,
        linger_ms=LINGER_MS,
    )
    value = os.urandom(size)

    def one_run() -> float:
        start = time.perf_counter()
        for i in range(events):
            producer.send(topic, key=f"p1.{i:043d}".encode(), value=value)
        producer.flush(timeout=DRAIN_DEADLINE_S)
        return time.perf_counter() - start

    try:
        seconds = ctx.measure("kafka-python produce", one_run)
    finally:
        producer.close()
    notes = f"{events:,} values of {size:,} B, distinct keys, {PARTITIONS} partitions, acks=all, idempotent, linger_ms={LINGER_MS}"
    return [
        ctx.result(
            "kafka-python produce", "records/s", per_second(seconds, events), baseline=True, notes=notes
        )
    ]


def _raw_aiokafka(ctx: BenchContext, topic: str, events: int, size: int) -> list[Result]:
    from aiokafka import AIOKafkaProducer

    value = os.urandom(size)
    runner = asyncio.Runner()

    async def start() -> AIOKafkaProducer:
        producer = AIOKafkaProducer(
            bootstrap_servers=ctx.bootstrap,
            client_id=CLIENT_ID,
            acks="all",
            enable_idempotence=True,
            linger_ms=LINGER_MS,
        )
        await producer.start()
        return producer

    producer = runner.run(start())

    async def send_all() -> float:
        start = time.perf_counter()
        for i in range(events):
            await producer.send(topic, key=f"p1.{i:043d}".encode(), value=value)
        await producer.flush()
        return time.perf_counter() - start

    try:
        seconds = ctx.measure("aiokafka produce", lambda: runner.run(send_all()))
    finally:
        runner.run(producer.stop())
        runner.close()
    notes = f"{events:,} values of {size:,} B, distinct keys, {PARTITIONS} partitions, acks=all, idempotent, linger_ms={LINGER_MS}"
    return [
        ctx.result("aiokafka produce", "records/s", per_second(seconds, events), baseline=True, notes=notes)
    ]


def memory(ctx: BenchContext) -> list[Result]:
    """The memory case alone (``python -m tests.bench --memory -k adapters``): a gateway's RSS after
    ``LIANFANG_BENCH_MEMORY_EVENTS`` accepted requests (10,000 by default)."""
    setup = Setup(ctx)
    try:
        return _gateway_memory(ctx, setup, memory_events(ctx, MEMORY_REQUESTS_FULL, MEMORY_REQUESTS_QUICK))
    finally:
        setup.close()


def run(ctx: BenchContext) -> list[Result]:
    events = ctx.scale(EVENTS_FULL, EVENTS_QUICK)
    requests = ctx.scale(REQUESTS_FULL, REQUESTS_QUICK)
    setup = Setup(ctx)
    try:
        size = setup.sealed_size()
        ctx.note(
            f"lead.reported, domestic_violence in {TOWN} (4 recipients); request JSON ~{len(request_body(0)):,} B; "
            f"sealed record {size:,} B; {os.cpu_count()} CPUs shared by the broker, the gateway and the load"
        )
        raw_topic = ctx.create_topic("raw", partitions=PARTITIONS)
        results = _raw_kafka_python(ctx, raw_topic, events, size)
        results += _raw_aiokafka(ctx, raw_topic, events, size)
        heavy = dataclasses.replace(ctx, runs=min(ctx.runs, HEAVY_RUNS_CAP))
        if heavy.runs < ctx.runs:
            ctx.note(
                f"SDK and gateway cases: {heavy.runs} timed runs (capped from {ctx.runs}) to keep the run short"
            )
        results += _sdk(heavy, setup, events)
        results += _raw_sqlite(heavy, setup, events, size)
        results += _sdk_threads(heavy, setup, events)
        results += _sdk_inbox(heavy, setup, events)
        results += _raw_consume(heavy, setup, events, commit_each=True)
        results += _raw_consume(heavy, setup, events, commit_each=False)
        results += _gateway(heavy, setup, requests)
        return results
    finally:
        setup.close()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "load":
        sys.exit(load_main(sys.argv[2:]))
    print("usage: python -m tests.bench -k adapters   (or: python -m tests.bench.bench_adapters load ...)")
    sys.exit(2)
