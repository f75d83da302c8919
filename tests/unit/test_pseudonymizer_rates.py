"""Rates of their own for named participants (LIANFANG_PSEUDONYMIZER_RATES): the setting is parsed and
checked at start, naming a bad entry; the limiter gives a named participant its rate and everyone else the
default; the service shows each rate on /metrics and warns once of a name the registry in force does not
name, without refusing to start."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.kernel.errors import UsageError
from services.pseudonymizer import core
from services.pseudonymizer.app import Pseudonymizer, PseudonymizerSettings
from tests.kit import DemoDomain
from tests.unit.test_pseudonymizer import Harness, blinded

pytestmark = pytest.mark.unit

PARSED = [
    ("", {}),
    ("womens_federation=400", {"womens_federation": 400.0}),
    (" womens_federation = 400 , police=0.5 ,", {"womens_federation": 400.0, "police": 0.5}),
    ("mediation.town01=100", {"mediation.town01": 100.0}),
]


@pytest.mark.parametrize(("text", "rates"), PARSED, ids=[t or "(empty)" for t, _ in PARSED])
def test_a_well_formed_rates_setting_gives_each_named_participant_its_rate(
    text: str, rates: dict[str, float]
) -> None:
    assert core.parse_rates(text) == rates


REFUSED = [
    ("an entry without a rate is refused by name", "police=100,hotline", "'hotline'"),
    ("a rate that is no number is refused by name", "hotline=fast", "'hotline=fast'"),
    ("a zero rate is refused", "hotline=0", "'hotline=0'"),
    ("a negative rate is refused", "hotline=-5", "'hotline=-5'"),
    ("an infinite rate is refused", "hotline=inf", "'hotline=inf'"),
    ("a rate that is not a number (nan) is refused", "hotline=nan", "'hotline=nan'"),
    ("a name that is no participant id is refused", "Hot Line=400", "'Hot Line=400'"),
    ("an entry without a name is refused", "=400", "'=400'"),
    ("a participant given two rates is refused", "police=100,police=200", "police is given a rate twice"),
]


@pytest.mark.parametrize(("text", "named"), [(t, n) for _, t, n in REFUSED], ids=[c for c, _, _ in REFUSED])
def test_a_bad_rates_setting_is_refused_with_an_error_naming_the_bad_entry(text: str, named: str) -> None:
    with pytest.raises(UsageError, match="LIANFANG_PSEUDONYMIZER_RATES") as caught:
        core.parse_rates(text)
    assert named in str(caught.value)


def test_the_settings_read_the_rates_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIANFANG_PSEUDONYMIZER_RATES", "womens_federation=400,police=100")
    settings = PseudonymizerSettings.from_env()
    assert settings.rates == {"womens_federation": 400.0, "police": 100.0}
    assert settings.rate_per_s == 20.0


def test_a_bad_rates_setting_stops_the_start_with_a_usage_error_naming_the_entry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LIANFANG_PSEUDONYMIZER_RATES", "womens_federation=400,police=lots")
    with pytest.raises(UsageError, match=r"rates: .*'police=lots'"):
        PseudonymizerSettings.from_env()


def test_the_limiter_gives_a_named_participant_its_own_rate_and_every_other_the_default() -> None:
    limiter = core.RateLimiter(rate=2.0, burst=4, rates={"womens_federation": 100.0})
    assert limiter.take("womens_federation", 4, now=0.0) == 0.0
    assert limiter.take("police", 4, now=0.0) == 0.0
    # A tenth of a second later the named one has 10 evaluations back (its bucket holds 4), the other 0.2.
    assert limiter.take("womens_federation", 4, now=0.1) == 0.0
    assert limiter.take("police", 1, now=0.1) == pytest.approx(0.4)
    assert limiter.rate_of("womens_federation") == 100.0
    assert limiter.rate_of("police") == 2.0


def test_a_rate_of_its_own_may_also_be_lower_than_the_default() -> None:
    limiter = core.RateLimiter(rate=20.0, burst=4, rates={"police": 1.0})
    assert limiter.take("police", 4, now=0.0) == 0.0
    assert limiter.take("police", 2, now=0.0) == pytest.approx(2.0)


def test_names_the_registry_does_not_name_are_unmatched() -> None:
    unmatched = core.unmatched_rates(["police", "hotline", "gateway"], ["police", "court"])
    assert unmatched == ["gateway", "hotline"]
    assert core.unmatched_rates([], ["police"]) == []


def test_the_dictionary_cost_of_a_rate_reads_in_hours_minutes_or_seconds() -> None:
    assert core.duration_text(core.DICTIONARY_GUESSES / 20) == "5.1 hours"
    assert core.duration_text(core.DICTIONARY_GUESSES / 100) == "61 min"
    assert core.duration_text(core.DICTIONARY_GUESSES / 400) == "15 min"
    assert core.duration_text(45) == "45 s"


@pytest.fixture
def granted(domain: DemoDomain, tmp_path: Path) -> Iterator[Harness]:
    h = Harness(domain, tmp_path, rate_per_s=1.0, burst=4, rates={"health": 1_000_000.0})
    yield h
    h.close()


def test_a_participant_with_a_rate_of_its_own_is_served_past_the_default_while_another_gets_429(
    granted: Harness,
) -> None:
    _blinds, body = blinded(b"a", b"b", b"c", b"d")
    # A whole burst a request: health's rate refills it in microseconds, the default of 1 a second in 4 s.
    assert [granted.post(body, participant="health")[0] for _ in range(3)] == [200, 200, 200]
    assert granted.post(body)[0] == 200
    status, headers, problem = granted.post(body)
    assert (status, problem["title"]) == (429, "rate_limited")
    assert "1/s" in problem["detail"]
    assert int(headers["Retry-After"]) >= 1


def test_every_rate_is_on_metrics_beside_the_default(granted: Harness) -> None:
    metrics = granted.service.metrics
    assert metrics.default_rate._value.get() == 1.0
    assert metrics.rate.labels("health")._value.get() == 1_000_000.0
    assert metrics.rates_unmatched._value.get() == 0


def test_a_rate_for_a_name_the_registry_does_not_name_is_warned_of_once_and_counted_without_stopping_the_start(
    domain: DemoDomain, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="lianfang.pseudonymizer")
    h = Harness(domain, tmp_path, rates={"hotline": 400.0, "health": 100.0})
    try:
        service: Pseudonymizer = h.service
        assert service.metrics.rates_unmatched._value.get() == 1
        assert service.metrics.rate.labels("hotline")._value.get() == 400.0
        _blinds, body = blinded(b"a")
        assert h.post(body, participant="health")[0] == 200
        assert h.post(body, participant="health")[0] == 200  # each request checks again: no new warning
        said = [r.getMessage() for r in caplog.records]
        warnings = [m for m in said if "LIANFANG_PSEUDONYMIZER_RATES gives" in m]
        assert len(warnings) == 1
        assert "hotline" in warnings[0]
        assert "health" not in warnings[0]
    finally:
        h.close()
