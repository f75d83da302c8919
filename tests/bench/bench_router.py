"""Routed events/s of one router worker, beside a raw aiokafka relay and the Ed25519 verify rate.

The workload: ``lead.reported`` events of category ``domestic_violence`` with a town, so that the
default district policy sends each to exactly 4 inboxes (police, womens_federation,
``mediation.<town>``, hub); details about 1 KiB of JSON, triage about 200 B, sealed and signed by
police at the current time, each about a different subject (pseudonyms of different phone numbers) so
that the Kafka keys spread the events over the 12 partitions of ``lianfang.events.v1``. Every event is
sealed once, before anything is timed, and the same records serve every case.

Each Kafka case runs its worker as a child process (``python -m services.router``, or this module in
``relay`` / ``eos-relay`` mode) on topics of its own, after all N records have been produced to its
source topic. The worker is timed from outside, the same way for every case, polling every
``POLL_S``: the clock starts when the first record appears in its output topics (end offsets, so
uncommitted transactional records count) or its group's first committed offset is seen, whichever
comes first -- process start-up, group join, the transactional producers' InitProducerId and the
first fetch are left out -- and stops when the group's committed offsets
(``KafkaAdminClient.list_group_offsets``) reach the end offsets of every source partition. The rate
is the records committed in that interval (N less any already committed at the start) divided by its
length. (Starting at the first commit instead would not do: the plain relay commits every partition
of a ``getmany`` batch at once, so a small N is one commit.)

- ``router``: one router worker on a fresh set of topics per run (``topics.apply`` under a new prefix:
  the router keeps its replay state in a per-prefix topic). Afterwards its ``/metrics`` must show N
  events routed, N copies delivered to each of the 4 inboxes and no dead letter, and the dead-letter
  topic must be empty.
- ``aiokafka relay`` (baseline): the same records read by a consumer group from a 12-partition topic
  and written to 4 output topics of 3 partitions by one idempotent ``acks=all`` producer; after each
  ``getmany`` batch the producer is flushed and the offsets committed. No transaction, no crypto.
- ``EOS relay`` (baseline): :class:`services.bus.eos.TransactionalRunner`, the router's own loop,
  with a handler that copies each record to the same 4 topics and puts one state key per record (as
  the replay window does), without parsing or verifying anything: what the router's exactly-once
  Kafka path costs without the envelope.
- ``Ed25519 verify`` (baseline): ``crypto.verify_signature`` over the signed body of one of the sealed
  records (the public key loaded from raw bytes each time, as ``envelope.verify`` does).
- ``verify+decide in process``: ``router.core.decide`` (envelope verify, key and partition checks,
  replay window in a dict) over every sealed record, no Kafka: the router's per-event CPU ceiling.

The router's topics get a timestamp statement valid for the run, as the timestamp service would
publish, since a router works only while it holds a fresh one. After the timed cases, one more router
run (in no figure) goes under cProfile, and a note names the top own-time costs of the router process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.freshness import TIMESTAMP_RECORD_KEY
from services import trust
from services.bus import cluster
from services.bus.cluster import DURABLE_PRODUCER, TopicSpec, ensure_topics
from services.bus.eos import PRODUCER_BATCH_BYTES
from services.kernel import crypto, envelope, freshness, jsonx, policy, topics
from services.kernel.keystore import KdfParams, Keystore
from services.kernel.pseudonym import pseudonymize
from services.kernel.registry import Registry
from tests.bench.harness import (
    MEMORY_EVENTS_ENV,
    BenchContext,
    BenchError,
    Result,
    RssTrack,
    memory_events,
    per_second,
    wait_for_group,
)
from tests.kit import header as kit_header
from tests.workers import Worker, free_port

EVENTS_FULL = 12_000
EVENTS_QUICK = 300
KAFKA_RUNS_CAP = 3  # each Kafka run sets up ~45 topics and a worker process: ~15 s apiece
VERIFY_OPS_FULL = 5_000
VERIFY_OPS_QUICK = 1_000
DETAILS_BYTES = 1024
TRIAGE_BYTES = 200
SENDER = "police"
TOWN = "renhe"
CATEGORY = "domestic_violence"
EVENT_TYPE = "lead.reported"
EXPECTED_INBOXES = ("hub", f"mediation.{TOWN}", "police", "womens_federation")
SOURCE_PARTITIONS = 12
MEMORY_EVENTS_FULL = 10_000  # sealing them takes most of the memory case's time
MEMORY_EVENTS_QUICK = 2_000
MEMORY_SAMPLE_EVERY = 200  # events produced between two looks at how many the router has routed
MEMORY_MIN_RATE = 50  # events/s: the memory run's deadline allows for a router this slow
REPLAY_IDS_FULL = 200_000
REPLAY_IDS_QUICK = 20_000
SCALE_PARTITIONS = 3  # the scaling cases: 1 and 2 router workers on an events topic of 3 partitions
OUTPUT_PARTITIONS = 3
MAX_BATCH = 500  # the router's default max_batch, used by the relays too
RELAY_LINGER_MS = 2  # as the transactional producers of services.bus.eos

POLL_S = 0.05
START_DEADLINE_S = 90.0  # process start, group join, 12 InitProducerIds, first transaction
DRAIN_DEADLINE_S = 180.0
STOP_TIMEOUT_S = 30.0
CLIENT_ID = "lianfang-bench"
STATEMENT_LIFETIME = dt.timedelta(hours=2)  # longer than any run
TIME_SKEW_S = 2 * 3600  # records sealed before the first run are still routed in the last one
US = 1_000_000


# --------------------------------------------------------------------------- the workload


@dataclass(frozen=True, slots=True)
class Record:
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


@dataclass
class Workload:
    home: Path
    domain: trust.TrustDomain
    registry: Registry
    signer: Keystore
    records: list[Record]
    recipients: tuple[str, ...]
    signed_body: bytes
    signature: bytes
    public_raw: bytes
    participants: list[str]
    sealed_bytes: int  # median record value size
    details_bytes: int
    triage_bytes: int


def _padded(base: dict[str, Any], field_name: str, wanted: int) -> dict[str, Any]:
    """``base`` with ``field_name`` lengthened until its compact JSON is exactly ``wanted`` bytes."""
    filler = "受害人陈述家中多次发生殴打并有邻居证实"
    text = str(base[field_name])
    i = 0
    while wanted - len(jsonx.compact_json({**base, field_name: text})) >= 3:
        text += filler[i % len(filler)]
        i += 1
    text += "." * (wanted - len(jsonx.compact_json({**base, field_name: text})))
    out = {**base, field_name: text}
    if len(jsonx.compact_json(out)) != wanted:
        raise BenchError(f"could not pad {field_name} to {wanted} bytes")
    return out


def _content() -> dict[str, dict[str, Any]]:
    details = {
        "victim": {"name": "王秀兰", "id_number": "110113198803150026", "phone": "13800138000"},
        "suspect": {"name": "李建国", "relation": "配偶", "phone": "13900139000"},
        "reporter": {"name": "张敏", "role": "社区网格员", "phone": "13700137000"},
        "narrative": "受害人拨打12338热线称其丈夫酒后对其实施殴打。",
    }
    triage = {"risk": "high", "channel": "hotline_12338", "repeat": True, "summary": "家暴"}
    return {
        "triage": _padded(triage, "summary", TRIAGE_BYTES),
        "details": _padded(details, "narrative", DETAILS_BYTES),
    }


def _seal(
    i: int, registry: Registry, signer: Keystore, pseudonym_key: Any, content: dict[str, dict[str, Any]]
) -> envelope.SealedRecord:
    """The ``i``-th lead of the workload: signed now, about the subject with phone number ``i``."""
    h = kit_header(
        id=envelope.new_event_id(),
        time=dt.datetime.now(dt.UTC),
        source=f"urn:lianfang:{SENDER}",
        type=EVENT_TYPE,
        category=CATEGORY,
        town=TOWN,
        subject=pseudonymize(pseudonym_key, phone=f"139{i:08d}"),
        policy=registry.policy_version,
        registry=registry.version,
    )
    return envelope.seal(h, content, registry=registry, signer=signer)


def _workload(ctx: BenchContext, home: Path, events: int) -> Workload:
    now = dt.datetime.now(dt.UTC)
    # A domain that seals a pseudonym key (no pseudonymizer to run): the subjects only need to be
    # pseudonym-shaped and distinct, and the router never computes one.
    domain = trust.init_domain(home, now=now, kdf=KdfParams.for_tests(), pseudonymizer_url=None)
    registry = domain.registry(now)
    signer = domain.keystore(SENDER)
    pseudonym_key = registry.pseudonym_key(SENDER, signer.encryption)
    content = _content()
    ctx.progress(f"sealing {events:,} events …")
    start = time.perf_counter()
    sealed = [_seal(i, registry, signer, pseudonym_key, content) for i in range(events)]
    ctx.progress(f"sealed {events:,} events in {time.perf_counter() - start:.1f} s")
    wanted = policy.recipients(registry.document.policy, sealed[0].header)
    recipients = tuple(sorted(set().union(*wanted.values())))
    if recipients != EXPECTED_INBOXES:
        raise BenchError(f"the default policy sends the benchmark's lead to {recipients}, not 4 inboxes")
    if len({s.key for s in sealed}) != events:
        raise BenchError("two events share a subject: they would not spread over the partitions")

    dsse = json.loads(sealed[0].value)
    body = crypto.b64d(dsse["payload"], what="payload")
    signature = crypto.b64d(dsse["signatures"][0]["sig"], what="signature")
    ((_, public_raw),) = signer.public_signing_keys().items()
    crypto.verify_signature(public_raw, signature, dsse["payloadType"], body)
    sizes = sorted(len(s.value) for s in sealed)
    return Workload(
        home=home,
        domain=domain,
        registry=registry,
        signer=signer,
        records=[Record(s.key, s.value, list(s.headers)) for s in sealed],
        recipients=recipients,
        signed_body=body,
        signature=signature,
        public_raw=public_raw,
        participants=registry.participant_ids(),
        sealed_bytes=sizes[len(sizes) // 2],
        details_bytes=len(jsonx.compact_json(content["details"])),
        triage_bytes=len(jsonx.compact_json(content["triage"])),
    )


# --------------------------------------------------------------------------- Kafka helpers


def _admin(bootstrap: str) -> Any:
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        return KafkaAdminClient(bootstrap_servers=bootstrap, client_id=CLIENT_ID)
    except KafkaError as e:
        raise BenchError(f"cannot reach Kafka at {bootstrap}: {e}") from e


def _delete_topics(bootstrap: str, names: list[str]) -> None:
    """Best effort: a run's topics go as soon as it ends, so the broker does not pile up partitions."""
    from kafka.errors import KafkaError

    with contextlib.suppress(KafkaError, BenchError):
        admin = _admin(bootstrap)
        try:
            admin.delete_topics(names)
        finally:
            admin.close()


