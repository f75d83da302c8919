"""A tamper-evident audit trail: signed hash chains of entries, with signed checkpoints of their heads.

Each entry says who (``actor``) did what (``action``) to which ids (``subject``: a pseudonym,
``object``: an event, key or registry id; ``to``: the participants a routing decision delivered to)
and when — never personal data: ids are checked against a narrow alphabet and things that look like
phone or resident-ID numbers are refused. Each entry carries the previous entry's hash; its own hash is
SHA-256 over its canonical bytes (compact JSON, sorted keys) including ``prev_hash``, so editing,
removing or reordering an entry breaks the chain at that entry.

Any participant may append to the audit topic, so a hash chain alone proves nothing about who wrote
it. Each entry is therefore signed (Ed25519, DSSE PAE over the exact characters of its ``hash``) by
a key of its actor's participant, named by ``kid`` inside the hashed body. Verification
(:func:`verify_lines`) checks, for each line, in this order:

1. it parses (size cap, strict JSON, exact fields), else it is *unreadable*: reported by its position,
   blamed on no actor;
2. its signature verifies with key ``kid`` of the actor's participant in the registry at the entry's
   time, else it is *forged*: set aside with its position, and it does not take part in the chain it
   claims (so nobody can frame a writer by appending under its name); an entry without a signature
   (``v`` 1: the format before entries were signed, and the router's entries, which the checkpoint
   ending their transaction vouches for) is *unsigned* and set aside unless a signed entry
   or checkpoint of its chain commits to its hash;
3. the genuine entries of each actor form one unbroken chain from seq 0: an edited, removed, reordered
   or duplicated entry makes it *broken at seq N*;
4. signed checkpoints (the actor's head ``seq`` and ``hash``, signed the same way) match the chain: a
   checkpoint beyond the chain's end is a cut tail, one with another hash a rewritten chain. Entries
   after the last checkpoint are *unproven*: each is genuine, but whether entries after them were cut
   off cannot be known until a checkpoint covers them.

An actor names one chain and one writer: a participant id, then ``/`` and the writer when the
participant writes several chains (``police/sdk-1f2e3d4c``, ``router/lianfang-router.p7``); its
entries and checkpoints are signed with that participant's key (:func:`principal`).

On disk and on ``lianfang.audit.v1`` an entry is one line of canonical JSON with ``sig`` added; a
checkpoint is one line ``{"checkpoint": b64(body), "sig": b64(signature)}``. The topic is keyed by
actor, so one partition holds a chain in order.

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
from services.kernel.envelope import choose_signing_kid
from services.kernel.errors import (
    BadSignatureError,
    LianfangError,
    MalformedError,
    TooLargeError,
    UsageError,
)

if TYPE_CHECKING:
    from services.kernel.envelope import Opened
    from services.kernel.keystore import Keystore
    from services.kernel.registry import Registry

AUDIT_VERSION: Final = 1
"""The version of a checkpoint, and of an unsigned entry: one written before entries were signed, or by
the router, whose transaction ends with a signed checkpoint that vouches for it."""
SIGNED_VERSION: Final = 2
"""The version of a signed entry: ``kid`` inside the hashed body, ``sig`` beside it."""
CHECKPOINT_PAYLOAD_TYPE: Final = "application/vnd.lianfang.audit-checkpoint.v1"
ENTRY_PAYLOAD_TYPE: Final = "application/vnd.lianfang.audit-entry.v2"
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
    "pseudonymize",
]
ACTIONS: Final[tuple[str, ...]] = get_args(Action)

# A chain's actor: the participant whose key signs its checkpoints, then "/" and the chain's name when
# the participant writes several chains (one per process or per partition): ``police/sdk-1f2e3d4c``.
_ACTOR: Final = re.compile(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)?(/[a-z0-9][a-z0-9_.-]{0,63})?")
_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,199}")
_HASH: Final = re.compile(r"[0-9a-f]{64}")
# Identifiers that are personal data however they are spelled: mainland mobile and resident-ID numbers.
_PERSONAL: Final = re.compile(r"1\d{10}|\d{17}[\dXx]|\d{15}")  # the whole value: mobile, 18- or 15-digit ID
_ENTRY_KEYS: Final = frozenset(
    {"v", "seq", "time", "actor", "action", "subject", "object", "to", "prev_hash", "hash"}
)
_SIGNED_ENTRY_KEYS: Final = _ENTRY_KEYS | {"kid", "sig"}
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


@dataclass(frozen=True, slots=True)
class Signer:
    """The key that signs a chain's entries and checkpoints: the actor's participant's signing key."""

    key: Ed25519PrivateKey = field(repr=False)
    kid: str

    @classmethod
    def of(cls, keystore: Keystore, registry: Registry, at: datetime) -> Signer:
        """The keystore's participant's signing key that the registry accepts at ``at``."""
        kid = choose_signing_kid(keystore, registry, at)
        return cls(keystore.signing_key(kid), kid)


