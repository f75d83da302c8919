"""Sending a file's audit lines to the audit topic: the :class:`Shipper` thread and its :class:`Sink`.

An audited action waits for the disk, never for the broker: the trail writes the file, and a shipper
copies its new lines to ``lianfang.audit.v1`` in the background, in order, at least once.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from services.audit.chain import AuditError, parse_line
from services.audit.metrics import AuditMetrics
from services.kernel.errors import LianfangError

log = logging.getLogger("lianfang.audit")


class Sink(Protocol):
    """Where a :class:`Shipper` sends audit lines: :class:`~services.audit.kafka.KafkaSink` or a test fake."""

    def send(self, key: bytes, lines: Sequence[bytes]) -> None:
        """Return once every line is acknowledged, in order; raise :class:`TransportError` if not."""

    def cluster(self) -> str:
        """The id of the Kafka cluster the lines go to."""

    def close(self) -> None: ...


class Shipper:
    """Copies the lines appended to an audit file onto the audit topic, in order, at least once.

    A background thread sends from the byte offset recorded in ``<file>.shipped`` to the end of the
    file (or of what ``durable`` says is on disk: the topic never gets a line the file could still
    lose), and moves the offset only after the broker acknowledged the lines. After a crash the lines
    past the recorded offset are sent again; :func:`~services.audit.chain.verify_lines` reads such
    identical copies once. While the broker is away lines wait in the file; ``pending_bytes`` says how
    much. The mark names the Kafka cluster it counts for: on another cluster (a new one, or Kafka
    started afresh) the whole chain is sent again, so every chain on a topic starts at seq 0. With
    ``metrics`` it is reported there from its start until :meth:`stop`.

    Woken by new lines, the thread first lingers ``linger_s`` so that the lines of a busy writer go in
    one send (one broker round trip and one mark a linger, not one a line: a gateway accepting 200
    requests a second sent 200 times a second and spent about 1.5 ms of its CPU a request on it).
    """

    MAX_LINES_PER_SEND = 1000
    LINGER_S = 0.1

    def __init__(
        self,
        path: Path,
        sink: Sink,
        *,
        retry_s: float = 2.0,
        tick: Callable[[], object] | None = None,
        chain: str = "",
        metrics: AuditMetrics | None = None,
        durable: Callable[[], int | None] | None = None,
        linger_s: float = LINGER_S,
    ) -> None:
        self.path = path
        self.linger_s = linger_s
        self.durable = durable  # bytes of the file on disk (None: all): nothing past them is sent
        self.chain = chain or path.stem
        self.sink = sink
        self.retry_s = retry_s
        self.tick = tick
        self.metrics = metrics
        self.marker = path.with_name(path.name + ".shipped")
        self.offset, self.cluster = self._read_marker()
        self._checked_cluster = False
        self.failures = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._shipping = threading.Lock()  # the thread and a caller of ship_once() take turns
        self._thread = threading.Thread(target=self._run, name=f"audit-shipper-{path.name}", daemon=True)
        self._thread.start()
        if metrics is not None:
            metrics.watch(self)

    def _read_marker(self) -> tuple[int, str | None]:
        try:
            offset, _, cluster = self.marker.read_text().strip().partition(" ")
            return int(offset or 0), cluster or None
        except FileNotFoundError:
            return 0, None
        except (OSError, ValueError) as e:
            raise AuditError(f"cannot read the audit shipping mark {self.marker}: {e}") from e

    def _check_cluster(self) -> None:
        """Once per shipper: start again from the beginning if the mark counts for another cluster."""
        if self._checked_cluster:
            return
        here = self.sink.cluster()
        if self.cluster is not None and here != self.cluster and self.offset:
            log.warning(
                "audit chain %s: Kafka cluster %s is not %s, which had it; sending the whole chain",
                self.path.name,
                here,
                self.cluster,
            )
            self.offset = 0
        self.cluster = here
        self._checked_cluster = True

    @property
    def pending_bytes(self) -> int:
        try:
            return max(0, self.path.stat().st_size - self.offset)
        except FileNotFoundError:
            return 0

    def wake(self) -> None:
        self._wake.set()

    def ship_once(self) -> int:
        """Send every complete line past the mark; move the mark; return how many lines were sent.

        Safe to call beside the shipping thread: one of them ships at a time, so no line is sent twice
        and the mark's temporary file is never replaced from under the other."""
        with self._shipping:
            return self._ship_once()

    def _ship_once(self) -> int:
        self._check_cluster()
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                limit = self.durable() if self.durable is not None else None
                data = f.read() if limit is None else f.read(max(0, limit - self.offset))
        except FileNotFoundError:
            return 0
        lines = data.split(b"\n")[:-1][: self.MAX_LINES_PER_SEND]  # complete lines only
        if not lines:
            return 0
        self.sink.send(parse_line(lines[0]).actor.encode(), lines)
        self.offset += sum(len(line) + 1 for line in lines)
        tmp = self.marker.with_name(self.marker.name + ".tmp")
        tmp.write_text(f"{self.offset} {self.cluster or ''}".rstrip() + "\n")
        os.replace(tmp, self.marker)
        return len(lines)

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._wake.wait(timeout=1.0):  # new lines wake it; the timeout retries after failures
                self._stop.wait(self.linger_s)  # gather the lines appended meanwhile (not when stopping)
            self._wake.clear()
            if self.tick is not None:
                try:
                    self.tick()
                except LianfangError as e:  # e.g. the disk: the next append reports it to its caller
                    log.warning("audit checkpoint of %s not written: %s", self.path.name, type(e).__name__)
            self._attempt(drain=False)

    def _attempt(self, *, drain: bool = True) -> bool:
        """Ship what is there: every line (``drain``), or only until a send is not full (the thread:
        a line appended during a send waits for the next linger instead of a send of its own)."""
        try:
            while (sent := self.ship_once()) and (drain or sent == self.MAX_LINES_PER_SEND):
                pass
        except LianfangError as e:
            self.failures += 1
            log.warning("audit lines of %s not shipped yet (%s); retrying", self.path.name, type(e).__name__)
            self._stop.wait(self.retry_s)  # back off before the next attempt, unless stopping
            return False
        return True

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the thread, make one last attempt and close the sink; True when all was shipped."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        try:
            return self._attempt() and self.pending_bytes == 0
        finally:
            self.sink.close()
            if self.metrics is not None:
                self.metrics.forget(self)


__all__ = ["Shipper", "Sink"]
