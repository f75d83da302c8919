"""The coordinator console in real headless Chromium (Debian's ``chromium`` and ``chromium-driver``,
driven by Selenium), in front of the whole pipeline on the real broker: router, hub and console run as
subprocesses on a topic prefix of their own, agencies publish through the SDK, and what the console
publishes is read back from the bus by another recipient (``plc``, with the SDK).

Screenshots of the main pages, each at 1400 px and at a phone's 390 px, go to
``test-artifacts/screenshots/`` (git-ignored): ``<name>-1400.png`` and ``<name>-390.png``.
"""

from __future__ import annotations

import base64
import contextlib
import http.cookiejar
import json
import os
import re
import secrets
import shutil
import sqlite3
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import pytest
from kafka import KafkaProducer
from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service as DriverService
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.wait import WebDriverWait

from services.bus.cluster import DURABLE_PRODUCER
from services.console.accounts import PASSWORD_KDF, AccountStore, accounts_path
from services.kernel.keystore import KdfParams
from services.kernel.pseudonym import pseudonymize
from services.sdk.client import Client
from tests.integration.buskit import Bus, HubProcess, RouterProcess
from tests.kit import DemoDomain
from tests.workers import REPO, Worker

pytestmark = pytest.mark.e2e


CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SHOTS = REPO / "test-artifacts" / "screenshots"
ZONE = ZoneInfo("Asia/Shanghai")
ACCOUNT = "coordinator1"
PASSWORD = secrets.token_urlsafe(15)  # made for this run; never in the repository
VICTIM_PHONE = "13700007001"
MINOR_PHONE = "13700007002"
LATE = timedelta(hours=2)  # how long ago the minor's lead happened: past the 1 h to acknowledge
CJK = re.compile(r"[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]")
PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True}

_R = TypeVar("_R")


# --------------------------------------------------------------------------- processes


class ConsoleProcess(Worker):
    """``python -m services.console`` on a port it picks; its address is read from what it prints."""

    def __init__(self, bus: Bus, log: Path, data: Path) -> None:
        super().__init__(
            "services.console",
            {
                "LIANFANG_BOOTSTRAP": bus.bootstrap,
                "LIANFANG_HOME": str(bus.domain.home),
                "LIANFANG_CONSOLE_TOPIC_PREFIX": bus.prefix,
                "LIANFANG_CONSOLE_PORT": "0",
                "LIANFANG_CONSOLE_DATA_DIR": str(data),
                "LIANFANG_CONSOLE_COOKIE_SECURE": "false",  # plain http on loopback
                "LIANFANG_CONSOLE_METRICS_PORT": "0",
                "LIANFANG_CONSOLE_PUBLISH_WAIT_S": "15",
            },
            log,
        )

    def address(self) -> str | None:
        found = re.search(r"^console\s+(http://\S+)", self.log.read_text(errors="replace"), re.MULTILINE)
        return found.group(1) if found else None


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)  # poll interval inside a deadline loop
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def bus(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Bus:
    home = Path(tmp_path_factory.mktemp("console-domain")) / ".lianfang"
    domain = DemoDomain.create(home, now=datetime.now(UTC))
    return Bus.create(kafka_bootstrap, f"t-console-{datetime.now(UTC):%H%M%S%f}.", domain)


@dataclass
class Pipeline:
    url: str
    hub: HubProcess


@pytest.fixture(scope="module")
def pipeline(bus: Bus, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    """Router, hub and console on the test's topics, and a console account."""
    tmp = Path(tmp_path_factory.mktemp("console-services"))
    store = AccountStore(accounts_path(bus.domain.home), kdf=KdfParams.for_tests())
    store.create(ACCOUNT, PASSWORD)
    store.close()
    router = RouterProcess(bus, bus.domain.home, tmp / "router.log", group=f"{bus.prefix}router")
    # A supervision report at the second tick the test sends.
    hub = HubProcess(bus, tmp / "hub.log", tmp / "hub-data", LIANFANG_HUB_REPORT_EVERY_S="1")
    console = ConsoleProcess(bus, tmp / "console.log", tmp / "console-data")
    try:
        wait_until(
            lambda: router.metric("lianfang_registry_version", service="router"), 60, "the router to start"
        )
        wait_until(
            lambda: hub.metric("lianfang_hub_events_observed_total") is not None, 90, "the hub to start"
        )
        url = wait_until(
            lambda: console.alive() and console.address(), 60, "the console to print its address"
        )
        assert console.alive(), console.tail()
        wait_until(lambda: _status(url + "healthz") == 200, 30, "the console to answer")
        yield Pipeline(url.rstrip("/"), hub)
    finally:
        for service in (console, hub, router):
            service.stop()


@pytest.fixture(scope="module")
def console_url(pipeline: Pipeline) -> str:
    return pipeline.url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists():
            pytest.fail(
                f"{path} is missing: the e2e tests need `apt-get install -y chromium chromium-driver`"
            )
    profile = tempfile.mkdtemp(prefix="lianfang-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--window-size=1400,1000",
        "--lang=zh-CN",
    ):
        options.add_argument(argument)
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not download anything
    driver = webdriver.Chrome(service=DriverService(str(CHROMEDRIVER)), options=options)
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# --------------------------------------------------------------------------- helpers


def _status(url: str, method: str = "GET", data: bytes | None = None) -> int:
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, method=method, data=data), timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def shot(driver: Any, name: str) -> None:
    """The page as it is, at 1400 px and at a phone's 390 px (``<name>-1400.png``, ``<name>-390.png``)."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, max(900, min(int(height) + 40, 3000)))
    driver.save_screenshot(str(SHOTS / f"{name}-1400.png"))
    driver.set_window_size(1400, 1000)
    with phone(driver):
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride", {**PHONE, "height": max(844, min(int(height) + 40, 4000))}
        )
        driver.save_screenshot(str(SHOTS / f"{name}-390.png"))


@contextlib.contextmanager
def phone(driver: Any) -> Iterator[None]:
    """The browser as a phone 390 px wide (device emulation), then back to the desktop window."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)
    try:
        yield
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


# What chromedriver answers when an element found on the old page is read while the new one loads:
# not a StaleElementReferenceException but an "unknown error" from the DevTools protocol.
NODE_DETACHED = "does not belong to the document"


def wait_for(driver: Any, condition: Callable[[Any], Any], timeout: float = 20) -> Any:
    """Poll ``condition(driver)`` until truthy. A form post reloads the page: an element found just
    before the reload is stale (or, mid-navigation, detached) when read, and the next poll finds the
    new page's."""

    def attempt(d: Any) -> Any:
        try:
            return condition(d)
        except WebDriverException as e:
            if NODE_DETACHED in (e.msg or ""):
                return False
            raise

    return WebDriverWait(
        driver,
        timeout,
        poll_frequency=0.2,
        ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
    ).until(attempt)


def click(driver: Any, css: str) -> None:
    """Click the element ``css`` selects. The queue's rows are replaced by every live update: a row
    found just before one is stale when clicked, and the next try finds the new row."""
    wait_for(driver, lambda d: d.find_element(By.CSS_SELECTOR, css).click() is None)


def row_of(driver: Any, css: str) -> tuple[str | None, str]:
    """The ``data-status`` and text of the element ``css`` selects, read in one go (again after a live
    update replaced it)."""
    return wait_for(driver, lambda d: _status_and_text(d.find_element(By.CSS_SELECTOR, css)))


def _status_and_text(element: Any) -> tuple[str | None, str]:
    return element.get_attribute("data-status"), element.text


def sign_in(driver: Any, url: str, password: str = PASSWORD) -> None:
    driver.get(url + "/login")
    driver.find_element(By.ID, "name").send_keys(ACCOUNT)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "login-submit").click()


