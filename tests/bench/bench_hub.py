"""Events/s through one hub worker, and publish → alert latency at a steady offered load.

Everything runs on one fresh set of topics (``topics.apply`` under a new prefix) and a demo trust
domain issued now (fast KDF), with one router worker (``python -m services.router``) and hub workers
(``python -m services.hub``, no wall-clock ticks) as child processes, timed from outside.

- ``hub, 1 worker`` (events/s): N ``lead.reported`` (domestic violence, each about a different
  victim, no flag that raises an alert), published by police through the SDK before any hub runs;
  the router delivers their triage to ``inbox.hub``. Then a hub worker is started with an app id
  (consumer group, tables) of its own, and its ``/metrics`` is polled every ``POLL_S``: the clock
  starts when ``lianfang_hub_events_observed_total`` first shows an event (start-up, group join,
  table recovery and the first fetch left out) and stops when it shows all N. Rate = events observed
  in between / seconds. Each run starts a new hub on the same inbox (it reads it from the beginning,
  into empty tables); afterwards it must show no alert and no rejected record.
- ``publish → alert at coordinators`` (p50/p99 ms): with the router and the last hub running and
  caught up, police publish through an SDK ``Client`` leads that each raise a joint-meeting alert
  (``requests_joint_meeting``, a new victim per lead) at a steady offered rate; the publication time
  of a lead is when ``publish_lead`` returns (the record is in the SDK outbox), its arrival time when
  a coordinators ``Client.inbox()`` loop, in a process of its own as the coordinators' program would
  be (:mod:`tests.bench.alert_reader`), yields the alert about its victim (the alert's subject is the
  victim's pseudonym). The path: SDK outbox → events → router
  (verify, policy, transaction) → ``inbox.hub`` → hub (verify, open, rules, seal, send) → events →
  router → ``inbox.coordinators`` → SDK (verify, open).
- ``hub RSS after the memory run`` (MB; its baseline ``hub RSS, started``): the inbox of the
  throughput case is filled with a hub already running: hub 0 is started and joined on the empty inbox
  (its RSS then), the N leads are published, then the router is started and hub 0 drains the leads as
  they are routed; its RSS once it has observed all N, with the growth over the second half
  (:class:`~tests.bench.harness.RssTrack`). ``python -m tests.bench --memory -k hub`` runs this alone
  with ``LIANFANG_BENCH_MEMORY_EVENTS`` leads (10,000 by default).
- ``kafka-python produce → consume`` (baseline): the floor of that path, one hop: 1 KiB values sent
  at the same offered rate by an idempotent ``acks=all`` producer (``linger_ms=0``) to a 1-partition
  topic, read by a consumer in a thread of this process; latency from ``send()`` returning to
  the consumer's ``poll`` handing the record over.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import os
import re
import shutil
import statistics
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.freshness import TIMESTAMP_RECORD_KEY
from services import trust
from services.bus import cluster
from services.bus.cluster import DURABLE_PRODUCER
from services.kernel import envelope, freshness, topics
from services.kernel.keystore import KdfParams
from services.kernel.pseudonym import pseudonymize
from services.kernel.registry import Registry
from tests.bench.harness import (
    RESULTS_DIR,
    BenchContext,
    BenchError,
    Result,
    RssTrack,
    memory_events,
    wait_for_group,
)
from tests.workers import Worker, cpu_seconds, free_port, machine_busy_seconds

LEADS_FULL = 2_000
LEADS_QUICK = 1_000  # the decode-only baseline drains 300 within one 50 ms poll: too few to time
THROUGHPUT_RUNS_CAP = 2  # each run starts a faust worker: ~10 s of start-up apiece
PROFILE_TOP = 8  # functions named in the notes, by own time, from one more hub run under cProfile
PROFILE_PASSES = 30  # deeper calls than this under the record work are not attributed to it
RATE_FULL = 200  # offered leads/s in the latency case (and records/s in its baseline)
RATE_QUICK = 50
LOAD_SECONDS_FULL = 10
LOAD_SECONDS_QUICK = 6
PUBLISH_BATCH = 256  # leads sealed, then stored with one SDK outbox commit
MEMORY_LEADS_FULL = 10_000  # the memory case alone (--memory); make bench measures the LEADS_FULL run
MEMORY_LEADS_QUICK = 2_000
MEMORY_MIN_RATE = 50  # leads/s: the memory run's deadlines allow for a pipeline this slow
E2E_SECONDS_ENV = "LIANFANG_BENCH_E2E_SECONDS"  # the end-to-end load's length (60 for the target)
E2E_RATE_ENV = "LIANFANG_BENCH_E2E_RATE"  # its offered leads/s (the target's row reads the 200/s case)
PUBLISHERS = 8  # threads offering the end-to-end load
WARMUP_ALERTS = 3  # alerts raised and awaited before the latency window: the whole path is warm
# Then the end-to-end rate for this long, its alerts awaited, before the window: a fresh broker's JIT
# compiles the transactional paths in its first half minute.
WARMUP_SECONDS_FULL = 15
WARMUP_SECONDS_QUICK = 2
BASELINE_VALUE_BYTES = 1024
TOWN = "renhe"

POLL_S = 0.05
START_DEADLINE_S = 120.0  # process start, group join, table recovery, first fetch
DRAIN_DEADLINE_S = 120.0
ALERT_DEADLINE_S = 30.0  # after the last publication, for the alerts still on their way
STOP_TIMEOUT_S = 20.0
CLIENT_ID = "lianfang-bench"
STATEMENT_LIFETIME = dt.timedelta(hours=2)  # longer than any run
MS = 1000.0


# --------------------------------------------------------------------------- waiting on the workers


def _wait_for(condition: Callable[[], Any], timeout: float, what: str, workers: list[Worker]) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        for w in workers:
            w.check_alive()
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {w.what}:\n{w.tail()}" for w in workers)
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}\n{tails}")
        time.sleep(POLL_S)  # poll interval inside a deadline loop


# --------------------------------------------------------------------------- the bus


@dataclass
class Bus:
    """One run's topics (under a prefix), trust domain and working folder."""

    bootstrap: str
    prefix: str
    home: Path
    domain: trust.TrustDomain
    registry: Registry
    tmp: Path
    workers: list[Worker] = field(default_factory=list)
    clients: int = 0

    @property
    def names(self) -> topics.TopicNames:
        return topics.TopicNames(self.prefix)

    def client(self, participant: str, *, start: bool = True) -> Any:
        from services.sdk.client import Client

        self.clients += 1
        return Client(
            keystore=self.domain.keystore(participant),
            registry=self.registry,
            bootstrap=self.bootstrap,
            outbox_path=self.tmp / f"{participant}-{self.clients}.sqlite",
            topic_prefix=self.prefix,
            start=start,
        )

    def start(
        self, what: str, module: str, port: int, env: dict[str, str], args: list[str] | None = None
    ) -> Worker:
        log = self.tmp / f"{what.replace(' ', '-')}.log"
        env = {"LIANFANG_BOOTSTRAP": self.bootstrap, "LIANFANG_HOME": str(self.home), **env}
        worker = Worker(module, env, log, args=args or (), port=port, what=what)
        self.workers.append(worker)
        return worker

    def router(self) -> Worker:
        port = free_port()
        return self.start(
            "the router",
            "services.router",
            port,
            {
                "LIANFANG_ROUTER_TOPIC_PREFIX": self.prefix,
                "LIANFANG_ROUTER_GROUP_ID": f"{self.prefix}router",
                "LIANFANG_ROUTER_METRICS_PORT": str(port),
            },
        )

    def hub(self, run: int, *, module: str = "services.hub", profile: Path | None = None) -> Worker:
        """Hub worker ``run`` (its own app id, consumer group and tables); ``module`` another program
        configured the same way (the decode-only baseline); ``profile`` runs it under cProfile, which
        writes its statistics there when it stops."""
        port = free_port()
        what = f"hub {run}" if module == "services.hub" else f"{module} {run}"
        args = ["-o", str(profile), "-m", module] if profile is not None else []
        return self.start(
            what,
            "cProfile" if profile is not None else module,
            port,
            {
                "LIANFANG_HUB_TOPIC_PREFIX": self.prefix,
                "LIANFANG_HUB_APP_ID": f"{self.prefix}hub-{run}",
                "LIANFANG_HUB_DATA_DIR": str(self.tmp / f"hub-{run}"),
                "LIANFANG_HUB_TICK_INTERVAL_S": "0",
                "LIANFANG_HUB_METRICS_PORT": str(port),
            },
            args,
        )

    def stamp(self) -> None:
        """A timestamp statement valid for the whole run, as the timestamp service would publish: the
        router and the hub wait for a fresh one."""
        from kafka import KafkaProducer

        data = freshness.sign_statement(
            self.registry,
            dict(self.domain.timestamp_keystore().signing),
            now=dt.datetime.now(dt.UTC),
            valid_for=STATEMENT_LIFETIME,
        )
        producer = KafkaProducer(bootstrap_servers=self.bootstrap, client_id=CLIENT_ID, **DURABLE_PRODUCER)
        try:
            producer.send(self.names.registry, key=TIMESTAMP_RECORD_KEY, value=data).get(timeout=30)
        finally:
            producer.close(timeout=5)

    def delete_topics(self) -> None:
        """Best effort: every topic under the prefix (the hubs' changelogs included)."""
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        with contextlib.suppress(KafkaError, OSError):
            admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id=CLIENT_ID)
            try:
                mine = [t for t in admin.list_topics() if t.startswith(self.prefix)]
                if mine:
                    admin.delete_topics(mine)
            finally:
                admin.close()