def _produce(
    bootstrap: str, topic: str, records: list[Record], partitions: int = SOURCE_PARTITIONS
) -> dict[int, int]:
    """Write the records (key, value, headers) to ``topic`` of ``partitions``; return its end offset
    per partition."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    producer = KafkaProducer(
        bootstrap_servers=bootstrap, client_id=CLIENT_ID, max_request_size=2_000_000, **DURABLE_PRODUCER
    )
    try:
        for r in records:
            producer.send(topic, key=r.key, value=r.value, headers=r.headers)
        producer.flush(timeout=60)
    finally:
        producer.close()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id=CLIENT_ID)
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = {tp.partition: offset for tp, offset in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()
    if sum(ends.values()) != len(records):
        raise BenchError(f"{topic}: produced {len(records)} records but its end offsets sum to {ends}")
    if sum(1 for offset in ends.values() if offset) < partitions:
        raise BenchError(f"{topic}: the records did not spread over all partitions: {ends}")
    return ends


@dataclass(frozen=True, slots=True)
class Drain:
    """What one timed run saw: records committed between the first and last observation, and when."""

    records: int
    seconds: float
    cpu_seconds: float
    broker_cpu_seconds: float | None = None


def _committed(admin: Any, group: str, topic: str) -> dict[int, int]:
    from kafka.errors import KafkaError

    try:
        offsets = admin.list_group_offsets({group: None}).get(group, {})
    except KafkaError:  # the group or its coordinator is not there yet
        return {}
    return {tp.partition: om.offset for tp, om in offsets.items() if tp.topic == topic and om.offset >= 0}


def _written(admin: Any, outputs: list[str]) -> int:
    """Offsets written to the output topics so far (uncommitted transactional records included)."""
    from kafka import TopicPartition
    from kafka.admin import OffsetSpec

    specs = {TopicPartition(t, p): OffsetSpec.LATEST for t in outputs for p in range(OUTPUT_PARTITIONS)}
    return sum(o.offset for o in admin.list_partition_offsets(specs).values())


def _watch(
    bootstrap: str,
    worker: Worker | list[Worker],
    group: str,
    topic: str,
    ends: dict[int, int],
    outputs: list[str],
    broker_cpu: Callable[[], float | None] = lambda: None,
) -> Drain:
    """Time workers relaying ``topic``: from their first output (or first commit) seen to all committed.

    Polled every ``POLL_S``: the output topics' end offsets until one of them moves (the worker has
    started, joined, been assigned its partitions and fetched its first batch: none of that is timed),
    and the group's committed offsets until every partition of ``topic`` is committed to its end. CPU
    is the workers' together, and the broker's when ``broker_cpu`` can read it.
    """
    workers = worker if isinstance(worker, list) else [worker]
    total = sum(ends.values())

    def cpu() -> float:
        return sum(w.cpu_seconds() for w in workers)

    admin = _admin(bootstrap)
    try:
        deadline = time.monotonic() + START_DEADLINE_S
        first: tuple[int, float, float, float | None] | None = None
        while True:
            committed = _committed(admin, group, topic)
            started = first is not None or bool(committed) or _written(admin, outputs) > 0
            at = time.perf_counter()
            done = sum(min(committed.get(p, 0), end) for p, end in ends.items())
            if first is None and started:
                first = (done, at, cpu(), broker_cpu())
                deadline = time.monotonic() + DRAIN_DEADLINE_S
            if all(committed.get(p, 0) >= end for p, end in ends.items()):
                break
            for w in workers:
                w.check_alive()
            if time.monotonic() > deadline:
                stage = "its first output" if first is None else f"the end ({done} of {total} committed)"
                tails = "\n".join(w.tail() for w in workers)
                raise BenchError(f"{workers[0].what} did not reach {stage} in time:\n{tails}")
            time.sleep(POLL_S)  # poll interval inside a deadline loop
        used, broker_used = cpu(), broker_cpu()
    finally:
        admin.close()
    if first is None or first[0] >= total:
        raise BenchError(f"{workers[0].what} committed all {total} records before the first observation")
    broker = None if broker_used is None or first[3] is None else broker_used - first[3]
    return Drain(total - first[0], at - first[1], used - first[2], broker)


# --------------------------------------------------------------------------- the Kafka cases


@dataclass
class KafkaCase:
    """Per-run drains of one case, the warm-up included (the harness drops it)."""

    drains: list[Drain] = field(default_factory=list)

    def timed(self, warmup: int) -> list[Drain]:
        return self.drains[warmup:]

    def rates(self, warmup: int) -> list[float]:
        return [d.records / d.seconds for d in self.timed(warmup)]

    def cpu_share(self, warmup: int) -> float:
        return statistics.median(d.cpu_seconds / d.seconds for d in self.timed(warmup))

    def cpu_us_per_record(self, warmup: int) -> float:
        return statistics.median(US * d.cpu_seconds / d.records for d in self.timed(warmup))


def _stamp(bootstrap: str, names: topics.TopicNames, work: Workload) -> None:
    """A timestamp statement for the registry, as the timestamp service publishes: the router works
    only while it holds a fresh one (the check stays on in the benchmark)."""
    from kafka import KafkaProducer

    statement = freshness.sign_statement(
        work.registry,
        dict(work.domain.timestamp_keystore().signing),
        now=dt.datetime.now(dt.UTC),
        valid_for=STATEMENT_LIFETIME,
    )
    producer = KafkaProducer(bootstrap_servers=bootstrap, client_id=CLIENT_ID, **DURABLE_PRODUCER)
    try:
        producer.send(names.registry, key=TIMESTAMP_RECORD_KEY, value=statement).get(timeout=30)
    finally:
        producer.close()


def _router_env(bootstrap: str, work: Workload, prefix: str, group: str, port: int) -> dict[str, str]:
    """A router worker's environment. The records were sealed once, before the first run, and reach
    the bus minutes later in the last runs: the signed time may lie up to ``TIME_SKEW_S`` from the
    broker's append time here (the check still runs), instead of 5 minutes."""
    return {
        "LIANFANG_BOOTSTRAP": bootstrap,
        "LIANFANG_HOME": str(work.home),
        "LIANFANG_ROUTER_TOPIC_PREFIX": prefix,
        "LIANFANG_ROUTER_GROUP_ID": group,
        "LIANFANG_ROUTER_METRICS_PORT": str(port),
        "LIANFANG_ROUTER_TIME_SKEW_S": str(TIME_SKEW_S),
    }


