"""The whole pipeline on a three-node cluster, each node and each service a host of its own
(:mod:`tests.faults.netns`), under a steady load of leads, with what the fault tests and the soak need:
faults to inject, a tally of what reached the inboxes, and the checks.

Hosts: ``kafka-1..3`` (replication 3, ``min.insync.replicas=2``), ``router-1`` and ``router-2`` (two
workers of one group), ``hub``, ``gateway`` and ``agency`` (:mod:`tests.faults.agency`: police through
the SDK, the women's federation through the gateway).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from deploy.kafka.local import LocalKafka
from services.kernel import allocator, envelope, policy
from tests.faults.netns import Host, Lab
from tests.integration.buskit import Bus
from tests.kit import DemoDomain
from tests.workers import REPO, Worker, scrape, status_bytes

KAFKA_HOSTS = ("kafka-1", "kafka-2", "kafka-3")
ROUTERS = ("router-1", "router-2")
HOSTS = (*KAFKA_HOSTS, *ROUTERS, "hub", "gateway", "agency")
METRICS_PORT = 9100
RESTART_COUNTERS = {
    **dict.fromkeys(ROUTERS, "lianfang_router_worker_restarts_total"),
    "hub": "lianfang_hub_agent_restarts_total",
}
"""The counter of each service's restarts inside its process (the router's runner, the hub's agents)."""
GATEWAY_PORT = 8080


class NsWorker(Worker):
    """A :class:`~tests.workers.Worker` inside a host; its /metrics are read from inside the host, on
    ``metrics_at`` (address, port: the loopback's :data:`METRICS_PORT` unless given)."""

    def __init__(
        self,
        host: Host,
        module: str,
        env: Mapping[str, str],
        log: Path,
        args: list[str],
        metrics_at: tuple[str, int] = ("127.0.0.1", METRICS_PORT),
    ) -> None:
        self.host = host
        self.what = f"{module} on {host.name}"
        self.log = log
        self.metrics_at = metrics_at
        self.port = metrics_at[1]
        started = {**os.environ, **env}
        started |= allocator.preload_env(env=started)  # as `lianfang run` starts them: jemalloc if here
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                host.command([sys.executable, "-m", module, *args]),
                cwd=REPO,
                env=started,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def metrics(self, timeout: float = 2) -> dict[str, float] | None:
        address, port = self.metrics_at
        return self.host.call(lambda: scrape(port, timeout, address))

    def rss_bytes(self) -> int:
        """Resident memory of the process now (0 once it is gone)."""
        return status_bytes(self.proc.pid, "VmRSS") or 0

    def file_bytes(self) -> int | None:
        """Of it, the file-backed pages (``RssFile``: the interpreter's and libraries' code and data
        read from their files); None once it is gone."""
        return status_bytes(self.proc.pid, "RssFile")


