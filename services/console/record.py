"""The printable joint-meeting record (会商纪要) of a concluded alert: the case, the meeting and who
attended, the reasons for it, the summary, and the action items with their owners and due dates.

A page of its own with a print style sheet (``static/record.css``): on paper only the record shows,
on A4, with the items table's header repeated on each page. Its content is the conclusion that came back
through the coordinators' inbox; an alert concluded from this console is recorded once that event is in.
"""

from __future__ import annotations

from datetime import datetime

from services.console import i18n
from services.console.markup import Markup, fmt, join, render
from services.console.pages import Viewer, page
from services.console.view import Alert
from services.kernel import ids


def record_page(viewer: Viewer, alert: Alert, now: datetime) -> Markup | None:
    """The record, or None while the alert has no conclusion in the inbox."""
    done = alert.conclusion
    if done is None:
        return None
    header, latest, meeting = alert.header, alert.latest, alert.meeting

    def facts(pairs: list[tuple[str, object]]) -> Markup:
        return join(fmt("<dt>{k}</dt><dd>{v}</dd>", k=viewer.t(key), v=value) for key, value in pairs)

    case = facts(
        [
            ("alert.victim", fmt("<code>{s}</code>", s=alert.subject)),
            ("col.town", i18n.town(viewer.lang, header.town)),
            ("col.category", i18n.label(viewer.lang, "category", header.category)),
            ("alert.minor", viewer.t("yes") if header.minor else viewer.t("no")),
            ("alert.raised", viewer.when(latest.raised_at)),
        ]
    )
    meeting_facts = facts(
        [
            ("form.meeting_at", viewer.when(meeting.meeting_at if meeting else None)),
            ("form.location", (meeting.location if meeting else None) or "—"),
            ("record.concluded_at", viewer.when(done.concluded_at)),
        ]
    )
    attending = [ids.COORDINATORS, *(meeting.participants if meeting else [])]
    attendees = join(
        fmt('<li data-agency="{id}">{name}</li>', id=p, name=viewer.agency(p))
        for p in dict.fromkeys(attending)
    )
    reasons = join(
        fmt(
            '<li data-code="{code}"><strong>{label}</strong> {detail}</li>',
            code=reason.code,
            label=i18n.label(viewer.lang, "reason", reason.code),
            detail=reason.detail,
        )
        for reason in latest.reasons
    )
    items = join(
        fmt(
            '<tr data-owner="{owner}"><td>{n}</td><td>{what}</td><td>{name}</td><td>{due}</td></tr>',
            owner=item.owner,
            n=n,
            what=item.description,
            name=viewer.agency(item.owner),
            due=viewer.when(item.due_at),
        )
        for n, item in enumerate(done.action_items, start=1)
    )
    if not done.action_items:
        items = fmt('<tr><td colspan="4">{none}</td></tr>', none=viewer.t("record.no_items"))
    recorder = next((a.user for a in alert.own if a.kind == "conclude"), None)
    body = render(
        "record.html",
        viewer.lang,
        {
            "alert_id": alert.alert_id,
            "office": viewer.agency(ids.COORDINATORS),
            "case": case,
            "meeting": meeting_facts,
            "attendees": attendees,
            "reasons": reasons,
            "summary": done.summary,
            "items": items,
            "concluded": viewer.t(
                "record.concluded_by", when=viewer.when(done.concluded_at), who=recorder or "—"
            ),
            "printed": viewer.t("record.printed", when=viewer.when(now), who=viewer.user or "—"),
        },
    )
    return page(viewer, name="record", title=viewer.t("record.title"), body=body)