def _lead(phone: str, *, joint_meeting: bool) -> dict[str, Any]:
    return {
        "category": "domestic_violence",
        "channel": "police_call",
        "town": TOWN,
        "victim": {"name": "周某某", "phone": phone, "is_minor": False},
        "minor": False,
        "risk_indicators": [],
        "narrative": "家庭纠纷，邻居报警。",
        "requests_joint_meeting": joint_meeting,
    }


# --------------------------------------------------------------------------- throughput


@dataclass(frozen=True, slots=True)
class Drain:
    events: int
    seconds: float
    cpu_seconds: float


def _publish(ctx: BenchContext, bus: Bus, n: int) -> None:
    """N leads (distinct victims, no alert flag) sealed by police a batch at a time and stored with one
    outbox commit a batch (as ``lianfang import`` does), drained to the events topic meanwhile; returns
    once Kafka has them all."""
    police = bus.client("police")
    try:
        ctx.progress(f"publishing {n:,} leads …")
        start = time.perf_counter()
        for first in range(0, n, PUBLISH_BATCH):
            batch = [
                police.seal_lead(_lead(f"135{i:08d}", joint_meeting=False), event_id=envelope.new_event_id())
                for i in range(first, min(n, first + PUBLISH_BATCH))
            ]
            if not all(police.put_sealed(batch)):
                raise BenchError("the SDK outbox refused a lead as a conflict")
        ctx.progress(f"sealed {n:,} leads into the SDK outbox in {time.perf_counter() - start:.1f} s")
        if not police.flush(DRAIN_DEADLINE_S + n / MEMORY_MIN_RATE):
            raise BenchError(f"the SDK outbox did not drain: {police.drainer.last_error}")
    finally:
        police.close()