@dataclass
class Tally:
    """What reached the inboxes, read as it arrives (read_committed): copies of each event id per
    participant, the recipients each event should have, and the alerts per subject."""

    bootstrap: str
    bus: Bus
    copies: dict[str, Counter[str]] = field(default_factory=dict)  # event id -> participant -> copies
    expected: dict[str, frozenset[str]] = field(default_factory=dict)  # event id -> its recipients
    subject_of: dict[str, str] = field(default_factory=dict)  # lead id -> subject
    alerts: dict[str, Counter[str]] = field(default_factory=dict)  # subject -> alert id -> copies
    first_seen: dict[str, float] = field(default_factory=dict)  # event id -> when a copy was read
    last_record: dict[TopicPartition, int] = field(default_factory=dict)  # the offset of its last record read
    consumer: Any = None

    def start(self) -> None:
        participants = self.bus.domain.registry.participant_ids()
        self._topics = {self.bus.names.inbox(p): p for p in participants}
        self.consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            isolation_level="read_committed",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        tps = [
            TopicPartition(t, p)
            for t in self._topics
            for p in sorted(self.consumer.partitions_for_topic(t) or [])
        ]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)

    def poll(self, timeout_ms: int = 500) -> None:
        for tp, records in self.consumer.poll(timeout_ms=timeout_ms, max_records=5000).items():
            participant = self._topics[tp.topic]
            if records:
                self.last_record[tp] = max(self.last_record.get(tp, -1), records[-1].offset)
            for r in records:
                headers = {k: v.decode() for k, v in r.headers or []}
                event_id, kind = headers.get("ce_id", "?"), headers.get("ce_type", "?")
                self.copies.setdefault(event_id, Counter())[participant] += 1
                self.first_seen.setdefault(event_id, time.monotonic())
                if kind == "lead.reported" and event_id not in self.expected:
                    header = envelope.parse(r.value)[4]
                    wanted = policy.recipients(self.bus.domain.registry.document.policy, header)
                    self.expected[event_id] = frozenset().union(*wanted.values())
                    self.subject_of[event_id] = header.subject
                if kind == "joint_meeting.alert" and participant == "coordinators":
                    self.alerts.setdefault(headers.get("ce_subject", "?"), Counter())[event_id] += 1

    def delivered(self, event_id: str) -> bool:
        """Whether every recipient of the lead has it."""
        wanted = self.expected.get(event_id)
        got = self.copies.get(event_id, Counter())
        return wanted is not None and all(got[p] >= 1 for p in wanted)

    def tail(self, participant: str) -> dict[int, int]:
        """Per partition of ``participant``'s inbox, the offsets after its last record read (commit
        markers of interleaved transactions, aborted transactions' records and markers): no consumer commits past them before a
        record follows. Read after catching up with the inbox."""
        self.poll(200)
        topic = self.bus.names.inbox(participant)
        tps = [tp for tp in self.consumer.assignment() if tp.topic == topic]
        ends = self.consumer.end_offsets(tps)  # read_committed: the last stable offsets
        return {tp.partition: ends[tp] - (self.last_record.get(tp, -1) + 1) for tp in sorted(tps)}

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close()


@dataclass(frozen=True)
class Check:
    """The guarantees over every lead accepted so far."""

    accepted: int
    delivered: int
    lost: list[str]
    duplicated: list[str]  # event ids with a second copy in any inbox, or reaching a non-recipient
    alerts: int
    missing_alerts: list[str]  # subjects of accepted leads without an alert
    duplicate_alerts: list[str]  # subjects with more than one alert, or an alert copied twice

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.missing_alerts or self.duplicate_alerts)

    def __str__(self) -> str:
        return (
            f"accepted {self.accepted}, delivered {self.delivered}, lost {len(self.lost)}, "
            f"duplicated {len(self.duplicated)}, alerts {self.alerts}, missing alerts "
            f"{len(self.missing_alerts)}, duplicate alerts {len(self.duplicate_alerts)}"
        )


