"""Inbox readers' problem records on ``lianfang.deadletter.v1``, with the one shape of dead-letter
headers (:mod:`services.kernel.deadletter`).

The router and the hub dead-letter a record they refuse (its value, as it came, with those headers).
An inbox reader (the SDK, the gateway's inbox and webhooks) writes a *problem record* for an event its
recipient cannot open: the headers alone and an empty value, never content, so that operators and the
sender learn that a lead was unreadable (``lianfang deadletter list`` shows both). The reader writes
it, acknowledged, before it commits past the record.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Final

from kafka import KafkaProducer
from kafka.errors import KafkaError

from schemas.envelope import EnvelopeHeader
from services.bus.cluster import BACKGROUND_BOOTSTRAP_TIMEOUT_MS, DURABLE_PRODUCER
from services.bus.security import KafkaSecuritySettings, kafka_python_kwargs, load_security
from services.kernel.clock import Clock, utcnow
from services.kernel.deadletter import deadletter_headers
from services.kernel.envelope import Unreadable
from services.kernel.errors import TransportError, frames

__all__ = ["ProblemWriter", "problem_headers"]

log = logging.getLogger("lianfang.deadletter")

SEND_TIMEOUT_S: Final = 30.0


def bug_on_record(log: logging.Logger, reader: str, doing: str, record: Any, error: Exception) -> Unreadable:
    """A bug met while a reader was ``doing`` (``"opening"``, ``"delivering"``) one record: logged with
    its type and frames only (a message could quote the event), and returned as that record's
    ``internal`` problem, for the reader to report and pass: met again and again, it would stop the
    reader there. ``reader`` names it in the log line (``"inbox police"``)."""
    log.error(
        "%s: a bug (%s) while %s the record at %s[%d]@%d\n%s",
        reader, type(error).__name__, doing, record.topic, record.partition, record.offset, frames(error),
    )  # fmt: skip
    return Unreadable("internal", f"[internal] {type(error).__name__} while {doing} this record", None)


def problem_headers(
    problem: Unreadable, *, reader: str, topic: str, partition: int, offset: int, now: datetime
) -> list[tuple[str, bytes]]:
    """The headers of a reader's problem record about the inbox record at that place."""
    header: EnvelopeHeader | None = problem.header
    return deadletter_headers(
        problem.reason,
        problem.detail,
        topic=topic,
        partition=partition,
        offset=offset,
        now=now,
        event_id=header.id if header else None,
        sender=header.sender if header else None,
        reader=reader,
    )


class ProblemWriter:
    """Writes inbox readers' problem records (acks=all, idempotent); thread-safe, one per process part.

    ``reader`` names who could not open the record, e.g. ``police/sdk`` or ``police/webhook``.
    """

    def __init__(
        self,
        *,
        bootstrap: str,
        topic: str,
        reader: str,
        security: KafkaSecuritySettings | None = None,
        clock: Clock = utcnow,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.reader = reader
        self.security = security if security is not None else load_security()
        self.clock = clock
        self._producer: KafkaProducer | None = None

    def write(self, problem: Unreadable, record: Any) -> None:
        """Write the problem record about ``record`` (a consumer record) and wait for Kafka's
        acknowledgement; raises :class:`TransportError` if it did not come (commit nothing then)."""
        headers = problem_headers(
            problem,
            reader=self.reader,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            now=self.clock(),
        )
        key = problem.header.id.encode() if problem.header else None
        try:
            if self._producer is None:
                self._producer = KafkaProducer(
                    bootstrap_servers=self.bootstrap,
                    bootstrap_timeout_ms=BACKGROUND_BOOTSTRAP_TIMEOUT_MS,
                    **DURABLE_PRODUCER,
                    **kafka_python_kwargs(self.security),
                )
            self._producer.send(self.topic, key=key, value=b"", headers=headers).get(timeout=SEND_TIMEOUT_S)
        except KafkaError as e:
            raise TransportError(
                f"the problem record for {record.topic}[{record.partition}]@{record.offset} was not written: "
                f"{type(e).__name__}"
            ) from e

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close()
            self._producer = None
