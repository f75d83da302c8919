"""The errors the hub's pure core raises on purpose: one base under ``LianfangError``, split by blame.
An impossible observation is the caller's misuse (:class:`UsageError`, still a ``ValueError``); stored
bytes that are not a state are bad input (:class:`MalformedError`)."""

from __future__ import annotations

from services.kernel.errors import LianfangError, MalformedError, UsageError

__all__ = ["HubError", "ObservationError", "StateDecodeError"]


class HubError(LianfangError):
    """Base of the errors the hub's pure core raises on purpose."""


class ObservationError(HubError, UsageError):
    """The caller passed an impossible observation: a naive time, or another victim's state."""


class StateDecodeError(HubError, MalformedError):
    """Stored state bytes are not a state this version can read."""