def subject_of(bus: Bus, phone: str) -> str:
    key = bus.domain.registry.pseudonym_key("police", bus.domain.keys("police").encryption)
    return pseudonymize(key, phone=phone)


def client(bus: Bus, participant: str, tmp: Path) -> Client:
    """An agency's SDK client."""
    return Client(
        keystore=bus.domain.keys(participant),
        registry=bus.domain.registry,
        bootstrap=bus.bootstrap,
        outbox_path=tmp / f"{participant}.sqlite",
        topic_prefix=bus.prefix,
    )


def police_request_a_joint_meeting(bus: Bus, tmp: Path, phone: str, town: str, narrative: str) -> None:
    """The police report a domestic-violence lead asking for a joint meeting (an alert at once), flushed."""
    with client(bus, "police", tmp) as police:
        police.publish_lead(
            {
                "category": "domestic_violence",
                "channel": "police_call",
                "town": town,
                "victim": {"name": "测试某某", "phone": phone, "is_minor": False},
                "minor": False,
                "narrative": narrative,
                "requests_joint_meeting": True,
            }
        )
        assert police.flush(30)


@contextlib.contextmanager
def stream_held(driver: Any) -> Iterator[None]:
    """The pages loaded inside the block connect their change stream only once the test sets
    ``window.lianfangOpenStream`` (:data:`HELD_STREAM`), as over a slow connection."""
    held = driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": HELD_STREAM})
    try:
        yield
    finally:
        driver.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", held)


def read_until(reader: Client, match: Callable[[Any], bool], timeout: float = 60) -> Any:
    """The first event of ``reader``'s inbox that ``match``es, read through the SDK."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for opened in reader.inbox(timeout=1.0):
            if match(opened):
                return opened
    raise AssertionError(f"{reader.participant} never received the expected event")


# --------------------------------------------------------------------------- tests


def test_a_wrong_password_is_refused(browser: Any, console_url: str) -> None:
    browser.get(console_url + "/login")
    shot(browser, "01-login")
    sign_in(browser, console_url, password="not-the-password-" + secrets.token_hex(4))
    message = wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#message.error"))
    assert "用户名或密码错误" in message[0].text
    assert browser.current_url.startswith(console_url + "/login")
    assert not any("session" in c["name"] for c in browser.get_cookies()), "no session for a wrong password"
    shot(browser, "02-login-refused")


def test_polling_an_element_while_its_page_reloads_never_fails_on_the_old_page_s_element(
    browser: Any, console_url: str
) -> None:
    """Every wait in these tests reads elements while a form post may be reloading the page: an element
    found on the old page and read after the reload is stale, which ``wait_for`` must take for "not
    yet", not let out (the test fails with that exception)."""
    browser.get(console_url + "/login")
    for round_ in range(25):
        browser.execute_script(
            f"window.setTimeout(function () {{ window.location.reload(); }}, {round_ % 5});"
        )
        wait_for(browser, lambda d: d.find_element(By.ID, "login-form").get_attribute("id"))


def test_without_a_session_no_case_page_is_reachable(browser: Any, console_url: str, bus: Bus) -> None:
    browser.delete_all_cookies()
    some_alert = "0190f3a0-0000-7000-8000-000000000000"
    for path in ("/alerts", "/alerts?status=all", f"/alerts/{some_alert}", "/supervision"):
        browser.get(console_url + path)
        wait_for(browser, lambda d: "/login" in d.current_url)
        assert browser.find_elements(By.ID, "login-form"), path
        assert not browser.find_elements(By.ID, "alert-rows"), path
    assert _status(console_url + "/alerts") == 303
    assert _status(console_url + "/alerts/rows") == 401
    assert _status(console_url + "/events") == 401
    assert _status(console_url + f"/alerts/{some_alert}/schedule", "POST", b"meeting_at=x") == 401


def test_an_alert_published_on_the_bus_appears_in_an_open_page_within_seconds(
    browser: Any, console_url: str, bus: Bus, tmp_path: Path
) -> None:
    sign_in(browser, console_url)
    wait_for(browser, lambda d: d.find_elements(By.ID, "alert-rows"))
    wait_for(browser, lambda d: d.find_element(By.ID, "live").get_attribute("data-state") == "on")
    browser.execute_script("window.lianfangMarker = 'not reloaded';")
    subject = subject_of(bus, VICTIM_PHONE)
    police_request_a_joint_meeting(bus, tmp_path, VICTIM_PHONE, "houshayu", "丈夫多次殴打, 邻居报警。")
    row = f'tr[data-subject="{subject}"]'
    try:
        wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, row), timeout=45)
    except TimeoutException:
        shot(browser, "xx-alert-never-appeared")
        raise
    assert browser.execute_script("return window.lianfangMarker") == "not reloaded", "live, not by reload"
    status, text = row_of(browser, row)
    assert status == "open"
    assert "专业判断" in text
    assert "后沙峪镇" in text
    shot(browser, "03-queue-live")
    browser.find_element(By.ID, "lang-switch").click()
    wait_for(browser, lambda d: "Alert queue" in d.find_element(By.TAG_NAME, "h1").text)
    assert "Professional judgement" in row_of(browser, row)[1]
    shot(browser, "04-queue-english")
    browser.find_element(By.ID, "lang-switch").click()
    wait_for(browser, lambda d: "预警队列" in d.find_element(By.TAG_NAME, "h1").text)


