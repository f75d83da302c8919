"""Sessions (random tokens kept as digests, idle and absolute expiry) and CSRF tokens (per session, and
for the sign-in form bound to a pre-session cookie)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from services.console.sessions import PreSession, Sessions, same_token
from tests.kit import SetClock

pytestmark = pytest.mark.unit


def sessions(clock: SetClock) -> Sessions:
    return Sessions(idle=timedelta(minutes=30), maximum=timedelta(hours=12), clock=clock)


def test_a_session_has_its_own_random_cookie_and_csrf_token() -> None:
    table = sessions(SetClock())
    token_a, a = table.create("wang")
    token_b, b = table.create("wang")
    assert len({token_a, token_b, a.csrf, b.csrf}) == 4
    assert len(token_a) >= 43
    assert len(a.csrf) >= 43
    assert table.get(token_a) is a
    assert table.get("forged") is None
    assert table.get(None) is None


def test_the_table_keeps_digests_not_cookies() -> None:
    table = sessions(SetClock())
    token, _ = table.create("wang")
    assert token not in repr(table.__dict__)


def test_a_session_ends_after_30_idle_minutes_and_activity_keeps_it() -> None:
    clock = SetClock()
    table = sessions(clock)
    token, _ = table.create("wang")
    clock.now += timedelta(minutes=29)
    assert table.get(token) is not None
    clock.now += timedelta(minutes=29)
    assert table.get(token) is not None, "the request at minute 29 was activity"
    clock.now += timedelta(minutes=30)
    assert table.get(token) is None
    assert table.get(token) is None, "and it stays gone"


def test_background_requests_do_not_keep_a_session_alive() -> None:
    clock = SetClock()
    table = sessions(clock)
    token, _ = table.create("wang")
    for _ in range(5):
        clock.now += timedelta(minutes=10)
        table.get(token, touch=False)
    assert table.get(token) is None


def test_a_session_ends_after_12_hours_whatever_the_activity() -> None:
    clock = SetClock()
    table = sessions(clock)
    token, _ = table.create("wang")
    for _ in range(12 * 4 - 1):
        clock.now += timedelta(minutes=15)
        assert table.get(token) is not None
    clock.now += timedelta(minutes=15)
    assert table.get(token) is None


def test_signing_out_drops_the_session() -> None:
    table = sessions(SetClock())
    token, _ = table.create("wang")
    other, _ = table.create("li")
    table.drop(token)
    assert table.get(token) is None
    assert table.get(other) is not None
    assert table.count() == 1


@pytest.mark.parametrize(
    ("expected", "given", "ok"),
    [("abc", "abc", True), ("abc", "abd", False), ("abc", "", False), ("abc", None, False), ("", "", False)],
    ids=["equal", "different", "empty", "missing", "both empty"],
)
def test_csrf_tokens_match_only_when_equal_and_present(expected: str, given: str | None, ok: bool) -> None:
    assert same_token(expected, given) is ok


def test_the_sign_in_token_is_bound_to_its_pre_session_cookie_and_process() -> None:
    pre = PreSession()
    cookie = pre.new_id()
    token = pre.token(cookie)
    assert pre.check(cookie, token)
    assert not pre.check(pre.new_id(), token), "another browser's cookie"
    assert not pre.check(None, token), "no cookie"
    assert not pre.check(cookie, None)
    assert not PreSession().check(cookie, token), "another process key (after a restart)"