def _prefill(ctx: BenchContext, bus: Bus, n: int) -> tuple[Worker, list[Result]]:
    """The hub's inbox filled with N routed leads, and the hub's memory case on the way: hub 0 started
    and joined on the empty inbox (its RSS then), N leads published by police, then the router
    started, which the hub follows. Returns the router once it has routed them all and hub 0 (stopped
    then) has observed them, and hub 0's RSS figures."""
    hub = bus.hub(0)
    track = RssTrack("hub", n, hub.rss_bytes)
    wait_for_group(bus.bootstrap, f"{bus.prefix}hub-0", 1, [hub], START_DEADLINE_S)
    track.started()
    _publish(ctx, bus, n)
    router = bus.router()
    ctx.progress(f"memory: hub 0 drains the {n:,} leads as the router routes them …")
    deadline = time.monotonic() + START_DEADLINE_S + DRAIN_DEADLINE_S + n / MEMORY_MIN_RATE
    while (observed := hub.total("lianfang_hub_events_observed_total") or 0) < n:
        track.look(observed)
        for worker in (hub, router):
            worker.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(
                f"hub 0 observed {observed:.0f} of {n:,} leads in time:\n{hub.tail()}\n--- router:\n{router.tail()}"
            )
        time.sleep(10 * POLL_S)  # poll interval inside a deadline loop
    track.finished()
    alerts = hub.total("lianfang_hub_alerts_total") or 0
    rejected = hub.total("lianfang_hub_events_rejected_total") or 0
    hub.stop(STOP_TIMEOUT_S)
    if alerts or rejected or observed != n:
        raise BenchError(
            f"hub 0: {observed:.0f} observed of {n:,}, {alerts:.0f} alerts, {rejected:.0f} rejected"
        )
    routed = router.total("lianfang_router_events_routed_total") or 0
    dead = router.total("lianfang_router_deadletters_total") or 0
    if dead or routed != n:
        raise BenchError(f"the router routed {routed:.0f} and dead-lettered {dead:.0f} of the {n} leads")
    return router, track.results(
        ctx,
        started="once started and joined (VmRSS of python -m services.hub, its inbox still empty)",
        after=(
            f"after observing {n:,} routed leads (distinct victims: a victims-table entry each; no alert), "
            "drained as the router routed them"
        ),
    )


def _drain(worker: Worker, counter: str, n: int, router: Worker) -> Drain:
    """Time ``worker``, just started on the filled inbox, from its first counted record to all N."""
    first: tuple[float, float, float] | None = None
    deadline = time.monotonic() + START_DEADLINE_S
    while True:
        seen = worker.total(counter)
        at = time.perf_counter()
        if first is None and seen:
            first = (seen, at, worker.cpu_seconds())
            deadline = time.monotonic() + DRAIN_DEADLINE_S
        if seen is not None and seen >= n:
            break
        worker.check_alive()
        router.check_alive()
        if time.monotonic() > deadline:
            stage = "its first record" if first is None else f"all {n} records ({seen:.0f} counted)"
            raise BenchError(f"{worker.what} did not reach {stage} in time:\n{worker.tail()}")
        time.sleep(POLL_S)  # poll interval inside a deadline loop
    cpu = worker.cpu_seconds()
    if first is None or first[0] >= n:
        raise BenchError(f"{worker.what} counted all {n} records before the first poll saw one")
    if seen != n:
        raise BenchError(f"{worker.what}: {seen:.0f} counted of {n}")
    return Drain(int(n - first[0]), at - first[1], cpu - first[2])


def _hub_run(bus: Bus, run: int, n: int, router: Worker, profile: Path | None = None) -> tuple[Worker, Drain]:
    """Start hub ``run`` on the filled inbox; time it from its first observed event to all N."""
    hub = bus.hub(run, profile=profile)
    drain = _drain(hub, "lianfang_hub_events_observed_total", n, router)
    alerts = hub.total("lianfang_hub_alerts_total") or 0
    rejected = hub.total("lianfang_hub_events_rejected_total") or 0
    if alerts or rejected:
        raise BenchError(f"{hub.what}: {alerts:.0f} alerts, {rejected:.0f} rejected")
    return hub, drain


def _decode_run(bus: Bus, run: int, n: int, router: Worker) -> Drain:
    """The baseline: a decode-only faust agent (:mod:`tests.bench.faust_decode`) on the same inbox."""
    decoder = bus.hub(run, module="tests.bench.faust_decode")
    try:
        drain = _drain(decoder, "lianfang_bench_decoded_total", n, router)
        malformed = decoder.metric("lianfang_bench_decoded_total", result="malformed") or 0
        if malformed:
            raise BenchError(f"{decoder.what}: {malformed:.0f} of {n} records did not parse")
        return drain
    finally:
        decoder.stop(STOP_TIMEOUT_S)


IDLE = ("epoll.poll", "select.select", "lock.acquire")
"""Functions where the process waits for something rather than works (left out of the top costs)."""


RECORD_WORK = ("on_inbox", "on_inbox_batch")
"""The hub's per-record entry points (:class:`~services.hub.worker.RecordWorker`): the profile's root."""


def top_costs(stats_file: Path, count: int = PROFILE_TOP) -> tuple[float, list[tuple[str, float]]]:
    """From a cProfile file of a hub: the share of the process's own time (waiting left out) spent
    under the record work, and the functions with the most own time under it, as shares of the record
    work's time. A function called both under it and elsewhere (JSON, say) counts in the proportion
    of its time its callers under the record work account for: an estimate, as cProfile keeps one
    level of callers."""
    import pstats

    stats: dict[Any, Any] = pstats.Stats(str(stats_file)).stats  # type: ignore[attr-defined]

    def label(func: tuple[str, int, str]) -> str:
        path, line, name = func
        if path != "~":
            return f"{Path(path).name}:{line}({name})"
        method = re.fullmatch(r"<method '(\w+)' of '(?:[\w.]+\.)?(\w+)' objects>", name)
        builtin = re.fullmatch(r"<built-in method ([\w.]+)>", name)
        return f"{method[2]}.{method[1]}" if method else builtin[1] if builtin else name

    roots = {f for f in stats if f[0].endswith("worker.py") and f[2] in RECORD_WORK}
    under = dict.fromkeys(roots, 1.0)  # per function: the share of its time spent under the roots
    for _ in range(PROFILE_PASSES):  # shares flow down one level of callers a pass
        for func, (_cc, _nc, _tt, cumtime, callers) in stats.items():
            if func not in roots and cumtime > 0:
                from_under = sum(under.get(c, 0.0) * edge[3] for c, edge in callers.items())
                under[func] = min(1.0, from_under / cumtime)
    working = {f: v[2] for f, v in stats.items() if not any(idle in label(f) for idle in IDLE)}
    record_work = max((stats[f][3] for f in roots), default=0.0)
    share = record_work / (sum(working.values()) or 1.0)
    own: dict[str, float] = {}
    for func, tottime in working.items():
        if under.get(func):
            own[label(func)] = own.get(label(func), 0.0) + tottime * under[func]
    ranked = sorted(own.items(), key=lambda kv: kv[1], reverse=True)[:count]
    return share, [(name, seconds / (record_work or 1.0)) for name, seconds in ranked]