def _router_run(
    ctx: BenchContext, work: Workload, logs: Path, case: KafkaCase, *, profile: Path | None = None
) -> float:
    """One timed router run; with ``profile``, the worker runs under cProfile, which writes there."""
    bootstrap = ctx.bootstrap
    prefix = ctx.unique("run") + "-"
    names = topics.TopicNames(prefix)
    specs = cluster.apply_topics(bootstrap, work.participants, prefix=prefix)
    worker: Worker | None = None
    try:
        _stamp(bootstrap, names, work)
        ends = _produce(bootstrap, names.events, work.records)
        group = ctx.unique("router")
        port = free_port()
        env = _router_env(bootstrap, work, prefix, group, port)
        log = logs / f"{group}.log"
        if profile is None:
            worker = Worker("services.router", env, log, port=port, what="the router")
        else:
            args = ["profiled-router", str(profile)]
            worker = Worker(__name__, env, log, args=args, port=port, what="the router under cProfile")
        inboxes = [names.inbox(p) for p in work.recipients]
        drain = _watch(bootstrap, worker, group, names.events, ends, inboxes)
        _check_routed(bootstrap, worker, names, work)
    finally:
        if worker is not None:
            worker.stop(STOP_TIMEOUT_S)
        _delete_topics(bootstrap, [s.name for s in specs])
    case.drains.append(drain)
    return drain.seconds


