"""A tamper-evident audit trail: hash chains of entries, with signed checkpoints of their heads.

Each entry says who (``actor``) did what (``action``) to which ids (``subject``: a pseudonym,
``object``: an event, key or registry id; ``to``: the participants a routing decision delivered to)
and when — never personal data: ids are checked against a narrow alphabet and things that look like
phone or resident-ID numbers are refused. Each entry carries the previous entry's hash; its own hash is
SHA-256 over its canonical bytes (compact JSON, sorted keys) including ``prev_hash``, so editing,
removing or reordering an entry breaks the chain at that entry. Cutting entries off the end is caught
by a checkpoint: an Ed25519 signature (DSSE PAE over the checkpoint's exact bytes) over the head's
``seq`` and ``hash``, by the key of the actor's participant.

An actor names one chain and one writer: a participant id, then ``/`` and the writer when the
participant writes several chains (``police/sdk-1f2e3d4c``, ``router/lianfang-router.p7``); its
checkpoints are signed with that participant's key (:func:`principal`).

On disk and on ``lianfang.audit.v1`` an entry is one line of canonical JSON; a checkpoint is one line
``{"checkpoint": b64(body), "sig": b64(signature)}``. The topic is keyed by actor, so one partition
holds a chain in order.

Pure core: :func:`next_entry`, :func:`parse_line`, :func:`verify`, :func:`verify_lines`.
:class:`AuditTrail` appends to a file (and/or a callback); :class:`LocalTrail` is a process's own locked
file with a :class:`Shipper` that copies new lines to the topic in the background, at least once;
:class:`KafkaSink` and :func:`read_topic` are the thin Kafka edges.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, get_args

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.kernel import audit_metrics, crypto
from services.kernel.errors import (
    LianfangError,
    MalformedError,
    TooLargeError,
    TransportError,
    UsageError,
)

if TYPE_CHECKING:
    from services.bus.security import KafkaSecuritySettings
    from services.kernel.envelope import Opened
    from services.kernel.registry import Registry
    from services.trust.keystore import Keystore

log = logging.getLogger("lianfang.audit")

AUDIT_VERSION: Final = 1
CHECKPOINT_PAYLOAD_TYPE: Final = "application/vnd.lianfang.audit-checkpoint.v1"
GENESIS: Final = "0" * 64
"""The ``prev_hash`` of a chain's first entry (seq 0)."""
MAX_LINE_BYTES: Final = 4096

Action = Literal[
    "publish",
    "route",
    "deadletter",
    "open_section",
    "console_view",
    "key_change",
    "registry_change",
    "acl_change",
]
ACTIONS: Final[tuple[str, ...]] = get_args(Action)

# A chain's actor: the participant whose key signs its checkpoints, then "/" and the chain's name when
# the participant writes several chains (one per process or per partition): ``police/sdk-1f2e3d4c``.
_ACTOR: Final = re.compile(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)?(/[a-z0-9][a-z0-9_.-]{0,63})?")
_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,199}")
_HASH: Final = re.compile(r"[0-9a-f]{64}")
# Identifiers that are personal data however they are spelled: mainland mobile and resident-ID numbers.
_PERSONAL: Final = (re.compile(r"1\d{10}"), re.compile(r"\d{17}[\dXx]"), re.compile(r"\d{15}"))
_ENTRY_KEYS: Final = frozenset(
    {"v", "seq", "time", "actor", "action", "subject", "object", "to", "prev_hash", "hash"}
)
MAX_RECIPIENTS: Final = 64
_CHECKPOINT_KEYS: Final = frozenset({"v", "actor", "seq", "hash", "time", "kid"})

KeyLookup = Callable[[str, str, datetime], bytes]
"""(participant, key id, time) -> raw Ed25519 public key; e.g. ``Registry.signing_key`` with ``at=``."""


def opened_object(opened: Opened) -> str:
    """The ``object`` of an ``open_section`` entry: ``<event id>/<sections opened, sorted, +-joined>``."""
    return f"{opened.header.id}/{'+'.join(sorted(opened.sections))}"


def principal(actor: str) -> str:
    """The participant an actor belongs to: ``police/sdk-1f2e3d4c`` -> ``police``."""
    return actor.split("/", 1)[0]


class AuditError(LianfangError, ValueError):
    """An audit entry cannot be made as asked (personal data, an unknown action, a broken chain)."""