def _check_id(value: str | None, what: str) -> None:
    if value is None:
        return
    if not _ID.fullmatch(value):
        raise AuditError(f"audit {what} must be an id (letters, digits, ._:@/+=-), not free text")
    if _PERSONAL.fullmatch(value):
        raise AuditError(f"audit {what} looks like a phone or resident-ID number; record a pseudonym instead")


def _time_text(at: datetime) -> str:
    if at.tzinfo is None:
        raise UsageError("audit times must be timezone-aware")
    return at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One link of an actor's chain. Build with :func:`next_entry`; read with :func:`parse_line`.

    ``kid`` and ``sig`` are ``None`` in an unsigned entry (``v`` 1): one written before entries were
    signed, or one of the router's, vouched for by the checkpoint of its transaction.
    """

    seq: int
    time: str
    actor: str
    action: str
    subject: str | None
    object: str | None
    to: tuple[str, ...] | None
    prev_hash: str
    hash: str
    kid: str | None = None
    sig: bytes | None = field(default=None, repr=False)

    def body(self) -> dict[str, Any]:
        """Every field but ``hash`` and ``sig``: what the hash covers (``kid`` included)."""
        return _body(
            seq=self.seq,
            time=self.time,
            actor=self.actor,
            action=self.action,
            subject=self.subject,
            object=self.object,
            to=self.to,
            prev_hash=self.prev_hash,
            kid=self.kid,
        )

    def computed_hash(self) -> str:
        return entry_hash(self.body())

    def to_line(self) -> bytes:
        line = {**self.body(), "hash": self.hash}
        if self.sig is not None:
            line["sig"] = crypto.b64e(self.sig)
        return jsonx.compact_json(line)

    def check_signature(self, keys: KeyLookup) -> None:
        """Raise :class:`BadSignatureError` (or the registry's key errors) unless key ``kid`` of the
        actor's participant signed this entry's ``hash``. The hash's match with the content is the
        chain's check (:func:`verify`), so an edited entry is *broken*, not *forged*."""
        if self.kid is None or self.sig is None:
            raise BadSignatureError("the entry is not signed")
        public = keys(principal(self.actor), self.kid, self.at)
        crypto.verify_signature(public, self.sig, ENTRY_PAYLOAD_TYPE, self.hash.encode("ascii"))

    @property
    def at(self) -> datetime:
        return datetime.fromisoformat(self.time)


def _body(
    *,
    seq: int,
    time: str,
    actor: str,
    action: str,
    subject: str | None,
    object: str | None,
    to: tuple[str, ...] | None,
    prev_hash: str,
    kid: str | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "v": AUDIT_VERSION if kid is None else SIGNED_VERSION,
        "seq": seq,
        "time": time,
        "actor": actor,
        "action": action,
        "subject": subject,
        "object": object,
        "to": list(to) if to is not None else None,
        "prev_hash": prev_hash,
    }
    if kid is not None:
        body["kid"] = kid
    return body


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
    signer: Signer | None = None,
) -> AuditEntry:
    """The entry that follows ``head`` (``None``: the chain's first) in ``actor``'s chain.

    ``subject`` is a pseudonym, ``object`` an event, key or registry id, ``to`` the participants a
    routing decision delivered to. With ``signer`` (a key of the actor's participant) the entry is
    signed; without, it is an unsigned entry that verification sets aside unless a signed checkpoint
    or a later signed entry of its chain vouches for it.
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
    kid = signer.kid if signer is not None else None
    time = _time_text(at)
    body = _body(
        seq=seq,
        time=time,
        actor=actor,
        action=action,
        subject=subject,
        object=object,
        to=recipients,
        prev_hash=prev,
        kid=kid,
    )
    digest = entry_hash(body)
    sig = None if signer is None else crypto.sign(signer.key, ENTRY_PAYLOAD_TYPE, digest.encode("ascii"))
    return AuditEntry(seq, time, actor, action, subject, object, recipients, prev, digest, kid, sig)


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
    return _parse_entry(raw)


def _parse_entry(raw: Any) -> AuditEntry:
    version = raw.get("v") if isinstance(raw, dict) else None
    keys = {AUDIT_VERSION: _ENTRY_KEYS, SIGNED_VERSION: _SIGNED_ENTRY_KEYS}.get(
        version if type(version) is int else -1
    )
    if not isinstance(raw, dict) or keys is None or set(raw) != keys:
        raise MalformedError(
            f"an audit entry has exactly {sorted(_SIGNED_ENTRY_KEYS)} and v=2 "
            f"(or, written before entries were signed, {sorted(_ENTRY_KEYS)} and v=1)"
        )
    seq = raw["seq"]
    if not (isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0):
        raise MalformedError("audit entry: seq must be a non-negative integer")
    for name in ("time", "actor", "action", "prev_hash", "hash"):
        if not isinstance(raw[name], str):
            raise MalformedError(f"audit entry: {name} must be a string")
    if not _ACTOR.fullmatch(raw["actor"]):
        raise MalformedError("audit entry: bad actor")
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
    kid, sig = _parse_signature(raw) if keys is _SIGNED_ENTRY_KEYS else (None, None)
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
        kid,
        sig,
    )


def _parse_signature(raw: dict[str, Any]) -> tuple[str, bytes]:
    kid, sig = raw["kid"], raw["sig"]
    if not (isinstance(kid, str) and _ID.fullmatch(kid)):
        raise MalformedError("audit entry: kid must be a key id")
    if not isinstance(sig, str):
        raise MalformedError("audit entry: sig must be a base64 string")
    return kid, crypto.b64d(sig, what="audit entry signature", length=64)


# --------------------------------------------------------------------------- verification


SetAsideKind = Literal["forged", "unsigned", "unreadable"]


@dataclass(frozen=True, slots=True)
class SetAside:
    """A line that takes part in no chain: *forged* (its signature does not verify with a key of the
    participant it claims), *unsigned* (no signature, and nothing signed vouches for it) or
    *unreadable* (it does not parse: it claims no actor, and none is blamed)."""

    position: int
    """The line's number (1-based) in the file, or the record's in the topic (partition by partition)."""
    kind: SetAsideKind
    reason: str
    actor: str | None = None
    what: str = "line"

    def __str__(self) -> str:
        if self.actor is None:
            return f"line {self.position}: UNREADABLE, blamed on no actor: {self.reason}"
        return f"line {self.position}: {self.kind.upper()} {self.what} claiming {self.actor}: {self.reason}"


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """What :func:`verify` found of one actor's chain.

    ``ok``: the genuine entries form an unbroken chain (else ``bad_seq`` and ``problem`` say where and
    what broke). ``proven_seq``: the highest seq a verified checkpoint covers; the entries after it are
    ``unproven``. ``set_aside``: lines that claimed this actor but are forged or unsigned.
    """

    actor: str | None
    entries: int
    head_seq: int | None
    head_hash: str | None
    checkpoints_verified: int
    bad_seq: int | None = None
    problem: str | None = None
    proven_seq: int | None = None
    set_aside: tuple[SetAside, ...] = ()
    signatures_checked: bool = True

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def unproven(self) -> int:
        """How many genuine entries no verified checkpoint covers (every one if no key was checked)."""
        if self.head_seq is None:
            return 0
        if not self.signatures_checked:
            return self.entries
        return max(0, self.head_seq - (-1 if self.proven_seq is None else self.proven_seq))

    def __str__(self) -> str:
        who = self.actor or "(empty)"
        if not self.ok:
            text = f"{who}: BROKEN at seq {self.bad_seq}: {self.problem}"
        else:
            if self.head_seq is None:
                text = f"{who}: no genuine entries"
            else:
                state = "ok" if not self.unproven else "UNPROVEN"
                text = (
                    f"{who}: {state}, {self.entries} entries, head seq {self.head_seq} {self.head_hash}, "
                    f"{self.checkpoints_verified} signed checkpoint(s)"
                )
            if not self.signatures_checked:
                text += "; no signature or checkpoint was checked (no registry): the links hold, nothing more"
            elif self.unproven:
                first = 0 if self.proven_seq is None else self.proven_seq + 1
                text += (
                    f"; tail unproven: seq {first} to {self.head_seq} ({self.unproven} entries) come after "
                    "the last signed checkpoint, so entries cut off after them cannot be detected"
                )
        if self.set_aside:
            kinds = sorted({s.kind for s in self.set_aside})
            text += f"; {len(self.set_aside)} {'/'.join(kinds)} line(s) claiming {who} set aside"
        return text


Status = Literal["ok", "unproven", "forged", "broken"]
"""What a whole audit trail amounts to, worst first: ``broken`` (a genuine chain has an entry missing,
edited or out of order, or a signed checkpoint that does not match), ``forged`` (lines no writer can
be held to were set aside: forged, unsigned or unreadable), ``unproven`` (a tail no checkpoint covers,
when checkpoints are required; or no signature could be checked), ``ok``."""


@dataclass(frozen=True, slots=True)
class AuditReport:
    """What :func:`verify_lines` found: each actor's chain, and the lines that belong to none."""

    chains: tuple[VerifyResult, ...]
    unreadable: tuple[SetAside, ...] = ()
    require_checkpoint: bool = False

    @property
    def set_aside(self) -> tuple[SetAside, ...]:
        """Every forged, unsigned and unreadable line, in the order they were read."""
        every = [*self.unreadable, *(s for chain in self.chains for s in chain.set_aside)]
        return tuple(sorted(every, key=lambda s: s.position))

    @property
    def status(self) -> Status:
        if any(not chain.ok for chain in self.chains):
            return "broken"
        if self.set_aside:
            return "forged"
        if any(not chain.signatures_checked for chain in self.chains):
            return "unproven"
        if self.require_checkpoint and any(chain.unproven for chain in self.chains):
            return "unproven"
        return "ok"


