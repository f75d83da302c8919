"""The forms validate what a coordinator expects: only agencies attend or own items, a meeting does not
conclude before its time, and times are read in the console's zone (Asia/Shanghai)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from services.console import actions
from services.console.actions import NOT_INVITED, FormError
from services.kernel import ids
from services.simulator import district
from tests.kit import NOW, DemoDomain
from tests.unit.test_console_deadlines import scheduled
from tests.unit.test_console_view import ZONE, form, hub_alert, view_with

pytestmark = pytest.mark.unit

EVERYONE = {pid for pid, _zh, _en in district.participants()}


def test_no_machine_is_offered_or_accepted_as_a_participant() -> None:
    assert {ids.ROUTER, ids.HUB, ids.COORDINATORS} <= NOT_INVITED
    assert not NOT_INVITED & {"police", ids.PLC, "mediation.renhe"}


def test_scheduling_the_router_as_a_participant_is_refused(domain: DemoDomain) -> None:
    (alert,) = view_with(hub_alert(domain)).alerts.values()
    sent = form(meeting_at="2026-11-03T09:30", participants=["police", ids.ROUTER])
    with pytest.raises(FormError) as refused:
        actions.schedule(alert, sent, zone=ZONE, allowed=EVERYONE)
    assert [p.key for p in refused.value.problems] == ["err.unknown_participant"]


def test_a_meeting_time_is_read_in_asia_shanghai() -> None:
    moment = actions.parse_local("2026-11-03T09:30", ZONE)
    assert moment is not None
    assert moment.utcoffset() == timedelta(hours=8)


def test_a_conclusion_dated_before_its_meeting_is_refused_and_names_the_meetings_local_time(
    domain: DemoDomain,
) -> None:
    event = hub_alert(domain)
    meeting_at = NOW + timedelta(days=2)
    (alert,) = view_with(event, scheduled(domain, event, meeting_at=meeting_at)).alerts.values()
    before = (meeting_at - timedelta(hours=1)).astimezone(ZONE).strftime("%Y-%m-%dT%H:%M")
    with pytest.raises(FormError) as refused:
        actions.conclusion(
            alert, form(concluded_at=before, summary="纪要"), zone=ZONE, allowed=EVERYONE, now=NOW
        )
    (problem,) = refused.value.problems
    assert problem.key == "err.before_meeting"
    assert problem.values() == {"when": meeting_at.astimezone(ZONE).strftime("%Y-%m-%d %H:%M")}
    after = (meeting_at + timedelta(hours=2)).astimezone(ZONE).strftime("%Y-%m-%dT%H:%M")
    done = actions.conclusion(
        alert, form(concluded_at=after, summary="纪要"), zone=ZONE, allowed=EVERYONE, now=NOW
    )
    assert done.kind == "conclude"
