"""Which fault cases run: in ``make test`` the lab's own test and the three-minute soak
(``test_soak.py``, faults of the catalogue at random); every case of the catalogue with
``LIANFANG_FAULTS=all`` (``make faults``). The others are deselected, not skipped: they do not run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

QUICK = {
    "test_the_lab_puts_each_host_in_its_own_namespace_on_test_addresses_and_nothing_leaves_the_machine",
    "test_three_minutes_of_random_faults_lose_and_duplicate_no_lead_and_raise_every_alert_once",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("LIANFANG_FAULTS") == "all":
        return
    keep, drop = [], []
    for item in items:
        here = Path(str(item.path)).resolve().parent == HERE
        (drop if here and item.name not in QUICK else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