def test_scheduling_a_meeting_from_the_page_puts_joint_meeting_scheduled_on_the_bus(
    browser: Any, console_url: str, bus: Bus, tmp_path: Path
) -> None:
    subject = subject_of(bus, VICTIM_PHONE)
    browser.get(console_url + "/alerts")
    click(browser, f'tr[data-subject="{subject}"] a.open')
    wait_for(browser, lambda d: d.find_elements(By.ID, "schedule-form"))
    alert_id = browser.find_element(By.ID, "alert").get_attribute("data-alert-id")
    assert "区公安局依专业判断请求召开联席会商" in browser.find_element(By.ID, "reasons").text
    shot(browser, "05-alert")

    browser.find_element(By.ID, "acknowledge").click()
    wait_for(browser, lambda d: d.find_element(By.ID, "alert").get_attribute("data-status") == "acknowledged")

    meeting_at = (datetime.now(ZONE) + timedelta(days=2)).replace(hour=9, minute=30, second=0, microsecond=0)
    field = browser.find_element(By.ID, "meeting_at")
    browser.execute_script("arguments[0].value = arguments[1];", field, meeting_at.strftime("%Y-%m-%dT%H:%M"))
    browser.find_element(By.ID, "location").send_keys("区妇联三楼会议室")
    invited = {"plc", "police", "womens_federation"}
    for box in browser.find_elements(By.CSS_SELECTOR, 'input[name="participants"]'):
        if box.is_selected() != (box.get_attribute("value") in invited):
            browser.execute_script("arguments[0].click();", box)
    browser.find_element(By.ID, "schedule").click()
    wait_for(browser, lambda d: d.find_element(By.ID, "alert").get_attribute("data-status") == "scheduled")
    assert "会商已安排" in browser.find_element(By.ID, "message").text
    shot(browser, "06-alert-scheduled")

    with client(bus, "plc", tmp_path) as plc:
        opened = read_until(
            plc,
            lambda o: (
                o.header.type == "joint_meeting.scheduled"
                and o.sections["triage"].get("alert_id") == alert_id
            ),
        )
    triage, details = opened.sections["triage"], opened.sections["details"]
    assert opened.header.sender == "coordinators"
    assert opened.header.subject == subject
    assert datetime.fromisoformat(triage["meeting_at"]) == meeting_at
    assert set(triage["participants"]) == invited
    assert details["location"] == "区妇联三楼会议室"
    with client(bus, "police", tmp_path) as police:
        acknowledged = read_until(
            police,
            lambda o: o.header.type == "lead.acknowledged" and o.header.sender == "coordinators",
        )
    assert acknowledged.sections["triage"]["lead_id"] == alert_id, "the acknowledgement names the alert"
    # The meeting reaches the page through the console's own inbox too.
    browser.refresh()
    wait_for(browser, lambda d: d.find_elements(By.ID, "meeting"))
    assert "区妇联三楼会议室" in browser.find_element(By.ID, "meeting").text


def test_a_conclusion_dated_before_its_meeting_is_refused_and_the_alert_stays_open(
    browser: Any, console_url: str, bus: Bus
) -> None:
    subject = subject_of(bus, VICTIM_PHONE)
    browser.get(console_url + "/alerts?status=scheduled")
    click(browser, f'tr[data-subject="{subject}"] a.open')
    field = wait_for(browser, lambda d: d.find_element(By.ID, "concluded_at"))
    meeting = datetime.fromisoformat(field.get_attribute("min"))
    before = (meeting - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    browser.execute_script("arguments[0].value = arguments[1];", field, before)
    assert browser.execute_script("return arguments[0].validity.rangeUnderflow;", field), "the browser warns"
    browser.find_element(By.ID, "summary").send_keys("会商纪要")
    browser.execute_script("document.getElementById('conclude-form').submit();")  # past the browser's check
    errors = wait_for(browser, lambda d: d.find_element(By.ID, "form-errors").text)
    assert "结束时间不能早于会商时间" in errors
    assert meeting.strftime("%Y-%m-%d %H:%M") in errors, "the meeting's time in Asia/Shanghai"
    assert browser.find_element(By.ID, "alert").get_attribute("data-status") == "scheduled"
    participants = {
        b.get_attribute("value") for b in browser.find_elements(By.CSS_SELECTOR, 'input[name="participants"]')
    }
    owners = {
        o.get_attribute("value")
        for o in browser.find_elements(By.CSS_SELECTOR, 'select[name="item_owner"] option')
    }
    assert "police" in participants
    assert "police" in owners
    assert not ({"router", "hub", "coordinators"} & (participants | owners)), "only agencies"
    assert "北京时间" in browser.find_element(By.ID, "conclude-form").text
    shot(browser, "07a-conclusion-refused")


def test_concluding_the_meeting_publishes_its_action_items_and_closes_the_alert(
    browser: Any, console_url: str, bus: Bus, tmp_path: Path
) -> None:
    subject = subject_of(bus, VICTIM_PHONE)
    browser.get(console_url + "/alerts?status=scheduled")
    click(browser, f'tr[data-subject="{subject}"] a.open')
    wait_for(browser, lambda d: d.find_elements(By.ID, "conclude-form"))
    alert_id = browser.find_element(By.ID, "alert").get_attribute("data-alert-id")
    meeting_at = browser.find_element(By.ID, "concluded_at").get_attribute("min")
    assert meeting_at, "the conclusion's time may not be set before the meeting's"
    browser.execute_script(
        "arguments[0].value = arguments[1];", browser.find_element(By.ID, "concluded_at"), meeting_at
    )
    browser.find_element(By.ID, "summary").send_keys("会商决定：公安机关出具告诫书，妇联跟进心理疏导。")
    due = (datetime.now(ZONE) + timedelta(days=7)).date()
    owners = browser.find_elements(By.CSS_SELECTOR, 'select[name="item_owner"]')
    dues = browser.find_elements(By.CSS_SELECTOR, 'input[name="item_due"]')
    descriptions = browser.find_elements(By.CSS_SELECTOR, 'input[name="item_description"]')
    for index, (owner, text) in enumerate((("police", "出具告诫书"), ("womens_federation", "心理疏导"))):
        browser.execute_script("arguments[0].value = arguments[1];", owners[index], owner)
        browser.execute_script("arguments[0].value = arguments[1];", dues[index], due.isoformat())
        descriptions[index].send_keys(text)
    browser.find_element(By.ID, "conclude").click()
    wait_for(browser, lambda d: d.find_element(By.ID, "alert").get_attribute("data-status") == "concluded")
    shot(browser, "07-alert-concluded")

    with client(bus, "plc", tmp_path) as plc:
        opened = read_until(
            plc,
            lambda o: (
                o.header.type == "joint_meeting.concluded"
                and o.sections["triage"].get("alert_id") == alert_id
            ),
        )
    triage, details = opened.sections["triage"], opened.sections["details"]
    assert [i["owner"] for i in triage["action_item_deadlines"]] == ["police", "womens_federation"]
    assert {datetime.fromisoformat(i["due_at"]).astimezone(ZONE).date() for i in details["action_items"]} == {
        due
    }
    assert [i["description"] for i in details["action_items"]] == ["出具告诫书", "心理疏导"]
    assert details["summary"].startswith("会商决定")
    browser.get(console_url + "/alerts?status=concluded")
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f'tr[data-subject="{subject}"]'))


