"""The printable joint-meeting record (会商纪要) over HTTP, in process: what it holds, that it is
audited, and that it exists only once the meeting is concluded. Chromium prints it in the e2e tests."""

from __future__ import annotations

from datetime import timedelta

import pytest

from services.kernel import envelope
from tests.kit import NOW, DemoDomain
from tests.unit.test_console_http import PASSWORD, Harness, alert_id_of, harness, signed_in
from tests.unit.test_console_view import hub_alert, opened

pytestmark = pytest.mark.unit
__all__ = ["harness", "signed_in"]  # fixtures shared with test_console_http

SUMMARY = "会商决定：公安机关出具告诫书。<script>alert(1)</script>"


def meeting_events(domain: DemoDomain, alert: envelope.Opened) -> tuple[envelope.Opened, envelope.Opened]:
    alert_id, subject = alert_id_of(alert), alert.header.subject
    due = (NOW + timedelta(days=7)).isoformat()
    items = [
        {"owner": "police", "due_at": due, "description": "出具告诫书"},
        {"owner": "womens_federation", "due_at": due, "description": "心理疏导"},
    ]
    scheduled = opened(
        domain,
        "joint_meeting.scheduled",
        {
            "schema_version": 1,
            "alert_id": alert_id,
            "meeting_at": (NOW + timedelta(hours=2)).isoformat(),
            "participants": ["police", "womens_federation", "court"],
            "location": "区妇联三楼会议室",
        },
        subject=subject,
        sender="coordinators",
    )
    concluded = opened(
        domain,
        "joint_meeting.concluded",
        {
            "schema_version": 1,
            "alert_id": alert_id,
            "concluded_at": (NOW + timedelta(hours=3)).isoformat(),
            "action_items": items,
            "action_item_deadlines": [{"owner": i["owner"], "due_at": i["due_at"]} for i in items],
            "summary": SUMMARY,
        },
        subject=subject,
        sender="coordinators",
    )
    return scheduled, concluded


@pytest.fixture
def concluded(signed_in: Harness, domain: DemoDomain) -> str:
    alert = hub_alert(domain)
    signed_in.feed(alert)
    for event in meeting_events(domain, alert):
        signed_in.feed(event)
    return alert_id_of(alert)


def test_the_record_names_attendees_reasons_summary_and_each_item_with_owner_and_due_date(
    signed_in: Harness, concluded: str
) -> None:
    status, _, html = signed_in.get(f"/alerts/{concluded}/record")
    assert status == 200
    assert "联席会议会商纪要" in html
    for agency in ("police", "womens_federation", "court", "coordinators"):
        assert f'<li data-agency="{agency}">' in html
    assert "区妇联三楼会议室" in html
    assert 'id="record-reasons"><li data-code="professional_judgement">' in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, "text from the bus is escaped"
    assert "<script>alert(1)" not in html
    due = (NOW + timedelta(days=7)).astimezone(signed_in.settings.zone).strftime("%Y-%m-%d")
    assert html.count(f"<td>{due} ") == 2
    assert html.index('data-owner="police"') < html.index('data-owner="womens_federation"')
    assert "出具告诫书" in html
    assert "心理疏导" in html
    assert 'href="/static/record.css"' in html
    assert "wang" in html, "who printed it"


def test_the_alert_page_links_to_its_record_once_concluded(signed_in: Harness, concluded: str) -> None:
    assert f'href="/alerts/{concluded}/record"' in signed_in.get(f"/alerts/{concluded}")[2]


def test_viewing_the_record_is_audited_like_any_case_content(signed_in: Harness, concluded: str) -> None:
    signed_in.get(f"/alerts/{concluded}/record")
    row = signed_in.console.audit.rows()[-1]
    assert (row.who, row.action, row.target) == ("wang", "view_record", concluded)


def test_an_alert_not_yet_concluded_has_no_record(signed_in: Harness, domain: DemoDomain) -> None:
    alert = hub_alert(domain, phone="13800000077")
    signed_in.feed(alert)
    status, _, body = signed_in.get(f"/alerts/{alert_id_of(alert)}/record")
    assert status == 404
    assert "纪要在会商结束后生成" in body
    assert 'id="record-link"' not in signed_in.get(f"/alerts/{alert_id_of(alert)}")[2]


def test_a_supervisor_may_read_the_record(harness: Harness, domain: DemoDomain) -> None:
    alert = hub_alert(domain)
    harness.feed(alert)
    for event in meeting_events(domain, alert):
        harness.feed(event)
    harness.console.accounts.create("li", PASSWORD, role="supervisor")
    assert harness.sign_in(name="li")[0] == 303
    assert harness.get(f"/alerts/{alert_id_of(alert)}/record")[0] == 200