BadEntry = tuple[int, str]
"""(the seq of the first bad entry, what is wrong with it)."""
Numbered = tuple[list[int], AuditEntry]
"""An entry and the positions (1-based) of the lines it was read from: more than one if re-sent."""
NumberedCheckpoint = tuple[int, Checkpoint]


def _by_seq(entries: Sequence[Numbered], actor: str | None) -> dict[int, Numbered] | BadEntry:
    """The entries by seq, 0 to the highest; or the first of another chain, present twice or missing."""
    by_seq: dict[int, Numbered] = {}
    again: set[int] = set()
    for positions, entry in entries:
        if entry.actor != actor:
            return entry.seq, f"entry seq {entry.seq} belongs to {entry.actor!r}, not to {actor!r}'s chain"
        if entry.seq in by_seq:
            again.add(entry.seq)
        by_seq.setdefault(entry.seq, (positions, entry))
    for seq in range(max(by_seq, default=-1) + 1):
        if seq in again:
            return seq, f"entry seq {seq} appears twice with other content (one was edited, or inserted)"
        if seq not in by_seq:
            following = min(s for s in by_seq if s > seq)
            return seq, f"entry seq {seq} is missing (the next present is seq {following})"
    return by_seq


def _link_problem(entries: Sequence[Numbered], actor: str | None) -> BadEntry | None:
    """The first seq missing, present twice, out of place, edited, or not linked to its predecessor.

    Each entry comes with the positions it was read at: a line re-sent (by its shipper, or by anyone,
    to any partition of the topic) is one entry read at several places, and it is in order if one of
    them comes after its predecessor's.
    """
    by_seq = _by_seq(entries, actor)
    if isinstance(by_seq, tuple):
        return by_seq
    prev_hash, prev_position = GENESIS, 0
    for seq, (positions, entry) in sorted(by_seq.items()):
        later = [p for p in positions if p > prev_position]
        if not later:
            return seq - 1, f"entries are out of order: seq {seq} stands before seq {seq - 1}"
        prev_position = min(later)
        if entry.computed_hash() != entry.hash:
            return seq, f"entry seq {seq} was edited: its content no longer matches its hash"
        if entry.prev_hash != prev_hash:
            if seq == 0:
                return 0, "entry seq 0 does not start a chain (its prev_hash is not the genesis value)"
            return seq - 1, f"entry seq {seq - 1} was rewritten: entry seq {seq} committed to another hash"
        prev_hash = entry.hash
    return None


