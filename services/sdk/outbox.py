"""A durable outbox: an accepted event is on disk before anyone hears "accepted", and leaves the disk
only after Kafka acknowledged it (acks=all).

SQLite in WAL mode with ``synchronous=FULL``: a committed insert survives a crash of the process or
the machine. Records drain in the order they were accepted. An event id is stored once: putting the
same id again with the same bytes is a no-op (a retried request), with other bytes an error (an event
id is never published twice with different content).

A lead accepted while the pseudonymizer cannot answer waits in the ``deferred`` table, its content
encrypted by the caller (:mod:`services.sdk.deferred`: this module never sees it in clear). The drainer
hands such rows, oldest first, to a ``resolve`` function that pseudonymizes, seals and signs them;
:meth:`Outbox.resolve` then swaps each for its sealed record in one transaction, so a crash before that
commit leaves the row waiting (it is sealed again, under the same event id) and a crash after it leaves
exactly one sealed record to send: each lead reaches Kafka under one event id with one content.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kafka import KafkaProducer
from kafka.errors import KafkaError

from services.bus.cluster import BACKGROUND_BOOTSTRAP_TIMEOUT_MS, DURABLE_PRODUCER
from services.bus.security import KafkaSecuritySettings, kafka_python_kwargs, load_security
from services.kernel.errors import TransportError, UsageError, frames
from services.store import sqlite

log = logging.getLogger("lianfang.outbox")

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id   TEXT NOT NULL UNIQUE,
    topic      TEXT NOT NULL,
    key        BLOB,
    value      BLOB NOT NULL,
    headers    TEXT NOT NULL,
    digest     TEXT NOT NULL,
    accepted   REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sent (
    event_id   TEXT PRIMARY KEY,
    digest     TEXT NOT NULL,
    sent_at    REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deferred (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id   TEXT NOT NULL UNIQUE,
    kid        TEXT NOT NULL,
    sealed     BLOB NOT NULL,
    accepted   REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_accepted ON outbox (accepted);
CREATE INDEX IF NOT EXISTS deferred_accepted ON deferred (accepted);
"""


@dataclass(frozen=True, slots=True)
class Record:
    """A sealed record to store: what :meth:`Outbox.put` takes, for :meth:`Outbox.put_many`."""

    event_id: str
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


Put = Literal["new", "same", "conflict"]
"""What :meth:`Outbox.put_many` did with a record."""


@dataclass(frozen=True, slots=True)
class Pending:
    seq: int
    event_id: str
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    accepted: float


@dataclass(frozen=True, slots=True)
class Deferred:
    """A lead that waits for its pseudonyms: ``sealed`` is its content encrypted to the participant's
    own key ``kid`` (opaque here)."""

    seq: int
    event_id: str
    kid: str
    sealed: bytes
    accepted: float


@dataclass(frozen=True, slots=True)
class Resolved:
    """A waiting lead, now sealed and signed: the record that replaces it."""

    deferred: Deferred
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


class ConflictError(UsageError):
    """The event id is already in the outbox (or was sent) with different content."""