# --------------------------------------------------------------------------- latency


def _paced(n: int, rate: float, send: Callable[[int], None]) -> tuple[list[float], float]:
    """Call ``send(i)`` at ``rate`` per second (at once when behind); return when each call returned,
    and the achieved rate (n over the time from the first scheduled send to the last return)."""
    done: list[float] = []
    t0 = time.perf_counter()
    for i in range(n):
        wait = t0 + i / rate - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        send(i)
        done.append(time.perf_counter())
    return done, n / (done[-1] - t0)


def _offered(
    n: int, rate: float, threads: int, send: Callable[[int], None]
) -> tuple[list[float], float, float]:
    """Open loop: call ``send(i)`` at ``t0 + i / rate`` from ``threads`` threads (thread j sends every
    j-th), whatever the calls before it took (a thread that falls behind sends at once); return when
    each call returned (wall clock, to line up with Kafka's timestamps), the achieved rate (n over
    the time from the first scheduled send to the last return) and how far the last send started
    behind its schedule (s)."""
    done = [0.0] * n
    behind = [0.0] * threads
    errors: list[BaseException] = []
    t0 = time.perf_counter() + 0.05

    def sender(j: int) -> None:
        try:
            for i in range(j, n, threads):
                wait = t0 + i / rate - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)  # the schedule of an open-loop load, not a wait for a condition
                else:
                    behind[j] = -wait
                send(i)
                done[i] = time.time()
        except BaseException as e:  # reported by the caller
            errors.append(e)

    workers = [
        threading.Thread(target=sender, args=(j,), name=f"bench-publisher-{j}") for j in range(threads)
    ]
    wall0 = time.time() + (t0 - time.perf_counter())
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    if errors:
        raise BenchError(f"a publisher failed: {errors[0]!r}") from errors[0]
    return done, n / (max(done) - wall0), max(behind)


def _percentiles(latencies_s: list[float]) -> tuple[float, float]:
    if len(latencies_s) < 2:
        raise BenchError(f"only {len(latencies_s)} latency samples")
    cuts = statistics.quantiles(latencies_s, n=100, method="inclusive")
    return cuts[49] * MS, cuts[98] * MS


class AlertReader:
    """The coordinators' SDK inbox, read in a process of its own (:mod:`tests.bench.alert_reader`), as
    the coordinators' program would: when (wall clock) each victim's first alert was handed out."""

    def __init__(self, bus: Bus) -> None:
        bus.clients += 1
        self.out = bus.tmp / "alerts-arrived.txt"
        self.out.touch()
        self.worker = bus.start(
            "the coordinators' inbox reader",
            "tests.bench.alert_reader",
            free_port(),  # unused: the reader serves no /metrics
            {},
            [str(self.out), bus.prefix, str(bus.tmp / f"coordinators-{bus.clients}.sqlite")],
        )
        self._arrived: dict[str, float] = {}
        self._read = 0  # bytes of ``out`` parsed so far

    @property
    def arrived(self) -> dict[str, float]:
        """Each victim's first alert's arrival so far (the lines the reader wrote whole)."""
        with self.out.open("rb") as f:
            f.seek(self._read)
            chunk = f.read()
        whole = chunk[: chunk.rfind(b"\n") + 1]
        self._read += len(whole)
        for line in whole.decode().splitlines():
            subject, at = line.split()
            self._arrived.setdefault(subject, float(at))
        return self._arrived

    def check(self) -> None:
        self.worker.check_alive()

    def wait_for(self, subjects: list[str], timeout: float, workers: list[Worker]) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            arrived = self.arrived  # the file read once a poll, not once a subject
            if all(s in arrived for s in subjects):
                break
            self.check()
            for w in workers:
                w.check_alive()
            time.sleep(POLL_S)  # poll interval inside a deadline loop

    def stop(self) -> None:
        self.worker.stop(STOP_TIMEOUT_S)


def _header(headers: Any, name: str) -> bytes | None:
    return next((v for k, v in headers or () if k == name), None)


def _iso(raw: bytes | None) -> float | None:
    return None if raw is None else dt.datetime.fromisoformat(raw.decode()).timestamp()


@dataclass
class Stamps:
    """The timestamps one lead and its alert already carry on their way, wall clock in seconds."""

    lead_appended: float | None = None  # the lead's events record, LogAppendTime (router's header)
    lead_routed: float | None = None  # its inbox.hub copy's timestamp: the router's send
    alert_time: float | None = None  # the alert's signed time: when the hub sealed it
    alert_appended: float | None = None  # the alert's events record, LogAppendTime
    alert_routed: float | None = None  # its inbox.coordinators copy's timestamp: the router's send


class HopReader:
    """Plain consumers (read_committed) of the hub's and the coordinators' inboxes from their ends when
    made: per victim, the :class:`Stamps` of its first lead and first alert, from the Kafka timestamps
    and the headers the router derives from the verified header (nothing is opened). It reads only in
    :meth:`read_to_end`, after the load: the records keep their timestamps, and its CPU does not
    compete with the pipeline's while the latency is measured."""

    def __init__(self, bootstrap: str, names: topics.TopicNames) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.hub_topic, self.coordinators_topic = names.inbox("hub"), names.inbox("coordinators")
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            client_id=CLIENT_ID,
            enable_auto_commit=False,
            isolation_level="read_committed",
        )
        self.parts = [
            TopicPartition(topic, p)
            for topic in (self.hub_topic, self.coordinators_topic)
            for p in sorted(self.consumer.partitions_for_topic(topic) or ())
        ]
        self.consumer.assign(self.parts)
        self.consumer.seek_to_end(*self.parts)
        for tp in self.parts:
            self.consumer.position(tp)
        self.stamps: dict[str, Stamps] = {}

    def read_to_end(self, deadline_s: float) -> None:
        """Read every record appended since this reader was made, up to the inboxes' ends now."""
        ends = self.consumer.end_offsets(self.parts)
        deadline = time.monotonic() + deadline_s
        while any(self.consumer.position(tp) < ends[tp] for tp in self.parts):
            if time.monotonic() > deadline:
                raise BenchError(
                    f"the per-hop reader did not reach the inboxes' ends within {deadline_s:.0f} s"
                )
            for records in self.consumer.poll(timeout_ms=100).values():
                for r in records:
                    self._take(r)

    def close(self) -> None:
        self.consumer.close()

    def _take(self, r: Any) -> None:
        subject = (_header(r.headers, "ce_subject") or b"").decode()
        kind = _header(r.headers, "ce_type")
        stamps = self.stamps.setdefault(subject, Stamps())
        accepted = _iso(_header(r.headers, envelope.ACCEPTED_AT_HEADER))
        if r.topic == self.hub_topic and kind == b"lead.reported" and stamps.lead_routed is None:
            stamps.lead_appended, stamps.lead_routed = accepted, r.timestamp / MS
        elif (
            r.topic == self.coordinators_topic
            and kind == b"joint_meeting.alert"
            and stamps.alert_routed is None
        ):
            stamps.alert_time = _iso(_header(r.headers, "ce_time"))
            stamps.alert_appended, stamps.alert_routed = accepted, r.timestamp / MS


