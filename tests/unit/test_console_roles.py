"""Roles with least privilege: the pure table of what each role may do, and the console over HTTP (in
process, no Kafka) refusing, counting and auditing what a role does not grant."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.console import roles
from services.console.roles import Permission, Role
from services.kernel.errors import UsageError
from tests.kit import DemoDomain
from tests.unit.test_console_http import PASSWORD, Harness, alert_id_of, csrf_of
from tests.unit.test_console_view import hub_alert

pytestmark = pytest.mark.unit

ALERT = "/alerts/0190f3a0-0000-7000-8000-000000000000"

# (role, method, path, allowed)
CASES: list[tuple[Role, str, str, bool]] = [
    ("coordinator", "GET", "/alerts", True),
    ("coordinator", "GET", ALERT, True),
    ("coordinator", "GET", ALERT + "/record", True),
    ("coordinator", "POST", ALERT + "/acknowledge", True),
    ("coordinator", "POST", ALERT + "/conclude", True),
    ("coordinator", "GET", "/supervision", True),
    ("coordinator", "GET", "/accounts", False),
    ("supervisor", "GET", "/alerts", True),
    ("supervisor", "GET", "/alerts/rows", True),
    ("supervisor", "GET", ALERT, True),
    ("supervisor", "GET", ALERT + "/record", True),
    ("supervisor", "GET", "/supervision", True),
    ("supervisor", "GET", "/events", True),
    ("supervisor", "POST", ALERT + "/acknowledge", False),
    ("supervisor", "POST", ALERT + "/schedule", False),
    ("supervisor", "POST", ALERT + "/conclude", False),
    ("supervisor", "GET", "/accounts", False),
    ("administrator", "GET", "/accounts", True),
    ("administrator", "POST", "/logout", True),
    ("administrator", "GET", "/alerts", False),
    ("administrator", "GET", "/alerts/rows", False),
    ("administrator", "GET", ALERT, False),
    ("administrator", "GET", ALERT + "/record", False),
    ("administrator", "GET", "/supervision", False),
    ("administrator", "GET", "/events", False),
    ("administrator", "POST", ALERT + "/acknowledge", False),
    ("coordinator", "GET", "/a-page-without-a-rule", False),
    ("administrator", "DELETE", "/accounts", False),
]


@pytest.mark.parametrize(
    ("role", "method", "path", "allowed"),
    CASES,
    ids=[f"{r} {'may' if ok else 'may not'} {m} {p}" for r, m, p, ok in CASES],
)
def test_each_role_may_do_what_its_table_says_and_nothing_else(
    role: Role, method: str, path: str, allowed: bool
) -> None:
    assert roles.allows(role, roles.needed(method, path)) is allowed


def test_every_route_of_the_console_has_a_rule(harness: Harness) -> None:
    app = harness.console.application()
    samples = {"{alert_id}": "0190f3a0-0000-7000-8000-000000000000", "{action}": "acknowledge"}
    public = ("/login", "/healthz", "/lang/", "/static")
    checked = 0
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if route.method == "HEAD" or path.startswith(public):
            continue
        for placeholder, value in samples.items():
            path = path.replace(placeholder, value)
        needs: Permission = roles.needed(route.method, path)
        assert needs != "unlisted", f"{route.method} {path} has no rule in services/console/roles.py"
        checked += 1
    assert checked >= 9


def test_an_unknown_role_is_refused_with_the_roles_named() -> None:
    with pytest.raises(UsageError, match="coordinator, supervisor, administrator"):
        roles.check_role("root")


# --------------------------------------------------------------------------- over HTTP


@pytest.fixture
def harness(domain: DemoDomain, tmp_path: Path) -> Iterator[Harness]:
    made = Harness(domain, tmp_path)
    made.console.accounts.create("li", PASSWORD, role="supervisor")
    made.console.accounts.create("zhou", PASSWORD, role="administrator")
    yield made
    made.close()


def signed_in_as(harness: Harness, name: str) -> Harness:
    status, headers, _ = harness.sign_in(name=name)
    assert status == 303, headers
    return harness


def refused(harness: Harness) -> float:
    sample = harness.console.metrics.refused.labels("forbidden")
    return float(sample._value.get())


def test_a_supervisor_reads_an_alert_without_action_controls_and_a_forged_post_is_refused_403(
    harness: Harness, domain: DemoDomain
) -> None:
    event = hub_alert(domain)
    harness.feed(event)
    alert_id = alert_id_of(event)
    signed_in_as(harness, "li")
    status, _, html = harness.get(f"/alerts/{alert_id}")
    assert status == 200
    assert 'id="reasons"' in html
    for control in ('id="acknowledge"', 'id="schedule-form"', 'id="conclude-form"', "/acknowledge"):
        assert control not in html
    assert "督查角色只能查阅" in html
    token = csrf_of(html)  # the logout form's: a valid token, as a hand-made request would send
    status, _, body = harness.post(f"/alerts/{alert_id}/acknowledge", {"_csrf": token})
    assert status == 403
    assert "督查" in body
    assert "无权" in body
    assert harness.published("hub") == [], "nothing was published"
    assert refused(harness) == 1
    row = harness.console.audit.rows()[-1]
    assert (row.who, row.action, row.target) == ("li", "forbidden", f"POST /alerts/{alert_id}/acknowledge")
    assert harness.get("/supervision")[0] == 200


def test_an_administrator_sees_accounts_and_no_case(harness: Harness, domain: DemoDomain) -> None:
    event = hub_alert(domain)
    harness.feed(event)
    status, headers, _ = harness.sign_in(name="zhou")
    assert (status, headers["Location"]) == (303, "/accounts"), "sent to the accounts, not the queue"
    status, _, html = harness.get("/accounts")
    assert status == 200
    assert 'data-account="li" data-role="supervisor"' in html
    assert 'data-account="wang" data-role="coordinator"' in html
    assert 'href="/alerts"' not in html
    assert event.header.subject not in html
    for path in ("/alerts", f"/alerts/{alert_id_of(event)}", "/alerts/rows", "/supervision", "/events"):
        status, _, body = harness.get(path)
        assert status == 403, path
        assert event.header.subject not in body
    assert refused(harness) == 5
    assert harness.get("/")[1]["Location"] == "/accounts"


def test_a_coordinator_cannot_open_the_accounts_page(harness: Harness) -> None:
    signed_in_as(harness, "wang")
    assert harness.get("/accounts")[0] == 403
    assert 'href="/accounts"' not in harness.get("/alerts")[2]


def test_a_new_role_applies_at_the_accounts_next_request(harness: Harness, domain: DemoDomain) -> None:
    event = hub_alert(domain)
    harness.feed(event)
    signed_in_as(harness, "li")
    harness.console.accounts.set_role("li", "coordinator")
    token = harness.page_token(f"/alerts/{alert_id_of(event)}")
    assert harness.post(f"/alerts/{alert_id_of(event)}/acknowledge", {"_csrf": token})[0] == 303
    harness.console.accounts.set_role("li", "administrator")
    assert harness.get("/alerts")[0] == 403