def ticked(hub: HubProcess, partitions: range) -> bool:
    """Whether the hub has handled a tick on each of ``partitions`` (it sets their open-alerts gauge)."""
    series = hub.metrics() or {}
    return all(f'lianfang_hub_open_alerts{{partition="{p}"}}' in series for p in partitions)


UPCOMING_PHONE = "13700007003"


def tick(bus: Bus, *moments: datetime) -> None:
    """The hub's clock: each moment on every partition, in order."""
    producer = KafkaProducer(bootstrap_servers=bus.bootstrap, **DURABLE_PRODUCER)
    try:
        for at in moments:
            for partition in range(3):
                producer.send(
                    bus.names.hub_clock, key=b"tick", value=at.isoformat().encode(), partition=partition
                )
        producer.flush()
    finally:
        producer.close()


def agencies_in(driver: Any, css: str) -> set[str | None]:
    return {r.get_attribute("data-agency") for r in driver.find_elements(By.CSS_SELECTOR, css)}


def test_the_supervision_page_shows_who_is_late_each_agencys_rates_and_trend_and_opens_an_overdue_alert(
    browser: Any, pipeline: Pipeline, bus: Bus, tmp_path: Path
) -> None:
    """The women's federation acknowledges and resolves the lead in time; the town's mediation room does
    nothing. Ticks at now, now + 5 h (past the 4 h deadline of an urgent lead) and now + 6 h: the hub
    finds the breach and reports the rates twice. The page shows the rates (a lead whose 15 days are not
    over is pending, not unresolved), a trend of two points, the overdue list whose case link opens the
    alert, and a new alert among those whose deadlines come next."""
    subject = subject_of(bus, VICTIM_PHONE)
    with client(bus, "womens_federation", tmp_path) as federation:
        lead = read_until(
            federation, lambda o: o.header.type == "lead.reported" and o.header.subject == subject
        )
        federation.acknowledge(lead)
        federation.resolve(lead, outcome="resolved", satisfaction="satisfied")
        assert federation.flush(30)
    wait_until(
        lambda: (pipeline.hub.metric("lianfang_hub_events_observed_total", type="lead.resolved") or 0) >= 1,
        60,
        "the hub to see the resolution",
    )
    # The first tick opens each partition's report period; the next ones, hours of tick time later
    # (past report_every_s), find the breach and report twice (two points of the trend).
    now = datetime.now(UTC)
    tick(bus, now)
    wait_until(lambda: ticked(pipeline.hub, range(3)), 60, "the hub to take the first tick")
    tick(bus, now + timedelta(hours=5), now + timedelta(hours=6))

    def loaded(driver: Any) -> bool:
        driver.get(pipeline.url + "/supervision")
        chart = driver.find_elements(By.ID, "trend-chart")
        return (
            "mediation.houshayu" in agencies_in(driver, "#breaches tr")
            and {"womens_federation", "mediation.houshayu"} <= agencies_in(driver, "#rates tr")
            and bool(chart)
            and int(chart[0].get_attribute("data-points") or 0) >= 2
        )

    wait_for(browser, loaded, timeout=90)
    late = {
        r.get_attribute("data-agency")
        for r in browser.find_elements(By.CSS_SELECTOR, "#breaches tr[data-agency]")
        if lead.header.id in r.text
    }
    assert late == {"mediation.houshayu"}, "the women's federation acknowledged in time"
    cells = browser.find_element(By.CSS_SELECTOR, '#rates tr[data-agency="womens_federation"]').text.split()
    assert cells[-4:-1] == ["100%", "100%", "100%"], cells  # response, resolution, satisfaction
    cells = browser.find_element(By.CSS_SELECTOR, '#rates tr[data-agency="mediation.houshayu"]').text.split()
    assert cells[-4:-1] == ["0%", "—", "—"], cells  # late to answer; resolution not yet due; no feedback
    assert len(browser.find_elements(By.CSS_SELECTOR, "#rates-chart rect.bar-response")) == 1 + 2  # legend
    assert browser.find_elements(By.CSS_SELECTOR, "#trend-chart polyline.line-response")

    with client(bus, "police", tmp_path) as police:  # an alert whose deadlines are still to come
        police.publish_lead(
            {
                "category": "domestic_violence",
                "channel": "police_call",
                "town": "renhe",
                "victim": {"name": "测试某乙", "phone": UPCOMING_PHONE, "is_minor": False},
                "minor": False,
                "narrative": "当事人请求联合会商。",
                "requests_joint_meeting": True,
            }
        )
        assert police.flush(30)
    coming = subject_of(bus, UPCOMING_PHONE)[:14]

    def listed(driver: Any) -> str | None:
        driver.get(pipeline.url + "/supervision")
        rows = driver.find_elements(By.CSS_SELECTOR, "#upcoming tr[data-alert-id]")
        found = [r for r in rows if coming in r.text]
        return found[0].find_element(By.CSS_SELECTOR, ".due").get_attribute("data-state") if found else None

    assert wait_for(browser, listed, timeout=60) in ("pending", "soon")
    shot(browser, "08-supervision")

    click(browser, '#rates tr[data-agency="mediation.houshayu"] a')
    wait_for(browser, lambda d: d.find_elements(By.ID, "breaches-scope"))
    assert agencies_in(browser, "#breaches tr[data-agency]") == {"mediation.houshayu"}
    current = browser.find_element(By.CSS_SELECTOR, '#rates tr[aria-current="true"]')
    assert current.get_attribute("data-agency") == "mediation.houshayu"
    shot(browser, "08b-supervision-agency")

    case = browser.find_element(By.CSS_SELECTOR, '#breaches tr[data-agency="mediation.houshayu"] a')
    alert_path = urllib.parse.urlsplit(case.get_attribute("href")).path
    case.click()
    wait_for(browser, lambda d: urllib.parse.urlsplit(d.current_url).path == alert_path)
    assert wait_for(browser, lambda d: d.find_element(By.ID, "victim").text) == subject