def _checkpoint_problem(entries: Sequence[AuditEntry], cp: Checkpoint) -> BadEntry | None:
    """A verified checkpoint that the (unbroken) chain does not reach, or reaches with another hash."""
    if cp.seq >= len(entries):
        missing = f"seq {len(entries)} to {cp.seq}"
        return len(entries), f"entries {missing} are missing: a signed checkpoint covers seq {cp.seq}"
    if entries[cp.seq].hash != cp.hash:
        return cp.seq, f"the chain up to seq {cp.seq} was rewritten: it differs from the signed checkpoint"
    return None


def _sort_out(
    actor: str, entries: Sequence[Numbered], checkpoints: Sequence[NumberedCheckpoint], keys: KeyLookup
) -> tuple[list[Numbered], list[Checkpoint], list[SetAside]]:
    """The genuine entries (in the order read) and verified checkpoints of ``actor``'s chain, and the
    lines that claim it but are set aside."""
    aside: list[SetAside] = []
    signed: list[Numbered] = []
    unsigned: list[Numbered] = []
    for positions, entry in entries:
        if entry.kid is None:
            unsigned.append((positions, entry))
            continue
        try:
            entry.check_signature(keys)
        except LianfangError as e:
            reason = f"not signed by a key of {principal(actor)!r} ({e})"
            aside.append(SetAside(positions[0], "forged", reason, actor, f"entry seq {entry.seq}"))
            continue
        signed.append((positions, entry))
    # A signature covers the hash, not the content. A signed entry whose content does not match its
    # hash is an edit of a genuine entry: if the genuine, intact entry is present too, the edited one
    # is a copy someone appended (the chain holds); if not, the chain itself was edited (broken).
    intact = {entry.hash for _, entry in signed if entry.computed_hash() == entry.hash}
    genuine: list[Numbered] = []
    for positions, entry in signed:
        if entry.computed_hash() != entry.hash and entry.hash in intact:
            reason = f"an altered copy of entry seq {entry.seq}: its content does not match the hash signed"
            aside.append(SetAside(positions[0], "forged", reason, actor, f"entry seq {entry.seq}"))
        else:
            genuine.append((positions, entry))
    verified: list[Checkpoint] = []
    for position, cp in checkpoints:
        try:
            if cp.actor != actor:
                raise BadSignatureError(f"it is a checkpoint of {cp.actor!r}")
            cp.check_signature(keys)
        except LianfangError as e:
            reason = f"not signed by a key of {principal(actor)!r} ({e})"
            aside.append(SetAside(position, "forged", reason, actor, f"checkpoint of seq {cp.seq}"))
            continue
        verified.append(cp)
    # An unsigned entry (written before entries were signed, or the router's) counts only where
    # something signed commits to its hash: the next entry's prev_hash, or a checkpoint. Walking down
    # from the top seq reaches every entry of such a chain's signed-for prefix.
    vouched = {entry.prev_hash for _, entry in genuine} | {cp.hash for cp in verified}
    for positions, entry in sorted(unsigned, key=lambda item: -item[1].seq):
        if entry.hash in vouched and entry.computed_hash() == entry.hash:
            genuine.append((positions, entry))
            vouched.add(entry.prev_hash)
        else:
            reason = "no signature, and no signed entry or checkpoint of its chain commits to it"
            aside.append(SetAside(positions[0], "unsigned", reason, actor, f"entry seq {entry.seq}"))
    genuine.sort(key=lambda item: item[0][0])
    return genuine, verified, aside