def _check_id(value: str | None, what: str) -> None:
    if value is None:
        return
    if not _ID.fullmatch(value):
        raise AuditError(f"audit {what} must be an id (letters, digits, ._:@/+=-), not free text")
    if any(p.fullmatch(value) for p in _PERSONAL):
        raise AuditError(f"audit {what} looks like a phone or resident-ID number; record a pseudonym instead")


def _time_text(at: datetime) -> str:
    if at.tzinfo is None:
        raise UsageError("audit times must be timezone-aware")
    return at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One link of an actor's chain. Build with :func:`next_entry`; read with :func:`parse_line`."""

    seq: int
    time: str
    actor: str
    action: str
    subject: str | None
    object: str | None
    to: tuple[str, ...] | None
    prev_hash: str
    hash: str

    def body(self) -> dict[str, Any]:
        """Every field but ``hash``: what the hash covers."""
        return {
            "v": AUDIT_VERSION,
            "seq": self.seq,
            "time": self.time,
            "actor": self.actor,
            "action": self.action,
            "subject": self.subject,
            "object": self.object,
            "to": list(self.to) if self.to is not None else None,
            "prev_hash": self.prev_hash,
        }

    def computed_hash(self) -> str:
        return entry_hash(self.body())

    def to_line(self) -> bytes:
        return crypto.compact_json({**self.body(), "hash": self.hash})

    @property
    def at(self) -> datetime:
        return datetime.fromisoformat(self.time)


def entry_hash(body: dict[str, Any]) -> str:
    """SHA-256 (hex) over the canonical bytes of an entry's body, ``prev_hash`` included."""
    return hashlib.sha256(crypto.compact_json(body)).hexdigest()


def next_entry(
    head: AuditEntry | None,
    *,
    actor: str,
    action: Action,
    at: datetime,
    subject: str | None = None,
    object: str | None = None,
    to: Iterable[str] | None = None,
) -> AuditEntry:
    """The entry that follows ``head`` (``None``: the chain's first) in ``actor``'s chain.

    ``subject`` is a pseudonym, ``object`` an event, key or registry id, ``to`` the participants a
    routing decision delivered to.
    """
    if not _ACTOR.fullmatch(actor):
        raise AuditError(f"{actor!r} is not a participant or service id")
    if action not in ACTIONS:
        raise AuditError(f"unknown audit action {action!r}; one of {', '.join(ACTIONS)}")
    if head is not None and head.actor != actor:
        raise AuditError(f"the chain of {head.actor!r} cannot take an entry of {actor!r}")
    _check_id(subject, "subject")
    _check_id(object, "object")
    recipients = None if to is None else tuple(to)
    if recipients is not None:
        if len(recipients) > MAX_RECIPIENTS:
            raise AuditError(f"an audit entry names at most {MAX_RECIPIENTS} recipients")
        for participant in recipients:
            _check_id(participant, "recipient")
    seq, prev = (0, GENESIS) if head is None else (head.seq + 1, head.hash)
    partial = AuditEntry(seq, _time_text(at), actor, action, subject, object, recipients, prev, "")
    return AuditEntry(**{**_fields(partial), "hash": partial.computed_hash()})


