"""The participant ids the code itself names: the machine participants and the offices that the
joint-meeting rule and the console treat specially. Every other participant id comes from the
trust registry and is only ever data."""

from __future__ import annotations

from typing import Final

__all__ = ["COORDINATORS", "COURT", "HUB", "PLC", "ROUTER"]

ROUTER: Final = "router"
"""The event router: copies signed events to inboxes and signs its audit checkpoints; publishes none."""
HUB: Final = "hub"
"""The joint-meeting processors: publish alerts and supervision events, read triage only."""
COORDINATORS: Final = "coordinators"
"""The joint-meeting office, whose people use the console."""
PLC: Final = "plc"
"""The Political-Legal Affairs Commission, which convenes joint meetings."""
COURT: Final = "court"
"""The court, the one participant that decides protection orders."""
