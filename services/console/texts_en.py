"""The console's English table of the hub's alert reasons, and its units of time.

The twin of :mod:`services.console.texts_zh`: the same names and fields, filled with English values
(durations in days, hours and minutes, agency and category names). Counts stand after a colon, so no
sentence depends on a plural ("1 action items").
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from services.hub.messages import MessageName

REASONS: Final[Mapping[MessageName, str]] = MappingProxyType(
    {
        "high_risk.score": "Risk assessment score {score} of 24 (high-risk threshold {threshold})",
        "high_risk.indicators": "Risk indicators on one lead: {count} (threshold {threshold})",
        "escalation": "Leads within {days}: {count} (threshold {threshold})",
        "professional_judgement": "{sender} asks for a joint meeting (professional judgement)",
        "repeat": "A new lead {days} after a joint meeting concluded (watched for {window})",
        "convergence": "Agencies reporting the same victim within {days}: {count} ({agencies})",
        "minor_sexual_abuse": "A minor victim, category {category}: to be handled immediately",
        "order_breach": "A personal safety protection order was breached: to be handled immediately",
        "serial_suspect": "Victims named against the same suspect: {count} (threshold {threshold})",
    }
)
"""Why the hub raised an alert, by the name of the hub's text."""

UNITS: Final[Mapping[str, tuple[str, str]]] = MappingProxyType(
    {
        "day": ("{n} day", "{n} days"),
        "hour": ("{n} hour", "{n} hours"),
        "minute": ("{n} minute", "{n} minutes"),
    }
)
"""A number of days, hours, minutes: (one, more than one)."""

UNIT_JOIN: Final = " "
UNDER_A_MINUTE: Final = "less than a minute"
LIST_JOIN: Final = "; "