HOPS = (
    (
        "outbox → events",
        "publish_lead returned (the lead in the SDK outbox) → the lead appended to events: outbox wait and produce",
    ),
    ("route", "→ the router's send of its inbox.hub copy: consume, verify, policy"),
    (
        "hub",
        "→ the alert's signed time: the router's commit, the hub's fetch and batch wait, verify, open, rules",
    ),
    ("alert → events", "→ the alert appended to events: the hub's produce"),
    ("alert route", "→ the router's send of its inbox.coordinators copy"),
    ("read", "→ the coordinators' SDK inbox yields it: the router's commit, fetch, verify, open"),
)


def _hops(published: float, stamps: Stamps | None, arrived: float) -> list[float] | None:
    if stamps is None:
        return None
    points = [
        published,
        stamps.lead_appended,
        stamps.lead_routed,
        stamps.alert_time,
        stamps.alert_appended,
        stamps.alert_routed,
        arrived,
    ]
    if any(p is None for p in points):
        return None
    at = [p for p in points if p is not None]
    return [b - a for a, b in itertools.pairwise(at)]


@dataclass(frozen=True, slots=True)
class Latency:
    sent: int
    received: int
    offered: float  # achieved offered rate, per second
    delivered: float  # received per second, from the first publication to the last arrival
    p50_ms: float
    p99_ms: float
    max_ms: float
    behind_s: float = 0.0  # how far the last publication started behind its schedule
    hops: tuple[tuple[str, float, float], ...] = ()  # (hop, p50 ms, p99 ms)
    hops_measured: int = 0
    cpu: CpuBudget | None = None
    hub_before: dict[str, float] = field(default_factory=dict)  # the hub's /metrics as the window opened
    hub_after: dict[str, float] = field(default_factory=dict)  # and once its last alert was read
    warmup_missing: int = 0  # alerts of the warm-up load that had not arrived when the window opened
    router_before: dict[str, float] = field(default_factory=dict)  # the router's /metrics likewise
    router_after: dict[str, float] = field(default_factory=dict)


TRANSACTIONS = "lianfang_router_transaction_records"
"""The router's histogram of records a committed transaction: its count and sum over the load."""


def _grew(before: dict[str, float], after: dict[str, float], series: str) -> float:
    """How much a series of /metrics grew between two scrapes (0 when the second lacks it)."""
    return after.get(series, 0.0) - before.get(series, 0.0)


@dataclass(frozen=True, slots=True)
class CpuBudget:
    """The CPU the pipeline's processes used over the load (from the first publication to the last alert
    read), in ms of CPU a lead, and how busy the machine's CPUs were."""

    per_lead_ms: tuple[tuple[str, float], ...]  # (process, ms of CPU a lead); the rest of the machine last
    busy: float  # share of the machine's CPUs busy over the window, 0 – 1
    cpus: int


class CpuWindow:
    """CPU time of named processes, and of the whole machine, between :meth:`start` and :meth:`budget`
    (``machine``: the busy CPU time of all CPUs so far, ``cpus`` of them; ``clock`` in seconds)."""

    def __init__(
        self,
        meters: Sequence[tuple[str, Callable[[], float]]],
        *,
        machine: Callable[[], float] = machine_busy_seconds,
        clock: Callable[[], float] = time.monotonic,
        cpus: int | None = None,
    ) -> None:
        self.meters, self.machine, self.clock = meters, machine, clock
        self.cpus = cpus or os.cpu_count() or 1
        self.started: list[float] = []
        self.busy = self.at = 0.0

    def start(self) -> None:
        self.started = [meter() for _, meter in self.meters]
        self.busy, self.at = self.machine(), self.clock()

    def budget(self, leads: int) -> CpuBudget:
        """Each process's CPU a lead over the window, then the rest of the machine's busy time a lead."""
        used = [meter() - before for (_, meter), before in zip(self.meters, self.started, strict=True)]
        busy, seconds = self.machine() - self.busy, self.clock() - self.at
        rows = [(name, MS * u / leads) for (name, _), u in zip(self.meters, used, strict=True)]
        rows.append(
            ("the rest of the machine (the Kafka broker, ...)", MS * max(0.0, busy - sum(used)) / leads)
        )
        return CpuBudget(tuple(rows), busy / (seconds * self.cpus), self.cpus)