def queued(driver: Any) -> int:
    """How many alerts the queue on the page lists in all (its page status: 第 p/n 页，共 N 条)."""
    status = driver.find_element(By.ID, "page-status").text
    found = re.search(r"共 (\d+) 条", status)
    assert found, status
    return int(found.group(1))


def test_an_overdue_alert_shows_its_deadlines_in_the_queue_and_on_its_page_in_either_language(
    browser: Any, console_url: str, bus: Bus, tmp_path: Path
) -> None:
    """A minor's child-abuse lead reported two hours after it happened: the alert is immediate, to be
    acknowledged within 1 h of being raised, so it is an hour overdue when it arrives."""
    sign_in_as(browser, console_url, ACCOUNT)  # its own session: it runs alone too
    browser.get(console_url + "/alerts")
    wait_for(browser, lambda d: d.find_elements(By.ID, "page-status"))
    before = queued(browser)  # the alerts earlier tests left active (the supervision test's upcoming one)
    subject = subject_of(bus, MINOR_PHONE)
    with client(bus, "police", tmp_path) as police:  # signed now: the router refuses a backdated time
        police.publish_lead(
            {
                "occurred_at": (datetime.now(UTC) - LATE).isoformat(),  # the hub's clocks run on this
                "category": "child_abuse",
                "channel": "police_call",
                "town": "dasungezhuang",
                "victim": {"name": "测试某某", "phone": MINOR_PHONE, "is_minor": True},
                "minor": True,
                "narrative": "邻居反映孩子长期被打。",
                "requests_joint_meeting": False,
            }
        )
        assert police.flush(30)
    row = f'tr[data-subject="{subject}"]'
    browser.get(console_url + "/alerts?sort=deadline")
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, row), timeout=45)
    assert (
        wait_for(browser, lambda d: d.find_element(By.CSS_SELECTOR, row).get_attribute("data-overdue")) == "1"
    )
    mark = wait_for(browser, lambda d: d.find_element(By.CSS_SELECTOR, f"{row} .due").text)
    assert re.fullmatch(r"签收 已超期 (\d+ 小时( \d+ 分钟)?|\d+ 分钟)", mark), mark
    assert wait_for(
        browser, lambda d: d.find_element(By.CSS_SELECTOR, f"{row} .due").get_attribute("data-state")
    ) == ("overdue")
    wait_for(browser, lambda d: queued(d) == before + 1)  # the count is live too: one alert more
    first = wait_for(
        browser, lambda d: d.find_element(By.CSS_SELECTOR, "#alert-rows tr").get_attribute("data-subject")
    )
    assert first == subject, "the nearest (most overdue) deadline first"
    colour = browser.execute_script(
        "return getComputedStyle(document.querySelector(arguments[0])).backgroundColor;", f"{row} .due"
    )
    assert colour == "rgb(198, 40, 40)", "overdue is red"
    shot(browser, "09-queue-overdue")

    # Search, filter and page find it; a search that names something else does not.
    for query in (
        f"q={subject[:12]}",
        "q=大孙各庄",
        "q=虐待儿童",
        "q=child_abuse",
        "overdue=1",
        "category=child_abuse",
    ):
        browser.get(console_url + "/alerts?" + query)
        wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, row))
    browser.get(console_url + "/alerts?q=" + "不存在的镇")
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#alert-rows tr.empty"))
    assert "第 1/1 页" in browser.find_element(By.ID, "page-status").text

    browser.get(console_url + "/alerts")
    click(browser, f"{row} a.open")
    wait_for(browser, lambda d: d.find_elements(By.ID, "deadlines"))
    acknowledge = browser.find_element(By.CSS_SELECTOR, '#deadlines li[data-kind="acknowledge"]')
    assert acknowledge.get_attribute("data-state") == "overdue"
    assert "已超期" in acknowledge.text
    schedule = browser.find_element(By.CSS_SELECTOR, '#deadlines li[data-kind="schedule"]')
    assert schedule.get_attribute("data-state") == "pending"
    assert re.search(r"剩余 2[0-2] 小时", schedule.text), schedule.text
    reasons = browser.find_element(By.ID, "reasons").text
    assert "受害人为未成年人，线索类别为虐待儿童" in reasons
    assert not re.search(r"[A-Za-z_]{3,}", reasons), reasons
    shot(browser, "10-alert-overdue")

    updated = browser.find_element(By.ID, "updated").text
    browser.find_element(By.ID, "acknowledge").click()
    wait_for(browser, lambda d: d.find_element(By.ID, "alert").get_attribute("data-status") == "acknowledged")
    assert browser.find_element(By.ID, "updated").text != updated, "the action updates the time shown"
    acknowledge = browser.find_element(By.CSS_SELECTOR, '#deadlines li[data-kind="acknowledge"]')
    assert acknowledge.get_attribute("data-state") == "met_late"

    browser.find_element(By.ID, "lang-switch").click()
    wait_for(browser, lambda d: d.find_element(By.TAG_NAME, "html").get_attribute("lang") == "en")
    main = browser.find_element(By.ID, "main").text
    assert not CJK.search(main), CJK.findall(main)
    assert "A minor victim, category Child abuse" in browser.find_element(By.ID, "reasons").text
    assert "China Standard Time" in main
    shot(browser, "11-alert-english")
    browser.find_element(By.ID, "lang-switch").click()
    wait_for(browser, lambda d: d.find_element(By.TAG_NAME, "html").get_attribute("lang") == "zh-CN")


