"""The errors the hub's pure core raises on purpose: one base, split by blame (all caller misuse or bad
stored bytes, so all are ``ValueError``)."""

from __future__ import annotations

__all__ = ["HubError", "ObservationError", "StateDecodeError"]


class HubError(Exception):
    """Base of the errors the hub's pure core raises on purpose."""


class ObservationError(HubError, ValueError):
    """The caller passed an impossible observation: a naive time, or another victim's state."""


class StateDecodeError(HubError, ValueError):
    """Stored state bytes are not a state this version can read."""