def _fields(entry: AuditEntry) -> dict[str, Any]:
    return {name: getattr(entry, name) for name in AuditEntry.__slots__}


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement "the chain of ``actor`` had head ``hash`` at ``seq``", over exact bytes."""

    body: bytes
    signature: bytes = field(repr=False)
    actor: str
    seq: int
    hash: str
    time: str
    kid: str

    @classmethod
    def sign(cls, head: AuditEntry, key: Ed25519PrivateKey, kid: str, *, at: datetime) -> Checkpoint:
        body = crypto.compact_json(
            {
                "v": AUDIT_VERSION,
                "actor": head.actor,
                "seq": head.seq,
                "hash": head.hash,
                "time": _time_text(at),
                "kid": kid,
            }
        )
        return _parse_checkpoint_body(body, crypto.sign(key, CHECKPOINT_PAYLOAD_TYPE, body))

    def to_line(self) -> bytes:
        return crypto.compact_json({"checkpoint": crypto.b64e(self.body), "sig": crypto.b64e(self.signature)})

    def check_signature(self, keys: KeyLookup) -> None:
        """Raise :class:`BadSignatureError` (or the registry's key errors) unless the actor signed it."""
        public = keys(principal(self.actor), self.kid, datetime.fromisoformat(self.time))
        crypto.verify_signature(public, self.signature, CHECKPOINT_PAYLOAD_TYPE, self.body)


def _parse_checkpoint_body(body: bytes, signature: bytes) -> Checkpoint:
    raw = crypto.strict_json(body, what="audit checkpoint")
    if not isinstance(raw, dict) or set(raw) != _CHECKPOINT_KEYS or raw["v"] != AUDIT_VERSION:
        raise MalformedError(f"an audit checkpoint has exactly {sorted(_CHECKPOINT_KEYS)} and v=1")
    actor, seq, head, time, kid = raw["actor"], raw["seq"], raw["hash"], raw["time"], raw["kid"]
    if not (isinstance(actor, str) and _ACTOR.fullmatch(actor)):
        raise MalformedError("audit checkpoint: bad actor")
    if not (isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0):
        raise MalformedError("audit checkpoint: seq must be a non-negative integer")
    if not (isinstance(head, str) and _HASH.fullmatch(head)):
        raise MalformedError("audit checkpoint: hash must be 64 lower-case hex digits")
    if not isinstance(kid, str) or not isinstance(time, str):
        raise MalformedError("audit checkpoint: kid and time are strings")
    _parse_time(time, "audit checkpoint")
    return Checkpoint(body, signature, actor, seq, head, time, kid)


def _parse_time(text: str, what: str) -> None:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as e:
        raise MalformedError(f"{what}: time is not ISO 8601") from e
    if parsed.tzinfo is None:
        raise MalformedError(f"{what}: time has no timezone")


def parse_line(line: bytes) -> AuditEntry | Checkpoint:
    """One line of an audit file or one record of the audit topic (size-capped, strict JSON)."""
    if len(line) > MAX_LINE_BYTES:
        raise TooLargeError(f"an audit line is {len(line)} bytes; the limit is {MAX_LINE_BYTES}")
    raw = crypto.strict_json(line, what="audit line")
    if isinstance(raw, dict) and set(raw) == {"checkpoint", "sig"}:
        body = crypto.b64d(str(raw["checkpoint"]), what="audit checkpoint")
        return _parse_checkpoint_body(
            body, crypto.b64d(str(raw["sig"]), what="checkpoint signature", length=64)
        )
    if not isinstance(raw, dict) or set(raw) != _ENTRY_KEYS or raw["v"] != AUDIT_VERSION:
        raise MalformedError(f"an audit entry has exactly {sorted(_ENTRY_KEYS)} and v=1")
    seq = raw["seq"]
    if not (isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0):
        raise MalformedError("audit entry: seq must be a non-negative integer")
    for name in ("time", "actor", "action", "prev_hash", "hash"):
        if not isinstance(raw[name], str):
            raise MalformedError(f"audit entry: {name} must be a string")
    for name in ("subject", "object"):
        if raw[name] is not None and not isinstance(raw[name], str):
            raise MalformedError(f"audit entry: {name} must be a string or null")
    to = raw["to"]
    if to is not None and not (
        isinstance(to, list) and len(to) <= MAX_RECIPIENTS and all(isinstance(p, str) for p in to)
    ):
        raise MalformedError("audit entry: to must be a list of participant ids or null")
    if not (_HASH.fullmatch(raw["prev_hash"]) and _HASH.fullmatch(raw["hash"])):
        raise MalformedError("audit entry: hashes are 64 lower-case hex digits")
    _parse_time(raw["time"], "audit entry")
    return AuditEntry(
        seq,
        raw["time"],
        raw["actor"],
        raw["action"],
        raw["subject"],
        raw["object"],
        tuple(to) if to is not None else None,
        raw["prev_hash"],
        raw["hash"],
    )


# --------------------------------------------------------------------------- verification


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """What :func:`verify` found: ``ok``, or the first bad entry's ``bad_seq`` and what was wrong."""

    actor: str | None
    entries: int
    head_seq: int | None
    head_hash: str | None
    checkpoints_verified: int
    bad_seq: int | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def __str__(self) -> str:
        who = self.actor or "(empty)"
        if self.ok:
            head = f"head seq {self.head_seq} {self.head_hash}" if self.head_seq is not None else "no entries"
            return (
                f"{who}: ok, {self.entries} entries, {head}, {self.checkpoints_verified} signed checkpoint(s)"
            )
        return f"{who}: BAD at entry seq {self.bad_seq}: {self.problem}"


Problem = tuple[int, str]
"""(the seq of the first bad entry, what is wrong with it)."""


def _place_problem(entry: AuditEntry, position: int, seqs: set[int]) -> Problem | None:
    """Entry ``position`` must have seq ``position``: else one was removed, reordered or duplicated."""
    if entry.seq < position:
        return entry.seq, (
            f"entry seq {entry.seq} appears again at position {position} with other content "
            "(one of the two was edited, or it was inserted)"
        )
    if entry.seq > position and position in seqs:
        return position, f"entries are out of order: seq {entry.seq} stands where seq {position} belongs"
    if entry.seq > position:
        return position, f"entry seq {position} is missing (the next present is seq {entry.seq})"
    return None


def _link_problem(entries: Sequence[AuditEntry], actor: str | None) -> Problem | None:
    """The first entry out of place, edited, or not linked to its predecessor."""
    seqs = {e.seq for e in entries}
    prev_hash = GENESIS
    for position, entry in enumerate(entries):
        if entry.actor != actor:
            return position, f"entry seq {entry.seq} belongs to {entry.actor!r}, not to {actor!r}'s chain"
        if (misplaced := _place_problem(entry, position, seqs)) is not None:
            return misplaced
        if entry.computed_hash() != entry.hash:
            return entry.seq, f"entry seq {entry.seq} was edited: its content no longer matches its hash"
        if entry.prev_hash != prev_hash:
            if position == 0:
                return 0, "entry seq 0 does not start a chain (its prev_hash is not the genesis value)"
            return position - 1, (
                f"entry seq {position - 1} was rewritten: entry seq {entry.seq} committed to another hash"
            )
        prev_hash = entry.hash
    return None


def _checkpoint_problem(
    entries: Sequence[AuditEntry], cp: Checkpoint, actor: str | None, keys: KeyLookup
) -> Problem | None:
    if cp.actor != actor:
        return cp.seq, f"a checkpoint of {cp.actor!r} is mixed into {actor!r}'s chain"
    try:
        cp.check_signature(keys)
    except LianfangError as e:
        return cp.seq, f"the checkpoint at seq {cp.seq} does not verify: {e}"
    if cp.seq >= len(entries):
        missing = f"seq {len(entries)} to {cp.seq}"
        return len(entries), f"entries {missing} are missing: a signed checkpoint covers seq {cp.seq}"
    if entries[cp.seq].hash != cp.hash:
        return cp.seq, f"the chain up to seq {cp.seq} was rewritten: it differs from the signed checkpoint"
    return None


def verify(
    entries: Sequence[AuditEntry],
    checkpoints: Sequence[Checkpoint] = (),
    *,
    keys: KeyLookup | None = None,
    require_checkpoint: bool = False,
) -> VerifyResult:
    """Check one actor's chain, in the order given, from seq 0; then its checkpoints against it.

    Detects an edited entry (its hash), a rewritten one (the next entry's ``prev_hash``), a removed or
    reordered one (``seq`` out of place), and a cut-off tail or rewritten chain (a signed checkpoint).
    Checkpoint signatures are checked with ``keys``; without ``keys`` checkpoints are not trusted.
    """
    actor = entries[0].actor if entries else (checkpoints[0].actor if checkpoints else None)
    head = entries[-1] if entries else None
    verified = 0
    problem = _link_problem(entries, actor)
    if keys is not None and problem is None:
        for cp in checkpoints:
            problem = _checkpoint_problem(entries, cp, actor, keys)
            if problem is not None:
                break
            verified += 1
    if problem is None and require_checkpoint and head is not None and verified == 0:
        problem = (
            head.seq,
            (
                "no signed checkpoint covers this chain yet (a running writer signs its head every minute; "
                "checkpoints are checked with the registry's keys)"
            ),
        )
    bad_seq, text = problem if problem is not None else (None, None)
    return VerifyResult(
        actor,
        len(entries),
        head.seq if head else None,
        head.hash if head else None,
        verified,
        bad_seq,
        text,
    )


def verify_lines(
    lines: Iterable[bytes], *, keys: KeyLookup | None = None, require_checkpoint: bool = False
) -> list[VerifyResult]:
    """Parse audit lines (a file or the topic), split them by actor, verify each chain in order.

    A line that does not parse fails its chain at the seq it would have had (the actor's next).
    Byte-identical repeats of a line (re-sent after a crash) are read once.
    """
    chains: dict[str, tuple[list[AuditEntry], list[Checkpoint]]] = {}
    seen: dict[str, set[bytes]] = {}
    order: list[str] = []
    results: list[VerifyResult] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = parse_line(line.rstrip(b"\r\n"))
        except (MalformedError, TooLargeError) as e:
            after = order[-1] if order else None
            seq = len(chains[after][0]) if after else 0
            results.append(VerifyResult(after, 0, None, None, 0, seq, f"line {number} is unreadable: {e}"))
            continue
        if item.actor not in chains:
            chains[item.actor] = ([], [])
            seen[item.actor] = set()
            order.append(item.actor)
        # Shipping is at least once: a byte-identical copy of a line already read is a re-send, not an
        # edit; it adds nothing and is skipped. A *different* entry under a seen seq still fails.
        identity = line.strip()  # canonical bytes: a re-sent copy is identical, an edited one is not
        if identity in seen[item.actor]:
            continue
        seen[item.actor].add(identity)
        if isinstance(item, Checkpoint):
            chains[item.actor][1].append(item)
        else:
            chains[item.actor][0].append(item)
    for actor in order:
        entries, checkpoints = chains[actor]
        results.append(verify(entries, checkpoints, keys=keys, require_checkpoint=require_checkpoint))
    return results


# --------------------------------------------------------------------------- writing (I/O)


Publish = Callable[[bytes, bytes], None]
"""(key, value) -> None: hands one record to the audit topic (see :func:`kafka_sink`)."""


class Sink(Protocol):
    """Where a :class:`Shipper` sends audit lines: :class:`KafkaSink`, or a fake in unit tests."""

    def send(self, key: bytes, lines: Sequence[bytes]) -> None:
        """Return once every line is acknowledged, in order; raise :class:`TransportError` if not."""

    def cluster(self) -> str:
        """The id of the Kafka cluster the lines go to."""

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Signer:
    """The key that signs a chain's checkpoints: the actor's participant's active signing key."""

    key: Ed25519PrivateKey = field(repr=False)
    kid: str

    @classmethod
    def of(cls, keystore: Keystore, registry: Registry, at: datetime) -> Signer:
        """The keystore's participant's signing key that the registry accepts at ``at``."""
        from services.kernel.envelope import choose_signing_kid  # noqa: PLC0415 - keeps the core small

        kid = choose_signing_kid(keystore, registry, at)
        return cls(keystore.signing_key(kid), kid)


class AuditTrail:
    """Appends one actor's chain to a JSON-lines file and/or the audit topic; resumes an existing file.

    Appends are serialized by a lock; the file is flushed and fsync'ed after each line, so an entry that
    :meth:`append` returned is on disk before the audited action is acknowledged. With a ``signer`` the
    trail signs a checkpoint of its head every ``checkpoint_every_s`` seconds (checked at each append)
    and when it closes, so a cut-off tail is caught by ``audit verify --require-checkpoint``.
    """

    def __init__(
        self,
        actor: str,
        *,
        path: Path | None = None,
        publish: Publish | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
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
        if path is not None and path.exists():
            self.head = self._resume(path)
            self._checkpointed = self.head.seq if self.head is not None else None

    def _resume(self, path: Path) -> AuditEntry | None:
        """The head of the chain already in ``path``, after checking the whole chain."""
        lines = read_file(path)
        for result in verify_lines(lines):
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
    ) -> AuditEntry:
        with self._lock:
            entry = next_entry(
                self.head,
                actor=self.actor,
                action=action,
                at=self.clock(),
                subject=subject,
                object=object,
                to=to,
            )
            self._write(entry.to_line())
            self.head = entry
            self._checkpoint_if_due()
            return entry

    def checkpoint_if_due(self) -> Checkpoint | None:
        """Sign the head if ``checkpoint_every_s`` passed since the last checkpoint and it moved."""
        with self._lock:
            return self._checkpoint_if_due()

    def _checkpoint_if_due(self) -> Checkpoint | None:
        if self.signer is None or self.head is None or self._checkpointed == self.head.seq:
            return None
        if (self.clock() - self._last_checkpoint).total_seconds() < self.checkpoint_every_s:
            return None
        return self._checkpoint(self.signer)

    def checkpoint(self, key: Ed25519PrivateKey, kid: str) -> Checkpoint:
        """Sign the current head with the actor's key and append the checkpoint."""
        with self._lock:
            return self._checkpoint(Signer(key, kid))

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

    def _write(self, line: bytes) -> None:
        if self.path is not None:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line + b"\n")
                os.fsync(fd)
            except OSError as e:
                raise TransportError(f"cannot append to the audit file {self.path}: {e}") from e
            finally:
                os.close(fd)
        if self.publish is not None:
            self.publish(self.actor.encode(), line)


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
    in order), so an audited action waits for the disk, never for the broker.
    """

    def __init__(
        self,
        folder: Path,
        participant: str,
        role: str,
        *,
        signer: Signer | None = None,
        ship: Sink | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        checkpoint_every_s: float = 60.0,
    ) -> None:
        import fcntl  # noqa: PLC0415 - POSIX only, like the services

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
            Shipper(path, ship, tick=self.trail.checkpoint_if_due, chain=actor) if ship is not None else None
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
    ) -> AuditEntry:
        entry = self.trail.append(action, subject=subject, object=object, to=to)
        if self.shipper is not None:
            self.shipper.wake()
        return entry

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
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    checkpoint_every_s: float = 60.0,
) -> LocalTrail:
    """The :class:`LocalTrail` of ``keystore``'s participant in ``folder/<participant>/``, its checkpoints
    signed with the participant's signing key that the registry accepts now."""
    return LocalTrail(
        folder / keystore.participant,
        keystore.participant,
        role,
        signer=Signer.of(keystore, registry, clock()),
        ship=ship,
        clock=clock,
        checkpoint_every_s=checkpoint_every_s,
    )


