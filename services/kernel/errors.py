"""One exception base for the kernel, split by blame.

- :class:`UntrustedInputError`: the bytes we were given are bad (a record from the bus, a registry
  file, a request body). Each carries a stable :data:`ReasonCode` used by the dead-letter topic and
  metrics. Three codes are the router's own: ``misplaced`` (:class:`MisplacedError`), ``time_skew``
  (:class:`TimeSkewError`) and ``internal``, which has no exception class: it dead-letters a record
  whose handling met a bug, not a bad input.
- :class:`TransportError`: Kafka or the file system failed us; retrying may help.
- :class:`UsageError`: the caller (our own code or an operator) asked for something impossible.

:func:`validation_summary` turns pydantic's ``ValidationError`` into the one line these errors carry.
"""

from __future__ import annotations

import traceback
from typing import ClassVar, Literal, get_args

from pydantic import ValidationError

ReasonCode = Literal[
    "malformed",
    "too_large",
    "unknown_sender",
    "unknown_key",
    "bad_signature",
    "key_revoked",
    "key_expired",
    "registry_expired",
    "not_a_recipient",
    "decrypt_failed",
    "not_permitted",
    "policy_mismatch",
    "encryption_key_revoked",
    "replay",
    "misplaced",
    "time_skew",
    "internal",
    "receiver_refused",  # a participant's webhook receiver refused an event for good (its 4xx, again)
]
REASON_CODES: tuple[ReasonCode, ...] = get_args(ReasonCode)


class LianfangError(Exception):
    """Base of every error the kernel raises on purpose."""


class UntrustedInputError(LianfangError):
    """Input from outside failed a check. ``reason`` is stable; the message is for people."""

    reason: ClassVar[ReasonCode]

    def __init__(self, message: str) -> None:
        super().__init__(message)

    def __str__(self) -> str:
        return f"[{self.reason}] {super().__str__()}"


class MalformedError(UntrustedInputError):
    reason = "malformed"


class TooLargeError(UntrustedInputError):
    reason = "too_large"


class UnknownSenderError(UntrustedInputError):
    reason = "unknown_sender"


class UnknownKeyError(UntrustedInputError):
    reason = "unknown_key"


class BadSignatureError(UntrustedInputError):
    reason = "bad_signature"


class KeyRevokedError(UntrustedInputError):
    reason = "key_revoked"


class KeyExpiredError(UntrustedInputError):
    reason = "key_expired"


class RegistryExpiredError(UntrustedInputError):
    reason = "registry_expired"


class NotARecipientError(UntrustedInputError):
    reason = "not_a_recipient"


class DecryptFailedError(UntrustedInputError):
    reason = "decrypt_failed"


class NotPermittedError(UntrustedInputError):
    reason = "not_permitted"


class PolicyMismatchError(UntrustedInputError):
    reason = "policy_mismatch"


class EncryptionKeyRevokedError(UntrustedInputError):
    """A section's data key is wrapped for an encryption key its recipient's registry entry revoked:
    the router does not deliver it (that key may be in other hands now)."""

    reason = "encryption_key_revoked"


class ReplayError(UntrustedInputError):
    reason = "replay"


class MisplacedError(UntrustedInputError):
    """A record on a partition other than the one its key maps to: the replay window is kept per
    partition, so a copy written to another partition would otherwise be delivered again."""

    reason = "misplaced"


class TimeSkewError(UntrustedInputError):
    """An event whose signed ``time`` lies further than the allowed skew from when it reached the bus
    (the broker's append time): the sender's clock is wrong, or it back- or forward-dates the event to
    move where its key is judged."""

    reason = "time_skew"


class TransportError(LianfangError, RuntimeError):
    """Kafka, the network or the disk failed; the input may be fine and a retry may succeed."""


class RegistryStaleError(TransportError):
    """The registry in force is not known to be fresh (no unexpired timestamp statement names it), so
    nothing was read; retry after ``retry_after`` s, once a fresh statement has arrived. ``state`` says
    why: missing, stale, behind, untrusted, conflict, no_role (:mod:`services.kernel.freshness`)."""

    def __init__(self, message: str, *, state: str, retry_after: int = 30) -> None:
        super().__init__(message)
        self.state = state
        self.retry_after = retry_after


class UsageError(LianfangError, ValueError):
    """The caller asked for something that cannot be done (wrong passphrase, missing key, bad option)."""


ERROR_BY_REASON: dict[ReasonCode, type[UntrustedInputError]] = {
    cls.reason: cls
    for cls in (
        MalformedError,
        TooLargeError,
        UnknownSenderError,
        UnknownKeyError,
        BadSignatureError,
        KeyRevokedError,
        KeyExpiredError,
        RegistryExpiredError,
        NotARecipientError,
        DecryptFailedError,
        NotPermittedError,
        PolicyMismatchError,
        EncryptionKeyRevokedError,
        ReplayError,
        MisplacedError,
        TimeSkewError,
    )
}


def validation_summary(error: ValidationError, *, limit: int | None = 8, whole: str | None = None) -> str:
    """``where: why; where: why (+N more)`` for the first ``limit`` errors (all when ``None``).

    ``where`` is the dotted field path, or ``whole`` for an error about the whole value (left out when
    ``whole`` is ``None``). The values themselves are never repeated: they may be personal data. Nor is
    an unknown field's name, which the sender chose as freely as a value.
    """
    errors = error.errors(include_input=False, include_url=False)
    shown = errors if limit is None else errors[:limit]
    parts = []
    for err in shown:
        loc = err["loc"][:-1] if err["type"] == "extra_forbidden" else err["loc"]
        where = ".".join(str(p) for p in loc) or whole
        parts.append(f"{where}: {err['msg']}" if where else str(err["msg"]))
    more = f" (+{len(errors) - len(shown)} more)" if len(errors) > len(shown) else ""
    return "; ".join(parts) + more


def frames(error: BaseException) -> str:
    """Where ``error`` was raised, for the log of a bug: its traceback's frames (file, line, code),
    never its message, which could quote what a record, a form or a lead held."""
    return "".join(traceback.format_tb(error.__traceback__))