def _check_routed(
    bootstrap: str, worker: Worker | list[Worker], names: topics.TopicNames, work: Workload
) -> None:
    """The routers' counters, summed: N routed, N copies in each of the 4 inboxes, no dead letter."""
    from kafka import KafkaConsumer, TopicPartition

    n = len(work.records)
    workers = worker if isinstance(worker, list) else [worker]
    values: dict[str, float] = {}
    for w in workers:
        got = w.metrics(timeout=5)
        if got is None:
            raise BenchError(f"the router does not serve /metrics on port {w.port}:\n{w.tail()}")
        for series, value in got.items():
            values[series] = values.get(series, 0.0) + value
    routed = values.get(f'lianfang_router_events_routed_total{{type="{EVENT_TYPE}"}}', 0.0)
    delivered = {
        series.partition('participant="')[2].rstrip('"}'): value
        for series, value in values.items()
        if series.startswith("lianfang_router_deliveries_total{")
    }
    deadlettered = sum(v for s, v in values.items() if s.startswith("lianfang_router_deadletters_total{"))
    if routed != n or delivered != dict.fromkeys(work.recipients, float(n)) or deadlettered:
        raise BenchError(
            f"the router routed {routed:.0f} of {n} events, delivered {delivered}, "
            f"dead-lettered {deadlettered:.0f}:\n{workers[0].tail()}"
        )
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id=CLIENT_ID)
    try:
        dl = [TopicPartition(names.deadletter, p) for p in range(OUTPUT_PARTITIONS)]
        inboxes = {
            p: [TopicPartition(names.inbox(p), i) for i in range(OUTPUT_PARTITIONS)] for p in work.recipients
        }
        ends = consumer.end_offsets(dl + [tp for tps in inboxes.values() for tp in tps])
    finally:
        consumer.close()
    if any(ends[tp] for tp in dl):
        raise BenchError(f"{names.deadletter} is not empty after the run")
    short = {p: sum(ends[tp] for tp in tps) for p, tps in inboxes.items() if sum(ends[tp] for tp in tps) < n}
    if short:
        raise BenchError(f"inboxes with fewer than {n} offsets after the run: {short}")


def _scale_run(ctx: BenchContext, work: Workload, logs: Path, case: KafkaCase, workers: int) -> float:
    """``workers`` router processes of one group on an events topic of ``SCALE_PARTITIONS``: started
    and joined first, then the N records are produced, and the group is timed as one worker is."""
    bootstrap = ctx.bootstrap
    prefix = ctx.unique(f"scale{workers}") + "-"
    names = topics.TopicNames(prefix)
    narrow = {names.events, names.router_replay}  # the replay topic matches the events topic
    specs = [
        dataclasses.replace(spec, partitions=SCALE_PARTITIONS) if spec.name in narrow else spec
        for spec in cluster.load_specs(
            work.participants, brokers=cluster.broker_count(bootstrap), prefix=prefix
        )
    ]
    ensure_topics(bootstrap, specs)
    procs: list[Worker] = []
    try:
        _stamp(bootstrap, names, work)
        group = ctx.unique("router")
        for i in range(workers):
            port = free_port()
            env = _router_env(bootstrap, work, prefix, group, port)
            what = f"router worker {i + 1} of {workers}"
            procs.append(Worker("services.router", env, logs / f"{group}-{i}.log", port=port, what=what))
        wait_for_group(bootstrap, group, workers, procs, START_DEADLINE_S)
        ends = _produce(bootstrap, names.events, work.records, SCALE_PARTITIONS)
        inboxes = [names.inbox(p) for p in work.recipients]
        drain = _watch(bootstrap, procs, group, names.events, ends, inboxes, ctx.kafka.broker_cpu_seconds)
        _check_routed(bootstrap, procs, names, work)
    finally:
        for w in procs:
            w.stop(STOP_TIMEOUT_S)
        _delete_topics(bootstrap, [s.name for s in specs])
    case.drains.append(drain)
    return drain.seconds


