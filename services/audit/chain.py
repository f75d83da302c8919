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

This module is the pure core: :func:`next_entry`, :func:`parse_line`, :func:`verify`,
:func:`verify_lines` take bytes, keys and times and return results or raise; they touch no file,
thread or Kafka (:mod:`services.audit.trail`, :mod:`services.audit.shipping` and
:mod:`services.audit.kafka` do).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal, get_args

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.kernel import crypto, jsonx
from services.kernel.errors import LianfangError, MalformedError, TooLargeError, UsageError

if TYPE_CHECKING:
    from services.kernel.envelope import Opened

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
        return jsonx.compact_json({**self.body(), "hash": self.hash})

    @property
    def at(self) -> datetime:
        return datetime.fromisoformat(self.time)


def entry_hash(body: dict[str, Any]) -> str:
    """SHA-256 (hex) over the canonical bytes of an entry's body, ``prev_hash`` included."""
    return hashlib.sha256(jsonx.compact_json(body)).hexdigest()


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
        body = jsonx.compact_json(
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
        return jsonx.compact_json({"checkpoint": crypto.b64e(self.body), "sig": crypto.b64e(self.signature)})

    def check_signature(self, keys: KeyLookup) -> None:
        """Raise :class:`BadSignatureError` (or the registry's key errors) unless the actor signed it."""
        public = keys(principal(self.actor), self.kid, datetime.fromisoformat(self.time))
        crypto.verify_signature(public, self.signature, CHECKPOINT_PAYLOAD_TYPE, self.body)


def _parse_checkpoint_body(body: bytes, signature: bytes) -> Checkpoint:
    raw = jsonx.strict_json(body, what="audit checkpoint")
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
    raw = jsonx.strict_json(line, what="audit line")
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


BadEntry = tuple[int, str]
"""(the seq of the first bad entry, what is wrong with it)."""


def _place_problem(entry: AuditEntry, position: int, seqs: set[int]) -> BadEntry | None:
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


def _link_problem(entries: Sequence[AuditEntry], actor: str | None) -> BadEntry | None:
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
) -> BadEntry | None:
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


__all__ = [
    "ACTIONS",
    "GENESIS",
    "Action",
    "AuditEntry",
    "AuditError",
    "Checkpoint",
    "KeyLookup",
    "VerifyResult",
    "entry_hash",
    "next_entry",
    "opened_object",
    "parse_line",
    "principal",
    "verify",
    "verify_lines",
]
