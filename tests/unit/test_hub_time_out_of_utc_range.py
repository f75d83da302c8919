"""Regression: a triage time that is a valid ISO 8601 instant but falls outside the years Python can
hold in UTC (``0001-01-01T00:00:00+23:59``, ``9999-12-31T23:59:59-23:59``; the event schemas accept
both) raised ``OverflowError`` in the hub's rules, which stopped the hub's worker on that record. Such
a time now counts as no time, like any other unusable triage time."""

from __future__ import annotations

import pytest

from services.hub.rules import observe
from tests.unit.test_hub_rules import CFG, concluded, day, event, lead, open_alert, run

pytestmark = pytest.mark.unit

OUT_OF_RANGE = ["0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59-23:59"]


@pytest.mark.parametrize("meeting_at", OUT_OF_RANGE)
def test_a_meeting_scheduled_at_a_time_outside_utc_s_range_is_scheduled_without_a_time(
    meeting_at: str,
) -> None:
    state, raised = run([lead(1, day(0), pj=True)])
    scheduled = event(2, "joint_meeting.scheduled", day(1), sender="coordinators",
                      triage={"alert_id": raised[0].alert_id, "meeting_at": meeting_at,
                              "participants": ["police"]})  # fmt: skip
    state, _ = observe(state, scheduled, CFG)
    assert (open_alert(state).status, open_alert(state).meeting_at) == ("scheduled", None)


@pytest.mark.parametrize("due_at", OUT_OF_RANGE)
def test_an_action_item_due_at_a_time_outside_utc_s_range_is_left_out(due_at: str) -> None:
    state, raised = run([lead(1, day(0), pj=True)])
    meeting = concluded(2, day(1), raised[0].alert_id)
    items = [{"owner": "police", "due_at": due_at}, {"owner": "court", "due_at": day(9).isoformat()}]
    meeting = event(2, meeting.event_type, day(1), sender="coordinators",
                    triage={**meeting.triage, "action_item_deadlines": items})  # fmt: skip
    state, _ = observe(state, meeting, CFG)
    assert state is not None
    assert [(i.owner, i.due_at) for m in state.meetings for i in m.items] == [("court", day(9))]