def test_at_phone_width_nothing_overflows_and_no_town_or_time_breaks_mid_word(
    browser: Any, console_url: str
) -> None:
    fits = "return document.documentElement.scrollWidth <= window.innerWidth;"
    one_line = (
        "return Array.from(document.querySelectorAll(arguments[0])).filter(function (cell) {"
        "  var range = document.createRange(); range.selectNodeContents(cell);"
        "  var tops = new Set(Array.from(range.getClientRects()).map(function (r) { return Math.round(r.top); }));"
        "  return tops.size > 1; }).map(function (cell) { return cell.textContent; });"
    )
    with phone(browser):
        browser.get(console_url + "/alerts?status=all")
        wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#alert-rows tr[data-alert-id]"))
        assert browser.execute_script("return window.innerWidth;") == 390
        assert browser.execute_script(fits), "the page does not scroll sideways; the table scrolls in its box"
        header = browser.execute_script(
            "return Array.from(document.querySelectorAll('.topbar a, .topbar button')).every(function (e) {"
            " var r = e.getBoundingClientRect(); return r.left >= 0 && r.right <= window.innerWidth; });"
        )
        assert header, "every link of the header is within the screen"
        assert (
            browser.execute_script(one_line, "#alert-rows td.town, #alert-rows td.when, #alert-rows .due")
            == []
        )
        click(browser, "#alert-rows tr[data-alert-id] a.open")
        wait_for(browser, lambda d: d.find_elements(By.ID, "deadlines"))
        assert browser.execute_script(fits)


def test_the_queue_and_an_alert_are_reached_with_the_keyboard_and_every_field_has_a_label(
    browser: Any, console_url: str
) -> None:
    browser.get(console_url + "/alerts")
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#alert-rows a.open"))
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.TAB)
    active = browser.switch_to.active_element
    assert "skip" in (active.get_attribute("class") or ""), "the first stop skips to the content"
    active.send_keys(Keys.ENTER)
    for _ in range(60):
        browser.switch_to.active_element.send_keys(Keys.TAB)
        active = browser.switch_to.active_element
        if "open" in (active.get_attribute("class") or "").split():
            break
    else:
        raise AssertionError("no alert link is reached with the Tab key")
    assert active.get_attribute("aria-label"), "the link says what it opens"
    active.send_keys(Keys.ENTER)
    wait_for(browser, lambda d: d.find_elements(By.ID, "alert"))
    unlabelled = browser.execute_script(
        "return Array.from(document.querySelectorAll('input:not([type=hidden]), select, textarea'))"
        ".filter(function (f) { return !f.labels.length && !f.getAttribute('aria-label'); })"
        ".map(function (f) { return f.name || f.id; });"
    )
    assert unlabelled == []
    browser.get(console_url + "/alerts")
    unlabelled = browser.execute_script(
        "return Array.from(document.querySelectorAll('input:not([type=hidden]), select, textarea'))"
        ".filter(function (f) { return !f.labels.length && !f.getAttribute('aria-label'); })"
        ".map(function (f) { return f.name || f.id; });"
    )
    assert unlabelled == []


def test_signing_out_ends_the_session(browser: Any, console_url: str) -> None:
    browser.get(console_url + "/alerts")
    wait_for(browser, lambda d: d.find_elements(By.ID, "logout"))
    browser.find_element(By.ID, "logout").click()
    wait_for(browser, lambda d: "/login" in d.current_url)
    browser.get(console_url + "/alerts")
    wait_for(browser, lambda d: "/login" in d.current_url)
    assert json.dumps(browser.get_cookies()).count("lianfang_session") == 0


# --------------------------------------------------------------------------- sign-in under concurrency


def http_sign_in(url: str, name: str, password: str) -> tuple[int, bool]:
    """Sign in over plain HTTP as a browser would (the form's CSRF token, its pre-session cookie):
    the status of the POST and whether it set a session cookie."""
    jar = http.cookiejar.CookieJar()

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None

    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), NoRedirect)
    with opener.open(url + "/login", timeout=30) as response:
        found = re.search(r'name="_csrf" value="([^"]+)"', response.read().decode())
    assert found, "the sign-in form carries a CSRF token"
    form = urllib.parse.urlencode({"_csrf": found.group(1), "name": name, "password": password}).encode()
    try:
        with opener.open(urllib.request.Request(url + "/login", data=form), timeout=60) as response:
            status = int(response.status)
    except urllib.error.HTTPError as e:
        status = int(e.code)
    return status, any("session" in cookie.name for cookie in jar)


def in_parallel(calls: list[Callable[[], _R]], deadline: float = 60) -> list[_R]:
    """Run the calls in threads released together; fail when any is still running at the deadline."""
    results: dict[int, _R] = {}
    start = threading.Barrier(len(calls))

    def run(index: int) -> None:
        start.wait()
        results[index] = calls[index]()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(deadline)
    assert not any(t.is_alive() for t in threads), f"requests still unanswered after {deadline:.0f} s"
    assert len(results) == len(calls), "a request failed"
    return [results[i] for i in range(len(calls))]


def test_sign_ins_at_once_with_production_kdf_parameters_all_get_a_session(
    console_url: str, bus: Bus
) -> None:
    """The console runs the production Argon2id (it is not told to use the test preset). One account
    was made before one lane was the default: 64 MiB, 3 passes, 4 lanes, the parameters that deadlocked
    two sign-ins at once; it moves to one lane at its first sign-in."""
    store = AccountStore(accounts_path(bus.domain.home), kdf=KdfParams())
    store.create("four.lanes", PASSWORD)
    store.close()
    store = AccountStore(accounts_path(bus.domain.home), kdf=PASSWORD_KDF)
    store.create("one.lane", PASSWORD)
    names = ["four.lanes", "one.lane"] * 3
    results = in_parallel([lambda n=n: http_sign_in(console_url, n, PASSWORD) for n in names])
    assert results == [(303, True)] * len(names)
    db = sqlite3.connect(store.path)
    try:
        (phc,) = db.execute("SELECT phc FROM accounts WHERE name = 'four.lanes'").fetchone()
    finally:
        db.close()
    store.close()
    assert str(phc).startswith("$argon2id$v=19$m=65536,t=3,p=1$")