def _verify_chain(
    actor: str | None,
    entries: Sequence[Numbered],
    checkpoints: Sequence[NumberedCheckpoint],
    keys: KeyLookup | None,
) -> VerifyResult:
    verified: list[Checkpoint] = []
    aside: list[SetAside] = []
    genuine = list(entries)
    if keys is not None and actor is not None:
        genuine, verified, aside = _sort_out(actor, entries, checkpoints, keys)
    problem = _link_problem(genuine, actor)
    chain = sorted((entry for _, entry in genuine), key=lambda e: e.seq)
    for cp in sorted(verified, key=lambda c: c.seq):
        if problem is not None:
            break
        problem = _checkpoint_problem(chain, cp)
    head = chain[-1] if chain else None
    bad_seq, text = problem if problem is not None else (None, None)
    return VerifyResult(
        actor,
        len(chain),
        head.seq if head else None,
        head.hash if head else None,
        len(verified),
        bad_seq,
        text,
        proven_seq=max((cp.seq for cp in verified), default=None),
        set_aside=tuple(sorted(aside, key=lambda s: s.position)),
        signatures_checked=keys is not None,
    )


def verify(
    entries: Sequence[AuditEntry], checkpoints: Sequence[Checkpoint] = (), *, keys: KeyLookup | None = None
) -> VerifyResult:
    """Check one actor's chain, in the order given, from seq 0; then its checkpoints against it.

    With ``keys`` (the registry's signing keys) forged entries and checkpoints are set aside first, and
    unsigned entries unless something signed vouches for them; the rest must form an unbroken chain:
    an edited entry (its hash), a rewritten one (the next entry's ``prev_hash``), a removed or reordered
    one (``seq`` out of place), and a cut-off tail or rewritten chain (a signed checkpoint) break it.
    Without ``keys`` every entry takes part and only the links are checked. Positions count entries
    first, then checkpoints, from 1.
    """
    actor = entries[0].actor if entries else (checkpoints[0].actor if checkpoints else None)
    numbered = [([position], entry) for position, entry in enumerate(entries, start=1)]
    numbered_cps = list(enumerate(checkpoints, start=len(entries) + 1))
    return _verify_chain(actor, numbered, numbered_cps, keys)