class Shipper:
    """Copies the lines appended to an audit file onto the audit topic, in order, at least once.

    A background thread sends from the byte offset recorded in ``<file>.shipped`` to the end of the
    file, and moves the offset only after the broker acknowledged the lines. After a crash the lines
    past the recorded offset are sent again; :func:`verify_lines` reads such identical copies once.
    While the broker is away lines wait in the file; ``pending_bytes`` says how much. The mark names
    the Kafka cluster it counts for: on another cluster (a new one, or Kafka started afresh) the whole
    chain is sent again, so every chain on a topic starts at seq 0.
    """

    MAX_LINES_PER_SEND = 1000

    def __init__(
        self,
        path: Path,
        sink: Sink,
        *,
        retry_s: float = 2.0,
        tick: Callable[[], object] | None = None,
        chain: str = "",
    ) -> None:
        self.path = path
        self.chain = chain or path.stem
        self.sink = sink
        self.retry_s = retry_s
        self.tick = tick
        self.marker = path.with_name(path.name + ".shipped")
        self.offset, self.cluster = self._read_marker()
        self._checked_cluster = False
        self.failures = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"audit-shipper-{path.name}", daemon=True)
        self._thread.start()
        audit_metrics.watch(self)

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
        """Send every complete line past the mark; move the mark; return how many lines were sent."""
        self._check_cluster()
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
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
            self._wake.wait(timeout=1.0)  # new lines wake it; the timeout retries after failures
            self._wake.clear()
            if self.tick is not None:
                try:
                    self.tick()
                except LianfangError as e:  # e.g. the disk: the next append reports it to its caller
                    log.warning("audit checkpoint of %s not written: %s", self.path.name, type(e).__name__)
            self._attempt()

    def _attempt(self) -> bool:
        try:
            while self.ship_once():
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
            audit_metrics.forget(self)