def test_a_burst_of_parallel_wrong_passwords_leaves_the_account_locked_against_the_right_one(
    console_url: str, bus: Bus
) -> None:
    store = AccountStore(accounts_path(bus.domain.home), kdf=PASSWORD_KDF)
    store.create("burst", PASSWORD)
    store.close()
    guesses = [f"wrong-password-{n:02d}" for n in range(12)]
    results = in_parallel([lambda g=g: http_sign_in(console_url, "burst", g) for g in guesses])
    assert results == [(401, False)] * len(guesses)
    assert http_sign_in(console_url, "burst", PASSWORD) == (401, False), "five failures lock the account"


# --------------------------------------------------------------------------- roles and the meeting record

SUPERVISOR, ADMINISTRATOR = "supervisor1", "admin1"
SECOND_PHONE = "13700007003"  # a victim no other test acts on


def sign_in_as(driver: Any, url: str, account: str) -> None:
    driver.delete_all_cookies()
    driver.get(url + "/login")
    wait_for(driver, lambda d: d.find_element(By.ID, "name")).send_keys(account)
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    driver.find_element(By.ID, "login-submit").click()
    wait_for(driver, lambda d: d.find_elements(By.ID, "logout"))


def test_the_meeting_record_of_a_concluded_alert_prints_with_attendees_and_action_items(
    browser: Any, console_url: str, bus: Bus
) -> None:
    subject = subject_of(bus, VICTIM_PHONE)
    sign_in_as(browser, console_url, ACCOUNT)
    browser.get(console_url + "/alerts?status=concluded")
    click(browser, f'tr[data-subject="{subject}"] a.open')
    # The conclusion's content comes back through the console's own inbox.
    wait_for(browser, lambda d: d.refresh() or d.find_elements(By.ID, "record-link"), timeout=45)
    click(browser, "#record-link")
    wait_for(browser, lambda d: d.find_elements(By.ID, "record"))
    assert "联席会议会商纪要" in browser.find_element(By.TAG_NAME, "h1").text
    attendees = {
        li.get_attribute("data-agency") for li in browser.find_elements(By.CSS_SELECTOR, "#attendees li")
    }
    assert {"plc", "police", "womens_federation", "coordinators"} <= attendees
    assert "专业判断" in browser.find_element(By.ID, "record-reasons").text
    items = browser.find_elements(By.CSS_SELECTOR, "#action-items tbody tr")
    assert [row.get_attribute("data-owner") for row in items] == ["police", "womens_federation"]
    due = (datetime.now(ZONE) + timedelta(days=7)).date().isoformat()
    assert all(due in row.text for row in items)
    assert "出具告诫书" in items[0].text
    assert browser.find_element(By.ID, "record-summary").text.startswith("会商决定")
    assert browser.find_element(By.ID, "print").is_displayed()
    shot(browser, "09-meeting-record")
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
    try:
        assert not browser.find_element(By.CSS_SELECTOR, "header.topbar").is_displayed()
        assert not browser.find_element(By.ID, "print").is_displayed()
        assert browser.find_element(By.ID, "action-items").is_displayed()
    finally:
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": ""})
    pdf = base64.b64decode(browser.execute_cdp_cmd("Page.printToPDF", {"preferCSSPageSize": True})["data"])
    assert pdf.startswith(b"%PDF")
    (SHOTS / "09-meeting-record.pdf").write_bytes(pdf)


def test_a_supervisor_sees_an_alert_without_action_controls_and_a_forged_post_is_refused(
    browser: Any, console_url: str, bus: Bus, tmp_path: Path
) -> None:
    store = AccountStore(accounts_path(bus.domain.home), kdf=KdfParams.for_tests())
    store.create(SUPERVISOR, PASSWORD, role="supervisor")
    store.close()
    subject = subject_of(bus, SECOND_PHONE)
    with client(bus, "police", tmp_path) as police:
        police.publish_lead(
            {
                "category": "domestic_violence",
                "channel": "police_call",
                "town": "houshayu",
                "victim": {"name": "测试某乙", "phone": SECOND_PHONE, "is_minor": False},
                "minor": False,
                "narrative": "多次被殴打。",
                "requests_joint_meeting": True,
            }
        )
        assert police.flush(30)
    sign_in_as(browser, console_url, SUPERVISOR)
    browser.get(console_url + "/alerts")
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f'tr[data-subject="{subject}"]'), timeout=90)
    click(browser, f'tr[data-subject="{subject}"] a.open')
    wait_for(browser, lambda d: d.find_elements(By.ID, "reasons"))
    alert_id = browser.find_element(By.ID, "alert").get_attribute("data-alert-id")
    assert browser.find_element(By.ID, "alert").get_attribute("data-status") == "open"
    for control in ("acknowledge", "schedule-form", "conclude-form"):
        assert not browser.find_elements(By.ID, control), control
    assert "督查角色只能查阅" in browser.find_element(By.ID, "actions").text
    shot(browser, "10-alert-supervisor")
    token = browser.find_element(By.CSS_SELECTOR, 'input[name="_csrf"]').get_attribute("value")
    status = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0], {method: 'POST', credentials: 'same-origin',"
        " body: new URLSearchParams({_csrf: arguments[1]})}).then(r => done(r.status));",
        f"/alerts/{alert_id}/acknowledge",
        token,
    )
    assert status == 403
    browser.refresh()
    wait_for(browser, lambda d: d.find_element(By.ID, "alert").get_attribute("data-status") == "open")
    browser.get(console_url + "/supervision")
    wait_for(browser, lambda d: d.find_elements(By.ID, "rates"))


