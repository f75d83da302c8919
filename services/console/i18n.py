"""The console's words in Chinese (the default) and English.

Every message has both languages; :func:`text` falls back to Chinese for an unknown language and names
the key in the error for an unknown message. Placeholders are ``str.format`` fields and must be the same
in both languages (a unit test checks it). Names of agencies come from the registry, not from here.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

from services.simulator import district

Lang = Literal["zh", "en"]
LANGS: Final[tuple[Lang, ...]] = get_args(Lang)
DEFAULT: Final[Lang] = "zh"
HTML_LANG: Final[dict[Lang, str]] = {"zh": "zh-CN", "en": "en"}

MESSAGES: Final[dict[str, tuple[str, str]]] = {
    # chrome
    "app.name": ("联席会议协调台", "Joint-meeting console"),
    "app.brand": ("联防", "Lianfang"),
    "nav.alerts": ("预警队列", "Alert queue"),
    "nav.supervision": ("工作督查", "Supervision"),
    "nav.logout": ("退出", "Sign out"),
    "nav.signed_in_as": ("当前用户：{name}", "Signed in as {name}"),
    "lang.other": ("English", "中文"),
    "lang.other_title": ("Switch to English", "切换到中文"),
    "footer.notice": (
        "本系统内容仅供联席会议办公室依职责使用；每一次查阅都记入审计日志。",
        "For the joint-meeting office's duties only; every view is written to the audit log.",
    ),
    # login
    "login.title": ("登录", "Sign in"),
    "login.name": ("用户名", "User name"),
    "login.password": ("密码", "Password"),
    "login.submit": ("登录", "Sign in"),
    "login.failed": (
        "用户名或密码错误，或该账户因多次失败已被暂时锁定。",
        "Wrong user name or password, or the account is locked for a while after repeated failures.",
    ),
    "login.expired": ("会话已过期，请重新登录。", "Your session has expired; please sign in again."),
    "login.signed_out": ("您已退出。", "You have signed out."),
    "login.notice": (
        "仅限联席会议办公室工作人员使用。",
        "For staff of the joint-meeting office only.",
    ),
    # errors
    "error.title": ("请求未被接受", "Request refused"),
    "error.csrf": (
        "安全校验失败（页面可能已过期）。请返回、刷新页面后重试。",
        "The security check failed (the page may be out of date). Go back, reload the page and try again.",
    ),
    "error.not_found": ("找不到该页面或预警。", "No such page or alert."),
    "error.internal": (
        "控制台出错，请求未完成。请稍后重试；如仍出错，请联系运维人员。",
        "The console failed; nothing was done. Try again later; if it fails again, tell the operators.",
    ),
    "error.back": ("返回预警队列", "Back to the alert queue"),
    # queue
    "queue.title": ("预警队列", "Alert queue"),
    "queue.empty": ("暂无符合条件的预警。", "No alert matches."),
    "queue.count": ("共 {n} 条", "{n} shown"),
    "queue.open_alert": ("查看预警", "Open the alert"),
    "status.open": ("新预警", "New"),
    "status.acknowledged": ("已签收", "Acknowledged"),
    "status.scheduled": ("已安排会商", "Scheduled"),
    "status.concluded": ("已结束", "Concluded"),
    "status.active": ("未结束", "Not concluded"),
    "status.all": ("全部", "All"),
    "filter.status": ("状态", "Status"),
    "filter.town": ("镇街", "Town"),
    "filter.rule": ("触发规则", "Rule"),
    "filter.age": ("预警时间", "Raised"),
    "filter.any": ("全部", "Any"),
    "filter.apply": ("筛选", "Filter"),
    "filter.search": ("搜索", "Search"),
    "filter.search_hint": ("假名、镇街、类别、理由或状态", "Pseudonym, town, category, reason or status"),
    "filter.category": ("类别", "Category"),
    "filter.overdue": ("只看超期", "Overdue only"),
    "filter.sort": ("排序", "Sort by"),
    "sort.priority": ("优先处理", "Most pressing"),
    "sort.deadline": ("期限最近", "Nearest deadline"),
    "sort.raised": ("最新预警", "Newest raised"),
    "sort.updated": ("最近更新", "Recently updated"),
    "sort.town": ("镇街", "Town"),
    "pager.label": ("分页", "Pages"),
    "pager.prev": ("上一页", "Previous page"),
    "pager.next": ("下一页", "Next page"),
    "pager.status": ("第 {page}/{pages} 页，共 {n} 条", "Page {page} of {pages} · {n} in all"),
    "a11y.skip": ("跳到主要内容", "Skip to the main content"),
    "age.1d": ("24 小时内", "in the last 24 h"),
    "age.7d": ("7 天内", "in the last 7 days"),
    "age.30d": ("30 天内", "in the last 30 days"),
    "age.older": ("7 天以前", "more than 7 days ago"),
    "col.status": ("状态", "Status"),
    "col.urgency": ("紧急程度", "Urgency"),
    "col.victim": ("受害人假名", "Victim pseudonym"),
    "col.town": ("镇街", "Town"),
    "col.category": ("类别", "Category"),
    "col.reasons": ("会商理由", "Reasons"),
    "col.agencies": ("涉及机构", "Agencies"),
    "col.raised": ("预警时间", "Raised"),
    "col.updated": ("更新时间", "Updated"),
    "col.deadline": ("期限", "Deadline"),
    "live.connecting": ("正在连接实时更新…", "Connecting live updates…"),
    "live.on": ("实时更新中", "Live"),
    "live.off": ("实时更新已断开，正在重连…", "Live updates interrupted; reconnecting…"),
    "live.changed": ("此预警已有更新。", "This alert has changed."),
    "live.reload": ("刷新", "Reload"),
    # vocabularies
    "reason.high_risk": ("高风险", "High risk"),
    "reason.escalation": ("可能升级", "Escalation"),
    "reason.professional_judgement": ("专业判断", "Professional judgement"),
    "reason.repeat": ("会商后再次发生", "Repeat after a meeting"),
    "reason.convergence": ("多机构报告", "Several agencies"),
    "reason.minor_sexual_abuse": ("未成年人遭受性侵害或虐待", "Minor: sexual assault or abuse"),
    "reason.order_breach": ("违反保护令", "Protection order breached"),
    "reason.serial_suspect": ("同一嫌疑人多名受害人", "Serial suspect"),
    "urgency.immediate": ("立即", "Immediate"),
    "urgency.urgent": ("紧急", "Urgent"),
    "urgency.routine": ("一般", "Routine"),
    "category.domestic_violence": ("家庭暴力", "Domestic violence"),
    "category.sexual_assault": ("性侵害", "Sexual assault"),
    "category.child_abuse": ("虐待儿童", "Child abuse"),
    "category.neglect_of_guardianship": ("监护缺失", "Neglect of guardianship"),
    "category.trafficking": ("拐卖", "Trafficking"),
    "category.employment_discrimination": ("就业性别歧视", "Employment discrimination"),
    "category.child_labour": ("使用童工", "Child labour"),
    "category.other": ("其他", "Other"),
    "category.none": ("—", "—"),
    "deadline.acknowledge": ("签收", "Acknowledge"),
    "deadline.first_action": ("首次处置", "First action"),
    "deadline.resolve": ("办结", "Resolution"),
    "deadline.protection_order_decision": ("保护令裁定", "Protection-order decision"),
    "deadline.action_item": ("会商任务", "Action item"),
    "deadline.schedule": ("安排会商", "Schedule the meeting"),
    "due.left": ("剩余 {span}", "{span} left"),
    "due.overdue": ("已超期 {span}", "{span} overdue"),
    "due.met": ("已按时完成", "Done in time"),
    "due.met_late": ("已完成（超期）", "Done late"),
    "due.passed": ("已到期，未收到超期督办", "Due time passed; no breach reported"),
    "due.none": ("无待办期限", "Nothing due"),
    "due.at": ("期限 {at}", "due {at}"),
    "due.item": ("会商任务（{owner}）", "Action item ({owner})"),
    "yes": ("是", "yes"),
    "no": ("否", "no"),
    # alert
    "alert.title": ("预警详情", "Alert"),
    "alert.id": ("预警编号", "Alert id"),
    "alert.version": ("版本", "Version"),
    "alert.victim": ("受害人假名", "Victim pseudonym"),
    "alert.minor": ("未成年人", "Minor"),
    "alert.raised": ("预警时间", "Raised"),
    "alert.updated": ("更新时间", "Updated"),
    "alert.reasons": ("会商理由", "Reasons for a joint meeting"),
    "alert.agencies": ("涉及机构", "Agencies involved"),
    "alert.deadlines": ("办理期限", "Deadlines"),
    "alert.timeline": ("案件时间线", "Case timeline"),
    "alert.timeline_note": (
        "联席会议办公室可查阅的事件：预警、会商安排与结论、超期督办。",
        "The events the joint-meeting office may read: alerts, meetings and their conclusions, "
        "supervision breaches.",
    ),
    "alert.related": ("相关事件（{n}）", "Related events ({n})"),
    "alert.related_note": (
        "这些事件由办理机构持有，办公室只能看到其编号。",
        "These events are sealed to the agencies that handle them; the office sees their ids only.",
    ),
    "alert.meeting": ("会商安排", "Meeting"),
    "alert.conclusion": ("会商结论", "Conclusions"),
    "alert.actions": ("办理", "Actions"),
    "alert.concluded_note": ("此预警已结束。", "This alert is concluded."),
    "col.time": ("时间", "Time"),
    "col.event": ("事件", "Event"),
    "col.from": ("发送方", "From"),
    "action.acknowledge": ("签收预警", "Acknowledge the alert"),
    "action.schedule": ("安排会商", "Schedule the meeting"),
    "action.conclude": ("记录结论并结束预警", "Record the conclusions and close the alert"),
    "form.meeting_at": ("会商时间", "Meeting time"),
    "form.location": ("地点", "Location"),
    "form.participants": ("参会机构", "Participants"),
    "form.concluded_at": ("结束时间", "Concluded at"),
    "form.summary": ("会商纪要", "Summary"),
    "form.items": ("任务清单", "Action items"),
    "form.owner": ("责任机构", "Owner"),
    "form.due": ("完成期限", "Due by"),
    "form.description": ("任务内容", "What is to be done"),
    "form.add_item": ("增加一项任务", "Add an item"),
    "form.choose": ("请选择", "Choose"),
    "form.timezone": ("时间均为{tz}", "Times are in {tz}"),
    "tz.shanghai": ("北京时间（UTC+8）", "China Standard Time (UTC+8)"),
    "done.acknowledge": ("已签收，签收事件已发送。", "Acknowledged; the event is on the bus."),
    "done.schedule": ("会商已安排，安排事件已发送。", "The meeting is scheduled; the event is on the bus."),
    "done.conclude": ("结论已记录，预警已结束。", "The conclusions are recorded and the alert is closed."),
    "done.queued": (
        "事件已存入发件箱，Kafka 恢复连接后自动发送。",
        "The event is in the outbox and will be sent when Kafka is reachable.",
    ),
    "err.form": ("请更正以下问题：", "Please correct the following:"),
    "err.meeting_at": ("请填写有效的会商时间。", "Give a valid meeting time."),
    "err.concluded_at": ("请填写有效的结束时间。", "Give a valid time the meeting concluded."),
    "err.participants": ("请至少选择一个参会机构。", "Choose at least one participant."),
    "err.unknown_participant": ("所选机构不在名册中。", "A chosen agency is not in the registry."),
    "err.location": ("地点不超过 200 字。", "The location has at most 200 characters."),
    "err.summary": ("请填写会商纪要（不超过 20000 字）。", "Write a summary (at most 20000 characters)."),
    "err.item": (
        "第 {n} 项任务需填写责任机构、完成期限和任务内容（不超过 2000 字）。",
        "Item {n} needs an owner, a due date and a description (at most 2000 characters).",
    ),
    "err.before_meeting": (
        "结束时间不能早于会商时间（{when}）。",
        "The meeting cannot conclude before the time it was scheduled for ({when}).",
    ),
    "err.item_due": (
        "第 {n} 项任务的期限早于会商结束时间。",
        "Item {n} is due before the meeting concluded.",
    ),
    "err.items": ("任务不超过 100 项。", "At most 100 action items."),
    "err.concluded": ("此预警已结束，不能再办理。", "This alert is concluded; nothing more can be done."),
    "err.no_route": (
        "此预警没有线索类别，签收事件无法按共享规则送达。请直接安排会商。",
        "This alert has no lead category, so the sharing policy routes no acknowledgement; schedule the "
        "meeting instead.",
    ),
    "err.publish": (
        "事件未能发出，请稍后重试。",
        "The event could not be published; try again later.",
    ),
    # timeline
    "tl.alert": ("预警（第 {version} 版）：{reasons}", "Alert (version {version}): {reasons}"),
    "tl.acknowledged": ("办公室签收（{user}）", "Acknowledged by the office ({user})"),
    "tl.scheduled": ("安排会商：{when}", "Meeting scheduled for {when}"),
    "tl.concluded": ("会商结束，{n} 项任务", "Meeting concluded; action items: {n}"),
    "tl.breach": ("超期：{agency}（{kind}）", "Deadline missed: {agency} ({kind})"),
    "tl.other": ("{type}", "{type}"),
    "tl.pending": ("已发送，等待总线投递", "sent, awaiting delivery"),
    # supervision
    "sup.title": ("工作督查", "Supervision"),
    "sup.breaches": ("超期督办单（{n}）", "Overdue list: deadline breaches ({n})"),
    "sup.no_breaches": ("暂无超期。", "No breach."),
    "sup.rates": ("各机构接诉即办指标", "Response, resolution and satisfaction per agency"),
    "sup.period": ("统计期：{start} 至 {end}", "Period: {start} to {end}"),
    "sup.no_report": ("尚未收到督查报告。", "No supervision report has arrived yet."),
    "sup.chart": ("各机构响应率、解决率、满意率", "Response, resolution and satisfaction rates per agency"),
    "sup.agency": ("机构", "Agency"),
    "sup.received": ("收到线索", "Leads received"),
    "sup.response": ("响应率", "Response rate"),
    "sup.resolution": ("解决率", "Resolution rate"),
    "sup.satisfaction": ("满意率", "Satisfaction rate"),
    "sup.breach_count": ("超期次数", "Breaches"),
    "sup.pending": ("期限内待办", "Pending"),
    "sup.pending_note": (
        "比率只计已到期的线索：仍在期限内的线索为待办，不计为未响应。点击机构名称查看其趋势与督办单。",
        "Rates count only leads that are due: a lead still inside its deadline is pending, not a failure. "
        "Select an agency for its trend and overdue list.",
    ),
    "sup.upcoming": (
        "即将到期的预警（{n} 项即将超期）",
        "Alerts with deadlines coming next ({n} about to breach)",
    ),
    "sup.no_upcoming": ("没有未到期的预警期限。", "No alert has a deadline still to come."),
    "sup.trend": ("指标趋势：{scope}", "Trend: {scope}"),
    "sup.district": ("全区", "the whole district"),
    "sup.all_agencies": ("全部机构", "all agencies"),
    "col.detected": ("发现时间", "Detected"),
    "col.due": ("期限", "Due"),
    "col.kind": ("期限类别", "Deadline"),
    "col.case": ("案件", "Case"),
    "col.lead": ("事件编号", "Event id"),
    # relative times
    "ago.now": ("刚刚", "just now"),
    "ago.minutes": ("{n} 分钟前", "{n} min ago"),
    "ago.hours": ("{n} 小时前", "{n} h ago"),
    "ago.days": ("{n} 天前", "{n} days ago"),
    # roles and accounts
    "role.coordinator": ("协调员", "coordinator"),
    "role.supervisor": ("督查", "supervisor"),
    "role.administrator": ("账户管理员", "administrator"),
    "error.forbidden": (
        "您的账户角色（{role}）无权查看此页面或执行此操作；如确需此权限，请联系账户管理员。",
        "Your account's role ({role}) may not see this page or do this; ask an administrator if you need to.",
    ),
    "alert.read_only": (
        "督查角色只能查阅，不能处置预警。",
        "The supervisor role reads alerts; it cannot act on them.",
    ),
    "nav.accounts": ("账户", "Accounts"),
    "accounts.title": ("控制台账户", "Console accounts"),
    "accounts.note": (
        "账户由 lianfang console adduser / role / unlock 命令创建、变更角色和解锁。",
        "Accounts are created, given roles and unlocked with lianfang console adduser / role / unlock.",
    ),
    "accounts.name": ("用户名", "Name"),
    "accounts.role": ("角色", "Role"),
    "accounts.locked": ("锁定至", "Locked until"),
    "accounts.last_login": ("上次登录", "Last sign-in"),
    # the joint-meeting record
    "record.title": ("联席会议会商纪要", "Joint-meeting record"),
    "record.link": ("打印会商纪要", "Printable meeting record"),
    "record.back": ("返回预警详情", "Back to the alert"),
    "record.print": ("打印", "Print"),
    "record.case": ("案件", "Case"),
    "record.meeting": ("会商", "Meeting"),
    "record.attendees": ("参会机构", "Attending agencies"),
    "record.items": ("任务清单", "Action items"),
    "record.no_items": ("本次会商未布置任务。", "The meeting agreed no action items."),
    "record.concluded_at": ("会商结束", "Concluded"),
    "record.concluded_by": ("会商于 {when} 结束，由 {who} 记录。", "Concluded {when}, recorded by {who}."),
    "record.printed": ("{who} 于 {when} 打印。", "Printed {when} by {who}."),
    "record.notice": (
        "本纪要含个人信息，仅限联席会议成员单位依职责使用，不得外传。",
        "This record holds personal data: for the member agencies' duties only; do not pass it on.",
    ),
    "record.not_yet": (
        "该预警的会商结论尚未到达，纪要在会商结束后生成。",
        "This alert's conclusions have not arrived yet; the record exists once the meeting is concluded.",
    ),
}

TOWN_NAMES: Final[dict[str, tuple[str, str]]] = {town: (zh, town.capitalize()) for town, zh in district.TOWNS}


def lang_of(value: str | None) -> Lang:
    """A supported language from a cookie or query value; anything else is the default (Chinese)."""
    return "en" if value == "en" else DEFAULT


def other(lang: Lang) -> Lang:
    return "zh" if lang == "en" else "en"


def text(lang: str, key: str, /, **values: object) -> str:
    """The message ``key`` in ``lang`` (Chinese for an unknown language), formatted with ``values``."""
    try:
        zh, en = MESSAGES[key]
    except KeyError:
        raise KeyError(f"no console message {key!r}") from None
    message = en if lang == "en" else zh
    return message.format(**values) if values else message


def label(lang: str, prefix: str, code: str | None) -> str:
    """The word for a code of a closed vocabulary (``reason``, ``status``, ...); unknown codes as they are."""
    if code is None:
        return "—"
    key = f"{prefix}.{code}"
    return text(lang, key) if key in MESSAGES else code


def town(lang: str, town_id: str | None) -> str:
    if town_id is None:
        return "—"
    names = TOWN_NAMES.get(town_id)
    if names is None:
        return town_id
    return names[1] if lang == "en" else names[0]