def verify_lines(
    lines: Iterable[bytes], *, keys: KeyLookup | None = None, require_checkpoint: bool = False
) -> AuditReport:
    """Parse audit lines (a file or the topic), split them by actor, verify each chain in order.

    A line that does not parse is reported by its position and blamed on no actor: it says nothing
    reliable about whom it came from. Repeats of a line (re-sent after a crash, or by anyone) are one
    entry, in order if any of its places is. ``require_checkpoint`` makes an unproven tail fail the
    report's :attr:`~AuditReport.status`.
    """
    chains: dict[str, tuple[list[Numbered], list[NumberedCheckpoint]]] = {}
    seen: dict[bytes, list[int]] = {}  # a line's canonical bytes -> the positions it was read at
    unreadable: list[SetAside] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = parse_line(line.rstrip(b"\r\n"))
        except (MalformedError, TooLargeError) as e:
            unreadable.append(SetAside(number, "unreadable", str(e)))
            continue
        # Shipping is at least once: a copy of a line already read is a re-send, not an edit; it is
        # one entry read at two places. Copies are compared in canonical form, so one re-spaced by
        # whoever appended it is a copy too. A *different* entry under a seen seq still counts.
        identity = item.to_line()
        if identity in seen:
            seen[identity].append(number)
            continue
        seen[identity] = positions = [number]
        entries, checkpoints = chains.setdefault(item.actor, ([], []))
        if isinstance(item, Checkpoint):
            checkpoints.append((number, item))
        else:
            entries.append((positions, item))
    results = tuple(_verify_chain(actor, es, cps, keys) for actor, (es, cps) in chains.items())
    return AuditReport(results, tuple(unreadable), require_checkpoint)


__all__ = [
    "ACTIONS",
    "GENESIS",
    "Action",
    "AuditEntry",
    "AuditError",
    "AuditReport",
    "Checkpoint",
    "KeyLookup",
    "SetAside",
    "Signer",
    "Status",
    "VerifyResult",
    "entry_hash",
    "next_entry",
    "opened_object",
    "parse_line",
    "principal",
    "verify",
    "verify_lines",
]