def _relay_run(ctx: BenchContext, work: Workload, logs: Path, case: KafkaCase, mode: str) -> float:
    bootstrap = ctx.bootstrap
    base = ctx.unique(mode)
    source = f"{base}-in"
    outputs = [f"{base}-out-{i}" for i in range(len(work.recipients))]
    specs = [TopicSpec(source, SOURCE_PARTITIONS), *(TopicSpec(t, OUTPUT_PARTITIONS) for t in outputs)]
    state = f"{base}-state"
    if mode == "eos-relay":
        specs.append(TopicSpec(state, SOURCE_PARTITIONS, configs={"cleanup.policy": "compact"}))
    ensure_topics(bootstrap, specs)
    worker: Worker | None = None
    try:
        ends = _produce(bootstrap, source, work.records)
        group = f"{base}-group"
        config = {
            "bootstrap": bootstrap,
            "group": group,
            "source": source,
            "outputs": outputs,
            "state": state,
        }
        worker = Worker(
            "tests.bench.bench_router",
            {},
            logs / f"{group}.log",
            args=[mode, json.dumps(config)],
            what=f"the {mode}",
        )
        drain = _watch(bootstrap, worker, group, source, ends, outputs)
    finally:
        if worker is not None:
            worker.stop(STOP_TIMEOUT_S)
        _delete_topics(bootstrap, [s.name for s in specs])
    case.drains.append(drain)
    return drain.seconds


# --------------------------------------------------------------------------- the relay workers


async def _plain_relay(config: dict[str, Any]) -> None:
    """Consume → produce to every output topic → flush → commit, batch after batch, until SIGTERM."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    producer = AIOKafkaProducer(
        bootstrap_servers=config["bootstrap"],
        max_batch_size=PRODUCER_BATCH_BYTES,
        client_id=CLIENT_ID,
        linger_ms=RELAY_LINGER_MS,
        **DURABLE_PRODUCER,
    )
    consumer = AIOKafkaConsumer(
        config["source"],
        bootstrap_servers=config["bootstrap"],
        client_id=CLIENT_ID,
        group_id=config["group"],
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=MAX_BATCH,
    )
    await producer.start()
    await consumer.start()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=500, max_records=MAX_BATCH)
            offsets = {}
            for tp, records in batches.items():
                for r in records:
                    for topic in config["outputs"]:
                        await producer.send(topic, r.value, key=r.key, headers=list(r.headers))
                offsets[tp] = records[-1].offset + 1
            if offsets:
                await producer.flush()
                await consumer.commit(offsets)
    finally:
        await consumer.stop()
        await producer.stop()


async def _eos_relay(config: dict[str, Any]) -> None:
    """The router's TransactionalRunner with a handler that copies without looking at the record."""
    from services.bus.eos import Output, PartitionState, TransactionalRunner

    outputs: list[str] = config["outputs"]

    async def handler(record: Any, state: PartitionState) -> list[Output]:
        event_id = dict(record.headers or []).get("ce_id", b"").decode() or f"{record.offset}"
        state.put(event_id, repr(time.time()).encode())  # one state record per event, as the replay window
        headers = list(record.headers or [])
        return [Output(topic, record.value, record.key, headers) for topic in outputs]

    runner = TransactionalRunner(
        bootstrap=config["bootstrap"],
        group_id=config["group"],
        source=config["source"],
        state_topic=config["state"],
        handler=handler,
        max_batch=MAX_BATCH,
        client_id=CLIENT_ID,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, runner.stop)
    await runner.run()


# --------------------------------------------------------------------------- in-process cases


def _verify_rate(ctx: BenchContext, work: Workload) -> list[Result]:
    ops = ctx.scale(VERIFY_OPS_FULL, VERIFY_OPS_QUICK)
    payload_type = json.loads(work.records[0].value)["payloadType"]

    def verify_all() -> None:
        for _ in range(ops):
            crypto.verify_signature(work.public_raw, work.signature, payload_type, work.signed_body)

    seconds = ctx.measure("Ed25519 verify", verify_all)
    notes = (
        f"crypto.verify_signature over the PAE of a sealed record's signed body ({len(work.signed_body):,} B), "
        "public key loaded from raw bytes each call, as envelope.verify does"
    )
    return [ctx.result("Ed25519 verify", "ops/s", per_second(seconds, ops), baseline=True, notes=notes)]


def _decide_rate(ctx: BenchContext, work: Workload) -> list[Result]:
    from services.router import core

    values = [(r.value, r.key, topics.partition_for(r.key, SOURCE_PARTITIONS)) for r in work.records]

    def decide_all() -> None:
        replay = envelope.ReplayWindow()
        now = dt.datetime.now(dt.UTC)
        for value, key, partition in values:
            core.decide(
                value,
                key,
                partition=partition,
                partitions=SOURCE_PARTITIONS,
                registry=work.registry,
                now=now,
                replay=replay,
            )

    case = "verify+decide in process"
    seconds = ctx.measure(case, decide_all)
    notes = (
        "router.core.decide on every sealed record (envelope.verify, key and partition checks, "
        "replay window in a dict), no Kafka"
    )
    return [ctx.result(case, "events/s", per_second(seconds, len(values)), notes=notes)]


