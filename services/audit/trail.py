"""Writing audit chains: :class:`AuditTrail` appends one actor's chain, each entry signed with the
participant's :class:`~services.audit.chain.Signer`, to a file and/or a publisher, and
:class:`LocalTrail` is a process's own locked file with a
:class:`~services.audit.shipping.Shipper` that copies new lines to the topic.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.audit.chain import (
    MAX_LINE_BYTES,
    Action,
    AuditEntry,
    AuditError,
    Checkpoint,
    Signer,
    next_entry,
    parse_line,
    principal,
    verify_lines,
)
from services.audit.metrics import AuditMetrics
from services.audit.shipping import Shipper, Sink
from services.kernel.clock import Clock, utcnow
from services.kernel.errors import TransportError, UsageError
from services.store.fsync import AppendFile

if TYPE_CHECKING:
    from services.kernel.keystore import Keystore
    from services.kernel.registry import Registry


Publish = Callable[[bytes, bytes], None]
"""(key, value) -> None: hands one record to the audit topic (see
:func:`~services.audit.kafka.kafka_sink`)."""


class AuditTrail:
    """Appends one actor's chain to a JSON-lines file and/or the audit topic; resumes an existing file.

    Appends are serialized by a lock; an entry that :meth:`append` returned is on disk (fsync'ed) before
    the audited action is acknowledged. Concurrent appends share one fsync (group commit, see
    :class:`~services.store.fsync.AppendFile`), which they wait for outside the lock. With a ``signer`` the
    trail signs every entry, and a checkpoint of its head every ``checkpoint_every_s`` seconds (checked
    at each append) and when it closes, so ``audit verify`` catches a tail cut short of a checkpoint
    and reports the entries after the last one as unproven. Without one its entries are unsigned,
    which ``audit verify`` sets aside unless a checkpoint vouches for them.
    """

    def __init__(
        self,
        actor: str,
        *,
        path: Path | None = None,
        publish: Publish | None = None,
        clock: Clock = utcnow,
        signer: Signer | None = None,
        checkpoint_every_s: float = 60.0,
    ) -> None:
        if path is None and publish is None:
            raise UsageError("an audit trail needs a file, a publisher, or both")
        self.actor = actor
        self.path = path
        self.publish = publish
        self.clock = clock
        self.signer = signer
        self.checkpoint_every_s = checkpoint_every_s
        self.head: AuditEntry | None = None
        self._checkpointed: int | None = None
        self._last_checkpoint = clock()
        self._lock = threading.Lock()
        self._file: AppendFile | None = None  # opened at the first write
        self._ticket = 0  # of the last line written to the file
        if path is not None and path.exists():
            self.head = self._resume(path)
            self._checkpointed = self.head.seq if self.head is not None else None

    def _resume(self, path: Path) -> AuditEntry | None:
        """The head of the chain already in ``path``, after checking the whole chain."""
        lines = read_file(path)
        report = verify_lines(lines)  # the links only: this process wrote the file, with its own key
        if report.unreadable:
            first = report.unreadable[0]
            raise AuditError(f"{path} is not a valid audit chain, not appending to it: {first}")
        for result in report.chains:
            if not result.ok:
                raise AuditError(f"{path} is not a valid audit chain, not appending to it: {result}")
            if result.actor != self.actor:
                raise AuditError(f"{path} holds the chain of {result.actor!r}, not of {self.actor!r}")
        for line in reversed(lines):  # the chain holds: its head is the last entry line
            if line.strip() and isinstance(item := parse_line(line), AuditEntry):
                return item
        return None

    def append(
        self,
        action: Action,
        *,
        subject: str | None = None,
        object: str | None = None,
        to: Iterable[str] | None = None,
        durable: bool = True,
    ) -> AuditEntry:
        """Append an entry; it is on disk when this returns, or with ``durable=False`` once :meth:`sync`
        returned, which the caller must call before it acknowledges the audited action."""
        with self._lock:
            entry = next_entry(
                self.head,
                actor=self.actor,
                action=action,
                at=self.clock(),
                subject=subject,
                object=object,
                to=to,
                signer=self.signer,
            )
            self._write(entry.to_line())
            self.head = entry
            self._checkpoint_if_due()
            ticket = self._ticket
        if durable:
            self._wait_durable(ticket)
        return entry

    def sync(self) -> None:
        """Return once every line appended so far is on disk (one fsync for all of them, if any)."""
        with self._lock:
            ticket = self._ticket
        self._wait_durable(ticket)

    def durable_size(self) -> int | None:
        """Bytes of the file known to be on disk, or ``None`` when this trail has written none (then
        the whole file is what an earlier process made durable)."""
        file = self._file
        return None if file is None else file.durable_size

    def checkpoint_if_due(self) -> Checkpoint | None:
        """Sign the head if ``checkpoint_every_s`` passed since the last checkpoint and it moved."""
        with self._lock:
            checkpoint = self._checkpoint_if_due()
            ticket = self._ticket
        self._wait_durable(ticket)
        return checkpoint

    def _checkpoint_if_due(self) -> Checkpoint | None:
        if self.signer is None or self.head is None or self._checkpointed == self.head.seq:
            return None
        if (self.clock() - self._last_checkpoint).total_seconds() < self.checkpoint_every_s:
            return None
        return self._checkpoint(self.signer)

    def checkpoint(self, key: Ed25519PrivateKey, kid: str) -> Checkpoint:
        """Sign the current head with the actor's key and append the checkpoint."""
        with self._lock:
            checkpoint = self._checkpoint(Signer(key, kid))
            ticket = self._ticket
        self._wait_durable(ticket)
        return checkpoint

    def _checkpoint(self, signer: Signer) -> Checkpoint:
        if self.head is None:
            raise UsageError("nothing to checkpoint: the chain is empty")
        now = self.clock()
        cp = Checkpoint.sign(self.head, signer.key, signer.kid, at=now)
        self._write(cp.to_line())
        self._checkpointed = self.head.seq
        self._last_checkpoint = now
        return cp

    def close(self) -> None:
        """Sign a last checkpoint if the head moved since the previous one (with a ``signer``)."""
        with self._lock:
            if self.signer is not None and self.head is not None and self._checkpointed != self.head.seq:
                self._checkpoint(self.signer)
            self._wait_durable(self._ticket)
            if self._file is not None:  # a later write (a late checkpoint tick) opens it again
                self._file.close()
                self._file = None

    def _write(self, line: bytes) -> None:
        """Append ``line`` to the file (durable once :meth:`_wait_durable` of ``self._ticket`` returns)
        and hand it to ``publish``; called under the lock, so lines keep the chain's order."""
        if self.path is not None:
            try:
                if self._file is None:
                    self._file = AppendFile(self.path)
                self._ticket = self._file.write(line + b"\n")
            except OSError as e:
                raise TransportError(f"cannot append to the audit file {self.path}: {e}") from e
            if self.publish is not None:  # the topic never gets a line the file could still lose
                self._wait_durable(self._ticket)
        if self.publish is not None:
            self.publish(self.actor.encode(), line)

    def _wait_durable(self, ticket: int) -> None:
        file = self._file
        if file is None or ticket == 0:
            return
        try:
            file.wait_durable(ticket)
        except OSError as e:
            raise TransportError(f"cannot sync the audit file {self.path}: {e}") from e


def read_file(path: Path) -> list[bytes]:
    try:
        return path.read_bytes().splitlines()
    except OSError as e:
        raise TransportError(f"cannot read the audit file {path}: {e}") from e


def _actor_in(path: Path) -> str | None:
    """The actor of the chain in an audit file (its first line), or ``None`` if it is empty."""
    try:
        with path.open("rb") as f:
            first = f.readline(MAX_LINE_BYTES + 2)
    except OSError as e:
        raise TransportError(f"cannot read the audit file {path}: {e}") from e
    return parse_line(first.rstrip(b"\r\n")).actor if first.strip() else None


class LocalTrail:
    """A process's own chain in ``folder``: a file it holds an exclusive lock on, shipped to Kafka.

    The chain is named ``<participant>/<role>-<8 hex>`` when its file is created and keeps that name
    across restarts. A file locked by another live process is left alone and the next one is used
    (``<role>.audit.jsonl``, ``<role>-2.audit.jsonl``, ...), so two processes never fork one chain.
    ``shipper`` copies the file's new lines to ``lianfang.audit.v1`` in the background (at least once,
    in order), so an audited action waits for the disk, never for the broker; it is reported to
    ``metrics``, the collector of the service that owns the trail.
    """

    def __init__(
        self,
        folder: Path,
        participant: str,
        role: str,
        *,
        signer: Signer | None = None,
        ship: Sink | None = None,
        clock: Clock = utcnow,
        checkpoint_every_s: float = 60.0,
        metrics: AuditMetrics | None = None,
    ) -> None:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        for attempt in range(1, 1000):
            name = f"{role}.audit.jsonl" if attempt == 1 else f"{role}-{attempt}.audit.jsonl"
            path = folder / name
            lock = os.open(folder / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(lock)
                continue
            break
        else:  # pragma: no cover - a thousand live writers in one folder
            raise UsageError(f"every audit file in {folder} is in use")
        self._lock_fd = lock
        actor = _actor_in(path) if path.exists() else None
        if actor is None:
            actor = f"{participant}/{role}-{os.urandom(4).hex()}"
        elif principal(actor) != participant:
            os.close(lock)
            raise AuditError(f"{path} holds the chain of {actor!r}, not of a {participant!r} chain")
        self.path = path
        self.trail = AuditTrail(
            actor, path=path, signer=signer, clock=clock, checkpoint_every_s=checkpoint_every_s
        )
        # The shipper's thread also signs the head when due, so a quiet chain's tail gets covered.
        self.shipper = (
            Shipper(
                path,
                ship,
                tick=self.trail.checkpoint_if_due,
                chain=actor,
                metrics=metrics,
                durable=self.trail.durable_size,
            )
            if ship is not None
            else None
        )

    @property
    def actor(self) -> str:
        return self.trail.actor

    def append(
        self,
        action: Action,
        *,
        subject: str | None = None,
        object: str | None = None,
        to: Iterable[str] | None = None,
        durable: bool = True,
    ) -> AuditEntry:
        """:meth:`AuditTrail.append`; with ``durable=False`` the caller calls :meth:`sync` before it
        acknowledges the audited action, and the shipper sends the entry only after that."""
        entry = self.trail.append(action, subject=subject, object=object, to=to, durable=durable)
        if durable and self.shipper is not None:
            self.shipper.wake()
        return entry

    def sync(self) -> None:
        """Every entry appended so far on disk (one fsync), then handed to the shipper."""
        self.trail.sync()
        if self.shipper is not None:
            self.shipper.wake()

    def close(self, timeout: float = 10.0) -> None:
        """Checkpoint the head, ship what is left (within ``timeout``) and release the file."""
        try:
            self.trail.close()
            if self.shipper is not None:
                self.shipper.stop(timeout)
        finally:
            os.close(self._lock_fd)


def participant_trail(
    folder: Path,
    keystore: Keystore,
    registry: Registry,
    role: str,
    *,
    ship: Sink | None,
    clock: Clock = utcnow,
    checkpoint_every_s: float = 60.0,
    metrics: AuditMetrics | None = None,
) -> LocalTrail:
    """The :class:`LocalTrail` of ``keystore``'s participant in ``folder/<participant>/``, its entries and
    checkpoints signed with the participant's signing key that the registry accepts now."""
    return LocalTrail(
        folder / keystore.participant,
        keystore.participant,
        role,
        signer=Signer.of(keystore, registry, clock()),
        ship=ship,
        clock=clock,
        checkpoint_every_s=checkpoint_every_s,
        metrics=metrics,
    )


__all__ = ["AuditTrail", "LocalTrail", "Publish", "participant_trail", "read_file"]