class Bed:
    """The lab, the cluster and the services; start with :meth:`up`, end with :meth:`down`."""

    def __init__(
        self,
        tmp: Path,
        domain: DemoDomain,
        *,
        rate: float = 4.0,
        seed: int = 1,
        service_env: Mapping[str, str] | None = None,
    ) -> None:
        self.tmp = tmp
        self.domain = domain
        self.rate = rate
        self.seed = seed
        self.service_env = dict(service_env or {})
        """Added to the environment of every service the bed starts (not the agency's): diagnostics."""
        self.lab = Lab(HOSTS)
        self.kafka: LocalKafka | None = None
        self.workers: dict[str, NsWorker] = {}
        self.restarts: Counter[str] = Counter()
        self.gateway_processes = 1
        """``LIANFANG_GATEWAY_PROCESSES`` of the gateway the bed starts next."""
        self._restarts_before: Counter[str] = Counter()  # in-process restarts of earlier processes
        self.prefix = f"t-faults-{datetime.now(UTC):%H%M%S%f}."
        self.accepted_file = tmp / "accepted.jsonl"

    # ------------------------------------------------------------------ life

    def up(self) -> None:
        self.lab.__enter__()
        try:
            hosts = [(self.lab[h].address, self.lab[h].netns) for h in KAFKA_HOSTS]
            self.kafka = LocalKafka.plan(self.tmp / "kafka", nodes=3, hosts=hosts)
            self.kafka.start(timeout=float(os.environ.get("KAFKA_READY_TIMEOUT", "180")))
            self.bus = Bus.create(self.kafka.bootstrap, self.prefix, self.domain)
            self.tally = Tally(self.kafka.bootstrap, self.bus)
            self.tally.start()
            for name in (*ROUTERS, "hub", "gateway"):
                self.start(name)
            self.wait_for(lambda: all(self._ready(n) for n in (*ROUTERS, "hub", "gateway")), 240, "services")
            self.start("agency")
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        for name in list(self.workers):
            self.workers.pop(name).kill()
        if getattr(self, "tally", None) is not None:
            self.tally.close()
        if self.kafka is not None:
            for node in self.kafka.nodes:  # no controlled shutdown: the lab goes next
                self.kafka.kill_node(node.node_id)
            self.kafka.stop(timeout=5)
        for mount in _mounts_under(self.tmp):  # a full-disk fault cut short: its tmpfs is still there
            _run(["umount", "-l", str(mount)], check=False)
        self.lab.close()

    def _env(self) -> dict[str, str]:
        assert self.kafka is not None
        return {"LIANFANG_BOOTSTRAP": self.kafka.bootstrap, "LIANFANG_HOME": str(self.domain.home)}

    def start(self, name: str) -> NsWorker:
        """Start (or start again) the service of host ``name``, with the same data as before."""
        host = self.lab[name]
        env = self._env()
        log = self.tmp / f"{name}.log"
        args: list[str] = []
        if name in ROUTERS:
            module = "services.router"
            env |= {
                "LIANFANG_ROUTER_TOPIC_PREFIX": self.prefix,
                "LIANFANG_ROUTER_GROUP_ID": f"{self.prefix}router",
                "LIANFANG_ROUTER_METRICS_PORT": str(METRICS_PORT),
                "LIANFANG_ROUTER_LAG_INTERVAL_S": "1",
                "LIANFANG_ROUTER_WORKER_ID": name,
            }
        elif name == "hub":
            module = "services.hub"
            env |= {
                "LIANFANG_HUB_TOPIC_PREFIX": self.prefix,
                "LIANFANG_HUB_APP_ID": f"{self.prefix}hub",
                "LIANFANG_HUB_DATA_DIR": str(self.tmp / "hub-data"),
                "LIANFANG_HUB_TICK_INTERVAL_S": "0",
                "LIANFANG_HUB_METRICS_PORT": str(METRICS_PORT),
                "LIANFANG_HUB_LAG_INTERVAL_S": "1",
            }
        elif name == "gateway":
            module = "services.gateway"
            env |= {
                "LIANFANG_GATEWAY_PARTICIPANTS": "womens_federation",
                "LIANFANG_GATEWAY_HOST": host.address,
                "LIANFANG_GATEWAY_PORT": str(GATEWAY_PORT),
                "LIANFANG_GATEWAY_SPOOL_DIR": str(self.tmp / "spool"),
                "LIANFANG_GATEWAY_TOPIC_PREFIX": self.prefix,
                "LIANFANG_GATEWAY_PROCESSES": str(self.gateway_processes),
            }
        elif name == "agency":
            module = "tests.faults.agency"
            assert self.kafka is not None
            args = [
                "--home", str(self.domain.home),
                "--bootstrap", self.kafka.bootstrap,
                "--prefix", self.prefix,
                "--gateway", f"http://{self.lab['gateway'].address}:{GATEWAY_PORT}",
                "--out", str(self.accepted_file),
                "--outbox", str(self.tmp / "police.sqlite"),
                "--rate", str(self.rate),
                "--seed", str(self.seed),
            ]  # fmt: skip
        else:
            raise ValueError(f"no service on {name}")
        if name != "agency":
            env |= self.service_env
        metrics_at = (host.address, GATEWAY_PORT) if name == "gateway" else ("127.0.0.1", METRICS_PORT)
        worker = NsWorker(host, module, env, log, args, metrics_at)
        self.workers[name] = worker
        return worker

    def _ready(self, name: str) -> bool:
        worker = self.workers[name]
        worker.check_alive()
        if name == "gateway":
            return worker.host.call(lambda: _answers(worker.host.address, GATEWAY_PORT))
        values = worker.metrics()
        if values is None:
            return False
        if name == "hub":
            return any(k.startswith("lianfang_hub_events_observed_total") for k in values) or bool(values)
        return values.get('lianfang_registry_version{service="router"}', 0) > 0

    # ------------------------------------------------------------------ faults

    def kill(self, name: str) -> None:
        """SIGKILL the service of a host (no clean shutdown, no final commit)."""
        self._restarts_before[name] += self._restarts_inside(name)
        self.workers[name].kill()

    def _restarts_inside(self, name: str) -> float:
        counter = RESTART_COUNTERS.get(name)
        worker = self.workers.get(name)
        if counter is None or worker is None or not worker.alive():
            return 0.0
        return worker.total(counter) or 0.0

    def restarts_inside(self, name: str) -> float:
        """How often the service of ``name`` restarted inside its processes (its runner or agents, per
        :data:`RESTART_COUNTERS`), summed over every process the bed started for it."""
        return self._restarts_before[name] + self._restarts_inside(name)

    def restart(self, name: str) -> None:
        self.start(name)
        self.restarts[name] += 1

    def kill_gateway_process(self, rng: random.Random) -> int:
        """SIGKILL one of the processes a gateway of several runs (its supervisor starts it again);
        its pid."""
        supervisor = self.workers["gateway"].proc.pid
        children = set()
        for task in Path(f"/proc/{supervisor}/task").iterdir():
            children.update(int(pid) for pid in (task / "children").read_text().split())
        if not children:
            raise AssertionError("the gateway runs no process of its own: is LIANFANG_GATEWAY_PROCESSES 1?")
        victim = rng.choice(sorted(children))
        os.kill(victim, signal.SIGKILL)
        return victim

    def kill_broker(self, node_id: int) -> None:
        assert self.kafka is not None
        self.kafka.kill_node(node_id)

    def restart_broker(self, node_id: int) -> None:
        assert self.kafka is not None
        self.kafka.restart_node(node_id, timeout=180)

    def move_broker_to_tmpfs(self, node_id: int, *, headroom: int = 256 * 2**20) -> Path:
        """Put a broker's log directory on a tmpfs of its own, ``headroom`` bytes larger than what it
        holds: SIGKILL the node, copy its directory onto the tmpfs mounted in its place, restart it.
        Returns the mount point; :meth:`move_broker_to_disk` undoes it. Freeing the filled tmpfs
        (:meth:`free_broker_disk`) gives the broker back about ``headroom`` less what it took while it
        ran on it, and its restart must fit what the others wrote meanwhile: 64 MiB did not, at 20
        leads a second (a soak's broker died of a full disk while catching up)."""
        assert self.kafka is not None
        data = self.kafka.node_data_dir(node_id)
        self.kafka.kill_node(node_id)
        disk = data.with_name("data.disk")
        data.rename(disk)
        data.mkdir()
        # The blocks it holds, not its files' sizes: Kafka's index files are sparse, 10 MiB each.
        used = int(_run(["du", "-s", "--block-size=1", str(disk)]).split()[0])
        options = f"size={used + headroom},mode=0755"
        _run(["mount", "-t", "tmpfs", "-o", options, "lianfang-full-disk", str(data)])
        try:
            _run(["cp", "-a", "--sparse=always", f"{disk}/.", str(data)])
        except BaseException:
            _run(["umount", str(data)], check=False)
            data.rmdir()
            disk.rename(data)
            raise
        shutil.rmtree(disk)
        self.kafka.restart_node(node_id, timeout=180)
        return data

    def fill_broker_disk(self, node_id: int, *, leave: int = 256 * 1024) -> str:
        """Fill the tmpfs of a broker moved there (:meth:`move_broker_to_tmpfs`) with a file, to
        within ``leave`` bytes, for the load to fill the rest; wait until Kafka takes the log directory
        offline, then (up to a minute) for the broker to stop, as it does when its only directory
        failed. Says what happened, with the times."""
        assert self.kafka is not None
        kafka = self.kafka
        log = kafka.node_log(node_id)
        seen = log.stat().st_size
        _fill(kafka.node_data_dir(node_id) / FILLER, leave=leave)
        filled = time.monotonic()

        def offline() -> bool:
            with log.open("rb") as f:
                f.seek(seen)
                said = b"offline" in f.read().lower()
            return said or not kafka.node_alive(node_id)

        self.wait_for(offline, 180, f"broker {node_id} to take its full log directory offline")
        went_offline = time.monotonic() - filled
        with contextlib.suppress(AssertionError):  # it may also stay up without its directory
            self.wait_for(lambda: not kafka.node_alive(node_id), 60, f"broker {node_id} to stop")
        stopped = (
            f"stopped by itself {time.monotonic() - filled:.1f} s after"
            if not kafka.node_alive(node_id)
            else "still running a minute after"
        )
        return f"log directory offline {went_offline:.1f} s after the tmpfs was filled, the broker {stopped}"

    def free_broker_disk(self, node_id: int) -> None:
        """Undo :meth:`fill_broker_disk`: stop the broker if it still runs, remove the file, restart it."""
        assert self.kafka is not None
        self.kafka.kill_node(node_id)
        (self.kafka.node_data_dir(node_id) / FILLER).unlink(missing_ok=True)
        self.kafka.restart_node(node_id, timeout=180)

    def move_broker_to_disk(self, node_id: int) -> None:
        """Undo :meth:`move_broker_to_tmpfs`: SIGKILL the node, copy its directory back to the disk,
        unmount the tmpfs, restart the node."""
        assert self.kafka is not None
        data = self.kafka.node_data_dir(node_id)
        self.kafka.kill_node(node_id)
        back = data.with_name("data.back")
        shutil.rmtree(back, ignore_errors=True)
        back.mkdir()
        _run(["cp", "-a", "--sparse=always", f"{data}/.", str(back)])
        if _run(["umount", str(data)], check=False) is None:
            _run(["umount", "-l", str(data)])  # something still holds it: detach it now, freed when let go
        data.rmdir()
        back.rename(data)
        self.kafka.restart_node(node_id, timeout=180)

    def active_controller(self) -> int:
        assert self.kafka is not None
        leader = self.kafka.quorum_leader()
        assert leader is not None, "no KRaft leader has been elected"
        return leader

    # ------------------------------------------------------------------ load and checks

    def accepted(self) -> list[dict[str, Any]]:
        if not self.accepted_file.exists():
            return []
        lines = self.accepted_file.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith('{"id"')]

    def stop_load(self) -> dict[str, Any]:
        """SIGTERM the agency: it stops offering, drains its outbox and writes its counts."""
        agency = self.workers.pop("agency")
        agency.proc.send_signal(signal.SIGTERM)
        agency.proc.wait(timeout=360)
        last = self.accepted_file.read_text().splitlines()[-1]
        counts: dict[str, Any] = json.loads(last)
        assert "offered" in counts, f"the agency did not finish:\n{agency.tail()}"
        return counts

    def wait_for(self, condition: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            time.sleep(0.3)  # poll interval inside a deadline loop
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")

    def idle(self, seconds: float) -> None:
        """Let the load run for ``seconds``, reading the inboxes meanwhile (so latencies are measured
        when copies arrive, not when a check next reads them)."""
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            self.tally.poll(int(min(500, max(1, (until - time.monotonic()) * 1000))))

    def recover(self, since: float, timeout: float = 300) -> float:
        """Wait until every lead accepted before ``since`` (monotonic: when the fault ended) has
        reached all its inboxes; the seconds that took, from ``since``."""
        cutoff = time.time() - (time.monotonic() - since)
        ids = [a["id"] for a in self.accepted() if a["t"] <= cutoff]

        def caught_up() -> bool:
            self.tally.poll(200)
            return all(self.tally.delivered(i) for i in ids)

        self.wait_for(caught_up, timeout, f"the {len(ids)} leads accepted before the fault ended")
        return time.monotonic() - since

    def check(self, timeout: float = 300) -> Check:
        """Wait (up to ``timeout``) for every accepted lead and its alert, then check the guarantees."""
        ids = [a["id"] for a in self.accepted()]

        def settled() -> bool:
            self.tally.poll(200)
            if not all(self.tally.delivered(i) for i in ids):
                return False
            subjects = {self.tally.subject_of[i] for i in ids}
            return subjects <= set(self.tally.alerts)

        with contextlib.suppress(AssertionError):
            self.wait_for(settled, timeout, "every accepted lead and its alert")
        self.tally.poll(1000)  # a late second copy would show now
        t = self.tally
        lost = [i for i in ids if not t.delivered(i)]
        duplicated = [
            i
            for i, copies in t.copies.items()
            if any(n > 1 for n in copies.values()) or (i in t.expected and set(copies) - t.expected[i])
        ]
        subjects = {t.subject_of[i] for i in ids if i in t.subject_of}
        missing = sorted(s for s in subjects if s not in t.alerts)
        duplicate_alerts = sorted(
            s for s, alerts in t.alerts.items() if len(alerts) > 1 or any(n > 1 for n in alerts.values())
        )
        return Check(
            accepted=len(ids),
            delivered=len(ids) - len(lost),
            lost=lost,
            duplicated=duplicated,
            alerts=sum(len(a) for a in t.alerts.values()),
            missing_alerts=missing,
            duplicate_alerts=duplicate_alerts,
        )

    def latencies(self) -> list[float]:
        """Seconds from acceptance to the first inbox copy read, per delivered lead (an upper bound: the
        tally reads while the bed idles or waits, not while a fault is being injected)."""
        wall_to_mono = time.monotonic() - time.time()
        return [
            self.tally.first_seen[a["id"]] - (a["t"] + wall_to_mono)
            for a in self.accepted()
            if a["id"] in self.tally.first_seen
        ]


FILLER = "lianfang-filler"
"""The file that fills a broker's tmpfs (:meth:`Bed.fill_broker_disk`)."""


def _fill(path: Path, *, leave: int) -> None:
    """Write ``path`` until its file system is full, then give back ``leave`` bytes (the broker writes
    meanwhile: how much is free is only known once nothing is)."""
    chunk = b"\0" * 2**20
    with path.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
        size = f.tell()
    os.truncate(path, max(0, size - leave))


def _run(argv: list[str], *, check: bool = True) -> str | None:
    """Run a command; its stdout, or (``check=False``) None when it failed."""
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
    if proc.returncode != 0:
        if check:
            raise RuntimeError(f"`{' '.join(argv)}` failed ({proc.returncode}): {proc.stderr.strip()}")
        return None
    return proc.stdout


def _mounts_under(directory: Path) -> list[Path]:
    """The mount points at or below ``directory`` (``/proc/self/mounts``; octal escapes as the kernel
    writes them: a space is ``\\040``)."""
    root = directory.resolve()
    points = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        point = Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[1]))
        if point == root or root in point.parents:
            points.append(point)
    return sorted(points, key=lambda p: len(p.parts), reverse=True)  # the deepest first


def _answers(address: str, port: int) -> bool:
    import socket

    with contextlib.suppress(OSError), socket.create_connection((address, port), timeout=1):
        return True
    return False


@contextlib.contextmanager
def bed(tmp: Path, domain: DemoDomain, **kw: Any) -> Iterator[Bed]:
    b = Bed(tmp, domain, **kw)
    b.up()
    try:
        yield b
    finally:
        b.down()
