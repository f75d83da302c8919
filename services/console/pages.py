"""The console's pages, rendered on the server from :mod:`services.console.view` objects.

Every value goes through :mod:`services.console.markup`, so text from the bus (a meeting's location, a
summary) is escaped wherever it lands. Pages hold no inline script or style: the Content-Security-Policy
allows this origin's ``/static`` files only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, get_args
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from schemas.common import Category
from schemas.events import (
    AlertReasonCode,
    JointMeetingAlert,
    JointMeetingConcluded,
    JointMeetingScheduled,
    SupervisionBreach,
)
from services.console import deadlines, i18n, wording
from services.console.actions import NOT_INVITED, FormProblem
from services.console.deadlines import Deadline
from services.console.markup import Markup, fmt, join, render
from services.console.roles import Permission, Role, allows
from services.console.sessions import CSRF_FIELD
from services.console.view import (
    AGES,
    PAGE_SIZE,
    SORTS,
    AgencyRow,
    Alert,
    CaseView,
    Entry,
    OwnAction,
    QueueFilter,
    Rates,
)
from services.kernel import ids

REASONS: Final[tuple[AlertReasonCode, ...]] = get_args(AlertReasonCode)
CATEGORIES: Final[tuple[Category, ...]] = get_args(Category)
_TABS: Final = ("open", "acknowledged", "scheduled", "concluded", "active", "all")
_ITEM_ROWS: Final = 3
EMPTY: Final = Markup("")


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who is looking and how: language, time zone, account and CSRF token, the registry's names."""

    lang: i18n.Lang
    zone: ZoneInfo
    user: str | None
    csrf: str
    names: Mapping[str, tuple[str, str]]  # participant id -> (中文名, English name)
    path: str = "/alerts"
    role: Role | None = None
    seen_change: int = 0  # the console's last change when the page was made: its live stream resumes there

    def may(self, permission: Permission) -> bool:
        """Whether the account's role grants ``permission`` (what a page offers follows it)."""
        return self.role is not None and allows(self.role, permission)

    def t(self, key: str, /, **values: object) -> str:
        return i18n.text(self.lang, key, **values)

    @property
    def sep(self) -> str:
        """Between the items of an inline list."""
        return "; " if self.lang == "en" else "、"  # English agency names may hold commas

    def agency(self, participant: str) -> str:
        names = self.names.get(participant)
        if names is None:
            return participant
        return names[1] if self.lang == "en" else names[0]

    def when(self, moment: datetime | None) -> str:
        return "—" if moment is None else moment.astimezone(self.zone).strftime("%Y-%m-%d %H:%M")

    @property
    def zone_name(self) -> str:
        """The time zone in the page's words (北京时间 for Asia/Shanghai)."""
        if str(self.zone) == "Asia/Shanghai":
            return self.t("tz.shanghai")
        return str(self.zone)

    def ago(self, moment: datetime, now: datetime) -> str:
        seconds = max(0, int((now - moment).total_seconds()))
        if seconds < 60:
            return self.t("ago.now")
        if seconds < 3600:
            return self.t("ago.minutes", n=seconds // 60)
        if seconds < 86_400:
            return self.t("ago.hours", n=seconds // 3600)
        return self.t("ago.days", n=seconds // 86_400)


# --------------------------------------------------------------------------- layout


def page(viewer: Viewer, *, name: str, title: str, body: Markup) -> Markup:
    if viewer.user is not None:
        links: list[tuple[str, str, Permission]] = [
            ("/alerts", "nav.alerts", "read_cases"),
            ("/supervision", "nav.supervision", "read_cases"),
            ("/accounts", "nav.accounts", "manage_accounts"),
        ]
        nav = join(_nav_link(viewer, href, key) for href, key, needs in links if viewer.may(needs))
        account = fmt(
            '<span class="who">{who}</span>'
            '<form method="post" action="/logout" class="inline">'
            '<input type="hidden" name="{field}" value="{csrf}">'
            '<button type="submit" class="link" id="logout">{label}</button></form>',
            who=viewer.t("nav.signed_in_as", name=viewer.user),
            field=CSRF_FIELD,
            csrf=viewer.csrf,
            label=viewer.t("nav.logout"),
        )
    else:
        nav = account = Markup("")
    other = i18n.other(viewer.lang)
    lang_switch = fmt(
        '<a class="lang" id="lang-switch" href="/lang/{code}?{query}" hreflang="{hreflang}" '
        'title="{title}">{label}</a>',
        code=other,
        query=urlencode({"next": viewer.path}),
        hreflang=i18n.HTML_LANG[other],
        title=viewer.t("lang.other_title"),
        label=viewer.t("lang.other"),
    )
    return render(
        "base.html",
        viewer.lang,
        {
            "html_lang": i18n.HTML_LANG[viewer.lang],
            "title": title,
            "page": name,
            "seen_change": str(viewer.seen_change),
            "nav": nav,
            "lang_switch": lang_switch,
            "account": account,
            "body": body,
        },
    )


def _nav_link(viewer: Viewer, href: str, key: str) -> Markup:
    current = ' aria-current="page"' if viewer.path.split("?")[0].startswith(href) else ""
    return fmt('<a href="{href}"' + current + ">{label}</a>", href=href, label=viewer.t(key))


def _badge(kind: str, code: str, text: str) -> Markup:
    return fmt('<span class="badge {kind}-{code}">{text}</span>', kind=kind, code=code, text=text)


def message(kind: str, text: str) -> Markup:
    return fmt('<p class="message {kind}" role="status" id="message">{text}</p>', kind=kind, text=text)


def problems(viewer: Viewer, found: Sequence[FormProblem]) -> Markup:
    items = join(fmt("<li>{p}</li>", p=viewer.t(p.key, **p.values())) for p in found)
    return fmt(
        '<div class="message error" role="alert" id="form-errors"><p>{head}</p><ul>{items}</ul></div>',
        head=viewer.t("err.form"),
        items=items,
    )


# --------------------------------------------------------------------------- login and errors


def login(viewer: Viewer, *, csrf: str, next_path: str, note: Markup) -> Markup:
    body = render("login.html", viewer.lang, {"csrf": csrf, "next": next_path, "message": note})
    return page(viewer, name="login", title=viewer.t("login.title"), body=body)


def error(viewer: Viewer, text: str) -> Markup:
    body = render("error.html", viewer.lang, {"message": text})
    return page(viewer, name="error", title=viewer.t("error.title"), body=body)


# --------------------------------------------------------------------------- queue


def queue(viewer: Viewer, view: CaseView, where: QueueFilter, now: datetime) -> Markup:
    counts = view.counts()
    tabs = join(
        fmt(
            '<a href="/alerts?{query}" class="tab{current}" data-status="{status}">'
            '{label} <span class="count">{n}</span></a>',
            query=urlencode(where.query(status=status)),
            current=" current" if where.status == status else "",
            status=status,
            label=viewer.t(f"status.{status}"),
            n=counts.get(status, 0),
        )
        for status in _TABS
    )
    towns = sorted(set(view.towns()) | ({where.town} if where.town else set()))
    town_options = _options(viewer, [(town, i18n.town(viewer.lang, town)) for town in towns], where.town)
    rule_options = _options(viewer, [(r, i18n.label(viewer.lang, "reason", r)) for r in REASONS], where.rule)
    age_options = _options(viewer, [(a, viewer.t(f"age.{a}")) for a in AGES], where.age)
    category_options = _options(
        viewer, [(c, i18n.label(viewer.lang, "category", c)) for c in CATEGORIES], where.category
    )
    sort_options = join(
        fmt(
            '<option value="{value}"{sel}>{label}</option>',
            value=value,
            sel=Markup(" selected") if value == where.sort else "",
            label=viewer.t(f"sort.{value}"),
        )
        for value in SORTS
    )
    alerts = view.queue(where, now)
    shown, pages = page_of(alerts, where)
    body = render(
        "queue.html",
        viewer.lang,
        {
            "tabs": tabs,
            "status": where.status,
            "town_options": town_options,
            "rule_options": rule_options,
            "age_options": age_options,
            "category_options": category_options,
            "sort_options": sort_options,
            "q": where.q,
            "overdue_checked": Markup(" checked") if where.overdue else "",
            "rows_url": "/alerts/rows?" + urlencode(where.query()),
            "rows": queue_rows(viewer, view, shown, now),
            "pager": _pager(viewer, where, pages, len(alerts)),
        },
    )
    return page(viewer, name="queue", title=viewer.t("queue.title"), body=body)


def _options(viewer: Viewer, choices: Sequence[tuple[str, str]], selected: str) -> Markup:
    first = fmt('<option value="">{any}</option>', any=viewer.t("filter.any"))
    return first + join(
        fmt(
            '<option value="{value}"{sel}>{label}</option>',
            value=value,
            sel=Markup(" selected") if value == selected else "",
            label=label,
        )
        for value, label in choices
    )


def page_of(alerts: Sequence[Alert], where: QueueFilter) -> tuple[Sequence[Alert], int]:
    """The alerts of the filter's page (the last one when it asks for a page beyond) and how many pages."""
    pages = max(1, -(-len(alerts) // PAGE_SIZE))
    page = min(where.page, pages)
    return alerts[(page - 1) * PAGE_SIZE : page * PAGE_SIZE], pages


def page_status(viewer: Viewer, where: QueueFilter, pages: int, total: int) -> str:
    """Which page of how many, and how many alerts in all (also sent with live updates)."""
    return viewer.t("pager.status", page=min(where.page, pages), pages=pages, n=total)


def _pager(viewer: Viewer, where: QueueFilter, pages: int, total: int) -> Markup:
    page = min(where.page, pages)

    def link(target: int, key: str, rel: str) -> Markup:
        if target < 1 or target > pages:
            return fmt('<span class="disabled" aria-disabled="true">{label}</span>', label=viewer.t(key))
        return fmt(
            '<a href="/alerts?{query}" rel="{rel}" id="page-{rel}">{label}</a>',
            query=urlencode(where.query(page=str(target))),
            rel=rel,
            label=viewer.t(key),
        )

    return fmt(
        '<nav class="pager" aria-label="{label}">{prev}'
        '<span id="page-status" aria-current="page">{status}</span>{next}</nav>',
        label=viewer.t("pager.label"),
        prev=link(page - 1, "pager.prev", "prev"),
        status=page_status(viewer, where, pages, total),
        next=link(page + 1, "pager.next", "next"),
    )


def due_mark(viewer: Viewer, deadline: Deadline | None, now: datetime, *, label: str = "") -> Markup:
    """A deadline's countdown or lateness, coloured by its state (``due-overdue``, ``due-soon``, ...)."""
    if deadline is None:
        return fmt('<span class="due due-none">{text}</span>', text=viewer.t("due.none"))
    state = deadline.state(now)
    span = wording.duration(viewer.lang, deadline.left(now))
    text = {
        "pending": viewer.t("due.left", span=span),
        "soon": viewer.t("due.left", span=span),
        "overdue": viewer.t("due.overdue", span=span),
        "met": viewer.t("due.met"),
        "met_late": viewer.t("due.met_late"),
        "passed": viewer.t("due.passed"),
    }[state]
    return fmt(
        '<span class="due due-{state}" data-state="{state}" data-kind="{kind}" title="{title}">'
        '{label}<time datetime="{iso}">{text}</time></span>',
        state=state,
        kind=deadline.kind,
        title=viewer.t("due.at", at=viewer.when(deadline.due_at)),
        label=fmt('<span class="due-kind">{k}</span> ', k=label) if label else "",
        iso=deadline.due_at.isoformat(),
        text=text,
    )


def _deadline_label(viewer: Viewer, deadline: Deadline) -> str:
    if deadline.kind == "action_item":
        return viewer.t("due.item", owner=viewer.agency(deadline.owner or ""))
    return i18n.label(viewer.lang, "deadline", deadline.kind)


def queue_rows(viewer: Viewer, view: CaseView, alerts: Sequence[Alert], now: datetime) -> Markup:
    """The queue's table body (also served alone, for live updates)."""
    if not alerts:
        return fmt('<tr class="empty"><td colspan="10">{text}</td></tr>', text=viewer.t("queue.empty"))
    rows = []
    for alert in alerts:
        latest, header = alert.latest, alert.header
        reasons = join(
            (_badge("reason", code, i18n.label(viewer.lang, "reason", code)) for code in alert.reason_codes),
            " ",
        )
        agencies = viewer.sep.join(viewer.agency(a) for a in latest.agencies_involved[:6])
        if len(latest.agencies_involved) > 6:
            agencies += " …"
        found = view.deadlines(alert)
        pressing = deadlines.pressing(found, now)
        overdue = deadlines.overdue(found, now)
        rows.append(
            fmt(
                '<tr data-alert-id="{id}" data-subject="{subject}" data-status="{status}" '
                'data-overdue="{overdue}" class="row-{status}{overdue_class}">'
                "<td>{status_badge}</td><td>{urgency}</td>"
                '<td class="deadline">{due}</td>'
                '<td><a class="open" href="/alerts/{id}" aria-label="{open}: {subject}">'
                "<code>{short}</code></a></td>"
                '<td class="town">{town}</td><td>{category}{minor}</td><td>{reasons}</td><td>{agencies}</td>'
                '<td class="when" title="{raised}">{raised_ago}</td>'
                '<td class="when" title="{updated}">{updated_ago}</td></tr>',
                id=alert.alert_id,
                subject=alert.subject,
                status=alert.status,
                overdue="1" if overdue else "0",
                overdue_class=" overdue" if overdue else "",
                due=due_mark(
                    viewer, pressing, now, label=_deadline_label(viewer, pressing) if pressing else ""
                ),
                status_badge=_badge("status", alert.status, viewer.t(f"status.{alert.status}")),
                urgency=_badge("urgency", header.urgency, i18n.label(viewer.lang, "urgency", header.urgency)),
                open=viewer.t("queue.open_alert"),
                short=_short(alert.subject),
                town=i18n.town(viewer.lang, header.town),
                category=i18n.label(viewer.lang, "category", header.category),
                minor=fmt(' <span class="badge minor">{m}</span>', m=viewer.t("alert.minor"))
                if header.minor
                else "",
                reasons=reasons,
                agencies=agencies,
                raised=viewer.when(latest.raised_at),
                raised_ago=viewer.ago(latest.raised_at, now),
                updated=viewer.when(alert.updated_at),
                updated_ago=viewer.ago(alert.updated_at, now),
            )
        )
    return join(rows)


def _short(pseudonym: str) -> str:
    return pseudonym if len(pseudonym) <= 16 else pseudonym[:14] + "…"


# --------------------------------------------------------------------------- alert


@dataclass(frozen=True, slots=True)
class ActionForms:
    """What the actions column offers, and what a refused form sent (to show it again)."""

    participants: Sequence[str]
    flash: Markup = EMPTY
    form: Mapping[str, Sequence[str]] | None = None


def alert_page(viewer: Viewer, view: CaseView, alert: Alert, now: datetime, forms: ActionForms) -> Markup:
    latest, header = alert.latest, alert.header
    facts = join(
        fmt("<dt>{k}</dt><dd{attr}>{v}</dd>", k=viewer.t(key), attr=Markup(attr), v=value)
        for key, attr, value in (
            ("alert.id", ' id="alert-id"', fmt("<code>{id}</code>", id=alert.alert_id)),
            ("alert.victim", ' id="victim"', fmt("<code>{s}</code>", s=alert.subject)),
            ("col.town", "", i18n.town(viewer.lang, header.town)),
            ("col.category", "", i18n.label(viewer.lang, "category", header.category)),
            ("alert.minor", "", viewer.t("yes") if header.minor else viewer.t("no")),
            ("alert.version", "", str(alert.version)),
            ("alert.raised", "", viewer.when(latest.raised_at)),
            ("alert.updated", ' id="updated"', viewer.when(alert.updated_at)),
        )
    )
    reasons = join(
        fmt(
            '<li data-code="{code}">{badge}<span class="detail">{detail}</span></li>',
            code=reason.code,
            badge=_badge("reason", reason.code, i18n.label(viewer.lang, "reason", reason.code)),
            detail=wording.explain(viewer.lang, reason.detail, viewer.agency),
        )
        for reason in latest.reasons
    )
    due_items = join(
        fmt(
            '<li data-kind="{kind}" data-state="{state}">{mark}</li>',
            kind=d.kind,
            state=d.state(now),
            mark=due_mark(viewer, d, now, label=_deadline_label(viewer, d)),
        )
        for d in view.deadlines(alert)
    )
    agencies = join(
        fmt('<li data-agency="{id}">{name}</li>', id=a, name=viewer.agency(a))
        for a in latest.agencies_involved
    )
    related = join(fmt("<li><code>{id}</code></li>", id=r) for r in latest.related_events)
    body = render(
        "alert.html",
        viewer.lang,
        {
            "alert_id": alert.alert_id,
            "status": alert.status,
            "self_url": f"/alerts/{alert.alert_id}",
            "flash": forms.flash,
            "status_badge": _badge("status", alert.status, viewer.t(f"status.{alert.status}")),
            "urgency_badge": _badge(
                "urgency", header.urgency, i18n.label(viewer.lang, "urgency", header.urgency)
            ),
            "facts": facts,
            "reasons": reasons,
            "agencies": agencies,
            "deadlines": due_items,
            "meeting": _meeting(viewer, alert.meeting),
            "conclusion": join([_conclusion(viewer, alert.conclusion), _record_link(viewer, alert)]),
            "timeline": _timeline(viewer, view.timeline(alert.subject)),
            "related_title": viewer.t("alert.related", n=len(latest.related_events)),
            "related": related,
            "actions": (
                _actions(viewer, alert, now, forms)
                if viewer.may("act")
                else message("info", viewer.t("alert.read_only"))
            ),
        },
    )
    return page(viewer, name="alert", title=viewer.t("alert.title"), body=body)


def _meeting(viewer: Viewer, meeting: JointMeetingScheduled | None) -> Markup:
    if meeting is None:
        return Markup("")
    return fmt(
        '<h2>{title}</h2><dl class="facts" id="meeting">'
        "<dt>{at_k}</dt><dd>{at}</dd><dt>{loc_k}</dt><dd>{loc}</dd><dt>{who_k}</dt><dd>{who}</dd></dl>",
        title=viewer.t("alert.meeting"),
        at_k=viewer.t("form.meeting_at"),
        at=viewer.when(meeting.meeting_at),
        loc_k=viewer.t("form.location"),
        loc=meeting.location or "—",
        who_k=viewer.t("form.participants"),
        who=viewer.sep.join(viewer.agency(p) for p in meeting.participants),
    )


def _conclusion(viewer: Viewer, done: JointMeetingConcluded | None) -> Markup:
    if done is None:
        return Markup("")
    items = join(
        fmt(
            "<tr><td>{owner}</td><td>{due}</td><td>{what}</td></tr>",
            owner=viewer.agency(item.owner),
            due=viewer.when(item.due_at),
            what=item.description,
        )
        for item in done.action_items
    )
    return fmt(
        '<h2>{title}</h2><div id="conclusion"><p class="muted">{at}</p><p class="summary">{summary}</p>'
        '<table class="grid"><thead><tr><th>{owner}</th><th>{due}</th><th>{what}</th></tr></thead>'
        "<tbody>{items}</tbody></table></div>",
        title=viewer.t("alert.conclusion"),
        at=viewer.when(done.concluded_at),
        summary=done.summary,
        owner=viewer.t("form.owner"),
        due=viewer.t("form.due"),
        what=viewer.t("form.description"),
        items=items,
    )


def _record_link(viewer: Viewer, alert: Alert) -> Markup:
    """To the printable joint-meeting record (:mod:`services.console.record`), once concluded."""
    if alert.conclusion is None:
        return EMPTY
    return fmt(
        '<p><a id="record-link" href="/alerts/{id}/record">{label}</a></p>',
        id=alert.alert_id,
        label=viewer.t("record.link"),
    )


def _timeline(viewer: Viewer, entries: Sequence[Entry | OwnAction]) -> Markup:
    rows = []
    versions: dict[str, int] = {}
    for entry in entries:
        if isinstance(entry, OwnAction):
            text = (
                viewer.t("tl.acknowledged", user=entry.user)
                if entry.kind == "acknowledge"
                else f"{viewer.t('action.' + entry.kind)} — {viewer.t('tl.pending')}"
            )
            rows.append(
                (entry.at, entry.event_id, "lead.acknowledged", text, viewer.agency(ids.COORDINATORS))
            )
            continue
        if isinstance(entry.event, JointMeetingAlert):
            versions[entry.event.alert_id] = versions.get(entry.event.alert_id, 0) + 1
        version = versions.get(getattr(entry.event, "alert_id", ""), 0)
        text = _describe(viewer, entry, version)
        rows.append((entry.time, entry.event_id, entry.type, text, viewer.agency(entry.header.sender)))
    return join(
        fmt(
            '<tr data-event-id="{id}" data-type="{type}"><td>{at}</td><td>{text}</td><td>{sender}</td></tr>',
            id=event_id,
            type=type_,
            at=viewer.when(at),
            text=text,
            sender=sender,
        )
        for at, event_id, type_, text, sender in rows
    )


def _describe(viewer: Viewer, entry: Entry, version: int) -> str:
    event = entry.event
    if isinstance(event, JointMeetingAlert):
        reasons = viewer.sep.join(i18n.label(viewer.lang, "reason", r.code) for r in event.reasons)
        return viewer.t("tl.alert", version=version, reasons=reasons)
    if isinstance(event, JointMeetingScheduled):
        return viewer.t("tl.scheduled", when=viewer.when(event.meeting_at))
    if isinstance(event, JointMeetingConcluded):
        return viewer.t("tl.concluded", n=len(event.action_items))
    if isinstance(event, SupervisionBreach):
        kind = i18n.label(viewer.lang, "deadline", event.deadline_kind)
        return viewer.t("tl.breach", agency=viewer.agency(event.agency), kind=kind)
    return viewer.t("tl.other", type=entry.type)


def _actions(viewer: Viewer, alert: Alert, now: datetime, forms: ActionForms) -> Markup:
    if alert.status == "concluded":
        return message("info", viewer.t("alert.concluded_note"))
    hidden = fmt('<input type="hidden" name="{field}" value="{csrf}">', field=CSRF_FIELD, csrf=viewer.csrf)
    base = f"/alerts/{alert.alert_id}"
    parts: list[Markup] = []
    if alert.status == "open":
        parts.append(
            fmt(
                '<form method="post" action="{base}/acknowledge" id="acknowledge-form">{hidden}'
                '<button type="submit" id="acknowledge">{label}</button></form>',
                base=base,
                hidden=hidden,
                label=viewer.t("action.acknowledge"),
            )
        )
    sent = forms.form or {}

    def value(name: str, default: str = "") -> str:
        given = sent.get(name)
        return given[0] if given else default

    invited = set(sent.get("participants", [])) if sent else set(alert.latest.agencies_involved) | {ids.PLC}
    if alert.meeting is not None and not sent:
        invited = set(alert.meeting.participants)
    choices = [p for p in forms.participants if p not in NOT_INVITED]
    boxes = join(
        fmt(
            '<label class="check"><input type="checkbox" name="participants" value="{id}"{checked}> '
            "{name}</label>",
            id=p,
            checked=Markup(" checked") if p in invited else "",
            name=viewer.agency(p),
        )
        for p in sorted(choices, key=lambda p: (p not in invited, p.startswith("mediation."), p))
    )
    parts.append(
        fmt(
            '<form method="post" action="{base}/schedule" id="schedule-form" class="stack">{hidden}'
            "<h3>{title}</h3>"
            '<label>{at_label}<input type="datetime-local" name="meeting_at" id="meeting_at" '
            'value="{at}" required></label>'
            '<label>{loc_label}<input name="location" id="location" maxlength="200" value="{loc}"></label>'
            '<fieldset class="participants"><legend>{who}</legend>'
            '<div class="scroll">{boxes}</div></fieldset>'
            '<p class="muted">{tz}</p>'
            '<button type="submit" id="schedule">{label}</button></form>',
            base=base,
            hidden=hidden,
            title=viewer.t("action.schedule"),
            at_label=viewer.t("form.meeting_at"),
            at=value("meeting_at", _tomorrow_morning(viewer, now)),
            loc_label=viewer.t("form.location"),
            loc=value("location"),
            who=viewer.t("form.participants"),
            boxes=boxes,
            tz=viewer.t("form.timezone", tz=viewer.zone_name),
            label=viewer.t("action.schedule"),
        )
    )
    owners = [p for p in forms.participants if p not in NOT_INVITED]
    meeting_at = alert.meeting.meeting_at if alert.meeting is not None else now
    item_rows = join(
        _item_row(viewer, owners, index, sent) for index in range(max(_ITEM_ROWS, _sent_rows(sent)))
    )
    parts.append(
        fmt(
            '<form method="post" action="{base}/conclude" id="conclude-form" class="stack">{hidden}'
            "<h3>{title}</h3>"
            '<label>{at_label}<input type="datetime-local" name="concluded_at" id="concluded_at" '
            'value="{at}"{min}></label><p class="muted">{tz}</p>'
            '<label>{summary_label}<textarea name="summary" id="summary" rows="5" maxlength="20000" '
            "required>{summary}</textarea></label>"
            '<fieldset class="items"><legend>{items}</legend><div id="items">{rows}</div>'
            '<button type="button" class="secondary" id="add-item">{add}</button></fieldset>'
            '<button type="submit" id="conclude">{label}</button></form>',
            base=base,
            hidden=hidden,
            title=viewer.t("action.conclude"),
            at_label=viewer.t("form.concluded_at"),
            at=value("concluded_at", _local_input(viewer, max(now, meeting_at))),
            min=fmt(' min="{m}"', m=_local_input(viewer, meeting_at)) if alert.meeting is not None else "",
            tz=viewer.t("form.timezone", tz=viewer.zone_name),
            summary_label=viewer.t("form.summary"),
            summary=value("summary"),
            items=viewer.t("form.items"),
            rows=item_rows,
            add=viewer.t("form.add_item"),
            label=viewer.t("action.conclude"),
        )
    )
    return join(parts)


def _sent_rows(sent: Mapping[str, Sequence[str]]) -> int:
    return max((len(sent.get(n, [])) for n in ("item_owner", "item_due", "item_description")), default=0)


def _item_row(viewer: Viewer, owners: Sequence[str], index: int, sent: Mapping[str, Sequence[str]]) -> Markup:
    def value(name: str) -> str:
        given = sent.get(name, [])
        return given[index] if index < len(given) else ""

    chosen = value("item_owner")
    options = fmt('<option value="">{c}</option>', c=viewer.t("form.choose")) + join(
        fmt(
            '<option value="{id}"{sel}>{name}</option>',
            id=p,
            sel=Markup(" selected") if p == chosen else "",
            name=viewer.agency(p),
        )
        for p in owners
    )
    return fmt(
        '<div class="item">'
        '<label>{owner}<select name="item_owner">{options}</select></label>'
        '<label>{due}<input type="date" name="item_due" value="{due_v}"></label>'
        '<label class="wide">{what}<input name="item_description" maxlength="2000" value="{what_v}"></label>'
        "</div>",
        owner=viewer.t("form.owner"),
        options=options,
        due=viewer.t("form.due"),
        due_v=value("item_due"),
        what=viewer.t("form.description"),
        what_v=value("item_description"),
    )


def _tomorrow_morning(viewer: Viewer, now: datetime) -> str:
    """The meeting time offered first: 09:00 tomorrow, local time."""
    local = (now.astimezone(viewer.zone) + timedelta(days=1)).replace(hour=9, minute=0)
    return local.strftime("%Y-%m-%dT%H:%M")


def _local_input(viewer: Viewer, moment: datetime) -> str:
    return moment.astimezone(viewer.zone).strftime("%Y-%m-%dT%H:%M")


# --------------------------------------------------------------------------- supervision


def supervision(viewer: Viewer, view: CaseView, now: datetime, agency: str | None = None) -> Markup:
    """Who is late and how agencies are doing: the alerts whose deadlines come next, each agency's rates
    now and over time, and the overdue list (督办单), each breach linking to its alert. ``agency`` (one
    the hub reported on) narrows the trend and the overdue list to it."""
    rates = view.rates()
    if agency is not None and (rates is None or rates.row(agency) is None):
        agency = None
    breaches = [
        e
        for e in view.breach_list()
        if agency is None or (isinstance(e.event, SupervisionBreach) and e.event.agency == agency)
    ]
    coming = upcoming(view, now)
    scope = viewer.agency(agency) if agency else viewer.t("sup.district")
    body = render(
        "supervision.html",
        viewer.lang,
        {
            "upcoming_title": viewer.t("sup.upcoming", n=sum(1 for _, d in coming if d.state(now) == "soon")),
            "upcoming": _upcoming(viewer, coming, now),
            "rates": _rates(viewer, rates, agency),
            "trend_title": viewer.t("sup.trend", scope=scope),
            "trend": trend_chart(viewer, view.trend(), agency),
            "breaches_title": viewer.t("sup.breaches", n=len(breaches)),
            "breaches_scope": fmt(
                '<p class="muted" id="breaches-scope">{scope} · <a href="/supervision">{all}</a></p>',
                scope=scope,
                all=viewer.t("sup.all_agencies"),
            )
            if agency
            else "",
            "breaches": _breaches(viewer, view, breaches),
        },
    )
    return page(viewer, name="supervision", title=viewer.t("sup.title"), body=body)


UPCOMING: Final = 10
"""How many alerts the supervision page lists under the deadlines coming next."""


def upcoming(view: CaseView, now: datetime) -> list[tuple[Alert, Deadline]]:
    """Active alerts whose next deadline is not yet over, the soonest first (at most ``UPCOMING``)."""
    found = []
    for alert in view.alerts.values():
        if not alert.versions or alert.status == "concluded":
            continue
        pressing = deadlines.pressing(view.deadlines(alert), now)
        if pressing is not None and pressing.state(now) in ("soon", "pending"):
            found.append((alert, pressing))
    found.sort(key=lambda pair: (pair[1].due_at, pair[0].alert_id))
    return found[:UPCOMING]


def _upcoming(viewer: Viewer, coming: Sequence[tuple[Alert, Deadline]], now: datetime) -> Markup:
    if not coming:
        return message("info", viewer.t("sup.no_upcoming"))
    rows = [
        fmt(
            '<tr data-alert-id="{id}"><td class="deadline">{due}</td>'
            '<td><a class="open" href="/alerts/{id}"><code>{short}</code></a></td>'
            "<td>{urgency}</td><td>{town}</td><td>{agencies}</td></tr>",
            id=alert.alert_id,
            due=due_mark(viewer, deadline, now, label=_deadline_label(viewer, deadline)),
            short=_short(alert.subject),
            urgency=i18n.label(viewer.lang, "urgency", alert.header.urgency),
            town=i18n.town(viewer.lang, alert.header.town),
            agencies=viewer.sep.join(viewer.agency(a) for a in alert.latest.agencies_involved[:4]),
        )
        for alert, deadline in coming
    ]
    return fmt(
        '<div class="scroll"><table class="grid upcoming" id="upcoming"><thead><tr><th>{deadline}</th>'
        "<th>{case}</th><th>{urgency}</th><th>{town}</th><th>{agencies}</th></tr></thead>"
        "<tbody>{rows}</tbody></table></div>",
        deadline=viewer.t("col.deadline"),
        case=viewer.t("col.case"),
        urgency=viewer.t("col.urgency"),
        town=viewer.t("col.town"),
        agencies=viewer.t("col.agencies"),
        rows=join(rows),
    )


def _percent(rate: float | None) -> str:
    return "—" if rate is None else f"{rate * 100:.0f}%"


def _rates(viewer: Viewer, rates: Rates | None, selected: str | None = None) -> Markup:
    if rates is None or not rates.rows:
        return message("info", viewer.t("sup.no_report"))
    period = viewer.t("sup.period", start=viewer.when(rates.period_start), end=viewer.when(rates.period_end))
    table = join(
        fmt(
            '<tr data-agency="{id}"{current}><td><a href="/supervision?agency={id}#trend">{name}</a></td>'
            '<td class="num">{received}</td><td class="num">{pending}</td>'
            '<td class="num">{response}</td><td class="num">{resolution}</td>'
            '<td class="num">{satisfaction}</td><td class="num">{breaches}</td></tr>',
            id=row.agency,
            current=Markup(' aria-current="true" class="current"') if row.agency == selected else "",
            name=viewer.agency(row.agency),
            received=row.received,
            pending=row.pending,
            response=_percent(row.response_rate),
            resolution=_percent(row.resolution_rate),
            satisfaction=_percent(row.satisfaction_rate),
            breaches=row.breaches,
        )
        for row in sorted(rates.rows, key=_lateness)
    )
    return fmt(
        '<p class="muted" id="period">{period}</p><p class="muted">{pending_note}</p>{chart}'
        '<div class="scroll"><table class="grid rates" id="rates"><thead><tr><th>{agency}</th>'
        "<th>{received}</th><th>{pending}</th><th>{response}</th><th>{resolution}</th><th>{satisfaction}</th>"
        "<th>{breaches}</th></tr></thead><tbody>{rows}</tbody></table></div>",
        period=period,
        pending_note=viewer.t("sup.pending_note"),
        chart=rates_chart(viewer, rates),
        agency=viewer.t("sup.agency"),
        received=viewer.t("sup.received"),
        pending=viewer.t("sup.pending"),
        response=viewer.t("sup.response"),
        resolution=viewer.t("sup.resolution"),
        satisfaction=viewer.t("sup.satisfaction"),
        breaches=viewer.t("sup.breach_count"),
        rows=table,
    )


def _lateness(row: AgencyRow) -> tuple[int, float, str]:
    """The latest agencies first: most breaches, then the lowest response rate."""
    return (-row.breaches, 2.0 if row.response_rate is None else row.response_rate, row.agency)


def trend_chart(viewer: Viewer, points: Sequence[Rates], agency: str | None = None) -> Markup:
    """The three rates at each report, oldest left (inline SVG): of one agency, or the whole district.
    A rate with nothing due at a report leaves a gap in its line."""
    series: list[tuple[datetime, AgencyRow]] = []
    for point in points:
        row = point.row(agency) if agency else point.district()
        if row is not None:
            series.append((point.period_end, row))
    if not series:
        return message("info", viewer.t("sup.no_report"))
    left, top, plot_w, plot_h = 44, 30, 640, 180
    width, height = left + plot_w + 20, top + plot_h + 34
    first, last = series[0][0], series[-1][0]
    span = max((last - first).total_seconds(), 1.0)

    def x(at: datetime) -> float:
        return left + plot_w * ((at - first).total_seconds() / span if len(series) > 1 else 0.5)

    def y(rate: float) -> float:
        return top + plot_h * (1 - rate)

    parts: list[Markup] = []
    for tick in (0, 50, 100):
        parts.append(
            fmt(
                '<line class="axis" x1="{x1}" y1="{y}" x2="{x2}" y2="{y}"></line>'
                '<text class="value" x="{tx}" y="{ty}" text-anchor="end">{tick}%</text>',
                x1=left,
                x2=left + plot_w,
                y=f"{y(tick / 100):.1f}",
                tx=left - 6,
                ty=f"{y(tick / 100) + 4:.1f}",
                tick=tick,
            )
        )
    for at, anchor in ((first, "start"), (last, "end")):
        parts.append(
            fmt(
                '<text class="value" x="{x}" y="{y}" text-anchor="{anchor}">{when}</text>',
                x=f"{x(at):.1f}",
                y=height - 8,
                anchor=anchor if len(series) > 1 else "middle",
                when=viewer.when(at),
            )
        )
    for i, key in enumerate(("response", "resolution", "satisfaction")):
        parts.append(
            fmt(
                '<rect class="bar-{key}" x="{x}" y="6" width="12" height="12"></rect>'
                '<text class="legend" x="{tx}" y="16">{label}</text>',
                key=key,
                x=left + i * 140,
                tx=left + i * 140 + 18,
                label=viewer.t(f"sup.{key}"),
            )
        )
        runs: list[list[tuple[float, float]]] = [[]]
        for at, row in series:
            rate = getattr(row, f"{key}_rate")
            if rate is None:
                runs.append([])
                continue
            runs[-1].append((x(at), y(rate)))
            parts.append(
                fmt(
                    '<circle class="dot-{key}" cx="{cx}" cy="{cy}" r="3"><title>{title}</title></circle>',
                    key=key,
                    cx=f"{x(at):.1f}",
                    cy=f"{y(rate):.1f}",
                    title=f"{viewer.when(at)} {viewer.t('sup.' + key)} {_percent(rate)}",
                )
            )
        for run in runs:
            if len(run) > 1:
                parts.append(
                    fmt(
                        '<polyline class="line-{key}" points="{points}"></polyline>',
                        key=key,
                        points=" ".join(f"{px:.1f},{py:.1f}" for px, py in run),
                    )
                )
    return fmt(
        '<figure class="chart"><svg id="trend-chart" xmlns="http://www.w3.org/2000/svg" role="img" '
        'viewBox="0 0 {w} {h}" width="{w}" height="{h}" data-points="{n}" aria-labelledby="trend-title">'
        '<title id="trend-title">{title}</title>{parts}</svg></figure>',
        w=width,
        h=height,
        n=len(series),
        title=viewer.t("sup.trend", scope=viewer.agency(agency) if agency else viewer.t("sup.district")),
        parts=join(parts),
    )


def rates_chart(viewer: Viewer, rates: Rates) -> Markup:
    """A grouped horizontal bar chart (inline SVG): three bars per agency, 0 to 100 %."""
    label_w, bar_w, bar_h, gap, top = 230, 420, 12, 14, 34
    group_h = 3 * bar_h + gap
    height = top + group_h * len(rates.rows) + 10
    width = label_w + bar_w + 60
    series = (
        ("response", "response_rate"),
        ("resolution", "resolution_rate"),
        ("satisfaction", "satisfaction_rate"),
    )
    parts: list[Markup] = []
    for i, (key, _attr) in enumerate(series):
        parts.append(
            fmt(
                '<rect class="bar-{key}" x="{x}" y="6" width="12" height="12"></rect>'
                '<text class="legend" x="{tx}" y="16">{label}</text>',
                key=key,
                x=label_w + i * 140,
                tx=label_w + i * 140 + 18,
                label=viewer.t(f"sup.{key}"),
            )
        )
    for tick in (0, 50, 100):
        x = label_w + bar_w * tick // 100
        parts.append(
            fmt(
                '<line class="axis" x1="{x}" y1="{y1}" x2="{x}" y2="{y2}"></line>',
                x=x,
                y1=top - 6,
                y2=height - 6,
            )
        )
    for index, row in enumerate(rates.rows):
        y = top + index * group_h
        parts.append(
            fmt(
                '<text class="label" x="{x}" y="{y}" text-anchor="end">{name}</text>',
                x=label_w - 8,
                y=y + bar_h * 2 - 2,
                name=viewer.agency(row.agency),
            )
        )
        for j, (key, attr) in enumerate(series):
            value = getattr(row, attr)
            rate = 0.0 if value is None else float(value)
            by = y + j * bar_h
            parts.append(
                fmt(
                    '<rect class="bar-{key}" x="{x}" y="{y}" width="{w}" height="{h}">'
                    "<title>{title}</title></rect>"
                    '<text class="value" x="{tx}" y="{ty}">{pct}</text>',
                    key=key,
                    x=label_w,
                    y=by,
                    w=f"{bar_w * rate:.1f}",
                    h=bar_h - 2,
                    title=f"{viewer.agency(row.agency)} {viewer.t('sup.' + key)} {_percent(value)}",
                    tx=f"{label_w + bar_w * rate + 4:.1f}",
                    ty=by + bar_h - 3,
                    pct=_percent(value),
                )
            )
    return fmt(
        '<figure class="chart"><svg id="rates-chart" xmlns="http://www.w3.org/2000/svg" role="img" '
        'viewBox="0 0 {w} {h}" width="{w}" height="{h}" aria-labelledby="chart-title">'
        '<title id="chart-title">{title}</title>{parts}</svg></figure>',
        w=width,
        h=height,
        title=viewer.t("sup.chart"),
        parts=join(parts),
    )


def _breaches(viewer: Viewer, view: CaseView, breaches: Sequence[Entry]) -> Markup:
    if not breaches:
        return message("info", viewer.t("sup.no_breaches"))
    rows = []
    for entry in breaches:
        event = entry.event
        if not isinstance(event, SupervisionBreach):
            continue
        alert = view.alert_for_subject(entry.subject)
        case = (
            fmt('<a href="/alerts/{id}"><code>{s}</code></a>', id=alert.alert_id, s=_short(entry.subject))
            if alert is not None
            else fmt("<code>{s}</code>", s=_short(entry.subject))
        )
        rows.append(
            fmt(
                '<tr data-event-id="{id}" data-agency="{agency_id}"><td>{detected}</td><td>{agency}</td>'
                "<td>{kind}</td><td>{urgency}</td><td>{due}</td><td>{case}</td>"
                "<td><code>{lead}</code></td></tr>",
                id=entry.event_id,
                agency_id=event.agency,
                detected=viewer.when(event.detected_at),
                agency=viewer.agency(event.agency),
                kind=i18n.label(viewer.lang, "deadline", event.deadline_kind),
                urgency=i18n.label(viewer.lang, "urgency", event.urgency),
                due=viewer.when(event.due_at),
                case=case,
                lead=event.lead_id,
            )
        )
    return fmt(
        '<table class="grid breaches" id="breaches"><thead><tr><th>{detected}</th><th>{agency}</th>'
        "<th>{kind}</th><th>{urgency}</th><th>{due}</th><th>{case}</th><th>{lead}</th></tr></thead>"
        "<tbody>{rows}</tbody></table>",
        detected=viewer.t("col.detected"),
        agency=viewer.t("sup.agency"),
        kind=viewer.t("col.kind"),
        urgency=viewer.t("col.urgency"),
        due=viewer.t("col.due"),
        case=viewer.t("col.case"),
        lead=viewer.t("col.lead"),
        rows=join(rows),
    )