def _hub_latency(
    bus: Bus,
    reader: AlertReader,
    workers: list[Worker],
    rate: float,
    seconds: float,
    threads: int,
    warmup_s: float,
) -> Latency:
    police = bus.client("police")
    hops: HopReader | None = None
    try:
        key = police.pseudonym_key
        warm = [f"1360000{i:04d}" for i in range(WARMUP_ALERTS)]
        for phone in warm:
            police.publish_lead(_lead(phone, joint_meeting=True))
        reader.wait_for([pseudonymize(key, phone=p) for p in warm], START_DEADLINE_S, workers)
        if not all(pseudonymize(key, phone=p) in reader.arrived for p in warm):
            tails = "\n".join(f"--- {w.what}:\n{w.tail()}" for w in workers)
            raise BenchError(f"the warm-up alerts did not reach the coordinators\n{tails}")
        # The same load for a while first, its alerts awaited: what the window measures is the pipeline
        # at that rate, not a cold broker's compiler (0.24 of a CPU over the first 20 s here).
        warm_n = round(rate * warmup_s)  # new victims of their own (the throughput case's are 135…)
        warm_phones = [f"134{i:08d}" for i in range(warm_n)]
        _offered(
            warm_n, rate, threads, lambda i: police.publish_lead(_lead(warm_phones[i], joint_meeting=True))
        )
        warm_subjects = [pseudonymize(key, phone=p) for p in warm_phones]
        reader.wait_for(warm_subjects, ALERT_DEADLINE_S, workers)
        arrived_warm = reader.arrived
        warmup_missing = sum(1 for s in warm_subjects if s not in arrived_warm)
        hops = HopReader(bus.bootstrap, bus.names)
        router, hub = workers
        window = CpuWindow(
            [
                ("hub", hub.cpu_seconds),
                ("router (a lead and its alert)", router.cpu_seconds),
                ("coordinators' reader", reader.worker.cpu_seconds),
                ("publishers' process (SDK, its drainer)", lambda: cpu_seconds(os.getpid())),
            ]
        )

        n = round(rate * seconds)
        phones = [f"137{i:08d}" for i in range(n)]
        subjects = [pseudonymize(key, phone=p) for p in phones]
        hub_before = hub.metrics() or {}
        router_before = router.metrics() or {}
        window.start()
        done, offered, behind = _offered(
            n, rate, threads, lambda i: police.publish_lead(_lead(phones[i], joint_meeting=True))
        )
        reader.wait_for(subjects, ALERT_DEADLINE_S, workers)
        cpu = window.budget(n)
        hub_after = hub.metrics() or {}
        router_after = router.metrics() or {}
        hops.read_to_end(DRAIN_DEADLINE_S)
    finally:
        if hops is not None:
            hops.close()
        police.close()
    arrived = dict(reader.arrived)
    latencies = [arrived[s] - t for s, t in zip(subjects, done, strict=True) if s in arrived]
    p50, p99 = _percentiles(latencies)
    span = max(arrived[s] for s in subjects if s in arrived) - (min(done) - 1 / offered)
    per_hop = [
        h
        for s, t in zip(subjects, done, strict=True)
        if s in arrived and (h := _hops(t, hops.stamps.get(s) if hops else None, arrived[s])) is not None
    ]
    hop_cuts: list[tuple[str, float, float]] = []
    if len(per_hop) >= 2:
        for i, (name, _) in enumerate(HOPS):
            hop_p50, hop_p99 = _percentiles([h[i] for h in per_hop])
            hop_cuts.append((name, hop_p50, hop_p99))
    return Latency(
        n,
        len(latencies),
        offered,
        len(latencies) / span,
        p50,
        p99,
        max(latencies) * MS,
        behind,
        tuple(hop_cuts),
        len(per_hop),
        cpu,
        hub_before,
        hub_after,
        warmup_missing,
        router_before,
        router_after,
    )


