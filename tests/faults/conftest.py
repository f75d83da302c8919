"""Which fault cases run: the quick ones in ``make test``, every one with ``LIANFANG_FAULTS=all``
(``make faults``). The others are deselected, not skipped: they do not run at all."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

QUICK = {
    "test_the_lab_puts_each_host_in_its_own_namespace_on_test_addresses_and_nothing_leaves_the_machine",
    "test_sigkill_of_one_broker_then_its_restart_loses_and_duplicates_no_lead",
    "test_sigkill_of_a_service_at_random_points_repeatedly_loses_and_duplicates_no_lead[router-1]",
    "test_the_load_ends_with_every_offered_lead_accepted_and_the_outbox_drained",
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