# --------------------------------------------------------------------------- the benchmark


def run(ctx: BenchContext) -> list[Result]:
    events = ctx.scale(EVENTS_FULL, EVENTS_QUICK)
    tmp = Path(tempfile.mkdtemp(prefix="lianfang-bench-router-"))
    try:
        work = _workload(ctx, tmp / "home", events)
        logs = tmp / "logs"
        logs.mkdir()
        kafka_ctx = dataclasses.replace(ctx, runs=min(ctx.runs, KAFKA_RUNS_CAP))
        if kafka_ctx.runs < ctx.runs:
            ctx.note(
                f"Kafka cases: {kafka_ctx.runs} timed runs (capped from {ctx.runs}) to keep the run short"
            )
        ctx.note(
            f"{events:,} sealed lead.reported per run ({CATEGORY}, town {TOWN}: details {work.details_bytes} B, "
            f"triage {work.triage_bytes} B of JSON); sealed record {work.sealed_bytes:,} B (median); "
            f"{SOURCE_PARTITIONS} source partitions keyed by subject; 4 recipients: {', '.join(work.recipients)}"
        )
        ctx.note(
            "every Kafka case: N records produced first (not timed), then ONE worker process started; timed "
            "from the first output record (or commit) seen, i.e. after start-up, group join, InitProducerIds "
            f"and the first fetch, to all {SOURCE_PARTITIONS} source partitions committed to their end, "
            f"polling every {POLL_S * 1000:.0f} ms; rate = records committed in between / seconds"
        )
        router = KafkaCase()
        relay = KafkaCase()
        eos = KafkaCase()
        results: list[Result] = []
        kafka_ctx.measure("router", lambda: _router_run(ctx, work, logs, router))
        kafka_ctx.measure("aiokafka relay", lambda: _relay_run(ctx, work, logs, relay, "relay"))
        kafka_ctx.measure("EOS relay, no crypto", lambda: _relay_run(ctx, work, logs, eos, "eos-relay"))
        w = kafka_ctx.warmup
        results.append(
            kafka_ctx.result(
                "router, 1 worker",
                "events/s",
                router.rates(w),
                notes=(
                    "python -m services.router on fresh topics (topics.apply) per run; per batch and source "
                    "partition one Kafka transaction holding the 4 inbox copies, the audit entry, the "
                    "replay-state records and the offset; each event verified (Ed25519, registry, policy) and replay-checked; checked "
                    "after each run: /metrics shows N routed, N delivered per inbox, no dead letter"
                ),
            )
        )
        results.append(
            kafka_ctx.result(
                "aiokafka relay, 1 worker",
                "records/s",
                relay.rates(w),
                baseline=True,
                notes=(
                    f"AIOKafkaConsumer getmany(max_records={MAX_BATCH}) -> each record sent to 4 topics of "
                    f"{OUTPUT_PARTITIONS} partitions by one idempotent acks=all producer "
                    f"(linger_ms={RELAY_LINGER_MS}) -> flush -> commit, per batch; no transaction, no crypto"
                ),
            )
        )
        results.append(
            kafka_ctx.result(
                "EOS relay, no crypto, 1 worker",
                "records/s",
                eos.rates(w),
                baseline=True,
                notes=(
                    "services.bus.eos.TransactionalRunner (the router's loop: one transactional producer "
                    "and one transaction per batch per source partition) with a handler copying each record "
                    "to the same 4 topics and putting one state key, without parsing or verifying it"
                ),
            )
        )
        results += _scaling(ctx, kafka_ctx, work, logs)
        results += _verify_rate(ctx, work)
        results += _decide_rate(ctx, work)
        _breakdown(ctx, router, relay, eos, results, w, work.sealed_bytes)
        _profile(ctx, work, logs)
        results += _replay_state(ctx)
        results += _memory(ctx, work, logs)
        return results
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _scaling(ctx: BenchContext, kafka_ctx: BenchContext, work: Workload, logs: Path) -> list[Result]:
    """1 and 2 router workers of one group on an events topic of ``SCALE_PARTITIONS`` partitions."""
    cases = {n: KafkaCase() for n in (1, 2)}
    for n, case in cases.items():
        label = f"router, {n} worker{'s' if n > 1 else ''}, {SCALE_PARTITIONS} partitions"
        kafka_ctx.measure(label, lambda n=n, case=case: _scale_run(ctx, work, logs, case, n))  # type: ignore[misc]
    w = kafka_ctx.warmup
    results = [
        kafka_ctx.result(
            f"router, {n} worker{'s' if n > 1 else ''}, {SCALE_PARTITIONS} partitions",
            "events/s",
            case.rates(w),
            notes=(
                f"{n} python -m services.router of one group on an events topic (and replay topic) of "
                f"{SCALE_PARTITIONS} partitions; the workers start and join (group stable, {n} members) "
                "before the N records are produced; timed as the 1-worker case"
            ),
        )
        for n, case in cases.items()
    ]
    parts = []
    for n, case in cases.items():
        timed = case.timed(w)
        broker = [d.broker_cpu_seconds / d.seconds for d in timed if d.broker_cpu_seconds is not None]
        share = f"{100 * case.cpu_share(w):.0f} % of one CPU"
        parts.append(
            f"{n} worker{'s' if n > 1 else ''}: workers {share}"
            + (f", broker {100 * statistics.median(broker):.0f} %" if broker else ", broker not measured")
        )
    one, two = (statistics.median(c.rates(w)) for c in cases.values())
    ceiling, why = _two_worker_ceiling(work)
    ctx.note(
        f"scaling on {SCALE_PARTITIONS} partitions: 2 workers / 1 worker = {two / one:.2f} (at most "
        f"{ceiling:.2f}: {why}); CPU during the timed interval (medians; "
        f"{os.cpu_count()} CPUs for workers, broker and everything else on the machine): " + "; ".join(parts)
    )
    return results