def test_an_administrator_manages_accounts_and_cannot_see_cases(
    browser: Any, console_url: str, bus: Bus
) -> None:
    store = AccountStore(accounts_path(bus.domain.home), kdf=KdfParams.for_tests())
    store.create(ADMINISTRATOR, PASSWORD, role="administrator")
    store.close()
    sign_in_as(browser, console_url, ADMINISTRATOR)
    wait_for(browser, lambda d: d.find_elements(By.ID, "accounts"))
    assert browser.current_url.endswith("/accounts")
    roles = {
        row.get_attribute("data-account"): row.get_attribute("data-role")
        for row in browser.find_elements(By.CSS_SELECTOR, "#accounts tbody tr")
    }
    assert roles[ACCOUNT] == "coordinator"
    assert roles[ADMINISTRATOR] == "administrator"
    assert not browser.find_elements(By.CSS_SELECTOR, 'nav a[href="/alerts"]')
    shot(browser, "11-accounts")
    subject = subject_of(bus, VICTIM_PHONE)
    for path in ("/alerts", "/alerts?status=all", "/supervision"):
        browser.get(console_url + path)
        wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "section.error"))
        assert "无权" in browser.find_element(By.CSS_SELECTOR, "section.error").text
        assert not browser.find_elements(By.ID, "alert-rows"), path
        assert subject not in browser.page_source


GAP_PHONE = "13700007004"  # a victim only the next test reports (last: its lead would count in the rates)


def served_rows(driver: Any) -> str:
    """The queue's rows as the console serves them now (the page's own source of live rows), read
    through the page's session without touching the page."""
    return str(
        driver.execute_async_script(
            """const done = arguments[arguments.length - 1];
            fetch(document.getElementById("alert-rows").getAttribute("data-src"),
                  {credentials: "same-origin", headers: {"Accept": "text/html"}})
              .then(r => r.text()).then(done, () => done(""));"""
        )
    )


HELD_STREAM = """
(function () {
  var Real = window.EventSource;
  function Held(url) {
    var self = this, listeners = [];
    self.readyState = 0;
    self.addEventListener = function (type, f) { listeners.push([type, f]); };
    self.close = function () { if (self.real) self.real.close(); };
    function open() {
      var real = new Real(url);
      self.real = real;
      listeners.forEach(function (l) { real.addEventListener(l[0], l[1]); });
      real.onerror = function (e) { self.readyState = real.readyState; if (self.onerror) self.onerror(e); };
    }
    (function wait() { if (window.lianfangOpenStream) open(); else setTimeout(wait, 100); })();
  }
  Held.CONNECTING = 0; Held.OPEN = 1; Held.CLOSED = 2;
  window.EventSource = Held;
})();
"""
"""Injected before the page's own script: its change stream connects only once the test sets
``window.lianfangOpenStream``, as a slow connection would."""

NO_MINUTE_REFRESH = """
(function () {
  var real = window.setInterval;
  window.setInterval = function (f, ms) {
    if (ms === 60000) { window.lianfangMinuteRefreshHeld = true; return 0; }
    return real.apply(window, arguments);
  };
})();
"""
"""Injected before the page's own script: the queue's once-a-minute refresh never runs, so a row that
appears came by the change stream."""


def test_an_alert_that_arrives_before_the_page_has_subscribed_to_changes_appears_without_a_reload(
    browser: Any, console_url: str, bus: Bus, tmp_path: Path
) -> None:
    """The page is rendered, then subscribes to the console's changes: an alert that reaches the
    console in between is announced to no page. Held here by holding the page's change stream until
    the console serves the alert; once the stream connects the row must appear, well before the
    page's once-a-minute refresh would bring it (held here, so the row can come only by the stream)."""
    sign_in_as(browser, console_url, ACCOUNT)  # its own session: it runs alone too
    no_refresh = browser.execute_cdp_cmd(
        "Page.addScriptToEvaluateOnNewDocument", {"source": NO_MINUTE_REFRESH}
    )
    try:
        with stream_held(browser):
            browser.get(console_url + "/alerts")
    finally:
        browser.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", no_refresh)
    wait_for(browser, lambda d: d.find_elements(By.ID, "alert-rows"))
    assert browser.execute_script("return window.lianfangMinuteRefreshHeld") is True, "only the stream"
    browser.execute_script("window.lianfangMarker = 'not reloaded';")
    subject = subject_of(bus, GAP_PHONE)
    police_request_a_joint_meeting(bus, tmp_path, GAP_PHONE, "renhe", "当事人请求联合会商。")
    wait_for(browser, lambda d: subject in served_rows(d), timeout=45)
    row = f'tr[data-subject="{subject}"]'
    assert not browser.find_elements(By.CSS_SELECTOR, row), "nothing told the page yet"
    browser.execute_script("window.lianfangOpenStream = true;")
    wait_for(browser, lambda d: d.find_element(By.ID, "live").get_attribute("data-state") == "on")
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, row), timeout=20)
    assert browser.execute_script("return window.lianfangMarker") == "not reloaded", "live, not by reload"


def test_a_change_to_an_alert_made_while_its_page_had_no_stream_is_announced_once_the_stream_connects(
    browser: Any, console_url: str, bus: Bus
) -> None:
    """The alert page of the previous test's alert, its change stream held; in another tab the alert
    is acknowledged. When the stream connects, the page is told its alert changed."""
    sign_in_as(browser, console_url, ACCOUNT)
    subject = subject_of(bus, GAP_PHONE)
    browser.get(console_url + "/alerts")
    alert_id = wait_for(
        browser,
        lambda d: d.find_element(By.CSS_SELECTOR, f'tr[data-subject="{subject}"]').get_attribute(
            "data-alert-id"
        ),
    )
    with stream_held(browser):
        browser.get(f"{console_url}/alerts/{alert_id}")
    wait_for(browser, lambda d: d.find_element(By.ID, "alert").get_attribute("data-status") == "open")
    page = browser.current_window_handle
    browser.switch_to.new_window("tab")
    try:
        browser.get(f"{console_url}/alerts/{alert_id}")
        browser.find_element(By.ID, "acknowledge").click()
        wait_for(
            browser, lambda d: d.find_element(By.ID, "alert").get_attribute("data-status") == "acknowledged"
        )
    finally:
        browser.close()
        browser.switch_to.window(page)
    assert not browser.find_element(By.ID, "changed").is_displayed(), "nothing told the page yet"
    browser.execute_script("window.lianfangOpenStream = true;")
    wait_for(browser, lambda d: d.find_element(By.ID, "changed").is_displayed())