def _raw_latency(ctx: BenchContext, rate: float, seconds: float) -> Latency:
    """kafka-python produce → consume round trips of 1 KiB values at ``rate``, one partition."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    topic = ctx.create_topic("roundtrip")
    tp = TopicPartition(topic, 0)
    consumer = KafkaConsumer(bootstrap_servers=ctx.bootstrap, client_id=CLIENT_ID, enable_auto_commit=False)
    producer = KafkaProducer(
        bootstrap_servers=ctx.bootstrap, client_id=CLIENT_ID, linger_ms=0, **DURABLE_PRODUCER
    )
    arrived: dict[int, float] = {}
    halt = threading.Event()
    try:
        consumer.assign([tp])
        consumer.seek_to_end(tp)
        consumer.position(tp)

        def consume() -> None:
            while not halt.is_set():
                for records in consumer.poll(timeout_ms=100).values():
                    at = time.perf_counter()
                    for r in records:
                        arrived.setdefault(struct.unpack_from(">q", r.value)[0], at)

        reader = threading.Thread(target=consume, name="bench-raw-consumer", daemon=True)
        reader.start()
        pad = b"x" * (BASELINE_VALUE_BYTES - 8)

        def send(i: int) -> None:
            producer.send(topic, struct.pack(">q", i) + pad)

        _paced(WARMUP_ALERTS * 10, rate, lambda i: send(-1 - i))  # connect, first fetches
        producer.flush(30)
        n = round(rate * seconds)
        done, offered = _paced(n, rate, send)
        producer.flush(30)
        deadline = time.monotonic() + ALERT_DEADLINE_S
        while sum(1 for i in range(n) if i in arrived) < n and time.monotonic() < deadline:
            time.sleep(POLL_S)  # poll interval inside a deadline loop
        halt.set()
        reader.join(5)
    finally:
        halt.set()
        producer.close(timeout=5)
        consumer.close()
    latencies = [arrived[i] - t for i, t in enumerate(done) if i in arrived]
    p50, p99 = _percentiles(latencies)
    span = max(arrived[i] for i in range(n) if i in arrived) - (done[0] - 1 / offered)
    return Latency(n, len(latencies), offered, len(latencies) / span, p50, p99, max(latencies) * MS)


def _end_to_end(
    ctx: BenchContext,
    bus: Bus,
    reader: AlertReader,
    workers: list[Worker],
    rate: float,
    seconds: float,
    raw: Latency,
) -> list[Result]:
    """The publish → alert case, with its per-hop breakdown; ``workers``: the router, then the hub."""
    results: list[Result] = []
    warmup_s = ctx.scale(WARMUP_SECONDS_FULL, WARMUP_SECONDS_QUICK)
    ctx.progress(
        f"end to end: {rate:.0f} alert-raising leads/s for {warmup_s} s of warm-up, then {seconds:.0f} s "
        f"measured, from {PUBLISHERS} threads …"
    )
    hub_lat = _hub_latency(bus, reader, workers, rate, seconds, PUBLISHERS, warmup_s)
    before, after = hub_lat.hub_before, hub_lat.hub_after

    case = f"publish → alert at coordinators, {rate:.0f} leads/s"
    notes = (
        f"police SDK publish_lead (requests_joint_meeting, a new victim each), open loop from {PUBLISHERS} "
        f"threads sharing one Client, {rate:.0f}/s offered for {seconds:.0f} s ({E2E_SECONDS_ENV}), achieved "
        f"{hub_lat.offered:.0f}/s, the last send {hub_lat.behind_s * MS:.0f} ms behind schedule; "
        f"{hub_lat.received}/{hub_lat.sent} alerts received within {ALERT_DEADLINE_S:.0f} s; max "
        f"{hub_lat.max_ms:.0f} ms; from publish_lead returning to the coordinators' Client.inbox() yielding "
        f"the alert (in a process of its own); one window, after {WARMUP_ALERTS} warm-up alerts and {warmup_s} s "
        "of the same load, its alerts awaited"
    )
    results.append(ctx.result(case, "p50 ms", [hub_lat.p50_ms], notes=notes))
    results.append(ctx.result(case, "p99 ms", [hub_lat.p99_ms], notes=notes))
    results.append(
        ctx.result(case, "% alerts received", [100 * hub_lat.received / hub_lat.sent], notes=notes)
    )
    hop_notes = (
        f"per hop, over the {hub_lat.hops_measured} alerts whose every timestamp was seen (plain "
        "read_committed consumers of inbox.hub and inbox.coordinators): "
        + "; ".join(f"{name}: {what}" for name, what in HOPS)
    )
    for name, hop_p50, hop_p99 in hub_lat.hops:
        results.append(ctx.result(f"hop: {name}", "p50 ms", [hop_p50]))
        results.append(ctx.result(f"hop: {name}", "p99 ms", [hop_p99]))
    if hub_lat.hops:
        ctx.note(
            "publish → alert per hop, p50/p99 ms: "
            + ", ".join(f"{name} {p50:.0f}/{p99:.0f}" for name, p50, p99 in hub_lat.hops)
        )
        ctx.note(hop_notes)
    ctx.note(
        f"latency / raw round trip: p50 {hub_lat.p50_ms / raw.p50_ms:.0f}×, p99 {hub_lat.p99_ms / raw.p99_ms:.0f}× "
        "(the hub's path is 3 Kafka hops, 2 of them through the router's transactions)"
    )
    alerts = _grew(before, after, "lianfang_hub_event_to_alert_seconds_count")
    if alerts:
        mean = _grew(before, after, "lianfang_hub_event_to_alert_seconds_sum") / alerts * MS
        ctx.note(
            f"the hub's own histogram over the window: {alerts:.0f} alerts, mean {mean:.0f} ms from the "
            "lead's time (set in publish) to the alert acknowledged on the events topic"
        )
    ctx.note(
        f"alerts reached the coordinators at {hub_lat.delivered:.0f}/s on average (first publication to "
        "last arrival)"
    )
    if hub_lat.cpu is not None:
        budget = hub_lat.cpu
        per_lead = sum(ms for _, ms in budget.per_lead_ms)
        ctx.note(
            f"CPU a lead over the load (first publication to last alert read), {per_lead:.1f} ms in all: "
            + ", ".join(f"{name} {ms:.2f}" for name, ms in budget.per_lead_ms)
            + f"; the machine's {budget.cpus} CPUs {100 * budget.busy:.0f} % busy (a process's fixed costs, its "
            "polls and heartbeats, weigh more a lead at lower rates)"
        )
    transactions = _grew(hub_lat.router_before, hub_lat.router_after, TRANSACTIONS + "_count")
    if transactions:
        records = _grew(hub_lat.router_before, hub_lat.router_after, TRANSACTIONS + "_sum")
        ctx.note(
            f"the router committed {transactions:.0f} transactions over the load, {records / transactions:.1f} "
            f"records each (a lead or an alert of the events topic; {TRANSACTIONS})"
        )
    if hub_lat.warmup_missing:
        ctx.note(
            f"{hub_lat.warmup_missing} alerts of the {warmup_s} s warm-up load had not arrived "
            f"{ALERT_DEADLINE_S:.0f} s after its last publication when the window opened"
        )
    if hub_lat.received < hub_lat.sent:
        ctx.note(
            f"{hub_lat.sent - hub_lat.received} alerts had not arrived {ALERT_DEADLINE_S:.0f} s after the "
            "last publication: p50/p99 are over the alerts received only (censored, so optimistic)"
        )
    if hub_lat.offered < 0.95 * rate:
        ctx.note(f"the offered load fell short: {hub_lat.offered:.0f} leads/s achieved of {rate:.0f}/s asked")
    return results


# --------------------------------------------------------------------------- the benchmark


@contextlib.contextmanager
def _bus(ctx: BenchContext) -> Iterator[Bus]:
    """A fresh bus: a demo trust domain, the topics under a new prefix and a timestamp statement; its
    workers stopped, its topics deleted and its folder removed at the end."""
    bootstrap = ctx.bootstrap
    tmp = Path(tempfile.mkdtemp(prefix="lianfang-bench-hub-"))
    now = dt.datetime.now(dt.UTC)
    # An older kind of domain (a pseudonym key sealed to each participant): the SDK derives pseudonyms
    # itself, so no pseudonymizer service is needed (its round trip precedes publish_lead's return).
    domain = trust.init_domain(tmp / "home", now=now, kdf=KdfParams.for_tests(), pseudonymizer_url=None)
    registry = domain.registry(now)
    bus = Bus(bootstrap, ctx.unique("run") + "-", tmp / "home", domain, registry, tmp)
    try:
        ctx.progress(f"creating the topics under {bus.prefix} …")
        cluster.apply_topics(bootstrap, registry.participant_ids(), prefix=bus.prefix)
        bus.stamp()
        yield bus
    finally:
        for worker in reversed(bus.workers):
            worker.stop(STOP_TIMEOUT_S)
        bus.delete_topics()
        shutil.rmtree(tmp, ignore_errors=True)


def memory(ctx: BenchContext) -> list[Result]:
    """The memory case alone (``python -m tests.bench --memory -k hub``): :func:`_prefill` with
    ``LIANFANG_BENCH_MEMORY_EVENTS`` leads (10,000 by default)."""
    n = memory_events(ctx, MEMORY_LEADS_FULL, MEMORY_LEADS_QUICK)
    with _bus(ctx) as bus:
        _, results = _prefill(ctx, bus, n)
        return results


def run(ctx: BenchContext) -> list[Result]:
    n = ctx.scale(LEADS_FULL, LEADS_QUICK)
    runs = min(ctx.runs, ctx.scale(THROUGHPUT_RUNS_CAP, 1))
    rate = float(os.environ.get(E2E_RATE_ENV) or ctx.scale(RATE_FULL, RATE_QUICK))
    seconds = float(os.environ.get(E2E_SECONDS_ENV) or ctx.scale(LOAD_SECONDS_FULL, LOAD_SECONDS_QUICK))
    with _bus(ctx) as bus:
        return _run(ctx, bus, n, runs, rate, seconds)


def _run(ctx: BenchContext, bus: Bus, n: int, runs: int, rate: float, seconds: float) -> list[Result]:
    reader: AlertReader | None = None
    results: list[Result] = []
    try:
        reader = AlertReader(bus)
        router, memory_results = _prefill(ctx, bus, n)

        drains: list[Drain] = []
        decodes: list[Drain] = []
        hub: Worker | None = None
        for i in range(1, runs + 1):
            if hub is not None:
                hub.stop(STOP_TIMEOUT_S)
            ctx.progress(f"run {i}/{runs}: a decode-only faust agent on the {n:,} leads in the hub's inbox …")
            decodes.append(_decode_run(bus, 100 + i, n, router))
            ctx.progress(f"run {i}/{runs}: decoded {decodes[-1].events} in {decodes[-1].seconds:.3f} s")
            ctx.progress(f"run {i}/{runs}: a new hub on the {n:,} leads in its inbox …")
            hub, drain = _hub_run(bus, i, n, router)
            drains.append(drain)
            ctx.progress(f"run {i}/{runs}: {drain.events} events in {drain.seconds:.3f} s")
        assert hub is not None
        rates = [d.events / d.seconds for d in drains]
        cpu = statistics.median(d.cpu_seconds / d.seconds for d in drains)
        decode_rates = [d.events / d.seconds for d in decodes]
        decode_cpu = statistics.median(d.cpu_seconds / d.seconds for d in decodes)
        results.append(
            ctx.result(
                "faust decode-only agent, 1 worker",
                "records/s",
                decode_rates,
                baseline=True,
                notes=(
                    "tests/bench/faust_decode.py: the hub's faust options on the same inbox, per record only "
                    "the envelope frame and clear header parsed (no signature, opening, table or send); "
                    f"timed as the hub; run before each hub run; CPU {100 * decode_cpu:.0f} % of one core, "
                    f"{1e6 * decode_cpu / statistics.median(decode_rates):.0f} µs/record"
                ),
            )
        )
        results.append(
            ctx.result(
                "hub, 1 worker",
                "events/s",
                rates,
                notes=(
                    f"{n:,} lead.reported (DV, distinct victims, no alert flag) routed to inbox.hub before "
                    "the hub starts; a new hub (own app id, empty tables) per run, timed from the first "
                    f"to the last observed event on its /metrics (polled every {POLL_S * MS:.0f} ms); "
                    f"hub CPU {100 * cpu:.0f} % of one core, {1e6 * cpu / statistics.median(rates):.0f} µs/event"
                ),
            )
        )
        hub.stop(STOP_TIMEOUT_S)
        ctx.progress("one more hub run under cProfile, for the top costs …")
        stats_file = bus.tmp / "hub.pstats"
        profiled, drain = _hub_run(bus, runs + 1, n, router, profile=stats_file)
        profiled.stop(STOP_TIMEOUT_S)
        if stats_file.exists():
            share, top = top_costs(stats_file)
            costs = ", ".join(f"{label} {100 * part:.0f} %" for label, part in top)
            RESULTS_DIR.mkdir(parents=True, exist_ok=True)
            shutil.copy(stats_file, RESULTS_DIR / "bench_hub-hub.pstats")
            ctx.note(
                f"hub top costs (cProfile of one more run, {drain.events / drain.seconds:.0f} events/s under the "
                f"profiler, bench-results/bench_hub-hub.pstats): the record work (RecordWorker.on_inbox…) is "
                f"{100 * share:.0f} % of the process's own time (waiting left out, start-up in); within it, own "
                f"time: {costs}"
            )
        else:
            ctx.note(f"the profiled hub wrote no statistics:\n{profiled.tail()}")
        hub = bus.hub(runs + 2)  # the hub of the latency cases: caught up once it has drained the inbox
        _drain(hub, "lianfang_hub_events_observed_total", n, router)

        # The baseline first, while the router and the hub are caught up and idle: after the hub's
        # latency case they may still be working off a backlog, which would slow the broker's floor.
        ctx.progress(f"latency baseline: {rate:.0f} × 1 KiB/s for {seconds:.0f} s …")
        raw = _raw_latency(ctx, rate, seconds)
        base_case = "kafka-python produce → consume, 1 KiB"
        base_notes = (
            f"one hop on the same broker at {rate:.0f}/s offered, achieved {raw.offered:.0f}/s; "
            f"{raw.received}/{raw.sent} received; max {raw.max_ms:.1f} ms; acks=all idempotent producer, "
            "linger_ms=0, 1 partition; consumer thread in this process; run just before the hub's case, "
            "with the router and hub idle"
        )
        results.append(ctx.result(base_case, "p50 ms", [raw.p50_ms], baseline=True, notes=base_notes))
        results.append(ctx.result(base_case, "p99 ms", [raw.p99_ms], baseline=True, notes=base_notes))

        results += _end_to_end(ctx, bus, reader, [router, hub], rate, seconds, raw)
        return results + memory_results
    finally:
        if reader is not None:
            reader.stop()