def _two_worker_ceiling(work: Workload) -> tuple[float, str]:
    """The most two workers can do beside one on the scaling cases' partitions, and why: a partition is
    one worker's, so the run lasts as long as the busier worker's share, at best the most even split."""
    counts = [0] * SCALE_PARTITIONS
    for r in work.records:
        counts[topics.partition_for(r.key, SCALE_PARTITIONS)] += 1
    busiest = min(
        max(
            sum(c for p, c in enumerate(counts) if mask >> p & 1),
            sum(c for p, c in enumerate(counts) if not mask >> p & 1),
        )
        for mask in range(2 ** len(counts))
    )
    why = (
        f"the records lie {' / '.join(f'{c:,}' for c in counts)} on the {SCALE_PARTITIONS} partitions and a "
        "partition is one worker's, so one of two workers routes at least the larger share of the best split"
    )
    return sum(counts) / busiest, why


# --------------------------------------------------------------------------- memory


def _replay_state(ctx: BenchContext) -> list[Result]:
    """Bytes per remembered id of the router's replay state, measured on the structure itself with
    tracemalloc, beside the dict of strings it replaced (each id a str from the parse, each value the
    encoded ``Seen`` with a full digest)."""
    from services.router.seen import SeenStore

    n = ctx.scale(REPLAY_IDS_FULL, REPLAY_IDS_QUICK)
    ids = [envelope.new_event_id() for _ in range(n)]
    at = time.time()
    digest = hashlib.sha256(b"record").hexdigest()

    def compact() -> object:
        store = SeenStore()
        value = envelope.Seen(at, digest[: envelope.DIGEST_HEX]).encode()
        for event_id in ids:
            store[event_id] = value
        return store

    def plain() -> object:
        return {event_id.encode().decode(): envelope.Seen(at, digest).encode() for event_id in ids}

    ctx.progress(f"replay state: {n:,} ids, compact and as a dict …")
    results = []
    for case, fill, baseline in (
        ("replay state, compact (router)", compact, False),
        ("replay state as a dict of strings", plain, True),
    ):
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            kept = fill()
            used = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        del kept
        results.append(
            ctx.result(
                case,
                "B per id",
                [used / n],
                baseline=baseline,
                notes=f"{n:,} UUIDv7 ids remembered, memory allocated by the structure (tracemalloc) / ids",
            )
        )
    return results


