"""One exception base for the kernel, split by blame.

- :class:`UntrustedInputError`: the bytes we were given are bad (a record from the bus, a registry
  file, a request body). Each carries a stable :data:`ReasonCode` used by the dead-letter topic and
  metrics.
- :class:`TransportError`: Kafka or the file system failed us; retrying may help.
- :class:`UsageError`: the caller (our own code or an operator) asked for something impossible.
"""

from __future__ import annotations

from typing import ClassVar, Literal, get_args

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
    "replay",
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


class ReplayError(UntrustedInputError):
    reason = "replay"


class TransportError(LianfangError, RuntimeError):
    """Kafka, the network or the disk failed; the input may be fine and a retry may succeed."""


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
        ReplayError,
    )
}