class Outbox:
    """The spool file of one adapter. Thread-safe; one drainer at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite.connect(path, schema=SCHEMA)
        self._commits = sqlite.GroupCommit(self._db, self._lock)
        self.changed = threading.Condition(self._lock)
        # The counts a publish and the gauges ask for read a connection of their own: in WAL mode it
        # sees every committed row without waiting for the writer's lock, which a commit in flight
        # holds through its fsync.
        self._reads = sqlite.connect(path, schema=SCHEMA)
        self._reads_lock = threading.Lock()

    def put(
        self, *, event_id: str, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]
    ) -> bool:
        """Store a record durably; True if new, False if the same record was already accepted."""
        record = Record(event_id=event_id, topic=topic, key=key, value=value, headers=headers)

        def insert(db: sqlite3.Connection) -> bool:
            new = self._insert_new(db, record)
            self.changed.notify_all()
            return new

        # Concurrent puts share one commit (one fsync); each returns once its own row is on disk.
        return self._commits.run(insert)

    def put_many(self, records: Sequence[Record]) -> list[Put]:
        """Store records durably in one transaction (one fsync), in the given order; for each, whether it
        is ``new``, the ``same`` record accepted before, or a ``conflict`` (the id was accepted before with
        other content: nothing stored for it, as :meth:`put` would raise :class:`ConflictError`)."""

        def insert(db: sqlite3.Connection) -> list[Put]:
            outcomes: list[Put] = []
            for record in records:
                try:
                    outcomes.append("new" if self._insert_new(db, record) else "same")
                except ConflictError:  # raised before anything of this record was written
                    outcomes.append("conflict")
            self.changed.notify_all()
            return outcomes

        return self._commits.run(insert) if records else []

    @staticmethod
    def _insert_new(db: sqlite3.Connection, record: Record) -> bool:
        """Insert ``record`` unless its id is known: False for the same bytes, :class:`ConflictError`
        (nothing written) for other ones."""
        event_id = record.event_id
        digest = hashlib.sha256(record.value).hexdigest()
        _refuse_waiting(db, event_id)
        row = db.execute(
            "SELECT digest FROM outbox WHERE event_id = ? UNION SELECT digest FROM sent WHERE event_id = ?",
            (event_id, event_id),
        ).fetchone()
        if row is not None:
            if row[0] != digest:
                raise ConflictError(f"event {event_id} was already accepted with different content")
            return False
        _insert(db, event_id, record.topic, record.key, record.value, record.headers, time.time())
        return True

    def put_deferred(self, *, event_id: str, kid: str, sealed: bytes) -> None:
        """Store a lead that waits for its pseudonyms, durably. Its content is encrypted with fresh
        randomness, so it cannot be compared: an event id accepted before, in any form, is a
        :class:`ConflictError` (an interrupted import's re-run counts it as recovered)."""

        def insert(db: sqlite3.Connection) -> None:
            _refuse_waiting(db, event_id)
            row = db.execute(
                "SELECT 1 FROM outbox WHERE event_id = ? UNION SELECT 1 FROM sent WHERE event_id = ?",
                (event_id, event_id),
            ).fetchone()
            if row is not None:
                raise ConflictError(f"event {event_id} was already accepted with different content")
            db.execute(
                "INSERT INTO deferred (event_id, kid, sealed, accepted) VALUES (?, ?, ?, ?)",
                (event_id, kid, sealed, time.time()),
            )
            self.changed.notify_all()

        self._commits.run(insert)

    def deferred(self, limit: int = 100, *, after: int = 0) -> list[Deferred]:
        """The leads waiting for their pseudonyms, oldest first (those accepted after row ``after``)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, event_id, kid, sealed, accepted FROM deferred"
                " WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()
        return [Deferred(*row) for row in rows]

    def resolve(self, done: list[Resolved]) -> None:
        """Replace waiting leads by their sealed records, in one transaction and in the given order
        (each keeps its acceptance time); a row already gone (another drainer) is left alone."""
        with sqlite.transaction(self._db, self._lock) as db:
            for r in done:
                gone = db.execute("DELETE FROM deferred WHERE seq = ?", (r.deferred.seq,)).rowcount == 0
                if not gone:
                    _insert(db, r.deferred.event_id, r.topic, r.key, r.value, r.headers, r.deferred.accepted)
            self.changed.notify_all()

    def waiting(self) -> int:
        """How many leads wait for their pseudonyms."""
        with self._reads_lock:
            return int(self._reads.execute("SELECT COUNT(*) FROM deferred").fetchone()[0])

    def waiting_oldest_age(self, now: float | None = None) -> float:
        with self._reads_lock:
            oldest = self._reads.execute("SELECT MIN(accepted) FROM deferred").fetchone()[0]
        return 0.0 if oldest is None else max(0.0, (now or time.time()) - float(oldest))

    @property
    def commits(self) -> int:
        """Transactions that committed puts (several concurrent puts share one)."""
        return self._commits.commits

    def pending(self, limit: int = 500) -> list[Pending]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, event_id, topic, key, value, headers, accepted FROM outbox ORDER BY seq LIMIT ?",
                (limit,),
            ).fetchall()
        return [
            Pending(
                seq, eid, topic, key, value, [(k, bytes.fromhex(v)) for k, v in json.loads(hdrs)], accepted
            )
            for seq, eid, topic, key, value, hdrs, accepted in rows
        ]

    def mark_sent(self, records: list[Pending]) -> None:
        """Kafka has them: move them out of the outbox (keeping id and digest to refuse a conflict)."""
        now = time.time()
        with sqlite.transaction(self._db, self._lock) as db:
            for r in records:
                digest = hashlib.sha256(r.value).hexdigest()
                db.execute("INSERT OR IGNORE INTO sent (event_id, digest, sent_at) VALUES (?, ?, ?)",
                           (r.event_id, digest, now))  # fmt: skip
                db.execute("DELETE FROM outbox WHERE seq = ?", (r.seq,))
            self.changed.notify_all()

    def holds(self, event_id: str) -> bool:
        """Whether ``event_id`` was accepted into this outbox: waiting to be sent, sent, or waiting for
        its pseudonyms."""
        with self._reads_lock:
            row = self._reads.execute(
                "SELECT 1 FROM outbox WHERE event_id = ? UNION ALL SELECT 1 FROM sent WHERE event_id = ?"
                " UNION ALL SELECT 1 FROM deferred WHERE event_id = ? LIMIT 1",
                (event_id, event_id, event_id),
            ).fetchone()
        return row is not None

    def depth(self) -> int:
        """Records accepted and not yet acknowledged by Kafka, the leads waiting for pseudonyms included."""
        with self._reads_lock:
            return int(
                self._reads.execute(
                    "SELECT (SELECT COUNT(*) FROM outbox) + (SELECT COUNT(*) FROM deferred)"
                ).fetchone()[0]
            )

    def oldest_age(self, now: float | None = None) -> float:
        with self._reads_lock:
            # Each table's MIN is one index lookup; the SDK reads this gauge after every publish.
            oldest = self._reads.execute(
                "SELECT MIN(m) FROM (SELECT MIN(accepted) AS m FROM outbox"
                " UNION ALL SELECT MIN(accepted) FROM deferred)"
            ).fetchone()[0]
        return 0.0 if oldest is None else max(0.0, (now or time.time()) - float(oldest))

    def close(self) -> None:
        with self._lock:
            self._db.close()
        with self._reads_lock:
            self._reads.close()


def _refuse_waiting(db: sqlite3.Connection, event_id: str) -> None:
    if db.execute("SELECT 1 FROM deferred WHERE event_id = ?", (event_id,)).fetchone() is not None:
        raise ConflictError(f"event {event_id} was already accepted and waits for its pseudonyms")


def _insert(  # noqa: PLR0917 - the outbox row's columns, in order
    db: sqlite3.Connection,
    event_id: str,
    topic: str,
    key: bytes | None,
    value: bytes,
    headers: list[tuple[str, bytes]],
    accepted: float,
) -> None:
    db.execute(
        "INSERT INTO outbox (event_id, topic, key, value, headers, digest, accepted)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            event_id, topic, key, value, json.dumps([[k, v.hex()] for k, v in headers]),
            hashlib.sha256(value).hexdigest(), accepted,
        ),
    )  # fmt: skip


ProducerFactory = Callable[[], KafkaProducer]
Resolve = Callable[[list[Deferred]], int]
"""Pseudonymize, seal and sign waiting leads and :meth:`Outbox.resolve` them; return how many. Raises
:class:`TransportError` (with an optional ``retry_after``) while the pseudonymizer cannot answer."""


class Drainer:
    """Sends the outbox to Kafka in order, in a background thread, retrying with back-off.

    A batch is sent and flushed; only the records Kafka acknowledged are removed. After a failure
    the unacknowledged ones are sent again, so Kafka may see a record twice (same event id, same
    bytes): the router recognizes such a copy and delivers the event once.

    Leads waiting for their pseudonyms are handed to ``resolve``, up to ``resolve_batch`` at a time and
    oldest first, by a second thread; what it seals joins the records this one sends. While it fails (the
    pseudonymizer is down) it is tried again after a back-off of its own, doubling from 0.2 s to
    ``max_backoff_s`` (longer when the service's Retry-After says so, never beyond ``max_backoff_s``),
    and the records that need no pseudonym keep flowing.

    ``security`` is how the producer logs in to Kafka (``None``: the ``LIANFANG_KAFKA_*`` environment).
    """

    def __init__(
        self,
        outbox: Outbox,
        bootstrap: str,
        *,
        on_sent: Callable[[list[Pending]], None] | None = None,
        batch: int = 500,
        max_backoff_s: float = 10.0,
        security: KafkaSecuritySettings | None = None,
        resolve: Resolve | None = None,
        resolve_batch: int = 100,
    ) -> None:
        self.outbox = outbox
        self.resolve = resolve
        self.resolve_batch = resolve_batch
        self._resolve_at = 0.0  # monotonic time of the next attempt
        self._resolve_backoff = 0.2
        self._resolve_after = 0  # look at the leads accepted after this row (past ones that stay)
        self.bootstrap = bootstrap
        self.security = security if security is not None else load_security()
        self.on_sent = on_sent
        self.batch = batch
        self.max_backoff_s = max_backoff_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._resolver: threading.Thread | None = None
        self._producer: KafkaProducer | None = None
        self.last_error: str | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lianfang-outbox", daemon=True)
        self._thread.start()
        if self.resolve is not None:
            # A thread of its own: a service that does not answer (up to the client's timeout) must not
            # hold back the records that need no pseudonym.
            self._resolver = threading.Thread(
                target=self._run_resolver, name="lianfang-outbox-pseudonyms", daemon=True
            )
            self._resolver.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        with self.outbox.changed:
            self.outbox.changed.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._resolver is not None:
            self._resolver.join(timeout)
        if self._producer is not None:
            with contextlib.suppress(KafkaError):
                self._producer.close(timeout=5)

    def _connect(self) -> KafkaProducer:
        if self._producer is None:
            self._producer = KafkaProducer(
                bootstrap_servers=self.bootstrap,
                client_id="lianfang-outbox",
                linger_ms=2,
                max_request_size=1_100_000,
                request_timeout_ms=15_000,
                retries=5,
                reconnect_backoff_max_ms=2_000,
                bootstrap_timeout_ms=BACKGROUND_BOOTSTRAP_TIMEOUT_MS,
                **DURABLE_PRODUCER,
                **kafka_python_kwargs(self.security),
            )
        return self._producer

    def _run(self) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            records = self.outbox.pending(self.batch)
            if not records:
                with self.outbox.changed:
                    self.outbox.changed.wait(timeout=1.0)
                continue
            try:
                self.send(records)
                backoff = 0.2
                self.last_error = None
            except TransportError as e:
                self.last_error = str(e)
                log.warning(
                    "outbox: %d record(s) wait for Kafka (%s); retrying in %.1f s", len(records), e, backoff
                )
                self._stop.wait(backoff)
                backoff = min(self.max_backoff_s, backoff * 2)

    def _run_resolver(self) -> None:
        while not self._stop.is_set():
            if self.resolve_waiting():
                continue
            wait = max(0.05, min(1.0, self._resolve_at - time.monotonic()))
            with self.outbox.changed:
                self.outbox.changed.wait(timeout=wait)

    def resolve_waiting(self, *, now: float | None = None) -> int:
        """Hand the oldest waiting leads to ``resolve`` if their back-off has passed; how many it sealed.

        A failure (or a batch of which none could be sealed) backs off; the error is counted by the
        ``resolve`` function, which knows what it was, and never stops the drainer."""
        if self.resolve is None:
            return 0
        at = time.monotonic() if now is None else now
        if at < self._resolve_at:
            return 0
        waiting = self.outbox.deferred(self.resolve_batch, after=self._resolve_after)
        if not waiting:
            self._resolve_after = 0  # past the end: from the oldest again next time
            return 0
        retry_after = 0.0
        answered = False  # the pseudonymizer answered: what is left stays for another reason
        try:
            done = self.resolve(waiting)
            answered = True
        except TransportError as e:
            done = 0
            retry_after = float(getattr(e, "retry_after", 0) or 0)
            if getattr(e, "code", None) == "unreachable":
                retry_after = 0.0  # its Retry-After is a guess for callers, not the service's word
        except Exception as e:  # a bug in sealing must not stop the drainer; the leads stay on disk
            # Only the type and the frames: the leads are open here, and a message could quote them.
            log.error(
                "outbox: sealing %d waiting lead(s) failed (%s); they stay in the outbox\n%s",
                len(waiting), type(e).__name__, frames(e),
            )  # fmt: skip
            done = 0
        # Leads that cannot be sent for a reason of their own stay where they are; a full batch of them
        # must not hold back the leads behind it, so the next attempt looks past it (from the oldest
        # again after the end). While the service is away the next attempt starts where this one did.
        stuck = answered and done < len(waiting) == self.resolve_batch
        self._resolve_after = waiting[-1].seq if stuck else 0
        if done:
            self._resolve_backoff = 0.2
            self._resolve_at = 0.0
            return done
        delay = min(self.max_backoff_s, max(self._resolve_backoff, retry_after))
        self._resolve_at = at + delay
        self._resolve_backoff = min(self.max_backoff_s, self._resolve_backoff * 2)
        return 0

    def send(self, records: list[Pending]) -> None:
        """Send one batch and remove what Kafka acknowledged; raise TransportError otherwise."""
        try:
            producer = self._connect()
            futures = [
                (r, producer.send(r.topic, key=r.key, value=r.value, headers=r.headers)) for r in records
            ]
            producer.flush(timeout=30)
        except KafkaError as e:
            self._reset()
            raise TransportError(f"Kafka at {self.bootstrap} did not take the batch: {e}") from e
        acked = []
        for record, future in futures:
            if future.succeeded():
                acked.append(record)
            else:
                break  # keep order: nothing after the first failure counts as done
        if acked:
            self.outbox.mark_sent(acked)
            if self.on_sent:
                self.on_sent(acked)
        if len(acked) < len(records):
            self._reset()
            failed = next((f.exception for r, f in futures if not f.succeeded()), None)
            raise TransportError(f"Kafka acknowledged {len(acked)} of {len(records)} records ({failed})")

    def _reset(self) -> None:
        if self._producer is not None:
            with contextlib.suppress(Exception):
                self._producer.close(timeout=1)
            self._producer = None

    def wait_empty(self, timeout: float) -> bool:
        """Block until the outbox is empty (True) or ``timeout`` passes (False)."""
        deadline = time.monotonic() + timeout
        with self.outbox.changed:
            while self.outbox.depth() > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.outbox.changed.wait(timeout=min(left, 0.5))
        return True
