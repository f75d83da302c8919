"""The console over HTTP, in process and without Kafka: a console on a loopback port whose bus client
never sends (its outbox is read back instead), a clock the test moves, and events fed to it as its
inbox reader would. Sign-in, lock-out, sessions, CSRF, cookies and headers, the audit trail, live
updates, and what the actions put on the bus."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from services.audit.chain import AuditEntry, parse_line, verify_lines
from services.audit.trail import LocalTrail, read_file
from services.console import pages as console_pages
from services.console.accounts import AccountStore
from services.console.app import Console, safe_next
from services.console.audit import AuditLog
from services.console.metrics import ConsoleMetrics
from services.console.settings import ConsoleSettings
from services.console.store import ViewStore
from services.hub.ids import alert_id_for
from services.kernel import envelope
from services.kernel.keystore import KdfParams
from services.sdk.client import Client
from tests.kit import NOW, DemoDomain, SetClock
from tests.unit.test_console_view import hub_alert, opened

pytestmark = pytest.mark.unit

PASSWORD = "correct horse battery staple"


class Harness:
    """A console on a loopback port, driven from a private event loop."""

    def __init__(self, domain: DemoDomain, tmp: Path, **settings: Any) -> None:
        self.domain = domain
        self.tmp = tmp
        self.clock = SetClock()
        self.settings = ConsoleSettings(
            bootstrap="127.0.0.1:9",
            home=domain.home,
            data_dir=tmp / "data",
            publish_wait_s=0,
            metrics_port=0,
            **{"cookie_secure": False, "lockout_failures": 3, **settings},
        )
        accounts = AccountStore(
            tmp / "accounts.sqlite", kdf=KdfParams.for_tests(), max_failures=3, clock=self.clock
        )
        if not accounts.exists("wang"):
            accounts.create("wang", PASSWORD)
        self.client = Client(
            keystore=domain.keys("coordinators"),
            registry=domain.registry,
            bootstrap="127.0.0.1:9",
            outbox_path=tmp / "outbox.sqlite",
            clock=self.clock,
            start=False,
        )
        self.console = Console(
            self.settings,
            registry=domain.registry,
            keystore=domain.keys("coordinators"),
            accounts=accounts,
            audit=AuditLog(tmp / "audit.sqlite", clock=self.clock),
            store=ViewStore(tmp / "view.sqlite"),
            client=self.client,
            clock=self.clock,
            metrics=ConsoleMetrics(CollectorRegistry()),
            read_inbox=False,
            trail=LocalTrail(tmp / "trail", "coordinators", "console", clock=self.clock),
        )
        self.loop = asyncio.new_event_loop()
        self.server = TestServer(self.console.application(), host="127.0.0.1")
        self.loop.run_until_complete(self.server.start_server())
        self.base = f"http://127.0.0.1:{self.server.port}"
        self.http = self.loop.run_until_complete(self._session())

    async def _session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    def request(self, method: str, path: str, **kw: Any) -> tuple[int, dict[str, str], str]:
        async def go() -> tuple[int, dict[str, str], str]:
            kw.setdefault("allow_redirects", False)
            async with self.http.request(method, self.base + path, **kw) as response:
                headers = {k: v for k, v in response.headers.items() if k != "Set-Cookie"}
                headers["Set-Cookie"] = " || ".join(response.headers.getall("Set-Cookie", []))
                return response.status, headers, await response.text()

        return self.loop.run_until_complete(go())

    def get(self, path: str, **kw: Any) -> tuple[int, dict[str, str], str]:
        return self.request("GET", path, **kw)

    def post(self, path: str, data: dict[str, Any], **kw: Any) -> tuple[int, dict[str, str], str]:
        return self.request("POST", path, data=data, **kw)

    def login_token(self) -> str:
        _, _, html = self.get("/login")
        return csrf_of(html)

    def sign_in(self, password: str = PASSWORD, name: str = "wang") -> tuple[int, dict[str, str], str]:
        token = self.login_token()
        return self.post("/login", {"_csrf": token, "name": name, "password": password, "next": "/alerts"})

    def page_token(self, path: str = "/alerts") -> str:
        _, _, html = self.get(path)
        return csrf_of(html)

    def feed(self, event: envelope.Opened) -> None:
        self.console.ingest(event)

    def published(self, participant: str = "plc") -> list[envelope.Opened]:
        """What the console put in its outbox, opened as ``participant`` would."""
        return [
            envelope.verify_and_open(
                p.value, registry=self.domain.registry, now=NOW, keystore=self.domain.keys(participant)
            )
            for p in self.client.outbox.pending()
        ]

    def close(self) -> None:
        self.loop.run_until_complete(self.http.close())
        self.loop.run_until_complete(self.server.close())
        self.console.stop()
        self.loop.close()


def csrf_of(html: str) -> str:
    found = re.search(r'name="_csrf" value="([^"]+)"', html)
    assert found, "the page has a form with a CSRF token"
    return found.group(1)


@pytest.fixture
def harness(domain: DemoDomain, tmp_path: Path) -> Iterator[Harness]:
    made = Harness(domain, tmp_path)
    yield made
    made.close()


@pytest.fixture
def signed_in(harness: Harness) -> Harness:
    status, headers, _ = harness.sign_in()
    assert status == 303, headers
    return harness


def alert_id_of(event: envelope.Opened) -> str:
    return str(event.sections["triage"]["alert_id"])


# --------------------------------------------------------------------------- no session, no case content


@pytest.mark.parametrize(
    "path",
    ["/", "/alerts", "/alerts?status=all", "/alerts/0190f3a0-0000-7000-8000-000000000000", "/supervision"],
)
def test_without_a_session_a_case_page_redirects_to_sign_in(harness: Harness, path: str) -> None:
    status, headers, body = harness.get(path)
    assert status == 303
    assert headers["Location"].startswith("/login")
    assert "p1." not in body


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/alerts/rows"), ("GET", "/events"), ("POST", "/logout")]
)
def test_without_a_session_background_requests_get_401(harness: Harness, method: str, path: str) -> None:
    assert harness.request(method, path)[0] == 401


def test_after_sign_in_the_redirect_goes_back_to_the_page_asked_for(harness: Harness) -> None:
    status, headers, _ = harness.get("/supervision")
    assert parse_qs(urlsplit(headers["Location"]).query) == {"next": ["/supervision"]}
    _, _, html = harness.get(headers["Location"])
    token = csrf_of(html)
    assert 'name="next" value="/supervision"' in html
    status, headers, _ = harness.post(
        "/login", {"_csrf": token, "name": "wang", "password": PASSWORD, "next": "/supervision"}
    )
    assert (status, headers["Location"]) == (303, "/supervision")


@pytest.mark.parametrize(
    ("target", "safe"),
    [
        ("/alerts/x?status=all", "/alerts/x?status=all"),
        ("//evil.example/", "/alerts"),
        ("https://evil.example/", "/alerts"),
        ("/\\evil.example", "/alerts"),
        ("", "/alerts"),
    ],
)
def test_redirect_targets_stay_on_this_site(target: str, safe: str) -> None:
    assert safe_next(target) == safe


# --------------------------------------------------------------------------- sign-in


def test_a_wrong_password_is_refused_without_a_session(harness: Harness) -> None:
    status, headers, body = harness.sign_in(password="not the password at all")
    assert status == 401
    assert "用户名或密码错误" in body
    assert "lianfang_session=" not in headers["Set-Cookie"]
    assert harness.get("/alerts")[0] == 303
    (row,) = harness.console.audit.rows()
    assert (row.who, row.action) == ("wang", "login_failed")


def test_three_wrong_passwords_lock_the_account_and_the_message_does_not_say_which(harness: Harness) -> None:
    for _ in range(3):
        assert harness.sign_in(password="not the password at all")[0] == 401
    status, _, body = harness.sign_in()
    assert status == 401, "locked: even the right password is refused"
    unknown = harness.sign_in(name="nobody")[2]
    assert re.search(r'id="message">([^<]*)<', body)[1] == re.search(r'id="message">([^<]*)<', unknown)[1]
    assert [r.action for r in harness.console.audit.rows()][-2:] == ["login_locked", "login_failed"]
    harness.clock.now += timedelta(minutes=15)
    assert harness.sign_in()[0] == 303


def test_cookies_are_http_only_same_site_strict_and_secure_when_configured(
    domain: DemoDomain, tmp_path: Path
) -> None:
    plain = Harness(domain, tmp_path / "plain")
    try:
        _, headers, _ = plain.sign_in()
        cookie = next(c for c in headers["Set-Cookie"].split(" || ") if c.startswith("lianfang_session="))
        assert "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
        assert "Path=/" in cookie
        assert "Secure" not in cookie
        assert "Max-Age" not in cookie
    finally:
        plain.close()
    secure = Harness(domain, tmp_path / "secure", cookie_secure=True)
    try:
        _, headers, _html = secure.get("/login")
        assert "__Host-lianfang_pre=" in headers["Set-Cookie"]
        assert "Secure" in headers["Set-Cookie"]
    finally:
        secure.close()


def test_a_session_expires_after_the_idle_time(signed_in: Harness) -> None:
    assert signed_in.get("/alerts")[0] == 200
    signed_in.clock.now += timedelta(minutes=31)
    status, headers, _ = signed_in.get("/alerts")
    assert status == 303
    assert "m=expired" in headers["Location"]
    _, _, html = signed_in.get(headers["Location"])
    assert "会话已过期" in html


def test_signing_out_ends_the_session(signed_in: Harness) -> None:
    token = signed_in.page_token()
    status, headers, _ = signed_in.post("/logout", {"_csrf": token})
    assert (status, headers["Location"]) == (303, "/login?m=signed_out")
    assert signed_in.get("/alerts")[0] == 303
    assert [r.action for r in signed_in.console.audit.rows()][-1] == "logout"


# --------------------------------------------------------------------------- CSRF


def test_a_post_without_the_csrf_token_is_refused(signed_in: Harness, domain: DemoDomain) -> None:
    event = hub_alert(domain)
    signed_in.feed(event)
    path = f"/alerts/{alert_id_of(event)}/acknowledge"
    assert signed_in.post(path, {})[0] == 403
    assert signed_in.post(path, {"_csrf": "forged"})[0] == 403
    assert signed_in.post("/logout", {})[0] == 403
    assert signed_in.client.outbox.pending() == []
    assert signed_in.post(path, {"_csrf": signed_in.page_token()})[0] == 303


def test_a_post_from_another_origin_is_refused_even_with_the_token(
    signed_in: Harness, domain: DemoDomain
) -> None:
    token = signed_in.page_token()
    headers = {"Origin": "http://evil.example"}
    assert signed_in.post("/logout", {"_csrf": token}, headers=headers)[0] == 403
    assert signed_in.post("/logout", {"_csrf": token}, headers={"Origin": "null"})[0] == 403
    same = {"Origin": signed_in.base}
    assert signed_in.post("/logout", {"_csrf": token}, headers=same)[0] == 303


def test_the_sign_in_form_needs_its_own_token(harness: Harness) -> None:
    status, _, body = harness.post("/login", {"name": "wang", "password": PASSWORD})
    assert status == 403
    assert "安全校验失败" in body
    assert harness.get("/alerts")[0] == 303


# --------------------------------------------------------------------------- pages, headers, audit


def test_pages_carry_a_strict_content_security_policy_and_no_cache(signed_in: Harness) -> None:
    _, headers, html = signed_in.get("/alerts")
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert headers["Cache-Control"] == "no-store"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "<script>" not in html, "no inline script"
    assert " style=" not in html, "no inline style"
    status, headers, _ = signed_in.get("/static/console.js")
    assert status == 200
    assert "javascript" in headers["Content-Type"]


def test_every_view_of_case_content_is_audited(signed_in: Harness, domain: DemoDomain) -> None:
    event = hub_alert(domain)
    signed_in.feed(event)
    alert_id = alert_id_of(event)
    signed_in.get("/alerts?town=renhe")
    signed_in.get(f"/alerts/{alert_id}")
    signed_in.get("/alerts/rows")
    signed_in.get("/supervision")
    signed_in.get("/alerts?q=" + quote("王芳 13912345678"))
    rows = [(r.who, r.action, r.target) for r in signed_in.console.audit.rows()]
    assert rows[1:] == [
        ("wang", "view_queue", "town=renhe"),
        ("wang", "view_alert", alert_id),
        ("wang", "view_queue", ""),
        ("wang", "view_supervision", ""),
        ("wang", "view_queue", "q=%2814+chars%29"),  # what was searched for, never the words
    ]
    assert all(r.remote == "127.0.0.1" for r in signed_in.console.audit.rows())
    trail = signed_in.console.trail
    assert trail is not None
    chain = [parse_line(line) for line in read_file(trail.path)]
    assert [(e.action, e.object) for e in chain] == [
        ("console_view", "queue"),
        ("console_view", alert_id),
        ("console_view", "queue"),
        ("console_view", "supervision"),
        ("console_view", "queue"),
    ]
    assert "王芳" not in read_file(trail.path)[-1].decode()
    assert isinstance(chain[1], AuditEntry)
    assert chain[1].subject == event.header.subject
    assert [r.ok for r in verify_lines(read_file(trail.path)).chains] == [True]


def test_the_audit_log_refuses_to_be_rewritten(signed_in: Harness) -> None:
    import sqlite3

    db = sqlite3.connect(signed_in.console.audit.path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("DELETE FROM audit")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("UPDATE audit SET who = 'someone else'")
    db.close()


def test_an_unknown_alert_is_not_found(signed_in: Harness) -> None:
    assert signed_in.get("/alerts/0190f3a0-0000-7000-8000-000000000000")[0] == 404
    assert signed_in.get("/alerts/not-an-id")[0] == 404


def test_the_queue_shows_alerts_and_the_language_switch_shows_it_in_english(
    signed_in: Harness, domain: DemoDomain
) -> None:
    event = hub_alert(domain)
    signed_in.feed(event)
    _, _, html = signed_in.get("/alerts")
    assert f'data-subject="{event.header.subject}"' in html
    assert "专业判断" in html
    status, headers, _ = signed_in.get("/lang/en?next=/alerts")
    assert (status, headers["Location"]) == (303, "/alerts")
    _, _, html = signed_in.get("/alerts")
    assert "Professional judgement" in html
    assert 'lang="en"' in html
    assert signed_in.get("/lang/en?next=//evil.example")[1]["Location"] == "/alerts"


def test_text_from_the_bus_is_escaped_in_pages(signed_in: Harness, domain: DemoDomain) -> None:
    event = hub_alert(domain)
    signed_in.feed(event)
    alert_id = alert_id_of(event)
    token = signed_in.page_token(f"/alerts/{alert_id}")
    location = '<img src=x onerror="alert(1)">'
    signed_in.post(
        f"/alerts/{alert_id}/schedule",
        {"_csrf": token, "meeting_at": "2026-11-03T09:30", "location": location, "participants": "police"},
    )
    (scheduled,) = signed_in.published("coordinators")
    signed_in.feed(scheduled)  # as the inbox would bring it back
    _, _, html = signed_in.get(f"/alerts/{alert_id}")
    assert location not in html
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html


# --------------------------------------------------------------------------- actions publish events


def test_scheduling_puts_a_sealed_joint_meeting_scheduled_in_the_outbox(
    signed_in: Harness, domain: DemoDomain
) -> None:
    event = hub_alert(domain)
    signed_in.feed(event)
    alert_id = alert_id_of(event)
    token = signed_in.page_token(f"/alerts/{alert_id}")
    status, headers, _ = signed_in.post(
        f"/alerts/{alert_id}/schedule",
        {
            "_csrf": token,
            "meeting_at": "2026-11-03T09:30",
            "location": "区妇联",
            "participants": ["plc", "police"],
        },
    )
    assert status == 303
    assert headers["Location"] == f"/alerts/{alert_id}?done=schedule&queued=1"
    (opened,) = signed_in.published("plc")
    assert opened.header.type == "joint_meeting.scheduled"
    assert opened.header.sender == "coordinators"
    assert opened.header.subject == event.header.subject
    assert event.header.id in opened.header.refs
    assert opened.sections["triage"] == {
        "schema_version": 1,
        "alert_id": alert_id,
        "meeting_at": "2026-11-03T09:30:00+08:00",
        "participants": ["plc", "police"],
    }
    assert opened.sections["details"]["location"] == "区妇联"
    _, _, html = signed_in.get(headers["Location"])
    assert 'data-status="scheduled"' in html
    assert "Kafka" in html
    assert [r.action for r in signed_in.console.audit.rows()][-2] == "schedule"


def test_acknowledging_reaches_the_agencies_of_the_case_and_the_hub(
    signed_in: Harness, domain: DemoDomain
) -> None:
    event = hub_alert(domain)
    signed_in.feed(event)
    alert_id = alert_id_of(event)
    assert signed_in.post(f"/alerts/{alert_id}/acknowledge", {"_csrf": signed_in.page_token()})[0] == 303
    (opened,) = signed_in.published("hub")
    assert opened.header.type == "lead.acknowledged"
    assert opened.sections["triage"]["lead_id"] == alert_id
    _, _, html = signed_in.get(f"/alerts/{alert_id}")
    assert 'data-status="acknowledged"' in html
    assert 'id="acknowledge"' not in html
    assert signed_in.post(f"/alerts/{alert_id}/acknowledge", {"_csrf": signed_in.page_token()})[0] == 303
    assert len(signed_in.published("hub")) == 1, "a second acknowledgement publishes nothing"


def test_a_form_with_mistakes_is_shown_again_with_the_problems_and_publishes_nothing(
    signed_in: Harness, domain: DemoDomain
) -> None:
    event = hub_alert(domain)
    signed_in.feed(event)
    alert_id = alert_id_of(event)
    token = signed_in.page_token(f"/alerts/{alert_id}")
    status, _, html = signed_in.post(
        f"/alerts/{alert_id}/conclude",
        {
            "_csrf": token,
            "summary": "纪要保留",
            "item_owner": "police",
            "item_due": "",
            "item_description": "x",
        },
    )
    assert status == 422
    assert "第 1 项任务需填写" in html
    assert "纪要保留" in html, "what was typed is kept"
    assert signed_in.client.outbox.pending() == []


def test_a_restarted_console_shows_what_it_had_from_its_stored_records(
    domain: DemoDomain, tmp_path: Path
) -> None:
    first = Harness(domain, tmp_path)
    event = hub_alert(domain)
    first.feed(event)
    first.sign_in()
    alert_id = alert_id_of(event)
    first.post(f"/alerts/{alert_id}/acknowledge", {"_csrf": first.page_token()})
    first.close()
    again = Harness(domain, tmp_path)
    try:
        again.sign_in()
        _, _, html = again.get(f"/alerts/{alert_id}")
        assert 'data-status="acknowledged"' in html
    finally:
        again.close()
    assert b"13800000001" not in (tmp_path / "view.sqlite").read_bytes()


def test_live_updates_announce_each_change_to_open_pages(signed_in: Harness, domain: DemoDomain) -> None:
    event = hub_alert(domain)

    async def listen() -> list[str]:
        lines: list[str] = []
        async with signed_in.http.get(signed_in.base + "/events") as response:
            assert response.headers["Content-Type"].startswith("text/event-stream")
            async for raw in response.content:
                line = raw.decode().strip()
                lines.append(line)
                if line == "event: ready":
                    signed_in.loop.call_soon(signed_in.feed, event)
                if line.startswith('data: {"type"'):
                    return lines
        return lines

    lines = signed_in.loop.run_until_complete(asyncio.wait_for(listen(), 10))
    change = json.loads(lines[-1].removeprefix("data: "))
    assert change == {
        "type": "joint_meeting.alert",
        "event_id": event.header.id,
        "alert_id": alert_id_of(event),
    }
    assert [r.action for r in signed_in.console.audit.rows()][-1] == "live_updates"


def test_the_supervision_page_shows_breaches_and_the_rates_of_the_latest_report(
    signed_in: Harness, domain: DemoDomain
) -> None:
    subject = domain.subject("13800000001")
    signed_in.feed(hub_alert(domain))
    signed_in.feed(
        opened(
            domain,
            "supervision.breach",
            {
                "schema_version": 1,
                "lead_id": envelope.new_event_id(),
                "agency": "womens_federation",
                "deadline_kind": "acknowledge",
                "due_at": NOW.isoformat(),
                "detected_at": NOW.isoformat(),
                "urgency": "urgent",
            },
            subject=subject,
            audience=["womens_federation"],
        )
    )
    row = {"agency": "police", "received": 4, "responded_in_time": 3, "resolved": 2, "satisfied": 1}
    signed_in.feed(
        opened(
            domain,
            "supervision.report",
            {
                "schema_version": 1,
                "period_start": (NOW - timedelta(days=1)).isoformat(),
                "period_end": NOW.isoformat(),
                "rows": [{**row, "response_rate": 0.75, "resolution_rate": 0.5, "satisfaction_rate": 0.5}],
            },
            subject="p0." + "A" * 43,
            audience=[],
            category=None,
            minor=None,
            town=None,
            urgency="routine",
        )
    )
    _, _, html = signed_in.get("/supervision")
    assert 'id="rates-chart"' in html
    assert re.search(r'<tr data-agency="police">.*?75%.*?50%.*?50%', html)
    assert 'data-agency="womens_federation"' in html
    assert f'href="/alerts/{alert_id_for(subject, 1)}"' in html, "a breach links to the victim's alert"


def _stream(harness: Harness, path: str, until: str, **kw: Any) -> list[str]:
    """The lines of the live stream at ``path`` up to the first that starts with ``until``."""

    async def listen() -> list[str]:
        lines: list[str] = []
        async with harness.http.get(harness.base + path, **kw) as response:
            async for raw in response.content:
                lines.append(raw.decode().strip())
                if lines[-1].startswith(until):
                    return lines
        return lines

    return harness.loop.run_until_complete(asyncio.wait_for(listen(), 10))


def _seen_change(html: str) -> int:
    found = re.search(r'data-seen-change="(\d+)"', html)
    assert found, "every page carries the last change it was made with"
    return int(found.group(1))


def test_a_stream_opened_after_its_page_was_made_is_first_sent_the_changes_it_missed(
    signed_in: Harness, domain: DemoDomain
) -> None:
    _, _, html = signed_in.get("/alerts")
    seen = _seen_change(html)
    event = hub_alert(domain)
    signed_in.feed(event)  # reaches the console after the page was made, before its stream opens
    lines = _stream(signed_in, f"/events?since={seen}", 'data: {"type"')
    at = lines.index(f"id: {seen + 1}")
    assert lines.index("event: ready") < at
    assert lines[at + 1 : at + 3] == ["event: change", lines[-1]]
    assert json.loads(lines[-1].removeprefix("data: "))["alert_id"] == alert_id_of(event)
    _, _, html = signed_in.get("/alerts")
    assert _seen_change(html) == seen + 1


def test_a_reconnecting_stream_resumes_after_the_last_change_it_received(
    signed_in: Harness, domain: DemoDomain
) -> None:
    first, second = hub_alert(domain), hub_alert(domain, phone="13800000002")
    signed_in.feed(first)
    signed_in.feed(second)
    _, _, html = signed_in.get("/alerts")
    last = _seen_change(html)
    # The browser sends the id it received last; it wins over the page's own number.
    lines = _stream(signed_in, "/events?since=0", 'data: {"type"', headers={"Last-Event-ID": str(last - 1)})
    assert f"id: {last}" in lines
    assert f"id: {last - 1}" not in lines
    assert json.loads(lines[-1].removeprefix("data: "))["alert_id"] == alert_id_of(second)


@pytest.mark.parametrize("since", ["999", "-1", "x"], ids=["a number it never gave", "negative", "not one"])
def test_a_stream_that_names_a_change_the_console_does_not_know_is_told_to_resync_or_starts_now(
    signed_in: Harness, since: str
) -> None:
    if since == "999":  # e.g. the console restarted since the page was made: the page asks again
        assert _stream(signed_in, f"/events?since={since}", "event: resync")[-1] == "event: resync"
    else:  # no number at all: the stream starts with what comes next, as before
        lines = _stream(signed_in, f"/events?since={since}", "event: ready")
        assert lines[-1] == "event: ready"


def test_the_broker_hands_out_what_a_page_missed_while_it_keeps_it() -> None:
    from services.console.app import Broker
    from services.console.view import Change

    broker = Broker(depth=3)
    assert broker.missed(0) == []
    changes = [Change("joint_meeting.alert", f"e{i}", f"a{i}") for i in range(1, 6)]
    for change in changes:
        broker.publish(change)
    assert broker.last == 5
    assert broker.missed(5) == []
    assert broker.missed(3) == [(4, changes[3]), (5, changes[4])]
    assert broker.missed(2) == [(3, changes[2]), (4, changes[3]), (5, changes[4])]
    assert broker.missed(1) is None, "change 2 is no longer kept"
    assert broker.missed(6) is None, "a number it never gave"


def test_a_bug_met_on_a_page_is_an_error_page_counted_and_logged_by_type_and_frames_only(
    signed_in: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    quoted = "meeting summary: 王芳 13912345678"  # a message quoting what a page or form held

    def failing(*_args: Any) -> str:
        raise ValueError(quoted)

    monkeypatch.setattr(console_pages, "supervision", failing)
    status, _headers, html = signed_in.get("/supervision")
    assert status == 500
    assert "Try again later" in html or "请稍后重试" in html
    assert signed_in.console.metrics.refused.labels("internal")._value.get() == 1
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "ValueError" in logged
    assert "王芳" not in logged
    assert "王芳" not in html


def test_an_inbox_event_that_does_not_match_its_schema_is_not_shown_and_is_refused_to_the_reader(
    signed_in: Harness, domain: DemoDomain
) -> None:
    event = hub_alert(domain)
    broken = dataclasses.replace(
        event, sections={"triage": {**event.sections["triage"], "reasons": []}, "details": {}}
    )
    refused: list[tuple[str, str]] = []
    assert signed_in.console.ingest(broken, lambda reason, detail: refused.append((reason, detail))) is None
    assert [reason for reason, _ in refused] == ["malformed"]
    assert event.header.subject not in refused[0][1], "the detail quotes nothing of the event"
    assert signed_in.console.metrics.applied.labels("invalid")._value.get() == 1


def test_the_console_s_inbox_reader_refuses_to_its_client_an_event_it_cannot_show(
    signed_in: Harness, domain: DemoDomain, monkeypatch: pytest.MonkeyPatch
) -> None:
    console = signed_in.console
    assert console.client is not None
    event = hub_alert(domain)
    broken = dataclasses.replace(
        event, sections={"triage": {**event.sections["triage"], "reasons": []}, "details": {}}
    )
    refused: list[tuple[str, str]] = []

    def inbox(timeout: float) -> Iterator[envelope.Opened]:
        yield broken
        console._stop.set()  # one event, then the console stops reading

    monkeypatch.setattr(console.client, "inbox", inbox)
    monkeypatch.setattr(
        console.client, "refuse", lambda opened, reason, _detail: refused.append((opened.header.id, reason))
    )
    console._read_inbox()
    assert refused == [(event.header.id, "malformed")]


def test_a_bug_met_adding_an_inbox_event_refuses_it_as_internal_and_the_console_goes_on(
    signed_in: Harness, domain: DemoDomain, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(*_args: Any) -> None:
        raise ValueError("a bug met on this one")

    monkeypatch.setattr(signed_in.console.view, "apply", failing)
    refused: list[str] = []
    assert signed_in.console.ingest(hub_alert(domain), lambda reason, _detail: refused.append(reason)) is None
    assert refused == ["internal"]
    assert signed_in.console.metrics.applied.labels("internal")._value.get() == 1
