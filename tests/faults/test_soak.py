"""The soak's short version (``make soak`` is the long one): three minutes of load with faults of the
catalogue at random, seed 1, and nothing lost or duplicated, every victim alerted once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.faults.soak import hub_drained, soak

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]


def test_three_minutes_of_random_faults_lose_and_duplicate_no_lead_and_raise_every_alert_once(
    tmp_path: Path,
) -> None:
    result = soak(
        tmp_path, minutes=float(os.environ.get("SOAK_MINUTES", "3")), seed=int(os.environ.get("SEED", "1"))
    )
    print("\n" + "\n".join(f"[soak] {line}" for line in result.lines()))
    assert result.faults, "no fault was injected"
    assert not result.check.lost, f"accepted leads lost: {result.check.lost[:5]}"
    assert not result.check.duplicated, f"leads in an inbox twice: {result.check.duplicated[:5]}"
    assert not result.check.duplicate_alerts, f"duplicate alerts: {result.check.duplicate_alerts[:5]}"
    assert not result.check.missing_alerts, f"victims without an alert: {result.check.missing_alerts[:5]}"
    assert not result.exits, f"services that ended by themselves (their logs above): {result.exits}"
    assert hub_drained(result.hub_lag, result.hub_tail), (
        f"the hub's commits fell behind its inbox: lag {result.hub_lag}, tail {result.hub_tail}"
    )
