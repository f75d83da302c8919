"""A participant's inbox over HTTP: pages of verified, opened events after a cursor.

The cursor is opaque to clients: ``v1.`` and the unpadded base64url of ``{"<partition>": <next
offset>, ...}`` of the participant's inbox topic. Reading is stateless on the gateway (no consumer
group): the client keeps the cursor and asks again from it. Records are read with
``isolation_level=read_committed`` (the router writes inboxes in transactions) and each is verified
and opened with the participant's keystore. One the participant cannot open is never returned: it is
counted, logged without content and reported by a problem record on the dead-letter topic before the
cursor passes it (once per record, however often a cursor is replayed).

Each event id is handed out once: the gateway remembers where (partition, offset) it first returned
each id. A copy of that id at another offset is skipped and counted; the same record asked for again
from an older cursor is returned again, because a cursor is the client's own commit (a client that
crashed before saving its next cursor must get the page again). What is returned is the participant's
own data; nothing of it is logged.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from services.audit.chain import opened_object
from services.audit.trail import LocalTrail
from services.bus import registry_follower
from services.bus.deadletter import ProblemWriter
from services.bus.registry_follower import NewerRegistry, RegistryInForce, in_force, no_newer_registry
from services.bus.security import KafkaSecuritySettings, kafka_python_kwargs, load_security
from services.gateway.problems import ProblemError
from services.kernel import envelope
from services.kernel.clock import Clock
from services.kernel.errors import RegistryExpiredError, TransportError
from services.kernel.keystore import Keystore
from services.kernel.registry import Registry
from services.sdk.client import CaseContext
from services.store.handed import HandedOut

log = logging.getLogger("lianfang.gateway.inbox")

CURSOR_PREFIX: Final = "v1."
MAX_CURSOR_CHARS: Final = 4096
MAX_PARTITION: Final = 10_000


def encode_cursor(offsets: Mapping[int, int]) -> str:
    raw = json.dumps({str(p): o for p, o in sorted(offsets.items())}, separators=(",", ":")).encode()
    return CURSOR_PREFIX + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> dict[int, int]:
    """The partition offsets of a cursor; raises :class:`ProblemError` ``invalid_cursor``."""
    bad = ProblemError("invalid_cursor", "the cursor is not one this gateway issued; omit it to start over")
    if len(cursor) > MAX_CURSOR_CHARS or not cursor.startswith(CURSOR_PREFIX):
        raise bad
    text = cursor[len(CURSOR_PREFIX) :]
    try:
        raw = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError) as e:
        raise bad from e
    if not isinstance(raw, dict):
        raise bad
    out: dict[int, int] = {}
    for partition, offset in raw.items():
        if not (isinstance(partition, str) and partition.isdigit() and int(partition) <= MAX_PARTITION):
            raise bad
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise bad
        out[int(partition)] = offset
    return out


def context_of(opened: envelope.Opened) -> dict[str, Any]:
    """What a follow-up about this event sends as its ``context``."""
    c = CaseContext.of(opened.header)
    return {
        "subject": c.subject,
        "category": c.category,
        "minor": c.minor,
        "town": c.town,
        "school_related": c.school_related,
        "lead_id": c.lead_id,
    }


def render(opened: envelope.Opened) -> dict[str, Any]:
    """An opened event as JSON: the clear header, the sections this participant could open, and the
    context a follow-up needs."""
    return {
        "header": opened.header.model_dump(mode="json", by_alias=True, exclude_none=True),
        "sections": opened.sections,
        "context": context_of(opened),
    }


@dataclass(frozen=True, slots=True)
class Page:
    events: list[dict[str, Any]]
    cursor: dict[int, int]
    more: bool
    skipped: int


class InboxReader:
    """Reads one participant's inbox topic for ``GET /v1/inbox``; one request at a time (a lock).

    ``security``: the Kafka login (``None``: the ``LIANFANG_KAFKA_*`` environment). ``handed``: the
    ids it handed out; ``problems``: where it reports records it cannot open (``None``: nowhere, tests).
    """

    def __init__(
        self,
        *,
        bootstrap: str,
        topic: str,
        keystore: Keystore,
        registry: Registry | RegistryInForce,
        clock: Clock,
        handed: HandedOut,
        problems: ProblemWriter | None,
        on_rejected: Callable[[str], None] = lambda reason: None,
        on_duplicate: Callable[[], None] = lambda: None,
        security: KafkaSecuritySettings | None = None,
        trail: LocalTrail | None = None,
        newer_registry: NewerRegistry = no_newer_registry,
    ) -> None:
        self.handed = handed
        self.problems = problems
        self.on_duplicate = on_duplicate
        self.bootstrap = bootstrap
        self.trail = trail
        self.security = security if security is not None else load_security()
        self.topic = topic
        self.keys = keystore
        self.in_force = in_force(registry)
        self.newer_registry = newer_registry
        self.clock = clock
        self.on_rejected = on_rejected
        self._lock = threading.Lock()
        self._consumer: KafkaConsumer | None = None

    @property
    def registry(self) -> Registry:
        return self.in_force.current

    def _connect(self) -> KafkaConsumer:
        if self._consumer is None:
            self._consumer = KafkaConsumer(
                bootstrap_servers=self.bootstrap,
                client_id=f"lianfang-gateway-inbox-{self.keys.participant}",
                isolation_level="read_committed",
                enable_auto_commit=False,
                request_timeout_ms=15_000,
                **kafka_python_kwargs(self.security),
            )
        return self._consumer

    def read(self, start: Mapping[int, int] | None, *, limit: int, wait_s: float = 2.0) -> Page:
        """Up to ``limit`` events after ``start`` (None: from the beginning), and the next cursor."""
        with self._lock:
            try:
                return self._read(start or {}, limit, wait_s)
            except KafkaError as e:
                self._reset()
                raise TransportError(f"reading {self.topic} failed: {type(e).__name__}") from e
            except RegistryExpiredError as e:  # not the records' fault: nothing is passed over
                raise TransportError("the registry has expired; the inbox waits for a newer one") from e

    def _read(self, start: Mapping[int, int], limit: int, wait_s: float) -> Page:
        consumer = self._connect()
        partitions = consumer.partitions_for_topic(self.topic)
        if not partitions:
            raise TransportError(f"the inbox topic {self.topic} does not exist (yet)")
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        begin = consumer.beginning_offsets(tps)
        end = consumer.end_offsets(tps)
        for tp in tps:
            consumer.seek(tp, min(max(start.get(tp.partition, 0), begin[tp]), end[tp]))
        events: list[dict[str, Any]] = []
        skipped = 0
        deadline = time.monotonic() + wait_s
        while (
            len(events) < limit
            and any(consumer.position(tp) < end[tp] for tp in tps)
            and time.monotonic() < deadline
        ):
            batch = consumer.poll(timeout_ms=100, max_records=limit - len(events))
            for records in batch.values():
                for record in records:
                    opened = registry_follower.open_or_unreadable(
                        record.value,
                        in_force=self.in_force,
                        newer_registry=self.newer_registry,
                        now=self.clock,
                        keystore=self.keys,
                        headers=record.headers,
                    )
                    if isinstance(opened, envelope.Unreadable):
                        skipped += 1
                        self._report(opened, record)
                        continue
                    where = (record.partition, record.offset)
                    first = self.handed.first(opened.header.id)
                    if first is not None and first != where:
                        skipped += 1
                        self.on_duplicate()
                        continue
                    if first is None:
                        self.handed.remember(opened.header.id, *where)
                    if self.trail is not None:
                        self.trail.append(
                            "open_section", subject=opened.header.subject, object=opened_object(opened)
                        )
                    events.append(render(opened))
        positions = {tp.partition: consumer.position(tp) for tp in tps}
        more = any(positions[tp.partition] < end[tp] for tp in tps)
        return Page(events, positions, more, skipped)

    def _report(self, problem: envelope.Unreadable, record: Any) -> None:
        """Count, log without content, and write the problem record once per record; a failed write
        raises :class:`TransportError` (503), so no cursor passes the record unreported."""
        if self.handed.reported(record.partition, record.offset):
            return
        self.on_rejected(problem.reason)
        log.warning(
            "inbox %s: the record at %s[%d]@%d cannot be opened (%s; event %s from %s); "
            "reported on the dead-letter topic",
            self.keys.participant, record.topic, record.partition, record.offset, problem.reason,
            problem.header.id if problem.header else "-", problem.header.sender if problem.header else "-",
        )  # fmt: skip
        if self.problems is not None:
            self.problems.write(problem, record)
        self.handed.remember_reported(record.partition, record.offset)

    def _reset(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(KafkaError):
                self._consumer.close()
            self._consumer = None

    def close(self) -> None:
        with self._lock:
            self._reset()
            if self.problems is not None:
                self.problems.close()
            self.handed.close()