# --------------------------------------------------------------------------- Kafka edges


class KafkaSink:
    """Sends audit lines to the audit topic (acks=all, idempotent), keyed by actor so one chain stays in
    one partition, in order. The producer is made on first use, so a sink can exist while the broker is
    away; every failure is a :class:`TransportError`."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        security: KafkaSecuritySettings | None = None,
        *,
        timeout_s: float = 30.0,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.security = security
        self.timeout_s = timeout_s
        self._producer: Any = None

    def _client(self) -> Any:
        from kafka import KafkaProducer  # noqa: PLC0415 - the pure core does not need the client
        from kafka.errors import KafkaError  # noqa: PLC0415

        from services.bus.cluster import DURABLE_PRODUCER  # noqa: PLC0415
        from services.bus.security import kafka_python_kwargs  # noqa: PLC0415

        if self._producer is None:
            extra = kafka_python_kwargs(self.security) if self.security is not None else {}
            try:
                self._producer = KafkaProducer(
                    bootstrap_servers=self.bootstrap,
                    client_id="lianfang-audit",
                    max_block_ms=int(self.timeout_s * 1000),
                    **DURABLE_PRODUCER,
                    **extra,
                )
            except KafkaError as e:
                raise TransportError(
                    f"cannot reach Kafka at {self.bootstrap} for the audit trail: {e}"
                ) from e
        return self._producer

    def send(self, key: bytes, lines: Sequence[bytes]) -> None:
        """Send ``lines`` in order and return once the broker acknowledged every one."""
        from kafka.errors import KafkaError  # noqa: PLC0415

        producer = self._client()
        try:
            futures = [producer.send(self.topic, key=key, value=line) for line in lines]
            producer.flush(timeout=self.timeout_s)
            for future in futures:
                future.get(timeout=self.timeout_s)
        except KafkaError as e:
            raise TransportError(f"publishing audit entries to {self.topic} failed: {e}") from e

    def cluster(self) -> str:
        from kafka.errors import KafkaError  # noqa: PLC0415

        producer = self._client()
        try:
            producer.partitions_for(self.topic)  # fetches the metadata, which names the cluster
        except KafkaError as e:
            raise TransportError(f"no metadata for {self.topic} from {self.bootstrap}: {e}") from e
        # kafka-python keeps the metadata it received in the producer's ClusterMetadata.
        return str(producer._metadata.cluster_id or "")

    def __call__(self, key: bytes, value: bytes) -> None:
        self.send(key, [value])

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=5)
            self._producer = None


def kafka_sink(
    bootstrap: str, topic: str, security: KafkaSecuritySettings | None = None
) -> tuple[Publish, Callable[[], None]]:
    """A synchronous publisher of single lines to the audit topic and its close function."""
    sink = KafkaSink(bootstrap, topic, security)
    return sink, sink.close


def read_topic(
    bootstrap: str, topic: str, security: KafkaSecuritySettings | None = None, *, timeout_s: float = 30.0
) -> list[bytes]:
    """Every record of the audit topic, partition by partition, from the start to the current end."""
    import time  # noqa: PLC0415

    from kafka import KafkaConsumer, TopicPartition  # noqa: PLC0415
    from kafka.errors import KafkaError  # noqa: PLC0415

    from services.bus.security import kafka_python_kwargs  # noqa: PLC0415

    extra = kafka_python_kwargs(security) if security is not None else {}
    lines: list[bytes] = []
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            client_id="lianfang-audit-verify",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # The router writes its entries in transactions: an aborted one's records are not entries.
            isolation_level="read_committed",
            **extra,
        )
    except KafkaError as e:
        raise TransportError(f"cannot reach Kafka at {bootstrap} to read {topic}: {e}") from e
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise TransportError(f"the audit topic {topic} does not exist or is not readable")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout_s
        by_partition: dict[int, list[bytes]] = {tp.partition: [] for tp in tps}
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TransportError(f"reading {topic} did not reach its end within {timeout_s:.0f} s")
            for tp, records in consumer.poll(timeout_ms=500).items():
                by_partition[tp.partition] += [r.value for r in records if r.value is not None]
        for p in sorted(by_partition):
            lines += by_partition[p]
    except KafkaError as e:
        raise TransportError(f"reading {topic} failed: {e}") from e
    finally:
        consumer.close()
    return lines


__all__ = [
    "ACTIONS",
    "GENESIS",
    "Action",
    "AuditEntry",
    "AuditError",
    "AuditTrail",
    "Checkpoint",
    "KafkaSink",
    "LocalTrail",
    "Shipper",
    "Signer",
    "VerifyResult",
    "entry_hash",
    "kafka_sink",
    "next_entry",
    "opened_object",
    "parse_line",
    "participant_trail",
    "principal",
    "read_file",
    "read_topic",
    "verify",
    "verify_lines",
]
