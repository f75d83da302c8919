"""The end-to-end benchmark's CPU budget: each process's CPU a lead, and the rest of the machine's."""

from __future__ import annotations

import pytest

from tests.bench.bench_hub import CpuWindow

pytestmark = pytest.mark.unit


def test_each_process_is_charged_its_cpu_over_the_window_per_lead() -> None:
    hub, router = iter([10.0, 12.0]), iter([5.0, 5.5])
    window = CpuWindow(
        [("hub", lambda: next(hub)), ("router", lambda: next(router))],
        machine=iter([100.0, 104.0]).__next__,
        clock=iter([0.0, 2.0]).__next__,
        cpus=2,
    )
    window.start()
    budget = window.budget(1_000)
    assert budget.per_lead_ms[:2] == (("hub", 2.0), ("router", 0.5))


def test_the_rest_of_the_machine_is_its_busy_time_the_named_processes_did_not_use() -> None:
    hub = iter([10.0, 12.0])
    window = CpuWindow(
        [("hub", lambda: next(hub))],
        machine=iter([100.0, 103.0]).__next__,
        clock=iter([0.0, 2.0]).__next__,
        cpus=2,
    )
    window.start()
    budget = window.budget(1_000)
    name, rest = budget.per_lead_ms[-1]
    assert name.startswith("the rest of the machine")
    assert rest == pytest.approx(1.0)  # 3 s busy, 2 of them the hub's, over 1,000 leads
    assert budget.busy == pytest.approx(0.75)  # 3 CPU-seconds of 2 CPUs × 2 s


def test_the_rest_is_never_negative_when_the_machine_reading_lags_the_processes() -> None:
    hub = iter([0.0, 5.0])
    window = CpuWindow(
        [("hub", lambda: next(hub))],
        machine=iter([0.0, 4.0]).__next__,
        clock=iter([0.0, 1.0]).__next__,
        cpus=4,
    )
    window.start()
    assert window.budget(10).per_lead_ms[-1][1] == 0.0