def memory(ctx: BenchContext) -> list[Result]:
    """The memory case alone (``python -m tests.bench --memory -k router``): a workload of a few events
    for the registry and keys, then :func:`_memory`."""
    tmp = Path(tempfile.mkdtemp(prefix="lianfang-bench-router-"))
    try:
        work = _workload(ctx, tmp / "home", 1)
        logs = tmp / "logs"
        logs.mkdir()
        return _memory(ctx, work, logs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _memory(ctx: BenchContext, work: Workload, logs: Path) -> list[Result]:
    """The router's resident memory after routing N distinct events (N: ``LIANFANG_BENCH_MEMORY_EVENTS``),
    sealed while they are produced; beside its resident memory once it has started and joined."""
    from kafka import KafkaProducer

    n = memory_events(ctx, MEMORY_EVENTS_FULL, MEMORY_EVENTS_QUICK)
    bootstrap = ctx.bootstrap
    prefix = ctx.unique("memory") + "-"
    names = topics.TopicNames(prefix)
    specs = cluster.apply_topics(bootstrap, work.participants, prefix=prefix)
    pseudonym_key = work.registry.pseudonym_key(SENDER, work.signer.encryption)
    content = _content()
    worker: Worker | None = None
    try:
        _stamp(bootstrap, names, work)
        group, port = ctx.unique("router"), free_port()
        env = _router_env(bootstrap, work, prefix, group, port)
        worker = Worker("services.router", env, logs / f"{group}.log", port=port, what="the router")
        track = RssTrack("router", n, worker.rss_bytes)
        wait_for_group(bootstrap, group, 1, [worker], START_DEADLINE_S)
        track.started()
        ctx.progress(f"memory: sealing and producing {n:,} events to one router …")
        producer = KafkaProducer(
            bootstrap_servers=bootstrap, client_id=CLIENT_ID, max_request_size=2_000_000, **DURABLE_PRODUCER
        )
        try:
            for i in range(n):
                r = _seal(i, work.registry, work.signer, pseudonym_key, content)
                producer.send(names.events, key=r.key, value=r.value, headers=r.headers)
                if i % MEMORY_SAMPLE_EVERY == 0:  # the router routes while the rest is sealed
                    track.look(worker.total("lianfang_router_events_routed_total") or 0)
            producer.flush(timeout=120)
        finally:
            producer.close()
        deadline = time.monotonic() + DRAIN_DEADLINE_S + n / MEMORY_MIN_RATE
        while (routed := worker.total("lianfang_router_events_routed_total") or 0) < n:
            worker.check_alive()
            track.look(routed)
            if time.monotonic() > deadline:
                raise BenchError(f"the router did not route {n:,} events in time:\n{worker.tail()}")
            time.sleep(10 * POLL_S)  # poll interval inside a deadline loop
        track.finished()
        dead = worker.total("lianfang_router_deadletters_total") or 0
    finally:
        if worker is not None:
            worker.stop(STOP_TIMEOUT_S)
        _delete_topics(bootstrap, [s.name for s in specs])
    if dead:
        raise BenchError(f"the memory run dead-lettered {dead:.0f} of {n:,} events")
    return track.results(
        ctx,
        started="once started and joined (VmRSS of python -m services.router, 12 partitions assigned)",
        after=f"after routing {n:,} distinct events ({MEMORY_EVENTS_ENV}), 4 inboxes each",
    )


def _breakdown(
    ctx: BenchContext,
    router: KafkaCase,
    relay: KafkaCase,
    eos: KafkaCase,
    results: list[Result],
    warmup: int,
    sealed_bytes: int,
) -> None:
    by_case = {r.case: r for r in results}
    r_router = by_case["router, 1 worker"].median
    r_relay = by_case["aiokafka relay, 1 worker"].median
    r_eos = by_case["EOS relay, no crypto, 1 worker"].median
    r_verify = by_case["Ed25519 verify"].median
    r_decide = by_case["verify+decide in process"].median
    ctx.note(
        f"router / aiokafka relay = {r_router / r_relay:.2f}; router / EOS relay = {r_router / r_eos:.2f}; "
        f"EOS relay / aiokafka relay = {r_eos / r_relay:.2f}; router / Ed25519 verify = {r_router / r_verify:.2f}"
    )
    ctx.note(
        f"per record (wall clock, at the medians): router {US / r_router:.0f} µs, EOS relay {US / r_eos:.0f} µs, "
        f"aiokafka relay {US / r_relay:.0f} µs; in process, verify+decide {US / r_decide:.0f} µs of which the "
        f"Ed25519 verify {US / r_verify:.0f} µs"
    )
    parts = []
    for name, case in (("router", router), ("aiokafka relay", relay), ("EOS relay", eos)):
        parts.append(
            f"{name} {100 * case.cpu_share(warmup):.0f} % of one CPU, {case.cpu_us_per_record(warmup):.0f} µs/record"
        )
    ctx.note(
        f"worker process CPU (user+system) during the timed interval, medians ({os.cpu_count()} CPUs shared "
        "with the broker): " + "; ".join(parts)
    )
    per_batch = PRODUCER_BATCH_BYTES // sealed_bytes
    ctx.note(
        f"the relays' producers use the router's max_batch_size ({PRODUCER_BATCH_BYTES:,} B), "
        f"as the router's transactional producers do: one producer batch holds {per_batch} sealed records"
    )


# --------------------------------------------------------------------------- the profile

PROFILE_TOP = 10
IDLE = re.compile(r"<method '(poll|select)' of 'select\.epoll' objects>")
BUILTIN = re.compile(
    r"<(?:method '(?P<method>\w+)' of '(?:[\w.]+\.)?(?P<owner>\w+)' objects|built-in method (?P<fn>[\w.]+))>"
)


def _function(file: str, line: int, name: str) -> str:
    """A profiled function's short name: ``module:function``, ``Owner.method`` for C methods."""
    if line:
        return f"{Path(file).stem}:{name}"
    m = BUILTIN.fullmatch(name)
    if m is None:
        return name
    return f"{m['owner']}.{m['method']}" if m["method"] else str(m["fn"])


def _profile(ctx: BenchContext, work: Workload, logs: Path) -> None:
    """One more router run (not in any figure) under cProfile; a note names its top costs.

    Costs are own time (``tottime``) per function, as a share of the worker's profiled time less its
    time waiting in epoll (idle), and in µs per routed event.
    """
    import pstats

    out = logs / "router.prof"
    ctx.progress("router under cProfile (one untimed run) …")
    _router_run(ctx, work, logs, KafkaCase(), profile=out)
    stats: Any = pstats.Stats(str(out))
    rows = [
        (tt, _function(file, line, name), bool(IDLE.fullmatch(name)))
        for (file, line, name), (_, _, tt, _, _) in stats.stats.items()
    ]
    idle = sum(tt for tt, _, waiting in rows if waiting)
    busy = sum(tt for tt, _, _ in rows) - idle
    top = sorted((tt, name) for tt, name, waiting in rows if not waiting)[::-1][:PROFILE_TOP]
    n = len(work.records)
    ctx.note(
        f"profile of the router process (cProfile, after imports, one extra run of {n:,} events; "
        f"{busy:.2f} s busy, {idle:.2f} s idle in epoll), top own-time costs: "
        + "; ".join(f"{name} {100 * tt / busy:.0f} % ({US * tt / n:.0f} µs/event)" for tt, name in top)
    )


# --------------------------------------------------------------------------- relay worker entry point


def _profiled_router(out: str) -> None:
    """One router worker (configured from the environment, as ``python -m services.router``) under
    cProfile, enabled after the imports; the profile is written to ``out`` when it stops."""
    import cProfile
    import logging

    from services.router.app import RouterSettings, serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        asyncio.run(serve(RouterSettings()))
    finally:
        profiler.disable()
        profiler.dump_stats(out)


def _main(argv: list[str]) -> int:
    """``python -m tests.bench.bench_router relay|eos-relay '<json config>'``: one relay worker;
    ``python -m tests.bench.bench_router profiled-router <file>``: one router worker under cProfile."""
    if len(argv) == 2 and argv[0] == "profiled-router":
        _profiled_router(argv[1])
        return 0
    if len(argv) != 2 or argv[0] not in {"relay", "eos-relay"}:
        print(_main.__doc__, file=sys.stderr)
        return 2
    config = json.loads(argv[1])
    relay: Callable[[dict[str, Any]], Any] = _plain_relay if argv[0] == "relay" else _eos_relay
    asyncio.run(relay(config))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
